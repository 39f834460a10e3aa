"""STCN Tracker on real exported packages: backend parity, objects added/removed, bounded memory, bad input."""
import os

import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.synthetic import generate_sequence, write_davis, write_video
from vosrt.sdk.video import open_source

from media import suggested_commands


@pytest.fixture(scope="module")
def sequence():
    return generate_sequence(7, num_frames=20, height=64, width=96, num_objects=2, num_distractors=1)


def track(tracker, frames, first_mask):
    return np.stack([tracker.step(frame, first_mask if i == 0 else None) for i, frame in enumerate(frames)])


# the mp4 case (about 12 s) runs in the slow tier: the same comparison on frames read from a video
@pytest.mark.parametrize("container", [pytest.param("mp4", marks=pytest.mark.slow), "davis"])
def test_onnxruntime_and_torch_backends_give_the_same_labels(stcn_package, sequence, tmp_path, container):
    if container == "mp4":
        source = open_source(write_video(tmp_path / "clip.mp4", sequence))
    else:
        write_davis(tmp_path / "davis", "synth", sequence)
        source = open_source(tmp_path / "davis" / "JPEGImages" / "480p" / "synth")
        assert np.array_equal(source.first_mask(), sequence.labels[0])
    frames = list(source)
    assert len(frames) == len(sequence) and not source.stopped_early
    outputs = {}
    for backend in ("onnxruntime", "torch"):
        tracker = vosrt.sdk.load(stcn_package, backend=backend, threads=1 if backend == "onnxruntime" else None)
        outputs[backend] = track(tracker, frames, sequence.labels[0])
    assert outputs["onnxruntime"].shape == (len(frames), 64, 96)
    agreement = (outputs["onnxruntime"] == outputs["torch"]).mean()
    assert agreement >= 0.999, agreement


def test_io_binding_path_matches_host_tensors(stcn_package, sequence):
    # The CUDA execution provider's code path (device-resident OrtValues, helper graphs for bank writes)
    # run on the CPU provider, so CI checks it without a GPU.
    options = dict(backend="onnxruntime", threads=1, mem_every=2, memory_capacity=4, top_k=3, color="rgb")
    host = vosrt.sdk.load(stcn_package, **options)
    bound = vosrt.sdk.load(stcn_package, io_binding=True, **options)
    frames = sequence.frames[:12]
    expected = track(host, frames, sequence.labels[0])
    actual = track(bound, frames, sequence.labels[0])
    assert np.array_equal(expected, actual)
    assert bound.memory.frames == 4 and bound.memory.writes == 6


def test_io_binding_runs_the_package_top_k_on_the_graphs_own_session(stcn_package, sequence):
    # The tracker feeds top_k every frame; on IOBinding a fed initializer is set at session creation, so the
    # package's own top_k made a second segment session (the graph's weights twice in device memory) for the
    # value the graph already holds. Another top_k still gets its session.
    default = vosrt.sdk.load(stcn_package, io_binding=True, backend="onnxruntime", threads=1, form="portable",
                             color="rgb")
    track(default, sequence.frames[:3], sequence.labels[0])
    assert default.backend._variants == {}
    other = vosrt.sdk.load(stcn_package, io_binding=True, backend="onnxruntime", threads=1, form="portable",
                           color="rgb", top_k=3)
    track(other, sequence.frames[:3], sequence.labels[0])
    assert len(other.backend._variants) == 1


def test_the_annotated_frame_returns_the_given_mask_at_frame_size(stcn_package, sequence):
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb")
    labels = tracker.step(sequence.frames[0], sequence.labels[0])
    assert labels.dtype == np.uint8 and labels.shape == (64, 96)
    assert np.array_equal(labels, sequence.labels[0])
    assert tracker.objects == [1, 2]


def test_frames_before_any_mask_are_background(stcn_package, sequence):
    tracker = vosrt.sdk.load(stcn_package, threads=1)
    labels, prob = tracker.step(sequence.frames[0], return_probabilities=True)
    assert not labels.any() and prob.shape == (1, 64, 96)


