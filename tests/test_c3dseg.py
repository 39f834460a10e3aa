"""The D2Conv3d layer and the 3DC-Seg networks: drop-in conversion, shapes, public state_dict names, checkpoints."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vosrt.sdk.errors import UserError
from vosrt.training.models import build_model, load_checkpoint, read_checkpoint, save_checkpoint
from vosrt.training.models.c3dseg import matches_state_dict
from vosrt.training.models.d2conv import D2Conv3d, d2conv_from_conv3d, replace_conv3d
from vosrt.training.ops.d2conv3d import d2conv3d


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return build_model("3dc-seg-lite").eval()


@pytest.mark.parametrize("kernel,stride,padding,groups", [((3, 3, 3), 1, 1, 1), ((1, 3, 3), (1, 2, 2), (0, 1, 1), 2)])
def test_fresh_d2conv_is_half_the_conv3d_it_replaced_plus_bias(kernel, stride, padding, groups):
    torch.manual_seed(1)
    conv = nn.Conv3d(8, 6, kernel, stride=stride, padding=padding, groups=groups)
    layer = d2conv_from_conv3d(conv)
    x = torch.randn(2, 8, 4, 9, 10)
    dilation, modulation = layer.dilation_and_modulation(x)
    assert torch.equal(dilation, torch.ones_like(dilation))          # D = 1 + elu(0)
    assert torch.equal(modulation, torch.full_like(modulation, 0.5))  # M = sigmoid(0)
    expected = 0.5 * F.conv3d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, groups) \
        + conv.bias.view(1, -1, 1, 1, 1)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_d2conv_without_modulation_equals_conv3d_when_fresh():
    conv = nn.Conv3d(4, 4, 3, padding=1)
    layer = d2conv_from_conv3d(conv, modulation=False)
    assert layer.deform_params.out_channels == 3
    x = torch.randn(1, 4, 3, 6, 6)
    torch.testing.assert_close(layer(x), conv(x), atol=1e-5, rtol=1e-5)


def test_d2conv_applies_predicted_dilation_and_modulation():
    torch.manual_seed(2)
    layer = D2Conv3d(4, 5, 3, padding=1)
    nn.init.normal_(layer.deform_params.weight, std=0.3)
    x = torch.randn(1, 4, 3, 6, 7)
    raw = layer.deform_params(x)
    expected = d2conv3d(x, 1 + F.elu(raw[:, :3]), torch.sigmoid(raw[:, 3:]), layer.deform_conv.weight,
                        layer.deform_conv.bias, 1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_d2conv_state_dict_names_follow_the_public_code():
    layer = D2Conv3d(16, 8, 3, padding=1)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"deform_params.weight": (30, 16, 3, 3, 3), "deform_params.bias": (30,),
                      "deform_conv.weight": (8, 16, 3, 3, 3), "deform_conv.bias": (8,)}


def test_replace_conv3d_swaps_kernels_larger_than_one_voxel():
    net = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.ReLU(), nn.Sequential(nn.Conv3d(4, 4, 1)))
    weight = net[0].weight.detach().clone()
    assert replace_conv3d(net) == 1
    assert isinstance(net[0], D2Conv3d) and isinstance(net[2][0], nn.Conv3d)
    assert torch.equal(net[0].deform_conv.weight, weight)


def test_replace_conv3d_converts_only_the_chosen_layers():
    net = nn.Sequential(nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), nn.Conv3d(4, 4, 3, padding=1)),
                        nn.Conv3d(4, 4, 3, padding=1))
    assert replace_conv3d(net, ["0.1", "1"]) == 2
    assert [type(m).__name__ for m in (net[0][0], net[0][1], net[1])] == ["Conv3d", "D2Conv3d", "D2Conv3d"]


def test_training_step_reaches_the_dilation_predictors():
    torch.manual_seed(5)
    model = build_model("3dc-seg-lite", mdim=16, gc_width=16)
    logits = model(torch.randn(1, 3, 8, 64, 64))
    F.binary_cross_entropy_with_logits(logits, (torch.rand_like(logits) > 0.5).float()).backward()
    for name in ("rf3", "rf2"):
        grad = getattr(model.decoder, name).convFS1[0].deform_params.weight.grad
        assert grad is not None and grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_lite_segments_an_8_frame_240x432_clip(lite):
    clip = lite.normalize(torch.rand(1, 3, 8, 240, 432))
    with torch.no_grad():
        logits = lite(clip)
    assert logits.shape == (1, 1, 8, 240, 432)
    assert torch.isfinite(logits).all()


def test_lite_is_sized_for_cpu(lite):
    assert sum(p.numel() for p in lite.parameters()) < 6_000_000


@pytest.mark.slow
def test_published_network_structure_and_names():
    torch.manual_seed(3)
    model = build_model("3dc-seg").eval()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {  # names and shapes of the public D²Conv3D model (ir-CSN-152, mdim 256, D²Conv3D in rf3/rf2)
        "mean": (3, 1, 1, 1), "std": (3, 1, 1, 1),
        "encoder.stem.conv1.weight": (64, 3, 3, 7, 7),
        "encoder.stem.bn1.running_var": (64,),
        "encoder.layer1.0.downsample.0.weight": (256, 64, 1, 1, 1),
        "encoder.layer3.35.conv2.weight": (256, 1, 3, 3, 3),
        "encoder.layer4.2.conv3.weight": (2048, 512, 1, 1, 1),
        "decoder.gc.conv_l1.weight": (256, 2048, 1, 7, 1),
        "decoder.gc.conv_r1.weight": (256, 2048, 1, 1, 7),
        "decoder.convG2.bias": (256,),
        "decoder.rf3.convFS1.0.deform_params.weight": (30, 1024, 3, 3, 3),
        "decoder.rf3.convFS1.0.deform_conv.weight": (256, 1024, 3, 3, 3),
        "decoder.rf3.convFS1.2.weight": (256,),
        "decoder.rf2.convMM2.0.deform_params.bias": (30,),
        "decoder.rf2.convFS1.0.deform_conv.weight": (256, 512, 3, 3, 3),
        "decoder.rf1.convFS1.0.weight": (256, 256, 3, 3, 3),
        "decoder.pred.weight": (1, 256, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert shapes.get(key) == shape, key
    d2 = [n for n, m in model.named_modules() if isinstance(m, D2Conv3d)]
    assert len(d2) == 10 and all(n.startswith(("decoder.rf3.", "decoder.rf2.")) for n in d2)
    assert not any("num_batches_tracked" in k for k in shapes)
    assert model.clip_length == 8
    assert model.input_mean == pytest.approx((0.43216, 0.394666, 0.37645))
    assert model.input_std == pytest.approx((0.22803, 0.22145, 0.216989))
    assert matches_state_dict(model.state_dict())
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 8, 64, 64))
    assert logits.shape == (1, 1, 8, 64, 64)


def test_stcn_state_dict_is_not_taken_for_3dc_seg():
    assert not matches_state_dict({"key_encoder.conv1.weight": torch.zeros(1), "decoder.pred.weight": torch.zeros(1)})


def test_checkpoint_round_trip_keeps_config_and_outputs(tmp_path, lite):
    torch.manual_seed(4)
    model = build_model("3dc-seg-lite", mdim=32, gc_width=32).eval()
    save_checkpoint(tmp_path / "lite.pth", model)
    loaded, config = load_checkpoint(tmp_path / "lite.pth", family="3dc-seg")
    assert config == {"model": "3dc-seg-lite", "mdim": 32, "gc_width": 32}
    clip = torch.randn(1, 3, 8, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(clip), model(clip))


def test_bare_state_dict_with_batchnorm_counters_is_recognised(tmp_path, lite):
    state = dict(lite.state_dict())
    state["encoder.stem.bn1.num_batches_tracked"] = torch.tensor(0)  # an ordinary BatchNorm3d checkpoint
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "bare.pth")
    config, loaded_state = read_checkpoint(tmp_path / "bare.pth")
    # the lite widths and depths are read off the weights, so the network load_checkpoint builds fits them
    assert config == {"model": "3dc-seg", "depths": (3, 4, 6, 3), "planes": (16, 32, 64, 128), "stem_width": 16,
                      "mdim": 64, "gc_width": 64}
    fresh = build_model("3dc-seg-lite")
    fresh.load_state_dict(loaded_state, strict=True)
    assert load_checkpoint(tmp_path / "bare.pth")[0].decoder.convG1.out_channels == 64
    assert torch.equal(fresh.decoder.rf3.convFS1[0].deform_conv.weight, lite.decoder.rf3.convFS1[0].deform_conv.weight)


def test_unknown_override_is_a_user_error():
    with pytest.raises(UserError, match="unknown config field"):
        build_model("3dc-seg-lite", widht=3)
