"""`vosrt run` end to end: a random-weight exported package, a generated video, PNGs and an overlay video."""
import cv2
import numpy as np
import pytest

from vosrt.cli import main
from vosrt.sdk.masks import read_label_png, write_label_png
from vosrt.sdk.synthetic import generate_sequence, write_davis, write_video

from media import small_disk, suggested_commands, video_frames
from sdk_packages import tiny_package


@pytest.fixture(scope="module")
def sequence():
    return generate_sequence(5, num_frames=12, height=64, width=96, num_objects=2, num_distractors=0)


def test_run_writes_one_png_per_frame_and_a_readable_overlay_video(stcn_package, sequence, tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4", sequence)
    write_label_png(tmp_path / "first.png", sequence.labels[0])
    code = main(["run", str(stcn_package), "--source", str(video), "--mask", str(tmp_path / "first.png"),
                 "--out", str(tmp_path / "masks"), "--video", str(tmp_path / "overlay.mp4"), "--no-progress"])
    assert code == 0
    assert "FPS" in capsys.readouterr().out
    pngs = sorted((tmp_path / "masks").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(len(sequence))]
    first = read_label_png(pngs[0])
    assert np.array_equal(first, sequence.labels[0])
    assert all(read_label_png(p).shape == (64, 96) for p in pngs)
    assert set(np.unique(np.stack([read_label_png(p) for p in pngs]))) <= {0, 1, 2}

    capture = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == len(sequence) and frames[0].shape == (64, 96, 3)


def test_run_on_a_davis_sequence_takes_its_first_annotation(stcn_package, sequence, tmp_path):
    write_davis(tmp_path / "davis", "synth", sequence)
    code = main(["run", str(stcn_package), "--source", str(tmp_path / "davis" / "JPEGImages" / "480p" / "synth"),
                 "--out", str(tmp_path / "masks"), "--no-progress", "--max-frames", "5"])
    assert code == 0
    assert len(list((tmp_path / "masks").glob("*.png"))) == 5
    assert np.array_equal(read_label_png(tmp_path / "masks" / "00000.png"), sequence.labels[0])


def test_an_overlay_video_on_a_filling_disk_stops_playable_with_its_frames_so_far(stcn_package, tmp_path, capsys):
    # OpenCV's writer went on as its writes failed: the run read every frame, then said that the video held none
    # (a file whose disk filled up has no index)
    seq = generate_sequence(3, num_frames=40, height=240, width=320)
    rng = np.random.default_rng(0)
    seq.frames[:] = [rng.integers(0, 256, frame.shape, np.uint8) for frame in seq.frames]   # large JPEGs
    video = write_video(tmp_path / "in.avi", seq)
    write_label_png(tmp_path / "first.png", seq.labels[0])
    with small_disk(tmp_path / "disk", 2560) as disk:
        code = main(["run", str(stcn_package), "--source", str(video), "--mask", str(tmp_path / "first.png"),
                     "--video", str(disk / "overlay.avi"), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and "the disk is nearly full" in err and str(disk) in err, err
        written = int(err.split("the video stops at its ")[1].split()[0])
        assert 0 < written < 40 and video_frames(disk / "overlay.avi") == written


def test_run_without_a_mask_for_stcn_is_a_clear_error(stcn_package, sequence, tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4", sequence)
    assert main(["run", str(stcn_package), "--source", str(video), "--no-progress"]) == 2
    assert "--mask" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["missing.mp4", "rtsp://127.0.0.1:9/none", "folder-without-images"])
def test_run_on_a_source_that_cannot_be_opened_is_a_clear_error(stcn_package, tmp_path, capsys, source):
    (tmp_path / "folder-without-images").mkdir()
    target = source if "://" in source else str(tmp_path / source)
    write_label_png(tmp_path / "first.png", np.ones((8, 8), np.uint8))
    assert main(["run", str(stcn_package), "--source", target, "--mask", str(tmp_path / "first.png")]) == 2
    assert "--source" in capsys.readouterr().err


def test_a_stream_that_stops_midway_ends_with_a_warning_and_exit_code_1_keeping_its_output(stcn_package, sequence, tmp_path, capsys):
    # An MJPG .avi cut in half: OpenCV opens it, reads the first frames and then the data ends.
    writer = cv2.VideoWriter(str(tmp_path / "full.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for frame in sequence.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = (tmp_path / "full.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[:len(data) // 2])
    write_label_png(tmp_path / "first.png", sequence.labels[0])
    code = main(["run", str(stcn_package), "--source", str(tmp_path / "cut.avi"), "--mask", str(tmp_path / "first.png"),
                 "--out", str(tmp_path / "masks"), "--video", str(tmp_path / "overlay.avi"), "--no-progress"])
    assert code == 1                           # the output is kept, and a script learns the run fell short
    written = len(list((tmp_path / "masks").glob("*.png")))
    assert 0 < written < len(sequence)
    assert "stopped after" in capsys.readouterr().err
    capture = cv2.VideoCapture(str(tmp_path / "overlay.avi"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == written
    capture.release()


def test_a_mask_of_another_size_is_a_clear_error(stcn_package, sequence, tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4", sequence)
    write_label_png(tmp_path / "small.png", sequence.labels[0][:32])
    assert main(["run", str(stcn_package), "--source", str(video), "--mask", str(tmp_path / "small.png"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--mask {tmp_path / 'small.png'}: " in err and "give the first frame's mask at the frames' size" in err, err


def test_run_a_clip_package_writes_every_frame_once(sequence, tmp_path, capsys):
    clip_package = tiny_package("3dc-seg")
    video = write_video(tmp_path / "in.mp4", sequence)
    code = main(["run", str(clip_package), "--source", str(video), "--out", str(tmp_path / "masks"),
                 "--video", str(tmp_path / "overlay.mp4"), "--overlap", "7", "--no-progress"])
    assert code == 0
    assert "latency 7 frames" in capsys.readouterr().err
    pngs = sorted((tmp_path / "masks").glob("*.png"))
    assert len(pngs) == len(sequence)
    assert set(np.unique(np.stack([read_label_png(p) for p in pngs]))) <= {0, 1}


def test_run_refuses_a_mask_for_a_clip_package(sequence, tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4", sequence)
    write_label_png(tmp_path / "first.png", sequence.labels[0])
    assert main(["run", str(tiny_package("3dc-seg")), "--source", str(video), "--mask", str(tmp_path / "first.png")]) == 2
    assert "unsupervised" in capsys.readouterr().err


def test_a_corrupt_image_in_a_folder_is_skipped_and_the_run_goes_on(stcn_package, sequence, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(sequence.frames):
        cv2.imwrite(str(frames / f"{i:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (frames / "00004.jpg").write_bytes(b"\xff\xd8 truncated")
    write_label_png(tmp_path / "first.png", sequence.labels[0])
    code = main(["run", str(stcn_package), "--source", str(frames), "--mask", str(tmp_path / "first.png"),
                 "--out", str(tmp_path / "masks"), "--no-progress"])
    assert code == 0
    names = sorted(p.stem for p in (tmp_path / "masks").glob("*.png"))
    assert names == [f"{i:05d}" for i in range(len(sequence)) if i != 4]
    err = capsys.readouterr().err
    assert "00004.jpg" in err and "skipped" in err


@pytest.mark.parametrize("command", ["run", "live"])
def test_a_setting_a_family_lacks_is_refused_naming_only_flags_the_command_has(command):
    # The refusal listed every session setting as a flag: "(they take --overlap, --threshold)" for 3dc-seg,
    # and stem-seg's --min-seediness ..., which neither command has.
    import argparse
    import importlib
    import re

    from vosrt.sdk import families
    from vosrt.sdk.cli_run import session_options
    from vosrt.sdk.errors import UserError

    parser = argparse.ArgumentParser()
    importlib.import_module(f"vosrt.sdk.cli_{command}").add_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings}
    for family, wrong in (("3dc-seg", "--mem-every"), ("stem-seg", "--top-k"), ("stcn", "--overlap")):
        args = parser.parse_args(["pkg", "--source", "0", wrong, "3"])
        with pytest.raises(UserError, match=f"{wrong}: not a setting") as refused:
            session_options(args, families.get(family))
        named = re.findall(r"--[a-z-]+", str(refused.value).split("they take", 1)[1])
        assert named and set(named) <= flags, str(refused.value)


@pytest.mark.parametrize("command", ["run", "live"])
def test_a_checkpoint_off_the_torch_backend_is_refused_with_the_command_that_uses_it(sequence, tmp_path, capsys,
                                                                                       command):
    # `--checkpoint X` on the auto backend failed with "onnxruntime backend: unknown option(s) checkpoint",
    # naming neither the flag nor --backend torch.
    from sdk_packages import tiny_checkpoint

    package, checkpoint = tiny_package("stcn"), tiny_checkpoint("stcn")
    source = write_davis(tmp_path / "davis", "seq", sequence) / "JPEGImages" / "480p" / "seq"
    extra = ["--headless"] if command == "live" else []
    assert main([command, str(package), "--source", str(source), "--checkpoint", str(checkpoint), *extra]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, err
    err = err[0]
    assert err.startswith("error: --checkpoint:") and "--backend auto" in err, err
    assert "onnxruntime" in err and "unknown option" not in err
    suggested = suggested_commands(err)[-1]
    assert suggested[:2] == [command, str(package)] and "--backend" in suggested
    assert suggested[suggested.index("--backend") + 1] == "torch"
    assert main(suggested + ["--out", str(tmp_path / "out"), "--" + ("max-" if command == "run" else "") + "frames",
                             "2", *extra]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_a_package_without_engines_on_tensorrt_names_the_flag_and_the_keyword_and_the_build(capsys):
    # said "(or use backend='onnxruntime')", Python syntax, on the command line too
    import shlex

    from vosrt.sdk import UserError, load

    package = tiny_package("stcn")
    assert main(["run", str(package), "--source", "0", "--backend", "tensorrt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: package") and "command line: --backend onnxruntime" in err, err
    assert f"`vosrt build {shlex.quote(str(package))}`" in err
    with pytest.raises(UserError) as refused:
        load(package, backend="tensorrt")
    assert "Python: backend='onnxruntime'" in str(refused.value)


def test_the_torch_command_suggested_for_a_checkpoint_keeps_the_flags_of_the_refused_run(sequence, tmp_path, capsys):
    # The suggestion kept only the package and --source: for a video with --mask it failed (no first mask),
    # and without --out it would have computed the masks and thrown them away.
    from sdk_packages import tiny_checkpoint

    package, checkpoint = tiny_package("stcn"), tiny_checkpoint("stcn")
    video = write_video(tmp_path / "in.mp4", sequence)
    write_label_png(tmp_path / "first.png", sequence.labels[0])
    asked = ["run", str(package), "--source", str(video), "--mask", str(tmp_path / "first.png"), "--out",
             str(tmp_path / "out"), "--max-frames", "2", "--mem-every", "2", "--checkpoint", str(checkpoint),
             "--no-progress"]
    assert main(asked) == 2
    err = capsys.readouterr().err
    suggested = suggested_commands(err)[-1]
    for flag in ("--mask", "--out", "--max-frames", "--mem-every"):
        assert suggested[suggested.index(flag) + 1] == asked[asked.index(flag) + 1], (flag, suggested)
    assert "--no-progress" in suggested          # it dropped the bar's flag
    assert main(suggested) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


@pytest.mark.parametrize("command", ["run", "live"])
def test_a_bad_setting_value_is_refused_naming_its_flag(stcn_package, clip_package, command):
    # `vosrt run PKG --overlap 8` said "error: overlap: expected an integer in 0..7 ...", `--mem-every 0`
    # "mem_every: ...": the session's keyword, which is no flag of the command.
    import argparse
    import importlib

    from vosrt.sdk import families
    from vosrt.sdk.cli_run import load_session
    from vosrt.sdk.errors import UserError
    from vosrt.sdk.package import load_package

    parser = argparse.ArgumentParser()
    importlib.import_module(f"vosrt.sdk.cli_{command}").add_arguments(parser)
    for package, flag, value in ((clip_package, "--overlap", "8"), (stcn_package, "--mem-every", "0"),
                                 (stcn_package, "--memory-capacity", "1"), (stcn_package, "--top-k", "-3"),
                                 (stcn_package, "--max-objects", "0")):
        args = parser.parse_args([str(package), "--source", "0", flag, value])
        loaded = load_package(package)
        with pytest.raises(UserError, match=f"^{flag}: expected ") as refused:
            load_session(args, families.get(loaded.family), loaded, command)
        assert f"got {value}" in str(refused.value)


def test_run_names_the_flag_of_a_bad_overlap(clip_package, sequence, tmp_path, capsys):
    video = write_video(tmp_path / "in.mp4", sequence)
    assert main(["run", str(clip_package), "--source", str(video), "--overlap", "8", "--no-progress"]) == 2
    assert "error: --overlap: expected an integer in 0..7 (clip length 8), got 8" in capsys.readouterr().err


def test_a_truncated_jpeg_in_a_folder_is_named_and_its_frame_kept(clip_package, sequence, tmp_path, capsys):
    # OpenCV decodes a JPEG cut short as far as it goes and fills the rest grey; libjpeg's only word was
    # "Premature end of JPEG file", naming no file, and the run ended as if every frame were whole.
    (tmp_path / "frames").mkdir()
    for t, frame in enumerate(sequence.frames):
        cv2.imwrite(str(tmp_path / "frames" / f"{t:05d}.jpg"), frame)
    whole = (tmp_path / "frames" / "00005.jpg").read_bytes()
    (tmp_path / "frames" / "00005.jpg").write_bytes(whole[:len(whole) * 2 // 3])
    assert main(["run", str(clip_package), "--source", str(tmp_path / "frames"), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'frames' / '00005.jpg'}: its JPEG data ends early" in err, err
    assert "warning: 1 JPEG(s) cut short, segmented as far as they decode" in err and err.count("00005.jpg") == 2
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == [f"{t:05d}" for t in range(len(sequence))]
    # whole JPEGs are not suspected
    (tmp_path / "frames" / "00005.jpg").write_bytes(whole)
    assert main(["run", str(clip_package), "--source", str(tmp_path / "frames"), "--no-progress"]) == 0
    assert "ends early" not in capsys.readouterr().err


def test_a_truncated_jpeg_is_segmented_but_kept_out_of_the_trackers_memory(stcn_package, sequence, tmp_path, capsys):
    # A JPEG cut short on a memory frame went into the memory, half grey, and every later frame read it (an audit:
    # J&F 0.714 -> 0.651 on a 20-frame clip, frames 6..19 1-2% of their pixels off). It is segmented, not written.
    import vosrt.sdk
    from vosrt.sdk.streaming import stream
    from vosrt.sdk.video import ImageFolderSource, read_image

    folder = tmp_path / "frames"
    folder.mkdir()
    for t, frame in enumerate(sequence.frames):
        cv2.imwrite(str(folder / f"{t:05d}.jpg"), frame)
    whole = (folder / "00005.jpg").read_bytes()
    (folder / "00005.jpg").write_bytes(whole[:len(whole) // 3])   # frame 5: due for the memory at mem_every 5

    session = vosrt.sdk.load(stcn_package, mem_every=5, threads=1)
    stats = stream(session, ImageFolderSource(folder), masks={0: sequence.labels[0]}, keep_results=True)
    assert stats.forgotten == ["00005"] and stats.frames == len(sequence)
    streamed = [done.labels for done in stats.results]

    def by_hand(remember_frame_5: bool):
        tracker = vosrt.sdk.load(stcn_package, mem_every=5, threads=1)
        out = []
        for t in range(len(sequence)):
            frame = read_image(folder / f"{t:05d}.jpg")[0]
            out.append(tracker.step(frame, sequence.labels[0] if t == 0 else None,
                                    remember=remember_frame_5 or t != 5))
            writes = tracker.memory.writes
        return out, writes

    kept_out, writes = by_hand(False)
    assert writes == 3   # frames 0, 6 (in 5's place) and 11
    assert all(np.array_equal(a, b) for a, b in zip(streamed, kept_out))
    remembered, _ = by_hand(True)
    assert any(not np.array_equal(a, b) for a, b in zip(streamed[6:], remembered[6:]))   # the test can fail

    write_label_png(tmp_path / "m.png", sequence.labels[0])
    capsys.readouterr()
    assert main(["run", str(stcn_package), "--source", str(folder), "--mask", str(tmp_path / "m.png"),
                 "--no-progress"]) == 0
    assert "cut short, segmented as far as they decode (the rest of the image grey): 00005.jpg; kept out of the " \
           "tracker's memory: 00005" in capsys.readouterr().err
    # a damaged frame that carries the mask is written (the mask is the objects' truth), and not said to be kept out
    first = (folder / "00000.jpg").read_bytes()
    (folder / "00000.jpg").write_bytes(first[:len(first) * 2 // 3])
    assert main(["run", str(stcn_package), "--source", str(folder), "--mask", str(tmp_path / "m.png"),
                 "--no-progress"]) == 0
    assert "(the rest of the image grey): 00000.jpg, 00005.jpg; kept out of the tracker's memory: 00005\n" \
        in capsys.readouterr().err


def test_remember_false_is_refused_with_a_mask_and_must_be_a_bool(stcn_package, sequence):
    import vosrt.sdk
    from vosrt.sdk import UserError

    tracker = vosrt.sdk.load(stcn_package, threads=1)
    with pytest.raises(UserError, match="remember=False with a mask: a mask's frame is always written"):
        tracker.step(sequence.frames[0], sequence.labels[0], remember=False)
    with pytest.raises(UserError, match="remember: expected True or False, got 'no'"):
        tracker.step(sequence.frames[0], remember="no")
    assert tracker.frames_in == 0 and tracker.memory.empty   # refused before any state changed


def test_outputs_replace_links_planted_in_the_output_folder_instead_of_writing_through_them(stcn_package, sequence,
                                                                                         tmp_path):
    # the PNGs were written aside at a fixed name, .NAME.partial.png, and the overlay video at its name, both through
    # any link there: in a shared folder, a link planted at those names overwrote the file it named
    from vosrt.sdk.video import OverlayVideoSink, PngSink

    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    out = tmp_path / "masks"
    out.mkdir()
    (out / ".00001.partial.png").symlink_to(victim)
    PngSink(out)(1, "00001", None, np.ones((8, 8), np.uint8))
    (tmp_path / "overlay.mp4").symlink_to(victim)
    sink = OverlayVideoSink(tmp_path / "overlay.mp4", fps=10)
    sink(0, "0", np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16), np.uint8))
    sink.close()
    assert victim.read_text() == "keep"
    assert read_label_png(out / "00001.png").max() == 1 and not (tmp_path / "overlay.mp4").is_symlink()


def test_the_no_output_note_comes_with_a_run_not_before_an_error_that_ends_it(sequence, tmp_path, capsys):
    # "note: ... results are computed and discarded" was printed before a missing package's error too
    note = "note: no --out, --video, --vis or --mots given; results are computed and discarded"
    video = write_video(tmp_path / "in.mp4", sequence)
    assert main(["run", str(tmp_path / "no-such-package"), "--source", str(video), "--no-progress"]) == 2
    assert note not in capsys.readouterr().err
    assert main(["run", str(tiny_package("3dc-seg")), "--source", str(video), "--no-progress",
                 "--threshold", "0.7"]) == 0
    assert note in capsys.readouterr().err