def test_object_added_at_frame_10_is_tracked_from_then_on_and_a_removed_one_disappears(stcn_package, sequence):
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb", mem_every=1)
    first = np.where(sequence.labels[0] == 1, 1, 0).astype(np.uint8)
    for t in range(10):
        labels, prob = tracker.step(sequence.frames[t], first if t == 0 else None, return_probabilities=True)
        assert tracker.objects == [1] and prob.shape == (2, 64, 96)
        assert not np.isin(labels, [2, 5]).any()

    late = np.where(sequence.labels[10] == 2, 5, 0).astype(np.uint8)   # the second shape, as object 5
    labels = tracker.add_objects(sequence.frames[10], late, objects=[5])
    assert tracker.objects == [1, 5]
    assert np.array_equal(labels == 5, late == 5)
    assert tracker.memory.num_objects == 2
    for t in range(11, 16):
        labels, prob = tracker.step(sequence.frames[t], return_probabilities=True)
        assert prob.shape == (3, 64, 96)
        np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-3)
        # the probabilities' axis order is the objects' order: background, object 1, object 5
        by_probability = np.array([0, 1, 5], np.uint8)[prob.argmax(0)]
        assert (labels == by_probability).mean() > 0.9

    tracker.remove_objects([1])
    assert tracker.objects == [5]
    for t in range(16, 20):
        labels, prob = tracker.step(sequence.frames[t], return_probabilities=True)
        assert prob.shape == (2, 64, 96)
        assert not (labels == 1).any()
        assert (labels == np.array([0, 5], np.uint8)[prob.argmax(0)]).mean() > 0.9
    with pytest.raises(UserError, match="not tracked"):
        tracker.remove_objects([1])


def _rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS read from /proc (Linux)")
def test_3000_frames_run_in_constant_memory_with_capacity_8(stcn_package):
    sequence = generate_sequence(11, num_frames=30, height=32, width=32, num_objects=2, num_distractors=0)
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb", mem_every=1, memory_capacity=8)
    tracker.step(sequence.frames[0], sequence.labels[0])
    buffers = None
    rss = []
    for t in range(1, 3000):
        tracker.step(sequence.frames[t % len(sequence.frames)])
        if t == 8:
            buffers = (id(tracker.memory.keys), id(tracker.memory.values), tracker.memory.allocations,
                       tracker.memory.nbytes())
        if t >= 1000 and t % 50 == 0:
            rss.append(_rss_bytes())
    memory = tracker.memory
    assert (id(memory.keys), id(memory.values), memory.allocations, memory.nbytes()) == buffers
    assert memory.frames == 8 and memory.writes == 3000
    assert memory.nbytes() == 4 * 8 * 4 * (64 + 2 * 64)   # capacity × h·w × (Ck + O·Cv) floats
    assert max(rss) <= rss[0] * 1.05 and min(rss) >= rss[0] * 0.95, (rss[0], min(rss), max(rss))


def test_first_annotated_frame_stays_and_the_rest_is_fifo(stcn_package, sequence):
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb", mem_every=1, memory_capacity=3)
    slots = []
    tracker.step(sequence.frames[0], sequence.labels[0])
    original_add = tracker.memory.add

    def recording_add(key, value):
        slots.append(original_add(key, value))
        return slots[-1]

    tracker.memory.add = recording_add
    for t in range(1, 7):
        tracker.step(sequence.frames[t])
    assert slots == [1, 2, 1, 2, 1, 2]   # slot 0 (frame 0) is never overwritten


