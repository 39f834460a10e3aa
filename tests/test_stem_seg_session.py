"""STEm-Seg InstanceSegmenter through real ONNX Runtime sessions: emission schedule, stable track ids,
new ids for new objects, frame-size output, bad input, constant memory, and a real exported package."""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
import pytest

import vosrt.sdk
from vosrt.sdk import UserError
from vosrt.sdk.instance_segmenter import InstanceSegmenter, upsample_tracks

from interrupts import ctrl_c_at
from sdk_packages import colour_embedding_package, tiny_package

L = 8
COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(scope="module")
def colour_packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour")
    return {overlap: colour_embedding_package(root / f"o{overlap}", overlap=overlap) for overlap in (0, 4, 7)}


def scene(length, objects, size=64):
    """RGB frames (black) with squares: ``objects`` {name: (first, last, top, left0, period)}; a 12-pixel
    square of colour ``name`` on frames first..last, starting at column left0 and moving 4 pixels right
    every ``period`` frames (0: still), so it stays aligned to the graph's 4-pixel cells. Returns
    (frames, {name: [mask per frame or None]}), each mask the square as the session gives it back: its 3×3
    cells brought to the frame as the published output generators bring a mask back (:func:`_published_upsample`),
    which takes off the square's corner pixels."""
    frames = [np.zeros((size, size, 3), np.uint8) for _ in range(length)]
    masks = {name: [None] * length for name in objects}
    for name, (first, last, top, left0, period) in objects.items():
        for t in range(first, min(last, length - 1) + 1):
            left = left0 + (4 * ((t - first) // period) if period else 0)
            frames[t][top:top + 12, left:left + 12] = COLOURS[name]
            cells = np.zeros((size // 4, size // 4), np.uint32)
            cells[top // 4:top // 4 + 3, left // 4:left // 4 + 3] = 1
            masks[name][t] = _published_upsample(cells, (size, size), (0, 0, size, size), (size, size)) == 1
    return frames, masks


def run(segmenter, frames):
    done = [d for f in frames for d in segmenter.push(f)]
    return done + segmenter.flush()


@pytest.mark.parametrize("overlap", [0, 4, 7])
@pytest.mark.parametrize("length", [1, L - 1, L, L + 1, 3 * L + 2])
def test_every_frame_is_emitted_once_in_order(colour_packages, length, overlap):
    segmenter = vosrt.sdk.load(colour_packages[overlap], threads=1, color="rgb")
    assert isinstance(segmenter, InstanceSegmenter) and segmenter.latency == L - 1
    frames, _ = scene(length, {"red": (0, 100, 8, 4, 4)})
    emitted = []
    for t, frame in enumerate(frames):
        for done in segmenter.push(frame):
            emitted.append(done.index)
            assert overlap <= t - done.index <= L - 1
    emitted += [d.index for d in segmenter.flush()]
    assert emitted == list(range(length))


def test_a_track_keeps_its_id_across_five_clips_and_a_new_object_gets_a_new_id(colour_packages):
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    # red moves right 2 pixels a frame over 24 frames (clips at 0, 4, 8, 12, 16: five clips); green appears at 10
    frames, masks = scene(24, {"red": (0, 23, 4, 0, 2), "green": (10, 23, 40, 16, 0)})
    done = run(segmenter, frames)
    assert [d.index for d in done] == list(range(24))
    red_ids = {int(np.bincount(d.labels[masks["red"][d.index]]).argmax()) for d in done}
    green_ids = {int(np.bincount(d.labels[masks["green"][d.index]]).argmax()) for d in done if d.index >= 10}
    assert red_ids == {1} and green_ids == {2}
    for d in done:
        assert d.labels.dtype == np.uint32
        present = set(np.unique(d.labels)) - {0}
        assert present == ({1, 2} if d.index >= 10 else {1})
        assert set(d.objects) == present
        assert all(o["category"] == 1 and o["score"] > 0.9 for o in d.objects.values())
        assert np.array_equal(d.labels == 1, masks["red"][d.index])


def test_ids_are_never_reused_after_a_track_ends_or_a_new_stream_starts(colour_packages):
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    frames, masks = scene(24, {"red": (0, 9, 4, 4, 0), "blue": (16, 23, 4, 4, 0)})   # blue where red was
    done = run(segmenter, frames)
    ids = [set(np.unique(d.labels)) - {0} for d in done]
    assert all(i == {1} for i in ids[:10]) and all(not i for i in ids[10:16]) and all(i == {2} for i in ids[16:])
    again = run(segmenter, scene(8, {"red": (0, 7, 4, 4, 0)})[0])   # a new stream after flush
    assert all(set(np.unique(d.labels)) - {0} == {3} for d in again)


def test_labels_come_back_at_the_frame_size(colour_packages):
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    frames, masks = scene(9, {"green": (0, 8, 20, 20, 0)}, size=64)
    big = [np.repeat(np.repeat(f, 2, 0), 3, 1) for f in frames]            # 128×192: letterboxed
    done = run(segmenter, big)
    for d in done:
        assert d.labels.shape == (128, 192) and d.probability.shape == (128, 192)
        assert set(np.unique(d.labels)) == {0, 1}
        # the square occupies rows 40..63 of the frame (×2) and sits in the middle third of the columns
        rows, cols = np.nonzero(d.labels)
        assert abs(rows.min() - 40) <= 2 and abs(rows.max() - 63) <= 2


@pytest.mark.parametrize("size", [(3, 3), (5, 7), (9, 5)])
def test_a_frame_s_objects_are_the_tracks_in_its_labels(colour_packages, size):
    # Frames far smaller than the package: the 1/4-scale map holds thin tracks (the blurred edges between
    # colours) that the resize to the frame drops; objects listed them although no pixel had their id.
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    frames = []
    for _ in range(8):
        frame = np.zeros((*size, 3), np.uint8)
        frame[1, 1], frame[1, 2], frame[-1, -1] = COLOURS["red"], COLOURS["green"], COLOURS["blue"]
        frames.append(frame)
    for d in run(segmenter, frames):
        assert set(d.objects) == {int(i) for i in np.unique(d.labels) if i}
        assert len(d.objects) == 3


def test_bad_input_raises_user_error_and_the_stream_continues(colour_packages):
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    frames, _ = scene(10, {"red": (0, 9, 8, 8, 0)})
    out = [d for f in frames[:5] for d in segmenter.push(f)]
    with pytest.raises(UserError, match="mask"):
        segmenter.push(frames[5], mask=np.zeros((64, 64), np.uint8))
    with pytest.raises(UserError):
        segmenter.push(np.zeros((64, 64), np.uint8))
    out += [d for f in frames[5:] for d in segmenter.push(f)] + segmenter.flush()
    assert [d.index for d in out] == list(range(10))


@pytest.mark.parametrize("where", ["backend", "after linking", "at the clip's last line"])
def test_a_failure_in_a_clip_leaves_the_tracks_unchanged(colour_packages, where):
    # "after linking": a Ctrl-C just after the linker gave the clip its tracks left the linker advanced, so
    # the clip, run again, was linked to itself (the shared frames' own tracks): the blue square, new in that
    # clip, got id 4 (its first try had taken 3)
    frames, masks = scene(20, {"red": (0, 19, 4, 0, 2), "green": (6, 19, 40, 16, 0), "blue": (9, 19, 40, 44, 0)})
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    out = []
    for t, frame in enumerate(frames):
        if t == 11:   # clip 4 fails (a lost device, or an interrupt); the same frame is pushed again
            obj, name = (segmenter.backend, "run") if where == "backend" else (segmenter.linker, "link")
            real = getattr(obj, name)

            def fail(*args):
                if where == "backend":
                    raise RuntimeError("injected failure")
                real(*args)
                raise KeyboardInterrupt("injected failure")
            if where == "at the clip's last line":   # Ctrl-C between the clip's pending frames and its stop
                with pytest.raises(KeyboardInterrupt), ctrl_c_at(InstanceSegmenter.process_clip,
                                                                  "self._clip_stop = last + 1") as fired:
                    segmenter.push(frame)
                assert fired
            else:
                setattr(obj, name, fail)
                with pytest.raises((RuntimeError, KeyboardInterrupt), match="injected"):
                    segmenter.push(frame)
                setattr(obj, name, real)
            assert segmenter.frames_in == 11
        out += segmenter.push(frame)
    out += segmenter.flush()
    assert [d.index for d in out] == list(range(20))
    for d in out:
        assert np.array_equal(d.labels == 1, masks["red"][d.index])
        assert np.array_equal(d.labels == 2, masks["green"][d.index] if d.index >= 6 else np.zeros((64, 64), bool))
        assert np.array_equal(d.labels == 3, masks["blue"][d.index] if d.index >= 9 else np.zeros((64, 64), bool))


@pytest.mark.parametrize("call", ["push", "flush"])
def test_ctrl_c_while_finished_frames_are_made_loses_no_frame_and_no_track(colour_packages, call):
    # The frames were marked emitted before they were made: Ctrl-C in between lost them (and, in a push, the
    # frame stayed counted, so the same frame pushed again came out twice, one index later)
    frames, masks = scene(14, {"red": (0, 13, 4, 0, 2), "green": (6, 13, 40, 16, 0)})
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    out = []
    for t, frame in enumerate(frames):
        if t == 11 and call == "push":   # clip 4's push emits frames 4..7
            with pytest.raises(KeyboardInterrupt), ctrl_c_at(InstanceSegmenter.finish_frame, "prob =") as fired:
                segmenter.push(frame)
            assert fired and segmenter.frames_in == 11
        out += segmenter.push(frame)
    if call == "flush":
        with pytest.raises(KeyboardInterrupt), ctrl_c_at(InstanceSegmenter.finish_frame, "prob =") as fired:
            segmenter.flush()
        assert fired and segmenter.frames_in == 14
    out += segmenter.flush()
    assert [d.index for d in out] == list(range(14))
    for d in out:
        assert np.array_equal(d.labels == 1, masks["red"][d.index])
        assert np.array_equal(d.labels == 2, masks["green"][d.index] if d.index >= 6 else np.zeros((64, 64), bool))


def test_a_closed_session_says_it_is_closed(colour_packages):
    frames, _ = scene(3, {"red": (0, 2, 8, 8, 0)})
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    segmenter.push(frames[0])
    segmenter.close()
    for call in (lambda: segmenter.push(frames[1]), segmenter.flush):
        with pytest.raises(UserError, match="closed.*vosrt.sdk.load"):   # was KeyError: 'embed_clip'
            call()
    segmenter.close()


def test_frames_of_ever_new_sizes_keep_a_bounded_number_of_letterboxes(colour_packages):
    # One letterbox per frame size was kept for good: a stream of crops of changing sizes grew without end.
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    frames, masks = scene(40, {"red": (0, 39, 8, 8, 0)})
    done = []
    for t, frame in enumerate(frames):
        done += segmenter.push(np.ascontiguousarray(frame[:64 - t % 20, :64 - t]))   # 40 sizes, top-left kept
    done += segmenter.flush()
    assert len(segmenter._letterboxes) <= 16
    assert [d.index for d in done] == list(range(40))
    assert all(d.labels.shape == (64 - d.index % 20, 64 - d.index) for d in done)
    assert np.array_equal(done[0].labels > 0, masks["red"][0])


@pytest.mark.parametrize("settings", [{"overlap": 8}, {"min_seediness": 1.5}, {"foreground_threshold": -0.1},
                                      {"max_instances": 0}, {"link_iou": 2}, {"mem_every": 3}])
def test_bad_settings_are_refused(colour_packages, settings):
    with pytest.raises(UserError):
        vosrt.sdk.load(colour_packages[4], threads=1, **settings)


def test_numpy_numbers_are_taken_as_settings(colour_packages):
    # np.int64(0) (a value read from an array) was refused as "expected a probability in [0, 1]"
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, min_seediness=np.int64(1),
                               foreground_threshold=np.float32(0.5))
    assert (segmenter.min_seediness, segmenter.foreground_threshold) == (1.0, 0.5)


@pytest.mark.parametrize("overlap", [8, 12])
def test_a_bad_overlap_in_the_manifest_is_refused_naming_the_manifest(tmp_path, overlap):
    # The error said "overlap: expected an integer in 0..7 (clip length 8), got 8" to a caller who passed no
    # overlap (vosrt run without --overlap): it now names the manifest's setting and how to override it.
    folder = colour_embedding_package(tmp_path / "pkg", overlap=overlap)
    with pytest.raises(UserError, match=r"manifest\.json: streaming\.overlap: expected an integer in 0\.\.7 .*got "
                                        rf"{overlap}; correct it there, or override it with overlap="):
        vosrt.sdk.load(folder, threads=1)
    assert vosrt.sdk.load(folder, threads=1, overlap=3).overlap == 3


@pytest.mark.parametrize("name, value, says", [("min_seediness", 1.5, "a probability in \\[0, 1\\], got 1.5"),
                                               ("foreground_threshold", -0.2, "a probability in \\[0, 1\\], got -0.2"),
                                               ("max_instances", 0, "a positive integer, got 0"),
                                               ("link_iou", 2.0, "a probability in \\[0, 1\\], got 2.0")])
def test_a_bad_clustering_setting_in_the_manifest_is_refused_naming_the_manifest(tmp_path, name, value, says):
    # The error said "min_seediness: expected a probability in [0, 1], got 1.5" to a caller who passed no
    # min_seediness (as overlap's did): it names the manifest's setting and how to override it.
    folder = colour_embedding_package(tmp_path / "pkg")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["streaming"][name] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=rf"manifest\.json: streaming\.{name}: expected {says}; correct it there, "
                                        rf"or override it with {name}="):
        vosrt.sdk.load(folder, threads=1)
    assert vosrt.sdk.load(folder, threads=1, **{name: 1 if name == "max_instances" else 0.5})


def test_the_manifest_s_link_iou_is_the_session_s_default(tmp_path):
    # The class docstring lists link_iou among the settings that default to the manifest's, but the session
    # took 0.1 whatever streaming.link_iou said.
    folder = colour_embedding_package(tmp_path / "pkg")
    assert vosrt.sdk.load(folder, threads=1).linker.link_iou == 0.1
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["streaming"]["link_iou"] = 0.6
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert vosrt.sdk.load(folder, threads=1).linker.link_iou == 0.6
    assert vosrt.sdk.load(folder, threads=1, link_iou=0.2).linker.link_iou == 0.2


def _published_upsample(tracks, size, inner, src):
    """The published output generators' way back (stemseg/inference/output_utils/youtube_vis.py), in torch:
    each instance's 0/1 mask bilinear to the input size, cropped, bilinear to the frame, above 0.5."""
    top, left, h, w = inner
    labels = np.zeros(src, np.uint32)
    for track in (int(i) for i in np.unique(tracks) if i):
        mask = torch.from_numpy((tracks == track).astype(np.float32))[None, None]
        mask = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)[:, :, top:top + h, left:left + w]
        mask = F.interpolate(mask, size=src, mode="bilinear", align_corners=False)[0, 0].numpy()
        labels[mask > 0.5] = track
    return labels


def test_tracks_come_back_to_the_frame_as_the_published_output_generators_bring_masks_back():
    # the id map was resized nearest-neighbour twice: thin instances came back blocky (IoU 0.74 with the
    # published masks at a radius of 0.8 map pixels, 0.91 at 1.5)
    yy, xx = np.mgrid[:12, :20]
    tracks = np.zeros((12, 20), np.uint32)
    tracks[(yy - 5) ** 2 + (xx - 6) ** 2 <= 1.5 ** 2] = 3
    tracks[(yy - 6) ** 2 + (xx - 13) ** 2 <= 3.2 ** 2] = 7
    tracks[0, 19] = 9                                      # one map pixel in the letterbox padding
    for inner, src in (((4, 0, 40, 80), (90, 180)), ((4, 0, 40, 80), (40, 80)), ((4, 0, 40, 80), (27, 55))):
        labels, _ = upsample_tracks(tracks, (48, 80), inner, src)
        expected = _published_upsample(tracks, (48, 80), inner, src)
        assert labels.dtype == np.uint32 and labels.shape == src
        assert (labels != expected).mean() <= 0.001, (inner, src)
        assert set(np.unique(labels)) == {0, 3, 7}
    # each instance resized over its own box only: the same labels as resizes of the whole maps
    import cv2

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:30, :54]
    many = np.zeros((30, 54), np.uint32)
    for k in range(1, 21):
        many[(yy - rng.integers(0, 30)) ** 2 + (xx - rng.integers(0, 54)) ** 2 <= rng.uniform(0.3, 6) ** 2] = k
    for inner, src in (((10, 0, 100, 216), (300, 648)), ((10, 0, 100, 216), (61, 131)), ((0, 0, 120, 216), (120, 216))):
        whole = np.zeros(src, np.uint32)
        for k in (int(i) for i in np.unique(many) if i):
            up = cv2.resize((many == k).astype(np.float32), (216, 120), interpolation=cv2.INTER_LINEAR)
            up = np.ascontiguousarray(up[inner[0]:inner[0] + inner[2], inner[1]:inner[1] + inner[3]])
            whole[cv2.resize(up, (src[1], src[0]), interpolation=cv2.INTER_LINEAR) > 0.5] = k
        assert np.array_equal(upsample_tracks(many, (120, 216), inner, src)[0], whole), (inner, src)
    old = np.kron(tracks, np.ones((4, 4), np.uint32))       # the nearest-neighbour ×4 of before
    assert (upsample_tracks(tracks, (48, 80), (0, 0, 48, 80), (48, 80))[0] != old).sum() > 20


def _rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS read from /proc (Linux)")
def test_2000_frames_run_in_constant_memory(colour_packages):
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    frames, _ = scene(40, {"red": (0, 39, 4, 0, 4), "green": (5, 30, 40, 8, 0)})
    rss, emitted, ids = [], 0, set()
    for t in range(2000):
        done = segmenter.push(frames[t % len(frames)])
        emitted += len(done)
        ids.update(int(i) for d in done for i in np.unique(d.labels))
        if t >= 500 and t % 50 == 0:
            rss.append(_rss_bytes())
    assert emitted + len(segmenter.flush()) == 2000
    assert len(segmenter._pending) == 0
    assert max(rss) <= rss[0] * 1.05, (rss[0], max(rss))
    assert len(ids) > 2   # the loop restarts the scene: tracks end and new ids keep coming


@pytest.fixture(scope="module")
def lite_package():
    return tiny_package("stem-seg")


@pytest.mark.slow
def test_exported_lite_package_streams_and_backends_agree(lite_package):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (80, 80, 3), dtype=np.uint8) for _ in range(10)]
    results = {}
    for backend in ("onnxruntime", "torch"):
        segmenter = vosrt.sdk.load(lite_package, backend=backend, threads=1, color="rgb", min_seediness=0.3)
        results[backend] = run(segmenter, frames)
        assert [d.index for d in results[backend]] == list(range(10))
    for a, b in zip(results["onnxruntime"], results["torch"]):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)
        assert np.mean(a.labels != b.labels) < 0.01


def test_finished_frames_carry_what_the_published_outputs_score_and_classify_tracks_by(colour_packages):
    # per track and frame: its 1/4-scale pixels, the sums over them of the clip-averaged category
    # log-probabilities (background left out) and of the pixels' argmax votes, which VisWriter and MotsWriter
    # turn into the published score, category and KITTI-MOTS class
    segmenter = vosrt.sdk.load(colour_packages[4], threads=1, color="rgb")
    frames, _ = scene(12, {"red": (0, 11, 4, 0, 0)})
    frames = [np.where(f > 0, 153, 0).astype(np.uint8) for f in frames]      # seediness 0.6: category 1 at 0.6
    done = run(segmenter, frames)
    assert len(done) == 12
    for d in done:
        info = d.objects[1]
        assert info["area"] == 9                                     # the square's 3×3 cells
        assert info["votes"].tolist() == [9]
        assert info["log_prob_sum"] == pytest.approx([9 * np.log(0.6)], rel=1e-4)
        assert info["category"] == 1 and info["score"] == pytest.approx(0.6, rel=1e-4)
