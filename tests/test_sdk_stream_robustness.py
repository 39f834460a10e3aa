"""Inputs that must not break a stream: non-finite or 0..255 float frames, a backend failing part-way
through a step, and more objects than a session allows. Each is refused (or rolled back) with the
session unchanged, and the stream goes on exactly as if the bad call had never happened."""

import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.synthetic import generate_sequence
from vosrt.sdk.tracker import Tracker

from interrupts import ctrl_c_at


@pytest.fixture(scope="module")
def sequence():
    return generate_sequence(5, num_frames=12, height=64, width=96, num_objects=2, num_distractors=1)


def _tracker(package, **options):
    return vosrt.sdk.load(package, threads=1, color="rgb", mem_every=2, **options)


def _labels_with_a_bad_call_at(package, sequence, bad_index, bad_call):
    """Labels of every frame when ``bad_call(tracker, t)`` (which must raise) is tried before frame
    ``bad_index``; the good frame follows it."""
    tracker = _tracker(package)
    out = []
    for t, frame in enumerate(sequence.frames):
        if t == bad_index:
            state = (tracker.frame_index, list(tracker.objects), tracker.memory.frames, tracker.memory.writes,
                     tracker.memory.num_objects, tracker._since_memory)
            bad_call(tracker, t)
            assert state == (tracker.frame_index, list(tracker.objects), tracker.memory.frames,
                             tracker.memory.writes, tracker.memory.num_objects, tracker._since_memory)
        out.append(tracker.step(frame, sequence.labels[0] if t == 0 else None))
    return np.stack(out)


@pytest.fixture(scope="module")
def clean_labels(stcn_package, sequence):
    tracker = _tracker(stcn_package)
    return np.stack([tracker.step(frame, sequence.labels[0] if t == 0 else None)
                     for t, frame in enumerate(sequence.frames)])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_float_frame_is_refused_before_any_state_changes(stcn_package, sequence, clean_labels, value):
    def bad(tracker, t):
        frame = sequence.frames[t].astype(np.float32) / 255
        frame[3, 4, 1] = value
        with pytest.raises(UserError, match="NaN or infinite") as err:
            tracker.step(frame)
        assert "1 value(s)" in str(err.value)

    # Frame 4 is a memory frame (mem_every=2): a NaN accepted there would blank every later frame.
    assert np.array_equal(_labels_with_a_bad_call_at(stcn_package, sequence, 4, bad), clean_labels)


def test_a_float_frame_in_0_to_255_is_refused_with_what_to_do(stcn_package, sequence, clean_labels):
    def bad(tracker, t):
        with pytest.raises(UserError, match=r"0\.\.1.*divide by 255"):
            tracker.step(sequence.frames[t].astype(np.float32))

    assert np.array_equal(_labels_with_a_bad_call_at(stcn_package, sequence, 3, bad), clean_labels)


def test_a_float_frame_just_outside_0_to_1_is_refused_with_its_exact_values_and_no_advice_to_divide(
        stcn_package, sequence, clean_labels):
    def bad(tracker, t):
        frame = sequence.frames[t].astype(np.float32) / 255
        frame[5, 6, 0] = np.nextafter(np.float32(1), np.float32(2))   # 1.0000001, printed "1" at 4 digits
        with pytest.raises(UserError, match=r"got 0\.0\.\.1\.0000001 .*np\.clip\(frame, 0, 1\)") as err:
            tracker.step(frame)
        assert "255" not in str(err.value)   # dividing these by 255 would be accepted, and track a black stream

    assert np.array_equal(_labels_with_a_bad_call_at(stcn_package, sequence, 3, bad), clean_labels)


def test_a_float_frame_in_0_to_1_gives_the_labels_of_the_uint8_frame(stcn_package, sequence, clean_labels):
    tracker = _tracker(stcn_package)
    labels = np.stack([tracker.step(frame.astype(np.float64) / 255, sequence.labels[0] if t == 0 else None)
                       for t, frame in enumerate(sequence.frames)])
    assert (labels == clean_labels).mean() > 0.999


def test_a_negative_float_frame_is_refused(stcn_package, sequence):
    tracker = _tracker(stcn_package)
    with pytest.raises(UserError, match=r"0\.\.1, got -0\.5"):
        tracker.step(sequence.frames[0].astype(np.float32) / 255 - 0.5)
    assert tracker.frame_index == -1


class _FailOnce:
    """Wraps a real backend's ``run`` so that the first run of ``graph`` raises (a lost device, an
    out-of-memory error); every other run is the real one."""

    def __init__(self, backend, graph):
        self.real_run, self.graph, self.failed = backend.run, graph, False

    def __call__(self, graph, inputs, outputs=None):
        if graph == self.graph and not self.failed:
            self.failed = True
            raise RuntimeError(f"injected failure in {graph}")
        return self.real_run(graph, inputs, outputs)


