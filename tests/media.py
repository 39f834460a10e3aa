"""Reading back what the CLI and the samples write, for the tests."""
from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
from pathlib import Path

import cv2
import pytest


def video_frames(path: str | Path) -> int:
    """Frames OpenCV decodes from ``path`` (0 when it cannot open it): a written video is finished and
    playable when this counts every frame."""
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@contextlib.contextmanager
def small_disk(folder: Path, kib: int):
    """A real file system of ``kib`` KiB mounted at ``folder`` (tmpfs, made here): a disk that fills up. Skips the
    test where mounting is not permitted (not root, or a container without CAP_SYS_ADMIN)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


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


def zero_png(path: Path, width: int, height: int) -> Path:
    """A valid grey-scale PNG of ``width`` x ``height`` black pixels: a few hundred kilobytes on disk, however many
    pixels it declares (what a decompression bomb is)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), bytes(width + 1)      # each row: filter byte 0, then the pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)   # 8-bit grey, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path
