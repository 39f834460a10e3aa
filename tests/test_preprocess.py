"""Torch pre-processing: ImageNet normalisation, pad to ×16 with left/top = floor(diff/2), unpad."""
import numpy as np
import pytest
import torch

from vosrt.sdk import preprocess as sdk_preprocess
from vosrt.training.preprocess import normalize, pad_to_multiple, unpad


def test_normalize_uses_imagenet_statistics_like_the_sdk():
    image = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(normalize(image), (image - mean) / std)
    assert np.allclose(normalize(image).numpy(), sdk_preprocess.normalize(image.numpy()), atol=1e-6)


@pytest.mark.parametrize("height, width, pads", [(480, 854, (5, 5, 0, 0)), (17, 33, (7, 8, 7, 8)),
                                                 (32, 48, (0, 0, 0, 0)), (1, 31, (0, 1, 7, 8))])
def test_pads_to_a_multiple_of_16_with_left_and_top_getting_the_floor(height, width, pads):
    x = torch.rand(1, 3, height, width) + 1  # strictly positive, so zero padding is visible
    padded, got = pad_to_multiple(x, 16)
    assert got == pads
    assert padded.shape[-2] % 16 == 0 and padded.shape[-1] % 16 == 0
    left, right, top, bottom = pads
    assert torch.equal(padded[..., top:top + height, left:left + width], x)
    assert padded.sum() == pytest.approx(x.sum().item(), rel=1e-5)  # everything else is zero


@pytest.mark.parametrize("shape", [(1, 3, 17, 33), (2, 1, 1, 4, 30, 19), (45, 61)])
def test_unpad_inverts_pad_to_multiple(shape):
    x = torch.randn(shape)
    padded, pads = pad_to_multiple(x)
    assert torch.equal(unpad(padded, pads), x)


def test_other_multiples_are_honoured():
    padded, pads = pad_to_multiple(torch.zeros(1, 1, 10, 10), multiple=8)
    assert padded.shape == (1, 1, 16, 16) and pads == (3, 3, 3, 3)


def test_a_mask_png_over_pil_s_pixel_limit_is_one_error_not_a_traceback(tmp_path, monkeypatch):
    # PIL's DecompressionBombError (a PNG of a few hundred KB declaring more pixels than PIL decodes) left
    # read_label_png as a traceback; PIL's limit is lowered here to a size a test writes
    from PIL import Image

    from vosrt.sdk.errors import UserError
    from vosrt.sdk.masks import read_label_png, write_label_png

    write_label_png(tmp_path / "big.png", np.zeros((100, 100), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match=r"--mask .*big.png: Image size \(10000 pixels\) exceeds limit"):
        read_label_png(tmp_path / "big.png", flag="--mask")
