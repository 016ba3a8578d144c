"""Feed-forward benchmark: fasttx's fused FFN against eager and compiled PyTorch, bare matmuls.

    python -m benchmarks.feed_forward                        # base, big, odd; bf16, on the GPU
    python -m benchmarks.feed_forward --shapes big,768x3072 --activations relu,gelu --modes fwd
    python -m benchmarks.feed_forward --device cpu --smoke   # a seconds-long run of the script

The op is ``y = dropout(act(x @ w1.T + b1)) @ w2.T + b2`` with x (N, D), w1 (F, D),
w2 (D, F) in nn.Linear layout (``fasttx.feed_forward``). For each shape, dtype, activation
and mode (forward, forward+backward) it times:

- ``fasttx-triton`` and ``fasttx-reference``: ``fasttx.feed_forward(..., backend=...)``;
- ``eager``: ``F.linear`` -> activation -> ``F.dropout`` -> ``F.linear``;
- ``compiled``: ``torch.compile(fullgraph=True, dynamic=False)`` of that eager function;
- ``matmuls``: the floor, the bare matmuls alone (no bias, activation or dropout):
  forward ``h = x @ w1.T``, ``y = h @ w2.T``; forward+backward those and the four
  backward ones, ``dh = dy @ w2``, ``dw2 = dy.T @ h``, ``dx = dh @ w1``, ``dw1 = dh.T @ x``.

Shapes ("DxF" or a name): the Transformer's base (512x2048) and big (1024x4096) and
"odd" (1000x3000), neither a power of two nor a multiple of the usual 64/128 tiles, so
every dimension has edge tiles; 25k tokens (N) per batch, as the Transformer trained with.
A provider that can't run is recorded with the reason; with dropout 0 every provider's
forward (but the matmuls') is checked against fasttx's reference before anything is timed.

TFLOP/s count the matmul FLOPs of the FFN (:func:`flops`): forward 2*N*D*F + 2*N*F*D_out,
forward+backward 3x that (each matmul has two of the same size in the backward); the
matmuls provider is rated by the same count. ``vs_matmuls``: the matmuls' time / this
provider's (1 = as fast as the matmuls alone). fp32 matmuls follow torch's TF32 setting,
recorded as ``float32_matmul_precision``.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F

from benchmarks import harness

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SHAPES = {"base": (512, 2048), "big": (1024, 4096), "odd": (1000, 3000)}
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu,
               "gelu_tanh": lambda a: F.gelu(a, approximate="tanh")}
PROVIDERS = ("fasttx-triton", "fasttx-reference", "eager", "compiled", "matmuls")
MODES = ("fwd", "fwd+bwd")
COLUMNS = ["shape", "tokens", "dtype", "activation", "mode", "provider", "ms", "tflops",
           "vs_matmuls", "vs_eager", "note"]


def flops(tokens: int, d_model: int, d_ff: int, d_out: int, mode: str) -> int:
    """The matmul FLOPs of one call: forward 2*N*D*F + 2*N*F*D_out; forward+backward 3x."""
    forward = 2 * tokens * d_model * d_ff + 2 * tokens * d_ff * d_out
    return forward * (3 if mode == "fwd+bwd" else 1)


def parse_shape(text: str) -> tuple[str, int, int]:
    """A --shapes entry, a name in SHAPES or "DxF" -> (label, d_model, d_ff)."""
    if text in SHAPES:
        d_model, d_ff = SHAPES[text]
        return f"{text} {d_model}x{d_ff}", d_model, d_ff
    match = re.fullmatch(r"([1-9]\d*)x([1-9]\d*)", text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a shape name ({', '.join(SHAPES)}) nor DxF, e.g. 768x3072")
    return text, int(match[1]), int(match[2])


class Case(NamedTuple):
    """One input set: the op's inputs (all requiring grad) and the output gradient."""

    x: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor
    grad_y: torch.Tensor

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.w1, self.b1, self.w2, self.b2


