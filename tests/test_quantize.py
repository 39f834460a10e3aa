"""``vosrt quantize``: an INT8 (QDQ, per-channel) copy of a package, calibrated on real frames read from
disk, that the SDK streams like the fp32 package; the custom operators stay fp32."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

from vosrt.cli import main
from vosrt.sdk.backends.onnxruntime import OnnxRuntimeBackend
from vosrt.sdk.package import load_package
from vosrt.sdk.synthetic import generate_sequence, write_davis
from vosrt.sdk.tracker import Tracker

from vosrt.sdk.cli_demo import demo_package

from media import suggested_commands
from sdk_packages import tiny_package


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    write_davis(root, "calib", generate_sequence(11, num_frames=10, height=240, width=432, num_objects=2))
    return root / "JPEGImages" / "480p" / "calib"


@pytest.fixture(scope="module")
def tiny_int8(calibration, tmp_path_factory):
    """Quantized by the command in a process of its own, whose stderr has its progress lines but not the
    quantizer's pre-processing advice or ONNX Runtime's note on ``top_k``."""
    out = tmp_path_factory.mktemp("int8") / "tiny-int8"
    run = subprocess.run([sys.executable, "-m", "vosrt.cli", "quantize", str(tiny_package("stcn")), "--calibrate",
                          str(calibration), "--out", str(out), "--frames", "10"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "vosrt quantize: quantizing segment" in run.stderr
    assert "Please consider" not in run.stderr and "appears in graph inputs" not in run.stderr, run.stderr
    return out


@pytest.fixture(scope="module")
def demo_int8(calibration, tmp_path_factory):
    """The shipped (trained) stcn-lite demo model, quantized: random weights would leave every pixel near a
    tie, where any rounding flips the label."""
    out = tmp_path_factory.mktemp("int8") / "stcn-lite-int8"
    assert main(["quantize", str(demo_package("stcn")), "--calibrate", str(calibration), "--out", str(out),
                 "--frames", "10"]) == 0
    return out


def _producers(model):
    return {o: n for n in model.graph.node for o in n.output}


def test_quantized_package_has_int8_per_channel_convolutions(tiny_int8):
    int8_package = tiny_int8
    manifest = json.loads((int8_package / "manifest.json").read_text())
    assert manifest["quantization"]["graphs"]["segment"]["convs_int8"] > 0
    for graph, forms in manifest["graphs"].items():
        model = onnx.load(str(int8_package / forms["portable"]))
        producers = _producers(model)
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        weights = [producers[c.input[1]] for c in convs if c.input[1] in producers]
        assert weights and all(w.op_type == "DequantizeLinear" for w in weights), graph
        initializers = {i.name: i for i in model.graph.initializer}
        for w in weights:  # per-channel: one scale per output channel, int8 weights
            weight = initializers[w.input[0]]
            assert list(initializers[w.input[1]].dims) == [weight.dims[0]]
            assert weight.data_type == onnx.TensorProto.INT8


def test_only_convolutions_are_quantized_so_the_memory_readout_stays_fp32(tiny_int8):
    int8_package = tiny_int8
    model = onnx.load(str(int8_package / "segment.int8.onnx"))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    consumers = {n.op_type for n in model.graph.node if dequantized & set(n.input)}
    assert "Conv" in consumers and not consumers & {"MatMul", "TopK", "Softmax", "Gather", "ScatterElements"}
    # Nothing upstream of the top-k (the affinity from the keys) passes through a quantizer.
    producers = _producers(model)
    (topk,) = [n for n in model.graph.node if n.op_type == "TopK"]
    upstream, frontier = set(), [topk]
    while frontier:
        node = frontier.pop()
        upstream.add(node.op_type)
        frontier.extend(producers[i] for i in node.input if i in producers)
    assert "MatMul" in upstream and not upstream & {"QuantizeLinear", "DequantizeLinear"}


@pytest.mark.slow
def test_sdk_streams_the_int8_demo_package_close_to_fp32(demo_int8):
    int8_package = demo_int8
    sequence = generate_sequence(12, num_frames=8, height=240, width=432, num_objects=2)
    results = {}
    for name, path in (("fp32", demo_package("stcn")), ("int8", int8_package)):
        package = load_package(path)
        tracker = Tracker(OnnxRuntimeBackend(package, device="cpu"), package, color="rgb")
        results[name] = [tracker.step(f, sequence.labels[0] if t == 0 else None) for t, f in enumerate(sequence.frames)]
    agree = np.mean([np.mean(a == b) for a, b in zip(results["fp32"], results["int8"])])
    assert agree > 0.97


def _frame_folder(tmp_path):
    """tmp_path/frames: three 32×32 generated frames as PNGs, no annotation beside them."""
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(generate_sequence(13, num_frames=3, height=32, width=32).frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), frame)
    return folder


def test_quantize_needs_a_mask_for_stcn_from_a_plain_folder(tmp_path, capsys):
    folder = _frame_folder(tmp_path)
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(folder), "--out", str(tmp_path / "o")]) != 0
    assert "--mask" in capsys.readouterr().err


def _conv_quantization(model) -> list[tuple]:
    """(input scale, input zero point, weight scales, int8 weights) of every Conv, in graph order."""
    producers = _producers(model)
    values = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    found = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        act, weight = producers[conv.input[0]], producers[conv.input[1]]
        assert act.op_type == weight.op_type == "DequantizeLinear"
        found.append((values[act.input[1]].item(), values[act.input[2]].item(), values[weight.input[1]].tobytes(),
                      values[weight.input[0]].tobytes()))
    return found


def test_int8_plugin_form_quantizes_each_convolution_exactly_as_the_portable_form(demo_int8):
    manifest = json.loads((demo_int8 / "manifest.json").read_text())
    graphs = manifest["graphs"]
    # Graphs without a custom operator are one graph in both forms: one file.
    assert graphs["encode_key"]["plugin"] == graphs["encode_key"]["portable"]
    assert graphs["segment"]["plugin"] != graphs["segment"]["portable"]
    assert manifest["quantization"]["graphs"]["segment"]["plugin_form"] is True
    plugin = onnx.load(str(demo_int8 / graphs["segment"]["plugin"]))
    portable = onnx.load(str(demo_int8 / graphs["segment"]["portable"]))
    assert [n.op_type for n in plugin.graph.node if n.domain == "trt.plugins"] == ["L2MemoryReadout"]
    assert not {n.op_type for n in plugin.graph.node} & {"TopK", "GatherElements", "Gather"}
    plugin_q, portable_q = _conv_quantization(plugin), _conv_quantization(portable)
    assert len(plugin_q) == len(portable_q) > 0
    assert plugin_q == portable_q
    assert not list(demo_int8.glob("*.calibration.json"))  # the calibration table is not left in the package


def test_int8_plugin_form_runs_on_onnx_runtime_close_to_the_int8_portable_form(demo_int8):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))
    from bench_stcn_graphs import _inputs

    package = load_package(demo_int8)
    portable = OnnxRuntimeBackend(package, form="portable", device="cpu")
    plugin = OnnxRuntimeBackend(package, form="plugin", device="cpu")
    assert plugin.forms == {"encode_key": "portable", "encode_value": "portable", "segment": "plugin"}
    feeds = _inputs(portable, package, objects=2, memory_frames=6)["segment"]
    feeds["mem_key"] = feeds["mem_key"] + np.random.default_rng(3).standard_normal(feeds["mem_key"].shape,
                                                                                    dtype=np.float32)
    a, b = portable.run("segment", feeds), plugin.run("segment", feeds)
    # The readouts agree to float rounding; an activation that lands on a quantization step's edge can
    # move by one step, so the bound is a few steps of the decoder's output, not float precision.
    assert np.abs(a["prob"] - b["prob"]).max() < 0.05
    assert np.mean(a["labels"] == b["labels"]) > 0.99


def test_build_refuses_an_int8_package_and_names_the_fp32_package_to_build_instead(tiny_int8, capsys):
    assert main(["build", str(tiny_int8), "--precision", "fp16"]) != 0
    message = capsys.readouterr().err
    assert "INT8 package" in message and "TensorRT does not take" in message
    hint = suggested_commands(message)[-1]
    assert hint[:2] == ["build", str(tiny_package("stcn").resolve())] and hint[2:] == ["--precision", "fp16"]
    main(hint)  # the fp32 package gets past this check (to TensorRT, or to its missing plugin form here)
    assert "INT8 package" not in capsys.readouterr().err


def test_quantize_refuses_an_int8_package_and_names_the_fp32_package_to_quantize(tiny_int8, calibration, tmp_path,
                                                                                 capsys):
    out = tmp_path / "twice"
    assert main(["quantize", str(tiny_int8), "--calibrate", str(calibration), "--out", str(out), "--frames", "10"]) == 2
    message = capsys.readouterr().err
    assert "already an INT8 package" in message and not out.exists()
    hint = suggested_commands(message)[-1]
    assert hint[:2] == ["quantize", str(tiny_package("stcn").resolve())]
    assert main(hint + ["--frames", "10"]) == 0   # the fp32 package, quantized once: ONNX Runtime opens it
    OnnxRuntimeBackend(load_package(out))


def test_an_out_that_is_a_file_is_a_user_error_naming_the_flag(calibration, tmp_path, capsys):
    # a traceback (FileExistsError, NotADirectoryError) after the whole calibration; then the error, after it
    (tmp_path / "file").write_text("")
    for out, said in ((tmp_path / "file", "is a file; give a folder"), (tmp_path / "file" / "sub", "cannot create")):
        assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out", str(out),
                     "--frames", "10"]) == 2
        printed = capsys.readouterr()
        assert f"--out {out}" in printed.err and said in printed.err, printed.err
        assert "calibrating" not in printed.out + printed.err   # said before minutes of calibration, not after


def test_an_interrupted_calibration_leaves_no_folder_it_made_and_an_earlier_package_as_it_was(
        calibration, tmp_path, monkeypatch, capsys):
    # --out is made before calibrating (so that an --out that cannot be made is said before minutes of work), and a
    # run stopped there removed only --out: the parents mkdir made with it stayed behind
    import vosrt.export.quantize as quantize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "record_calibration", interrupted)
    out = tmp_path / "new" / "deeper" / "int8"
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out", str(out),
                 "--frames", "4"]) == 130
    assert not (tmp_path / "new").exists()
    # a path through "..": mkdir made new2 on the way, which is removed too
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out",
                 str(tmp_path / "new2" / ".." / "made"), "--frames", "4"]) == 130
    assert not (tmp_path / "new2").exists() and not (tmp_path / "made").exists()
    # "missing/.." is the folder that holds it, which exists: only "missing" is the run's to remove (the folder
    # holding it, the user's files with it, was removed whole: the path did not exist as given)
    (tmp_path / "precious.txt").write_text("mine")
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out",
                 str(tmp_path / "missing" / ".."), "--frames", "4"]) == 130
    assert (tmp_path / "precious.txt").read_text() == "mine" and not (tmp_path / "missing").exists()
    # and an fp32 package reached through ".." is refused as one named directly (it was quantized over)
    import shutil

    shutil.copytree(tiny_package("stcn"), tmp_path / "fp32")
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out",
                 str(tmp_path / "new3" / ".." / "fp32"), "--frames", "4"]) == 2
    assert "quantization" not in json.loads((tmp_path / "fp32" / "manifest.json").read_text())
    assert not (tmp_path / "new3").exists()

    # another run's package, put meanwhile beside --out in a folder this run made, is kept with that folder
    # (the whole folder was removed, the other run's finished package with it)
    def interrupted_beside_another_run(*args, **kwargs):
        (tmp_path / "shared" / "other-int8").mkdir()
        (tmp_path / "shared" / "other-int8" / "manifest.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(quantize, "record_calibration", interrupted_beside_another_run)
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out",
                 str(tmp_path / "shared" / "int8"), "--frames", "4"]) == 130
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == ["other-int8"]
    assert (tmp_path / "shared" / "other-int8" / "manifest.json").is_file()
    monkeypatch.setattr(quantize, "record_calibration", interrupted)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "mine.txt").write_text("kept")
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out", str(earlier),
                 "--frames", "4"]) == 130
    assert sorted(p.name for p in earlier.iterdir()) == ["mine.txt"]   # no .vosrt-quantize-* folder either


def test_quantize_refuses_a_package_of_only_3d_convolutions_since_int8_would_be_slower(calibration, tmp_path, capsys):
    out = tmp_path / "c3d-int8"
    assert main(["quantize", str(tiny_package("3dc-seg")), "--calibrate", str(calibration), "--out", str(out),
                 "--frames", "8"]) != 0
    message = capsys.readouterr().err
    assert "only 3D convolutions" in message and "keep the fp32 package" in message
    assert not out.exists()


def test_the_int8_copy_carries_the_checkpoint_its_manifest_records(demo_int8):
    """The torch backend and `vosrt check` of the INT8 copy read the checkpoint its manifest records."""
    from vosrt.sdk.package import file_sha256

    package = load_package(demo_int8)
    source = package.manifest["source"]
    assert package.checkpoint == package.path / source["checkpoint"] and package.checkpoint.is_file()
    assert file_sha256(package.checkpoint) == source["sha256"]


def test_calibration_too_short_for_the_segment_graph_is_refused_before_any_graph_is_quantized(
        calibration, tmp_path, capsys):
    # One frame only runs the encoders (the first frame carries the mask): the error used to come after
    # encode_key and encode_value had been quantized into --out (left there without a manifest), with a
    # hint about clips that does not apply to stcn; now before the calibration
    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out", str(out),
                 "--frames", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --frames 1: a stcn package segments from the second frame on") and "clip" not in err
    assert "2 or more frames" in err and "calibrating on" not in err
    assert not out.exists() or not list(out.iterdir())


def test_quantize_refuses_an_empty_mask_with_the_cli_option_to_fix(tmp_path, capsys):
    from vosrt.sdk.masks import write_label_png

    folder = _frame_folder(tmp_path)
    write_label_png(tmp_path / "empty.png", np.zeros((32, 32), np.uint8))
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(folder), "--mask",
                 str(tmp_path / "empty.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --mask: no object in it") and "step(" not in err


def test_check_of_an_int8_package_without_its_fp32_package_says_how_to_judge_it(tiny_int8, tmp_path, capsys):
    # `vosrt check` of a working INT8 package printed "check failed" (93% of pixels differing on random inputs)
    import shlex
    import shutil

    moved = tmp_path / "int8"
    shutil.copytree(tiny_int8, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["quantization"]["source_package"] = str(tmp_path / "gone")   # its fp32 package no longer there
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert main(["check", str(moved)]) == 2
    err = capsys.readouterr().err
    assert (f"is an INT8 package (vosrt quantize): its outputs differ from the PyTorch model by quantisation, beyond "
            f"check's fp32 tolerance 0.001. Its fp32 package, recorded at {tmp_path / 'gone'}, is not there any more"
            in err) and f"Check the fp32 package (`vosrt check {shlex.quote(str(tmp_path / 'gone'))}`)" in err
    hints = suggested_commands(err)
    # no `--tolerance 1` hint: on random inputs it passed an INT8 package whose decoder weights were negated (J&F
    # 0.083, below copying the first mask), which the demo's J&F shows
    assert hints[1] == ["demo", "--family", "stcn", "--heldout", "16", "--package", str(moved)] and len(hints) == 2
    assert "A --tolerance of your own prints its errors on random inputs, which say little" in err
    # with a tolerance given it is compared, one line per graph output, with a note on what that cannot show
    assert main(["check", str(tiny_int8), "--tolerance", "1"]) == 0
    out, err = capsys.readouterr()
    assert "segment" in out and "check passed" in out
    assert "is an INT8 package: its errors on random inputs" in err and "--heldout 16 --package" in err


def test_check_of_an_int8_package_segments_held_out_clips_beside_its_fp32_package(demo_int8, tiny_int8, tmp_path,
                                                                                  capsys):
    import shutil

    import onnx
    from onnx import numpy_helper

    # the shipped model's INT8 copy follows its fp32 package
    assert main(["check", str(demo_int8)]) == 0
    out = capsys.readouterr().out
    agreement = float(out.split("agreement with the fp32 package's labels   J&F ")[1].split()[0])
    assert agreement > 0.9 and out.rstrip().endswith("check passed"), out
    # an untrained one agrees with nothing, its fp32 package included, which itself segments nothing: no verdict
    assert main(["check", str(tiny_int8)]) == 1
    assert "check inconclusive: the fp32 package itself barely segments these generated clips" in capsys.readouterr().out
    assert main(["check", str(tiny_int8), "--checkpoint", "x.pth"]) == 2      # not ignored without a word
    assert "--checkpoint: " in capsys.readouterr().err
    # its decoder's output weights negated (every object inverted): it passed `--tolerance 1`; here it fails
    broken = tmp_path / "broken"
    shutil.copytree(demo_int8, broken)
    for graph in broken.glob("segment*.onnx"):
        model = onnx.load(str(graph))
        for tensor in model.graph.initializer:
            if tensor.name in ("model.decoder.pred.weight_scale", "model.decoder.pred.bias_quantized_scale"):
                tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
        onnx.save(model, str(graph))
    assert main(["check", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "check failed: the INT8 package neither follows its fp32 package" in out
    assert suggested_commands(out)[0][:2] == ["quantize", str(demo_package("stcn"))]
    # its fp32 package changed since (re-exported at the recorded path, other weights): no reference, said so
    fp32 = tmp_path / "fp32"
    shutil.copytree(demo_package("stcn"), fp32)
    copy = tmp_path / "copy-int8"
    shutil.copytree(demo_int8, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["quantization"]["source_package"] = str(fp32)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert main(["check", str(copy)]) == 0
    capsys.readouterr()
    (fp32 / manifest["quantization"]["source_graphs"]["segment.portable"][0]).write_bytes(b"another graph")
    assert main(["check", str(copy)]) == 2
    assert "whose graphs have changed since (segment.portable" in capsys.readouterr().err
    shutil.rmtree(fp32)
    assert main(["check", str(copy)]) == 2
    assert f"Its fp32 package, recorded at {fp32}, is not there any more" in capsys.readouterr().err


def test_a_failed_check_of_an_int8_package_suggests_quantizing_again_not_an_export(tiny_int8, calibration, tmp_path,
                                                                                   capsys):
    # it suggested `vosrt export ... --out INT8_PACKAGE`, which export refuses (it never writes over an INT8 package)
    assert main(["check", str(tiny_int8), "--tolerance", "1e-12"]) == 1
    hints = suggested_commands(capsys.readouterr().out)
    assert hints[0] == ["quantize", str(tiny_package("stcn").resolve()), "--calibrate", str(calibration), "--frames",
                        "10", "--out", str(tiny_int8)], hints
    assert main(hints[0][:-1] + [str(tmp_path / "again")]) == 0     # it runs (here into another folder)


@pytest.mark.parametrize("given", ["missing-folder", "frame.png"])
def test_a_calibration_source_that_cannot_be_read_is_an_error_naming_calibrate(tmp_path, capsys, given):
    # The error came from the video reader as "--source: ... not a ... folder that exists", a flag
    # `vosrt quantize` does not have
    import cv2
    import numpy as np

    source = tmp_path / given
    if given.endswith(".png"):
        cv2.imwrite(str(source), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(source), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: --calibrate: {source}" in err and "--source" not in err
    assert not out.exists()


@pytest.mark.parametrize("form", ["plugin", "portable"])
def test_a_damaged_graph_file_is_named_before_calibrating(calibration, tmp_path, capsys, form):
    # A cut-short segment.plugin.onnx raised protobuf's DecodeError (a traceback) after the calibration and the
    # portable graphs' quantization, with encode_key, encode_value and segment INT8 files left in --out.
    import shutil

    package = tmp_path / "pkg"
    shutil.copytree(tiny_package("stcn", ("portable", "plugin")), package)
    damaged = package / f"segment.{form}.onnx"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    out = tmp_path / "int8"
    assert main(["quantize", str(package), "--calibrate", str(calibration), "--out", str(out), "--frames", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {damaged}: cannot read this ONNX graph file") and "re-export" in err, err
    assert "calibrating" not in err and not out.exists()


def test_an_interrupted_quantize_leaves_an_earlier_package_in_out_as_it_was_and_no_folder_it_created(
        tiny_int8, calibration, tmp_path):
    # The manifest of an earlier package in --out was deleted first and its graphs overwritten one by one: a run
    # stopped halfway (Ctrl-C, a failure) left a folder of INT8 files and calibration tables that is no package.
    import shutil

    from vosrt.export.quantize import quantize_package
    from vosrt.sdk.video import open_source

    def interrupt(line):
        if line.startswith("quantizing segment"):   # encode_key and encode_value are quantized by now
            raise KeyboardInterrupt

    source = open_source(str(calibration))
    first_mask, frames = source.first_mask(), list(source)[:3]
    source.close()
    earlier = tmp_path / "earlier"
    shutil.copytree(tiny_int8, earlier)
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}
    fresh = tmp_path / "fresh"
    for out in (earlier, fresh):
        with pytest.raises(KeyboardInterrupt):
            quantize_package(load_package(tiny_package("stcn")), frames, first_mask, out, progress=interrupt)
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before
    OnnxRuntimeBackend(load_package(earlier))
    assert not fresh.exists()


def test_quantize_shows_how_far_the_calibration_stream_is(calibration, tmp_path, capsys):
    # Only "calibrating on N frames" was printed before the frames streamed through the package: minutes without a
    # word for a full-size model (README: 2.75 s per frame for STCN at 480x864, 60 frames by default).
    pytest.importorskip("tqdm")   # the bar (without it: a line a second, none in this short run)
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out",
                 str(tmp_path / "int8"), "--frames", "3"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"calibrating: 100%.* 3/3 ", err), err


def test_check_of_an_int8_package_of_another_family_suggests_a_demo_command_that_runs_it(tmp_path, capsys):
    # The suggested `vosrt demo --heldout 16 --package PKG` was refused for a stem-seg (or 3dc-seg) package:
    # "holds a stem-seg model, not stcn: add --family stem-seg"
    from sdk_packages import colour_embedding_package
    from vosrt.sdk.package import write_manifest

    package = colour_embedding_package(tmp_path / "stem-int8")   # an INT8 package's manifest records this entry
    manifest = json.loads((package / "manifest.json").read_text())
    write_manifest(package, {**manifest, "quantization": {"source_package": str(tmp_path / "stem")}})
    assert main(["check", str(package)]) == 2
    demo = [hint for hint in suggested_commands(capsys.readouterr().err) if hint[0] == "demo"]
    assert demo == [["demo", "--family", "stem-seg", "--heldout", "16", "--package", str(package)]]
    assert main(demo[0] + ["--heldout", "1", "--frames", "8"]) == 0, capsys.readouterr().err


def test_a_package_without_the_portable_form_is_refused_before_calibrating_with_the_re_export_to_run(
        calibration, tmp_path, capsys):
    # A plugin-only stcn package was refused as having "only 3D convolutions" (its Conv nodes were counted in the
    # portable form alone), advising to keep the fp32 package, when a re-export with both forms is what it needs.
    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_package("stcn", ("plugin",))), "--calibrate", str(calibration), "--out",
                 str(out), "--frames", "3"]) == 2
    err = capsys.readouterr().err
    assert "has no portable form of encode_key, encode_value, segment" in err, err
    assert "3D convolutions" not in err and "calibrating" not in err and not out.exists()
    command = suggested_commands(err)[-1]
    assert command[:2] == ["export", "stcn-lite"] and command[command.index("--forms") + 1] == "plugin,portable"


def test_an_out_holding_an_fp32_package_is_refused_and_left_as_it_was(calibration, tmp_path, capsys):
    # `--out` naming another fp32 package replaced its manifest with the INT8 one: the fp32 graphs stayed as files
    # but were no longer a package (its engines record lost with them). An earlier INT8 package is still replaced.
    import shutil

    other = tmp_path / "other-fp32"
    shutil.copytree(tiny_package("stcn", ("portable", "plugin")), other)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    args = ["--calibrate", str(calibration), "--frames", "3"]
    assert main(["quantize", str(tiny_package("stcn")), *args, "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"--out {other} holds a stcn package (stcn-lite); writing the INT8 package there would replace it" in err
    assert "Give another --out folder" in err, err
    assert "calibrating" not in err
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    int8 = tmp_path / "int8"
    assert main(["quantize", str(tiny_package("stcn")), *args, "--out", str(int8)]) == 0
    assert main(["quantize", str(tiny_package("stcn")), *args, "--out", str(int8)]) == 0   # a rerun replaces it
    assert load_package(int8).quantization["calibration"]["frames"] == 3


def test_an_out_folder_holding_a_weights_file_of_the_user_s_is_refused_before_calibrating(calibration, tmp_path,
                                                                                          capsys):
    # quantize put the source package's weights.pt (and training.json) over the user's own without a word, where
    # vosrt export --random-weights refuses
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "training.json").write_text('{"my": "training record"}')
    (mine / "checkpoint.pth").write_bytes(b"my trained weights")
    assert main(["quantize", str(demo_package("stcn")), "--calibrate", str(calibration), "--frames", "3", "--out",
                 str(mine)]) == 2
    err = capsys.readouterr().err
    assert (f"--out {mine} holds checkpoint.pth and training.json, which the INT8 package would replace" in err
            and "calibrating" not in err), err
    assert sorted(p.name for p in mine.iterdir()) == ["checkpoint.pth", "training.json"]
    assert (mine / "checkpoint.pth").read_bytes() == b"my trained weights"


def test_the_quantize_an_int8_package_suggests_keeps_the_mask_a_plain_folder_needs(tmp_path, capsys):
    # The suggested `vosrt quantize FP32 --calibrate SRC --out OUT` left out --mask: run as printed, it was refused
    # for a calibration folder without annotations ("--mask: stcn packages are calibrated by tracking objects").
    from vosrt.sdk.masks import write_label_png

    folder = _frame_folder(tmp_path)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:24] = 1
    write_label_png(tmp_path / "first.png", mask)
    int8 = tmp_path / "int8"
    given = ["--calibrate", str(folder), "--mask", str(tmp_path / "first.png")]
    assert main(["quantize", str(tiny_package("stcn")), *given, "--out", str(int8)]) == 0
    assert load_package(int8).quantization["calibration"]["mask"] == str(tmp_path / "first.png")
    capsys.readouterr()
    assert main(["quantize", str(int8), *given, "--out", str(tmp_path / "again")]) == 2
    hint = suggested_commands(capsys.readouterr().err)[-1]
    assert hint[:2] == ["quantize", str(tiny_package("stcn").resolve())]
    assert main(hint) == 0, capsys.readouterr().err


def test_a_calibration_folder_of_unreadable_images_is_an_error_naming_calibrate(tmp_path, capsys):
    # "error: the calibration source gave no frames": neither the flag nor the folder was named.
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "00000.jpg").write_text("not a JPEG")
    from vosrt.sdk.masks import write_label_png

    write_label_png(tmp_path / "m.png", np.ones((32, 32), np.uint8))
    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(folder), "--mask", str(tmp_path / "m.png"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: --calibrate {folder}: none of its 1 image(s) could be read (see the warnings above)" in err, err
    assert not out.exists()
    # a video with no frames printed no warning: the error pointed at "the warnings above", which were not there
    import cv2

    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 32)).release()
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(empty), "--mask", str(tmp_path / "m.png"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "it gave no frame (a video with no frames" in err and "warnings above" not in err, err


@pytest.mark.parametrize("command", [["check", "--backend", "tensorrt", "--tolerance", "0.5"],
                                     ["check", "--backend", "tensorrt"],
                                     ["run", "--backend", "tensorrt", "--source", "CALIBRATION"]])
def test_the_tensorrt_backend_on_an_int8_package_names_the_fp32_package_to_build(tiny_int8, calibration, tmp_path,
                                                                                 capsys, command):
    # It suggested `vosrt build INT8_PACKAGE`, which `vosrt build` refuses; `check --backend tensorrt` without a
    # tolerance answered about comparing with PyTorch instead, and suggested a check on ONNX Runtime.
    args = [str(calibration) if arg == "CALIBRATION" else arg for arg in command[1:]]
    if command[0] == "run":
        args += ["--out", str(tmp_path / "masks")]
    assert main([command[0], str(tiny_int8), *args]) == 2
    err = capsys.readouterr().err
    assert "is an INT8 package made by `vosrt quantize`" in err and "no TensorRT engines" in err, err
    assert f"vosrt build {tiny_int8}" not in err and "--tolerance" not in err
    assert suggested_commands(err)[-1] == ["build", str(tiny_package("stcn").resolve())]


def test_mask_errors_name_the_option_and_a_mask_of_another_size_is_refused_before_calibrating(tmp_path, capsys):
    # The errors said "mask file not found: ..." and "mask ...: ..." without the option, and a mask of another
    # size than the frames was found only once calibration had started, deep in the tracker.
    from vosrt.sdk.masks import write_label_png

    folder = _frame_folder(tmp_path)
    out = tmp_path / "o"
    base = ["quantize", str(tiny_package("stcn")), "--calibrate", str(folder), "--out", str(out), "--mask"]
    assert main(base + [str(tmp_path / "missing.png")]) == 2
    assert f"error: --mask {tmp_path / 'missing.png'}: no such file" in capsys.readouterr().err
    (tmp_path / "mask.jpg").write_bytes((folder / sorted(p.name for p in folder.iterdir())[0]).read_bytes())
    assert main(base + [str(tmp_path / "mask.jpg")]) == 2
    assert f"error: --mask {tmp_path / 'mask.jpg'}: " in capsys.readouterr().err
    write_label_png(tmp_path / "small.png", np.ones((16, 16), np.uint8))
    assert main(base + [str(tmp_path / "small.png")]) == 2
    err = capsys.readouterr().err
    assert f"error: --mask {tmp_path / 'small.png'}: 16x16 pixels, but the frames of --calibrate" in err, err
    assert "32x32" in err and "calibrat" not in err.split("error:")[0] and not out.exists()


def test_the_int8_copy_leaves_out_files_that_link_out_of_the_package(tmp_path):
    # weights.pt and training.json were checked with is_file() and copied through their links: a package whose
    # training.json linked to ~/.ssh/id_rsa put the key into the INT8 package, to be published with it
    import types

    from vosrt.export.quantize import _copied_files

    package = tmp_path / "pkg"
    package.mkdir()
    (tmp_path / "secret").write_text("private")
    (package / "training.json").symlink_to(tmp_path / "secret")
    (package / "weights.pt").write_bytes(b"weights")
    assert _copied_files(types.SimpleNamespace(path=package, checkpoint=None)) == ["weights.pt"]


def test_quantize_refuses_an_unreadable_first_frame_and_replaces_an_earlier_int8_package_whole(calibration, demo_int8,
                                                                                               tmp_path, capsys):
    # the first-frame mask was applied to the second frame when the first could not be read; and an INT8 package of
    # another family at --out kept its graphs beside the new package's
    import shutil

    frames = tmp_path / "frames"
    shutil.copytree(calibration, frames)
    first = sorted(frames.iterdir())[0]
    annotation = calibration.parents[2] / "Annotations" / "480p" / "calib" / f"{first.stem}.png"
    first.write_bytes(b"not an image")
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(frames), "--mask", str(annotation),
                 "--out", str(tmp_path / "x")]) == 2
    assert "its first frame cannot be read, and the first-frame mask belongs to it" in capsys.readouterr().err
    out = tmp_path / "int8"
    assert main(["quantize", str(tiny_package("stem-seg")), "--calibrate", str(calibration), "--out", str(out),
                 "--frames", "10"]) == 0
    assert (out / "embed_clip.int8.onnx").is_file()
    assert main(["quantize", str(tiny_package("stcn")), "--calibrate", str(calibration), "--out", str(out),
                 "--frames", "10"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["encode_key.int8.onnx", "encode_value.int8.onnx",
                                                      "manifest.json", "segment.int8.onnx"]
    assert f"removed {out / 'embed_clip.int8.onnx'} (of the INT8 package that was there)" in capsys.readouterr().err
    # what an INT8 package copied from its fp32 package (the checkpoint, the training record) goes with it too
    over = tmp_path / "over"
    shutil.copytree(demo_int8, over)
    assert {"checkpoint.pth", "training.json"} <= {p.name for p in over.iterdir()}
    assert main(["quantize", str(tiny_package("stem-seg")), "--calibrate", str(calibration), "--out", str(over),
                 "--frames", "10"]) == 0
    assert sorted(p.name for p in over.iterdir()) == ["embed_clip.int8.onnx", "manifest.json"]
    # quantized again into itself: the files it copies now are kept (training.json was removed as "earlier")
    again = tmp_path / "again"
    shutil.copytree(demo_int8, again)
    source = json.loads((again / "manifest.json").read_text())["quantization"]["source_package"]
    for _ in range(2):
        assert main(["quantize", source, "--calibrate", str(calibration), "--out", str(again), "--frames", "10"]) == 0
        copied = json.loads((again / "manifest.json").read_text())["quantization"]["copied"]
        assert "training.json" in copied and all((again / name).is_file() for name in copied)


def test_streamed_calibration_skips_a_feed_whose_activations_are_nan_as_quantize_static_did(tmp_path):
    # quantize_static took every feed at once through np.nanmin/np.nanmax; the streamed calibrator merged each feed's
    # range with min()/max(), where a NaN in the first feed stayed, and the INT8 graph got NaN scales
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from vosrt.export.quantize import RangeCalibration

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 1, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    onnx.save(model, str(tmp_path / "g.onnx"))
    package = type("Package", (), {"graphs": {"g": {"portable": tmp_path / "g.onnx"}}})()
    nan_feed = {"x": np.array([np.nan, 1, 2, 3], np.float32).reshape(1, 1, 2, 2)}
    feed = {"x": np.array([-5, 1, 2, 9], np.float32).reshape(1, 1, 2, 2)}

    def ranges(feeds, folder):
        calibration = RangeCalibration(package, tmp_path / folder)
        for one in feeds:
            calibration("g", one)
        calibration.write_table("g", tmp_path / f"{folder}.json")
        return json.loads((tmp_path / f"{folder}.json").read_text())

    streamed, expected = ranges([nan_feed, feed], "streamed"), ranges([feed], "expected")
    assert streamed == expected and "NaN" not in json.dumps(streamed), streamed