@pytest.mark.parametrize("graph, bad_index", [
    ("encode_value", 0),   # the annotated frame: objects would be added without memory
    ("encode_value", 4),   # a memory frame
    ("segment", 3),        # a plain frame
    ("encode_key", 5),
])
def test_a_backend_failure_mid_step_leaves_the_tracker_unchanged(stcn_package, sequence, clean_labels, graph,
                                                                 bad_index):
    def bad(tracker, t):
        tracker.backend.run = _FailOnce(tracker.backend, graph)
        with pytest.raises(RuntimeError, match="injected"):
            tracker.step(sequence.frames[t], sequence.labels[0] if t == 0 else None)
        assert tracker.backend.run.failed

    assert np.array_equal(_labels_with_a_bad_call_at(stcn_package, sequence, bad_index, bad), clean_labels)


def test_ctrl_c_right_after_a_step_s_memory_write_leaves_the_tracker_unchanged(stcn_package, sequence, clean_labels):
    # The frame stayed in the memory bank while the frame index and counters stayed behind: pushed again, the
    # same frame went into memory twice and every later frame read a different memory.
    def bad(tracker, t):
        with pytest.raises(KeyboardInterrupt), ctrl_c_at(Tracker._commit, "self.objects =") as fired:
            tracker.step(sequence.frames[t])
        assert fired

    assert np.array_equal(_labels_with_a_bad_call_at(stcn_package, sequence, 4, bad), clean_labels)


def test_ctrl_c_right_after_remove_objects_moved_the_values_leaves_the_objects_as_they_were(stcn_package, sequence):
    # The bank kept only the remaining object's values while the tracker still listed both: the removal tried
    # again then moved the wrong rows, and object 2 was tracked from object-less values.
    def run(interrupt: bool):
        tracker = _tracker(stcn_package)
        out = [tracker.step(frame, sequence.labels[0] if t == 0 else None) for t, frame in enumerate(sequence.frames[:5])]
        if interrupt:
            with pytest.raises(KeyboardInterrupt), ctrl_c_at(Tracker.remove_objects.__wrapped__, "self.objects =") as fired:
                tracker.remove_objects([1])
            assert fired
            assert tracker.objects == [1, 2] and tracker.memory.num_objects == 2
        tracker.remove_objects([1])
        assert tracker.objects == [2] and tracker.memory.num_objects == 1
        return np.stack(out + [tracker.step(frame) for frame in sequence.frames[5:]])

    assert np.array_equal(run(True), run(False))


def test_a_failure_while_adding_an_object_mid_stream_keeps_the_old_objects(stcn_package, sequence):
    tracker = _tracker(stcn_package)
    first = np.where(sequence.labels[0] == 1, 1, 0).astype(np.uint8)
    tracker.step(sequence.frames[0], first)
    tracker.step(sequence.frames[1])
    late = np.where(sequence.labels[2] == 2, 2, 0).astype(np.uint8)
    tracker.backend.run = _FailOnce(tracker.backend, "encode_value")
    with pytest.raises(RuntimeError):
        tracker.step(sequence.frames[2], late, objects=[2])
    assert tracker.objects == [1] and tracker.memory.num_objects == 1 and tracker.frame_index == 1
    labels = tracker.step(sequence.frames[2], late, objects=[2])
    assert tracker.objects == [1, 2] and tracker.memory.num_objects == 2
    assert np.array_equal(labels == 2, late == 2)


def _many_objects_mask(count, height=64, width=96):
    mask = np.zeros((height, width), np.uint8)
    for k in range(count):
        mask.reshape(-1)[k * 4:(k + 1) * 4] = k + 1   # a 4-pixel object each
    return mask


def test_objects_are_capped_at_32_by_default_with_an_error_saying_how_to_raise_it(stcn_package, sequence):
    tracker = _tracker(stcn_package)
    assert tracker.max_objects == 32
    with pytest.raises(UserError, match=r"33 tracked objects.*limit of 32.*max_objects=33"):
        tracker.step(sequence.frames[0], _many_objects_mask(33))
    assert tracker.objects == [] and tracker.frame_index == -1
    labels = tracker.step(sequence.frames[0], _many_objects_mask(32))
    assert tracker.objects == list(range(1, 33)) and labels.max() == 32


def test_the_object_cap_counts_objects_added_mid_stream(stcn_package, sequence):
    tracker = _tracker(stcn_package, max_objects=2)
    tracker.step(sequence.frames[0], sequence.labels[0])
    extra = np.zeros_like(sequence.labels[0])
    extra[:3, :3] = 7
    with pytest.raises(UserError, match=r"1 new object\(s\) would make 3 tracked objects.*limit of 2"):
        tracker.step(sequence.frames[1], extra)
    assert tracker.objects == [1, 2] and tracker.frame_index == 0
    tracker.remove_objects([1])
    tracker.step(sequence.frames[1], extra)
    assert tracker.objects == [2, 7]