def make_case(tokens, d_model, d_ff, dtype, device, seed) -> Case:
    """Inputs scaled as nn.Linear's initialisation would, so that every output is O(1)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(*shape, scale=1.0, grad=True):
        values = torch.randn(*shape, generator=generator) * scale
        return values.to(device, dtype).requires_grad_(grad)

    return Case(draw(tokens, d_model), draw(d_ff, d_model, scale=d_model**-0.5),
                draw(d_ff, scale=0.1), draw(d_model, d_ff, scale=d_ff**-0.5),
                draw(d_model, scale=0.1), draw(tokens, d_model, grad=False))


def feed_forward_call(provider, *, activation, dropout_p):
    """fn(x, w1, b1, w2, b2) -> y for one provider (not the matmuls: see matmuls_call)."""
    if provider.startswith("fasttx-"):
        import fasttx
        backend = provider.removeprefix("fasttx-")

        def fused(x, w1, b1, w2, b2):
            return fasttx.feed_forward(x, w1, b1, w2, b2, activation=activation,
                                       dropout_p=dropout_p, backend=backend)
        return fused
    act = ACTIVATIONS[activation]

    def eager(x, w1, b1, w2, b2):
        return F.linear(F.dropout(act(F.linear(x, w1, b1)), dropout_p), w2, b2)
    if provider == "eager":
        return eager
    if provider == "compiled":
        torch._dynamo.reset()  # each case compiles afresh: no recompile limit, no stale graphs
        return torch.compile(eager, fullgraph=True, dynamic=False)
    raise ValueError(f"{provider!r} is not a feed-forward provider")


def matmuls_call(mode):
    """fn(case) -> the bare matmuls of ``mode``: fwd y; fwd+bwd (y, dx, dw1, dw2)."""
    def matmuls(case):
        x, w1, _, w2, _ = case.inputs
        with torch.no_grad():  # written out: autograd would add nothing but overhead
            hidden = x @ w1.T
            y = hidden @ w2.T
            if mode == "fwd":
                return y
            grad_hidden = case.grad_y @ w2
            return y, grad_hidden @ w1, grad_hidden.T @ x, case.grad_y.T @ hidden
    return matmuls


def timed_call(call, mode):
    """fn(case) -> fwd: y under no_grad; fwd+bwd: (y, gradients of x, w1, b1, w2, b2)."""
    if mode == "fwd":
        def forward(case):
            with torch.no_grad():
                return call(*case.inputs)
        return forward
    if mode == "fwd+bwd":
        def forward_backward(case):
            y = call(*case.inputs)
            return y, torch.autograd.grad(y, case.inputs, case.grad_y)
        return forward_backward
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def run_case(args, shape, dtype_name, activation, table):
    label, d_model, d_ff = shape
    sets = [make_case(args.tokens, d_model, d_ff, DTYPES[dtype_name], args.device, seed)
            for seed in range(args.input_sets)]
    options = dict(activation=activation, dropout_p=args.dropout)
    expected = None
    if args.dropout == 0.0:  # with dropout, the providers draw different masks
        expected = timed_call(feed_forward_call("fasttx-reference", **options), "fwd")(sets[0])

    times = {mode: {} for mode in args.modes}
    notes = {}
    for provider in args.providers:
        calls = {mode: matmuls_call(mode) for mode in args.modes} if provider == "matmuls" \
            else None
        try:
            if calls is None:
                call = feed_forward_call(provider, **options)
                calls = {mode: timed_call(call, mode) for mode in args.modes}
                if expected is not None:
                    with torch.no_grad():
                        harness.check_matches(provider, call(*sets[0].inputs), expected)
        except (harness.MismatchError, RuntimeError) as error:  # BackendUnavailable, OOM
            note = harness.failure_note(error)
            notes.update({(mode, provider): note for mode in args.modes})
            continue
        for mode in args.modes:
            try:
                times[mode][provider] = harness.time_ms(calls[mode], [(case,) for case in sets],
                                                        args.device)
            except RuntimeError as error:
                notes[mode, provider] = harness.failure_note(error)

    row = dict(shape=label, tokens=args.tokens, dtype=dtype_name, activation=activation)
    for mode in args.modes:
        matmuls_ms, eager_ms = times[mode].get("matmuls"), times[mode].get("eager")
        for provider in args.providers:
            ms = times[mode].get(provider)
            if ms is None:
                table.add(**row, mode=mode, provider=provider, note=notes[mode, provider])
                continue
            others = provider not in ("matmuls", "eager")
            table.add(**row, mode=mode, provider=provider, ms=ms,
                      tflops=flops(args.tokens, d_model, d_ff, d_model, mode) / ms / 1e9,
                      vs_matmuls=matmuls_ms / ms if matmuls_ms and provider != "matmuls"
                      else None,
                      vs_eager=eager_ms / ms if eager_ms and others else None,
                      note="floor: the matmuls alone" if provider == "matmuls" else None)


def plot(table, path):
    harness.plot_panels(table, path, panel_by=("mode", "dtype", "activation"), x="shape",
                        y="tflops", series="provider", ylabel="TFLOP/s")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shapes = lambda text: [parse_shape(item) for item in text.split(",")]  # noqa: E731
    parser.add_argument("--shapes", type=shapes, default=shapes("base,big,odd"),
                        help=f"comma-separated names ({', '.join(SHAPES)}) or DxF")
    parser.add_argument("--tokens", type=int, default=25000, help="N, tokens per batch")
    parser.add_argument("--dtypes", type=harness.choice_list(DTYPES), default=None,
                        help="comma-separated; default bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--activations", type=harness.choice_list(ACTIVATIONS),
                        default=["relu"])
    parser.add_argument("--modes", type=harness.choice_list(MODES), default=list(MODES))
    parser.add_argument("--providers", type=harness.choice_list(PROVIDERS),
                        default=list(PROVIDERS))
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout_p on the hidden")
    parser.add_argument("--input-sets", type=int, default=2)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, for checking the script (CPU: the Triton interpreter)")
    parser.add_argument("--out", type=harness.Path, default=None,
                        help="results folder (default benchmarks/results/<gpu>/)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    for name in ("tokens", "input_sets"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.smoke:
        args.shapes, args.tokens, args.input_sets = shapes("32x64,24x40"), 40, 1
    args.dtypes = args.dtypes or ["bf16" if args.device == "cuda" else "fp32"]
    return args


def main(argv=None):
    args = parse_args(argv)
    env = harness.start(args.device)
    env.update(dtypes=",".join(args.dtypes), tokens=args.tokens, dropout=args.dropout,
               float32_matmul_precision=torch.get_float32_matmul_precision(),
               ceilings=harness.ceilings(args.device))
    table = harness.Table(COLUMNS)
    cases = [(shape, dtype, activation) for shape in args.shapes for dtype in args.dtypes
             for activation in args.activations]
    for shape, dtype, activation in harness.progress(cases, len(cases), "feed_forward"):
        run_case(args, shape, dtype, activation, table)
    notes = ("TFLOP/s from the FFN's matmul FLOPs: fwd 2*N*D*F + 2*N*F*D_out, fwd+bwd 3x; "
             "the matmuls provider (the bare matmuls, no bias/activation/dropout) is rated by "
             "the same count. vs_matmuls: the matmuls' time / this provider's; vs_eager: "
             "eager's time / this provider's."
             + (" Dropout > 0: outputs not checked (the masks differ)." if args.dropout else ""))
    path = harness.write_results("feed_forward", env, table, notes, args.out, plot)
    print(table.markdown())
    print(f"\nwritten: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
