"""Checkpoints: vosrt format round trip, bare published STCN state_dicts, and clear errors otherwise."""
import pickle

import pytest
import torch

from stcn_reference import random_published_state_dict
from vosrt.sdk.errors import UserError
from vosrt.training.models import build_model, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def published_state():
    return random_published_state_dict(seed=5)


def assert_same_weights(state, model):
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[name], state[name]) for name in state)


def test_save_and_load_round_trip_keeps_config_and_weights(tmp_path):
    model = build_model("stcn-lite", value_dim=96)
    save_checkpoint(tmp_path / "lite.pt", model)
    loaded, config = load_checkpoint(tmp_path / "lite.pt")
    assert config == {"model": "stcn-lite", "value_dim": 96}
    assert loaded.config == config and loaded.dims["value_dim"] == 96
    assert not loaded.training
    assert_same_weights(model.state_dict(), loaded)


def test_bare_published_state_dict_loads_as_stcn(tmp_path, published_state):
    torch.save(published_state, tmp_path / "stcn_published.pth")
    model, config = load_checkpoint(tmp_path / "stcn_published.pth")
    assert config == {"model": "stcn"}
    assert_same_weights(published_state, model)


class _RunsACommand:
    """Unpickled by a plain torch.load(weights_only=False), it runs ``touch`` on the marker: what any callable a
    checkpoint from the internet names could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_a_published_checkpoint_holding_python_objects_gives_its_weights_and_runs_none_of_its_code(
        tmp_path, published_state, capsys):
    # A training script's file (its options, a scheduler, anything pickled beside the weights) was refused as a
    # whole ("holds Python objects ... which vosrt does not unpickle"), with no way to reach its weights but a
    # torch.load(weights_only=False) that runs whatever the file names.
    import argparse
    import collections

    marker = tmp_path / "code-ran"
    path = tmp_path / "training-script.pth"
    torch.save({"model": published_state, "args": argparse.Namespace(lr=1e-5), "hook": _RunsACommand(marker),
                "history": collections.deque([1, 2]), "iter": 7}, path)
    model, config = load_checkpoint(path)
    assert config == {"model": "stcn"} and not marker.exists()
    assert_same_weights(published_state, model)
    err = capsys.readouterr().err
    assert f"note: {path} holds Python objects besides its tensors (argparse.Namespace, collections.deque, " in err
    assert "posix.system" in err and "running none of the file's code" in err
    torch.load(path, weights_only=False)   # what the file would have done: the payload is real
    assert marker.exists()


def _checkpoint_with_pickle(path, program: bytes) -> None:
    """A torch.save archive whose pickle is ``program``: what a crafted file can hold."""
    import io
    import zipfile

    saved = io.BytesIO()
    torch.save({}, saved)
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            target.writestr(info, program if info.filename.endswith("data.pkl") else source.read(info.filename))


def test_a_checkpoint_that_sets_attributes_of_a_class_is_refused_and_leaves_the_class_alone(tmp_path):
    # The inert reader took every global of torch's allow list as it is, classes too, and pickle's BUILD on a
    # class object sets its attributes: collections.Counter's __len__ became builtins.set for the whole process.
    import collections

    path = tmp_path / "crafted.pth"
    _checkpoint_with_pickle(path, b"\x80\x02ccollections\nCounter\nN}X\x07\x00\x00\x00__len__cbuiltins\nset\ns\x86b0"
                                  b"}X\x01\x00\x00\x00xcsome_module\nSomeObject\n)\x81s.")
    try:
        with pytest.raises(UserError, match="crafted.pth is not a PyTorch checkpoint that can be read safely"):
            load_checkpoint(path)
        assert "__len__" not in vars(collections.Counter)
    finally:
        if "__len__" in vars(collections.Counter):
            del collections.Counter.__len__


def test_a_checkpoint_that_sets_the_defaults_of_an_allowed_function_is_refused_and_leaves_it_alone(tmp_path):
    # BUILD was refused on classes only: on torch._utils._rebuild_tensor_v2 (an allowed global) it set the
    # function's __defaults__ for the whole process, and every tensor loaded later was rebuilt with them
    import torch._utils

    before = torch._utils._rebuild_tensor_v2.__defaults__
    path = tmp_path / "crafted.pth"
    _checkpoint_with_pickle(path, b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}(X\x0c\x00\x00\x00__defaults__(}X"
                                  b"\x03\x00\x00\x00neg\x88st" + b"u\x86b0cargparse\nNamespace\n)R.")
    try:
        with pytest.raises(UserError, match="crafted.pth is not a PyTorch checkpoint that can be read safely"):
            load_checkpoint(path)
        assert torch._utils._rebuild_tensor_v2.__defaults__ == before
    finally:
        torch._utils._rebuild_tensor_v2.__defaults__ = before


def test_a_torchscript_archive_given_as_a_checkpoint_is_refused_without_running_its_code(tmp_path):
    # torch.load(weights_only=True) refused it, and the inert reader's torch.load(weights_only=False) handed it to
    # torch.jit.load, which ran its scripted __setstate__: here a write of a file through a shared mmap
    import importlib.util

    marker = tmp_path / "code-ran"
    source = tmp_path / "writes.py"   # TorchScript compiles from source: the marker's path a literal there
    source.write_text(f"""from typing import Tuple
import torch


