"""Feed-forward: ``y = dropout(act(x @ w1.T + b1)) @ w2.T + b2``.

What is timed: one call of the FFN on x (tokens, d_model), w1 (d_ff, d_model), b1 (d_ff,),
w2 (d_model, d_ff), b2 (d_model,) in nn.Linear layout, scaled as nn.Linear initialises
them so every output is O(1). Modes are the harness's: fwd, bwd (the gradients of x, w1,
b1, w2, b2 through a graph built untimed), fwd_bwd. Dropout acts on the hidden activation.

Providers:

- ``fasttx-triton``, ``fasttx-cuda``, ``fasttx-reference``:
  ``fasttx.feed_forward(..., activation=, dropout_p=, backend=)``;
- ``eager``: ``F.linear`` -> activation -> ``F.dropout`` -> ``F.linear``;
- ``compiled``: ``torch.compile(eager, fullgraph=True, dynamic=False)``, compiled afresh
  for each case;
- ``matmuls``, the floor: the bare matmuls ``(x @ w1.T) @ w2.T`` (no bias, activation or
  dropout); autograd gives its backward the four matmuls dh = dy @ w2, dw2 = dy.T @ h,
  dx = dh @ w1, dw1 = dh.T @ x (b1 and b2 get no gradient). Not checked against the
  oracle: it computes something else.

Every other provider's forward is checked against ``fasttx-reference`` (else ``eager``)
when dropout is 0.

Sweeps (profile "full"; bf16 unless said):

- ``transformer``: the Transformer's base (512 x 2048) and big (1024 x 4096) layers at
  25,000 tokens (its batch): relu with dropout 0 and 0.1, gelu with dropout 0, and the
  relu dropout-0 cases in fp16 too;
- ``hidden-size``: d_model 512, 768, 1000 (neither a power of two nor a multiple of 64:
  every dimension has edge tiles), 1024, 2048, 4096, 8192 with d_ff = 4 * d_model, 16,384
  tokens, relu, dropout 0.

All in fwd, bwd and fwd_bwd. "quick": base and big, relu, dropout 0, fwd and bwd.
"smoke": fp32, 40 tokens, (d_model, d_ff) = (32, 64) and (24, 40), relu and gelu.

FLOPs (-> TFLOP/s, :func:`flops`): the FFN's two matmuls, forward 2*N*D*F + 2*N*F*D;
bwd 2x forward (each matmul has two of its size in the backward), fwd_bwd 3x. Bias,
activation and dropout are not counted; the matmuls provider is rated by the same count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks import harness

OP = "feed_forward"
PROVIDERS = ("fasttx-triton", "fasttx-cuda", "fasttx-reference", "eager", "compiled", "matmuls")
CPU_PROVIDERS = ("fasttx-triton", "fasttx-reference", "eager", "matmuls")
ORACLES = ("fasttx-reference", "eager")
FLOORS = ("matmuls",)
PLOTS = [
    harness.Plot("hidden-size", x="d_model", metric="tflops", panels=("mode", "dtype"),
                 sweeps=("hidden-size",), log_x=True),
    harness.Plot("transformer", x="d_model", metric="tflops",
                 panels=("mode", "dtype", "activation", "dropout"), sweeps=("transformer",),
                 log_x=True),
]

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu,
               "gelu_tanh": lambda a: F.gelu(a, approximate="tanh")}
TRANSFORMER_SHAPES = ((512, 2048), (1024, 4096))  # (d_model, d_ff): base, big
TRANSFORMER_TOKENS = 25_000
#: (dtype, activation, dropout) of the transformer sweep.
TRANSFORMER_VARIANTS = (("bf16", "relu", 0.0), ("bf16", "relu", 0.1), ("bf16", "gelu", 0.0),
                        ("fp16", "relu", 0.0))
HIDDEN_SIZES = (512, 768, 1000, 1024, 2048, 4096, 8192)  # d_ff = 4 * d_model
HIDDEN_SIZE_TOKENS = 16_384
QUICK_MODES = ("fwd", "bwd")
SMOKE_TOKENS = 40
#: (mode, d_model, d_ff, activation) of the smoke profile's fp32 cases.
SMOKE = (("fwd", 32, 64, "relu"), ("bwd", 24, 40, "gelu"), ("fwd_bwd", 32, 64, "gelu"))


def flops(tokens: int, d_model: int, d_ff: int, mode: str) -> int:
    """The matmul FLOPs of one call: forward 2*N*D*F + 2*N*F*D; bwd 2x, fwd_bwd 3x that."""
    forward = 2 * tokens * d_model * d_ff + 2 * tokens * d_ff * d_model
    factors = {"fwd": 1, "bwd": 2, "fwd_bwd": 3}
    if mode not in factors:
        raise ValueError(f"mode must be one of {harness.MODES}, got {mode!r}")
    return forward * factors[mode]


# ---------------------------------------------------------------------------- cases


def make_case(sweep: str, mode: str, dtype: str, tokens: int, d_model: int, d_ff: int, *,
              activation: str = "relu", dropout: float = 0.0) -> harness.Case:
    shape = dict(tokens=tokens, d_model=d_model, d_ff=d_ff, activation=activation,
                 dropout=dropout)
    return harness.Case(OP, sweep, mode, dtype, shape, flops=flops(tokens, d_model, d_ff, mode))


def _transformer() -> list[harness.Case]:
    return [make_case("transformer", mode, dtype, TRANSFORMER_TOKENS, d_model, d_ff,
                      activation=activation, dropout=dropout)
            for d_model, d_ff in TRANSFORMER_SHAPES
            for dtype, activation, dropout in TRANSFORMER_VARIANTS for mode in harness.MODES]


def _hidden_size() -> list[harness.Case]:
    return [make_case("hidden-size", mode, "bf16", HIDDEN_SIZE_TOKENS, d_model, 4 * d_model)
            for d_model in HIDDEN_SIZES for mode in harness.MODES]


def _quick(case: harness.Case) -> bool:
    """Whether a full case is in the quick profile."""
    return (case.sweep == "transformer" and case.dtype == "bf16" and case.mode in QUICK_MODES
            and case.shape["activation"] == "relu" and case.shape["dropout"] == 0)


def cases(profile: str) -> list[harness.Case]:
    """The cases of ``profile``: "full", "quick" (a subset of full) or "smoke"."""
    full = _transformer() + _hidden_size()
    if profile == "full":
        return full
    if profile == "quick":
        return [case for case in full if _quick(case)]
    if profile == "smoke":
        return [make_case("smoke", mode, "fp32", SMOKE_TOKENS, d_model, d_ff,
                          activation=activation)
                for mode, d_model, d_ff, activation in SMOKE]
    raise ValueError(f"profile must be one of {harness.PROFILES}, got {profile!r}")


# ---------------------------------------------------------------------------- inputs, providers


def make_inputs(case: harness.Case, device: str, seed: int) -> harness.InputSet:
    """inputs: x (N, D), w1 (F, D), b1 (F,), w2 (D, F), b2 (D,), all differentiated, with
    nn.Linear's scales; grads: dy (N, D)."""
    tokens, d_model, d_ff = (case.shape[key] for key in ("tokens", "d_model", "d_ff"))
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(*size, scale=1.0, grad=True):
        values = torch.randn(*size, generator=generator) * scale
        return values.to(device, case.torch_dtype).requires_grad_(grad)

    inputs = (draw(tokens, d_model), draw(d_ff, d_model, scale=d_model**-0.5),
              draw(d_ff, scale=0.1), draw(d_model, d_ff, scale=d_ff**-0.5),
              draw(d_model, scale=0.1))
    return harness.InputSet(inputs, (draw(tokens, d_model, grad=False),))