class TestBadInputKeepsTheSessionUsable:
    @pytest.fixture(scope="class")
    def tracker(self, stcn_package):
        return vosrt.sdk.load(stcn_package, threads=1, color="rgb")

    @pytest.fixture(scope="class")
    def frame_and_mask(self, sequence):
        return sequence.frames[0], sequence.labels[0]

    @pytest.mark.parametrize("make, message", [
        (lambda f, m: (f.astype(np.int32), m), "dtype"),
        (lambda f, m: (f.astype(np.float16), m), r"dtype.*float16 \(convert with frame.astype\(np.float32\)\)"),
        (lambda f, m: (f.astype(np.uint16) * 257, m), r"uint16 \(a 16-bit image\? convert with \(frame >> 8\)"),
        (lambda f, m: (f[:, :, :2], m), r"\[H, W, 3\]"),
        (lambda f, m: (np.dstack([f, f[:, :, :1]]), m), "alpha"),
        (lambda f, m: (f[:, :, 0], m), "grey"),
        (lambda f, m: (f, m[:32]), "differs from the frame"),
        (lambda f, m: (f, np.zeros_like(m)), "no object"),
        (lambda f, m: (f, m.astype(np.float32) * 0.5), "integer"),
        (lambda f, m: (f, m.astype(np.int32) + 300), "0..255"),
        (lambda f, m: ("frame.png", m), "numpy array"),
    ])
    def test_bad_frame_or_mask_raises_user_error(self, tracker, frame_and_mask, make, message):
        frame, mask = make(*frame_and_mask)
        with pytest.raises(UserError, match=message):
            tracker.step(frame, mask)
        labels = tracker.step(*frame_and_mask)          # still usable afterwards
        assert np.array_equal(labels, frame_and_mask[1])

    @pytest.mark.parametrize("objects, message", [(["a"], "integers"), ([1.5], "integers"), ([0], "1..255"),
                                                  ([9], "not in the mask"), ([1, 1], "repeated"),
                                                  (1, r"objects=\[1\]"), (np.int64(2), r"objects=\[2\]"),
                                                  ([], "empty list names no object"), ("1", "list of object ids")])
    def test_bad_object_ids_raise_user_error(self, tracker, frame_and_mask, objects, message):
        index = tracker.frame_index
        with pytest.raises(UserError, match=message):
            tracker.step(*frame_and_mask, objects=objects)
        assert tracker.frame_index == index             # nothing happened
        assert tracker.step(frame_and_mask[0]).shape == frame_and_mask[1].shape


def test_remove_objects_takes_a_list_and_says_so(stcn_package, sequence):
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb")
    tracker.step(sequence.frames[0], sequence.labels[0])
    with pytest.raises(UserError, match=r"list of object ids.*objects=\[1\]"):   # was a bare TypeError
        tracker.remove_objects(1)
    tracker.remove_objects([1])
    assert tracker.objects == [2]


def test_object_ids_may_come_as_a_set(stcn_package, sequence):
    # a set of ids (e.g. `set(np.unique(mask)) - {0}`) was refused as "not a list"; its order is ascending
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb")
    tracker.step(sequence.frames[0], sequence.labels[0], objects={2, 1})
    assert tracker.objects == [1, 2]
    tracker.remove_objects(frozenset({2}))
    assert tracker.objects == [1]
    with pytest.raises(UserError, match="integers 1..255"):
        tracker.remove_objects({"1"})


def test_a_closed_tracker_says_it_is_closed(stcn_package, sequence):
    with vosrt.sdk.load(stcn_package, threads=1, color="rgb") as tracker:
        tracker.step(sequence.frames[0], sequence.labels[0])
    for call in (lambda: tracker.step(sequence.frames[1]), lambda: tracker.push(sequence.frames[1]),
                 lambda: tracker.remove_objects([1]), tracker.flush,   # flush returned [] as if open
                 tracker.reset):   # reset did nothing, silently
        with pytest.raises(UserError, match="closed.*vosrt.sdk.load"):   # was KeyError: 'encode_key'
            call()
    tracker.close()   # closing again does nothing


def test_closing_a_session_releases_its_memory_bank_and_clip_window(stcn_package, clip_package, sequence):
    # A closed session kept its buffers (device memory on a GPU backend) for as long as the object lived: a
    # `with` block's variable, a session kept in a list while the next one opened.
    import gc
    import weakref
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb")
    tracker.step(sequence.frames[0], sequence.labels[0])
    bank = [weakref.ref(tracker.memory.keys), weakref.ref(tracker.memory.values)]
    segmenter = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    segmenter.push(sequence.frames[0])
    clip = weakref.ref(segmenter.clip)
    tracker.close()
    segmenter.close()
    gc.collect()
    assert [ref() is None for ref in (*bank, clip)] == [True, True, True]
    assert tracker.memory.nbytes() == 0
    for call in (lambda: tracker.step(sequence.frames[1]), lambda: segmenter.push(sequence.frames[1]), segmenter.flush,
                 segmenter.reset):
        with pytest.raises(UserError, match="closed"):
            call()


@pytest.mark.parametrize("options, message", [({"mem_every": 0}, "mem_every"), ({"memory_capacity": 0}, "memory_capacity"),
                                              ({"memory_capacity": 1}, "memory_capacity: expected at least 2 frames"),
                                              ({"overlap": 3}, "not a setting"), ({"color": "bgra"}, "color"),
                                              ({"backend": "tensorflow"}, "backend")])
