"""fasttx.random: the Philox stream is Triton's tl.rand, bit for bit, and reproducible."""

import pytest
import torch

from fasttx import random as philox
from fasttx.testing import gpu, requires_triton


def test_draw_seed_follows_manual_seed():
    torch.manual_seed(3)
    first = philox.draw_seed("cpu")
    torch.manual_seed(3)
    assert torch.equal(first, philox.draw_seed("cpu"))
    assert first.dtype == torch.int64 and first.shape == (1,)
    assert not torch.equal(first, philox.draw_seed("cpu"))


def test_uniform_is_in_unit_interval_and_uniform():
    values = philox.uniform(torch.tensor([123]), torch.arange(200_000))
    assert values.dtype == torch.float32
    assert 0.0 <= values.min() and values.max() < 1.0
    histogram = torch.histc(values, bins=10, min=0, max=1) / values.numel()
    assert (histogram - 0.1).abs().max() < 0.005


def test_counters_and_seeds_decorrelate():
    a = philox.uniform(torch.tensor([1]), torch.arange(1000))
    b = philox.uniform(torch.tensor([2]), torch.arange(1000))
    c = philox.uniform(torch.tensor([1]), torch.arange(1000, 2000))
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.1
    assert abs(torch.corrcoef(torch.stack([a, c]))[0, 1]) < 0.1


def test_keep_mask_probability():
    keep = philox.keep_mask(torch.tensor([5]), torch.arange(100_000), 0.3)
    assert abs(keep.double().mean().item() - 0.7) < 0.01


@requires_triton
def test_matches_tritons_tl_rand_bit_for_bit():
    """tl.rand (on the GPU, or the interpreter on CPU) with 32- and 64-bit offsets."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    device = "cuda" if torch.cuda.is_available() else "cpu"

    @triton.jit
    def rand_kernel(seed_ptr, out_ptr, n, base, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        seed = tl.load(seed_ptr)
        tl.store(out_ptr + offsets, tl.rand(seed, offsets.to(tl.int64) + base), mask=offsets < n)

    n = 3000
    for seed_value, base in [(0, 0), (987654321, 17), (2**61 + 12345, 2**35 + 3)]:
        seed = torch.tensor([seed_value], device=device)
        out = torch.empty(n, device=device)
        rand_kernel[(triton.cdiv(n, 512),)](seed, out, n, base, BLOCK=512)
        expected = philox.uniform(seed, torch.arange(n, device=device) + base)
        assert torch.equal(out, expected), (seed_value, base)


@gpu
def test_cuda_stream_equals_cpu_stream():
    seed = philox.draw_seed("cuda")
    counter = torch.arange(10_000) + 2**33
    on_gpu = philox.uniform(seed, counter.cuda())
    assert torch.equal(on_gpu.cpu(), philox.uniform(seed.cpu(), counter))


def test_sliced_cpu_path_gives_the_same_stream():
    """Large CPU counters are processed in slices: values must not depend on the slicing."""
    seed = torch.tensor([77])
    counter = torch.arange(5 * 40000 + 5).view(5, -1) + 2**40
    values = philox.uniform(seed, counter)
    assert values.shape == counter.shape
    flat_counter, flat_values = counter.reshape(-1), values.reshape(-1)
    for piece in (slice(0, 1000), slice(65000, 67000), slice(-1000, None)):
        assert torch.equal(flat_values[piece], philox.uniform(seed, flat_counter[piece]))
