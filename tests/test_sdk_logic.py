"""The SDK's own logic checked against independent computations: the memory bank's object moves and
filled prefix, the mask merge, the letterbox geometry, short clips, reset(), the J/F summaries and the
DAVIS boundary rule, and the Tracker against a deliberately simple reference loop."""
import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk import metrics
from vosrt.sdk.backends import open_backend
from vosrt.sdk.letterbox import Letterbox
from vosrt.sdk.memory import MemoryBank
from vosrt.sdk.package import load_package
from vosrt.sdk.synthetic import generate_sequence


@pytest.fixture(scope="module")
def backend(stcn_package):
    return open_backend(load_package(stcn_package), "onnxruntime", threads=1)


# ------------------------------------------------------------------------------------------ memory bank

def _frame(value: float, objects: int, hw: int = 4, ck: int = 2, cv: int = 3):
    key = np.full((1, ck, 2, hw // 2), value, np.float32)                              # [1, Ck, h, w]
    values = np.stack([np.full((cv, 2, hw // 2), value + 10 * (k + 1), np.float32) for k in range(objects)])
    return key, values                                                                  # [O, Cv, h, w]


def test_set_objects_moves_each_kept_object_s_values_from_its_old_index(backend):
    bank = MemoryBank(backend, capacity=4, hw=4)
    bank.set_objects([], 3)
    bank.add(*_frame(1.0, 3))
    bank.add(*_frame(2.0, 3))
    before = backend.download(bank.read()[1])                                           # [3, Cv, N]
    bank.set_objects([2, 0], 3)                # new 0 <- old 2, new 1 <- old 0, new 2 is a new object
    after = backend.download(bank.read()[1])
    np.testing.assert_array_equal(after[0], before[2])
    np.testing.assert_array_equal(after[1], before[0])
    assert not after[2].any()
    assert not np.array_equal(before[2], before[0])                  # the objects' values do differ


def test_read_returns_exactly_the_filled_slots_until_the_bank_is_full(backend):
    bank = MemoryBank(backend, capacity=5, hw=4)
    bank.set_objects([], 1)
    keys = []
    for value in (1.0, 2.0, 3.0):
        key, values = _frame(value, 1)
        bank.add(key, values)
        keys.append(key.reshape(1, 2, 4))
        mem_key, mem_value = (backend.download(t) for t in bank.read())
        assert mem_key.shape == (1, 2, 4 * len(keys)) and mem_value.shape == (1, 3, 4 * len(keys))
        np.testing.assert_array_equal(mem_key, np.concatenate(keys, 2))


# ------------------------------------------------------------------------------------------ letterbox

@pytest.mark.parametrize("src", [(60, 120), (120, 60), (50, 30)])
def test_labels_back_crops_the_frame_out_of_the_padding(src):
    box = Letterbox(src, (32, 32))
    top, left, h, w = box.inner
    assert top > 0 or left > 0
    package_map = np.zeros((32, 32), np.uint8)
    package_map[top:top + h, left:left + w] = 1          # the frame's area; the padding stays 0
    assert (box.labels_back(package_map) == 1).all()
    frame_map = np.zeros(src, np.uint8)
    frame_map[: src[0] // 2] = 3                          # the top half of the frame
    round_trip = box.labels_back(box.labels(frame_map))
    assert (round_trip == frame_map).mean() > 0.95


# ------------------------------------------------------------------------------------------ tracker

def test_a_newly_given_object_s_mask_takes_its_pixels_from_the_old_objects(stcn_package):
    sequence = generate_sequence(9, num_frames=4, height=32, width=32, num_objects=1, num_distractors=0)
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb", mem_every=1)
    tracker.step(sequence.frames[0], np.ones((32, 32), np.uint8))          # object 1: the whole frame
    tracker.step(sequence.frames[1])
    new = np.zeros((32, 32), np.uint8)
    new[8:24, 8:24] = 2
    labels, prob = tracker.step(sequence.frames[2], new, objects=[2], return_probabilities=True)
    assert tracker.objects == [1, 2]
    inside = new == 2
    np.testing.assert_array_equal(prob[2][inside], 1.0)
    np.testing.assert_array_equal(prob[1][inside], 0.0)          # object 1 keeps nothing inside the new mask
    assert prob[1][~inside].max() > 0.0 and not prob[2][~inside].any()
    np.testing.assert_array_equal(labels[inside], 2)


def _reference_labels(backend, frames, first_mask, mem_every):
    """STCN written plainly on the package's graphs: frames at the package size, memory a growing list
    (never evicted), objects = the ids of the first mask."""
    ids = [int(i) for i in np.unique(first_mask) if i]
    images = [np.ascontiguousarray(f.astype(np.float32).transpose(2, 0, 1)[None] / 255) for f in frames]
    keys, values, out = [], [], []

    def remember(image, encoded, masks):
        value = backend.run("encode_value", {"image": image, "f16": encoded["f16"], "masks": masks})["value"]
        keys.append(backend.download(encoded["key"]).reshape(1, encoded_key_dim(encoded), -1))
        values.append(backend.download(value).reshape(len(ids), backend.download(value).shape[1], -1))

    def encoded_key_dim(encoded):
        return backend.download(encoded["key"]).shape[1]

    since = 0
    for t, image in enumerate(images):
        encoded = {k: backend.download(v) for k, v in backend.run("encode_key", {"image": image}).items()}
        if t == 0:
            masks = np.stack([(first_mask == i).astype(np.float32) for i in ids])[:, None]
            remember(image, encoded, masks)
            out.append(first_mask.copy())
            continue
        result = backend.run("segment", {"mem_key": np.concatenate(keys, 2), "mem_value": np.concatenate(values, 2),
                                         "query_key": encoded["key"], "f16_thin": encoded["f16_thin"],
                                         "f8": encoded["f8"], "f4": encoded["f4"]})
        index = backend.download(result["labels"])[0]
        out.append(np.array([0] + ids, np.uint8)[index])
        since += 1
        if since == mem_every:
            prob = backend.download(result["prob"])                                   # [1 + O, 1, H, W]
            remember(image, encoded, np.ascontiguousarray(prob[1:]))
            since = 0
    return np.stack(out)


def test_the_tracker_matches_a_plain_reference_loop(stcn_package):
    sequence = generate_sequence(12, num_frames=14, height=32, width=32, num_objects=2, num_distractors=1)
    tracker = vosrt.sdk.load(stcn_package, threads=1, color="rgb", mem_every=3, memory_capacity=20)
    labels = np.stack([tracker.step(f, sequence.labels[0] if t == 0 else None) for t, f in enumerate(sequence.frames)])
    expected = _reference_labels(tracker.backend, sequence.frames, sequence.labels[0], mem_every=3)
    assert tracker.memory.frames == 5                     # frames 0, 3, 6, 9, 12
    assert (labels == expected).mean() > 0.999
    assert len(np.unique(expected[1:])) > 1               # the reference is not all background


def test_tracker_reset_starts_a_new_video_exactly_like_a_fresh_tracker(stcn_package):
    first = generate_sequence(1, num_frames=8, height=32, width=32, num_objects=2)
    second = generate_sequence(2, num_frames=8, height=32, width=32, num_objects=1)
    used = vosrt.sdk.load(stcn_package, threads=1, color="rgb", mem_every=2)
    fresh = vosrt.sdk.load(stcn_package, threads=1, color="rgb", mem_every=2)
    for t, frame in enumerate(first.frames):
        used.step(frame, first.labels[0] if t == 0 else None)
    used.reset()
    assert used.objects == [] and used.memory.empty and used.frame_index == -1
    assert not used.step(second.frames[0]).any()                     # no object until a mask is given
    used.reset()
    for t, frame in enumerate(second.frames):
        mask = second.labels[0] if t == 0 else None
        np.testing.assert_array_equal(used.step(frame, mask), fresh.step(frame, mask))
    assert used.objects == [1]


# ------------------------------------------------------------------------------------------ clips

def test_a_stream_shorter_than_a_clip_is_padded_with_its_last_frame(clip_package):
    frames = generate_sequence(6, num_frames=3, height=32, width=32, num_objects=1).frames
    segmenter = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    done = [d for f in frames for d in segmenter.push(f)] + segmenter.flush()
    assert [d.index for d in done] == [0, 1, 2]
    padded = frames + [frames[-1]] * (segmenter.clip_length - 3)
    clip = np.ascontiguousarray(np.stack([f.astype(np.float32).transpose(2, 0, 1) / 255 for f in padded], 1)[None])
    backend = segmenter.backend
    prob = backend.download(backend.run("segment_clip", {"clip": clip})["prob"])[0, 0]
    for d in done:
        np.testing.assert_allclose(d.probability, prob[d.index], atol=1e-5)
    zero_padded = np.zeros_like(clip)
    zero_padded[:, :, :3] = clip[:, :, :3]
    other = backend.download(backend.run("segment_clip", {"clip": zero_padded})["prob"])[0, 0]
    assert np.abs(other[:3] - prob[:3]).max() > 1e-4              # the padding matters, so the check can fail


def test_clip_segmenter_reset_drops_the_stream_and_the_next_starts_at_frame_zero(clip_package):
    frames = generate_sequence(7, num_frames=12, height=32, width=32, num_objects=1).frames
    used = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    fresh = vosrt.sdk.load(clip_package, threads=1, color="rgb")
    for frame in frames[:5]:
        assert used.push(frame[::-1].copy()) == []                   # nothing emitted yet (latency 7)
    used.reset()
    assert used.flush() == []                                          # the dropped frames never come out
    out = [d for f in frames for d in used.push(f)] + used.flush()
    expected = [d for f in frames for d in fresh.push(f)] + fresh.flush()
    assert [d.index for d in out] == list(range(12))
    for a, b in zip(out, expected):
        np.testing.assert_array_equal(a.probability, b.probability)


# ------------------------------------------------------------------------------------------ metrics

def test_dataset_j_is_the_mean_of_per_object_means_not_of_pooled_frames():
    square = np.zeros((16, 16), np.uint8)
    square[4:12, 4:12] = 1
    short_truth = [square] * 4                      # 2 scored frames, object found on both: J = 1
    long_truth = [square] * 10                      # 8 scored frames, object missed on all: J = 0
    scores = (metrics.evaluate_sequence(short_truth, short_truth, "short")
              + metrics.evaluate_sequence([square] + [np.zeros_like(square)] * 9, long_truth, "long"))
    assert [len(s.j) for s in scores] == [2, 8]
    summary = metrics.summarize(scores)
    assert summary["J"] == pytest.approx(0.5)       # pooled frames would give 2 / 10
    assert summary["F"] == pytest.approx(0.5)
    assert summary["J&F"] == pytest.approx(0.5)


def test_boundary_of_a_mask_in_the_bottom_right_corner_follows_the_davis_rule():
    mask = np.zeros((4, 4), np.uint8)
    mask[2:, 2:] = 1
    expected = np.array([[0, 0, 0, 0],
                         [0, 1, 1, 1],
                         [0, 1, 0, 0],
                         [0, 1, 0, 0]], bool)       # worked by hand from davis2017-evaluation's seg2bmap
    np.testing.assert_array_equal(metrics.boundary_map(mask), expected)


def test_f_of_a_mask_touching_the_border_counts_no_boundary_along_the_image_edge():
    truth = np.zeros((40, 40), np.uint8)
    truth[20:, :] = 1                               # the bottom half, touching the left, right, bottom edges
    edge = metrics.boundary_map(truth)
    assert edge[19].sum() + edge[20].sum() == 40 and edge[21:].sum() == 0
    shifted = np.zeros_like(truth)
    shifted[30:, :] = 1                             # 10 rows off: beyond the tolerance of ceil(0.008*56.6)=1
    assert metrics.boundary_measure(shifted, truth) == 0.0
