"""Each program of samples/ run as a user would, with a generated video file standing in for the camera."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from vosrt.sdk.masks import read_label_png
from vosrt.sdk.synthetic import generate_sequence, write_video

from live_support import bounding_box
from media import reported_rate, video_frames
from sdk_packages import tiny_package

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def run_sample(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SAMPLES / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def portable_graphs_bench(tmp_path_factory):
    """(package path, run) of one ``bench_stcn_graphs.py`` run on the tiny portable stcn package, ``--repeat 1
    --memory-frames 2``: the tests of its table, its row names and its progress lines read the same run."""
    path = tiny_package("stcn", ("portable",))
    return path, run_sample("bench_stcn_graphs.py", str(path), "--repeat", "1", "--memory-frames", "2",
                            cwd=tmp_path_factory.mktemp("graphs-bench"))


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    """A generated clip as a video file: (folder, path, sequence)."""
    folder = tmp_path_factory.mktemp("samples")
    seq = generate_sequence(21, num_frames=15, num_objects=1)
    return folder, write_video(folder / "camera.mp4", seq), seq


def test_webcam_tracker_says_it_needs_opencv_with_gui_support(camera):
    folder, video, _ = camera
    gui = [line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
           if line.strip().startswith("GUI:")]
    if gui != ["NONE"]:
        pytest.skip("this OpenCV has GUI support; the message is for the headless build vosrt installs")
    result = run_sample("webcam_tracker.py", "--source", str(video), cwd=folder)
    assert result.returncode == 2
    assert "GUI support" in result.stderr and "pip install opencv-python" in result.stderr


def _linux_with_opencv_gui() -> None:
    """Skips the test unless on Linux (where Qt aborts a window without a display) with an OpenCV that has GUI
    support (without it, the sample says so first: the test above)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("a display is probed on Linux only")
    gui = [line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
           if line.strip().startswith("GUI:")]
    if gui == ["NONE"]:
        pytest.skip("this OpenCV has no GUI support: the sample says so first")


def test_webcam_tracker_without_a_display_says_so_instead_of_aborting_in_qt(camera):
    _linux_with_opencv_gui()
    folder, video, _ = camera
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, str(SAMPLES / "webcam_tracker.py"), "--source", str(video)], cwd=folder,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    assert "no display" in result.stderr and "--no-window" in result.stderr