def test_bad_session_options_raise_user_error(stcn_package, options, message):
    with pytest.raises(UserError, match=message):
        vosrt.sdk.load(stcn_package, **options)


def test_a_call_from_another_thread_during_a_step_waits_for_the_step(stcn_package, sequence):
    # A UI thread removing an object while the capture thread steps: the removal ran in the middle of the step,
    # whose end then put the removed object back (with zero values in memory) and lost the removal.
    import threading

    from vosrt.sdk.backends import open_backend
    from vosrt.sdk.backends.base import DelegatingBackend
    from vosrt.sdk.package import load_package

    class CallDuringEncode(DelegatingBackend):
        other = None   # called from another thread while the next encode_key runs

        def run(self, graph, inputs, outputs=None):
            if graph == "encode_key" and self.other is not None:
                thread, self.other = threading.Thread(target=self.other), None
                thread.start()
                thread.join(0.5)   # the old code finished the removal here; now it waits for the step to end
                self.threads.append(thread)
            return super().run(graph, inputs, outputs)

    package = load_package(stcn_package)
    backend = CallDuringEncode(open_backend(package, "onnxruntime", threads=1))
    backend.threads = []
    tracker = vosrt.sdk.open_session(backend, package, color="rgb", mem_every=1)
    alone = vosrt.sdk.load(stcn_package, threads=1, color="rgb", mem_every=1)
    for t in range(3):
        mask = sequence.labels[0] if t == 0 else None
        np.testing.assert_array_equal(tracker.step(sequence.frames[t], mask), alone.step(sequence.frames[t], mask))
    assert tracker.objects == [1, 2]
    backend.other = lambda: tracker.remove_objects([1])
    np.testing.assert_array_equal(tracker.step(sequence.frames[3]), alone.step(sequence.frames[3]))
    backend.threads[0].join()
    alone.remove_objects([1])                                    # the removal comes after the step
    assert tracker.objects == [2] and tracker.memory.num_objects == 1
    for frame in sequence.frames[4:6]:
        np.testing.assert_array_equal(tracker.step(frame), alone.step(frame))


@pytest.mark.parametrize("name", ["mem_every", "top_k", "memory_capacity"])
@pytest.mark.parametrize("value", [2.5, 3.0, "3", "x", True, float("nan"), float("inf")])
def test_a_setting_that_is_not_a_whole_number_is_refused_not_truncated(stcn_package, name, value):
    # mem_every=2.5 ran as 2, "3" as 3 and True as 1; "x", nan and inf raised a bare ValueError / OverflowError
    with pytest.raises(UserError, match=f"{name}: expected .*whole number") as err:
        vosrt.sdk.load(stcn_package, threads=1, **{name: value})
    assert str(err.value).endswith(f"got {value!r}")


@pytest.mark.parametrize("value", ["x", "0.3", None])
def test_a_clip_threshold_that_is_not_a_number_is_refused(clip_package, value):
    with pytest.raises(UserError, match=r"threshold: expected a probability in \(0, 1\)"):   # was ValueError, TypeError
        vosrt.sdk.load(clip_package, threads=1, threshold=value)


def test_a_folder_without_manifest_is_not_a_package(tmp_path):
    with pytest.raises(UserError, match="manifest.json"):
        vosrt.sdk.load(tmp_path)


def _onnxruntime_has_cuda() -> bool:
    try:  # asked at collection: a machine without onnxruntime must still collect this module
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _can_export() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


@pytest.mark.gpu
@pytest.mark.skipif(not _onnxruntime_has_cuda(), reason="onnxruntime-gpu is not installed")
@pytest.mark.skipif(not _can_export(), reason="the package fixture exports ONNX: needs onnx and onnxscript")
def test_cuda_execution_provider_keeps_the_bank_on_the_device_and_matches_the_cpu(stcn_package, sequence):
    # decided at collection: the fixtures (an export) are not built for a test that cannot run
    cpu = vosrt.sdk.load(stcn_package, backend="onnxruntime", device="cpu", color="rgb")
    gpu = vosrt.sdk.load(stcn_package, backend="onnxruntime", device="cuda", color="rgb")
    assert gpu.backend.bound
    expected = track(cpu, sequence.frames, sequence.labels[0])
    actual = track(gpu, sequence.frames, sequence.labels[0])
    assert gpu.memory.keys.value.device_name().lower() == "cuda"
    assert (expected == actual).mean() >= 0.999


