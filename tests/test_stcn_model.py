"""The STCN network: published parameter layout, the single-object padding, and every step's shapes."""
import pytest
import torch

from stcn_reference import published_shapes, random_published_state_dict
from vosrt.sdk.errors import UserError
from vosrt.training.models import build_model
from vosrt.training.models.stcn import matches_state_dict
from vosrt.training.ops.aggregate import soft_aggregate
from vosrt.training.ops.l2_readout import l2_memory_readout


@pytest.fixture(scope="module")
def stcn():
    return build_model("stcn").eval()


@pytest.fixture(scope="module")
def published_state():
    return random_published_state_dict()


def run_all_steps(model, height, width, objects):
    """encode_key -> encode_value -> memory readout -> segment -> soft aggregation on random input."""
    generator = torch.Generator().manual_seed(1)
    frame = torch.randn(1, 3, height, width, generator=generator)
    masks = torch.rand(objects, 1, height, width, generator=generator)
    with torch.inference_mode():
        key, f16_thin, f16, f8, f4 = model.encode_key(frame)
        value = model.encode_value(frame, f16, masks)
        h, w = key.shape[-2:]
        mem_key = key.flatten(2)  # [1, Ck, N], one memory frame
        mem_value = value.flatten(2).reshape(1, objects * value.shape[1], h * w)  # [1, O·Cv, N]
        readout = l2_memory_readout(mem_key, key.flatten(2), mem_value, top_k=20)
        logits = model.segment(readout.view(objects, -1, h, w), f16_thin, f8, f4)
        prob, _ = soft_aggregate(torch.sigmoid(logits))
    return {"key": key, "f16_thin": f16_thin, "f16": f16, "f8": f8, "f4": f4, "value": value,
            "logits": logits, "prob": prob}


def expected_shapes(dims, height, width, objects):
    h, w = height // 16, width // 16
    return {"key": (1, dims["key_dim"], h, w), "f16_thin": (1, dims["f16_thin_dim"], h, w),
            "f16": (1, dims["f16_dim"], h, w), "f8": (1, dims["f8_dim"], 2 * h, 2 * w),
            "f4": (1, dims["f4_dim"], 4 * h, 4 * w), "value": (objects, dims["value_dim"], h, w),
            "logits": (objects, 1, height, width), "prob": (objects + 1, 1, height, width)}


def test_state_dict_has_exactly_the_published_keys_and_shapes(stcn):
    mine = {name: tuple(tensor.shape) for name, tensor in stcn.state_dict().items()}
    assert mine == published_shapes()


def test_published_key_set_loads_strictly(stcn, published_state):
    state = dict(published_state)
    stcn.load_state_dict(state, strict=True)
    loaded = stcn.state_dict()
    for name in ("key_encoder.layer3.5.conv3.weight", "value_encoder.fuser.attention.ChannelGate.mlp.3.bias",
                 "decoder.pred.weight", "key_encoder.bn1.running_var"):
        assert torch.equal(loaded[name], state[name])


def test_wrong_key_set_is_rejected_naming_the_offending_keys(stcn, published_state):
    state = dict(published_state)
    state["decoder.prediction.weight"] = state.pop("decoder.pred.weight")
    state["key_comp.weight"] = torch.zeros(256, 1024, 3, 3)
    with pytest.raises(RuntimeError) as error:
        stcn.load_state_dict(state, strict=True)
    message = str(error.value)
    assert "decoder.pred.weight" in message            # missing
    assert "decoder.prediction.weight" in message      # unexpected
    assert "key_comp.weight" in message                # wrong shape


def test_single_object_checkpoint_gets_a_zero_others_channel(stcn, published_state):
    state = dict(published_state)
    single = state["value_encoder.conv1.weight"][:, :4].clone()  # [64, 4, 7, 7]
    state["value_encoder.conv1.weight"] = single
    stcn.load_state_dict(state, strict=True)
    weight = stcn.value_encoder.conv1.weight
    assert weight.shape == (64, 5, 7, 7)
    assert torch.equal(weight[:, :4], single)
    assert torch.count_nonzero(weight[:, 4]) == 0