def test_webcam_tracker_without_a_window_offers_the_browser_viewer_on_its_own_source_and_package(camera, tmp_path):
    # it offered `vosrt live stcn-lite --source 0` (or `vosrt live PKG --source 0`) whatever --source and --package
    # named: camera 0 and the shipped model, not the video and package of the run
    import shlex

    folder, video, _ = camera
    package = tiny_package("stcn", ("portable",))
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, str(SAMPLES / "webcam_tracker.py"), "--source", str(video), "--package",
                             str(package)], cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    assert f"browser viewer:  {shlex.join(['vosrt', 'live', str(package), '--source', str(video)])}\n" in result.stderr
    result = subprocess.run([sys.executable, str(SAMPLES / "webcam_tracker.py")], cwd=folder, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 2 and "browser viewer:  vosrt live stcn-lite --source 0\n" in result.stderr


def test_webcam_tracker_tracks_the_boxed_object_without_a_window(camera):
    folder, video, seq = camera
    x, y, w, h = bounding_box(seq.labels[0] == 1)
    result = run_sample("webcam_tracker.py", "--source", str(video), "--box", f"{x},{y},{w},{h}", "--no-window",
                        "--video", "tracked.mp4", cwd=folder)
    assert result.returncode == 0, result.stderr
    areas = [int(line.split()[-2]) for line in result.stdout.splitlines() if line.startswith("frame ")]
    assert len(areas) == len(seq) and areas[0] > 0.7 * (seq.labels[0] == 1).sum()
    assert video_frames(folder / "tracked.mp4") == len(seq)


def test_webcam_tracker_ends_on_a_truncated_video_file(camera, tmp_path):
    # a file that stopped early was reopened as a dropped camera is, and played again from the start for ever
    folder, _, seq = camera
    writer = cv2.VideoWriter(str(tmp_path / "whole.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 20, seq.frames[0].shape[1::-1])
    for frame in seq.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    whole = (tmp_path / "whole.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(whole[:len(whole) // 2])     # the header still counts every frame
    x, y, w, h = bounding_box(seq.labels[0] == 1)
    result = run_sample("webcam_tracker.py", "--source", str(tmp_path / "cut.avi"), "--box", f"{x},{y},{w},{h}",
                        "--no-window", "--frames", str(3 * len(seq)), cwd=folder)
    assert result.returncode == 0, result.stderr
    shown = sum(line.startswith("frame ") for line in result.stdout.splitlines())
    assert 0 < shown < len(seq) and "stopped after" in result.stderr, (shown, result.stderr)


def test_webcam_tracker_writes_the_overlay_of_a_live_stream_at_the_rate_frames_were_processed(tmp_path):
    # frames captured while the model runs are dropped, so an overlay written at the stream's own rate played too
    # fast by as many times as frames were dropped (vosrt run and vosrt live write it at the processed rate)
    import re

    from live_support import mjpeg_camera

    picture = np.full((240, 320, 3), 30, np.uint8)
    cv2.circle(picture, (160, 120), 40, (0, 0, 230), -1)
    with mjpeg_camera(picture, frames=1000, fps=200) as url:
        stream_fps = reported_rate(url)[0]             # what OpenCV says the stream's rate is (25 for MJPEG)
        result = run_sample("webcam_tracker.py", "--source", url, "--box", "120,80,80,80", "--no-window", "--frames",
                            "15", "--video", str(tmp_path / "overlay.avi"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    processed = float(re.search(r"^15 frames, ([\d.]+) FPS, (\d+) stale frames dropped$", result.stdout, re.M).group(1))
    fps, frames = reported_rate(tmp_path / "overlay.avi")
    assert frames == 15
    assert fps != pytest.approx(stream_fps, abs=0.01), fps       # not the stream's rate, which the old sample took
    assert processed / 2 <= fps <= processed * 2, (fps, processed)   # the first frames' rate, against all 15


def test_webcam_tracker_reads_a_video_file_at_a_url_once_and_says_when_it_was_cut_short(tmp_path):
    # Every URL was taken for a camera (frames dropped, reopened at its end): a video file served over HTTP played
    # again and again and never ended, its --video growing, and one cut short was replayed as well, without a word.
    from live_support import http_camera

    with http_camera(tmp_path, frames=12) as url:     # a 96x64 MJPEG .avi
        whole = run_sample("webcam_tracker.py", "--source", url, "--box", "20,10,56,44", "--no-window", "--frames",
                           "36", "--video", str(tmp_path / "overlay.avi"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert "12 frames, " in whole.stdout and ", 0 stale frames dropped" in whole.stdout, whole.stdout
    assert video_frames(tmp_path / "overlay.avi") == 12
    assert "warning" not in whole.stderr, whole.stderr    # read to the count of its header: the whole file
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "cam.avi").write_bytes((tmp_path / "cam.avi").read_bytes()[:-8000])   # its last frames gone
    cut = run_sample("webcam_tracker.py", "--source", (tmp_path / "cut" / "cam.avi").as_uri(), "--box", "20,10,56,44",
                     "--no-window", "--frames", "36", cwd=tmp_path)
    shown = sum(line.startswith("frame ") for line in cut.stdout.splitlines())
    assert cut.returncode == 0 and 0 < shown < 12, (shown, cut.stderr)
    assert f"warning: stream {(tmp_path / 'cut' / 'cam.avi').as_uri()} stopped after {shown} frames" in cut.stderr


def test_webcam_tracker_says_when_a_live_stream_dropped_and_is_opened_again(tmp_path):
    # a camera or live stream that dropped was reopened every second without a word: the picture froze, unexplained
    import re

    from live_support import mjpeg_camera

    picture = np.full((240, 320, 3), 30, np.uint8)
    cv2.circle(picture, (160, 120), 40, (0, 0, 230), -1)
    with mjpeg_camera(picture, frames=5, fps=50) as url:     # ends after 5 frames; a new connection sends 5 more
        result = run_sample("webcam_tracker.py", "--source", url, "--box", "120,80,80,80", "--no-window", "--frames",
                            "8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = re.escape(f"warning: stream {url} stopped after ") + r"\d+ frames; retrying in 1 s \(retry 1\)$"
    assert re.search(said, result.stderr, re.M), result.stderr


def test_webcam_tracker_with_a_display_it_cannot_reach_says_so_instead_of_aborting_in_qt(camera):
    # it only checked that DISPLAY was set: with one left from a closed session (DISPLAY=:99), opening the window
    # aborted the process inside Qt (SIGABRT, "no Qt platform plugin could be initialized. Reinstalling the
    # application may fix this problem.")
    _linux_with_opencv_gui()
    folder, video, _ = camera
    gone = next(n for n in range(99, 999) if not Path(f"/tmp/.X11-unix/X{n}").exists())   # no X server there
    env = {k: v for k, v in os.environ.items() if k not in ("WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, str(SAMPLES / "webcam_tracker.py"), "--source", str(video)], cwd=folder,
                            capture_output=True, text=True, timeout=300, env=dict(env, DISPLAY=f":{gone}"))
    assert result.returncode == 2, result.stderr
    assert "no display" in result.stderr and "--no-window" in result.stderr and "Qt" not in result.stderr


def test_embed_callback_reports_each_frames_objects_from_its_own_loop(camera):
    folder, video, seq = camera
    x, y, w, h = bounding_box(seq.labels[0] == 1)
    result = run_sample("embed_callback.py", "--source", str(video), "--box", f"{x},{y},{w},{h}", cwd=folder)
    assert result.returncode == 0, result.stderr
    rows = [line.split(",") for line in result.stdout.splitlines()[1:]]
    assert [int(r[0]) for r in rows] == list(range(len(seq)))     # one object, found on every frame
    ys, xs = np.nonzero(seq.labels[0] == 1)
    assert abs(float(rows[0][2]) - xs.mean()) < 5 and abs(float(rows[0][3]) - ys.mean()) < 5


def test_unsupervised_stream_segments_every_frame_of_a_3dc_seg_package(camera):
    folder, video, seq = camera
    result = run_sample("unsupervised_stream.py", str(tiny_package("3dc-seg")), "--source", str(video),
                        "--out", "moving", "--video", "moving.mp4", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("frame ") for line in result.stdout.splitlines()) == len(seq)
    pngs = sorted((folder / "moving").glob("*.png"))
    assert len(pngs) == len(seq) and read_label_png(pngs[0]).shape == seq.labels[0].shape
    assert video_frames(folder / "moving.mp4") == len(seq)


def test_unsupervised_stream_takes_the_newest_frame_of_a_live_stream(tmp_path):
    # It read a camera frame after frame: with the model slower than the camera, each result was of an older frame
    # than the one before it (ARCHITECTURE.md, Streaming: live sources take the newest frame, as vosrt run does).
    from live_support import mjpeg_camera

    with mjpeg_camera(np.full((64, 96, 3), 30, np.uint8)) as url:
        result = run_sample("unsupervised_stream.py", str(tiny_package("3dc-seg")), "--source", url, "--frames", "20",
                            "--out", str(tmp_path / "out"), "--video", str(tmp_path / "overlay.avi"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    positions = sorted(int(p.stem) for p in (tmp_path / "out").glob("*.png"))   # named by capture position
    assert len(positions) == 20 and positions[-1] > 19, positions   # frames captured meanwhile were dropped
    assert video_frames(tmp_path / "overlay.avi") == 20


def test_unsupervised_stream_counts_the_instances_of_a_stem_seg_package(camera):
    # its help named 3dc-seg only, and a stem-seg run reported its instances as bare foreground
    folder, video, seq = camera
    result = run_sample("unsupervised_stream.py", str(tiny_package("stem-seg")), "--source", str(video), cwd=folder)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("frame ")]
    assert len(lines) == len(seq) and all(" instance(s)" in line for line in lines), lines[:3]


def test_unsupervised_stream_warns_when_a_video_stopped_early(camera, tmp_path):
    # a truncated video ended the run without a word, as if whole (webcam_tracker.py and vosrt run warn)
    from live_support import http_camera

    folder, _, seq = camera
    size = seq.frames[0].shape[1::-1]
    writer = cv2.VideoWriter(str(tmp_path / "whole.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 20, size)
    for frame in seq.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    whole = (tmp_path / "whole.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(whole[:len(whole) // 2])     # the header still counts every frame
    result = run_sample("unsupervised_stream.py", str(tiny_package("3dc-seg")), "--source", str(tmp_path / "cut.avi"),
                        cwd=folder)
    shown = sum(line.startswith("frame ") for line in result.stdout.splitlines())
    assert result.returncode == 0 and 0 < shown < len(seq), (shown, result.stderr)
    assert f"warning: video {tmp_path / 'cut.avi'} stopped after {shown} frames of {len(seq)}" in result.stderr
    with http_camera(tmp_path, frames=12) as url:   # a whole file at a URL ends as a stream does: no warning
        result = run_sample("unsupervised_stream.py", str(tiny_package("3dc-seg")), "--source", url, cwd=folder)
    assert result.returncode == 0 and "12 frames, " in result.stdout and "warning" not in result.stderr, result.stderr


def test_unsupervised_stream_refuses_an_stcn_package(camera):
    folder, video, _ = camera
    stcn = Path(__file__).resolve().parents[1] / "sdk" / "models" / "stcn-lite"
    result = run_sample("unsupervised_stream.py", str(stcn), "--source", str(video), cwd=folder)
    assert result.returncode == 2 and "needs object masks" in result.stderr


@pytest.mark.parametrize("name", ["webcam_tracker.py", "embed_callback.py"])
def test_a_malformed_box_is_refused_before_anything_is_opened(camera, name):
    folder, video, _ = camera
    window = ["--no-window"] if name == "webcam_tracker.py" else []
    result = run_sample(name, "--source", str(video), "--box", "10,20,30", *window, cwd=folder)
    assert result.returncode == 2 and "--box" in result.stderr and "X,Y,W,H" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name, args", [
    ("webcam_tracker.py", ("--box", "1000,1000,20,20", "--no-window")),     # the box misses the 432×240 frame
    ("embed_callback.py", ("--mask", "missing.png")),
    ("unsupervised_stream.py", ("no-such-package",)),
])
def test_bad_input_is_one_error_line_not_a_traceback(camera, name, args):
    folder, video, _ = camera
    result = run_sample(name, "--source", str(video), *args, cwd=folder)
    assert result.returncode == 2, result.stderr
    # one "error: " line, after vosrt's one-line notices where a run gave one (no CPU operators here: the portable form)
    said = [line for line in result.stderr.splitlines() if not line.startswith("vosrt: ")]
    assert "Traceback" not in result.stderr and len(said) == 1 and said[0].startswith("error: "), result.stderr


@pytest.mark.parametrize("name", ["unsupervised_stream.py", "webcam_tracker.py", "embed_callback.py"])
def test_a_frame_count_below_one_is_refused_naming_its_flag(camera, name):
    # embed_callback.py ran no frame and said nothing; webcam_tracker.py blamed stream()'s max_frames
    folder, video, _ = camera
    args = ([str(tiny_package("3dc-seg"))] if name == "unsupervised_stream.py" else
            ["--box", "10,20,30,40"] + (["--no-window"] if name == "webcam_tracker.py" else []))
    result = run_sample(name, *args, "--source", str(video), "--frames", "-1", cwd=folder)
    assert result.returncode == 2 and "--frames: expected a whole number >= 1" in result.stderr, result.stderr
    assert "max_frames" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", ["webcam_tracker.py", "embed_callback.py", "unsupervised_stream.py"])
def test_a_video_without_frames_is_an_error_and_leaves_no_output(tmp_path, name):
    # it counted as success: status 0 and "0 frames" (embed_callback.py: the CSV header alone), the --video asked for
    # never written, and unsupervised_stream.py's --out folder left behind empty
    writer = cv2.VideoWriter(str(tmp_path / "empty.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    writer.release()
    assert (tmp_path / "empty.avi").stat().st_size > 0    # a header, no frame
    args = {"webcam_tracker.py": ["--package", str(tiny_package("stcn")), "--box", "1,1,10,10", "--no-window",
                                  "--video", "overlay.mp4"],
            "embed_callback.py": ["--package", str(tiny_package("stcn")), "--box", "1,1,10,10"],
            "unsupervised_stream.py": [str(tiny_package("3dc-seg")), "--out", "masks", "--video", "overlay.mp4"]}[name]
    result = run_sample(name, *args, "--source", "empty.avi", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        "error: --source empty.avi: no frame could be read from it; nothing was written", result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith(("frame", "0 frames"))], result.stdout
    assert not (tmp_path / "overlay.mp4").exists() and not (tmp_path / "masks").exists()


def test_embed_callback_refuses_a_package_that_takes_no_mask(camera):
    folder, video, seq = camera
    x, y, w, h = bounding_box(seq.labels[0] == 1)
    result = run_sample("embed_callback.py", "--source", str(video), "--box", f"{x},{y},{w},{h}",
                        "--package", str(tiny_package("3dc-seg")), cwd=folder)
    assert result.returncode == 2 and "needs an stcn one" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags, says", [
    (("--clips", "0"), "error: --clips: expected generated clips >= 1, got 0"),
    (("--frames", "1"), "error: --frames: expected frames per clip (the first carries the masks) >= 2, got 1"),
    (("--fps", "0"), "error: --fps: expected a finite frame rate > 0, got 0"),
    (("--fps", "nan"), "error: --fps: expected a finite frame rate > 0, got nan"),
])
def test_bench_live_refuses_settings_it_cannot_measure_naming_only_the_wrong_flag(tmp_path, flags, says):
    # --clips 0 was numpy's traceback at the end; then one message named all three flags and all three values,
    # whichever was wrong ("expected --clips >= 1, --frames >= 2 and --fps > 0, got 6, 30, 0.0")
    result = run_sample("bench_live.py", *flags, cwd=tmp_path)
    err = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and err.endswith(says) and "Traceback" not in result.stderr, result.stderr
    assert all(flag not in err for flag in ("--clips", "--frames", "--fps") if flag != flags[0]), err


def test_bench_live_refuses_a_frame_rate_an_mp4_cannot_take_before_measuring(tmp_path):
    # --fps 70000 passed (finite, > 0): figures 1 and 2 ran (minutes at the default --clips), then the figure-3 .mp4
    # could not be written at that rate, a UserError traceback blaming a temporary file
    result = run_sample("bench_live.py", "--fps", "70000", "--clips", "1", "--frames", "2", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(
        "error: --fps: expected at most 65535 (the figure-3 video is an .mp4, whose time base is 1/fps), got 70000")
    assert "clip 1/1" not in result.stderr       # refused before anything was measured


@pytest.mark.parametrize("flags, says", [
    (["--frames", "0"], "--frames: expected a whole number >= 1, got 0"),     # was a ZeroDivisionError
    (["--threads", "0"], "--threads: expected"),                             # torch.set_num_threads' RuntimeError
    (["--height", "100"], "--height: expected a positive multiple of 16"),  # a size mismatch in the decoder
])
def test_bench_stcn_torch_refuses_what_it_cannot_measure_naming_the_flag(tmp_path, flags, says):
    done = run_sample("bench_stcn_torch.py", "--width", "64", *flags, cwd=tmp_path)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["webcam_tracker.py", "embed_callback.py", "unsupervised_stream.py"])
def test_samples_stay_small(name):
    assert len((SAMPLES / name).read_text().splitlines()) < 150


@pytest.mark.slow
def test_bench_stcn_graphs_reports_every_configuration_and_the_fp32_ceiling(tmp_path):
    done = run_sample("bench_stcn_graphs.py", str(tiny_package("stcn")), "--repeat", "1", "--memory-frames", "2",
                      "--ceiling", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("stcn onnxruntime portable") for line in lines), done.stdout
    ceiling = next(line for line in lines if line.startswith("fp32 ceiling of "))
    gflop = float(ceiling.split(": ")[1].split()[0])
    assert gflop > 0 and "GFLOP/s" in ceiling
    rates = [line for line in lines if "runs at" in line and line.rstrip().endswith("of that rate")]
    # a row far below the rate (the tiny package's torch row) printed "runs at 0%"
    assert rates and all(float(line.split("runs at ")[1].split("%")[0]) > 0 for line in rates), rates


def test_bench_stcn_graphs_says_which_way_its_ratio_goes(portable_graphs_bench):
    # "vs first" printed 0.20x for a configuration five times slower than the first: a reader could not tell a
    # ratio of times from one of speeds
    _, done = portable_graphs_bench
    assert done.returncode == 0, done.stderr
    assert ("vs first: the first row's frame wall time over this row's (above 1x: faster than the first row)"
            in done.stdout), done.stdout
    row = next(line for line in done.stdout.splitlines() if " onnxruntime portable" in line and "MB" in line)
    assert row.rstrip().endswith("1.00x")


def test_bench_stcn_graphs_prints_a_small_share_of_the_fp32_rate_as_more_than_zero():
    # the tiny package's torch row, far below the rate, printed "runs at 0% of that rate" (and failed the slow
    # test above whenever the host was busy)
    sys.path.insert(0, str(SAMPLES))
    from bench_stcn_graphs import _percent

    assert [_percent(share) for share in (1.06, 0.38, 0.01, 0.0041, 0.0004)] == ["106%", "38%", "1%", "0.41%", "0.04%"]


def test_bench_stcn_graphs_counts_value_encodings_at_the_package_s_mem_every(tmp_path):
    # A frame was key + segment + a fifth of a value encoding whatever the package's streaming.mem_every
    import json
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "samples"))
    from bench_stcn_graphs import _measure, _per_frame

    package = tmp_path / "every-frame"
    shutil.copytree(tiny_package("stcn"), package)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["streaming"]["mem_every"] = 1
    (package / "manifest.json").write_text(json.dumps(manifest))
    result = _measure(str(package), "onnxruntime", "portable", objects=1, memory_frames=2, threads=1, repeat=1)
    assert result["mem_every"] == 1
    assert _per_frame(result, "wall") == pytest.approx(sum(g["wall"] for g in result["graphs"].values()))


@pytest.mark.parametrize("flags, says", [
    (["--repeat", "0"], "--repeat: expected a whole number >= 1, got 0"),   # was each child's StatisticsError
    (["--memory-frames", "0"], "--memory-frames: expected"),
    (["--threads", "0"], "--threads: expected"),
])
def test_bench_stcn_graphs_refuses_what_it_cannot_measure_before_timing_anything(tmp_path, flags, says):
    # the bad value failed in every configuration's child, and the run printed an empty table with status 0
    done = run_sample("bench_stcn_graphs.py", str(tiny_package("stcn")), *flags, cwd=tmp_path)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "configuration" not in done.stdout


def test_bench_stcn_graphs_refuses_a_package_of_another_family_in_one_line(tmp_path):
    # was a KeyError: 'segment' traceback from the 3dc-seg package's graphs
    done = run_sample("bench_stcn_graphs.py", str(tiny_package("3dc-seg")), cwd=tmp_path)
    err = done.stderr.strip()
    assert done.returncode == 2 and err.startswith("error: ") and "\n" not in err, err
    assert "3dc-seg package" in err and "vosrt bench" in err


@pytest.mark.slow   # about 8 s of CPU on a 2-core machine: a bench_stcn_graphs.py run of its own
def test_bench_stcn_graphs_ends_with_a_failure_status_when_a_configuration_failed(tmp_path):
    # a configuration whose child failed was left out of the table, and the run still ended with status 0
    import shutil

    package = tmp_path / "stcn"
    shutil.copytree(tiny_package("stcn", ("portable",)), package)
    (package / "segment.portable.onnx").write_bytes(b"not an onnx file")   # ONNX Runtime cannot load it
    done = run_sample("bench_stcn_graphs.py", str(package), "--repeat", "1", "--memory-frames", "2", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"failed: {package} onnxruntime portable" in done.stderr


def test_bench_stcn_graphs_times_the_torch_backend_of_a_package_that_has_its_checkpoint():
    # README: "the torch backend where the package has its weights"; the shipped stcn-lite carries
    # checkpoint.pth (no weights.pt), and its torch row was left out.
    sys.path.insert(0, str(SAMPLES))
    from bench_stcn_graphs import _configurations

    assert _configurations("stcn-lite") == [("onnxruntime", "portable"), ("onnxruntime", "plugin"), ("torch", "-")]


def test_bench_stcn_graphs_gives_an_int8_package_no_torch_row(tmp_path):
    # an INT8 package keeps the fp32 checkpoint it was quantized from: its torch row timed the fp32 network again,
    # under the INT8 package's name
    import json
    import shutil

    sys.path.insert(0, str(SAMPLES))
    from bench_stcn_graphs import _configurations

    package = tmp_path / "int8"
    shutil.copytree(tiny_package("stcn"), package)
    manifest = json.loads((package / "manifest.json").read_text())
    assert ("torch", "-") in _configurations(str(package))
    manifest["quantization"] = {"method": "onnxruntime static QDQ", "source_package": str(tiny_package("stcn"))}
    (package / "manifest.json").write_text(json.dumps(manifest))
    assert ("torch", "-") not in _configurations(str(package))


@pytest.mark.parametrize("name, args", [
    ("embed_callback.py", ("--source", "missing.mp4", "--box", "10,20,30,40")),     # was "cannot open missing.mp4"
    ("embed_callback.py", ("--mask", "missing.png")),                               # after the CSV header
    ("embed_callback.py", ("--box", "10,20,30,40", "--package", "3dc-seg")),        # after the CSV header
    ("unsupervised_stream.py", ("stcn",)),                                          # a line without "error: "
    ("webcam_tracker.py", ("--box", "10,20,30,40", "--no-window", "--package", "3dc-seg")),
])
def test_each_refusal_is_one_error_line_and_no_output_begun(camera, name, args):
    folder, video, _ = camera
    args = [str(tiny_package(a)) if a in ("stcn", "3dc-seg") else a for a in args]
    source = [] if "--source" in args else ["--source", str(video)]
    result = run_sample(name, *source, *args, cwd=folder)
    assert result.returncode == 2 and result.stdout == "", (result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1, result.stderr
    if "missing.mp4" in args:
        assert result.stderr.startswith("error: --source: ")


def test_bench_stcn_graphs_says_each_row_s_resolution_and_precision(portable_graphs_bench):
    # a row was named by its package's folder alone: two packages at other sizes, or an INT8 one in a folder named
    # without "int8", were compared "vs first" with nothing saying what each had measured
    from vosrt.sdk.package import load_package

    from sdk_packages import tiny_int8_package

    path, done = portable_graphs_bench
    package = load_package(path)
    assert done.returncode == 0, done.stderr
    described = f"  stcn onnxruntime portable: {package.height}x{package.width} fp32, onnxruntime "
    assert described in done.stdout, done.stdout
    sys.path.insert(0, str(SAMPLES))
    from bench_stcn_graphs import _measure

    result = _measure(str(tiny_int8_package()), "onnxruntime", "portable", objects=1, memory_frames=2, threads=1,
                      repeat=1)
    assert result["precision"] == "INT8" and result["size"] == f"{package.height}x{package.width}"


def _interrupt(name: str, *args: str, cwd: Path, ready, sig: str = "SIGINT") -> subprocess.CompletedProcess:
    """Start samples/``name``, send it ``sig`` (SIGINT: Ctrl-C) once ``ready(process)`` is true, and return how it
    ended."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, str(SAMPLES / name), *args], cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    try:
        while process.poll() is None and not ready(process):
            time.sleep(0.05)
        assert process.poll() is None, "the sample ended before it could be interrupted"
        process.send_signal(getattr(signal, sig))
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_bench_live_stops_on_ctrl_c_in_one_line(tmp_path):
    # Ctrl-C in the figure-3 run was a KeyboardInterrupt traceback from wherever the interpreter was
    def figures_1_and_2_printed(process):
        return process.stdout.readline().startswith("2. ")

    done = _interrupt("bench_live.py", "--clips", "1", "--frames", "60", cwd=tmp_path, ready=figures_1_and_2_printed)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "bench_live.py: interrupted", done.stderr


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """A clip of 600 small frames, long enough to be stopped midway: (path, --box of its object)."""
    seq = generate_sequence(3, num_frames=600, height=64, width=96, num_objects=1)
    x, y, w, h = bounding_box(seq.labels[0] == 1)
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", seq), f"{x},{y},{w},{h}"


def _stop_midway(name: str, long_video, tmp_path: Path, sig: str) -> tuple[subprocess.CompletedProcess, Path]:
    """samples/``name`` on ``long_video`` (with --video where it writes one) sent ``sig`` once it reported its third
    frame (embed_callback.py: its CSV header, printed at the first frame: the tiny model's rows may name no object);
    returns how it ended and its --video."""
    video, box = long_video
    out = tmp_path / "overlay.mp4"
    args = {"webcam_tracker.py": ["--package", str(tiny_package("stcn")), "--box", box, "--no-window",
                                  "--video", str(out)],
            "embed_callback.py": ["--package", str(tiny_package("stcn")), "--box", box],
            "unsupervised_stream.py": [str(tiny_package("3dc-seg")), "--video", str(out)]}[name]
    begun = "frame,object" if name == "embed_callback.py" else "frame 2:"
    return _interrupt(name, *args, "--source", str(video), cwd=tmp_path, sig=sig,
                      ready=lambda process: process.stdout.readline().startswith(begun)), out


@pytest.mark.parametrize("name", ["webcam_tracker.py", "embed_callback.py", "unsupervised_stream.py"])
def test_samples_stop_on_ctrl_c_in_one_line_with_their_video_finished(long_video, tmp_path, name):
    # Ctrl-C was a KeyboardInterrupt traceback (and exit status -2); the bench samples already said one line
    done, video = _stop_midway(name, long_video, tmp_path, "SIGINT")
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"{name}: interrupted", done.stderr
    if name != "embed_callback.py":
        assert video_frames(video) >= 3       # the frames reported before the signal, in a playable file


@pytest.mark.parametrize("name, sig", [("webcam_tracker.py", "SIGTERM"), ("unsupervised_stream.py", "SIGTERM"),
                                       ("webcam_tracker.py", "SIGHUP")])
def test_samples_finish_their_video_when_stopped_by_sigterm_or_sighup(long_video, tmp_path, name, sig):
    # SIGTERM (timeout, systemd, docker stop) and SIGHUP ended the process at once: its --video had no index (no
    # moov atom), unplayable; vosrt run finishes its files on them
    import signal

    done, video = _stop_midway(name, long_video, tmp_path, sig)
    assert done.returncode == 128 + getattr(signal, sig) and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"{name}: stopped by {sig}", done.stderr
    assert video_frames(video) >= 3


@pytest.mark.slow   # about 11 s: it waits for a configuration's child process to exist
def test_bench_stcn_graphs_stops_on_ctrl_c_in_one_line(tmp_path):
    # Ctrl-C while a configuration's child ran was a KeyboardInterrupt traceback from subprocess.run
    def measuring(process):
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        return children.exists() and children.read_text().strip() != ""

    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("needs /proc/PID/task/PID/children to see the configuration's child start")
    done = _interrupt("bench_stcn_graphs.py", str(tiny_package("stcn", ("portable",))), "--repeat", "1",
                      "--memory-frames", "2", cwd=tmp_path, ready=measuring)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "bench_stcn_graphs.py: interrupted", done.stderr


def test_bench_kernels_says_its_gpu_figures_are_means_of_calls_back_to_back_not_medians(tmp_path):
    # --help said "median reported", but on the GPU the tables print the mean of --repeat calls back to back
    # (gpu_check.measure: one pair of CUDA events around them); only the CPU references of --dry-run are medians
    done = run_sample("bench_kernels.py", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "(GPU: their mean, back to back; --dry-run: their median)" in text and "(median reported)" not in text


@pytest.mark.parametrize("flags, says", [
    (["--frames", "2", "0"], "error: --frames: expected numbers >= 1, got 2 0"),
    (["--objects", "-1"], "error: --objects: expected numbers >= 1, got -1"),
])
def test_bench_kernels_refuses_a_count_below_one_naming_its_flag_and_value(tmp_path, flags, says):
    # was "--frames and --objects take numbers of at least 1" whichever was wrong, without the value
    done = run_sample("bench_kernels.py", "--dry-run", *flags, cwd=tmp_path)
    err = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and err.endswith(says) and "Traceback" not in done.stderr, done.stderr


def test_bench_stcn_graphs_shows_progress_one_line_per_configuration_on_stderr(portable_graphs_bench):
    # nothing was printed until the table: at 480p a run of several configurations sat silent for minutes
    path, done = portable_graphs_bench
    assert done.returncode == 0, done.stderr
    assert f"measuring {path} onnxruntime portable (1/" in done.stderr, done.stderr
    assert "measuring" not in done.stdout   # the table on stdout stays the table


def test_bench_live_shows_progress_per_clip_on_stderr(tmp_path):
    # nothing was printed until every clip had run twice; stopped (Ctrl-C) once the first clip's line is out (60 frames a
    # clip: with 2, a busy host sent the signal after the run had ended)
    done = _interrupt("bench_live.py", "--clips", "2", "--frames", "60", cwd=tmp_path,
                      ready=lambda process: process.stderr.readline().startswith("bench_live.py: clip 1/2 (seed 4242)"))
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr


def test_bench_kernels_dry_run_says_it_timed_the_cpu_references_at_tiny_shapes(tmp_path):
    # a dry run printed only the tables, which read "ms per call, back to back" and named no device: CPU medians of
    # the references at tiny shapes looked like the GPU benchmark's figures
    done = run_sample("bench_kernels.py", "--dry-run", "--repeat", "1", "--only", "readout", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("device: cpu (--dry-run: the PyTorch references at tiny shapes, no kernel timed; "
                                  "each figure the median of 1 single calls), torch "), done.stdout


def test_bench_kernels_dry_run_tables_say_they_hold_cpu_medians(tmp_path):
    # the dry run's first line said "each figure the median of 10 single calls" on the CPU, and its tables then said
    # "ms per call, back to back" (samples/gpu_check.py's headers for the GPU's figures)
    done = run_sample("bench_kernels.py", "--dry-run", "--repeat", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "back to back" not in done.stdout, done.stdout
    for table in ("## L2MemoryReadout", "## D2Conv3D"):
        assert f"{table} (ms per call on the CPU, median of 2 single calls; " in done.stdout, done.stdout


def _run_without_torch(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """samples/``name`` run in a Python where ``import torch`` fails, as on a base install (no extras)."""
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, str(SAMPLES / name), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_bench_stcn_graphs_without_torch_leaves_the_torch_row_out_and_refuses_ceiling_first(tmp_path):
    # on a base install the shipped stcn-lite's torch row failed with a traceback (status 1), and --ceiling was a
    # ModuleNotFoundError traceback once every configuration had been timed
    done = _run_without_torch("bench_stcn_graphs.py", "stcn-lite", "--ceiling", "--repeat", "1", cwd=tmp_path)
    err = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and "Traceback" not in done.stderr and "measuring" not in done.stderr, done.stderr
    assert err.startswith("bench_stcn_graphs.py: error: --ceiling counts a frame's FLOPs with torch") and \
        "lacks torch:" in err and "[export]" in err, err
    done = _run_without_torch("bench_stcn_graphs.py", "stcn-lite", "--repeat", "1", "--memory-frames", "2",
                              cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "stcn-lite onnxruntime plugin" in done.stdout and "torch" not in done.stdout.split("\n  ")[0], done.stdout


def test_bench_stcn_torch_without_torch_says_what_to_install_in_one_line(tmp_path):
    # was a ModuleNotFoundError traceback
    done = _run_without_torch("bench_stcn_torch.py", "--frames", "1", cwd=tmp_path)
    err = done.stderr.strip()
    assert done.returncode == 2 and "Traceback" not in err and "\n" not in err, err
    assert err.startswith("bench_stcn_torch.py: error: this benchmark runs PyTorch") and "[train]" in err, err


def test_bench_kernels_without_torch_says_what_to_install_in_one_line(tmp_path):
    # was a ModuleNotFoundError traceback, --dry-run included
    done = _run_without_torch("bench_kernels.py", "--dry-run", cwd=tmp_path)
    err = done.stderr.strip()
    assert done.returncode == 2 and "Traceback" not in err and "\n" not in err, err
    assert err.startswith("bench_kernels: needs PyTorch") and "[train]" in err, err


def test_bench_stcn_torch_says_its_cpu_time_is_a_mean_beside_the_wall_median(tmp_path):
    # "wall median 20 ms, best 20 ms, CPU time 23 ms per frame": the CPU figure, the process time of all timed frames
    # over their number, read as a third statistic of the same kind as the median before it
    done = run_sample("bench_stcn_torch.py", "--height", "32", "--width", "32", "--frames", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wall median " in done.stdout and "CPU time mean " in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("ms per frame (all 2 frames' process time)"), done.stdout


def test_bench_stcn_graphs_keeps_the_better_matmul_rate_and_says_when_a_row_beats_it(tmp_path, monkeypatch, capsys):
    # one short MatMul measurement at a busy moment put the ceiling at a quarter of the rate: an fp32 row "ran at
    # 1124% of that rate" and the bound said 0.23x, without a word
    sys.path.insert(0, str(SAMPLES))
    import bench_stcn_graphs

    measured = iter([2e9, 5e9])   # GFLOP/s before and after the configurations
    monkeypatch.setattr(bench_stcn_graphs, "_matmul_rate", lambda threads: next(measured))
    monkeypatch.setattr(bench_stcn_graphs, "_frame_flops", lambda *args: 1e12)   # 200 s a frame at that rate
    monkeypatch.chdir(tmp_path)
    assert bench_stcn_graphs.main([str(tiny_package("stcn", ("portable",))), "--repeat", "1", "--memory-frames",
                                   "2", "--ceiling"]) == 0
    out, err = capsys.readouterr()
    assert "fp32 MatMul rate: 5 GFLOP/s (ONNX Runtime, 2 threads; the better of 2 measurements, 2, 5)" in out, out
    assert "ran above the fp32 MatMul rate, which cannot be" in err and "stcn onnxruntime portable" in err, err


def test_bench_stcn_graphs_holds_each_package_to_its_own_flops(tmp_path, monkeypatch, capsys):
    # the FLOPs of the first package were every row's: a smaller second package ran "at 360%" of the ceiling
    sys.path.insert(0, str(SAMPLES))
    import bench_stcn_graphs

    small, large = tiny_package("stcn", ("portable",)), tmp_path / "large"
    import shutil
    shutil.copytree(small, large)
    monkeypatch.setattr(bench_stcn_graphs, "_matmul_rate", lambda threads: 1e12)
    monkeypatch.setattr(bench_stcn_graphs, "_frame_flops", lambda path, *rest: 4e9 if path == str(large) else 1e9)
    monkeypatch.setattr(bench_stcn_graphs, "_per_frame", lambda result, clock: 0.01)   # every row 10 ms a frame
    monkeypatch.chdir(tmp_path)
    assert bench_stcn_graphs.main([str(small), str(large), "--repeat", "1", "--memory-frames", "2", "--ceiling"]) == 0
    out = capsys.readouterr().out
    shares = {line.split(":")[0].strip(): line.split("runs at ")[1] for line in out.splitlines() if "runs at " in line}
    assert shares[f"{Path(small).name} onnxruntime portable"].startswith("10% ")     # 1 ms at the rate, of 10
    assert shares["large onnxruntime portable"].startswith("40% ") and "fp32 ceiling of large: 4 GFLOP" in out, out
