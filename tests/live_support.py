"""Helpers of the live tests: generated videos standing in for a camera, and `vosrt live` started as
a real process."""
from __future__ import annotations

import contextlib
import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from vosrt.sdk.synthetic import generate_sequence, write_video

PACKAGE = Path(__file__).resolve().parents[1] / "sdk" / "models" / "stcn-lite"


def bounding_box(mask: np.ndarray, pad: int = 3) -> tuple[int, int, int, int]:
    """(x, y, w, h) around the true pixels of ``mask``, ``pad`` pixels wider on each side."""
    ys, xs = np.nonzero(mask)
    x0, y0 = max(0, xs.min() - pad), max(0, ys.min() - pad)
    x1, y1 = min(mask.shape[1], xs.max() + 1 + pad), min(mask.shape[0], ys.max() + 1 + pad)
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def desk_video(path: Path, frames: int = 90, fps: float = 15, seed: int = 5) -> tuple[np.ndarray, tuple]:
    """A still scene with one object, as a camera on a desk sees it (sensor noise on each frame), written
    to ``path``; returns (the object's true mask, its bounding box)."""
    seq = generate_sequence(seed, num_frames=1, num_objects=1, num_distractors=0)
    rng = np.random.default_rng(seed)
    still = seq.frames[0].astype(np.int16)
    noisy = [np.clip(still + rng.integers(-3, 4, still.shape), 0, 255).astype(np.uint8) for _ in range(frames)]
    write_video(path, noisy, fps=fps)
    mask = seq.labels[0] == 1
    return mask, bounding_box(mask)


def wait_for(condition, timeout: float = 30, interval: float = 0.05) -> None:
    """Until ``condition()`` is true; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vosrt_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "vosrt.cli", *args]


def start_live(args: list[str], cwd: Path, timeout: float = 90) -> tuple[subprocess.Popen, str]:
    """Start ``vosrt live ARGS`` (the viewer) and return the process and the URL it prints."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen(vosrt_command("live", *args), cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if "open http" in line:
            # keep reading, so the process never blocks on a full pipe; the lines stay on .output
            process.output = seen
            process.reader = threading.Thread(target=lambda: seen.extend(process.stdout), daemon=True)
            process.reader.start()
            return process, line.split("open ", 1)[1].split()[0]
    process.kill()
    raise AssertionError("vosrt live did not print its URL:\n" + "".join(seen))


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    """Wait for a process :func:`start_live` started; returns all it printed (its reader has read to the end)."""
    process.wait(timeout=timeout)
    process.reader.join(timeout=10)
    return "".join(process.output)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def http_camera(folder: Path, frames: int = 20, seed: int = 4):
    """An MJPEG .avi served over HTTP (a real network stream) that ends, like a camera dropping, after
    ``frames`` frames; yields its URL."""
    seq = generate_sequence(seed, num_frames=frames, height=64, width=96, num_objects=1)
    writer = cv2.VideoWriter(str(folder / "cam.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 20, (96, 64))
    for frame in seq.frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    with _served(functools.partial(_QuietHandler, directory=str(folder)), "cam.avi") as url:
        yield url


@contextlib.contextmanager
def _served(handler, name: str, stopping=lambda: None):
    """Serves ``handler`` on a free local port from a thread; yields the URL of ``name``. ``stopping()`` is called
    before the server stops (to end the handlers that are still sending)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{name}"
    finally:
        stopping()
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_server():
    """A local TCP server that accepts connections and never answers (a host whose camera service hangs); yields an
    HTTP URL on it."""
    server = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/stream.mjpg"
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)   # wakes the accept() that waits (close alone does not, on Linux)
        server.close()
        for connection in held:
            connection.close()


def frame_counter(frame: np.ndarray) -> int:
    """The capture number :func:`mjpeg_camera` wrote into ``frame``'s top row of 4x4 blocks."""
    return sum(1 << bit for bit in range(12) if frame[0:4, 4 * bit:4 * bit + 4].mean() > 128)


@contextlib.contextmanager
def mjpeg_camera(picture: np.ndarray, frames: int = 4096, fps: float = 400, stall: bool = False):
    """A live MJPEG stream over HTTP (an IP camera's multipart/x-mixed-replace): ``frames`` copies of ``picture``
    (BGR, at least 48 pixels wide) at ``fps`` frames per second, faster than a model runs, frame k carrying k in
    binary in its top row of 4x4 blocks (:func:`frame_counter`). It has no frame count, so vosrt takes it for a
    live source. ``stall``: after its frames it keeps the connection open and sends nothing more (a camera that
    hangs), instead of closing it. Yields the URL."""
    stop = threading.Event()
    jpegs = []
    for k in range(frames):
        frame = picture.copy()
        for bit in range(12):
            frame[0:4, 4 * bit:4 * bit + 4] = 255 if (k >> bit) & 1 else 0
        jpegs.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())

    class Camera(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            start = time.perf_counter()
            try:
                for k, jpeg in enumerate(jpegs):
                    if stop.is_set():
                        return
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                     % (len(jpeg), jpeg))
                    time.sleep(max(0.0, start + (k + 1) / fps - time.perf_counter()))
                self.wfile.flush()
                if stall:
                    stop.wait()
            except OSError:
                pass

    with _served(Camera, "camera.mjpg", stopping=stop.set) as url:
        yield url
