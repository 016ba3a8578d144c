"""Test helpers: the tolerance rule, seeded input factories, GPU markers.

The tolerance rule: a fused op is right when its error against a float64 oracle is at most
``factor`` times the error of plain PyTorch computing the same thing in the same low
precision, plus a small floor (2x for outputs, 3x for gradients).

    expected = op(*inputs_in_float64)                      # the oracle
    baseline = plain_pytorch(*inputs_in_low_precision)     # what users have today
    assert_within_budget(fused(*inputs), expected, baseline, factor=2)
"""

from __future__ import annotations

import math
import os

import torch

__all__ = [
    "MASK_KINDS",
    "assert_within_budget",
    "attention_inputs",
    "attention_mask",
    "gpu",
    "gpu_backends",
    "key_padding_mask",
    "plain_attention",
    "random_tensor",
    "requires_cuda_extension",
    "seeded_generator",
    "to_float64",
]

DEFAULT_FLOOR = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-4,
                 torch.bfloat16: 1e-3}


def _worst(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, tuple[int, ...]]:
    error = (actual.detach().double() - expected.detach().double()).abs()
    error = torch.nan_to_num(error, nan=float("inf"))
    if error.numel() == 0:  # an empty output (Lq = 0) is exact
        return 0.0, ()
    flat = int(error.argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), error.shape)) \
        if error.dim() else ()
    return float(error.max()), index


def assert_within_budget(actual: torch.Tensor, expected: torch.Tensor,
                         baseline: torch.Tensor | None = None, *, factor: float = 2.0,
                         floor: float | None = None, name: str = "output") -> None:
    """Asserts ``max|actual - expected| <= factor * max|baseline - expected| + floor``.

    Args:
        actual: the result under test (any dtype).
        expected: the float64 (or fp32) oracle.
        baseline: plain PyTorch's result in the same precision as ``actual``; None means
            the budget is the floor alone (for exact-in-float64 comparisons).
        factor: 2 for outputs, 3 for gradients.
        floor: absolute slack; default by ``actual``'s dtype.
        name: what is compared, for the message.

    The message reports the worst element: its index, both values and both errors.
    """
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected "
                             f"{tuple(expected.shape)}")
    if floor is None:
        floor = DEFAULT_FLOOR.get(actual.dtype, 1e-6)
    error, index = _worst(actual, expected)
    baseline_error = 0.0
    if baseline is not None:
        baseline_error, baseline_index = _worst(baseline, expected)
        if baseline_error == float("inf"):  # an infinite budget would pass anything
            raise AssertionError(
                f"{name}: the baseline is not finite at index {baseline_index}; compare on "
                f"inputs where plain PyTorch gives finite values")
    budget = factor * baseline_error + floor
    if not error <= budget:
        got = actual.detach()[index].item() if actual.numel() else None
        want = expected.detach()[index].item() if expected.numel() else None
        raise AssertionError(
            f"{name}: max error {error:.3e} at index {index} (got {got!r}, expected {want!r}) "
            f"exceeds the budget {budget:.3e} = {factor} x baseline error {baseline_error:.3e} "
            f"+ floor {floor:.1e}")


