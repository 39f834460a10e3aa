"""Box -> mask: GrabCut on generated clips against their true masks, and the replaceable segmenter."""
from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from vosrt.sdk.errors import UserError
from vosrt.sdk.live.select import (box_around, clip_box, grabcut_box, load_segmenter, masks_from_boxes,
                                   parse_box_select)
from vosrt.sdk.synthetic import generate_sequence

from live_support import bounding_box

SEEDS = range(1000, 1008)


def _first_frames():
    for seed in SEEDS:
        seq = generate_sequence(seed, num_frames=1, num_objects=2)
        yield cv2.cvtColor(seq.frames[0], cv2.COLOR_RGB2BGR), seq.labels[0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_grabcut_masks_from_boxes_match_the_true_masks_of_generated_clips():
    ious = []
    for frame, labels in _first_frames():
        ids = [int(i) for i in np.unique(labels) if i]
        found = masks_from_boxes(frame, [(i, bounding_box(labels == i)) for i in ids])
        ious += [_iou(found == i, labels == i) for i in ids]
    assert len(ious) >= 12
    assert np.mean(ious) >= 0.8, ious


def test_grabcut_finds_more_than_the_box_alone():
    frame, labels = next(_first_frames())
    box = bounding_box(labels == 1)
    whole_box = np.zeros(labels.shape, bool)
    x, y, w, h = box
    whole_box[y:y + h, x:x + w] = True
    assert _iou(grabcut_box(frame, box), labels == 1) > _iou(whole_box, labels == 1)


def test_a_box_over_a_flat_region_falls_back_to_the_box():
    frame = np.full((60, 80, 3), 90, np.uint8)
    found = grabcut_box(frame, (10, 10, 20, 15))
    assert found.sum() > 0 and not found[:10].any() and not found[:, :10].any()


def test_a_user_segmenter_replaces_grabcut():
    frame = np.zeros((40, 50, 3), np.uint8)
    ellipse = load_segmenter("test_live_select:filled_ellipse")
    labels = masks_from_boxes(frame, [(3, (5, 5, 20, 10)), (4, (20, 8, 20, 20))], ellipse)
    assert set(np.unique(labels)) == {0, 3, 4}
    assert labels[18, 30] == 4 and labels[10, 15] == 3


def test_a_user_segmenter_in_the_current_folder_is_found(tmp_path, monkeypatch):
    # the `vosrt` console script's sys.path holds neither "" nor the current folder
    (tmp_path / "segmenter_here.py").write_text("def whole_box(frame, box):\n    return frame[..., 0] >= 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "segmenter_here", raising=False)
    function = load_segmenter("segmenter_here:whole_box")
    assert function(np.zeros((4, 5, 3), np.uint8), (0, 0, 2, 2)).all()


def filled_ellipse(frame, box):
    """A stand-in user segmenter: the ellipse inscribed in the box."""
    x, y, w, h = box
    mask = np.zeros(frame.shape[:2], np.uint8)
    cv2.ellipse(mask, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 1, -1)
    return mask.astype(bool)


def test_boxes_are_clipped_to_the_frame_and_a_box_outside_is_refused():
    assert clip_box((-5, -5, 20, 20), (30, 40)) == (0, 0, 15, 15)
    assert box_around(2, 2, (100, 200)) == (0, 0, 12, 12)
    with pytest.raises(UserError, match="inside"):
        clip_box((50, 50, 10, 10), (30, 40))


def test_select_syntax():
    assert parse_box_select("box:1,2,3,4") == ((1, 2, 3, 4), None)
    assert parse_box_select("box:1,2,3,4:7") == ((1, 2, 3, 4), 7)
    with pytest.raises(UserError, match="module:function"):
        load_segmenter("grabcut")
