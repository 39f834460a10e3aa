"""`vosrt run` on awkward inputs and outputs, with the shipped stcn-lite: frames out of text order, bad frames
in the middle (skipped, the rest kept), a corrupt mask, objects annotated on later frames, outputs that
would overwrite the source, a source that yields nothing."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vosrt.cli import main
from vosrt.sdk.errors import UserError
from vosrt.sdk.masks import read_label_png, write_label_png
from vosrt.sdk.video import ImageFolderSource, open_source

from live_support import frame_counter, http_camera, mjpeg_camera, silent_server
from media import reported_rate

PACKAGE = str(Path(__file__).resolve().parents[1] / "sdk" / "models" / "stcn-lite")
H, W = 64, 96


def _frame(t: int) -> np.ndarray:
    frame = np.full((H, W, 3), 30, np.uint8)
    cv2.circle(frame, (12 + 5 * t, 32), 9, (0, 0, 230), -1)
    return frame


def _mask(t: int = 0) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    cv2.circle(mask, (12 + 5 * t, 32), 9, 1, -1)
    return mask


def _frames_and_mask(root: Path, frames: int) -> Path:
    """root/frames/00000.png … and root/mask.png (the first frame's); returns the folder of frames."""
    folder = root / "frames"
    folder.mkdir()
    for t in range(frames):
        cv2.imwrite(str(folder / f"{t:05d}.png"), _frame(t))
    write_label_png(root / "mask.png", _mask())
    return folder


def _davis_sequence(root: Path, frames: list[np.ndarray], annotations: dict[int, np.ndarray]) -> Path:
    """root/JPEGImages/480p/seq/00000.jpg … with root/Annotations/480p/seq/<t>.png for each ``annotations`` entry;
    returns the sequence's image folder."""
    images = root / "JPEGImages" / "480p" / "seq"
    labels = root / "Annotations" / "480p" / "seq"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for t, frame in enumerate(frames):
        cv2.imwrite(str(images / f"{t:05d}.jpg"), frame)
    for t, annotation in annotations.items():
        write_label_png(labels / f"{t:05d}.png", annotation)
    return images


def test_a_folder_is_read_in_natural_order_and_a_stem_shared_by_two_images_keeps_both(tmp_path):
    for t in range(12):
        cv2.imwrite(str(tmp_path / f"frame{t}.png"), _frame(t))
    cv2.imwrite(str(tmp_path / "frame3.jpg"), _frame(3))
    source = ImageFolderSource(tmp_path)
    names = [source.frame_name(i) for i, _ in enumerate(source)]
    assert names == [f"frame{t}" for t in range(3)] + ["frame3.jpg", "frame3.png"] + [f"frame{t}" for t in range(4, 12)]


def test_undecodable_and_too_small_images_are_skipped_and_the_rest_is_tracked(tmp_path, capsys):
    folder = _frames_and_mask(tmp_path, 8)
    (folder / "00003.png").write_bytes(b"not an image")
    cv2.imwrite(str(folder / "00005.png"), np.zeros((1, 1, 3), np.uint8))
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "mask.png"), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "00003.png; frame skipped" in err and "1x1 pixels is too small" in err
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == ["00000", "00001", "00002", "00004", "00006",
                                                                         "00007"]
    assert (read_label_png(tmp_path / "out" / "00007.png") == 1).sum() > 100    # still tracked after them


def test_an_image_declaring_more_pixels_than_any_frame_is_skipped_undecoded(tmp_path, capsys):
    # a 93 kB PNG of 12000x8000 was decoded (0.6 GB of memory for it and its copy), a 250 kB one of 16000x16000 took
    # 1.5 GB: OpenCV decodes up to 2^30 pixels (3.2 GB)
    from media import zero_png
    from vosrt.sdk.video import load_image

    folder = _frames_and_mask(tmp_path, 6)
    zero_png(folder / "00002.png", 12000, 8000)                # above PIL's limit, which it only warns of
    zero_png(folder / "00004.png", 16000, 16000)               # above twice the limit, which PIL refuses
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "mask.png"), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    for name, pixels in (("00002", "12000x8000"), ("00004", "256,000,000")):
        assert f"warning: image of {pixels} pixels is larger than the 89,478,485 pixels an image may have" in err, err
        assert f"{name}.png; frame skipped" in err
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == ["00000", "00001", "00003", "00005"]
    with pytest.raises(UserError, match=r"^cannot read frame .*00002.png: image of 12000x8000 pixels is larger"):
        load_image(folder / "00002.png", "frame")     # a dataset's frame (training)
    with pytest.raises(UserError, match=r"^cannot read image .*00003.png$"):
        (folder / "00003.png").write_bytes(b"not an image")
        load_image(folder / "00003.png")


