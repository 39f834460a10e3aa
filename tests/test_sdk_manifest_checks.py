"""A package's manifest is checked when it is opened: paths stay inside the package, values have the types
they need (never truncated), and the graphs take the resolution the manifest states."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.package import load_package

from sdk_packages import colour_embedding_package, tiny_package


@pytest.fixture(scope="module")
def source_package():
    return tiny_package("stcn")


@pytest.fixture
def package(source_package, tmp_path):
    folder = tmp_path / "pkg"
    shutil.copytree(source_package, folder)
    return folder


def _edit(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../outside.onnx", "/etc/passwd", "sub/../../outside.onnx"])
def test_a_graph_path_leaving_the_package_is_refused(package, name):
    (package.parent / "outside.onnx").write_bytes((package / "segment.portable.onnx").read_bytes())
    _edit(package, lambda m: m["graphs"]["segment"].update(portable=name))
    with pytest.raises(UserError, match=r"graphs\.segment\.portable.*outside the package"):
        load_package(package)


def test_a_graph_reached_through_a_link_out_of_the_package_is_refused(package):
    outside = package.parent / "elsewhere.onnx"
    shutil.move(package / "segment.portable.onnx", outside)
    (package / "segment.portable.onnx").symlink_to(outside)
    with pytest.raises(UserError, match="outside the package"):
        load_package(package)


def test_engine_files_and_a_relative_checkpoint_must_stay_inside(package):
    _edit(package, lambda m: m.update(engines={"fp32": {"files": {"segment": "../../evil.engine"}}}))
    with pytest.raises(UserError, match=r"engines\.fp32\.files\.segment.*outside"):
        load_package(package)
    _edit(package, lambda m: (m.pop("engines"), m["source"].update(checkpoint="../x.pth")))
    with pytest.raises(UserError, match=r"source\.checkpoint.*outside"):
        load_package(package)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["streaming"].update(mem_every="x"), r"streaming\.mem_every should be a whole number.*'x'"),
    (lambda m: m["streaming"].update(top_k=None), r"streaming\.top_k should be a whole number.*None"),
    (lambda m: m["streaming"].update(memory_capacity=2.5), r"streaming\.memory_capacity.*2\.5"),
    (lambda m: m["streaming"].update(max_objects=True), r"streaming\.max_objects.*True"),
    (lambda m: m.update(streaming=[5, 20]), r"'streaming' should be an object"),
    (lambda m: m["resolution"].update(height=32.7), r"resolution\.height should be a whole number.*32\.7"),
    (lambda m: m["resolution"].update(width="32"), r"resolution\.width"),
    (lambda m: m["graphs"]["segment"].update(portable=7), r"graphs\.segment\.portable should be a file name"),
    (lambda m: m.update(engines=["fp32"]), r"'engines' should be an object"),
    (lambda m: m.update(engines={"default": ["fp32"]}), r"engines\.default should name a precision"),
    (lambda m: m.update(engines={"fp32": "x"}), r"engines\.fp32 should be an object.*vosrt build"),
    (lambda m: m.update(engines={"fp32": {"files": ["a"]}}), r"engines\.fp32\.files should map graph names"),
    (lambda m: m.update(engines={"fp32": {"files": {"segment": 5}}}), r"engines\.fp32\.files\.segment should be a "
                                                                      r"file name, got 5"),
    (lambda m: m.update(dims="abc"), r"'dims' should be an object"),
    (lambda m: m.update(dims={"key_dim": -4}), r"dims\.key_dim should be a whole number >= 1"),
    (lambda m: m.update(source="checkpoint.pth"), r"'source' should be an object"),
    (lambda m: m["source"].update(checkpoint=5), r"source\.checkpoint should be a file name, got 5"),
    # the padding colour of every letterboxed frame: a NaN blanked the labels of every frame after the first
    (lambda m: m["input"].update(mean=[float("nan"), 0.456, 0.406]), r"input\.mean should be .* three numbers in "
                                                                      r"0\.\.1.*got \[nan, 0\.456, 0\.406\]"),
    (lambda m: m["input"].update(mean=[0.485, 0.456]), r"input\.mean should be.*got \[0\.485, 0\.456\]"),
    (lambda m: m["input"].update(mean=[123.675, 116.28, 103.53]), r"input\.mean should be.*0\.\.1.*123\.675"),
    (lambda m: m["input"].update(mean=[True, 0.5, 0.5]), r"input\.mean should be"),
    (lambda m: m["input"].update(mean=[10**400, 0.5, 0.5]), r"input\.mean should be"),   # no float holds it
    (lambda m: m.update(input="RGB"), r"'input' should be an object"),
    (lambda m: m["graphs"].update(segment="segment.portable.onnx"), r"graphs\.segment should map forms to file "
                                                                    r"names.*got str"),
    (lambda m: m["streaming"].update(memory_capacity=10**12), r"memory_capacity: 1000000000000 frames of 4 "
                                                               r"positions exceed"),
    # session settings the manifest load takes (whole numbers) but a session does not: the error names the file
    (lambda m: m["streaming"].update(memory_capacity=1), r"memory_capacity: expected at least 2 frames.*got 1 "
                                                         r"\(from .*manifest\.json, streaming\.memory_capacity\)"),
    (lambda m: m["streaming"].update(max_objects=0), r"max_objects: expected a positive whole number.*got 0 "
                                                     r"\(from .*manifest\.json, streaming\.max_objects\)"),
])
def test_bad_manifest_values_are_refused_at_load_naming_the_setting(package, change, message):
    _edit(package, change)
    with pytest.raises(UserError, match=message):
        vosrt.sdk.load(package)


def test_a_whole_float_in_the_manifest_is_taken_as_the_integer(package):
    _edit(package, lambda m: (m["resolution"].update(height=32.0), m["streaming"].update(mem_every=3.0)))
    tracker = vosrt.sdk.load(package, threads=1)
    assert tracker.size == (32, 32) and tracker.mem_every == 3 and isinstance(tracker.mem_every, int)


def test_graphs_of_another_resolution_than_the_manifest_are_refused_at_open(package):
    _edit(package, lambda m: m["resolution"].update(height=64))
    with pytest.raises(UserError, match=r"graph 'encode_key' takes images of 32x32.*resolution 64x32"):
        vosrt.sdk.load(package, threads=1)


@pytest.mark.parametrize("clip_length, overlap", [(4, 1), (16, 4)])
def test_a_clip_graph_of_another_clip_length_than_the_manifest_is_refused_at_open(tmp_path, clip_length, overlap):
    # The session opened, took frames and failed at the first clip with ONNX Runtime's "Got invalid dimensions
    # for input: clip ... index: 2 Got: 4 Expected: 8".
    folder = colour_embedding_package(tmp_path / "pkg")
    _edit(folder, lambda m: m["streaming"].update(clip_length=clip_length, overlap=overlap))
    with pytest.raises(UserError, match=rf"graph 'embed_clip' takes clips of 8 frames.*streaming.clip_length "
                                        rf"{clip_length}; set clip_length to 8"):
        vosrt.sdk.load(folder, threads=1)
    _edit(folder, lambda m: m["streaming"].update(clip_length=8, overlap=overlap))
    assert vosrt.sdk.load(folder, threads=1).clip_length == 8


def test_a_manifest_nested_too_deeply_to_read_is_refused(package):
    (package / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        vosrt.sdk.load(package)


def test_a_graph_file_that_is_another_graph_is_refused_when_the_session_opens(package):
    shutil.copy(package / "encode_key.portable.onnx", package / "segment.portable.onnx")
    with pytest.raises(UserError, match=r"graph 'segment' has no input\(s\) mem_key, mem_value, query_key.*the file "
                                        r"is not that graph"):
        vosrt.sdk.load(package, threads=1)


def test_a_graph_file_taking_inputs_the_graph_is_not_given_is_refused_when_the_session_opens(package):
    # encode_value's file in encode_key's place takes 'image' like encode_key, so no input was missing: the
    # session opened and the first frame failed with ONNX Runtime's "Required inputs (['f16', 'masks']) are
    # missing from input feed (['image'])" traceback.
    shutil.copy(package / "encode_value.portable.onnx", package / "encode_key.portable.onnx")
    with pytest.raises(UserError, match=r"graph 'encode_key' also takes f16, masks, which a stcn 'encode_key' graph "
                                        r"is not given.*the file is not that graph"):
        vosrt.sdk.load(package, threads=1)


def test_a_memory_bank_too_large_for_host_memory_is_a_user_error_naming_the_setting(package):
    import numpy as np

    overcommit = Path("/proc/sys/vm/overcommit_memory")
    if overcommit.is_file() and overcommit.read_text().strip() == "1":
        pytest.skip("this kernel grants any allocation (vm.overcommit_memory = 1)")
    # 2**31 - 1 positions in all, just under the readout's limit: a float32 key buffer of 64 x 2**31 values
    tracker = vosrt.sdk.load(package, threads=1, memory_capacity=(2**31 - 1) // 4)
    frame = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 8:20] = 1
    with pytest.raises(UserError, match=r"memory_capacity: a memory bank of 536870911 frames needs a .* GiB buffer"):
        tracker.step(frame, mask)


def test_writing_a_manifest_replaces_a_planted_link_instead_of_writing_through_it(tmp_path):
    from vosrt.sdk.package import write_manifest

    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "manifest.json").symlink_to(victim)
    write_manifest(folder, {"family": "stcn"})
    assert victim.read_text() == "not yours" and not (folder / "manifest.json").is_symlink()
    assert json.loads((folder / "manifest.json").read_text()) == {"family": "stcn"}
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json"]


def test_the_manifest_top_k_is_what_the_portable_segment_graph_reads_with(package, source_package):
    # top_k was fed only where it differed from the manifest's, on the belief that the graph's default is the
    # manifest's: a manifest whose streaming.top_k was edited after the export streamed with the export's
    from vosrt.sdk.synthetic import generate_sequence

    _edit(package, lambda m: m["streaming"].update(top_k=3))
    seq = generate_sequence(7, num_frames=4, height=64, width=96, num_objects=2)

    def labels(folder, **options):
        with vosrt.sdk.load(folder, backend="onnxruntime", form="portable", threads=1, color="rgb", mem_every=1,
                            **options) as tracker:
            tracker.step(seq.frames[0], seq.labels[0])
            return [tracker.step(frame, return_probabilities=True)[1] for frame in seq.frames[1:]]

    edited, asked, exported = labels(package), labels(source_package, top_k=3), labels(source_package)
    assert all(np.array_equal(a, b) for a, b in zip(edited, asked))
    assert max(np.abs(a - b).max() for a, b in zip(edited, exported)) > 1e-4, "top_k 3 reads as the export's here"


@pytest.mark.parametrize("value", [10**400, -10**400, float("nan"), float("inf"), "0.5", True])
def test_a_real_valued_setting_that_no_float_holds_is_refused_naming_it(value):
    # a JSON integer of 400 digits made math.isfinite raise OverflowError: a traceback, not the setting's name
    from vosrt.sdk.package import _number

    with pytest.raises(UserError, match=r"m\.json: streaming\.min_seediness should be a finite number"):
        _number({"min_seediness": value}, "min_seediness", Path("m.json"), "streaming")
    assert _number({"min_seediness": 3}, "min_seediness", Path("m.json"), "streaming") == 3.0
