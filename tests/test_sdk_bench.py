"""`vosrt bench`: per-stage timings of a package, and the ratio against torch measured in the same run."""
import pytest

from vosrt.cli import main

from media import suggested_commands


def test_bench_prints_ms_per_stage_fps_and_the_ratio_against_torch(stcn_package, capsys):
    code = main(["bench", str(stcn_package), "--frames", "6", "--warmup", "1", "--backend", "onnxruntime",
                 "--compare", "torch"])
    assert code == 0
    out = capsys.readouterr().out
    for stage in ("encode_key", "segment", "encode_value", "host", "total", "FPS", "speed-up"):
        assert stage in out
    fps_line = [line for line in out.splitlines() if line.startswith("FPS")][0]
    onnxruntime_fps, torch_fps, ratio = fps_line.split()[1:4]
    assert float(onnxruntime_fps) > 0 and float(torch_fps) > 0
    assert float(ratio.rstrip("x")) == pytest.approx(float(onnxruntime_fps) / float(torch_fps), rel=0.02)
    # the column's direction is said (it was not: with --backend torch --compare onnxruntime it read 0.4x)
    assert out.splitlines()[-1] == ("speed-up: onnxruntime over torch (torch ms / onnxruntime ms per stage, "
                                    "FPS onnxruntime / FPS torch), both measured in this run")


def test_bench_rejects_zero_frames(stcn_package, capsys):
    assert main(["bench", str(stcn_package), "--frames", "0"]) == 2
    assert "--frames" in capsys.readouterr().err


