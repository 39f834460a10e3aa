"""Host-side instance clustering (the STEm-Seg rule) and track linking across clips."""
import numpy as np
import pytest

from vosrt.sdk.instances import TrackLinker, cluster, hungarian, mask_ious

T, H, W = 4, 12, 16


def planted(seed=0):
    """Three instances whose embeddings sit in tight blobs around distinct centres, each with one clearly
    seediest pixel (std 0.005 around centres ≥ 1.2 apart, bandwidth of std 0.05); background embeddings
    are random and outside the foreground."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((T, H, W), np.int32)
    truth[:, 1:5, 1:6] = 1
    truth[:, 6:11, 2:7] = 2
    truth[1:, 3:9, 9:15] = 3                          # appears from frame 1
    centers = {1: [0.0, 0.0, 0.0], 2: [1.0, 1.0, 0.0], 3: [-1.0, 0.5, 1.0]}
    embeddings = rng.normal(0, 3.0, (3, T, H, W)).astype(np.float32)   # background: anywhere
    seediness = np.full((T, H, W), 0.1, np.float32)
    for k, c in centers.items():
        where = truth == k
        embeddings[:, where] = np.array(c, np.float32)[:, None] + rng.normal(0, 0.005, (3, where.sum()))
        seediness[where] = 0.6 + 0.3 * rng.random(where.sum())
        first = tuple(np.argwhere(where)[0])
        seediness[first] = 0.95 + 0.01 * k
    bandwidths = np.full((3, T, H, W), 1 / 0.05 ** 2, np.float32)      # std 0.05 per dimension
    return embeddings, bandwidths, seediness, truth


def relabel_by_truth(labels, truth):
    """Map each predicted label to the truth id it overlaps most (to compare partitions)."""
    out = np.zeros_like(labels)
    for k in np.unique(labels[labels > 0]):
        ids, counts = np.unique(truth[labels == k], return_counts=True)
        out[labels == k] = ids[np.argmax(counts)]
    return out


def test_clustering_recovers_planted_instances_exactly():
    embeddings, bandwidths, seediness, truth = planted()
    result = cluster(embeddings, bandwidths, seediness, truth > 0, min_seediness=0.5)
    assert result.count == 3
    assert np.array_equal(relabel_by_truth(result.labels, truth), truth)
    assert len(np.unique(result.labels)) == 4                        # one label per instance, no splits
    # seeded in order of seediness: instance 3's seed (0.98) first
    assert np.array_equal(result.labels[truth == 3], np.full((truth == 3).sum(), 1))
    np.testing.assert_allclose(result.seediness, [0.98, 0.97, 0.96])


def test_clustering_is_deterministic_and_labels_only_foreground():
    embeddings, bandwidths, seediness, truth = planted(3)
    fg = truth > 0
    first = cluster(embeddings, bandwidths, seediness, fg, min_seediness=0.5)
    again = cluster(embeddings.copy(), bandwidths.copy(), seediness.copy(), fg.copy(), min_seediness=0.5)
    assert np.array_equal(first.labels, again.labels)
    assert np.array_equal(first.centers, again.centers)
    assert not first.labels[~fg].any()


def test_ties_in_seediness_resolve_to_the_first_pixel():
    embeddings = np.zeros((2, 1, 1, 4), np.float32)
    embeddings[0, 0, 0] = [0, 0, 10, 10]
    seediness = np.full((1, 1, 4), 0.9, np.float32)
    result = cluster(embeddings, np.ones_like(embeddings), seediness, np.ones((1, 1, 4), bool), 0.5)
    assert result.labels.tolist() == [[[1, 1, 2, 2]]]


def test_clustering_stops_below_min_seediness_and_at_max_instances():
    embeddings, bandwidths, seediness, truth = planted()
    assert cluster(embeddings, bandwidths, seediness, truth > 0, min_seediness=0.99).count == 0
    limited = cluster(embeddings, bandwidths, seediness, truth > 0, min_seediness=0.5, max_instances=2)
    assert limited.count == 2
    assert not limited.labels[truth == 1].any()                    # the least seedy instance is left out


def test_secondary_assignment_takes_pixels_between_the_thresholds():
    # 1-D: seed at 0 with bandwidth 1; p = exp(-|e|/2): e=1 → 0.61 (primary), e=2 → 0.37 (secondary), e=3 → 0.22 (none)
    embeddings = np.array([0.0, 1.0, 2.0, 3.0], np.float32).reshape(1, 1, 1, 4)
    seediness = np.array([0.9, 0.1, 0.1, 0.1], np.float32).reshape(1, 1, 4)
    result = cluster(embeddings, np.ones_like(embeddings), seediness, np.ones((1, 1, 4), bool), 0.5)
    assert result.labels.ravel().tolist() == [1, 1, 1, 0]


def test_hungarian_matches_brute_force():
    from itertools import permutations
    rng = np.random.default_rng(0)
    for rows, cols in [(3, 3), (2, 5), (5, 2), (4, 4), (1, 1)]:
        cost = rng.random((rows, cols))
        pairs = hungarian(cost)
        assert len(pairs) == min(rows, cols)
        best = min(sum(cost[r, c] for r, c in zip(range(rows), p)) if rows <= cols else
                   sum(cost[r, c] for r, c in zip(p, range(cols)))
                   for p in permutations(range(max(rows, cols)), min(rows, cols)))
        assert sum(cost[r, c] for r, c in pairs) == pytest.approx(best)


def test_mask_ious_counts_pixels_over_all_frames():
    a = np.array([[[1, 1, 0, 2]], [[1, 0, 0, 2]]])
    b = np.array([[[3, 3, 3, 0]], [[0, 0, 0, 4]]])
    ious = mask_ious(a, [1, 2], b, [3, 4])
    np.testing.assert_allclose(ious, [[2 / 4, 0], [0, 1 / 2]])


def box_clip(start, length, objects, frames_total=None):
    """Instance labels of one clip: ``objects`` {clip label: (first frame, last frame, column)} — a
    2-pixel-wide vertical bar in column ``column`` on frames first..last (absolute indices)."""
    labels = np.zeros((length, 6, 20), np.int32)
    for label, (first, last, column) in objects.items():
        for t in range(length):
            if first <= start + t <= last:
                labels[t, :, column:column + 2] = label
    return labels


def test_an_object_crossing_five_clips_keeps_one_id():
    linker = TrackLinker()
    ids = []
    for k in range(5):
        start = k * 4                                     # clip length 8, overlap 4
        clip = box_clip(start, 8, {1 + k % 2: (0, 100, 3 + k)})     # moves; its clip label alternates
        mapping = linker.link(clip, 0 if k == 0 else 4)
        ids.append(mapping[1 + k % 2])
    assert ids == [1] * 5


def test_an_appearing_object_gets_a_new_id_and_ids_are_never_reused():
    linker = TrackLinker()
    first = linker.link(box_clip(0, 8, {1: (0, 100, 2)}), 0)
    second = linker.link(box_clip(4, 8, {1: (9, 100, 12), 2: (0, 100, 2)}), 4)   # new object from frame 9
    assert first == {1: 1}
    assert second == {2: 1, 1: 2}
    third = linker.link(box_clip(8, 8, {1: (0, 100, 12)}), 4)                    # object 1 left
    assert third == {1: 2}
    fourth = linker.link(box_clip(12, 8, {1: (0, 100, 2)}), 4)                   # object at the old place
    assert fourth == {1: 3}                                                      # no overlap: fresh id, not 1
    linker.new_stream()
    assert linker.link(box_clip(0, 8, {1: (0, 100, 2)}), 0) == {1: 4}


def test_a_weak_overlap_below_link_iou_starts_a_new_track():
    linker = TrackLinker(link_iou=0.5)
    linker.link(box_clip(0, 8, {1: (0, 100, 2)}), 0)
    shifted = linker.link(box_clip(4, 8, {1: (0, 100, 3)}), 4)   # IoU 1/3 on the shared frames
    assert shifted == {1: 2}
