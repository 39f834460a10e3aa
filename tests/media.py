"""Reading back what the CLI and the samples write, for the tests."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import cv2


def video_frames(path: str | Path) -> int:
    """Frames OpenCV decodes from ``path`` (0 when it cannot open it): a written video is finished and
    playable when this counts every frame."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


def reported_rate(source: str | Path) -> tuple[float, int]:
    """(frame rate, frame count) that OpenCV reads from the header of a video file or a stream URL (a live stream's
    count is 0 or less)."""
    capture = cv2.VideoCapture(str(source))
    try:
        return capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def suggested_commands(message: str) -> list[list[str]]:
    """The `vosrt ...` commands an error message suggests (in backquotes), each split into its arguments
    without the leading ``vosrt``; fails the test when the message suggests none."""
    found = re.findall(r"`(vosrt [^`]+)`", message)
    assert found, message
    return [shlex.split(command)[1:] for command in found]
