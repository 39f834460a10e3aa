"""Frame sources (camera, video file, stream URL, image folder, DAVIS sequence) and result sinks
(palette PNGs, overlay video, per-frame callbacks).

Sources yield ``[H, W, 3]`` uint8 **BGR** frames (OpenCV's order, the sessions' default ``color``).
A source that cannot be opened raises ``UserError`` at :func:`open_source`. A source that stops early
(a camera unplugged, a stream dropped, a truncated file) ends the iteration cleanly and sets
:attr:`FrameSource.stopped_early` with the reason in :attr:`FrameSource.problem`, so that everything
produced so far is kept. An unreadable image of a folder is skipped with a warning
(:attr:`ImageFolderSource.skipped`) and the folder goes on.
"""
from __future__ import annotations

import functools
import math
import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from vosrt.sdk.errors import UserError, is_number
from vosrt.sdk.letterbox import check_color
from vosrt.sdk.masks import label_colours, read_label_png, write_label_png
from vosrt.sdk.package import stage_file, writable_folder

MIN_FRAME_SIDE = 2          # smaller frames are skipped (check_image refuses them)
MAX_FAILED_READS = 25       # undecodable frames in a row after which a video file counts as ended
MAX_SOURCE_FPS = 1000       # the highest frame rate a source is believed to report (high-speed cameras)
# Free space a video needs beyond its next frames: the writer's buffers and the index it writes on close
# (a file whose disk filled up has no index, and so no frame: OpenCV's writer only warns as writes fail).
VIDEO_FREE_MARGIN = 1 << 20
MAX_MP4_FPS = 65535         # the highest frame rate an .mp4 writer opens at (1/fps is its time base)
STREAM_TIMEOUT = 10.0       # seconds a stream URL may take to open, or to send its next frame (OpenCV's own: 30)
# The most pixels an image file may declare (PIL's decompression-bomb limit, about 12,000 x 7,500; 8K video is 33 M):
# a 1 MB PNG can declare 30,000 x 30,000 pixels, 2.7 GB once decoded, which OpenCV decodes (its own limit is 2^30).
# PIL reads the header (read_image); OpenCV then decodes only what PIL recognised and measured.
MAX_IMAGE_PIXELS = 89_478_485


def read_image(path: Path) -> tuple[np.ndarray | None, str | None]:
    """Image file ``path`` as BGR uint8 ``[H, W, 3]``, or ``(None, why not)``. PIL reads its header first (every
    suffix of :data:`IMAGE_SUFFIXES` is a format it knows): a file it does not recognise is refused, whatever OpenCV
    would make of its content (a Radiance HDR named .png declaring 10000x9000 decoded to 1.3 GB), and so is an
    image of more than :data:`MAX_IMAGE_PIXELS`, before anything is decoded."""
    from PIL import Image

    try:
        with Image.open(path) as image:   # the header only; PIL warns above its limit (once) and refuses at twice it
            width, height = image.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:   # the warning: under -W error
        declared = re.search(r"\((\d+) pixels\)", str(err))
        width, height = (int(declared.group(1)) if declared else MAX_IMAGE_PIXELS + 1), 1
    except Exception:   # not an image PIL knows (its content: an HDR named .png too), a broken or cut header
        return None, UNREADABLE
    if width * height > MAX_IMAGE_PIXELS:
        size = f"{width}x{height} pixels" if height > 1 else f"{width:,} pixels"
        return None, (f"image of {size} is larger than the {MAX_IMAGE_PIXELS:,} pixels an image may have "
                      f"(it would take {3 * width * height / 2**30:.1f} GB decoded)")
    try:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as err:
        return None, f"{UNREADABLE} ({str(err).strip().splitlines()[-1]})"
    return (frame, None) if frame is not None else (None, UNREADABLE)


UNREADABLE = "cannot read image"


def load_image(path: Path, what: str = "image") -> np.ndarray:
    """:func:`read_image` for a file that must be read (a dataset's): UserError ``cannot read {what} PATH``,
    with the reason where there is more to say than that."""
    image, problem = read_image(path)
    if image is None:
        raise UserError(f"cannot read {what} {path}" + ("" if problem == UNREADABLE else f": {problem}"))
    return image


