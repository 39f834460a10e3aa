"""Inference details pinned to the published methods' own inference code (read, not copied):

- STCN (hkchengrex/STCN): ``util/tensor_util.py`` ``pad_divide_by`` pads the *normalised* frame with zeros;
- STEm-Seg (sabarim/STEm-Seg): ``stemseg/structures/image_list.py`` pads the normalised images with zeros, and
  ``stemseg/inference/main.py`` (``do_inference``) thresholds a category head's foreground probability at 0.5
  (the seediness, used where there is no such head, at ``--seediness_thresh`` 0.25);
- 3DC-Seg / D²Conv3D pad the [0, 255] image with 0 (black) before the network's normalisation.
"""
from pathlib import Path

import numpy as np
import pytest

import vosrt.sdk
from vosrt.sdk.clip_segmenter import ClipSegmenter
from vosrt.sdk.instance_segmenter import InstanceSegmenter
from vosrt.sdk.letterbox import Letterbox
from vosrt.sdk.preprocess import IMAGENET_MEAN, normalize
from vosrt.sdk.tracker import Tracker

STCN_LITE = Path(vosrt.sdk.__file__).parent / "models" / "stcn-lite"


def test_letterbox_pads_with_the_fill_colour():
    frame = np.full((20, 40, 3), 255, np.uint8)
    image = Letterbox((20, 40), (32, 32), IMAGENET_MEAN).image(frame, "rgb")      # [1, 3, 32, 32], 16 x 32 inside
    padding = normalize(image[0])[:, :8]                                         # the rows above the frame
    np.testing.assert_allclose(padding, 0.0, atol=1e-6)
    assert np.all(image[0, :, 8:24] == 1.0)


def test_families_pad_as_their_public_code():
    assert Tracker.pad_with_mean and InstanceSegmenter.pad_with_mean
    assert not ClipSegmenter.pad_with_mean


def test_tracker_letterbox_padding_normalises_to_zero():
    """STCN's pad_divide_by pads the normalised frame with 0: the graph must see the padding as 0 after its
    normalisation, not as black (−mean/std ≈ −2)."""
    tracker = vosrt.sdk.load(STCN_LITE, backend="onnxruntime", threads=1)
    seen = []
    upload = tracker.backend.upload

    def spy(array):
        seen.append(np.array(array))
        return upload(array)

    tracker.backend.upload = spy
    height, width = tracker.size
    frame = np.zeros((height, width - 32, 3), np.uint8)      # narrower than the package: padded left and right
    mask = np.zeros(frame.shape[:2], np.uint8)
    mask[10:30, 10:40] = 1
    tracker.step(frame, mask)
    image = seen[0]
    assert image.shape == (1, 3, height, width)
    np.testing.assert_allclose(normalize(image[0])[:, :, :16], 0.0, atol=1e-6)
    np.testing.assert_allclose(normalize(image[0])[:, :, -16:], 0.0, atol=1e-6)
    tracker.close()


@pytest.mark.parametrize("num_classes, threshold", [(0, 0.25), (3, 0.5)])
def test_stem_seg_export_records_the_public_foreground_threshold(num_classes, threshold):
    """stemseg/inference/main.py: a category head's foreground probability is thresholded at 0.5; the seediness,
    the foreground of a model without that head, at 0.25 (--seediness_thresh)."""
    from vosrt.export.package import streaming_settings
    from vosrt.sdk import families
    from vosrt.training.models import stem_seg

    model = stem_seg.build("stem-seg-lite", num_classes=num_classes)
    family = families.get("stem-seg")
    assert streaming_settings(family, model)["foreground_threshold"] == threshold
    assert streaming_settings(family, model, {"foreground_threshold": 0.4})["foreground_threshold"] == 0.4
