"""Loading VMZ Caffe2 ir-CSN weights (.pkl, real blob naming) into the 3DC-Seg encoder."""
import pickle

import numpy as np
import pytest
import torch

from vosrt.sdk.errors import UserError
from vosrt.training.models import build_model
from vosrt.training.models.caffe2_convert import load_backbone_weights
from vosrt.training.models.csn import IrCSN

BN = ("_s", "_b", "_rm", "_riv")


def _vmz_blobs(depths, planes, stem, rng):
    """Blobs named as in the VMZ model zoo pickles: block index i runs over the whole network."""
    blobs = {"conv1_w": rng.standard_normal((stem, 3, 3, 7, 7)).astype(np.float32)}

    def bn(prefix, c):
        for s in BN:
            value = rng.uniform(0.5, 1.5, c) if s == "_riv" else rng.standard_normal(c)
            blobs[prefix + s] = value.astype(np.float32)

    bn("conv1_spatbn_relu", stem)
    i, cin = 0, stem
    for stage, (depth, p) in enumerate(zip(depths, planes)):
        for j in range(depth):
            blobs[f"comp_{i}_conv_1_w"] = rng.standard_normal((p, cin, 1, 1, 1)).astype(np.float32)
            bn(f"comp_{i}_spatbn_1", p)
            blobs[f"comp_{i}_conv_3_w"] = rng.standard_normal((p, 1, 3, 3, 3)).astype(np.float32)
            bn(f"comp_{i}_spatbn_3", p)
            blobs[f"comp_{i}_conv_4_w"] = rng.standard_normal((4 * p, p, 1, 1, 1)).astype(np.float32)
            bn(f"comp_{i}_spatbn_4", 4 * p)
            if j == 0:
                blobs[f"shortcut_projection_{i}_w"] = rng.standard_normal((4 * p, cin, 1, 1, 1)).astype(np.float32)
                bn(f"shortcut_projection_{i}_spatbn", 4 * p)
            cin = 4 * p
            i += 1
    blobs["last_out_L400_w"] = rng.standard_normal((400, cin)).astype(np.float32)
    blobs["last_out_L400_b"] = np.zeros(400, np.float32)
    return blobs


def _write_pkl(path, blobs):
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)


def test_ir_csn_50_blobs_land_on_the_right_layers(tmp_path):
    rng = np.random.default_rng(0)
    depths, planes = (3, 4, 6, 3), (4, 4, 8, 8)
    blobs = _vmz_blobs(depths, planes, 4, rng)
    _write_pkl(tmp_path / "irCSN_50.pkl", blobs)
    encoder = IrCSN(depths, planes, 4)
    unused = load_backbone_weights(encoder, tmp_path / "irCSN_50.pkl")

    assert unused == ["last_out_L400_b", "last_out_L400_w"]
    expect = {  # hand-picked: stage starts of ir-CSN-50 are blocks 0, 3, 7, 13; depthwise conv is VMZ's "conv_3"
        "stem.conv1.weight": "conv1_w",
        "stem.bn1.running_var": "conv1_spatbn_relu_riv",
        "layer1.0.downsample.0.weight": "shortcut_projection_0_w",
        "layer2.0.conv2.weight": "comp_3_conv_3_w",
        "layer2.3.bn2.weight": "comp_6_spatbn_3_s",
        "layer3.0.downsample.1.running_mean": "shortcut_projection_7_spatbn_rm",
        "layer3.5.conv1.weight": "comp_12_conv_1_w",
        "layer4.0.downsample.1.bias": "shortcut_projection_13_spatbn_b",
        "layer4.2.conv3.weight": "comp_15_conv_4_w",
        "layer4.2.bn3.running_var": "comp_15_spatbn_4_riv",
    }
    state = encoder.state_dict()
    for ours, blob in expect.items():
        torch.testing.assert_close(state[ours], torch.from_numpy(blobs[blob]), rtol=0, atol=0)
    # Every encoder tensor came from some blob: none keeps its initial value.
    used = {v.tobytes() for k, v in blobs.items() if not k.startswith("last_out")}
    assert all(t.numpy().tobytes() in used for t in state.values())
    assert all(m.eps == 1e-3 for m in encoder.modules() if hasattr(m, "running_var"))


def test_ir_csn_152_stage_starts_are_blocks_0_3_11_47(tmp_path):
    rng = np.random.default_rng(1)
    depths, planes = (3, 8, 36, 3), (2, 2, 2, 2)
    blobs = _vmz_blobs(depths, planes, 2, rng)
    _write_pkl(tmp_path / "irCSN_152.pkl", blobs)
    model = build_model("3dc-seg-lite", depths=list(depths), planes=list(planes), stem_width=2, mdim=8, gc_width=8)
    load_backbone_weights(model, tmp_path / "irCSN_152.pkl")
    state = model.encoder.state_dict()
    for stage, block in ((2, 3), (3, 11), (4, 47)):
        torch.testing.assert_close(state[f"layer{stage}.0.downsample.0.weight"],
                                   torch.from_numpy(blobs[f"shortcut_projection_{block}_w"]))
    torch.testing.assert_close(state["layer3.35.conv2.weight"], torch.from_numpy(blobs["comp_46_conv_3_w"]))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 8, 64, 64))
    assert out.shape == (1, 1, 8, 64, 64) and torch.isfinite(out).all()


