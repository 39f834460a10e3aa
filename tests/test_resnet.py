"""ResNet trunks: torchvision parameter names, stage widths and strides, the STCN knobs."""
import torch

from vosrt.training.models.resnet import resnet18, resnet50


def test_resnet50_has_torchvision_names_and_shapes():
    state = resnet50().state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7) and "conv1.bias" not in state
    assert state["layer1.0.conv3.weight"].shape == (256, 64, 1, 1)
    assert state["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)
    assert state["layer4.0.downsample.0.weight"].shape == (2048, 1024, 1, 1)
    assert state["layer4.2.bn3.running_var"].shape == (2048,)
    # torchvision's ResNet-50 state_dict has 320 tensors, two of them the classifier (fc), which we omit
    assert len(state) == 318


def test_resnet18_stages_have_strides_4_to_32_and_the_given_widths():
    model = resnet18(in_channels=5, widths=(16, 32, 64, 128), conv_bias=True).eval()
    with torch.no_grad():
        features = model(torch.randn(1, 5, 64, 96))
    assert [tuple(f.shape) for f in features] == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 64, 4, 6), (1, 128, 2, 3)]
    assert model.conv1.weight.shape == (16, 5, 7, 7) and model.conv1.bias is not None
    assert "layer2.0.downsample.0.bias" in model.state_dict()


def test_truncated_trunk_builds_no_later_stages():
    model = resnet50(stages=3)
    assert model.stage_channels == [256, 512, 1024]
    assert not any(name.startswith("layer4") for name in model.state_dict())
