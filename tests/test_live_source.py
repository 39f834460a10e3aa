"""The latest-frame live source on real video files and a real HTTP stream: newest frame wins, stale
frames are dropped and counted, every frame is kept without dropping, a stream that stops is reopened."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vosrt.sdk.errors import UserError
from vosrt.sdk.live.source import LatestFrameSource
from vosrt.sdk.synthetic import generate_sequence, write_video
from vosrt.sdk.video import open_source

from live_support import http_camera


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 40-frame generated video (path, its frames as OpenCV decodes them)."""
    path = tmp_path_factory.mktemp("live-source") / "clip.mp4"
    write_video(path, generate_sequence(3, num_frames=40, height=64, width=96, num_objects=1), fps=200)
    return path, list(open_source(str(path)))


def test_without_dropping_every_frame_arrives_in_order(clip):
    path, frames = clip
    source = LatestFrameSource(lambda: open_source(str(path)), drop=False)
    got = list(source)
    source.close()
    assert len(got) == len(frames) and all(np.array_equal(a, b) for a, b in zip(got, frames))
    assert source.dropped == 0 and source.ended and not source.stopped_early


def test_a_slow_consumer_gets_the_newest_frame_and_the_rest_are_counted_as_dropped(clip):
    path, frames = clip
    source = LatestFrameSource(lambda: open_source(str(path)), drop=True, pace=200)
    got, waiting = [], []
    for frame in source:
        got.append(frame)
        waiting.append(source.queued)
        time.sleep(0.03)            # a model at ~30 FPS on a 200 FPS source
    source.close()
    assert max(waiting) <= 1                                 # never more than one stale frame held
    assert source.captured == len(frames)
    assert source.dropped > 0 and len(got) + source.dropped == source.captured
    positions = [next(i for i, f in enumerate(frames) if np.array_equal(f, g)) for g in got]
    assert positions == sorted(positions) and np.diff(positions).max() > 1


def test_capture_time_is_known_for_each_frame_taken(clip):
    path, _ = clip
    source = LatestFrameSource(lambda: open_source(str(path)), drop=False)
    for frame in source:
        captured = source.capture_time(frame)
        assert captured is not None and captured <= time.perf_counter()
        assert source.capture_time(frame) is None           # answered once
    source.close()


def test_interrupt_ends_iterations_until_cleared_and_capture_continues(clip):
    path, frames = clip
    source = LatestFrameSource(lambda: open_source(str(path)), drop=False)
    first = []
    for frame in source:
        first.append(frame)
        if len(first) == 5:
            source.interrupt()
    assert list(source) == []          # held until the consumer clears it (not undone by a new iteration)
    source.clear_interrupt()
    rest = list(source)
    source.close()
    assert len(first) == 5 and len(first) + len(rest) >= len(frames) - 1
    assert np.array_equal(rest[-1], frames[-1])


def test_paused_source_yields_nothing_until_resumed(clip):
    path, _ = clip
    source = LatestFrameSource(lambda: open_source(str(path)), drop=False)
    source.pause()
    got = []
    reader = threading.Thread(target=lambda: got.extend(source), daemon=True)
    reader.start()
    time.sleep(0.5)
    assert got == []
    source.resume()
    reader.join(timeout=30)
    source.close()
    assert len(got) == 40


def test_a_source_that_cannot_be_opened_is_a_user_error_at_once(tmp_path):
    with pytest.raises(UserError, match="--source"):
        LatestFrameSource(lambda: open_source(str(tmp_path / "missing.mp4")))


@pytest.fixture
def http_stream(tmp_path):
    with http_camera(tmp_path, frames=20) as url:
        yield url


def test_a_stream_that_stops_is_reopened_and_frames_keep_coming(http_stream):
    source = LatestFrameSource(lambda: open_source(http_stream), drop=False, retry_seconds=0.1)
    assert source.kind == "stream"
    got = 0
    for _ in source:
        got += 1
        if got == 50:               # more than two connections' worth of frames
            break
    source.close()
    assert got == 50 and source.retries >= 2
    assert "stopped after 20 frames" in source.status or "reconnected" in source.status


def test_a_source_stuck_in_a_read_is_not_released_under_it(tmp_path):
    """close() on a stream that stalled (no data, connection open) joins capture for 5 s, then released the
    OpenCV capture while the capture thread was still inside its read: `vosrt live --headless` stopped by SIGTERM
    there ended by SIGSEGV (9 runs of 10). Now the capture thread releases it once the read returns."""
    import functools
    import http.server

    import cv2

    seq = generate_sequence(4, num_frames=30, height=64, width=96, num_objects=1)
    writer = cv2.VideoWriter(str(tmp_path / "cam.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 20, (96, 64))
    for frame in seq.frames:
        writer.write(frame)
    writer.release()
    data = (tmp_path / "cam.avi").read_bytes()
    resume = threading.Event()

    class Stalling(http.server.BaseHTTPRequestHandler):
        def do_GET(self):   # half the file, then nothing (the connection stays open) until the test resumes it
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            resume.wait(60)
            self.wfile.write(data[len(data) // 2:])

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = LatestFrameSource(functools.partial(open_source, f"http://127.0.0.1:{server.server_address[1]}/cam.avi"))
        next(iter(source))                    # capture starts
        captured = -1
        while source.captured != captured:    # until it is stuck in the stalled read
            captured = source.captured
            time.sleep(1.0)
        capture = source._inner.capture
        source.close()
        assert source._thread.is_alive() and capture.isOpened()     # still reading: left open
        resume.set()
        source._thread.join(timeout=30)
        assert not source._thread.is_alive() and not capture.isOpened()   # released by the capture thread
    finally:
        resume.set()
        server.shutdown()
        server.server_close()