def test_a_file_pil_does_not_recognise_is_not_handed_to_opencv(tmp_path):
    # a 5.7 MB Radiance HDR named .png, declaring 10000x9000: PIL does not know the format, so its size went
    # unchecked and OpenCV, which decodes by content, decoded it (1.3 GB)
    from vosrt.sdk.video import read_image

    channel = bytes([128 + 127, 0]) * 78 + bytes([128 + 94, 0])          # 10000 zeros, run-length coded
    scanline = bytes([2, 2, 10000 >> 8, 10000 & 0xFF]) + channel * 4
    path = tmp_path / "big.png"
    path.write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 9000 +X 10000\n" + scanline * 9000)
    assert read_image(path) == (None, "cannot read image")      # OpenCV decoded it to 9000x10000x3 before


def _video_with_an_undecodable_frame(path: Path, bad: int = 3, frames: int = 12) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for t in range(frames):
        writer.write(_frame(t))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]    # each frame's JPEG
    start, end = starts[bad], starts[bad + 1] - 8                                       # up to the next chunk
    data[start:end] = np.random.default_rng(1).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_an_undecodable_video_frame_is_skipped_and_the_frames_after_it_keep_their_names(tmp_path, capsys):
    video = tmp_path / "clip.avi"
    _video_with_an_undecodable_frame(video)
    write_label_png(tmp_path / "mask.png", _mask())
    assert main(["run", PACKAGE, "--source", str(video), "--mask", str(tmp_path / "mask.png"), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 0
    assert "cannot decode frame 3" in capsys.readouterr().err
    assert sorted(p.stem for p in (tmp_path / "out").glob("*.png")) == [f"{t:05d}" for t in range(12) if t != 3]


def test_a_mask_for_a_first_frame_that_cannot_be_read_is_refused(tmp_path, capsys):
    folder = _frames_and_mask(tmp_path, 4)
    (folder / "00000.png").write_bytes(b"broken")
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "mask.png"), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 2
    assert "first frame cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, b"plain text"], ids=["truncated", "text"])
def test_a_corrupt_mask_file_is_a_one_line_error(tmp_path, capsys, content):
    cv2.imwrite(str(tmp_path / "00000.png"), _frame(0))
    (tmp_path / "mask.png").write_bytes(content)
    assert main(["run", PACKAGE, "--source", str(tmp_path), "--mask", str(tmp_path / "mask.png")]) == 2
    err = capsys.readouterr().err
    assert "cannot read it as a PNG" in err and "Traceback" not in err


def test_a_mask_with_ids_beyond_255_names_the_flag_and_what_stcn_takes(tmp_path, capsys):
    # A KITTI-MOTS instance PNG (class * 1000 + instance, 10000 ignore) as the first-frame mask of a --mots run
    # stopped with "mask: object ids must be in 0..255 (0 = background), got 0..10000": no flag, no file, no
    # way on.
    folder = _frames_and_mask(tmp_path, 3)
    ids = _mask().astype(np.uint16) * 2001
    ids[-4:, -4:] = 10000
    write_label_png(tmp_path / "instances.png", ids)
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "instances.png"),
                 "--mots", str(tmp_path / "0002.txt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--mask {tmp_path / 'instances.png'}: object ids 2001, 10000" in err, err
    assert "1..255" in err and "KITTI-MOTS" in err and "--mots-class" in err and "Traceback" not in err
    assert not (tmp_path / "0002.txt").exists()


def test_objects_first_annotated_on_a_later_frame_of_a_davis_sequence_are_tracked_from_there(tmp_path, capsys):
    frames = [cv2.rectangle(_frame(t), (70, 5), (90, 20), (0, 220, 0), -1)   # object 2, annotated from frame 3 on
              for t in range(6)]
    later = _mask(3)
    later[5:21, 70:91] = 2
    images = _davis_sequence(tmp_path, frames, {0: _mask(0), 3: later})
    assert main(["run", PACKAGE, "--source", str(images), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "object(s) 2 first annotated on frame 00003" in capsys.readouterr().err
    labels = {t: read_label_png(tmp_path / "out" / f"{t:05d}.png") for t in range(6)}
    assert not (labels[2] == 2).any() and (labels[5] == 2).sum() > 100


@pytest.mark.parametrize("first", ["empty", "absent"])
def test_a_davis_sequence_whose_objects_are_all_first_annotated_later_is_tracked_from_there(tmp_path, capsys, first):
    # Its first annotation empty (or absent), the run stopped with "mask: no object in it ...; or call step(image)
    # without a mask" (absent: "give --mask PNG or a DAVIS sequence folder with its annotations", which it was);
    # the module docstring says objects first annotated on a later frame are tracked from that frame.
    annotations = {0: np.zeros((H, W), np.uint8)} if first == "empty" else {}
    images = _davis_sequence(tmp_path, [_frame(t) for t in range(6)], {**annotations, 2: _mask(2)})
    assert main(["run", PACKAGE, "--source", str(images), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "object(s) 1 first annotated on frame 00002" in capsys.readouterr().err
    labels = {t: read_label_png(tmp_path / "out" / f"{t:05d}.png") for t in range(6)}
    assert not labels[0].any() and not labels[1].any() and (labels[5] == 1).sum() > 100


def test_out_into_the_ground_truth_of_the_davis_sequence_being_read_is_refused(tmp_path, capsys):
    # the run replaced the annotations it was reading (a note: "already holds 8 PNG(s)"), and vosrt eval then
    # scored that folder against itself as 1.000
    images = _davis_sequence(tmp_path, [_frame(t) for t in range(4)], {t: _mask(t) for t in range(4)})
    truth = tmp_path / "Annotations" / "480p" / "seq"
    before = {p.name: p.read_bytes() for p in truth.iterdir()}
    assert main(["run", PACKAGE, "--source", str(images), "--out", str(truth), "--no-progress"]) == 2
    assert "is the ground truth of --source" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in truth.iterdir()} == before


def test_a_davis_sequence_given_by_a_relative_path_or_as_dot_is_still_one(tmp_path, capsys, monkeypatch):
    # from within JPEGImages/480p, `--source seq` was an image folder ("stcn packages need the first frame's mask");
    # from within the sequence, `--source .` had no name, and --videos looked for a folder named ''
    import json

    _davis_sequence(tmp_path, [_frame(t) for t in range(4)], {0: _mask(0)})
    monkeypatch.chdir(tmp_path / "JPEGImages" / "480p")
    assert main(["run", PACKAGE, "--source", "seq", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    assert "source: davis seq" in capsys.readouterr().err
    videos = {"videos": [{"id": 7, "file_names": [f"seq/{t:05d}.jpg" for t in range(4)]}], "categories": []}
    (tmp_path / "valid.json").write_text(json.dumps(videos))
    monkeypatch.chdir(tmp_path / "JPEGImages" / "480p" / "seq")
    assert main(["run", PACKAGE, "--source", ".", "--vis", str(tmp_path / "results.json"), "--videos",
                 str(tmp_path / "valid.json"), "--no-progress"]) == 0
    assert "source: davis seq" in capsys.readouterr().err
    assert {r["video_id"] for r in json.loads((tmp_path / "results.json").read_text())} == {7}


def test_a_later_annotation_of_another_size_names_the_frame_and_both_sizes(tmp_path, capsys):
    # it gave the SDK's "mask: size 32x48 differs from the frame's 64x96": no source, no frame, height x width
    later = _mask(2)
    later[later > 0] = 2                                     # a new object, annotated at half size
    images = _davis_sequence(tmp_path, [_frame(t) for t in range(4)], {0: _mask(0), 2: later[::2, ::2]})
    assert main(["run", PACKAGE, "--source", str(images), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--source {images.name}: the annotation of frame 00002 is {W // 2}x{H // 2} pixels, but the frames " \
           f"are {W}x{H}" in err, err


def test_an_empty_mask_names_the_flag_and_no_sdk_call(tmp_path, capsys):
    folder = _frames_and_mask(tmp_path, 3)
    write_label_png(tmp_path / "empty.png", np.zeros((H, W), np.uint8))
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "empty.png")]) == 2
    err = capsys.readouterr().err
    assert f"--mask {tmp_path / 'empty.png'}: no object in it" in err and "step(" not in err, err


def test_a_mask_of_another_size_names_the_flag_and_both_sizes(tmp_path, capsys):
    # It said "mask: size 32x48 differs from the frame's 64x96": no flag, no file, height x width unlike the
    # width x height the other messages give.
    folder = _frames_and_mask(tmp_path, 3)
    write_label_png(tmp_path / "small.png", _mask()[::2, ::2])
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "small.png"), "--out",
                 str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--mask {tmp_path / 'small.png'}: 48x32 pixels, but the frames of --source" in err and "96x64" in err, err


def test_a_run_that_fails_before_its_first_png_leaves_no_empty_out_folder_and_keeps_one_given(tmp_path, capsys):
    # A mask of another size than the frames (found on the first frame, in the stream) left the --out folder the
    # run had made, empty; only a source without a readable frame removed it.
    folder = _frames_and_mask(tmp_path, 3)
    write_label_png(tmp_path / "small.png", _mask()[::2, ::2])
    out = tmp_path / "masks" / "run1"
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "small.png"), "--out", str(out),
                 "--video", str(tmp_path / "overlay.mp4"), "--no-progress"]) == 2
    assert "48x32 pixels" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "overlay.mp4").exists()
    # nor when an output after it is refused (a --video that cannot be written) before the stream
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "mask.png"), "--out", str(out),
                 "--video", str(tmp_path / "mask.png" / "x.mp4"), "--no-progress"]) == 2
    assert not out.exists()
    out.mkdir()                                   # a folder that was there before the run is kept
    assert main(["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "small.png"), "--out", str(out),
                 "--no-progress"]) == 2
    assert out.is_dir()


