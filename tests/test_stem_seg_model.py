"""The STEm-Seg networks: public state_dict names and shapes, strict loading of published checkpoints
into the D²Conv3D model, lite forward shapes and size, checkpoints."""
from pathlib import Path

import pytest
import torch

from vosrt.training.models import build_model, load_checkpoint, read_checkpoint, save_checkpoint
from vosrt.training.models.stem_seg import EmbedClipGraph, matches_state_dict, parameter_count
from published_weights import published_shapes, random_state_dict

DATA = Path(__file__).parent / "data"
# Read off the public STEm-Seg code with a ResNet-50 FPN backbone (the default here; its configurations build
# ResNet-101, whose files load with the depth read off the weights: see the R-101 test): its DAVIS configuration (seediness head,
# no category head) and its YouTube-VIS configuration (category head with 41 classes, seediness from the
# embedding head, 256-wide category decoder).
DAVIS_TSV = DATA / "stem_seg_state_dict.tsv"
YTVIS_TSV = DATA / "stem_seg_ytvis_state_dict.tsv"
YTVIS = dict(num_classes=41, seediness_head=False, semseg_channels=(256, 256, 256, 256))
D2_BLOCKS = ("block_32x", "block_16x")


def shapes_of(model) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def as_d2conv_names(shapes: dict, heads=("embedding_head", "seediness_head", "semseg_head")) -> dict:
    """The published names with each 3×3×3 convolution of the two deepest blocks as a D²Conv3D layer."""
    out = {}
    for name, shape in shapes.items():
        parts = name.split(".")
        if parts[0] in heads and parts[1] in D2_BLOCKS and len(shape) in (1, 5) and \
                f"{'.'.join(parts[:3])}.weight" in shapes and len(shapes[f"{'.'.join(parts[:3])}.weight"]) == 5:
            base = ".".join(parts[:3])
            out[f"{base}.deform_conv.{parts[3]}"] = shape
            cout, cin, *kernel = shapes[f"{base}.weight"]
            points = kernel[0] * kernel[1] * kernel[2]
            out[f"{base}.deform_params.weight"] = (3 + points, cin, *kernel)
            out[f"{base}.deform_params.bias"] = (3 + points,)
        else:
            out[name] = shape
    return out


def test_plain_stem_seg_has_exactly_the_public_davis_keys_and_shapes():
    model = build_model("stem-seg", d2conv_heads=())
    assert shapes_of(model) == published_shapes(DAVIS_TSV)


def test_plain_stem_seg_with_categories_has_exactly_the_public_youtube_vis_keys_and_shapes():
    model = build_model("stem-seg", d2conv_heads=(), **YTVIS)
    assert shapes_of(model) == published_shapes(YTVIS_TSV)


def test_d2conv_stem_seg_renames_only_the_deep_block_convolutions():
    model = build_model("stem-seg")
    assert shapes_of(model) == as_d2conv_names(published_shapes(DAVIS_TSV))
    assert model.d2conv_layers == 10  # 3 (block_32x) + 2 (block_16x) in each of two heads


