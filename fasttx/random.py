"""Counter-based dropout randomness shared by every backend.

Every fused op that applies dropout draws one Philox *seed* from torch's default
generator for the inputs' device (so ``torch.manual_seed`` makes a run reproducible)
and derives the keep/drop decision of element ``i`` from ``philox(seed, counter=i)``.
The backward pass regenerates the same mask from the seed instead of storing it.

The stream is bit-identical to Triton's ``tl.rand(seed, offset)`` (Philox4x32-10, key =
the seed's two 32-bit halves, counter = (offset_lo, offset_hi, 0, 0), first output word
mapped to [0, 1) in fp32), so the reference, Triton and CUDA backends drop exactly the
same elements, and tests can rebuild the mask:

    torch.manual_seed(0); y = fasttx.add_layer_norm(x, r, w, b, dropout_p=0.1)
    torch.manual_seed(0); seed = fasttx.random.draw_seed(x.device)
    keep = fasttx.random.keep_mask(seed, fasttx.random.counters(x.shape), 0.1)

Which counter each op gives an element (its *counter layout*) is part of the op's
contract and documented with the op.
"""

from __future__ import annotations

import torch

__all__ = ["draw_seed", "counters", "uniform", "keep_mask"]

_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_MASK32 = 0xFFFFFFFF
_ROUNDS = 10
# Largest value with (2**31 - 1) * scale < 1 in fp32: Triton's uint_to_uniform_float.
_INT31_TO_UNIT = 4.6566127342e-10


def draw_seed(device: torch.device | str) -> torch.Tensor:
    """Draws a Philox seed from torch's default generator for ``device``.

    Returns an int64 tensor of shape (1,) on ``device``; it stays on the device so
    that drawing it never synchronises with the host.
    """
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def counters(shape: tuple[int, ...] | torch.Size, device=None) -> torch.Tensor:
    """Row-major element indices of ``shape`` (int64): the default counter layout."""
    numel = 1
    for size in shape:
        numel *= size
    return torch.arange(numel, dtype=torch.int64, device=device).view(tuple(shape))


def _mul32(constant: int, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``constant * value`` for 32-bit operands.

    The exact product is below 2**64, so int64 multiplication, which wraps modulo 2**64
    on every device torch runs on, holds all of its bits (tests check the stream against
    Triton's, bit for bit, on CPU and GPU).
    """
    product = value * constant
    return (product >> 32) & _MASK32, product & _MASK32


# On CPU the ~100 elementwise passes of the rounds run about 2x faster over slices that
# stay in cache than over one large tensor; on a GPU one pass over everything is best.
_CPU_SLICE = 1 << 16


def uniform(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 uniforms in [0, 1), float32, one per element of ``counter``.

    Args:
        seed: int64 tensor of shape (1,) (from :func:`draw_seed`) or a Python int.
        counter: int64 tensor of any shape, the per-element offsets.
    """
    if counter.device.type != "cpu" or counter.numel() <= _CPU_SLICE:
        return _uniform(seed, counter)
    flat = counter.reshape(-1)
    out = torch.empty(flat.shape, dtype=torch.float32)
    for start in range(0, flat.numel(), _CPU_SLICE):
        out[start:start + _CPU_SLICE] = _uniform(seed, flat[start:start + _CPU_SLICE])
    return out.view(counter.shape)


def _uniform(seed: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
    seed = torch.as_tensor(seed, dtype=torch.int64, device=counter.device).reshape(())
    key0, key1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1 = counter & _MASK32, (counter >> 32) & _MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(_ROUNDS):
        hi_b, lo_b = _mul32(_ROUND_B, c2)
        hi_a, lo_a = _mul32(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ key0, lo_b, hi_a ^ c3 ^ key1, lo_a
        key0 = (key0 + _KEY_A) & _MASK32
        key1 = (key1 + _KEY_B) & _MASK32
    # Reinterpret as int32 and fold negatives with ~x, as Triton does, then scale.
    folded = torch.where(c0 >= 2**31, _MASK32 - c0, c0)
    return folded.to(torch.float32) * torch.tensor(_INT31_TO_UNIT, dtype=torch.float32)


def keep_mask(seed: torch.Tensor, counter: torch.Tensor, p: float) -> torch.Tensor:
    """Bool mask, True where an element survives dropout with probability ``p``."""
    return uniform(seed, counter) >= p
