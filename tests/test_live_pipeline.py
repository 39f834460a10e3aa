"""The live pipeline's commands on a real session (shipped stcn-lite) and a generated video file."""
from __future__ import annotations

import contextlib
import time

import cv2
import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk.errors import UserError
from vosrt.sdk.live.pipeline import LivePipeline
from vosrt.sdk.live.source import LatestFrameSource
from vosrt.sdk.masks import read_label_png
from vosrt.sdk.synthetic import generate_sequence, write_video
from vosrt.sdk.video import open_source

from live_support import PACKAGE, bounding_box, wait_for
from media import small_disk, video_frames


@contextlib.contextmanager
def live_pipeline(folder, seed: int = 31, frames: int = 60, loop: bool = False, session_options=None, **options):
    """A pipeline running in its thread over a generated clip played at 30 FPS: (pipeline, sequence)."""
    seq = generate_sequence(seed, num_frames=frames, num_objects=1)
    clip = write_video(folder / "clip.mp4", seq)
    session = vosrt.sdk.load(PACKAGE, **(session_options or {}))
    source = LatestFrameSource(lambda: open_source(str(clip)), drop=True, pace=30, loop=loop)
    pipeline = LivePipeline(session, source, save_dir=folder / "saved", **options)
    thread = pipeline.start()
    try:
        yield pipeline, seq
    finally:
        pipeline.stop()
        thread.join(timeout=30)
        session.close()


@pytest.fixture
def running(tmp_path):
    with live_pipeline(tmp_path) as started:
        yield started


def test_a_box_drawn_while_paused_is_applied_to_the_paused_picture(running):
    pipeline, seq = running
    wait_for(lambda: pipeline.frames >= 5)
    pipeline.pause()
    settled = -1
    while settled != pipeline.frames:   # the frame in progress finishes
        settled = pipeline.frames
        time.sleep(0.3)
    frames, picture, name = pipeline.frames, pipeline.latest_frame, pipeline.latest_name
    truth = seq.labels[int(name)] == 1
    pipeline.select_box(bounding_box(truth))
    wait_for(lambda: pipeline.frames > frames)
    assert pipeline.latest_frame is picture and pipeline.latest_name == name
    found = pipeline.latest_labels == 1
    assert (found & truth).sum() / (found | truth).sum() > 0.7
    assert pipeline.source.paused and sorted(pipeline.objects) == [1]


def test_remove_and_reset_forget_objects(running):
    pipeline, seq = running
    wait_for(lambda: pipeline.frames >= 2)
    pipeline.select_box(bounding_box(seq.labels[0] == 1))
    pipeline.select_box((10, 10, 30, 30))
    wait_for(lambda: sorted(pipeline.objects) == [1, 2])
    pipeline.remove(2)
    wait_for(lambda: sorted(pipeline.objects) == [1] and pipeline.session.objects == [1])
    with pytest.raises(UserError, match="not tracked"):
        pipeline.remove(7)
    pipeline.reset()
    wait_for(lambda: pipeline.objects == {} and pipeline.session.objects == [] and pipeline.frames > 0)
    before = pipeline.frames
    wait_for(lambda: pipeline.frames > before + 2)
    assert not (pipeline.latest_labels > 0).any()
    assert pipeline.select_box((10, 10, 30, 30)) == 1          # ids start again at 1


def test_snapshot_writes_the_frame_and_its_mask(running):
    pipeline, seq = running
    pipeline.select_box(bounding_box(seq.labels[0] == 1))
    wait_for(lambda: pipeline.objects.get(1, 0) > 0)
    names = pipeline.snapshot()
    saved = pipeline.save_dir
    assert [(saved / n).is_file() for n in names] == [True, True]
    assert read_label_png(saved / names[1]).shape == seq.labels[0].shape
    assert np.isin(read_label_png(saved / names[1]), [0, 1]).all()


def test_a_failing_box_segmenter_costs_the_selection_only_and_its_id_stays_claimed_while_it_runs(tmp_path):
    """A user's --box-segmenter may raise or take its time: the stream goes on, and while it runs the ids it
    is turning into objects are neither given out again nor unknown to remove."""
    started, calls = [], []

    def slow_then_failing(frame, box):
        calls.append(box)
        started.append(time.monotonic())
        time.sleep(1.0)
        if len(calls) == 1:
            raise RuntimeError("segmenter broke")
        return np.ones(frame.shape[:2], bool)

    with live_pipeline(tmp_path, seed=32, frames=40, loop=True, box_segmenter=slow_then_failing) as (pipeline, _):
        wait_for(lambda: pipeline.frames >= 2)
        assert pipeline.select_box((10, 10, 30, 30), 7) == 7
        wait_for(lambda: len(calls) == 1)
        with pytest.raises(UserError, match="object 7 is already tracked"):
            pipeline.select_box((40, 40, 30, 30), 7)          # claimed while the segmenter runs
        assert pipeline.select_box((40, 40, 30, 30)) != 7
        wait_for(lambda: "box segmenter failed: RuntimeError: segmenter broke" in pipeline.message)
        frames = pipeline.frames
        wait_for(lambda: pipeline.frames > frames + 2)        # inference went on
        assert pipeline.error is None and 7 not in pipeline.objects
        pipeline.select_box((10, 10, 30, 30), 9)
        wait_for(lambda: len(calls) == 3)
        pipeline.remove(9)                                    # known while being applied: queued, not refused
        wait_for(lambda: 9 not in pipeline.objects and pipeline.message == "removed object 9")