@pytest.mark.parametrize("flags, says", [
    (["--frames", "0"], "error: --frames: expected timed frames >= 1, got 0"),
    (["--warmup", "-1"], "error: --warmup: expected untimed frames >= 0, got -1"),
])
def test_a_bad_frame_count_is_refused_naming_only_its_own_flag(stcn_package, capsys, flags, says):
    # both flags were named whichever was wrong, a --warmup left out as 'None': "got 0 and None"
    assert main(["bench", str(stcn_package), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(says) and "None" not in err, err


@pytest.mark.parametrize("flags, named", [
    (["--compare", "bogus"], "--compare"),          # refused before the first backend is timed, not after
    (["--backend", "bogus"], "--backend"),
    (["--threads", "-1"], "--threads"),             # was passed to ONNX Runtime as is
    (["--compare", "torch", "--checkpoint", "missing.pth"], "--checkpoint"),
])
def test_bench_refuses_bad_flags_before_timing_anything(stcn_package, capsys, flags, named):
    assert main(["bench", str(stcn_package), "--frames", "2", *flags]) == 2
    captured = capsys.readouterr()
    assert named in captured.err and "encode_key" not in captured.out


@pytest.mark.parametrize("flags", [[], ["--compare", "onnxruntime"]])
def test_a_checkpoint_no_torch_backend_loads_is_refused_not_ignored(stcn_package, capsys, flags):
    # `--checkpoint X` without torch on either side was silently ignored: the table printed was not X's
    from sdk_packages import tiny_checkpoint

    checkpoint = str(tiny_checkpoint("stcn"))
    assert main(["bench", str(stcn_package), "--frames", "2", "--checkpoint", checkpoint, *flags]) == 2
    captured = capsys.readouterr()
    assert "encode_key" not in captured.out
    err = captured.err.strip()
    assert err.startswith("error: --checkpoint:") and "\n" not in err, err
    # no --backend given: its default is named as given, then what it is here (it read "--backend is onnxruntime")
    assert "this bench uses --backend auto, which is onnxruntime here" in err, err
    suggested = suggested_commands(err)[-1]
    assert suggested[suggested.index("--compare") + 1] == "torch" and checkpoint in suggested
    assert main(suggested + ["--frames", "2", "--warmup", "0"]) == 0
    assert "torch" in capsys.readouterr().out


@pytest.mark.parametrize("flags, starts", [
    (["--device", "cpu", "--compare", "tensorrt"], "error: --device cpu: --compare tensorrt runs on cuda only"),
    (["--threads", "1", "--compare", "tensorrt"], "error: --compare tensorrt: package"),   # it has no engines
])
def test_the_compare_backends_options_are_checked_before_the_first_backend_is_timed(stcn_package, capsys, flags,
                                                                                    starts):
    # --compare's options were checked only when it opened, after the first backend's whole timed run
    assert main(["bench", str(stcn_package), "--frames", "2", "--backend", "onnxruntime", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(starts) and "\n" not in err, err
    suggested = suggested_commands(err)[-1]
    assert suggested[0] in ("bench", "build") and "--device" not in suggested and "--threads" not in suggested


def test_a_device_one_backend_lacks_is_refused_with_a_hint_that_keeps_the_other_flags(stcn_package, capsys):
    # The hint dropped --threads as well as the --device it told the user to leave out (the run it suggested
    # was not the one asked for), said "--device applies to both backends" of a bench with one backend, and a
    # device no backend has (a typo) was answered "runs on cpu or cuda only ... leave --device out".
    flags = ["--backend", "onnxruntime", "--compare", "tensorrt", "--device", "cpu", "--threads", "2"]
    assert main(["bench", str(stcn_package), "--frames", "2", *flags]) == 2
    err = capsys.readouterr().err.strip()
    suggested = suggested_commands(err)[-1]
    assert "--device" not in suggested and suggested[suggested.index("--threads") + 1] == "2", err
    assert main(["bench", str(stcn_package), "--frames", "2", "--backend", "tensorrt", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cpu: --backend tensorrt runs on cuda only;") and "both" not in err, err
    assert main(["bench", str(stcn_package), "--frames", "2", "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected 'auto', 'cpu' or 'cuda', got 'gpu'" in err and "leave --device out" not in err, err


def test_the_default_warm_up_of_a_clip_family_runs_a_clip_before_the_timing(capsys):
    # --warmup 5 on 8-frame clips ran no clip untimed: the first timed clip paid the cold start
    from sdk_packages import tiny_package

    from vosrt.sdk.cli_bench import bench
    from vosrt.sdk.package import load_package

    package = load_package(tiny_package("3dc-seg"))
    result = bench(package, "onnxruntime", 3, None, {"threads": 1}, show_progress=False)
    assert result["warmup"] == 8 and result["stages"]["segment_clip"] > 0   # one clip's frames (latency 7 + 1)
    assert bench(package, "onnxruntime", 3, 2, {"threads": 1}, show_progress=False)["warmup"] == 2  # as given
    assert main(["bench", str(tiny_package("stcn")), "--frames", "2", "--backend", "onnxruntime"]) == 0
    assert "2 frames after 5 warm-up" in capsys.readouterr().out   # a per-frame family keeps 5


def test_the_same_backend_compared_with_itself_keeps_both_columns_and_their_ratio(stcn_package, capsys):
    # --compare onnxruntime beside --backend onnxruntime (a run-to-run check) timed both runs and printed one
    # column: the second run replaced the first in a table keyed by backend name, and no speed-up was printed
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "1", "--backend", "onnxruntime",
                 "--compare", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out.splitlines()[3] and "onnxruntime (2nd):" in out
    first, second, ratio = [line for line in out.splitlines() if line.startswith("FPS")][0].split()[1:4]
    assert float(ratio.rstrip("x")) == pytest.approx(float(first) / float(second), rel=0.02)


def test_a_torch_checkpoint_of_another_network_than_the_package_is_refused(stcn_package, tmp_path, capsys):
    # a checkpoint of the package's family but another variant or other widths was timed without a word: the
    # table compared the package's graphs with another network (a full STCN beside stcn-lite: a "5.5x speed-up")
    from vosrt.sdk.backends.torch_backend import TorchBackend
    from vosrt.sdk.errors import UserError
    from vosrt.sdk.package import load_package
    from vosrt.training.models import build_model, save_checkpoint

    other = tmp_path / "stcn-lite-default-widths.pth"
    save_checkpoint(other, build_model("stcn-lite"))
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "0", "--compare", "torch",
                 "--checkpoint", str(other)]) == 2
    captured = capsys.readouterr()
    assert "FPS" not in captured.out
    assert f"{other} holds a model of other widths than {stcn_package}: f16_thin_dim 128 (package: 64)" in captured.err
    assert "pass the checkpoint the package was exported from" in captured.err
    with pytest.raises(UserError, match=f"holds a 'stcn' model, but {stcn_package} is a 'stcn-lite' package"):
        TorchBackend(load_package(stcn_package), model=build_model("stcn").eval())


def test_the_columns_and_the_ratio_name_the_backend_that_ran_not_auto(stcn_package, capsys):
    # `vosrt bench PKG --compare torch` (the README's command) printed "speed-up: auto over torch"
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "1", "--compare", "torch"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("  onnxruntime: onnxruntime ")
    assert out.splitlines()[-1].startswith("speed-up: onnxruntime over torch (torch ms / onnxruntime ms per stage")
    assert "auto" not in out


def test_an_int8_package_s_table_says_int8_and_that_torch_runs_the_fp32_checkpoint(tmp_path, capsys):
    # an INT8 package's table read exactly like its fp32 source's, beside a torch column that runs the fp32 network
    from sdk_packages import tiny_int8_package, tiny_package

    int8 = tiny_int8_package()
    capsys.readouterr()
    assert main(["bench", str(int8), "--frames", "2", "--warmup", "1", "--compare", "torch"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert " INT8 (vosrt quantize), 2 frames after 1 warm-up" in lines[0]
    assert lines[2].startswith("  torch: ") and lines[2].endswith("fp32: the checkpoint the INT8 package was quantized from")
    assert main(["bench", str(tiny_package("stcn")), "--frames", "2", "--warmup", "1", "--compare", "torch"]) == 0
    fp32_out = capsys.readouterr().out
    assert "INT8" not in fp32_out and "fp32" not in fp32_out


def test_a_clip_family_timed_over_a_part_of_its_hop_says_how_far_its_ms_per_frame_are_off(clip_package, capsys):
    # --frames 2 of 8-frame clips overlapping by 3 (one clip every 5 frames) timed the end-of-stream clip for 2
    # frames: 2.5x the clip graph's per-frame cost in a long stream, printed without a word
    assert main(["bench", str(clip_package), "--frames", "2", "--backend", "onnxruntime"]) == 0
    out = capsys.readouterr().out
    assert ("note: 1 clip(s) ran in the 2 timed frames, and a long stream runs one every 5 frames (the end of the "
            "stream runs one for the frames left), so the clip graph's ms per frame are 2.50x a long stream's; give "
            "--frames a multiple of 5") in out
    assert main(["bench", str(clip_package), "--frames", "10", "--backend", "onnxruntime"]) == 0
    assert "note:" not in capsys.readouterr().out    # 2 clips in 10 frames: a long stream's rate


def test_a_device_name_no_backend_takes_is_refused_naming_the_device_flag(stcn_package, capsys):
    # was "error: --backend onnxruntime: device: expected 'auto', 'cpu' or 'cuda', got 'gpu'": the flag named was
    # not the one that was wrong
    assert main(["bench", str(stcn_package), "--frames", "2", "--device", "gpu", "--compare", "torch"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device: expected 'auto', 'cpu' or 'cuda', got 'gpu'"), err
    assert "--backend onnxruntime:" not in err and len(err.splitlines()) == 1


def test_the_progress_bars_name_the_backend_that_runs_not_auto(stcn_package, capsys):
    # the table's columns named the backend that ran, but the progress bars above them still read "auto warm-up"
    # and "auto", and a backend compared with itself had two bars of the same name
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "1", "--compare", "onnxruntime"]) == 0
    err = capsys.readouterr().err
    assert "onnxruntime warm-up" in err and "onnxruntime (2nd) warm-up" in err and "onnxruntime (2nd):" in err, err
    assert "auto" not in err, err
    # --no-progress, as run, live, eval and train have it (bench had none)
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "1", "--no-progress"]) == 0
    assert "warm-up" not in capsys.readouterr().err


@pytest.mark.parametrize("flags, threads", [(["--threads", "1"], "1 thread(s)"), ([], "the runtime's default threads")])
def test_the_header_names_the_package_and_the_threads_it_ran_on(stcn_package, capsys, flags, threads):
    # "stcn-lite 128x224, 2 frames after 1 warm-up" whatever the package folder and --threads
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "1", *flags]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith(f"{stcn_package}: ") and f"2 frames after 1 warm-up, {threads}" in header, header


def test_the_header_says_how_many_objects_a_tracker_was_timed_with(stcn_package, clip_package, capsys):
    # a tracker's ms per frame grow with its objects, and the table did not say the generated frames carry 2
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(", 2 object(s) tracked")
    assert main(["bench", str(clip_package), "--frames", "5"]) == 0   # a clip family segments what it finds
    assert "tracked" not in capsys.readouterr().out.splitlines()[0]


def test_objects_sets_how_many_objects_a_tracker_is_timed_with(stcn_package, capsys):
    # a tracker's cost grows with its objects, and bench always timed the 2 of its generated frames
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "1", "--objects", "3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith(", 3 object(s) tracked") and "note:" not in out, out


def test_more_objects_than_a_small_frame_shows_are_said_to_hide_each_other(stcn_package, capsys):
    # at 32x32 many generated objects cover each other: the table is for those visible, and says so
    assert main(["bench", str(stcn_package), "--frames", "2", "--warmup", "1", "--objects", "40"]) == 0
    lines = capsys.readouterr().out.splitlines()
    tracked = int(lines[0].rsplit(", ", 1)[1].split()[0])
    assert 1 <= tracked < 40
    assert lines[1] == (f"note: --objects 40: {tracked} of the generated objects are visible on the first frame at "
                        f"32x32 (the others hide behind them), so {tracked} are tracked")


def test_more_objects_than_the_package_s_default_cap_are_timed(capsys):
    # the session kept the package's cap of 32, so --objects 40 stopped mid-run with "more than this session's limit
    # of 32 (vosrt run: --max-objects 33 ...)", a flag bench has not
    assert main(["bench", "stcn-lite", "--frames", "1", "--warmup", "1", "--objects", "40"]) == 0
    tracked = int(capsys.readouterr().out.splitlines()[0].rsplit(", ", 1)[1].split()[0])
    assert tracked > 32, tracked


@pytest.mark.parametrize("count", ["0", "256"])
def test_an_object_count_out_of_range_is_refused_naming_objects(stcn_package, capsys, count):
    assert main(["bench", str(stcn_package), "--frames", "2", "--objects", count]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --objects: expected a number of objects to track in 1..255, got {count}", err


def test_objects_for_a_clip_family_is_refused_with_the_command_without_it(clip_package, capsys):
    assert main(["bench", str(clip_package), "--frames", "5", "--objects", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--objects: " in err and "3dc-seg package, which finds the objects itself" in err, err
    command = suggested_commands(err)[-1]
    assert "--objects" not in command and command[:2] == ["bench", str(clip_package)], command
    assert main(command) == 0
