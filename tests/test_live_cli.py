"""`vosrt live --headless` end to end: generated clips as video files, the shipped stcn-lite package,
boxes instead of masks, PNGs scored with `vosrt eval`, bounded latency with --realtime, signals."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import cv2
import numpy as np
import pytest

from vosrt.cli import main
from vosrt.sdk.cli_eval import evaluate_folders
from vosrt.sdk.masks import read_label_png, write_label_png
from vosrt.sdk.metrics import summarize
from vosrt.sdk.synthetic import generate_sequence, write_davis, write_video

import vosrt.sdk
from vosrt.sdk.errors import UserError
from vosrt.sdk.live.pipeline import LivePipeline
from vosrt.sdk.live.server import is_loopback, serve
from vosrt.sdk.live.source import LatestFrameSource
from vosrt.sdk.video import open_source

from live_support import (PACKAGE, bounding_box, finish, free_port, http_camera, mjpeg_camera, start_live,
                          vosrt_command, wait_for)
from media import video_frames
from sdk_packages import tiny_package

CLIP_SEEDS = (4242, 1002, 1005)


def _select_args(labels: np.ndarray) -> list[str]:
    args = []
    for object_id in [int(i) for i in np.unique(labels) if i]:
        x, y, w, h = bounding_box(labels == object_id)
        args += ["--select", f"box:{x},{y},{w},{h}:{object_id}"]
    return args


@pytest.mark.slow
def test_box_selection_tracks_nearly_as_well_as_the_true_first_mask(tmp_path, capsys):
    with_boxes, with_truth = [], []
    for seed in CLIP_SEEDS:
        seq = generate_sequence(seed, num_frames=30, num_objects=2)
        clip = write_video(tmp_path / f"{seed}.mp4", seq)
        write_davis(tmp_path / "davis", str(seed), seq)
        truth = tmp_path / "davis" / "Annotations" / "480p" / str(seed)
        assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *_select_args(seq.labels[0]),
                     "--out", str(tmp_path / "boxes" / str(seed))]) == 0
        assert main(["run", str(PACKAGE), "--source", str(clip), "--mask", str(truth / "00000.png"),
                     "--out", str(tmp_path / "truth" / str(seed)), "--no-progress"]) == 0
        with_boxes += evaluate_folders(tmp_path / "boxes" / str(seed), truth)
        with_truth += evaluate_folders(tmp_path / "truth" / str(seed), truth)
    boxes, truth = summarize(with_boxes)["J&F"], summarize(with_truth)["J&F"]
    assert boxes >= 0.9 * truth, (boxes, truth)
    assert "latency p50" in capsys.readouterr().out


def test_without_realtime_every_frame_of_a_file_is_processed_and_named_by_its_index(tmp_path, capsys):
    seq = generate_sequence(7, num_frames=20, num_objects=1)
    clip = write_video(tmp_path / "clip.mp4", seq)
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *_select_args(seq.labels[0]),
                 "--out", str(tmp_path / "masks"), "--video", str(tmp_path / "overlay.mp4")]) == 0
    assert sorted(p.name for p in (tmp_path / "masks").glob("*.png")) == [f"{i:05d}.png" for i in range(20)]
    assert video_frames(tmp_path / "overlay.mp4") == 20
    assert "0 dropped" in capsys.readouterr().out


def test_realtime_on_a_model_slower_than_the_video_drops_stale_frames(tmp_path, capsys):
    seq = generate_sequence(8, num_frames=300, height=120, width=216, num_objects=1)
    clip = write_video(tmp_path / "fast.mp4", seq, fps=300)     # faster than stcn-lite on any CPU here
    assert main(["live", str(PACKAGE), "--source", str(clip), "--realtime", "--headless",
                 *_select_args(seq.labels[0]), "--out", str(tmp_path / "masks")]) == 0
    report = capsys.readouterr().out
    processed, captured, dropped = (int(report.split(word)[0].split()[-1]) for word in
                                    (" frames processed", " captured", " dropped"))
    assert captured == 300 and dropped > 0 and processed + dropped == captured
    names = sorted(int(p.stem) for p in (tmp_path / "masks").glob("*.png"))
    assert len(names) == processed and 0 <= names[0] and names[-1] <= 299
    assert max(np.diff(names)) > 1       # the PNGs skip the dropped frames' indices


def test_frames_limits_the_processed_frames(tmp_path):
    seq = generate_sequence(9, num_frames=15, num_objects=1)
    clip = write_video(tmp_path / "clip.mp4", seq)
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *_select_args(seq.labels[0]),
                 "--out", str(tmp_path / "masks"), "--frames", "6"]) == 0
    assert len(list((tmp_path / "masks").glob("*.png"))) == 6


def test_a_headless_run_shows_its_progress_unless_told_not_to(tmp_path, capsys):
    # a long file processed --headless said nothing from the model's line to the final figures
    pytest.importorskip("tqdm")   # without it the bar is a line a second, which a short run may not reach
    seq = generate_sequence(9, num_frames=5, height=64, width=96, num_objects=1)
    clip = write_video(tmp_path / "clip.mp4", seq)
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *_select_args(seq.labels[0])]) == 0
    assert "5/5 [" in capsys.readouterr().err          # the file's length is the bar's total
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", "--frames", "3"]) == 0
    assert "3/3 [" in capsys.readouterr().err
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", "--no-progress"]) == 0
    assert "frame/s" not in capsys.readouterr().err


def test_session_settings_are_flags_of_live_too(tmp_path, capsys):
    seq = generate_sequence(9, num_frames=4, num_objects=2)
    clip = write_video(tmp_path / "clip.mp4", seq)
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *_select_args(seq.labels[0]),
                 "--max-objects", "1"]) == 2
    # the page's "remove one first" was no advice for --select boxes given on the command line
    assert "--select: 2 boxes, but this session tracks at most 1 object (max_objects); give 1 or fewer, or add " \
           "--max-objects 2" in capsys.readouterr().err
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", "--overlap", "2"]) == 2
    assert "--overlap" in capsys.readouterr().err
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *_select_args(seq.labels[0]),
                 "--max-objects", "2", "--top-k", "8", "--mem-every", "2", "--out", str(tmp_path / "masks")]) == 0
    assert {int(i) for i in np.unique(read_label_png(tmp_path / "masks" / "00003.png"))} == {0, 1, 2}


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_leaves_a_playable_recording_and_the_pngs_written(tmp_path, stop):
    seq = generate_sequence(10, num_frames=30, num_objects=1)
    write_video(tmp_path / "clip.mp4", seq)
    process = subprocess.Popen(vosrt_command("live", str(PACKAGE), "--source", "clip.mp4", "--realtime", "--loop",
                                            "--headless", *_select_args(seq.labels[0]), "--out", "masks",
                                            "--video", "overlay.mp4"),
                               cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "masks").glob("*.png"))) < 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(stop)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + stop, output    # as `vosrt run`: it exited 0, as if the source had ended
    assert stop.name in output and "frames processed" in output
    pngs = list((tmp_path / "masks").glob("*.png"))
    assert len(pngs) >= 8
    assert video_frames(tmp_path / "overlay.mp4") == len(pngs)
    assert all(read_label_png(p).shape == seq.labels[0].shape for p in pngs)


def test_headless_unsupervised_package_segments_every_frame_without_selection(tmp_path, capsys):
    seq = generate_sequence(11, num_frames=12, height=64, width=96, num_objects=1, num_distractors=0)
    clip = write_video(tmp_path / "clip.mp4", seq)
    assert main(["live", str(tiny_package("3dc-seg")), "--source", str(clip), "--headless",
                 "--out", str(tmp_path / "masks")]) == 0
    assert len(list((tmp_path / "masks").glob("*.png"))) == 12     # the clip window is flushed at the end
    assert main(["live", str(tiny_package("3dc-seg")), "--source", str(clip), "--headless",
                 "--select", "box:1,1,20,20"]) == 2
    assert "segment automatically" in capsys.readouterr().err


def test_headless_run_says_which_given_flags_it_ignores(tmp_path, capsys):
    # --fps without --realtime, and the page's --token / --open / --save-dir in a headless run, were taken
    # without a word, as if they had done something
    seq = generate_sequence(13, num_frames=3, height=64, width=96, num_objects=1)
    clip = write_video(tmp_path / "clip.mp4", seq)
    assert main(["live", str(tiny_package("3dc-seg")), "--source", str(clip), "--headless", "--fps", "10",
                 "--token", "abcdefghij", "--save-dir", str(tmp_path / "saved")]) == 0
    err = capsys.readouterr().err
    assert "note: --fps 10 is ignored: it sets the pace of --realtime playback of a file or folder (add --realtime)" in err
    assert "note: --headless serves no page, so --token, --save-dir are ignored" in err
    assert main(["live", str(tiny_package("3dc-seg")), "--source", str(clip), "--headless", "--fps", "10",
                 "--realtime", "--loop", "--frames", "4"]) == 0
    assert "ignored" not in capsys.readouterr().err


@pytest.mark.parametrize("select, expected", [("box:1,2,3", "X,Y,W,H"), ("point:3,4", "box:"),
                                              ("box:1,2,3,4:300", "1..255"), ("box:1,2,0,4", "W, H > 0")])
def test_bad_select_is_a_clear_error(tmp_path, capsys, select, expected):
    write_label_png(tmp_path / "unused.png", np.zeros((4, 4), np.uint8))
    assert main(["live", str(PACKAGE), "--source", str(tmp_path), "--headless", "--select", select]) == 2
    assert expected in capsys.readouterr().err


def test_headless_select_outside_the_frame_says_why_nothing_is_tracked(tmp_path, capsys):
    seq = generate_sequence(12, num_frames=3, height=64, width=96, num_objects=1)
    clip = write_video(tmp_path / "clip.mp4", seq)
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", "--select", "box:500,500,20,20"]) == 0
    err = capsys.readouterr().err
    assert "warning: --select: object 1 not tracked" in err and "inside the 96×64 frame" in err
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *_select_args(seq.labels[0])]) == 0
    assert "not tracked" not in capsys.readouterr().err


def test_headless_select_outside_the_frame_costs_that_box_only(tmp_path, capsys):
    # one box outside the frame refused every box given with it; an id given to two boxes was refused in the
    # page's words ("remove it first") after the session had been opened
    seq = generate_sequence(12, num_frames=3, height=64, width=96, num_objects=1)
    clip = write_video(tmp_path / "clip.mp4", seq)
    good = _select_args(seq.labels[0])   # object 1
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *good, "--select", "box:500,500,20,20:2",
                 "--out", str(tmp_path / "masks")]) == 0
    err = capsys.readouterr().err
    assert "warning: --select: object 2 not tracked: added object 1; object 2: box" in err, err
    assert "inside the 96×64 frame" in err and "object 1 not tracked" not in err
    masks = [read_label_png(p) for p in sorted((tmp_path / "masks").glob("*.png"))]
    assert len(masks) == 3 and all(set(np.unique(m)) == {0, 1} for m in masks)
    assert main(["live", str(PACKAGE), "--source", str(clip), "--headless", *good,
                 "--select", good[1].rsplit(":", 1)[0] + ":1"]) == 2
    assert ("--select: object id 1 given to more than one box; give each box its own id, or none"
            in capsys.readouterr().err)


@pytest.mark.parametrize("seconds", ["-1", "nan", "inf"])
def test_a_negative_retry_wait_is_a_clear_error(tmp_path, capsys, seconds):
    # it was taken: a camera that dropped was reopened in a busy loop ("retrying in -1 s"); an infinite wait
    # killed the capture thread (OverflowError) and the page said "retrying" for ever
    write_label_png(tmp_path / "unused.png", np.zeros((4, 4), np.uint8))
    assert main(["live", str(PACKAGE), "--source", str(tmp_path), "--headless", "--retry-seconds", seconds]) == 2
    assert f"--retry-seconds: expected a finite number of seconds >= 0, got {seconds}" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf"])
def test_a_stream_timeout_that_is_no_wait_is_a_clear_error(tmp_path, capsys, seconds):
    write_label_png(tmp_path / "unused.png", np.zeros((4, 4), np.uint8))
    assert main(["live", str(PACKAGE), "--source", str(tmp_path), "--headless", "--stream-timeout", seconds]) == 2
    assert (f"--stream-timeout: expected a finite number of seconds > 0, got {float(seconds)}"
            in capsys.readouterr().err)


def test_a_stream_that_hangs_is_reopened_after_the_stream_timeout(tmp_path, capsys):
    # a camera that keeps its connection open and stops sending was waited on for OpenCV's 30 s before each reopen;
    # here every connection sends 4 frames and hangs, so 12 processed frames take several reopens
    seq = generate_sequence(12, num_frames=1, height=64, width=96, num_objects=1)
    picture = cv2.cvtColor(seq.frames[0], cv2.COLOR_RGB2BGR)
    with mjpeg_camera(picture, frames=4, fps=100, stall=True) as url:
        started = time.monotonic()
        assert main(["live", str(PACKAGE), "--source", url, "--headless", *_select_args(seq.labels[0]),
                     "--frames", "12", "--stream-timeout", "0.5", "--retry-seconds", "0.1", "--no-progress"]) == 0
        assert time.monotonic() - started < 60          # at OpenCV's 30 s a reopen: minutes
    out = capsys.readouterr().out
    assert out.startswith("12 frames processed of "), out


@pytest.mark.parametrize("fps", ["nan", "inf", "0"])
def test_an_fps_that_is_no_frame_rate_is_a_clear_error_naming_fps(tmp_path, capsys, fps):
    # NaN was refused as "pace: expected ...", a flag vosrt live has not; inf was taken, and --realtime
    # played the folder unpaced, dropping most of its frames
    write_label_png(tmp_path / "unused.png", np.zeros((4, 4), np.uint8))
    assert main(["live", str(PACKAGE), "--source", str(tmp_path), "--headless", "--realtime", "--fps", fps]) == 2
    err = capsys.readouterr().err
    assert f"--fps: expected a finite number of frames per second > 0, got {float(fps)}" in err, err


@pytest.mark.parametrize("port", ["99999", "-1", "0"])
def test_a_port_out_of_range_is_a_clear_error(tmp_path, capsys, port):
    write_label_png(tmp_path / "unused.png", np.zeros((4, 4), np.uint8))
    assert main(["live", str(PACKAGE), "--source", str(tmp_path), "--port", port]) == 2
    assert f"--port: expected a port number in 1..65535, got {port}" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-host.invalid"])   # another machine's address; no name
def test_a_host_it_cannot_listen_on_is_blamed_on_host_not_port(tmp_path, capsys, host):
    # it said "--port N: cannot listen on HOST:N (...); pick another port with --port", which cannot help
    write_label_png(tmp_path / "unused.png", np.zeros((4, 4), np.uint8))
    assert main(["live", str(PACKAGE), "--source", str(tmp_path), "--host", host, "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert f"error: --host {host}: cannot listen on {host}:" in err and "give an address of this machine" in err, err
    with socket.socket() as taken:                      # a port in use is still the port's fault
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["live", str(PACKAGE), "--source", str(tmp_path), "--port", str(port)]) == 2
    assert f"error: --port {port}: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_binding_beyond_loopback_without_a_token_is_refused(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    clip = write_video(tmp_path / "clip.mp4", generate_sequence(12, num_frames=3, num_objects=1))
    session = vosrt.sdk.load(PACKAGE)
    pipeline = LivePipeline(session, LatestFrameSource(lambda: open_source(str(clip))))
    with pytest.raises(UserError, match="token"):
        asyncio.run(serve(pipeline, "0.0.0.0", free_port(), token=None))
    pipeline.source.close()
    session.close()


def test_a_stream_that_fails_is_retried_while_the_viewer_keeps_serving(tmp_path):
    with http_camera(tmp_path, frames=20) as url:
        process, page = start_live([str(PACKAGE), "--source", url, "--retry-seconds", "0.2",
                                    "--port", str(free_port())], cwd=tmp_path)
        try:
            deadline, state = time.monotonic() + 60, {}
            while time.monotonic() < deadline and not (state.get("retries", 0) >= 2 and state["frames"] > 20):
                time.sleep(0.3)
                with urllib.request.urlopen(page + "api/state", timeout=10) as answer:
                    state = json.load(answer)
            assert state["retries"] >= 2 and state["frames"] > 20 and not state["ended"], state
            with urllib.request.urlopen(page, timeout=10) as answer:
                assert b"vosrt live" in answer.read()
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0, "".join(process.output)


def _post(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as refused:
        body = refused.read()
        return refused.code, json.loads(body) if body.startswith(b"{") else {}


def test_viewer_of_an_unsupervised_package_shows_segments_and_refuses_selection(tmp_path):
    seq = generate_sequence(13, num_frames=12, height=64, width=96, num_objects=1, num_distractors=0)
    write_video(tmp_path / "clip.mp4", seq)
    process, page = start_live([str(tiny_package("3dc-seg")), "--source", "clip.mp4", "--realtime", "--loop",
                                "--port", str(free_port())], cwd=tmp_path)
    try:
        deadline, state = time.monotonic() + 60, {"frames": 0}
        while time.monotonic() < deadline and state["frames"] < 10:
            time.sleep(0.3)
            with urllib.request.urlopen(page + "api/state", timeout=10) as answer:
                state = json.load(answer)
        assert state["family"] == "3dc-seg" and not state["takes_mask"] and state["frames"] >= 10
        code, reply = _post(page + "api/select", {"box": [1, 1, 30, 30]})
        assert code == 400 and "segment automatically" in reply["error"]
        code, _ = _post(page + "api/pause", {}, {"Origin": "http://evil.example"})
        assert code == 403                                   # another site cannot drive the viewer
        code, _ = _post(page + "api/pause", {}, {"Origin": page.rstrip("/")})
        assert code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(process.output)


def test_beyond_loopback_a_token_is_generated_and_required(tmp_path):
    write_video(tmp_path / "clip.mp4", generate_sequence(14, num_frames=10, height=64, width=96, num_objects=1))
    process, page = start_live([str(PACKAGE), "--source", "clip.mp4", "--host", "0.0.0.0",
                                "--port", str(free_port())], cwd=tmp_path)
    try:
        assert "?token=" in page and len(page.split("?token=")[1]) >= 16
        bare = page.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bare + "api/state", timeout=10)
        assert refused.value.code == 401
        with urllib.request.urlopen(page, timeout=10) as answer:     # the printed URL opens the page
            assert b"vosrt live" in answer.read()
        # a token header that is no UTF-8, from any client: it was a 500 and a traceback (UnicodeEncodeError)
        parts = urllib.parse.urlsplit(page)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw:
            raw.sendall(b"GET /api/state HTTP/1.1\r\nHost: " + parts.netloc.encode() +
                        b"\r\nX-Vosrt-Token: \xff\xfe\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := raw.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert not any("Traceback" in line or "Error handling request" in line for line in process.output)
        # and the URLs for other machines (it printed only http://127.0.0.1:PORT/?token=...): this machine's
        # name and its non-loopback addresses, each of which opens the page
        deadline, remote = time.monotonic() + 10, []
        while time.monotonic() < deadline and not remote:
            time.sleep(0.1)
            remote = [line.split("from another machine: ", 1)[1].strip() for line in process.output
                      if "from another machine: " in line]
        hosts = [urllib.parse.urlsplit(url).hostname for url in remote]
        assert remote and socket.gethostname() in hosts, "".join(process.output)
        for url, host in zip(remote, hosts):
            assert url.endswith(page[page.index(":", 5):])                  # the same port and token
            if host != socket.gethostname():
                assert not ipaddress.ip_address(host).is_loopback
                with urllib.request.urlopen(url, timeout=10) as answer:
                    assert b"vosrt live" in answer.read()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(process.output)


def test_an_image_folder_played_with_realtime_and_fps_names_pngs_by_image(tmp_path, capsys):
    seq = generate_sequence(15, num_frames=40, height=64, width=96, num_objects=1)
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(seq.frames):
        cv2.imwrite(str(frames / f"shot-{index:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert main(["live", str(PACKAGE), "--source", str(frames), "--realtime", "--fps", "400", "--headless",
                 *_select_args(seq.labels[0]), "--out", str(tmp_path / "masks")]) == 0
    assert "realtime, newest frame wins" in capsys.readouterr().err
    written = sorted(p.stem for p in (tmp_path / "masks").glob("*.png"))
    assert written and set(written) < {f"shot-{i:03d}" for i in range(40)}     # some dropped


def test_the_server_s_terminal_says_when_the_stream_ends_by_itself(tmp_path):
    # A file that ended (or a source that failed) left the server's terminal silent until Ctrl-C.
    write_video(tmp_path / "clip.mp4", generate_sequence(15, num_frames=8, height=64, width=96, num_objects=1))
    process, page = start_live([str(PACKAGE), "--source", "clip.mp4", "--port", str(free_port())], cwd=tmp_path)
    try:
        wait_for(lambda: any("the page stays up" in line for line in process.output), timeout=60, interval=0.2)
        said = next(line for line in process.output if "the page stays up" in line)
        assert "clip.mp4 ended after 8 frames" in said and "Ctrl-C" in said
    finally:
        process.send_signal(signal.SIGINT)
        output = finish(process)
    assert process.returncode == 0, output
    assert output.count("the page stays up") == 1