def test_automatic_ids_wrap_past_255_to_the_lowest_free_one(tmp_path):
    with live_pipeline(tmp_path, session_options={"max_objects": 300}) as (pipeline, _):
        _ids_wrap(pipeline)


def _ids_wrap(pipeline):
    wait_for(lambda: pipeline.frames >= 1)
    pipeline.pause()
    assert pipeline.select_box((10, 10, 30, 30), 255) == 255
    assert pipeline.select_box((40, 40, 30, 30)) == 1
    assert pipeline.select_box((70, 40, 30, 30)) == 2
    with pipeline._lock:                       # every id taken
        pipeline._boxes.extend((i, (1, 1, 9, 9)) for i in range(3, 255))
    with pytest.raises(UserError, match="all 255 object ids are in use"):
        pipeline.select_box((70, 70, 30, 30))


def test_a_selection_beyond_the_object_limit_is_refused_and_the_stream_goes_on(tmp_path):
    with live_pipeline(tmp_path, loop=True, session_options={"max_objects": 2}) as (pipeline, seq):
        wait_for(lambda: pipeline.frames >= 2)
        pipeline.select_box(bounding_box(seq.labels[0] == 1))
        pipeline.select_box((10, 10, 30, 30))
        with pytest.raises(UserError, match=r"limit \(max_objects 2\).*--max-objects 3"):
            pipeline.select_box((50, 10, 30, 30))
        wait_for(lambda: pipeline.session.objects == [1, 2])
        # one that got past the check (the session was given an object meanwhile) costs its selection only
        with pipeline._lock:
            pipeline._boxes.append((3, (50, 10, 30, 30)))
        before = pipeline.frames
        wait_for(lambda: pipeline.frames > before + 3)
        assert pipeline.error is None and pipeline.session.objects == [1, 2]
        assert "max_objects 2" in pipeline.message
        pipeline.remove(2)
        wait_for(lambda: pipeline.session.objects == [1])
        assert pipeline.select_box((10, 10, 30, 30)) == 3


def test_once_the_page_is_told_the_stream_ended_a_recording_is_refused_and_none_is_left_open(tmp_path):
    """The page's "ended" came from the source (its last frame taken) while that frame was still being
    processed: a recording asked for in between was started after the end, and left open."""
    with live_pipeline(tmp_path, frames=6) as (pipeline, _):
        wait_for(lambda: pipeline.state()["ended"], interval=0)
        with pytest.raises(UserError, match="stream has ended"):
            pipeline.start_recording()
        assert pipeline.recorded == [] and not pipeline.recording


def test_once_the_stream_ended_remove_reset_and_pause_are_refused_not_answered_ok(tmp_path):
    """They were accepted and did nothing: the removed object stayed listed, reset never came, and "pause"
    turned the page's button to "resume" on a stream that had ended."""
    with live_pipeline(tmp_path, frames=8) as (pipeline, seq):
        pipeline.select_box(bounding_box(seq.labels[0] == 1))
        wait_for(lambda: pipeline.finished)
        assert list(pipeline.objects) == [1]
        for command in (lambda: pipeline.remove(1), pipeline.reset, pipeline.pause, pipeline.resume):
            with pytest.raises(UserError, match="stream has ended"):
                command()
        state = pipeline.state()
        assert [o["id"] for o in state["objects"]] == [1] and not state["paused"] and state["ended"]


