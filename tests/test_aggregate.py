"""Soft aggregation follows the published formula: background = Π(1 − p), clamp, logit, softmax."""
import math

import torch

from vosrt.training.ops.aggregate import soft_aggregate


def test_matches_the_formula_pixel_by_pixel():
    prob = torch.rand(3, 1, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    probabilities, logits = soft_aggregate(prob)
    assert probabilities.shape == logits.shape == (4, 1, 4, 5)
    for y in range(4):
        for x in range(5):
            p = [float(prob[i, 0, y, x]) for i in range(3)]
            stacked = [math.prod(1 - q for q in p)] + p
            clamped = [min(max(q, 1e-7), 1 - 1e-7) for q in stacked]
            expected_logits = [math.log(q / (1 - q)) for q in clamped]
            total = sum(math.exp(v) for v in expected_logits)
            for i in range(4):
                assert math.isclose(float(logits[i, 0, y, x]), expected_logits[i], abs_tol=1e-9)
                assert math.isclose(float(probabilities[i, 0, y, x]), math.exp(expected_logits[i]) / total,
                                    abs_tol=1e-9)


def test_background_comes_first_and_probabilities_sum_to_one():
    prob = torch.zeros(2, 1, 3, 3)
    prob[1, 0, 1, 1] = 0.99
    probabilities, _ = soft_aggregate(prob)
    assert torch.allclose(probabilities.sum(0), torch.ones(1, 3, 3))
    labels = probabilities.argmax(0)
    assert labels[0, 1, 1] == 2 and labels.sum() == 2  # object 2 at the centre, background elsewhere


def test_certain_inputs_stay_finite_through_the_clamp():
    prob = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1)
    probabilities, logits = soft_aggregate(prob)
    assert torch.isfinite(logits).all() and torch.isfinite(probabilities).all()
    # float32 rounds 1 − 1e-7 to 1 − 1.19e-7, so the bound is ≈ ±16 rather than exactly ±16.12
    assert 15.5 < float(logits.max()) < 16.2 and -16.2 < float(logits.min()) < -15.5


def test_single_object_gives_background_and_object():
    prob = torch.full((1, 1, 2, 2), 0.8, dtype=torch.float64)
    probabilities, _ = soft_aggregate(prob)
    # two maps: background 0.2 and object 0.8 have odds 1/4 and 4, so the softmax gives 1/17 and 16/17
    assert torch.allclose(probabilities[1], torch.full((1, 2, 2), 16 / 17, dtype=torch.float64))


def test_from_logits_is_the_same_formula():
    from vosrt.training.ops.aggregate import soft_aggregate_logits

    logits = torch.randn(3, 1, 6, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 8
    logits[0, 0, 0, 0], logits[1, 0, 0, 1], logits[2, 0, 0, 2] = 40.0, -40.0, 16.0   # beyond and at the clamp
    expected_prob, expected_logits = soft_aggregate(torch.sigmoid(logits))
    prob, stacked = soft_aggregate_logits(logits)
    assert torch.allclose(prob, expected_prob, rtol=0, atol=1e-9)
    assert torch.allclose(stacked, expected_logits, rtol=0, atol=1e-6)


def test_from_logits_two_confident_objects_split_a_pixel_as_float64_does():
    # Through sigmoid, float32 decides a confident object's logit by the last bits of p (1 − p is one or two
    # float32 steps of 6e-8): ONNX Runtime and PyTorch split a pixel of two confident objects 2:1 and 1:1.
    # From the logits, float32 follows float64.
    from vosrt.training.ops.aggregate import soft_aggregate_logits

    pairs = torch.tensor([[15.2, 15.9], [15.0, 15.6], [14.8, 16.4], [15.4, 15.45]], dtype=torch.float64)
    logits = pairs.T.reshape(2, 1, 1, -1)                       # [O=2, 1, 1, 4]
    exact, _ = soft_aggregate_logits(logits)                    # float64
    via_sigmoid, _ = soft_aggregate(torch.sigmoid(logits.float()))
    from_logits, _ = soft_aggregate_logits(logits.float())
    assert (via_sigmoid.double() - exact).abs().max() > 0.05      # what the rounding did
    assert (from_logits.double() - exact).abs().max() < 1e-5