@pytest.mark.slow   # runs the export it suggests (about 15 s)
def test_a_top_k_the_graph_holds_fixed_is_refused_with_an_export_that_takes_it(tmp_path, monkeypatch):
    # said "use the portable form", which vosrt run has no flag to choose (and TensorRT has no portable form)
    monkeypatch.chdir(tmp_path)   # the suggested export writes into the working folder
    import shutil

    import onnx

    from sdk_packages import tiny_checkpoint, tiny_package
    from vosrt.cli import main
    from vosrt.sdk.package import load_package

    folder = tmp_path / "pkg"
    shutil.copytree(tiny_package("stcn", ("portable",)), folder)
    # a segment graph exported without the top_k input (top_k a plain constant, as an older export wrote it)
    model = onnx.load(str(folder / "segment.portable.onnx"))
    top_k = next(i for i in model.graph.input if i.name == "top_k")
    model.graph.input.remove(top_k)
    onnx.save(model, str(folder / "segment.portable.onnx"))
    assert load_package(folder).checkpoint == tiny_checkpoint("stcn")
    with pytest.raises(UserError) as refused:
        vosrt.sdk.load(folder, backend="onnxruntime", top_k=3)
    message = str(refused.value)
    assert message.startswith("top_k=3 (command line: --top-k 3): the segment graph of") and "portable" not in message
    [export] = suggested_commands(message)
    assert export[:2] == ["export", "stcn"] and export[export.index("--top-k") + 1] == "3"
    assert export[export.index("--out") + 1] == "pkg-top3"   # not beside the package: it may be an installed one
    assert main(export + ["--forms", "portable", "--no-check"]) == 0
    tracker = vosrt.sdk.load(export[export.index("--out") + 1], backend="onnxruntime", top_k=3)
    assert tracker.top_k == 3
    tracker.close()


def test_on_tensorrt_the_fixed_top_k_refusal_offers_onnxruntime_and_engines_built_with_it():
    # TensorRT is not needed to word the refusal; it is what the tracker raises on engines (tier 3 runs it)
    from vosrt.sdk.package import load_package
    from vosrt.sdk.tracker import fixed_top_k_message

    package = load_package("stcn-lite")
    message = fixed_top_k_message(package, "tensorrt", 5)
    assert "--backend onnxruntime" in message and "backend='onnxruntime'" in message and "portable" not in message
    export, build = suggested_commands(message)
    assert export[:2] == ["export", "stcn"] and export[export.index("--top-k") + 1] == "5"
    assert export[export.index("--checkpoint") + 1] == str(package.checkpoint)
    assert export[export.index("--size") + 1:export.index("--size") + 3] == [str(package.height), str(package.width)]
    assert build == ["build", export[export.index("--out") + 1]]


def test_a_session_top_k_beyond_the_cpu_operators_runs_the_portable_form_or_is_refused_at_load(sequence, capfd):
    # load("stcn-lite", top_k=100) (vosrt run --top-k 100) opened the plugin form, whose CPU operators read at most
    # 64 entries, and failed with a KernelError at the second frame, once the memory held more than 100 entries
    from vosrt.sdk import cpu_ops

    try:
        cpu_ops.load_cpu_ops()
    except Exception as err:
        pytest.skip(f"the CPU operators cannot be built here: {err}")
    tracker = vosrt.sdk.load("stcn-lite", top_k=100, threads=1)
    portable = vosrt.sdk.load("stcn-lite", top_k=100, threads=1, form="portable")
    assert tracker.backend.forms["segment"] == "portable"
    assert "top_k=100" in capfd.readouterr().err
    frames = sequence.frames[:4]
    assert np.array_equal(track(tracker, frames, sequence.labels[0]), track(portable, frames, sequence.labels[0]))
    # the operators' own limit, and top_k 0 (every entry), keep the plugin form
    assert vosrt.sdk.load("stcn-lite", top_k=64, threads=1).backend.forms["segment"] == "plugin"
    assert vosrt.sdk.load("stcn-lite", top_k=0, threads=1).backend.forms["segment"] == "plugin"
    with pytest.raises(UserError, match=r"top_k=100: .*at most 64 .*; ask for top_k 64 or less, or 0 \(every entry\); "
                                        r"or run the portable form \(form='portable'\)"):
        vosrt.sdk.load("stcn-lite", top_k=100, threads=1, form="plugin")