def test_the_objects_of_a_stream_with_large_track_ids_cost_what_the_frame_costs(tmp_path):
    # stem-seg track ids count up for as long as a stream runs. The objects shown on the page were counted
    # per possible id (np.bincount up to the largest) and walked in Python: at id 2**20 8 MB and a quarter
    # of a second per frame, growing with the stream's age.
    import tracemalloc

    from sdk_packages import colour_embedding_package

    session = vosrt.sdk.load(colour_embedding_package(tmp_path / "pkg"), threads=1)
    session.linker.next_id = 2 ** 20                      # as after a long stream
    for t in range(3):                                    # a red and a green square: two tracks
        frame = np.zeros((64, 64, 3), np.uint8)
        frame[8:20, 8:20] = (0, 0, 255)
        frame[40:52, 36:48] = (0, 255, 0)
        cv2.imwrite(str(tmp_path / f"{t:05d}.png"), frame)
    source = LatestFrameSource(lambda: open_source(str(tmp_path)), drop=False, retry=False)
    pipeline = LivePipeline(session, source, save_dir=tmp_path / "saved")
    tracemalloc.start()
    try:
        stats = pipeline.run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        session.close()
    assert stats.frames == 3 and pipeline.frames == 3
    # 12x12 squares less their corner pixels, as the published way back from the 1/4-scale map gives them
    assert pipeline.objects == {2 ** 20: 140, 2 ** 20 + 1: 140}
    assert peak < 4_000_000, peak
    # the page's swatches take the colour the overlay blends each track in (its own DAVIS-palette code gave
    # ids past 255 another colour than the picture's)
    from vosrt.sdk.masks import label_colours
    shown = {o["id"]: o["colour"] for o in pipeline.state()["objects"]}
    assert shown == {i: "#%02x%02x%02x" % tuple(label_colours(np.array([i]))[0]) for i in (2 ** 20, 2 ** 20 + 1)}
    assert len(set(shown.values())) == 2


@pytest.mark.parametrize("family", ["3dc-seg", "stem-seg"])
def test_a_clip_session_s_frames_have_their_latency_measured(tmp_path, family):
    # A clip session's frames wait for their labels as copies (stream() keeps one), and the latency was looked
    # up by the copy, which the source never yielded: no frame had a latency, and `vosrt live --headless` of a
    # 3dc-seg or stem-seg package printed "latency p50 nan ms, p95 nan ms".
    from sdk_packages import tiny_package

    for t in range(11):                                     # one clip, and a flush clip for the last frames
        frame = np.zeros((32, 32, 3), np.uint8)
        frame[4 + t:16 + t, 8:20] = (0, 0, 255)
        cv2.imwrite(str(tmp_path / f"{t:05d}.png"), frame)
    session = vosrt.sdk.load(tiny_package(family), threads=1)
    source = LatestFrameSource(lambda: open_source(str(tmp_path)), drop=False, retry=False)
    pipeline = LivePipeline(session, source, save_dir=tmp_path / "saved")
    try:
        stats = pipeline.run()
    finally:
        session.close()
    assert stats.frames == 11 and len(pipeline.latencies) == 11
    assert all(0 <= latency < 60 for latency in pipeline.latencies)
    assert pipeline.state()["latency_ms"] is not None


def test_a_page_recording_that_cannot_be_written_ends_itself_not_the_stream(tmp_path, capsys):
    # its write error was raised in the inference thread and ended the whole stream ("inference stopped")
    import shutil

    with live_pipeline(tmp_path, loop=True) as (pipeline, _):
        wait_for(lambda: pipeline.frames >= 2)
        name = pipeline.start_recording()
        shutil.rmtree(tmp_path / "saved")
        (tmp_path / "saved").write_text("a file where the recordings go")   # the writer opens at frame 15
        wait_for(lambda: not pipeline.recording, timeout=60)
        before = pipeline.frames
        wait_for(lambda: pipeline.frames > before + 3)
        assert pipeline.error is None
        assert pipeline.message.startswith(f"recording {name} stopped: ") and "saved was replaced by a file" in pipeline.message
    assert f"warning: recording {name} stopped" in capsys.readouterr().err


def test_a_page_recording_on_a_filling_disk_stops_playable_and_the_stream_goes_on(tmp_path):
    # OpenCV's writer went on as its writes failed: the page showed "recording" until it was stopped, and the
    # file then held no frame (no index)
    with small_disk(tmp_path / "saved", 3072), live_pipeline(tmp_path, loop=True) as (pipeline, _):
        wait_for(lambda: pipeline.frames >= 2)
        name = pipeline.start_recording()
        wait_for(lambda: not pipeline.recording, timeout=120)
        before = pipeline.frames
        wait_for(lambda: pipeline.frames > before + 3)
        assert pipeline.error is None
        assert pipeline.message.startswith(f"recording {name} stopped: ") and "disk is nearly full" in pipeline.message
        written = int(pipeline.message.split("the video stops at its ")[1].split()[0])
        assert written > 0 and video_frames(tmp_path / "saved" / name) == written


