"""The SDK used as an application embeds it: stream() arguments, sources shared between calls, sessions
reused across videos (real ONNX Runtime sessions on the tiny packages of conftest)."""
from __future__ import annotations

import re

import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk.streaming import stream
from vosrt.sdk.synthetic import generate_sequence
from vosrt.sdk.video import PngSink


@pytest.fixture(scope="module")
def sequence():
    return generate_sequence(11, num_frames=12, height=32, width=48, num_objects=1, num_distractors=0)


def _recording(frames, pulled):
    """A camera-like generator that records which frames were taken from it."""
    for position, frame in enumerate(frames):
        pulled.append(position)
        yield frame


@pytest.mark.parametrize("argument, value, says", [
    ("masks", "first mask", "masks={0: mask}"),
    ("masks", "list of masks", "got list"),
    ("sinks", "one sink", "sinks=[sink]"),
    ("sinks", "folder", "PngSink(folder)"),
    ("sinks", [print, "out"], "sinks[1]"),
    ("max_frames", 2.5, "got 2.5"),
    ("max_frames", "3", "got '3'"),
    ("max_frames", -1, "got -1"),
    ("on_result", "print", "on_result"),
])
def test_a_stream_argument_of_the_wrong_kind_is_refused_by_name_before_a_frame_is_read(
        stcn_package, sequence, tmp_path, argument, value, says):
    # masks=first_mask (not {0: first_mask}) failed as "'numpy.ndarray' object has no attribute 'get'", a sink
    # not in a list as "'PngSink' object is not iterable", max_frames="3" as a comparison TypeError: none named
    # the argument, and the first frame had been taken from the source already.
    session = vosrt.sdk.load(stcn_package, threads=1, color="rgb")
    values = {"first mask": sequence.labels[0], "list of masks": [sequence.labels[0]],
              "one sink": PngSink(tmp_path / "masks"), "folder": str(tmp_path / "masks")}
    pulled = []
    arguments = {"masks": {0: sequence.labels[0]}, argument: values.get(value, value) if isinstance(value, str)
                 else value}
    with pytest.raises(vosrt.sdk.UserError, match=argument) as err:
        stream(session, _recording(sequence.frames, pulled), **arguments)
    assert says in str(err.value)
    assert pulled == [] and session.frames_in == 0
    stats = stream(session, sequence.frames, [], masks={0: sequence.labels[0]})   # the session is as it was
    assert stats.frames == len(sequence.frames)


def test_a_source_that_is_not_an_iterable_of_frames_is_refused_by_name(stcn_package):
    session = vosrt.sdk.load(stcn_package, threads=1)
    for source, says in ((None, "NoneType"), ("video.mp4", "open_source")):
        with pytest.raises(vosrt.sdk.UserError, match="source: expected an iterable of frames") as err:
            stream(session, source)
        assert says in str(err.value)


@pytest.mark.parametrize("family", ["stcn", "3dc-seg"])
def test_max_frames_takes_no_frame_past_the_last_so_a_source_read_on_loses_none(family, stcn_package,
                                                                                  clip_package, sequence):
    # A warm-up of 4 frames with flush=False, then the rest of the same camera: the warm-up call took a fifth
    # frame from the source to find it was past max_frames and dropped it, so the second call began a frame late.
    session = vosrt.sdk.load(stcn_package if family == "stcn" else clip_package, threads=1, color="rgb")
    masks = {0: sequence.labels[0]} if session.takes_mask else None
    pulled = []
    camera = _recording(sequence.frames, pulled)
    first = stream(session, camera, masks=masks, max_frames=4, flush=False, close=False)
    assert first.pushed == 4 and pulled == [0, 1, 2, 3]
    rest = stream(session, camera, keep_results=True)
    assert rest.pushed == len(sequence.frames) - 4 == rest.frames
    assert [done.index for done in rest.results] == list(range(4, len(sequence.frames)))
    pulled.clear()
    assert stream(session, _recording(sequence.frames, pulled), max_frames=0).pushed == 0 and pulled == []


@pytest.mark.parametrize("key, says", [("00000", "a frame name?"), ("0", "got '0'"), (-1, "got -1"), (0.5, "got 0.5")])
def test_masks_keyed_by_anything_but_a_frame_position_are_refused_before_a_frame_is_read(stcn_package, sequence,
                                                                                          key, says):
    # masks={"00000": mask} (keyed by the frame's name) matched no position: the tracker got no mask and gave
    # background for every frame, without a word
    pulled = []
    with vosrt.sdk.load(stcn_package) as tracker:
        with pytest.raises(vosrt.sdk.UserError, match=rf"masks: keys are frame indices.*{re.escape(says)}"):
            stream(tracker, _recording(sequence.frames, pulled), masks={key: sequence.labels[0]})
        assert pulled == [] and tracker.frames_in == 0
        # a whole number of another type is a position (numpy's, or a float holding one)
        for position in (np.int64(0), 0.0):
            stats = stream(tracker, sequence.frames[:2], masks={position: sequence.labels[0]}, keep_results=True)
            assert stats.results[0].labels.any()


@pytest.mark.parametrize("name", ["video", "instance_metrics", "streaming", "masks"])
def test_the_modules_the_readme_names_as_vosrt_sdk_x_are_there_after_import_vosrt_sdk(name):
    # The README hands a stream vosrt.sdk.video.open_source(...) and vosrt.sdk.video's PngSink, and names
    # vosrt.sdk.instance_metrics.VisWriter / MotsWriter as sinks; after `import vosrt.sdk` alone (a fresh
    # interpreter: this process has imported them already) the first two were AttributeError.
    import subprocess
    import sys

    code = (f"import vosrt.sdk; module = vosrt.sdk.{name}; assert module.__name__ == 'vosrt.sdk.{name}'; "
            "assert not hasattr(vosrt.sdk, 'no_such_module'); import sys; assert 'torch' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
