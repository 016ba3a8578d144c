"""fasttx.testing: the tolerance assert must fail when it should, and say where."""

import pytest
import torch

from fasttx.testing import (
    assert_within_budget,
    attention_inputs,
    gpu,
    key_padding_mask,
    random_tensor,
    to_float64,
)


def test_budget_passes_within_and_fails_beyond_with_the_worst_element():
    expected = torch.zeros(3, 4, dtype=torch.float64)
    baseline = torch.full((3, 4), 1e-3)
    actual = torch.full((3, 4), 1.5e-3)
    assert_within_budget(actual, expected, baseline, factor=2.0, floor=0.0)
    actual[2, 1] = 2.5e-3
    with pytest.raises(AssertionError, match=r"index \(2, 1\).*budget 2\.000e-03"):
        assert_within_budget(actual, expected, baseline, factor=2.0, floor=0.0)


def test_budget_treats_nan_as_infinitely_wrong_and_checks_shapes():
    expected = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(AssertionError, match="index \\(1,\\)"):
        assert_within_budget(torch.tensor([0.0, float("nan"), 0.0, 0.0]), expected, floor=1.0)
    with pytest.raises(AssertionError, match="shape"):
        assert_within_budget(torch.zeros(3), expected)


def test_a_non_finite_baseline_is_refused_not_an_infinite_budget():
    expected = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(AssertionError, match="baseline is not finite at index \\(1,\\)"):
        assert_within_budget(torch.tensor([5.0, 7.0, 1e6]), expected,
                             torch.tensor([0.0, float("nan"), 0.0]))


def test_gpu_marker_is_selectable_and_skips_without_a_gpu():
    @gpu
    def needs_gpu():
        pass

    marks = {mark.name for mark in needs_gpu.pytestmark}
    assert marks == {"gpu", "skipif"}
    skip = next(mark for mark in needs_gpu.pytestmark if mark.name == "skipif")
    assert skip.args[0] == (not torch.cuda.is_available())


def test_factories_are_seeded_and_fresh_per_seed():
    assert torch.equal(random_tensor(5, 3, seed=4), random_tensor(5, 3, seed=4))
    assert not torch.equal(random_tensor(5, 3, seed=4), random_tensor(5, 3, seed=5))
    q, k, v = attention_inputs(2, 4, 3, 5, 8, kv_heads=2, value_dim=6, dtype=torch.float16)
    assert (q.shape, k.shape, v.shape) == ((2, 4, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6))
    assert q.dtype == torch.float16 and not torch.equal(k[:, :, :3].float(), q[:, :2].float())


def test_key_padding_mask_and_float64_copies():
    mask = key_padding_mask([2, 0, 3], 3)
    assert mask.shape == (3, 1, 1, 3)
    assert mask[:, 0, 0].tolist() == [[True, True, False], [False] * 3, [True] * 3]
    x = torch.randn(2, requires_grad=True)
    x64, none, flag = to_float64(x, None, mask)
    assert x64.dtype == torch.float64 and x64.requires_grad and none is None and flag is mask