def seeded_generator(seed: int, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def random_tensor(*shape: int, dtype=torch.float32, device="cpu", seed: int = 0,
                  scale: float = 1.0, requires_grad: bool = False) -> torch.Tensor:
    """Standard-normal values times ``scale``, drawn from a private seeded generator."""
    generator = seeded_generator(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * scale
    return values.to(device=device, dtype=dtype).requires_grad_(requires_grad)


def attention_inputs(batch: int, heads: int, len_q: int, len_k: int, head_dim: int, *,
                     kv_heads: int | None = None, value_dim: int | None = None,
                     dtype=torch.float32, device="cpu", seed: int = 0,
                     requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
    """q (B, H, Lq, E), k (B, Hk, Lk, E), v (B, Hk, Lk, Ev) with fresh seeded values."""
    kv_heads = heads if kv_heads is None else kv_heads
    value_dim = head_dim if value_dim is None else value_dim
    shapes = [(batch, heads, len_q, head_dim), (batch, kv_heads, len_k, head_dim),
              (batch, kv_heads, len_k, value_dim)]
    return tuple(random_tensor(*shape, dtype=dtype, device=device, seed=seed * 3 + i,
                               requires_grad=requires_grad) for i, shape in enumerate(shapes))


def key_padding_mask(lengths: list[int], max_len: int, device="cpu") -> torch.Tensor:
    """Bool (B, 1, 1, max_len), True where key j < lengths[b] (may attend)."""
    positions = torch.arange(max_len, device=device)
    keep = positions.unsqueeze(0) < torch.tensor(lengths, device=device).unsqueeze(1)
    return keep[:, None, None, :]


#: The attention mask kinds of :func:`attention_mask`; "+causal" means is_causal=True too.
MASK_KINDS = ("none", "causal", "bool", "float", "key_padding", "bool+causal", "float+causal",
              "key_padding+causal")


def attention_mask(kind: str, batch: int, heads: int, len_q: int, len_k: int, *,
                   seed: int = 0, device="cpu") -> torch.Tensor | None:
    """A seeded mask of one of :data:`MASK_KINDS` (the part before "+causal").

    "bool": (B, 1, Lq, Lk), ~30% of entries masked, broadcast over heads. "float":
    (B, H, Lq, Lk) float64 standard-normal values. "key_padding": bool (B, 1, 1, Lk) with
    random lengths in [1, Lk]. "none"/"causal": None.
    """
    generator = torch.Generator().manual_seed(seed)
    kind = kind.removesuffix("+causal")
    if kind in ("none", "causal"):
        return None
    if kind == "bool":
        mask = torch.rand(batch, 1, len_q, len_k, generator=generator) > 0.3
    elif kind == "float":
        mask = torch.randn(batch, heads, len_q, len_k, generator=generator, dtype=torch.float64)
    elif kind == "key_padding":
        lengths = torch.randint(1, len_k + 1, (batch,), generator=generator).tolist()
        mask = key_padding_mask(lengths, len_k)
    else:
        raise ValueError(f"kind must be one of {MASK_KINDS}, got {kind!r}")
    return mask.to(device)


def plain_attention(q, k, v, attn_mask=None, is_causal=False, scale=None):
    """Attention as plain PyTorch ops in the inputs' dtype: the baseline of the budget rule.

    softmax(q k^T * scale + mask) v with GQA repeats, the causal mask top-left aligned and
    rows that may attend to nothing set to zero, differentiable by autograd.
    """
    heads = q.shape[-3]
    k = k.repeat_interleave(heads // k.shape[-3], dim=-3)
    v = v.repeat_interleave(heads // v.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.to(scores.dtype)
    if is_causal:
        future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    empty_row = torch.isneginf(scores).all(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(empty_row, 0.0), dim=-1).masked_fill(empty_row, 0.0)
    return probs @ v


def to_float64(*tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Detached float64 copies (bool and integer tensors unchanged), keeping requires_grad."""
    out = []
    for t in tensors:
        if t is None or not t.is_floating_point():
            out.append(t)
        else:
            out.append(t.detach().double().requires_grad_(t.requires_grad))
    return tuple(out)


def _has_cuda_extension() -> bool:
    from fasttx.cuda._extension import load_error

    return load_error() is None


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is a test extra
    pytest = None

if pytest is not None:
    _skip_without_gpu = pytest.mark.skipif(not torch.cuda.is_available(),
                                           reason="needs a CUDA GPU")

    def gpu(test):
        """Marks a test that needs a CUDA GPU: ``@pytest.mark.gpu`` (so ``-m gpu`` selects
        it) and skipped cleanly on CPU-only machines."""
        return pytest.mark.gpu(_skip_without_gpu(test))

    #: Marks a test that needs the compiled extension fasttx._C (and a GPU).
    requires_cuda_extension = pytest.mark.skipif(
        not (torch.cuda.is_available() and _has_cuda_extension()),
        reason="needs a CUDA GPU and the compiled extension fasttx._C")
    #: The fused backends a GPU test runs on: ``@pytest.mark.parametrize("backend",
    #: gpu_backends)``; the ``cuda`` case skips cleanly where fasttx._C is absent.
    gpu_backends = [pytest.param("triton", id="triton"),
                    pytest.param("cuda", id="cuda", marks=requires_cuda_extension)]
    #: Marks a test of the Triton backend: runs on a GPU, or on CPU under TRITON_INTERPRET=1.
    requires_triton = pytest.mark.skipif(
        not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"),
        reason="needs a CUDA GPU or TRITON_INTERPRET=1")
    #: Marks a test that runs the Triton backend on CPU tensors: under TRITON_INTERPRET=1
    #: only (which a GPU machine's test session leaves off for its GPU tests).
    requires_triton_interpreter = pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") != "1",
        reason="runs Triton kernels on CPU tensors: needs TRITON_INTERPRET=1")