@contextlib.contextmanager
def _looping_pipeline(tmp_path, on_iteration, seed: int):
    """A pipeline running in a thread over a looping clip whose source calls ``on_iteration(pipeline, n)`` as
    its n-th iteration starts (a command landing in that window): yields (pipeline, thread). The session is
    closed only once the thread has ended (on code with the bug it runs on; daemon, it ends with pytest)."""
    import threading

    clip = write_video(tmp_path / "clip.mp4", generate_sequence(seed, num_frames=8, num_objects=1))
    holder, starts = [], []

    class CommandAsItStarts(LatestFrameSource):
        def __iter__(self):
            starts.append(1)
            on_iteration(holder[0], len(starts))
            return super().__iter__()

    session = vosrt.sdk.load(PACKAGE)
    source = CommandAsItStarts(lambda: open_source(str(clip)), drop=False, retry=False, loop=True)
    holder.append(LivePipeline(session, source, save_dir=tmp_path / "saved"))
    thread = threading.Thread(target=holder[0].run, daemon=True)
    thread.start()
    try:
        yield holder[0], thread
    finally:
        holder[0].stop()
        thread.join(timeout=30)
        if not thread.is_alive():
            session.close()


def test_a_stop_landing_as_the_stream_starts_its_iteration_ends_the_run(tmp_path):
    # stop() interrupted the source, and the iteration stream() was about to start reset the interrupt: a
    # stop (SIGTERM) landing in that window was lost, and a looping file streamed on for ever
    def stop_first(pipeline, n):
        if n == 1:
            pipeline.stop()      # the signal lands here, after run() checked for a stop

    with _looping_pipeline(tmp_path, stop_first, seed=33) as (pipeline, thread):
        thread.join(timeout=30)
        assert not thread.is_alive(), "the stop was lost: the run goes on"
        assert pipeline.finished


def test_a_reset_landing_as_the_next_stream_starts_is_applied(tmp_path):
    # the iteration starting after a reset cleared the source's interrupt: a second reset landing in that
    # window was lost while a looping file played on (its objects kept, _resetting left set)
    def reset_second(pipeline, n):
        if n == 2:   # the stream after the first reset
            pipeline.reset()

    with _looping_pipeline(tmp_path, reset_second, seed=34) as (pipeline, _):
        wait_for(lambda: pipeline.frames >= 2)
        pipeline.reset()
        wait_for(lambda: pipeline.resets == 2, timeout=20)


def test_the_final_fps_leaves_out_the_time_spent_paused(tmp_path, capsys):
    # the exit summary counted a pause as time spent on frames: a minute paused made a 30 FPS run read as 1 FPS; and
    # a reset while paused (its time outside the stream's clock) was subtracted all the same: 58 FPS of a 30 FPS clip
    with live_pipeline(tmp_path, frames=400, loop=True) as (pipeline, _):
        wait_for(lambda: pipeline.frames >= 10)
        pipeline.pause()
        time.sleep(1.5)
        resets = pipeline.resets
        pipeline.reset()
        wait_for(lambda: pipeline.resets > resets)
        time.sleep(1.0)
        pipeline.resume()
        assert not pipeline._recent or pipeline._recent[0] > time.perf_counter() - 1   # the page's FPS restarts
        done = pipeline.frames
        wait_for(lambda: pipeline.frames >= done + 10)
        pipeline.pause()           # stopped while paused: that pause is left out too
        time.sleep(1.0)
    stats = pipeline.stats
    assert 3.4 < pipeline.paused_seconds < 6, pipeline.paused_seconds
    # the clip plays at 30 FPS, so no honest rate is above it; with the pauses counted it was several times lower
    assert 2 * stats.fps < pipeline.run_fps() < 36, (pipeline.run_fps(), stats.fps)
    from vosrt.sdk.cli_live import _report
    _report(pipeline)
    assert f"{pipeline.run_fps():.1f} FPS ({pipeline.paused_seconds:.1f} s paused not counted)" in capsys.readouterr().out


def test_the_final_fps_of_a_clip_family_paused_often_stays_at_the_clip_s_rate(tmp_path):
    # a clip's results come together: the gap before each burst was dropped after a pause and the bursts' near-zero
    # gaps kept, so pausing every quarter second made a 30 FPS clip read as 87 FPS
    from sdk_packages import tiny_package

    seq = generate_sequence(41, num_frames=60, height=64, width=64, num_objects=1)
    clip = write_video(tmp_path / "clip.mp4", seq)
    session = vosrt.sdk.load(tiny_package("3dc-seg"))
    source = LatestFrameSource(lambda: open_source(str(clip)), drop=True, pace=30, loop=True)
    pipeline = LivePipeline(session, source, save_dir=tmp_path / "saved")
    thread = pipeline.start()
    try:
        wait_for(lambda: pipeline.frames >= 8)
        for _ in range(10):
            time.sleep(0.25)
            pipeline.pause()
            time.sleep(0.3)
            pipeline.resume()
        time.sleep(0.5)
    finally:
        pipeline.stop()
        thread.join(timeout=30)
        session.close()
    assert pipeline.paused_seconds > 2.5
    assert 0 < pipeline.run_fps() < 36, pipeline.run_fps()    # never above the clip's own 30 FPS (and a margin)
