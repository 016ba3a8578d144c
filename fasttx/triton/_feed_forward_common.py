"""Elementwise pieces of the feed-forward kernels' epilogues, in fp32.

ACTIVATION is a compile-time string: "relu", "gelu" (exact, erf form) or "gelu_tanh".
"""

from __future__ import annotations

import triton
import triton.language as tl

INV_SQRT2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
GELU_TANH_CUBIC = tl.constexpr(0.044715)


@triton.jit
def tanh_via_exp(z):
    """tanh from exp: saturates to +-1 without overflow (exp(2z) = inf gives 1)."""
    return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)


@triton.jit
def gelu_tanh_argument(a):
    """sqrt(2/pi) (a + k a^3), the tanh argument of gelu_tanh (constants on the right of
    tensors, which the interpreter needs)."""
    return (a + a * a * a * GELU_TANH_CUBIC) * SQRT_2_OVER_PI


@triton.jit
def activation(a, ACTIVATION: tl.constexpr):
    """act(a) for an fp32 tile."""
    if ACTIVATION == "relu":
        return tl.maximum(a, 0.0)
    elif ACTIVATION == "gelu":
        return 0.5 * a * (1.0 + tl.math.erf(a * INV_SQRT2))
    else:
        return 0.5 * a * (1.0 + tanh_via_exp(gelu_tanh_argument(a)))


@triton.jit
def activation_derivative(a, ACTIVATION: tl.constexpr):
    """d act / d a for an fp32 tile of pre-activations (gelu and gelu_tanh only: relu's
    backward reads the saved hidden activation instead)."""
    if ACTIVATION == "gelu":  # Phi(a) + a * phi(a)
        return 0.5 * (1.0 + tl.math.erf(a * INV_SQRT2)) + a * INV_SQRT_2PI * tl.exp(-0.5 * a * a)
    else:  # 0.5 (1 + t) + 0.5 a (1 - t^2) sqrt(2/pi) (1 + 3 k a^2)
        t = tanh_via_exp(gelu_tanh_argument(a))
        slope = (a * a * (3.0 * GELU_TANH_CUBIC) + 1.0) * SQRT_2_OVER_PI
        return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * slope


@triton.jit
def hidden_keep(seed, rows, cols, hidden, dropout_p):
    """Philox keep decision of hidden element (row, col): counter = row * F + col, int64."""
    return tl.rand(seed, rows.to(tl.int64)[:, None] * hidden + cols[None, :]) >= dropout_p