def test_published_checkpoint_loads_strictly_as_the_published_network(tmp_path):
    # The public DAVIS model's heads are plain Conv3d, and it runs 16-frame clips (davis_2.yaml). Its weights were
    # taken into D²Conv3D layers (modulation 1/2 at a zero predictor: every deep-block convolution halved) of an
    # 8-frame network, so the embeddings, bandwidths and seediness differed from the published model's.
    import torch.nn.functional as F

    published = random_state_dict(published_shapes(DAVIS_TSV))
    path = tmp_path / "davis.pth"
    torch.save({"model": published, "optimizer": {}}, path)  # as the public training code saves them
    config, _ = read_checkpoint(path)
    assert config == {"model": "stem-seg", "d2conv_heads": (), "clip_length": 16}
    model, _ = load_checkpoint(path)
    assert model.d2conv_layers == 0 and model.clip_length == 16
    from vosrt.export.package import streaming_settings
    from vosrt.sdk.families import get as get_family
    stream = streaming_settings(get_family("stem-seg"), model)   # the package's manifest: the public DAVIS inference
    assert (stream["clip_length"], stream["overlap"], stream["min_seediness"]) == (16, 6, 0.8)
    layer = "embedding_head.block_32x.4"
    weight, bias = published[f"{layer}.weight"], published[f"{layer}.bias"]
    x = torch.randn(1, weight.shape[1], 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(model.get_submodule(layer)(x), F.conv3d(x, weight, bias, padding=1))
    assert torch.equal(model.state_dict()["backbone.fpn.fpn_layer3.weight"], published["backbone.fpn.fpn_layer3.weight"])
    assert torch.equal(model.state_dict()["embedding_loss_criterion.free_dim_bandwidths"],
                       published["embedding_loss_criterion.free_dim_bandwidths"])


def test_a_published_checkpoint_given_to_a_d2conv3d_model_takes_its_weights_as_the_convolutions(tmp_path):
    # `vosrt train stem-seg --init davis.pth`: the run's D²Conv3D heads start from the published convolutions,
    # with the parameter predictor at zero (the layer's own initial state)
    published = random_state_dict(published_shapes(DAVIS_TSV))
    model = build_model("stem-seg")
    model.load_state_dict(dict(published), strict=True)
    loaded = model.state_dict()
    layer = "embedding_head.block_32x.4"
    assert torch.equal(loaded[f"{layer}.deform_conv.weight"], published[f"{layer}.weight"])
    assert torch.equal(loaded[f"{layer}.deform_conv.bias"], published[f"{layer}.bias"])
    assert not loaded[f"{layer}.deform_params.weight"].any()


def test_a_state_dict_of_this_module_keeps_its_d2conv3d_heads_and_modulation():
    for overrides in ({}, {"modulation": False}, {"d2conv_heads": ("embedding_head",)}):
        model = build_model("stem-seg-lite", **overrides)
        from vosrt.training.models.stem_seg import config_from_state_dict
        found = config_from_state_dict(model.state_dict())
        assert {k: v for k, v in found.items() if k in ("d2conv_heads", "modulation", "clip_length")} == \
            {k: v for k, v in overrides.items()}, (overrides, found)


@pytest.mark.slow   # about 8 s of CPU on a 2-core machine: a ResNet-101 STEm-Seg built and loaded
def test_a_published_resnet_101_checkpoint_loads_strictly_with_its_depth_read_off_the_weights(tmp_path):
    # The public STEm-Seg checkpoints are R-101-FPN (stemseg/config/defaults.yaml): res4 holds 23 bottlenecks,
    # where the default here (ResNet-50) has 6; the depth was not read off the weights, so they failed to load.
    shapes = published_shapes(DAVIS_TSV)
    block = {k[len("backbone.body.layer3.1."):]: v for k, v in shapes.items() if k.startswith("backbone.body.layer3.1.")}
    for index in range(6, 23):
        shapes.update({f"backbone.body.layer3.{index}.{name}": shape for name, shape in block.items()})
    published = random_state_dict(shapes, seed=2)
    torch.save({"model": published, "optimizer": {}}, tmp_path / "davis_r101.pth")
    config, _ = read_checkpoint(tmp_path / "davis_r101.pth")
    assert config == {"model": "stem-seg", "depths": (3, 4, 23, 3), "d2conv_heads": (), "clip_length": 16}
    model, _ = load_checkpoint(tmp_path / "davis_r101.pth")
    assert len(model.backbone.body.layer3) == 23
    assert torch.equal(model.state_dict()["backbone.body.layer3.22.conv2.weight"],
                       published["backbone.body.layer3.22.conv2.weight"])
    save_checkpoint(tmp_path / "again.pth", model)   # and vosrt's own checkpoint of it rebuilds the same network
    again, _ = load_checkpoint(tmp_path / "again.pth")
    assert shapes_of(again) == shapes_of(model)


def test_matches_state_dict_recognises_public_and_own_names_only():
    assert matches_state_dict(published_shapes(DAVIS_TSV))
    assert matches_state_dict(build_model("stem-seg-lite").state_dict())
    assert not matches_state_dict(build_model("3dc-seg-lite").state_dict())


@pytest.fixture(scope="module")
def lite():
    torch.manual_seed(0)
    return build_model("stem-seg-lite").eval()


def test_stem_seg_lite_size(lite):
    assert parameter_count(lite) == LITE_PARAMETERS
    assert lite.d2conv_layers == 10


def test_stem_seg_lite_forward_shapes_at_quarter_resolution(lite):
    clip = torch.rand(1, 3, 8, 80, 128)
    with torch.no_grad():
        out = lite(clip)
    assert out["embeddings"].shape == (1, 4, 8, 20, 32)
    assert out["bandwidths"].shape == (1, 4, 8, 20, 32)
    assert out["log_variances"].shape == (1, 2, 8, 20, 32)
    assert out["seediness"].shape == (1, 1, 8, 20, 32)
    # the free dimensions' bandwidth is fixed at 1 / 0.3²
    torch.testing.assert_close(out["bandwidths"][:, 2:], torch.full((1, 2, 8, 20, 32), 1 / 0.09))
    assert ((out["seediness"] > 0) & (out["seediness"] < 1)).all()


def test_embeddings_carry_the_pixel_coordinates():
    # With the embedding convolution at zero, the embedding is the (y, x) grid plus zeros (xyff mode);
    # plain decoders (no D²Conv3D) keep this test fast and do not change what it checks.
    model = build_model("stem-seg-lite", d2conv_heads=()).eval()
    torch.nn.init.zeros_(model.embedding_head.conv_embedding.weight)
    with torch.no_grad():
        emb = model(torch.rand(1, 3, 8, 96, 192))["embeddings"][0]   # [4, 8, 24, 48]; wide: x in [-2, 2]
    torch.testing.assert_close(emb[0, 3, :, 5], torch.linspace(-1, 1, 24))
    torch.testing.assert_close(emb[1, 0, 7, :], torch.linspace(-2, 2, 48))
    assert not emb[2:].any()


def test_category_variant_outputs_class_and_foreground_maps():
    model = build_model("stem-seg-lite", num_classes=5, seediness_head=False).eval()
    assert model.d2conv_layers == 10                        # embedding and category heads
    clip = torch.rand(1, 3, 8, 80, 80)
    with torch.no_grad():
        out = model((clip - torch.tensor(model.input_mean).view(1, 3, 1, 1, 1)) /
                    torch.tensor(model.input_std).view(1, 3, 1, 1, 1))
        graph = EmbedClipGraph(model)(clip)
    assert out["class_logits"].shape == (1, 5, 8, 20, 20)
    assert out["foreground_logits"].shape == (1, 1, 8, 20, 20)
    embeddings, bandwidths, seediness, foreground, categories = graph
    torch.testing.assert_close(embeddings, out["embeddings"])
    torch.testing.assert_close(foreground, torch.sigmoid(out["foreground_logits"]))
    torch.testing.assert_close(categories, torch.softmax(out["class_logits"], 1))
    torch.testing.assert_close(categories.sum(1), torch.ones(1, 8, 20, 20))


def test_lite_checkpoint_round_trip(tmp_path, lite):
    path = tmp_path / "lite.pt"
    save_checkpoint(path, lite)
    model, config = load_checkpoint(path, family="stem-seg")
    assert config == {"model": "stem-seg-lite"}
    loaded, original = model.state_dict(), lite.state_dict()
    assert list(loaded) == list(original)
    assert all(torch.equal(loaded[k], original[k]) for k in original)


LITE_PARAMETERS = 1_199_406


def test_published_youtube_vis_checkpoint_loads_with_its_configuration_read_off_the_weights(tmp_path):
    published = random_state_dict(published_shapes(YTVIS_TSV), seed=1)
    torch.save({"model": published}, tmp_path / "ytvis.pth")
    config, _ = read_checkpoint(tmp_path / "ytvis.pth")
    assert config == {"model": "stem-seg", **YTVIS, "d2conv_heads": ()}
    model, _ = load_checkpoint(tmp_path / "ytvis.pth")
    assert model.semseg_head is not None and model.seediness_head is None
    assert model.clip_length == 8 and model.d2conv_layers == 0
    assert model.streaming_defaults() == {"foreground_threshold": 0.5}
    assert torch.equal(model.state_dict()["semseg_head.block_16x.4.weight"], published["semseg_head.block_16x.4.weight"])


def test_a_published_kitti_mots_checkpoint_seeds_clusters_above_its_configurations_threshold(tmp_path):
    # the public KITTI-MOTS configurations (xyt embeddings, a category head) cluster with MIN_SEEDINESS_PROB 0.95
    from vosrt.export.package import streaming_settings
    from vosrt.sdk.families import get as get_family

    kitti = dict(embedding_mode="xyt", free_dim_stds=(), seediness_head=False, num_classes=3)
    torch.save({"model": build_model("stem-seg", d2conv_heads=(), **kitti).state_dict()}, tmp_path / "kitti_mots.pth")
    config, _ = read_checkpoint(tmp_path / "kitti_mots.pth")
    assert config == {"model": "stem-seg", **kitti, "d2conv_heads": ()}
    model, _ = load_checkpoint(tmp_path / "kitti_mots.pth")
    stream = streaming_settings(get_family("stem-seg"), model)
    assert (stream["clip_length"], stream["overlap"], stream["min_seediness"]) == (8, 4, 0.95)
