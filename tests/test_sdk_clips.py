"""3DC-Seg ClipSegmenter on a real exported package: emission schedule, overlap averaging, parity, bad input."""
import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.synthetic import generate_sequence


@pytest.fixture(scope="module")
def frames():
    return generate_sequence(4, num_frames=23, height=32, width=32, num_objects=1, num_distractors=0).frames


@pytest.fixture(scope="module")
def segmenters(clip_package):
    return {overlap: vosrt.sdk.load(clip_package, overlap=overlap, threads=1, color="rgb") for overlap in (0, 3, 7)}


@pytest.mark.parametrize("overlap", [0, 3, 7])
@pytest.mark.parametrize("length", [1, 7, 8, 9, 23])
def test_every_frame_is_emitted_once_in_order_with_the_documented_latency(segmenters, frames, length, overlap):
    segmenter = segmenters[overlap]
    clip_length, hop = segmenter.clip_length, segmenter.clip_length - overlap
    assert segmenter.latency == clip_length - 1
    emitted = []   # (frame index, index of the push that emitted it, or None for flush)
    for t in range(length):
        emitted += [(done.index, t) for done in segmenter.push(frames[t])]
    emitted += [(done.index, None) for done in segmenter.flush()]
    assert [index for index, _ in emitted] == list(range(length))
    for index, pushed in emitted:
        # frame i is final once clip floor(i / hop), ending at frame floor(i / hop) * hop + L - 1, ran
        due = (index // hop) * hop + clip_length - 1
        assert pushed == (due if due < length else None), (index, pushed, due)
        if pushed is not None:
            assert overlap <= pushed - index <= segmenter.latency


def test_emitted_frames_have_frame_size_labels_and_probabilities(clip_package, frames):
    segmenter = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    big = [np.ascontiguousarray(np.repeat(np.repeat(f, 2, 0), 3, 1)) for f in frames[:9]]   # 64x96
    done = [d for f in big for d in segmenter.push(f)] + segmenter.flush()
    assert len(done) == 9
    for d in done:
        assert d.labels.shape == (64, 96) and d.labels.dtype == np.uint8
        assert d.probability.shape == (64, 96) and d.probability.dtype == np.float32
        assert np.array_equal(d.labels, (d.probability > 0.5).astype(np.uint8))


def test_overlapping_clip_probabilities_are_averaged(clip_package, frames):
    segmenter = vosrt.sdk.load(clip_package, overlap=6, threads=1, color="rgb")
    backend, clip_length = segmenter.backend, segmenter.clip_length
    done = {d.index: d for f in frames[:12] for d in segmenter.push(f)}
    done.update({d.index: d for d in segmenter.flush()})
    # Recompute by hand: clips start at 0, 2, 4 (hop 2) and the flush clip at 12 - 8 = 4 is the same one.
    images = np.stack([f.astype(np.float32).transpose(2, 0, 1) / 255 for f in frames[:12]], 1)[None]  # [1,3,T,H,W]
    sums, counts = np.zeros((12, 32, 32)), np.zeros(12)
    for start in (0, 2, 4):
        prob = backend.download(backend.run("segment_clip", {"clip": np.ascontiguousarray(
            images[:, :, start:start + clip_length])})["prob"])[0, 0]
        sums[start:start + clip_length] += prob
        counts[start:start + clip_length] += 1
    for index in range(12):
        np.testing.assert_allclose(done[index].probability, sums[index] / counts[index], atol=1e-5)


def test_onnxruntime_and_torch_agree(clip_package, frames):
    labels = {}
    for backend in ("onnxruntime", "torch"):
        # one clip (8 frames, no overlap): the PyTorch D2Conv3D reference is slow on a CPU
        segmenter = vosrt.sdk.load(clip_package, backend=backend, color="rgb", overlap=0,
                                   threads=1 if backend == "onnxruntime" else None)
        done = [d for f in frames[:8] for d in segmenter.push(f)] + segmenter.flush()
        labels[backend] = np.stack([d.labels for d in done])
    assert (labels["onnxruntime"] == labels["torch"]).mean() >= 0.999


def test_bad_frames_raise_user_error_and_the_stream_continues(clip_package, frames):
    segmenter = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    segmenter.push(frames[0])
    for bad in (frames[1].astype(np.int16), frames[1][:, :, :1], frames[1][None]):
        with pytest.raises(UserError):
            segmenter.push(bad)
    for f in frames[1:8]:
        segmenter.push(f)
    done = segmenter.flush()
    assert segmenter.frames_in == 0 and done[-1].index == 7


@pytest.mark.parametrize("overlap", [8, -1, 2.5, True])
def test_an_overlap_outside_0_to_clip_length_is_refused(clip_package, overlap):
    with pytest.raises(UserError, match="overlap"):
        vosrt.sdk.load(clip_package, overlap=overlap)


def test_a_new_stream_after_flush_starts_at_frame_zero(clip_package, frames):
    segmenter = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    for f in frames[:3]:
        segmenter.push(f)
    assert [d.index for d in segmenter.flush()] == [0, 1, 2]
    for f in frames[:2]:
        segmenter.push(f)
    assert [d.index for d in segmenter.flush()] == [0, 1]


def test_io_binding_path_matches_host_tensors(clip_package, frames):
    results = []
    for bound in (False, True):
        segmenter = vosrt.sdk.load(clip_package, overlap=5, threads=1, color="rgb", io_binding=bound)
        done = [d for f in frames[:11] for d in segmenter.push(f)] + segmenter.flush()
        results.append(np.stack([d.probability for d in done]))
    np.testing.assert_allclose(results[0], results[1], atol=1e-6)