def natural_key(path: Path) -> list:
    """Sort key putting ``frame2`` before ``frame10``; names it holds equal (``frame1``, ``frame01``; ``a``, ``A``) are
    in the order of their text, not in the folder's listing order (a file system's hash order)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part.lower())
            for part in re.split(r"(\d+)", path.name)] + [(2, 0, path.name)]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def frame_files(folder: Path, suffixes=IMAGE_SUFFIXES) -> Iterator[Path]:
    """The entries of ``folder`` named as files of ``suffixes`` (in any letter case) that can be frames: hidden
    ones (macOS's ``._00000.jpg`` AppleDouble files, a viewer's ``.thumb.png``, a killed writer's partial file)
    and folders named like images left out; a broken link is kept (reading it says what is wrong). In the
    folder's listing order. The one rule for the frames of a source folder, of `vosrt eval`'s PNG folders and of
    the training datasets' frame folders."""
    suffixes = tuple(suffixes)
    return (p for p in folder.iterdir()
            if p.suffix.lower() in suffixes and not p.name.startswith(".") and not p.is_dir())


class FrameSource:
    """An iterable of BGR uint8 frames with ``fps`` (or None), ``length`` (or None when unknown, e.g. a
    camera), ``name`` and per-frame names for output files (:meth:`frame_name`)."""

    kind = "source"
    live = False   # frames come in real time (a camera): see CaptureSource.live

    def __init__(self, name: str):
        self.name = name
        self.fps: float | None = None
        self.length: int | None = None
        self.stopped_early = False
        self.problem: str | None = None
        self.frames_read = 0

    def frame_name(self, index: int) -> str:
        """File stem for frame ``index`` (``00000`` … unless the source has its own names)."""
        return f"{index:05d}"

    def position(self, index: int) -> int:
        """The position in the source (a video's frame number, a folder's image number, from 0) of the frame
        yielded at ``index``: larger than ``index`` once a frame was skipped."""
        return index

    def first_mask(self) -> np.ndarray | None:
        """The first frame's annotation when the source provides one (DAVIS sequences), else None."""
        return None

    def annotation(self, name: str) -> np.ndarray | None:
        """The annotation of the frame named ``name`` when the source has one (DAVIS sequences), else None."""
        return None

    @property
    def first_frame_skipped(self) -> bool:
        """The source's first frame could not be read, so the first frame yielded is a later one (a mask
        given for the first frame does not belong to it)."""
        return False

    def __iter__(self) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""

    def _stop(self, problem: str) -> None:
        self.stopped_early = True
        self.problem = problem


def shown_url(url: str) -> str:
    """``url`` as it may be shown: a password in it (``rtsp://user:secret@camera/stream``) replaced by ``***``."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    except ValueError:   # a netloc urlsplit cannot take (a bad port): shown without what precedes its last @
        scheme, _, rest = url.partition("://")
        netloc, slash, path = rest.partition("/")
        return f"{scheme}://***@{netloc.rpartition('@')[2]}{slash}{path}" if "@" in netloc else url


def check_stream_timeout(seconds, flag: str = "--stream-timeout") -> float:
    """``seconds`` as a stream timeout: a finite number > 0, else a UserError naming ``flag``."""
    if not (is_number(seconds) and 0 < seconds < math.inf):
        raise UserError(f"{flag}: expected a finite number of seconds > 0, got {seconds}")
    return float(seconds)


class CaptureSource(FrameSource):
    """Camera index, video file or stream URL, read with ``cv2.VideoCapture``. A stream's name (in messages, and
    on `vosrt live`'s page for every viewer) is its URL without the password (:func:`shown_url`).

    A stream URL that sends nothing is given up after ``stream_timeout`` seconds, when opening it and when waiting
    for its next frame (it then ends as a dropped stream does, which a live source reopens), where OpenCV's FFmpeg
    backend reads it (pip's OpenCV does); OpenCV's own wait was 30 s."""

    def __init__(self, target: int | str, kind: str, flag: str = "--source", stream_timeout: float = STREAM_TIMEOUT):
        super().__init__(shown_url(target) if kind == "stream" else str(target))
        self.kind = kind
        self.stream_timeout = check_stream_timeout(stream_timeout, "stream_timeout") if kind == "stream" else None
        started = time.monotonic()
        if self.stream_timeout is not None and cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
            ms = max(1, round(self.stream_timeout * 1000))
            self.capture = cv2.VideoCapture(target, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            self.capture = cv2.VideoCapture(target)
        if not self.capture.isOpened():
            self.capture.release()
            what = f"{'video file' if kind == 'video' else kind} {self.name}"
            hint = {"camera": "check the index (0 is the first camera) and that no other program holds it",
                    "video": "check the file exists and is a video OpenCV can decode",
                    "stream": "check the URL and that the stream is reachable"}[kind]
            if self.stream_timeout is not None and time.monotonic() - started >= 0.9 * self.stream_timeout:
                hint = (f"nothing arrived within {self.stream_timeout:g} s; {hint}, or give a slow one more time "
                        f"with --stream-timeout {max(30, 3 * self.stream_timeout):g}")
            raise UserError(f"{flag}: cannot open {what}: {hint}")
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        # beyond MAX_SOURCE_FPS it is no frame rate but a clock (an RTSP stream's 90 kHz): unknown, as 0 is
        self.fps = float(fps) if fps and 0 < fps <= MAX_SOURCE_FPS and np.isfinite(fps) else None
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        # a file knows its length; a camera or a stream URL has no natural end (a file served over HTTP
        # that ends counts as a dropped stream too: that is how a live source tells it to reconnect)
        self.length = count if kind == "video" and count > 0 else None
        # frames arrive in real time, whether read or not (a camera, a live stream; not a file served over HTTP,
        # which has a frame count): a reader slower than the source falls ever further behind it
        self.live = kind == "camera" or (kind == "stream" and count <= 0)
        self.frame_count = count if count > 0 else None   # the frames a file says it holds, a URL's too
        # positions of frames that could not be decoded (skipped; only a file's, so a camera adds none). A
        # frame's position is its index plus the skips before it: no record per frame, which a camera
        # streaming for days would grow without end.
        self.skipped: list[int] = []

    def _position(self, index: int) -> int:
        position = index
        for skipped in self.skipped:          # ascending
            if skipped > position:
                break
            position += 1
        return position

    def frame_name(self, index: int) -> str:
        # named by the position in the source, so a skipped frame does not shift the names after it
        return f"{self._position(index):05d}" if index < self.frames_read else super().frame_name(index)

    def position(self, index: int) -> int:
        return self._position(index) if index < self.frames_read else index

    @property
    def first_frame_skipped(self) -> bool:
        return self.frames_read > 0 and bool(self.skipped) and self.skipped[0] == 0

    def __iter__(self) -> Iterator[np.ndarray]:
        # Positions that failed since the last frame decoded: skipped frames once a later frame decodes, but the
        # end of a file cut short when none does (no frame is missing there: the file ends)
        position, failed = 0, []
        while True:
            asked = time.monotonic()
            try:
                ok, frame = self.capture.read()
            except cv2.error as err:
                ok, frame = False, None
                self._stop(f"read failed: {err}")
            if (not ok and self.stream_timeout is not None and not self.stopped_early
                    and time.monotonic() - asked >= 0.9 * self.stream_timeout):
                self._stop(f"stream {self.name} sent no frame for {self.stream_timeout:g} s after {self.frames_read} "
                           f"frames (--stream-timeout)")
            if ok and frame is not None and min(frame.shape[:2]) < MIN_FRAME_SIDE:
                ok = False
            if not ok or frame is None:
                # A camera or stream has no natural end; a file ends early if it promised more frames. One
                # frame that cannot be decoded is skipped (a warning), not the end of a file that has more.
                more = self.length is not None and position + 1 < self.length
                if more and not self.stopped_early and len(failed) < MAX_FAILED_READS:
                    failed.append(position)
                    position += 1
                    continue
                position -= len(failed)   # where the readable part of the file ends
                if self.length is not None:
                    ended_early = position < self.length
                else:
                    ended_early = self.kind != "video"   # a file of unknown length ends where it ends
                if ended_early and not self.stopped_early:
                    of = f" of {self.length}" if self.length is not None else ""
                    self._stop(f"{self.kind} {self.name} stopped after {self.frames_read} frames{of}")
                break
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            for skipped in failed:
                print(f"warning: cannot decode frame {skipped} of {self.name}; frame skipped",
                      file=sys.stderr, flush=True)
            self.skipped += failed
            failed = []
            self.frames_read += 1
            position += 1
            yield frame
        self.close()

    def close(self) -> None:
        self.capture.release()


class ImageFolderSource(FrameSource):
    """Every image in a folder (hidden ones left out), in natural name order; frame names are the files' stems."""

    kind = "folder"

    def __init__(self, folder: Path, flag: str = "--source"):
        super().__init__(named_path(folder).name)   # `.` named by its folder
        self.folder = folder
        # in natural order: frame2 before frame10 (zero-padded names, as DAVIS's, sort the same either way).
        # Hidden files are no frames (macOS's ._00000.jpg AppleDouble files, a viewer's .thumb.png), nor are
        # folders named like images; a broken link is kept, and skipped with a warning as any unreadable image.
        self.files = sorted(frame_files(folder), key=natural_key)
        if not self.files:
            raise UserError(f"{flag}: folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                            + _sequence_folders_hint(folder, flag))
        self.length = len(self.files)
        self.skipped: list[Path] = []   # unreadable images, left out of the stream
        self.truncated: list[Path] = []  # JPEGs cut short, decoded as far as they go (kept in the stream)
        self._damaged: set[int] = set()  # and the indices they were yielded at
        self._names: list[str] = []     # output names of the frames yielded, in order
        self._positions: list[int] = []  # and their images' positions in self.files
        stems = Counter(p.stem for p in self.files)
        # two images of one stem (00000.png and 00000.jpg) keep their extension in the name, or one output
        # would overwrite the other
        self._name_of = {p: p.stem if stems[p.stem] == 1 else p.name for p in self.files}

    def frame_name(self, index: int) -> str:
        return self._names[index] if index < len(self._names) else super().frame_name(index)

    def position(self, index: int) -> int:
        return self._positions[index] if index < len(self._positions) else index

    def damaged(self, index: int) -> bool:
        """Whether the frame yielded at ``index`` is known to be damaged (a JPEG cut short, its bottom grey):
        :func:`vosrt.sdk.streaming.stream` segments it but keeps it out of a tracker's memory."""
        return index in self._damaged

    @property
    def all_names(self) -> list[str]:
        """The output names of all the folder's images in order, the unreadable ones included (a results
        file with one slot per frame of the video keeps theirs)."""
        return [self._name_of[p] for p in self.files]

    @property
    def first_frame_skipped(self) -> bool:
        return bool(self.skipped) and self.skipped[0] == self.files[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        # One corrupt (or degenerate) image is skipped with a warning on stderr, not the end of the run:
        # the frames after it are as good as before.
        for number, path in enumerate(self.files):
            frame, problem = read_image(path)
            if frame is not None and min(frame.shape[:2]) < MIN_FRAME_SIDE:
                problem = f"image of {frame.shape[1]}x{frame.shape[0]} pixels is too small"
            if problem:
                self.skipped.append(path)
                print(f"warning: {problem}: {path}; frame skipped", file=sys.stderr, flush=True)
                continue
            if path.suffix.lower() in (".jpg", ".jpeg") and _jpeg_cut_short(path):
                # libjpeg decodes what there is and fills the rest grey, saying only "Premature end of JPEG file"
                print(f"warning: {path}: its JPEG data ends early (a truncated file?), so the bottom of the image is "
                      "missing; its result is suspect", file=sys.stderr, flush=True)
                self.truncated.append(path)
                self._damaged.add(len(self._names))
            self.frames_read += 1
            self._names.append(self._name_of[path])
            self._positions.append(number)
            yield frame


class DavisSequenceSource(ImageFolderSource):
    """A DAVIS sequence: ``ROOT/JPEGImages/RES/NAME`` (or ``ROOT`` with ``--sequence``-style name given as
    ``ROOT/JPEGImages/RES/NAME``); its first annotation ``ROOT/Annotations/RES/NAME/<first>.png`` is
    offered as :meth:`first_mask`."""

    kind = "davis"

    def __init__(self, folder: Path, flag: str = "--source"):
        super().__init__(folder, flag)
        where = named_path(folder)
        root, resolution = where.parent.parent.parent, where.parent.name
        self.annotations = root / "Annotations" / resolution / where.name

    def first_mask(self) -> np.ndarray | None:
        return self.annotation(self.files[0].stem)

    def annotation(self, name: str) -> np.ndarray | None:
        for path in (self.annotations / f"{name}.png", self.annotations / f"{name}.PNG"):   # either case
            if path.is_file():
                return read_label_png(path)
        return None


def _jpeg_cut_short(path: Path) -> bool:
    """Whether ``path`` is a JPEG with no end-of-image marker after its first scan: a file cut short (0xFFD9
    occurs nowhere in scan data: entropy-coded 0xFF bytes are followed by 0x00 or a restart marker). OpenCV's
    imread decodes such a file as far as it goes and fills the rest grey. The first scan is found by walking the
    marker segments before it, so that neither an EXIF thumbnail (a whole JPEG inside a segment) nor data
    appended after the end marker (a phone's Motion Photo video, a camera's trailer) is taken for the image."""
    try:
        raw = path.read_bytes()
    except OSError:
        return False
    if raw[:2] != b"\xff\xd8":
        return False
    position = 2
    while position + 4 <= len(raw) and raw[position] == 0xFF:
        marker = raw[position + 1]
        if marker == 0xFF:                                       # fill byte before a marker
            position += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:           # markers without a length
            position += 2
        elif marker == 0xDA:                                     # the first scan
            return raw.find(b"\xff\xd9", position) < 0
        elif marker == 0xD9:                                     # the end, before any scan: nothing to decode
            return False
        else:
            position += 2 + int.from_bytes(raw[position + 2:position + 4], "big")
    return position + 4 > len(raw)   # the headers end with the file: cut short before the scan


def is_davis_sequence(folder: Path) -> bool:
    """True for ``.../JPEGImages/<resolution>/<name>`` folders, however given (``bear`` from within
    ``JPEGImages/480p``, ``.`` from within the sequence)."""
    return named_path(folder).parent.parent.name == "JPEGImages"


def named_path(path: str | Path) -> Path:
    """``path`` absolute, ``.`` and ``..`` taken out, links kept (so ``.`` and ``../bear`` have their folders' names,
    and a linked sequence folder its own place in a dataset)."""
    return Path(os.path.abspath(path))


def _sequence_folders_hint(folder: Path, flag: str) -> str:
    """For a folder without images whose subfolders hold them (a dataset's ``JPEGImages/`` of YouTube-VIS,
    KITTI-MOTS's ``image_02/``): what to give instead, one sequence folder, or a loop over them."""
    import shlex

    try:
        subfolders = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
        sequences = [p for p in subfolders
                     if any(frame_files(p))]
    except OSError:
        return ""
    if not sequences:
        return ""
    names = ", ".join(p.name for p in sequences[:3]) + (", ..." if len(sequences) > 3 else "")
    return (f"; its {len(sequences)} subfolder(s) with images ({names}) look like sequences: give one sequence's "
            f"folder, e.g. {flag} {shlex.quote(str(sequences[0]))}" + (", one run each" if len(sequences) > 1 else ""))


def open_source(spec, flag: str = "--source", stream_timeout: float = STREAM_TIMEOUT) -> FrameSource:
    """A source from a CLI-style spec: an int or digit string (camera index), a camera's device path
    (``/dev/video0``), a URL (``rtsp://``, ``http://`` …), a video file or named pipe, an image folder, or a
    DAVIS sequence folder (``.../JPEGImages/480p/NAME``, or a DAVIS root holding exactly one sequence). ``flag``: the command-line flag the spec came from, which
    the errors name. A digit string that names an existing file or folder is that path, not a camera: a
    sequence folder named by its number (KITTI-MOTS's ``0002``) given from its parent folder. ``stream_timeout``: the
    seconds a URL may take to open or to send its next frame (:class:`CaptureSource`)."""
    if isinstance(spec, (int, np.integer)) or (isinstance(spec, str) and spec.strip().isdecimal()
                                               and not Path(spec).exists()):
        return CaptureSource(int(spec), "camera", flag)
    text = str(spec)
    if not text.strip():
        raise UserError(f"{flag}: empty; give a camera index, URL, video file or folder")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):
        return CaptureSource(text, "stream", flag, stream_timeout)
    path = Path(text)
    if path.is_dir():
        if is_davis_sequence(path):
            return DavisSequenceSource(path, flag)
        sequences = sorted((path / "JPEGImages").glob("*/*")) if (path / "JPEGImages").is_dir() else []
        # hidden folders are no sequences (a notebook's .ipynb_checkpoints, as hidden files are no frames)
        sequences = [s for s in sequences if s.is_dir() and not s.name.startswith(".")
                     and not s.parent.name.startswith(".")]
        if len(sequences) == 1:
            return DavisSequenceSource(sequences[0], flag)
        if len(sequences) > 1:
            names = ", ".join(s.name for s in sequences[:5])
            raise UserError(f"{flag}: {path} is a DAVIS root with {len(sequences)} sequences ({names}…); "
                            f"give one sequence folder, e.g. {sequences[0]}")
        return ImageFolderSource(path, flag)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise UserError(f"{flag}: {path} is a single image; give the folder of frames instead")
        return CaptureSource(text, "video", flag)
    if path.is_char_device():   # a camera by its device path (/dev/video0)
        return CaptureSource(text, "camera", flag)
    if path.is_fifo():          # a named pipe another program writes a video into, read as it comes
        return CaptureSource(text, "video", flag)
    raise UserError(f"{flag}: {text} is not a camera index, URL, video file or folder that exists")


# ---------------------------------------------------------------------------------------------- sinks


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A BGR frame with each object's colour blended in (``alpha``) and background left as is: the DAVIS
    palette for ids up to 255, a fixed colour per id beyond (:func:`vosrt.sdk.masks.label_colours`).
    ``frame`` is uint8, or float in 0..1 as sessions take it; the result is uint8 (what video writers take)."""
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    out = frame.copy()
    alpha = float(alpha)
    # the object pixels' flat positions, found once (a boolean mask indexed three times took 3.4 ms at 480p)
    flat = np.flatnonzero(labels > 0)
    ids = labels.reshape(-1).take(flat).astype(np.intp)
    if ids.size and int(ids.max()) > 255:
        colours = label_colours(ids)[:, ::-1].astype(np.float32) * np.float32(alpha)     # RGB -> BGR
    else:   # the palette's BGR colours times alpha, made once per alpha
        colours = _palette_times(alpha).take(ids, axis=0)
    blend = frame.reshape(-1, 3).take(flat, axis=0).astype(np.float32)
    blend *= np.float32(1 - alpha)
    blend += colours
    np.clip(blend, 0, 255, out=blend)
    out.reshape(-1, 3)[flat] = blend.astype(np.uint8)
    return out


@functools.lru_cache(maxsize=8)
def _palette_times(alpha: float) -> np.ndarray:
    """The DAVIS palette in BGR, float32, times ``alpha`` (the overlay's colour term)."""
    from vosrt.sdk.masks import davis_palette

    return davis_palette()[:, ::-1].astype(np.float32) * np.float32(alpha)


class PngSink:
    """Writes each label map as a DAVIS palette PNG ``OUT/<frame name>.png``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._created = not self.folder.exists()   # removed again by discard() when no PNG went into it
        writable_folder(self.folder, "--out", "a folder you can write for the PNGs (created if missing)")
        self.written = 0

    def __call__(self, index: int, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
        # Written aside, then renamed: a run stopped mid-write (Ctrl-C, SIGTERM) leaves no truncated PNG. The file
        # aside is a new one (mkstemp): at a fixed name, a link planted there in a shared folder was written through.
        target = self.folder / f"{name}.png"
        partial = None
        try:
            partial = stage_file(target, lambda tmp: write_label_png(tmp, labels), sync=False)   # one per frame
            os.replace(partial, target)
        except BaseException as err:  # a stop between the write and the rename leaves nothing half done either
            if partial is not None:
                partial.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise UserError(f"--out: cannot write {self.folder / (name + '.png')}: {err.strerror or err} "
                                f"({self.written} PNGs written before it)") from None
            raise
        self.written += 1

    def close(self) -> None:
        """Nothing to finish (each PNG is complete when written)."""

    def discard(self) -> None:
        """Remove the folder again if this sink created it and wrote nothing into it (a run that read no frame)."""
        if self._created and self.written == 0:
            try:
                self.folder.rmdir()   # only an empty folder: anything else put there meanwhile is kept
            except OSError:
                pass


class OverlayVideoSink:
    """Writes frames with the labels blended in to a video file (``mp4v`` for .mp4, ``MJPG`` for .avi). Both
    codecs take even sizes: an odd side gets one more row or column, a copy of its last.

    ``color``: the channel order of the frames it gets, as the session's ``color`` (``"bgr"``: OpenCV's;
    ``"rgb"``: PIL's and imageio's), so that the video shows them in their own colours."""

    def __init__(self, path: str | Path, fps: float | None = None, alpha: float = 0.5, color: str = "bgr"):
        self.color = check_color(color)
        self.path = Path(path)
        if fps is not None and (not is_number(fps) or not np.isfinite(fps) or fps < 0):
            # OpenCV's writer only said it "cannot write" the file at the first frame, blaming the file name
            raise UserError(f"--video: fps: expected a positive number of frames per second (None or 0: 15), "
                            f"got {fps!r}")
        self.fps = float(fps or 15.0)
        if self.path.suffix.lower() == ".mp4" and self.fps > MAX_MP4_FPS:
            # an .mp4's time base is 1/fps with a denominator of at most 65535 (a stream that reports its 90 kHz
            # clock as its frame rate gives 90000)
            raise UserError(f"--video: {self.path}: an .mp4 takes at most {MAX_MP4_FPS} frames per second, got "
                            f"fps={self.fps:g}; give a lower fps, or write an .avi")
        if not is_number(alpha) or not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha: expected the opacity of the object colours, a number in 0..1, got {alpha!r}")
        self.alpha = float(alpha)
        self.writer = None
        self.written = 0
        if self.path.suffix.lower() not in (".mp4", ".avi"):
            raise UserError(f"--video: {self.path}: give a .mp4 or .avi file name")
        if self.path.is_dir():
            raise UserError(f"--video: {self.path} is a folder; give a .mp4 or .avi file name")
        if self.path.is_symlink():   # replaced, as vosrt's other outputs replace theirs: the writer wrote through it
            self.path.unlink()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            existed = self.path.exists()
            with open(self.path, "ab"):   # can it be written? (OpenCV would only say it failed, later)
                pass
            if not existed:
                self.path.unlink()
        except OSError as err:
            # a file where a folder of the path should be: mkdir said only "File exists", of a path that did not
            blocking = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
            why = f"{blocking} is a file, not a folder" if blocking is not None else (err.strerror or err)
            raise UserError(f"--video: cannot write {self.path}: {why}; give a .mp4 or .avi file in a folder you can "
                            "write") from None

    def __call__(self, index: int, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
        if self.color == "rgb":
            frame = np.ascontiguousarray(frame[:, :, ::-1])
        if self.writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"))
            # both codecs keep even sizes only: OpenCV's writer cut an odd frame's last row or column off, so
            # an odd side gets one more, a copy of its last (the video keeps every pixel of the frames)
            height, width = frame.shape[0] + frame.shape[0] % 2, frame.shape[1] + frame.shape[1] % 2
            self.writer = cv2.VideoWriter(str(self.path), fourcc, float(self.fps), (width, height))
            if not self.writer.isOpened():
                self.writer = None
                if not self.path.parent.is_dir():   # made when the sink was, and gone since: said as such
                    raise UserError(f"--video: {self.path}: {self._folder_gone()}")
                raise UserError(f"--video: OpenCV cannot open a writer for {self.path} at {self.fps:g} FPS with "
                                f"{frame.shape[1]}x{frame.shape[0]} frames")
            self.size = frame.shape[:2]
        if frame.shape[:2] != self.size:  # a video has one size; later frames of another size are fitted
            frame = cv2.resize(frame, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA)
            wide = labels.dtype not in (np.uint8, np.uint16)   # OpenCV resizes 8/16-bit and int32 maps
            resized = cv2.resize(labels.astype(np.int32) if wide else labels, (self.size[1], self.size[0]),
                                 interpolation=cv2.INTER_NEAREST_EXACT)   # pixel centres, as INTER_AREA
            labels = resized.astype(labels.dtype) if wide else resized
        shown = overlay(frame, labels, self.alpha)
        if self.size[0] % 2 or self.size[1] % 2:
            shown = cv2.copyMakeBorder(shown, 0, self.size[0] % 2, 0, self.size[1] % 2, cv2.BORDER_REPLICATE)
        self._check_space(shown.nbytes)
        self.writer.write(shown)
        self.written += 1

    def _check_space(self, frame_bytes: int) -> None:
        """UserError, the video kept playable with its frames so far, where the disk has too little room left
        for a few more frames (an encoded frame is at most about its raw size) and the file's index: OpenCV's
        writer went on as its writes failed, and the file it left held no frame."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            return   # the folder is gone: said by close(), which finds the frames missing
        if free < VIDEO_FREE_MARGIN + 4 * frame_bytes:
            raise UserError(f"--video: {self.path}: the disk is nearly full ({free / 2**20:.1f} MiB free in "
                            f"{self.path.parent}), so the video stops at its {self.written} frames written so far; "
                            f"free some space, or write the video to another disk")

    def _folder_gone(self) -> str:
        folder = self.path.parent
        what = "was removed" if not folder.exists() else "was replaced by a file"
        return f"its folder {folder} {what} while the video was written (keep the folder while it records)"

    def close(self) -> None:
        """Finish the file (required for it to be readable), then check that it holds every frame written:
        OpenCV's writer only warns when a write fails (a full disk, a file size limit), and the file it
        leaves then has no index, or a short one."""
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        capture = cv2.VideoCapture(str(self.path))
        try:
            held = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
        finally:
            capture.release()
        # (one more than counted: a stop signal landed between a frame's write and its count)
        if held < self.written:
            if not self.path.parent.is_dir():   # not a full disk: said as what happened
                raise UserError(f"--video: {self.path}: {self._folder_gone()}, so its {self.written} frames are lost")
            raise UserError(f"--video: {self.path} is incomplete: {self.written} frames were written but the file "
                            f"holds {max(held, 0)} (a full disk or a file size limit?); free space and run again")


class ProcessedRateVideoSink:
    """An overlay video (:class:`OverlayVideoSink`) at the rate frames are *processed*, for a source that
    drops the frames captured while the model is busy (a camera, a live stream): at the source's own rate
    the video would play too fast. The first ``warmup`` frames (or more, see below) are held until that rate is
    known: ``rate()`` where given (frames processed per second), else measured from when this sink got them.
    ``fixed``: a known rate (every frame is processed), at which nothing is held.

    A clip family finishes its frames in bursts, one clip's hop at a time, so the measured window runs from the
    first frame to the start of a later burst: the frames of every burst in it, over the time they took. (Up to the
    last frame held, the rate of bursts of 5 taken over 3 bursts counted 14 frames in the time of 10: 1.4x.) A burst
    starts with a gap of at least half the longest gap so far; a frame-by-frame tracker starts one at almost every
    frame. Without such a gap within ``4 * warmup`` frames, or at the end, the rate is from the frames held."""

    def __init__(self, path: str | Path, rate: Callable[[], float] | None = None, fixed: float | None = None,
                 warmup: int = 15):
        self.sink = OverlayVideoSink(path, fps=fixed)
        self.path = self.sink.path
        self.rate = rate
        self.held: list | None = None if fixed else []
        self.warmup = warmup
        self._first = self._last = 0.0    # when the first and the latest held frame came
        self._longest_gap = 0.0

    @property
    def written(self) -> int:
        return self.sink.written + len(self.held or [])

    def __call__(self, index: int, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
        if self.held is None:
            self.sink(index, name, frame, labels)
            return
        now = time.perf_counter()
        if self.rate is None and self.held:
            gap = now - self._last
            if len(self.held) >= self.warmup and gap >= 0.5 * self._longest_gap:
                self._release(burst_start=now)     # this frame starts a burst: the held ones are whole bursts
                self.sink(index, name, frame, labels)
                return
            self._longest_gap = max(self._longest_gap, gap)
        if not self.held:
            self._first = now
        self._last = now
        self.held.append((index, name, frame, labels))
        if len(self.held) >= (self.warmup if self.rate is not None else 4 * self.warmup):
            self._release()

    def _measured_rate(self, burst_start: float | None) -> float:
        if self.rate is not None:
            return self.rate()
        first, last, count = self._first, self._last, len(self.held)
        if burst_start is not None and burst_start > first:
            return count / (burst_start - first)
        return (count - 1) / (last - first) if last > first else 0.0

    def _release(self, burst_start: float | None = None) -> None:
        measured = self._measured_rate(burst_start)
        self.sink.fps = round(measured, 2) if measured > 0 else self.sink.fps
        held, self.held = self.held, None
        for item in held:
            self.sink(*item)

    def close(self) -> None:
        """Write what is held (at the rate measured so far), then finish the file (:meth:`OverlayVideoSink.close`)."""
        if self.held:
            self._release()
        self.sink.close()


def overlay_video_for(path: str | Path, source: FrameSource):
    """The overlay video of ``source`` (as opened): at the source's own rate, or, for a live source, whose frames
    captured while the model is busy are dropped, at the rate frames are processed (:class:`ProcessedRateVideoSink`:
    at the source's rate that video would play too fast)."""
    return ProcessedRateVideoSink(path) if source.live else OverlayVideoSink(path, fps=source.fps)


class CallbackSink:
    """Calls ``callback(index, frame, labels)`` for every finished frame."""

    def __init__(self, callback: Callable[[int, np.ndarray, np.ndarray], None]):
        self.callback = callback

    def __call__(self, index: int, name: str, frame: np.ndarray, labels: np.ndarray) -> None:
        self.callback(index, frame, labels)

    def close(self) -> None:
        """Nothing to finish."""