def test_outputs_that_would_overwrite_the_source_are_refused(tmp_path, capsys):
    for t in range(3):
        cv2.imwrite(str(tmp_path / f"{t:05d}.png"), _frame(t))
    write_label_png(tmp_path.parent / f"{tmp_path.name}-mask.png", _mask())
    mask = str(tmp_path.parent / f"{tmp_path.name}-mask.png")
    assert main(["run", PACKAGE, "--source", str(tmp_path), "--mask", mask, "--out", str(tmp_path)]) == 2
    assert "is the source folder" in capsys.readouterr().err
    video = tmp_path.parent / f"{tmp_path.name}.avi"
    _video_with_an_undecodable_frame(video, frames=6)
    before = video.read_bytes()
    assert main(["run", PACKAGE, "--source", str(video), "--mask", mask, "--video", str(video)]) == 2
    assert "is the source video" in capsys.readouterr().err and video.read_bytes() == before


def test_an_out_that_is_a_file_is_refused_naming_it(tmp_path, capsys):
    for t in range(3):
        cv2.imwrite(str(tmp_path / f"{t:05d}.png"), _frame(t))
    write_label_png(tmp_path.parent / f"{tmp_path.name}-mask.png", _mask())
    out = tmp_path.parent / f"{tmp_path.name}-out.txt"
    out.write_text("mine")
    assert main(["run", PACKAGE, "--source", str(tmp_path), "--mask", str(tmp_path.parent / f"{tmp_path.name}-mask.png"),
                 "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is a file, not a folder" in err and "Errno" not in err, err
    assert out.read_text() == "mine"


def test_a_source_without_a_single_readable_frame_is_an_error_and_an_empty_source_is_refused(tmp_path, capsys):
    (tmp_path / "00000.png").write_bytes(b"broken")
    (tmp_path / "00001.png").write_bytes(b"broken too")
    write_label_png(tmp_path.parent / f"{tmp_path.name}-mask.png", _mask())
    mask = str(tmp_path.parent / f"{tmp_path.name}-mask.png")
    assert main(["run", PACKAGE, "--source", str(tmp_path), "--mask", mask, "--video", str(tmp_path / "o.mp4"),
                 "--no-progress"]) == 2
    assert "no frame could be read" in capsys.readouterr().err and not (tmp_path / "o.mp4").exists()
    # "nothing was written": not even the --out folder the run made for the PNGs; one that was there stays
    out = tmp_path.parent / f"{tmp_path.name}-out"
    assert main(["run", PACKAGE, "--source", str(tmp_path), "--mask", mask, "--out", str(out / "pngs"),
                 "--no-progress"]) == 2
    assert "no frame could be read" in capsys.readouterr().err and not (out / "pngs").exists() and out.is_dir()
    assert main(["run", PACKAGE, "--source", str(tmp_path), "--mask", mask, "--out", str(out), "--no-progress"]) == 2
    assert "no frame could be read" in capsys.readouterr().err and out.is_dir()
    assert main(["run", PACKAGE, "--source", "", "--mask", mask]) == 2
    assert "--source: empty" in capsys.readouterr().err
    assert main(["run", PACKAGE, "--source", str(tmp_path), "--mask", mask, "--video", str(tmp_path / "o.mkv")]) == 2
    assert "give a .mp4 or .avi file name" in capsys.readouterr().err


_RUN_WITH_FILE_SIZE_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
from vosrt.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_an_overlay_video_cut_short_by_a_full_disk_is_an_error_and_the_pngs_are_kept(tmp_path):
    """Files stop growing at half the video's size (EFBIG, as on a full disk: Python ignores SIGXFSZ). The
    limit is set in a child process whose output goes to pipes: set in pytest's own process, it would also
    stop pytest's output where that is a file (CI's log) larger than the limit."""
    import subprocess
    import sys

    folder = _frames_and_mask(tmp_path, 10)
    args = ["run", PACKAGE, "--source", str(folder), "--mask", str(tmp_path / "mask.png"), "--no-progress"]
    assert main(args + ["--video", str(tmp_path / "whole.mp4")]) == 0
    whole = (tmp_path / "whole.mp4").stat().st_size
    run = subprocess.run([sys.executable, "-c", _RUN_WITH_FILE_SIZE_LIMIT, str(whole // 2), *args,
                          "--out", str(tmp_path / "out"), "--video", str(tmp_path / "cut.mp4")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr
    assert f"--video: {tmp_path / 'cut.mp4'} is incomplete: 10 frames were written but the file holds 0" \
        in run.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 10


def test_every_sink_and_the_source_are_closed_when_one_sink_fails_to_finish():
    from vosrt.sdk.streaming import close_all

    closed = []

    class Thing:
        def __init__(self, name, fails=False):
            self.name, self.fails = name, fails

        def close(self):
            closed.append(self.name)
            if self.fails:
                raise UserError(f"{self.name} failed")

    with pytest.raises(UserError, match="video failed"):
        close_all([Thing("png"), Thing("video", fails=True), Thing("other", fails=True), object(), Thing("source")])
    assert closed == ["png", "video", "other", "source"]


@pytest.fixture
def live_mjpeg_stream():
    """A live MJPEG stream over HTTP (live_support.mjpeg_camera) of this file's frames, sending 400 frames per
    second, faster than the model runs; frame k carries k in binary in its top row of 4x4 blocks. Yields the URL."""
    with mjpeg_camera(_frame(0)) as url:
        yield url


def test_run_on_a_live_stream_takes_the_newest_frame_and_names_each_png_by_its_capture_position(
        live_mjpeg_stream, tmp_path, capsys):
    # Live sources take the newest frame (ARCHITECTURE.md, Streaming). `vosrt run` read a camera or live stream
    # frame after frame: with the model slower than the source, each result was of an older frame than the one
    # before it (here 30 frames of 0.075 s of stream took about 0.5 s, and the lag grows by that for every second).
    write_label_png(tmp_path / "mask.png", _mask())
    assert main(["run", PACKAGE, "--source", live_mjpeg_stream, "--mask", str(tmp_path / "mask.png"), "--out",
                 str(tmp_path / "out"), "--video", str(tmp_path / "overlay.avi"), "--max-frames", "30",
                 "--no-progress"]) == 0
    names = sorted(p.stem for p in (tmp_path / "out").glob("*.png"))
    assert len(names) == 30   # the first is the first frame inference took: on a busy host, not always frame 0
    positions = [int(n) for n in names]
    assert positions[-1] > 29        # frames captured while the model was busy were dropped, not queued
    assert "frames captured from stream" in capsys.readouterr().err    # and counted
    capture = cv2.VideoCapture(str(tmp_path / "overlay.avi"))
    shown = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        shown.append(frame_counter(frame))
    capture.release()
    assert shown == positions        # each PNG is named after the frame it is the result of


def test_the_overlay_of_a_live_stream_plays_at_the_rate_its_frames_were_processed(live_mjpeg_stream, tmp_path,
                                                                                    capsys):
    # It was written at the stream's own rate while the frames captured during each step were dropped: the video
    # played as many times too fast as frames were dropped (`vosrt live` already wrote its recordings at the rate
    # frames were processed; `vosrt run` now writes its --video the same way).
    import re

    write_label_png(tmp_path / "mask.png", _mask())
    assert main(["run", PACKAGE, "--source", live_mjpeg_stream, "--mask", str(tmp_path / "mask.png"), "--video",
                 str(tmp_path / "overlay.avi"), "--max-frames", "30", "--no-progress"]) == 0
    processed = float(re.search(r"\(([\d.]+) FPS\)", capsys.readouterr().out).group(1))
    fps, frames = reported_rate(tmp_path / "overlay.avi")
    stream_fps = reported_rate(live_mjpeg_stream)[0]   # what OpenCV says the stream's rate is (25 for MJPEG)
    assert frames == 30
    assert fps != pytest.approx(stream_fps, abs=0.01), fps       # not the stream's rate, which vosrt run took
    assert processed / 2 <= fps <= processed * 2, (fps, processed)   # the first 15 frames' rate, against all 30


def test_a_stream_url_that_never_answers_is_given_up_after_the_stream_timeout(tmp_path, capsys):
    # OpenCV waits 30 s for a stream that accepts the connection and sends nothing, and then vosrt said only
    # "check the URL": now --stream-timeout (default 10 s) bounds the wait, and the error says what happened
    import time

    with silent_server() as url:
        started = time.monotonic()
        with pytest.raises(UserError, match=r"^--source: cannot open stream http://127\.0\.0\.1:\d+/stream\.mjpg: "
                                            r"nothing arrived within 1 s; check the URL .* --stream-timeout 30$"):
            open_source(url, stream_timeout=1)
        assert time.monotonic() - started < 15                  # OpenCV's own wait: 30 s
        write_label_png(tmp_path / "mask.png", _mask())
        assert main(["run", PACKAGE, "--source", url, "--mask", str(tmp_path / "mask.png"), "--out",
                     str(tmp_path / "out"), "--stream-timeout", "0.5", "--no-progress"]) == 2
        assert "nothing arrived within 0.5 s" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    for bad in ("0", "-1", "nan", "inf"):
        assert main(["run", PACKAGE, "--source", "0", "--stream-timeout", bad]) == 2
        assert f"--stream-timeout: expected a finite number of seconds > 0, got {float(bad)}" in capsys.readouterr().err


def test_a_stream_that_hangs_mid_way_ends_after_the_stream_timeout_with_the_frames_so_far(tmp_path, capsys):
    # a camera that keeps its connection open but stops sending: the read waited OpenCV's 30 s, and `vosrt live`
    # reopens a dropped stream only once the read gives up
    import time

    with mjpeg_camera(_frame(0), frames=6, fps=100, stall=True) as url:
        source = open_source(url, stream_timeout=1)
        started = time.monotonic()
        frames = list(source)
        assert time.monotonic() - started < 15
        assert 1 <= len(frames) <= 6 and source.stopped_early
        assert source.problem == f"stream {url} sent no frame for 1 s after {len(frames)} frames (--stream-timeout)"
        write_label_png(tmp_path / "mask.png", _mask())
        assert main(["run", PACKAGE, "--source", url, "--mask", str(tmp_path / "mask.png"), "--out",
                     str(tmp_path / "out"), "--stream-timeout", "1", "--no-progress"]) == 1   # a source cut short
    assert "sent no frame for 1 s" in capsys.readouterr().err
    assert 1 <= len(list((tmp_path / "out").glob("*.png"))) <= 6     # the frames before it hung are kept


def test_a_video_that_stops_before_its_first_frame_claims_no_outputs_and_leaves_no_empty_folder(tmp_path, capsys):
    # it printed "0 frames in 0.00 s; PNGs in out; video overlay.mp4" and "the 0 frames before it were kept", and
    # left the empty --out folder behind
    writer = cv2.VideoWriter(str(tmp_path / "whole.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 20, (W, H))
    for t in range(10):
        writer.write(_frame(t))
    writer.release()
    whole = (tmp_path / "whole.avi").read_bytes()
    for cut in range(len(whole) // 2, len(whole), 50):   # the header, and too little of the first frame to decode
        (tmp_path / "cut.avi").write_bytes(whole[:cut])
        capture = cv2.VideoCapture(str(tmp_path / "cut.avi"))
        if capture.isOpened() and not capture.read()[0]:
            capture.release()
            break
        capture.release()
    else:
        pytest.skip("no cut of this AVI opens without a frame to read")
    write_label_png(tmp_path / "mask.png", _mask())
    assert main(["run", PACKAGE, "--source", str(tmp_path / "cut.avi"), "--mask", str(tmp_path / "mask.png"),
                 "--out", str(tmp_path / "out"), "--video", str(tmp_path / "overlay.mp4"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "0 frames in" in captured.out and "PNGs in" not in captured.out and "video " not in captured.out
    assert "stopped after 0 frames of 10; nothing was written" in captured.err, captured.err
    assert not (tmp_path / "out").exists() and not (tmp_path / "overlay.mp4").exists()


def test_a_file_served_over_http_is_no_live_source_and_every_frame_of_it_is_segmented(tmp_path, capsys):
    with http_camera(tmp_path, frames=12) as url:
        source = open_source(url)
        assert source.kind == "stream" and not source.live     # it has a frame count: read frame after frame
        source.close()
        write_label_png(tmp_path / "mask.png", np.ones((64, 96), np.uint8))
        assert main(["run", PACKAGE, "--source", url, "--mask", str(tmp_path / "mask.png"), "--out",
                     str(tmp_path / "out"), "--no-progress"]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 12 and "dropped" not in capsys.readouterr().err


def test_a_file_served_over_http_read_to_its_last_frame_is_a_complete_run(tmp_path, capsys):
    # The end of any stream URL counts as the stream stopping early (a live source reconnects then), so a run over
    # a whole file at an http:// or file:// URL ended with "warning: stream ... stopped after 12 frames" and exit
    # code 1, as if it had fallen short. One cut short still does.
    write_label_png(tmp_path / "mask.png", np.ones((64, 96), np.uint8))
    with http_camera(tmp_path, frames=12) as url:
        assert main(["run", PACKAGE, "--source", url, "--mask", str(tmp_path / "mask.png"), "--out",
                     str(tmp_path / "out"), "--no-progress"]) == 0
    assert "stopped after" not in capsys.readouterr().err and len(list((tmp_path / "out").glob("*.png"))) == 12
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "cam.avi").write_bytes((tmp_path / "cam.avi").read_bytes()[:-8000])   # its last frames and index gone
    assert main(["run", PACKAGE, "--source", (cut / "cam.avi").as_uri(), "--mask", str(tmp_path / "mask.png"),
                 "--no-progress"]) == 1
    assert "stopped after" in capsys.readouterr().err


def test_stream_masks_are_keyed_by_source_position_past_a_skipped_frame_and_one_on_it_is_an_error(tmp_path):
    # stream(session, open_source(folder), masks={0: m, 2: m2}) with image 00001 unreadable: masks were looked up by
    # the count of frames yielded, so m2 (drawn on 00002) went to 00003, silently; one keyed to 00001 was lost.
    import vosrt.sdk
    from vosrt.sdk.streaming import stream

    folder = _frames_and_mask(tmp_path, 5)
    (folder / "00001.png").write_bytes(b"not an image")
    second = np.zeros((H, W), np.uint8)
    cv2.circle(second, (80, 12), 7, 2, -1)     # object 2, annotated on frame 2
    tracker = vosrt.sdk.load(PACKAGE)
    seen = {}

    def sink(index, name, frame, labels):
        seen[name] = sorted(int(i) for i in np.unique(labels))

    stream(tracker, open_source(str(folder)), [sink], masks={0: _mask(), 2: second})
    assert seen["00002"] == [0, 1, 2] and list(seen) == ["00000", "00002", "00003", "00004"]
    with pytest.raises(UserError, match="masks: frame 1 of the source could not be read"):
        stream(tracker, open_source(str(folder)), [sink], masks={0: _mask(), 1: second})
    # a video's skipped frame keeps the numbers of those after it in the same way
    video = tmp_path / "clip.avi"
    _video_with_an_undecodable_frame(video, bad=1, frames=5)
    seen.clear()
    stream(tracker, open_source(str(video)), [sink], masks={0: _mask(), 2: second})
    assert seen["00002"] == [0, 1, 2] and list(seen) == ["00000", "00002", "00003", "00004"]


def test_a_mask_keyed_to_a_frame_the_stream_never_reaches_is_said(capsys):
    # masks={30: m} on a 12-frame source, or {8: m} with max_frames=5, ran the whole stream as background without a
    # word, where a key of the wrong kind is refused for that very reason
    import vosrt.sdk
    from vosrt.sdk.streaming import stream

    frames = [_frame(t) for t in range(6)]
    tracker = vosrt.sdk.load(PACKAGE)
    stats = stream(tracker, frames, masks={30: _mask()})
    assert stats.unapplied == [30] and stats.frames == 6
    assert ("warning: masks: the stream ended before frame(s) 30 (the source ended after 6 frame(s)), so their masks "
            "were never applied") in capsys.readouterr().err
    stats = stream(tracker, frames, masks={0: _mask(), 4: _mask(4)}, max_frames=3)
    assert stats.unapplied == [4]
    assert "frame(s) 4 (max_frames 3 stopped it after 3 frame(s))" in capsys.readouterr().err
    stats = stream(tracker, frames, masks={0: _mask()})
    assert stats.unapplied == [] and "warning" not in capsys.readouterr().err


def test_a_camera_that_is_not_there_is_said_in_one_line_without_opencvs_own_log(tmp_path):
    # OpenCV 5 printed about ten lines first: each capture backend's probe, a multi-line exception, an [ERROR] of its
    # Orbbec backend; they are silenced in the command line unless OPENCV_LOG_LEVEL asks for them
    import os
    import subprocess
    import sys

    write_label_png(tmp_path / "m.png", np.ones((48, 64), np.uint8))
    command = [sys.executable, "-m", "vosrt", "run", "stcn-lite", "--source", "37", "--mask", str(tmp_path / "m.png")]
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_LOG_LEVEL"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["error: --source: cannot open camera 37: check the index (0 is the first "
                                       "camera) and that no other program holds it"], run.stderr
    verbose = subprocess.run(command, capture_output=True, text=True, env={**env, "OPENCV_LOG_LEVEL": "INFO"},
                             timeout=120)
    assert verbose.returncode == 2 and len(verbose.stderr.splitlines()) > 1   # OpenCV has its say when asked