def test_a_session_may_raise_the_object_cap(stcn_package, sequence):
    tracker = _tracker(stcn_package, max_objects=40)
    tracker.step(sequence.frames[0], _many_objects_mask(40))
    assert len(tracker.objects) == 40


@pytest.mark.parametrize("value", [0, -3, 2.5, "8", True])
def test_a_bad_object_cap_is_refused(stcn_package, value):
    with pytest.raises(UserError, match="max_objects"):
        _tracker(stcn_package, max_objects=value)


def _clip_stream_with_a_bad_push(clip_package, frames, at, bad):
    """Stream ``frames`` through a 3dc-seg session that gets ``bad(segmenter, frame)`` before frame ``at``
    is pushed, and through a clean one; returns both sessions' finished frames."""
    segmenter = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    reference = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    out, expected = [], []
    for t, frame in enumerate(frames):
        if t == at:
            bad(segmenter, frame)
            assert segmenter.frames_in == t
        out += segmenter.push(frame)
        expected += reference.push(frame)
    return out + segmenter.flush(), expected + reference.flush()


def test_a_non_finite_frame_does_not_enter_a_clip(clip_package):
    def bad(segmenter, frame):
        nan = frame.astype(np.float32) / 255
        nan[0, 0, 0] = np.nan
        with pytest.raises(UserError, match="NaN"):
            segmenter.push(nan)
        with pytest.raises(UserError, match="divide by 255"):
            segmenter.push(frame.astype(np.float32))

    frames = generate_sequence(3, num_frames=10, height=32, width=32, num_objects=1).frames
    out, expected = _clip_stream_with_a_bad_push(clip_package, frames, 6, bad)
    assert [d.index for d in out] == list(range(10))
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(out, expected))


class _InterruptedSums(dict):
    """The clip session's per-frame sums, raising Ctrl-C's KeyboardInterrupt at the seventh read of an
    entry: as if the interrupt landed while a clip's probabilities were being added (clip 0's frame 6,
    after frame 5, which clip 5 covers as well: a frame covered by one clip has the same mean counted twice)."""

    reads = 0

    def __getitem__(self, index):
        self.reads += 1
        if self.reads == 7:
            raise KeyboardInterrupt("injected interrupt")
        return super().__getitem__(index)


def _backend_failure(segmenter, frame):
    segmenter.backend.run = _FailOnce(segmenter.backend, "segment_clip")
    with pytest.raises(RuntimeError, match="injected"):
        segmenter.push(frame)
    assert segmenter.backend.run.failed


def _interrupt_while_adding(segmenter, frame):
    # the sums were added in place frame by frame: the frames added before the interrupt counted the clip
    # once then, and again when the same frame was pushed once more
    segmenter._sums = _InterruptedSums(segmenter._sums)
    with pytest.raises(KeyboardInterrupt):
        segmenter.push(frame)


@pytest.mark.parametrize("bad, bad_index", [
    (_backend_failure, 7), (_backend_failure, 12), (_backend_failure, 17),   # the runs of clips 0, 5 and 10
    (_interrupt_while_adding, 7),                                            # (L=8, overlap 3)
])
def test_a_failure_in_a_clip_leaves_the_session_unchanged(clip_package, bad, bad_index):
    # The failing push is undone: pushing the same frame again continues the stream exactly. Before, the
    # frame stayed counted, so every later index was off by one and the frames only the failed clip
    # covered came out with no clip at all (probability 0, background).
    frames = generate_sequence(3, num_frames=20, height=32, width=32, num_objects=1).frames
    out, expected = _clip_stream_with_a_bad_push(clip_package, frames, bad_index, bad)
    assert [d.index for d in out] == [d.index for d in expected] == list(range(20))
    for a, b in zip(out, expected):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-6, err_msg=f"frame {a.index}")


def _interrupt_while_finishing(segmenter, frame):
    # Ctrl-C after clip 0 ran, while its finished frames were made: the frame stayed counted and frames 0..4
    # were marked emitted, so they never came out and the same frame pushed again became frame 8
    from vosrt.sdk.clip_segmenter import ClipSegmenter

    with pytest.raises(KeyboardInterrupt), ctrl_c_at(ClipSegmenter.finish_frame, "prob = ") as fired:
        segmenter.push(frame)
    assert fired