@pytest.mark.slow
def test_full_model_runs_every_step_at_480x864(stcn):
    outputs = run_all_steps(stcn, 480, 864, objects=2)
    for name, shape in expected_shapes(stcn.dims, 480, 864, 2).items():
        assert tuple(outputs[name].shape) == shape, name
        assert torch.isfinite(outputs[name]).all(), name
    assert stcn.dims == {"key_dim": 64, "value_dim": 512, "f16_dim": 1024, "f16_thin_dim": 512,
                         "f8_dim": 512, "f4_dim": 256}


@pytest.mark.parametrize("name", ["stcn", "stcn-lite"])
@pytest.mark.parametrize("objects", [1, 3])
def test_steps_have_the_documented_shapes_at_small_sizes(name, objects, stcn):
    model = stcn if name == "stcn" else build_model(name).eval()
    outputs = run_all_steps(model, 48, 80, objects)
    for key, shape in expected_shapes(model.dims, 48, 80, objects).items():
        assert tuple(outputs[key].shape) == shape, key
    assert torch.allclose(outputs["prob"].sum(0), torch.ones(1, 48, 80), atol=1e-5)


@pytest.mark.parametrize("objects", [1, 3])
def test_encode_value_gives_each_object_the_sum_of_the_other_masks(objects):
    model = build_model("stcn-lite").eval()
    generator = torch.Generator().manual_seed(2)
    frame = torch.randn(1, 3, 32, 48, generator=generator)
    masks = torch.rand(objects, 1, 32, 48, generator=generator)
    with torch.inference_mode():
        f16 = model.encode_key(frame)[2]
        values = model.encode_value(frame, f16, masks)
        for i in range(objects):
            others = sum((masks[j:j + 1] for j in range(objects) if j != i), torch.zeros(1, 1, 32, 48))
            alone = model.value_encoder(frame, f16, masks[i:i + 1], others)
            assert torch.allclose(values[i:i + 1], alone, atol=1e-5)


def test_segment_decodes_every_object_against_the_shared_query_features():
    model = build_model("stcn-lite").eval()
    generator = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        _, f16_thin, _, f8, f4 = model.encode_key(torch.randn(1, 3, 32, 64, generator=generator))
        readout = torch.randn(3, model.dims["value_dim"], 2, 4, generator=generator)
        together = model.segment(readout, f16_thin, f8, f4)
        one_by_one = torch.cat([model.segment(readout[i:i + 1], f16_thin, f8, f4) for i in range(3)])
    assert torch.allclose(together, one_by_one, atol=1e-5)


def test_build_records_overrides_in_config_and_dims():
    model = build_model("stcn-lite", value_dim=64, decoder_dims=[64, 32, 32])
    assert model.config == {"model": "stcn-lite", "value_dim": 64, "decoder_dims": [64, 32, 32]}
    assert model.dims["value_dim"] == 64 and model.dims["f16_dim"] == 256
    assert model.input_mean == (0.485, 0.456, 0.406) and model.input_std == (0.229, 0.224, 0.225)


def test_build_rejects_an_unknown_config_field():
    with pytest.raises(UserError, match="value_channels"):
        build_model("stcn-lite", value_channels=64)


def test_lite_is_a_fraction_of_the_published_size(stcn):
    lite = build_model("stcn-lite")
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(lite) * 5 < count(stcn)


def test_matches_state_dict_recognises_stcn_and_nothing_else(stcn, published_state):
    assert matches_state_dict(published_state)
    assert matches_state_dict(build_model("stcn-lite").state_dict())
    assert not matches_state_dict(stcn.key_encoder.state_dict())
    assert not matches_state_dict({"conv.weight": torch.zeros(1)})