def test_depth_mismatch_is_reported(tmp_path):
    blobs = _vmz_blobs((3, 4, 6, 3), (2, 2, 2, 2), 2, np.random.default_rng(2))
    _write_pkl(tmp_path / "w.pkl", blobs)
    with pytest.raises(UserError, match="16 bottlenecks"):
        load_backbone_weights(IrCSN((3, 8, 36, 3), (2, 2, 2, 2), 2), tmp_path / "w.pkl")


def test_width_mismatch_names_the_blob(tmp_path):
    blobs = _vmz_blobs((3, 4, 6, 3), (2, 2, 2, 2), 2, np.random.default_rng(3))
    _write_pkl(tmp_path / "w.pkl", blobs)
    with pytest.raises(UserError, match="blob conv1_w has shape"):
        load_backbone_weights(IrCSN((3, 4, 6, 3), (2, 2, 2, 2), 4), tmp_path / "w.pkl")


def test_missing_blob_is_reported(tmp_path):
    blobs = _vmz_blobs((3, 4, 6, 3), (2, 2, 2, 2), 2, np.random.default_rng(4))
    del blobs["comp_5_spatbn_3_riv"]
    _write_pkl(tmp_path / "w.pkl", blobs)
    with pytest.raises(UserError, match="comp_5_spatbn_3_riv"):
        load_backbone_weights(IrCSN((3, 4, 6, 3), (2, 2, 2, 2), 2), tmp_path / "w.pkl")


class _Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_with_foreign_globals_are_refused(tmp_path, capsys):
    _write_pkl(tmp_path / "evil.pkl", {"conv1_w": _Exploit()})
    with pytest.raises(UserError, match="not allowed"):
        load_backbone_weights(IrCSN((3, 4, 6, 3), (2, 2, 2, 2), 2), tmp_path / "evil.pkl")
    assert "must never run" not in capsys.readouterr().out


def test_public_converter_pth_layout_loads(tmp_path):
    # The public converter saves a torchvision-style ResNet: conv1/bn1 at the top, fc head, BN counters.
    source = IrCSN((3, 4, 6, 3), (2, 2, 2, 2), 2)
    for t in source.state_dict().values():
        t.copy_(torch.randn_like(t))
    state = {}
    for key, value in source.state_dict().items():
        key = key.removeprefix("stem.")
        state[key] = value
        if key.endswith("running_var"):
            state[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    state["fc.weight"], state["fc.bias"] = torch.zeros(400, 8), torch.zeros(400)
    torch.save(state, tmp_path / "irCSN_50.pth")
    target = IrCSN((3, 4, 6, 3), (2, 2, 2, 2), 2)
    load_backbone_weights(target, tmp_path / "irCSN_50.pth")
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)
    # wrapped as {"model": state_dict}, which the public loaders unwrap: it was refused as "a dict of other values"
    torch.save({"model": state, "epoch": 3}, tmp_path / "wrapped.pth")
    target = IrCSN((3, 4, 6, 3), (2, 2, 2, 2), 2)
    load_backbone_weights(target, tmp_path / "wrapped.pth")
    torch.testing.assert_close(target.state_dict()["layer1.0.conv1.weight"], source.state_dict()["layer1.0.conv1.weight"])


def test_init_from_a_pkl_names_the_blobs_it_leaves_out(tmp_path, capsys):
    # they were dropped without a word (the public converter asserts that none is left over)
    from vosrt.training.recipes.c3dseg import C3DSegRecipe

    model = build_model("3dc-seg-lite", depths=(1, 1, 1, 1), planes=(4, 4, 8, 8), stem_width=4)
    blobs = _vmz_blobs((1, 1, 1, 1), (4, 4, 8, 8), 4, np.random.default_rng(1))
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)
    _write_pkl(tmp_path / "irCSN.pkl", blobs)
    assert C3DSegRecipe().init_weights(model, tmp_path / "irCSN.pkl")
    err = capsys.readouterr().err
    assert f"note: --init {tmp_path / 'irCSN.pkl'}: 3 blob(s) not used by the encoder (conv1_w_momentum, " \
           "last_out_L400_b, last_out_L400_w)" in err, err


def test_a_pth_that_is_not_a_state_dict_is_a_user_error(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "epoch": 3}, tmp_path / "wrapped.pth")
    torch.save({"epoch": 3, "arch": "ir_csn_152"}, tmp_path / "no_weights.pth")
    encoder = IrCSN((1, 1, 1, 1), (4, 4, 8, 8), 4)
    with pytest.raises(UserError, match="tensor.pth: expected ir-CSN backbone weights .* got a Tensor"):
        load_backbone_weights(encoder, tmp_path / "tensor.pth")
    with pytest.raises(UserError, match="wrapped.pth: backbone weights do not fit the encoder"):
        load_backbone_weights(encoder, tmp_path / "wrapped.pth")
    with pytest.raises(UserError, match="no_weights.pth: expected ir-CSN backbone weights .* of other values"):
        load_backbone_weights(encoder, tmp_path / "no_weights.pth")
