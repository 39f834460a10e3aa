"""`vosrt run` stopped the way docker, systemd and Kubernetes stop a process (SIGTERM, SIGHUP) or by
Ctrl-C (SIGINT): the run stops, its files are finished (a playable overlay video, whole PNGs) and the
exit code is 128 + the signal."""
import signal
import subprocess
import sys
import time

import pytest

from vosrt.sdk.masks import read_label_png, write_label_png
from vosrt.sdk.synthetic import generate_sequence, write_video

from media import video_frames


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    folder = tmp_path_factory.mktemp("signals")
    sequence = generate_sequence(8, num_frames=60, height=128, width=224, num_objects=2)
    # 600 frames: far more than a run gets through before the signal
    path = write_video(folder / "long.mp4", sequence.frames * 10)
    write_label_png(folder / "first.png", sequence.labels[0])
    return path, folder / "first.png"


def _finished(masks):
    """The PNGs written so far (pathlib's * also matches the hidden .NAME.partial-XXXX.png being written)."""
    return sorted(p for p in masks.glob("*.png") if not p.name.startswith("."))


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow),
                                    pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_stop_signal_finishes_the_files_and_exits_128_plus_the_signal(long_video, tmp_path, signum):
    video, mask = long_video
    masks, overlay = tmp_path / "masks", tmp_path / "overlay.mp4"
    process = subprocess.Popen([sys.executable, "-m", "vosrt.cli", "run", "stcn-lite", "--source", str(video),
                                "--mask", str(mask), "--out", str(masks), "--video", str(overlay), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(_finished(masks)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert "Traceback" not in err
    pngs = _finished(masks)
    assert 3 <= len(pngs) < 600
    assert not list(masks.glob(".*"))                     # no half-written PNG left behind
    assert all(read_label_png(p).shape == (128, 224) for p in pngs)
    frames = video_frames(overlay)                          # the mp4 is finished: it plays
    assert len(pngs) - 1 <= frames <= len(pngs)


# The signal arrives while ONNX Runtime runs vosrt's Python operator (the plugin form's L2MemoryReadout on
# the CPU): an exception raised there cannot cross ONNX Runtime's C++ frames (pybind11 would end the process
# with `terminate`), so the stop is held until the session's run returns. Sent from inside the operator, so
# it lands there every time.
SIGNAL_INSIDE_THE_OPERATOR = """
import signal, sys
from vosrt import cli
from vosrt.sdk import cpu_ops

cpu_ops.register_onnxruntime_ops(cpu_ops.load_cpu_ops())
bodies, calls = cpu_ops._state["bodies"], []

def wrap(body):
    def run(feed, attributes):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(int(sys.argv[1]))
        return body(feed, attributes)
    return run

for key in list(bodies):
    bodies[key] = wrap(bodies[key])
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_inside_an_onnxruntime_python_operator_still_finishes_the_files(long_video, tmp_path,
                                                                                       signum):
    video, mask = long_video
    masks, overlay = tmp_path / "masks", tmp_path / "overlay.mp4"
    done = subprocess.run([sys.executable, "-c", SIGNAL_INSIDE_THE_OPERATOR, str(int(signum)), "run", "stcn-lite",
                           "--source", str(video), "--mask", str(mask), "--out", str(masks), "--video",
                           str(overlay), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 128 + signum, done.stderr
    assert "terminate called" not in done.stderr and "Traceback" not in done.stderr
    pngs = _finished(masks)
    assert 1 <= len(pngs) <= 4  # the frame whose segment step held the signal is the last
    assert not list(masks.glob(".*"))
    assert len(pngs) - 1 <= video_frames(overlay) <= len(pngs)