def test_ctrl_c_while_a_push_s_finished_frames_are_made_leaves_the_session_unchanged(clip_package):
    frames = generate_sequence(3, num_frames=12, height=32, width=32, num_objects=1).frames
    out, expected = _clip_stream_with_a_bad_push(clip_package, frames, 7, _interrupt_while_finishing)
    assert [d.index for d in out] == [d.index for d in expected] == list(range(12))
    for a, b in zip(out, expected):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-6, err_msg=f"frame {a.index}")


def test_ctrl_c_in_a_flush_keeps_the_pending_frames_for_the_next_flush(clip_package):
    # The flush's frames were marked emitted before they were made: Ctrl-C there lost them all, and the next
    # flush returned nothing (the stream was not ended either)
    from vosrt.sdk.clip_segmenter import ClipSegmenter

    frames = generate_sequence(3, num_frames=10, height=32, width=32, num_objects=1).frames
    segmenter = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    reference = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    out = [d for f in frames for d in segmenter.push(f)]
    expected = [d for f in frames for d in reference.push(f)] + reference.flush()
    with pytest.raises(KeyboardInterrupt), ctrl_c_at(ClipSegmenter.finish_frame, "prob = ") as fired:
        segmenter.flush()
    assert fired and segmenter.frames_in == 10
    out += segmenter.flush()
    assert segmenter.frames_in == 0
    assert [d.index for d in out] == [d.index for d in expected] == list(range(10))
    for a, b in zip(out, expected):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-6, err_msg=f"frame {a.index}")


# An error inside one of ONNX Runtime's Python operators (the plugin form's CPU readout): raising it
# there would end the process (pybind11 cannot pass it through ONNX Runtime's C++ frames); it is raised
# by the graph's run instead, the session is unchanged, and the next frame segments as if it had not
# happened. In a child process, since the failure being guarded against is an abort.
ERROR_INSIDE_THE_OPERATOR = """
import numpy as np
import vosrt.sdk
from vosrt.sdk import cpu_ops
from vosrt.sdk.synthetic import generate_sequence

sequence = generate_sequence(5, num_frames=4, height=64, width=96, num_objects=2)
def labels(fail_at):
    tracker = vosrt.sdk.load("stcn-lite", threads=1, color="rgb", backend="onnxruntime")
    assert "plugin form" in tracker.backend.describe(), tracker.backend.describe()
    out = [tracker.step(sequence.frames[0], sequence.labels[0])]
    for t in (1, 2, 3):
        if t == fail_at:
            bodies = cpu_ops._state["bodies"]
            saved = dict(bodies)
            for key in bodies:
                bodies[key] = lambda feed, attributes: 1 / 0
            try:
                tracker.step(sequence.frames[t])
                raise SystemExit("the failing operator was not reported")
            except ZeroDivisionError:
                bodies.update(saved)
        out.append(tracker.step(sequence.frames[t]))
    return out

clean, after_failure = labels(None), labels(2)
assert all(np.array_equal(a, b) for a, b in zip(clean, after_failure))
print("ok")
"""


def test_an_error_inside_an_onnxruntime_python_operator_is_raised_by_the_run_and_the_stream_goes_on():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", ERROR_INSIDE_THE_OPERATOR], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


def test_ctrl_c_while_a_step_s_label_map_is_made_leaves_the_tracker_unchanged(stcn_package, sequence, clean_labels):
    # The label map was resized to the frame after the step's state changed: Ctrl-C there returned nothing but kept
    # the frame in the stream and the memory, so the same frame pushed again got the next index (frame 4, a memory
    # frame, went into memory twice) and every later frame read a different memory.
    def bad(tracker, t):
        with pytest.raises(KeyboardInterrupt), ctrl_c_at(Tracker._step, "out = box.labels_back") as fired:
            tracker.push(sequence.frames[t])
        assert fired and tracker.frames_in == t   # the helper then steps the same frame again

    assert np.array_equal(_labels_with_a_bad_call_at(stcn_package, sequence, 4, bad), clean_labels)


def test_ctrl_c_after_a_memory_write_into_a_full_ring_leaves_the_memory_as_it_was(stcn_package, sequence):
    # With every slot filled, the write evicts the oldest frame; the rollback restored the bank's bookkeeping but
    # not the evicted frame, so the frame pushed again read itself in memory instead of the evicted one.
    def run(interrupt: bool):
        tracker = _tracker(stcn_package, memory_capacity=3)   # mem_every=2: frames 0, 2, 4 fill it, 6 evicts 2
        out = []
        for t, frame in enumerate(sequence.frames):
            if interrupt and t == 8:
                with pytest.raises(KeyboardInterrupt), ctrl_c_at(Tracker._commit, "self.objects =") as fired:
                    tracker.step(frame)
                assert fired and tracker.memory.frames == 3 and tracker.frame_index == 7
            out.append(tracker.step(frame, sequence.labels[0] if t == 0 else None))
        return np.stack(out)

    assert np.array_equal(run(True), run(False))
