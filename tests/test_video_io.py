"""Frame sources and result sinks on real files: video, image folder, DAVIS sequence, palette PNGs, overlay."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from vosrt.sdk import UserError
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.synthetic import generate_sequence, write_davis, write_video
from vosrt.sdk.video import CallbackSink, OverlayVideoSink, PngSink, open_source, overlay

from media import reported_rate, video_frames


@pytest.fixture(scope="module")
def sequence():
    return generate_sequence(2, num_frames=6, height=48, width=64, num_objects=2, num_distractors=0)


def test_video_file_yields_every_frame_as_bgr(sequence, tmp_path):
    source = open_source(write_video(tmp_path / "clip.mp4", sequence))
    frames = list(source)
    assert source.kind == "video" and source.length == len(sequence) and not source.stopped_early
    assert len(frames) == len(sequence) and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    # BGR: compare with the RGB original reversed (mp4 is lossy, so on average)
    error_bgr = np.abs(frames[0].astype(int) - sequence.frames[0][:, :, ::-1]).mean()
    error_rgb = np.abs(frames[0].astype(int) - sequence.frames[0]).mean()
    assert error_bgr < error_rgb


def test_davis_sequence_folder_names_frames_and_offers_the_first_annotation(sequence, tmp_path):
    write_davis(tmp_path, "synth", sequence)
    for spec in (tmp_path / "JPEGImages" / "480p" / "synth", tmp_path):
        source = open_source(str(spec))
        assert source.kind == "davis" and source.length == len(sequence)
        assert [source.frame_name(i) for i in range(2)] == ["00000", "00001"]
        assert np.array_equal(source.first_mask(), sequence.labels[0])
        assert len(list(source)) == len(sequence)


def test_image_folder_skips_an_unreadable_image_and_goes_on(sequence, tmp_path, capsys):
    for i, frame in enumerate(sequence.frames):
        cv2.imwrite(str(tmp_path / f"f{i:03d}.png"), frame)
    (tmp_path / "f003.png").write_bytes(b"not an image")
    source = open_source(tmp_path)
    assert source.kind == "folder" and source.first_mask() is None
    frames = list(source)
    assert len(frames) == len(sequence) - 1
    assert [source.frame_name(i) for i in range(2, 5)] == ["f002", "f004", "f005"]   # names follow the files
    assert not source.stopped_early and [p.name for p in source.skipped] == ["f003.png"]
    assert "f003.png" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [("99", "camera 99"), ("rtsp://127.0.0.1:9/x", "stream"),
                                           ("nope.mp4", "not a camera index"), ("image.png", "single image"),
                                           ("empty", "no images")])
def test_a_source_that_cannot_be_opened_raises_user_error(tmp_path, spec, message):
    (tmp_path / "empty").mkdir()
    cv2.imwrite(str(tmp_path / "image.png"), np.zeros((8, 8, 3), np.uint8))
    target = spec if spec.isdigit() or "://" in spec else str(tmp_path / spec)
    with pytest.raises(UserError, match=message) as raised:
        open_source(target)
    assert str(raised.value).startswith("--source: ")
    # a command whose source comes from another flag has it named (vosrt quantize --calibrate)
    with pytest.raises(UserError, match=message) as raised:
        open_source(target, flag="--calibrate")
    assert str(raised.value).startswith("--calibrate: ")


def test_a_folder_of_sequence_folders_is_refused_naming_one_to_give(tmp_path):
    # A dataset's frame root (YouTube-VIS JPEGImages/, KITTI-MOTS image_02/) given as --source said only
    # "holds no images", with no word of the sequence folders inside it.
    for name in ("0b6db1c6fd", "1a2b3c4d5e"):
        (tmp_path / "JPEGImages" / name).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "JPEGImages" / name / "00000.jpg"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "JPEGImages" / "notes").mkdir()     # a folder without images is no sequence
    with pytest.raises(UserError, match="holds no images") as raised:
        open_source(tmp_path / "JPEGImages")
    message = str(raised.value)
    assert "2 subfolder(s) with images (0b6db1c6fd, 1a2b3c4d5e)" in message, message
    assert f"--source {tmp_path / 'JPEGImages' / '0b6db1c6fd'}" in message, message
    assert Path(message.split("e.g. --source ", 1)[1].split(",", 1)[0]).is_dir()


def test_png_sink_keeps_label_ids_exact(tmp_path):
    labels = np.zeros((20, 30), np.uint8)
    labels[2:8, 3:9] = 7
    labels[10:15, 20:25] = 255
    sink = PngSink(tmp_path / "out")
    sink(0, "frame_a", np.zeros((20, 30, 3), np.uint8), labels)
    assert np.array_equal(read_label_png(tmp_path / "out" / "frame_a.png"), labels)


def test_png_sink_stopped_between_the_write_and_the_rename_leaves_no_partial_file(tmp_path, monkeypatch):
    import vosrt.sdk.video as video

    def stopped(src, dst):  # SIGTERM / Ctrl-C arriving after the PNG was written aside
        raise KeyboardInterrupt

    monkeypatch.setattr(video.os, "replace", stopped)
    sink = PngSink(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        sink(0, "frame_a", np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30), np.uint8))
    assert list((tmp_path / "out").iterdir()) == [] and sink.written == 0


def test_png_sink_refuses_a_folder_that_takes_no_file_before_the_first_frame(tmp_path):
    # A folder that takes no new file (here /proc, a pseudo file system) was found only at the first frame's PNG,
    # after the model had loaded and the first frame had been segmented; it is refused where the sink is made, as
    # vosrt export's --out and vosrt run's --vis/--mots are (one probe, vosrt.sdk.package.writable_folder).
    from vosrt.sdk.errors import UserError

    with pytest.raises(UserError, match="--out: cannot write files in /proc"):
        PngSink("/proc")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="is a file, not a folder"):
        PngSink(tmp_path / "file")


def test_overlay_video_sink_writes_a_video_opencv_reads_back(sequence, tmp_path):
    sink = OverlayVideoSink(tmp_path / "overlay.mp4", fps=10)
    for i, (frame, labels) in enumerate(zip(sequence.frames, sequence.labels)):
        sink(i, f"{i:05d}", frame, labels)
    sink.close()
    assert video_frames(tmp_path / "overlay.mp4") == len(sequence)


@pytest.mark.parametrize("name", ["odd.mp4", "odd.avi"])
def test_an_odd_sized_frame_keeps_its_last_row_and_column_in_the_overlay_video(tmp_path, name):
    # both codecs take even sizes only, and OpenCV's writer cut an odd frame's last row and column off
    frame = np.full((33, 47, 3), 40, np.uint8)
    frame[-1], frame[:, -1] = 230, 230      # the edges that were lost
    sink = OverlayVideoSink(tmp_path / name, fps=10, alpha=0.0)
    for i in range(3):
        sink(i, f"{i:05d}", frame, np.zeros((33, 47), np.uint8))
    sink.close()
    capture = cv2.VideoCapture(str(tmp_path / name))
    ok, shown = capture.read()
    capture.release()
    assert ok and shown.shape == (34, 48, 3), shown.shape
    # the frame's last row and column are there, and the row and column added are copies of them
    for edge in (shown[32, 8:40], shown[33, 8:40], shown[8:24, 46], shown[8:24, 47]):
        assert abs(edge.astype(float).mean() - 230) < 20, edge
    assert abs(shown[8:24, 8:40].astype(float).mean() - 40) < 10


def test_a_processed_rate_video_plays_at_the_rate_its_frames_came_not_the_source_s(tmp_path):
    # A live source drops the frames captured while the model is busy: written at the source's rate, the overlay
    # of `vosrt run` on a camera played as many times too fast. Its first frames are held until the rate is known.
    import time

    from vosrt.sdk.video import ProcessedRateVideoSink

    sink = ProcessedRateVideoSink(tmp_path / "live.avi", warmup=5)
    frame, labels = np.zeros((32, 48, 3), np.uint8), np.zeros((32, 48), np.uint8)
    for i in range(8):
        sink(i, f"{i:05d}", frame, labels)
        assert sink.written == i + 1       # held frames count as written
        time.sleep(0.1)                    # 10 frames a second
    sink.close()
    fps, frames = reported_rate(tmp_path / "live.avi")
    assert frames == 8 and 5 <= fps <= 10.5, (frames, fps)


def test_a_processed_rate_video_of_frames_that_come_in_bursts_plays_at_their_average_rate(tmp_path):
    # 3DC-Seg and STEm-Seg finish a clip's hop of frames at once: measured up to the last frame held (15 = three
    # bursts of 5, 14 frames in 0.2 s), a live stream's overlay was written at 70 FPS for frames processed at 50
    import time

    from vosrt.sdk.video import ProcessedRateVideoSink

    sink = ProcessedRateVideoSink(tmp_path / "clips.avi")
    frame, labels = np.zeros((32, 48, 3), np.uint8), np.zeros((32, 48), np.uint8)
    for burst in range(5):
        for i in range(5 * burst, 5 * burst + 5):
            sink(i, f"{i:05d}", frame, labels)
        time.sleep(0.1)                    # a clip every 0.1 s, 5 frames each: 50 frames a second
    sink.close()
    fps, frames = reported_rate(tmp_path / "clips.avi")
    assert frames == 25 and 40 <= fps <= 51, (frames, fps)


def test_overlay_video_sink_takes_the_float_frames_a_session_takes(tmp_path):
    # Sessions take float frames in 0..1 as well as uint8 ones; streamed into an OverlayVideoSink, the float
    # frames stopped the stream with OpenCV's "image.depth() == CV_8U" assertion from the video writer.
    import vosrt.sdk
    from sdk_packages import tiny_package
    from vosrt.sdk.streaming import stream

    sequence = generate_sequence(3, num_frames=6, height=32, width=32, num_objects=1)
    for name, frames in (("uint8.avi", sequence.frames), ("float.avi", [f / 255.0 for f in sequence.frames]),
                         ("float32.avi", [f.astype(np.float32) / 255 for f in sequence.frames])):
        tracker = vosrt.sdk.load(tiny_package("stcn"), threads=1)
        stream(tracker, frames, [OverlayVideoSink(tmp_path / name, fps=10)], masks={0: sequence.labels[0]})
    decoded = {}
    for name in ("uint8.avi", "float.avi", "float32.avi"):
        capture = cv2.VideoCapture(str(tmp_path / name))
        decoded[name] = [frame for ok, frame in iter(capture.read, (False, None)) if ok]
        capture.release()
    assert len(decoded["uint8.avi"]) == len(sequence)
    for a, b, c in zip(decoded["uint8.avi"], decoded["float.avi"], decoded["float32.avi"]):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    frame = np.full((4, 4, 3), 100 / 255, np.float32)
    assert overlay(frame, np.zeros((4, 4), np.uint8)).dtype == np.uint8


def test_overlay_video_sink_writes_the_rgb_frames_of_an_rgb_session_in_their_own_colours(tmp_path):
    # A session takes RGB frames (PIL, imageio) with color="rgb"; the sink wrote them as BGR, so the video came
    # out with red and blue swapped. color="rgb" tells it the frames' order: the video equals the BGR stream's.
    import vosrt.sdk
    from sdk_packages import tiny_package
    from vosrt.sdk.streaming import stream

    sequence = generate_sequence(4, num_frames=5, height=32, width=32, num_objects=1)   # RGB frames
    bgr = [np.ascontiguousarray(f[:, :, ::-1]) for f in sequence.frames]
    stream(vosrt.sdk.load(tiny_package("stcn"), threads=1), bgr, [OverlayVideoSink(tmp_path / "bgr.avi")],
           masks={0: sequence.labels[0]})
    stream(vosrt.sdk.load(tiny_package("stcn"), threads=1, color="rgb"), sequence.frames,
           [OverlayVideoSink(tmp_path / "rgb.avi", color="rgb")], masks={0: sequence.labels[0]})
    decoded = {}
    for name in ("bgr.avi", "rgb.avi"):
        capture = cv2.VideoCapture(str(tmp_path / name))
        decoded[name] = [frame for ok, frame in iter(capture.read, (False, None)) if ok]
        capture.release()
    assert len(decoded["rgb.avi"]) == len(sequence)
    for a, b in zip(decoded["bgr.avi"], decoded["rgb.avi"]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UserError, match="color"):
        OverlayVideoSink(tmp_path / "x.avi", color="bgra")


@pytest.mark.parametrize("fps, says", [(-5, "got -5"), (float("nan"), "got nan"), ("25", "got '25'"),
                                       (90000, "at most 65535")])
def test_an_overlay_video_sink_refuses_a_frame_rate_it_cannot_write_by_name(sequence, tmp_path, fps, says):
    # OpenCV's writer fails to open at such a rate, and the sink said only, at the first frame, that OpenCV
    # "cannot write overlay.mp4 (use .mp4 or .avi)" of an .mp4. 90000 is what a stream reporting its 90 kHz clock
    # as its frame rate gives (an .mp4's time base 1/fps takes a denominator of at most 65535); an .avi takes it.
    with pytest.raises(UserError, match="fps") as err:
        OverlayVideoSink(tmp_path / "overlay.mp4", fps=fps)
    assert says in str(err.value)
    if fps == 90000:
        sink = OverlayVideoSink(tmp_path / "overlay.avi", fps=fps)
        for i, (frame, labels) in enumerate(zip(sequence.frames, sequence.labels)):
            sink(i, f"{i:05d}", frame, labels)
        sink.close()
        assert video_frames(tmp_path / "overlay.avi") == len(sequence)
    sink = OverlayVideoSink(tmp_path / "overlay.mp4", fps=65535)   # the highest an .mp4 takes
    sink(0, "00000", sequence.frames[0], sequence.labels[0])
    sink.close()
    assert video_frames(tmp_path / "overlay.mp4") == 1


def test_a_video_reporting_a_clock_for_its_frame_rate_has_an_unknown_rate_and_its_overlay_plays_at_15(
        sequence, stcn_package, tmp_path):
    # a source whose "frame rate" is a clock (an RTSP stream's 90 kHz) gave `vosrt run --video` that rate: at
    # 65535 FPS an overlay of a whole clip plays in a blink; beyond it the .mp4 could not be written at all
    from vosrt.cli import main
    from vosrt.sdk.masks import write_label_png

    write_label_png(tmp_path / "mask.png", sequence.labels[0])
    writer = cv2.VideoWriter(str(tmp_path / "clock.mov"), cv2.VideoWriter_fourcc(*"mp4v"), 65535, (64, 48))
    for frame in sequence.frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    assert reported_rate(tmp_path / "clock.mov")[0] == 65535   # what OpenCV reports
    assert open_source(str(tmp_path / "clock.mov")).fps is None
    assert main(["run", str(stcn_package), "--source", str(tmp_path / "clock.mov"), "--mask", str(tmp_path / "mask.png"),
                 "--video", str(tmp_path / "overlay.mp4"), "--no-progress"]) == 0
    assert reported_rate(tmp_path / "overlay.mp4")[0] == 15
    assert video_frames(tmp_path / "overlay.mp4") == len(sequence)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "0.5", None])
def test_an_overlay_video_sink_refuses_an_alpha_outside_0_to_1_by_name(tmp_path, alpha):
    # alpha="0.5" failed at the first frame as "unsupported operand type(s) for -: 'int' and 'str'"
    with pytest.raises(UserError, match="alpha: expected .* in 0..1"):
        OverlayVideoSink(tmp_path / "overlay.mp4", alpha=alpha)


def test_overlay_tints_objects_and_leaves_background():
    frame = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), np.uint8)
    labels[0, 0] = 1                      # palette (128, 0, 0) red, blended in BGR order
    out = overlay(frame, labels, alpha=0.5)
    assert out[1, 1].tolist() == [100, 100, 100]
    assert out[0, 0].tolist() == [50, 50, 114]


def test_callback_sink_gets_index_frame_and_labels():
    seen = []
    sink = CallbackSink(lambda index, frame, labels: seen.append((index, frame.shape, int(labels.max()))))
    sink(3, "x", np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 2, np.uint8))
    assert seen == [(3, (4, 4, 3), 2)]


def test_a_16_bit_mask_with_id_258_is_read_exactly_and_refused_by_a_tracker(tmp_path):
    # uint8 would wrap 258 to 2 and silently merge it with object 2; ids are read exactly, and an STCN
    # session (ids 1..255) refuses it saying so.
    from PIL import Image

    import vosrt.sdk
    from sdk_packages import tiny_package

    ids = np.zeros((32, 32), np.uint16)
    ids[:4] = 258
    ids[8:12] = 2
    Image.fromarray(ids).save(tmp_path / "wide.png")
    mask = read_label_png(tmp_path / "wide.png")
    assert mask.dtype == np.uint16 and set(np.unique(mask)) == {0, 2, 258}
    tracker = vosrt.sdk.load(tiny_package("stcn"), threads=1)
    with pytest.raises(UserError, match=r"0\.\.255.*0\.\.258"):
        tracker.step(np.zeros((32, 32, 3), np.uint8), mask)
    assert tracker.objects == []


def test_label_pngs_keep_ids_beyond_255_exactly(tmp_path):
    from PIL import Image

    from vosrt.sdk.masks import label_colours, read_label_png, write_label_png

    for top, dtype in ((200, np.uint8), (300, np.uint16), (65535, np.uint16), (70000, np.uint32),
                       ((1 << 24) - 1, np.uint32)):
        labels = np.zeros((6, 7), np.uint32)
        labels[1:3, 2:5] = top
        labels[4, 0] = 7
        write_label_png(tmp_path / "m.png", labels)
        back = read_label_png(tmp_path / "m.png")
        assert back.dtype == dtype and np.array_equal(back, labels)
    with pytest.raises(UserError, match="expected integer ids"):
        write_label_png(tmp_path / "m.png", np.full((2, 2), 1 << 24, np.int64))
    # an RGB picture that vosrt did not write is not read as ids
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), "RGB").save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match="got mode RGB"):
        read_label_png(tmp_path / "rgb.png")
    colours = label_colours(np.array([1, 300, 301, 300]))
    assert np.array_equal(colours[1], colours[3]) and not np.array_equal(colours[1], colours[2])
    assert np.array_equal(colours[0], label_colours(np.array([1]))[0])


@pytest.mark.parametrize("name, labels, message", [
    ("m.jpg", np.ones((4, 4), np.uint8), r"must be a \.png .* name it m\.png"),
    ("m", np.ones((4, 4), np.uint8), r"must be a \.png .* name it m\.png"),
    ("m.png", np.ones((0, 4), np.uint8), r"expected a non-empty \[H, W\] array, got shape \(0, 4\)"),
])
def test_a_label_map_for_a_lossy_or_unnamed_format_or_an_empty_one_is_refused_before_writing(tmp_path, name, labels,
                                                                                          message):
    # a .jpg path was written lossily (ids changed), a path without suffix and an empty map raised PIL's ValueError
    from vosrt.sdk.masks import write_label_png

    with pytest.raises(UserError, match=message):
        write_label_png(tmp_path / name, labels)
    assert list(tmp_path.iterdir()) == []


def test_a_jpeg_mask_is_refused_not_read_with_its_compression_noise_as_object_ids(tmp_path):
    # a 0/1 mask saved as a JPEG came back with ids such as 2, 3 and 254 along its edges: extra objects
    import cv2

    from vosrt.sdk.masks import read_label_png

    mask = np.zeros((32, 48), np.uint8)
    mask[8:20, 10:30] = 255
    cv2.imwrite(str(tmp_path / "mask.jpg"), mask)
    with pytest.raises(UserError, match=r"mask\.jpg: a JPEG cannot hold a label map .* give the mask as a PNG"):
        read_label_png(tmp_path / "mask.jpg")


def test_a_boolean_mask_is_written_as_object_1_as_sessions_take_it(tmp_path):
    # write_label_png(path, mask > 0) was refused ("expected integer ids ... got dtype bool"), while every
    # session takes a boolean mask as object 1
    from vosrt.sdk.letterbox import check_label_map
    from vosrt.sdk.masks import read_label_png, write_label_png

    mask = np.zeros((5, 6), bool)
    mask[1:3, 2:5] = True
    write_label_png(tmp_path / "m.png", mask)
    back = read_label_png(tmp_path / "m.png")
    assert back.dtype == np.uint8 and np.array_equal(back, check_label_map(mask, mask.shape))


def test_a_capture_source_keeps_no_record_per_frame_read(tmp_path):
    # A camera or stream URL is read for days: the source kept the position of every frame it yielded (for
    # the frame names), a list that grew by one entry per frame. Read through a video file here, whose
    # frames take the same path; what the source holds must not grow between frame 300 and frame 3000.
    import tracemalloc

    path = tmp_path / "long.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (16, 16))
    frame = np.zeros((16, 16, 3), np.uint8)
    for _ in range(3000):
        writer.write(frame)
    writer.release()
    source = open_source(str(path))
    tracemalloc.start()
    try:
        for index, _ in enumerate(source):
            assert source.frame_name(index) == f"{index:05d}"
            if index == 299:
                early = tracemalloc.get_traced_memory()[0]
        late = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert index == 2999 and not source.stopped_early
    assert late - early < 16_000, late - early    # one list entry and int per frame: ~2700 × 36 bytes


def test_an_image_folder_leaves_out_hidden_files_and_folders_named_like_images(tmp_path, capsys):
    # A folder of frames copied from a Mac holds an AppleDouble ._NAME beside each image, and a viewer may leave
    # a hidden thumbnail: they were frames of the stream (the AppleDouble ones each an "unreadable image" warning,
    # a --vis slot and a --videos "image it does not list" refusal; a decodable hidden image a frame of the video,
    # sorted first). A folder named like an image was an unreadable frame too.
    for t in range(3):
        cv2.imwrite(str(tmp_path / f"{t:05d}.jpg"), np.full((8, 10, 3), 40 * t, np.uint8))
        (tmp_path / f"._{t:05d}.jpg").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    cv2.imwrite(str(tmp_path / ".thumb.png"), np.full((4, 5, 3), 255, np.uint8))
    (tmp_path / "00003.png").mkdir()
    (tmp_path / "00004.png").symlink_to(tmp_path / "gone.png")     # a broken link is a frame that cannot be read
    source = open_source(tmp_path)
    assert source.length == 4 and source.all_names == ["00000", "00001", "00002", "00004"]
    frames = list(source)
    assert [int(f[0, 0, 0]) for f in frames] == [0, 40, 80]
    assert [source.frame_name(i) for i in range(3)] == ["00000", "00001", "00002"]
    assert [p.name for p in source.skipped] == ["00004.png"] and not source.first_frame_skipped
    err = capsys.readouterr().err
    assert "._" not in err and ".thumb" not in err and "00003" not in err


def test_a_video_cut_short_stops_early_without_counting_its_missing_end_as_skipped_frames(tmp_path, capsys):
    # The frames a cut file promised but does not hold are no undecodable frames to skip: the source said
    # "cannot decode frame N; frame skipped" for each of them (up to 25), listed them in `skipped`, and `vosrt run`
    # then warned of that many "unreadable frames skipped" and of the stream stopping early, both at once.
    path = tmp_path / "cut.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for t in range(12):
        writer.write(np.full((24, 32, 3), 20 * t, np.uint8))
    writer.release()
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    source = open_source(str(path))
    assert source.length == 12
    frames = list(source)
    assert 0 < len(frames) < 12
    assert [round(float(f.mean()) / 20) for f in frames] == list(range(len(frames)))
    assert source.skipped == [] and source.stopped_early
    assert source.problem == f"video {path} stopped after {len(frames)} frames of 12"
    assert "cannot decode" not in capsys.readouterr().err


def test_a_digit_string_that_names_an_existing_folder_or_file_is_that_path_not_a_camera(tmp_path, monkeypatch):
    # KITTI-MOTS sequences are folders named 0000, 0001 ...: `vosrt run PKG --source 0002` from image_02/ opened
    # camera 2 (here "cannot open camera 2"; on a machine with cameras, a camera's frames instead of the folder's).
    folder = tmp_path / "0002"
    folder.mkdir()
    for t in range(2):
        cv2.imwrite(str(folder / f"{t:06d}.png"), np.full((6, 8, 3), 50 * t, np.uint8))
    write_video(tmp_path / "17.mp4", generate_sequence(1, num_frames=3, height=24, width=32, num_objects=1))
    (tmp_path / "17.mp4").rename(tmp_path / "17")     # a video file named by a number alone
    monkeypatch.chdir(tmp_path)
    source = open_source("0002")
    assert source.kind == "folder" and [int(f[0, 0, 0]) for f in source] == [0, 50]
    assert open_source("17").kind == "video"
    with pytest.raises(UserError, match="cannot open camera 98"):
        open_source("98")    # a digit string naming nothing is still a camera index
    with pytest.raises(UserError, match="not a camera index"):
        open_source("²")     # a digit int() does not take: was a ValueError traceback


def test_frame_names_the_natural_order_holds_equal_are_ordered_by_their_text_not_the_listing(tmp_path):
    # frame1 and frame01 (or Frame3 and frame3) have one natural key: a folder was read in the order the file
    # system listed them, which differs between file systems and copies of one folder.
    from vosrt.sdk.video import natural_key

    names = ["frame10.png", "frame2.png", "frame01.png", "frame1.png", "Frame3.png", "frame3.png", "b10.png", "b9.png"]
    expected = ["b9.png", "b10.png", "frame01.png", "frame1.png", "frame2.png", "Frame3.png", "frame3.png",
                "frame10.png"]
    for listing in (names, names[::-1]):
        assert sorted((tmp_path / n for n in listing), key=natural_key) == [tmp_path / n for n in expected]


def test_a_camera_device_path_and_a_named_pipe_are_sources_not_paths_that_do_not_exist(tmp_path):
    # `--source /dev/video0` (a camera by its path, as V4L2 names it) and a named pipe another program writes a
    # video into both exist, and OpenCV opens both; they were refused as "not ... a video file or folder that exists".
    import os
    import threading

    with pytest.raises(UserError, match="cannot open camera /dev/null"):
        open_source("/dev/null")    # a character device, as /dev/video0 is; this one no camera
    video = tmp_path / "clip.avi"
    recorder = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for t in range(5):
        recorder.write(np.full((24, 32, 3), 40 * t, np.uint8))
    recorder.release()
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: pipe.write_bytes(video.read_bytes()), daemon=True)
    writer.start()
    source = open_source(str(pipe))
    frames = list(source)
    writer.join(timeout=10)
    assert source.kind == "video" and [round(float(f.mean()) / 40) for f in frames] == [0, 1, 2, 3, 4]
    assert not source.stopped_early


def test_a_whole_jpeg_with_data_after_its_end_is_not_reported_as_cut_short(tmp_path, capsys):
    # A phone's Motion Photo is a JPEG with a video appended after its end marker (other cameras append their own
    # trailers); such data holding the bytes of a scan marker after the last end marker made a whole image count
    # as "JPEG data ends early ... its result is suspect". A file cut short still does, also with an EXIF-style
    # thumbnail (a whole JPEG with its own scan and end) in a segment before the image.
    frame = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    whole = cv2.imencode(".jpg", frame)[1].tobytes()
    (tmp_path / "00000.jpg").write_bytes(whole + b"\x00\x00\x00\x18ftypmp42" + b"\x12\xff\xda\x00\x33" * 8)
    thumbnail = cv2.imencode(".jpg", frame[::8, ::8])[1].tobytes()
    segment = b"\xff\xe1" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail
    (tmp_path / "00001.jpg").write_bytes(whole[:2] + segment + whole[2:len(whole) * 2 // 3])
    source = open_source(tmp_path)
    assert len(list(source)) == 2
    assert [p.name for p in source.truncated] == ["00001.jpg"]
    err = capsys.readouterr().err
    assert "00001.jpg: its JPEG data ends early" in err and "00000.jpg" not in err


def test_hidden_folders_are_no_sequences_of_a_davis_root_or_a_folder_of_sequences(tmp_path):
    # A notebook leaves .ipynb_checkpoints beside what it opened: a DAVIS root holding one sequence was refused as
    # holding two (".ipynb_checkpoints, bear"), and the hint for a folder of sequence folders offered one hidden.
    frame = np.zeros((6, 8, 3), np.uint8)
    for folder in ("JPEGImages/480p/bear", "JPEGImages/480p/.ipynb_checkpoints", "seqs/a", "seqs/.git"):
        (tmp_path / folder).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / folder / "00000.jpg"), frame)
    source = open_source(tmp_path)
    assert source.kind == "davis" and source.name == "bear"
    with pytest.raises(UserError, match=r"its 1 subfolder\(s\) with images \(a\)") as refused:
        open_source(tmp_path / "seqs")
    assert ".git" not in str(refused.value)


def test_a_stream_url_s_password_is_not_shown_in_its_name_or_errors():
    # rtsp://user:password@camera/... was printed whole: in errors, in vosrt run's header and on vosrt live's page
    # (the source's status), which every viewer of the page sees
    import time

    from vosrt.sdk.errors import UserError
    from vosrt.sdk.video import shown_url

    assert shown_url("rtsp://admin:s3cret@10.0.0.7:554/live?ch=1") == "rtsp://admin:***@10.0.0.7:554/live?ch=1"
    assert shown_url("rtsp://admin@10.0.0.7/live") == "rtsp://admin@10.0.0.7/live"   # no password: as given
    assert shown_url("http://u:p@w@host/x") == "http://u:***@host/x"
    started = time.monotonic()
    with pytest.raises(UserError) as refused:
        open_source("http://viewer:s3cret@127.0.0.1:9/stream.mjpg")   # nothing listens on port 9
    assert "s3cret" not in str(refused.value) and "http://viewer:***@127.0.0.1:9/stream.mjpg" in str(refused.value)
    assert time.monotonic() - started < 20


def test_an_overlay_video_under_a_file_is_refused_naming_the_file_in_the_way(tmp_path):
    # mkdir's "File exists" was said of the video's path, where nothing existed: the file was its folder
    (tmp_path / "afile").write_text("")
    for path in (tmp_path / "afile" / "x.mp4", tmp_path / "afile" / "sub" / "x.avi"):
        with pytest.raises(UserError, match=rf"--video: cannot write {path}: {tmp_path / 'afile'} is a file, not a "
                                            r"folder; give a \.mp4 or \.avi file in a folder you can write"):
            OverlayVideoSink(path)