class Writes(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.x = 1

    @torch.jit.export
    def __getstate__(self) -> Tuple[int, bool]:
        return (self.x, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[int, bool]) -> None:
        self.x, self.training = state[0], state[1]
        written = torch.from_file({str(marker)!r}, shared=True, size=1, dtype=torch.uint8)
        written.fill_(1)
        self.x = int(written.sum().item())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
""")
    spec = importlib.util.spec_from_file_location("writes_module", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.jit.save(torch.jit.script(module.Writes()), str(tmp_path / "scripted.pth"))
    with pytest.raises(UserError, match="scripted.pth is a TorchScript archive .* not a checkpoint"):
        load_checkpoint(tmp_path / "scripted.pth")
    assert not (tmp_path / "code-ran").exists()
    torch.jit.load(str(tmp_path / "scripted.pth"))   # what the file does when loaded: the payload is real
    assert (tmp_path / "code-ran").exists()


def test_bare_single_object_checkpoint_is_padded_on_load(tmp_path, published_state):
    state = dict(published_state)
    state["value_encoder.conv1.weight"] = state["value_encoder.conv1.weight"][:, :4].clone()
    torch.save(state, tmp_path / "stcn_single_object.pth")
    model, _ = load_checkpoint(tmp_path / "stcn_single_object.pth", family="stcn")
    weight = model.value_encoder.conv1.weight
    assert torch.equal(weight[:, :4], state["value_encoder.conv1.weight"])
    assert torch.count_nonzero(weight[:, 4]) == 0


@pytest.mark.slow   # about 7 s of CPU on a 2-core machine: the published-size STCN built and loaded
def test_stcn_s_own_training_checkpoint_gives_its_network(tmp_path, published_state):
    # the public STCN code's _checkpoint.pth holds the weights under "network" beside its iteration, optimizer and
    # scheduler: "expected a vosrt checkpoint or a model state_dict, got dict"
    from vosrt.training.train import _init_weights

    model = build_model("stcn")
    model.load_state_dict(published_state)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [125000], 0.1)
    torch.save({"it": 5000, "network": published_state, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}, tmp_path / "stcn_checkpoint.pth")
    loaded, config = load_checkpoint(tmp_path / "stcn_checkpoint.pth")
    assert config == {"model": "stcn"}
    assert_same_weights(published_state, loaded)
    fresh = build_model("stcn")
    _init_weights(fresh, tmp_path / "stcn_checkpoint.pth", "stcn")   # vosrt train stcn --init FILE
    assert_same_weights(published_state, fresh)
    torch.save({"it": 5000, "weights": published_state}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="got dict \\(keys: it, weights\\)"):
        load_checkpoint(tmp_path / "other.pth")


def test_wrong_key_set_is_a_user_error_naming_the_keys(tmp_path, published_state):
    state = dict(published_state)
    del state["decoder.up_8_4.skip_conv.bias"]
    state["decoder.up_8_4.extra_conv.bias"] = torch.zeros(256)
    torch.save(state, tmp_path / "edited.pth")
    with pytest.raises(UserError) as error:
        load_checkpoint(tmp_path / "edited.pth")
    assert "decoder.up_8_4.skip_conv.bias" in str(error.value)
    assert "decoder.up_8_4.extra_conv.bias" in str(error.value)


def test_garbage_file_is_a_user_error(tmp_path):
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint\x00\x01\x02")
    with pytest.raises(UserError, match="garbage.pth"):
        load_checkpoint(tmp_path / "garbage.pth")


def test_state_dict_of_an_unknown_model_is_a_user_error(tmp_path):
    pytest.importorskip("vosrt.training.models.c3dseg")  # every family is asked whether it knows the keys
    torch.save(torch.nn.Conv2d(3, 4, 3).state_dict(), tmp_path / "conv.pth")
    with pytest.raises(UserError, match="no known model"):
        load_checkpoint(tmp_path / "conv.pth")


def test_asking_for_the_other_family_is_a_user_error(tmp_path):
    save_checkpoint(tmp_path / "lite.pt", build_model("stcn-lite"))
    with pytest.raises(UserError, match="3dc-seg"):
        load_checkpoint(tmp_path / "lite.pt", family="3dc-seg")


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path):
    model = build_model("stcn-lite")
    save_checkpoint(tmp_path / "last.pth", model, step=1)
    # fails while writing, as a Ctrl-C or a full disk would: pickling the lambda (PicklingError, or AttributeError
    # for a local object), not some other error raised before anything is written
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        save_checkpoint(tmp_path / "last.pth", model, step=2, unpicklable=lambda: None)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_a_checkpoint_the_disk_refuses_is_a_user_error_saying_why_and_keeps_the_previous(tmp_path):
    # a full disk (here: a file size limit, which fails the write the same way) came out of torch.save as
    # "RuntimeError: [enforce fail at inline_container.cc] unexpected pos N vs M", a traceback saying nothing
    resource = pytest.importorskip("resource")
    model = build_model("stcn-lite", value_widths=[8, 16, 32], value_dim=16, f16_thin_dim=16,
                        decoder_dims=[16, 8, 8], key_dim=8)
    save_checkpoint(tmp_path / "last.pth", model, step=1)
    size = (tmp_path / "last.pth").stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(UserError) as error:
            save_checkpoint(tmp_path / "last.pth", model, step=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    message = str(error.value)
    assert message.startswith(f"cannot write checkpoint {tmp_path / 'last.pth'}: the file would exceed the size limit")
    assert message.endswith("still holds the previous checkpoint") and "\n" not in message
    assert torch.load(tmp_path / "last.pth", weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