def fasttx_call(backend: str, *, activation: str, dropout_p: float):
    """fn(x, w1, b1, w2, b2) -> y (N, D) by ``fasttx.feed_forward``."""
    def fused(x, w1, b1, w2, b2):
        import fasttx  # here, not on import: fasttx imports triton.language, which on
        # CPU must come after harness.start has switched the interpreter on
        return fasttx.feed_forward(x, w1, b1, w2, b2, activation=activation,
                                   dropout_p=dropout_p, backend=backend)
    return fused


def eager_call(*, activation: str, dropout_p: float):
    """fn(x, w1, b1, w2, b2) -> y (N, D) in plain PyTorch."""
    act = ACTIVATIONS[activation]

    def eager(x, w1, b1, w2, b2):
        hidden = F.dropout(act(F.linear(x, w1, b1)), dropout_p)  # (N, F)
        return F.linear(hidden, w2, b2)
    return eager


def matmuls(x, w1, _b1, w2, _b2):
    """The floor: (x (N, D) @ w1.T) (N, F) @ w2.T -> (N, D), biases unused."""
    return (x @ w1.T) @ w2.T


def provider(case: harness.Case, name: str, device: str) -> harness.Provider:
    """How ``name`` runs ``case`` (all take the op's inputs as they are)."""
    options = dict(activation=case.shape["activation"], dropout_p=case.shape["dropout"])
    if name.startswith("fasttx-"):
        return harness.Provider(call=fasttx_call(name.removeprefix("fasttx-"), **options))
    if name == "eager":
        return harness.Provider(call=eager_call(**options))
    if name == "compiled":
        return harness.Provider(call=harness.compiled(eager_call(**options)))
    if name == "matmuls":
        return harness.Provider(call=matmuls)
    raise LookupError(f"{name!r} is not one of {OP}'s providers {PROVIDERS}")
