"""Add + LayerNorm benchmark: fasttx's fused op against eager and compiled PyTorch and a copy.

    python -m benchmarks.add_layer_norm                      # the default sweep, bf16, on the GPU
    python -m benchmarks.add_layer_norm --hidden-sizes 1024,8192 --dtypes bf16,fp32 --modes fwd
    python -m benchmarks.add_layer_norm --return-residual --residual-dtype fp32 --dropout 0.1
    python -m benchmarks.add_layer_norm --device cpu --smoke  # a seconds-long run of the script

The op is ``s = residual + dropout(x)``, ``y = layer_norm(s) * weight + bias`` on (rows, D)
tensors (``fasttx.add_layer_norm``; with --return-residual it also returns s, as pre-norm
stacks need). For each dtype, hidden size D and mode it times:

- ``fasttx-triton`` and ``fasttx-reference``: ``fasttx.add_layer_norm(..., backend=...)``;
- ``eager``: ``s = residual + F.dropout(x, p)``; ``F.layer_norm(s, (D,), weight, bias, eps)``;
- ``compiled``: ``torch.compile(fullgraph=True, dynamic=False)`` of that eager function;
- ``copy``: the ceiling, a same-device copy of as many bytes as x holds, timed in the
  same run on the same number of input sets (its GB/s count the read and the write).

A provider that can't run (no Triton kernel, torch.compile failing, out of memory) is
recorded with the reason. With dropout 0, every provider's forward is checked against
fasttx's reference backend before anything is timed.

Modes: ``fwd`` (under ``torch.no_grad``), ``bwd`` (``torch.autograd.grad`` of the outputs
for x, residual, weight and bias with pre-drawn output gradients, through a graph built
by a forward run outside the timed region and retained between calls) and ``fwd+bwd``
(forward with autograd, then the same gradients). Rows are chosen so that x holds at
least --activation-mb MiB (64 by default), so the problem is memory-bound and not served
from the L2 cache; input sets are cycled as in every benchmark here.

GB/s count the bytes the op must move (:func:`forward_bytes`, :func:`backward_bytes`),
whatever a provider actually moves (eager's extra passes and dropout mask are its loss);
``vs_copy`` is that rate as a fraction of the copy's.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import NamedTuple

import torch
import torch.nn.functional as F

from benchmarks import harness

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
PROVIDERS = ("fasttx-triton", "fasttx-reference", "eager", "compiled", "copy")
MODES = ("fwd", "bwd", "fwd+bwd")
HIDDEN_SIZES = [512, 768, 1024, 2048, 4096, 8192, 16384, 65536]
COLUMNS = ["hidden", "rows", "dtype", "mode", "provider", "ms", "gb_per_s", "vs_copy", "vs_eager",
           "note"]


def _stats_size(dtype: torch.dtype) -> int:
    """Bytes of one row statistic (mean or rstd): fp32, fp64 for fp64 inputs."""
    return torch.promote_types(dtype, torch.float32).itemsize


def forward_bytes(rows: int, hidden: int, dtype: torch.dtype, residual_dtype: torch.dtype,
                  *, return_residual: bool, saves_for_backward: bool = False) -> int:
    """Bytes a forward must move.

    It reads x (``dtype``), the residual (``residual_dtype``), weight and bias (``dtype``,
    (D,) each) and writes y (``dtype``), and s (``residual_dtype``) when it is returned.
    A forward that autograd will differentiate (``saves_for_backward``) also writes what
    the backward reads: s, if not returned anyway, and the row mean and rstd (N each).
    """
    elements = rows * hidden
    moved = elements * (2 * dtype.itemsize + residual_dtype.itemsize) + 2 * hidden * dtype.itemsize
    if return_residual or saves_for_backward:
        moved += elements * residual_dtype.itemsize
    if saves_for_backward:
        moved += 2 * rows * _stats_size(dtype)
    return moved


def backward_bytes(rows: int, hidden: int, dtype: torch.dtype, residual_dtype: torch.dtype,
                   *, return_residual: bool) -> int:
    """Bytes a backward must move.

    It reads dy (``dtype``), ds (``residual_dtype``) when s was returned, the saved s
    (``residual_dtype``), weight (``dtype``) and the row mean and rstd (N each), and writes
    dx (``dtype``), dresidual (``residual_dtype``), dweight and dbias (``dtype``).
    """
    elements = rows * hidden
    stream = elements * residual_dtype.itemsize
    reads = elements * dtype.itemsize + stream * (2 if return_residual else 1)
    reads += hidden * dtype.itemsize + 2 * rows * _stats_size(dtype)
    writes = elements * dtype.itemsize + stream + 2 * hidden * dtype.itemsize
    return reads + writes


def moved_bytes(mode: str, rows: int, hidden: int, dtype: torch.dtype,
                residual_dtype: torch.dtype, *, return_residual: bool) -> int:
    """The bytes one call in ``mode`` must move; fwd+bwd is a saving forward + a backward."""
    sizes = (rows, hidden, dtype, residual_dtype)
    if mode == "fwd":
        return forward_bytes(*sizes, return_residual=return_residual)
    backward = backward_bytes(*sizes, return_residual=return_residual)
    if mode == "bwd":
        return backward
    return backward + forward_bytes(*sizes, return_residual=return_residual,
                                    saves_for_backward=True)


def rows_for(hidden: int, dtype: torch.dtype, activation_mib: float) -> int:
    """The fewest rows for which x (rows, hidden) holds at least ``activation_mib`` MiB."""
    return max(1, math.ceil(activation_mib * 2**20 / (hidden * dtype.itemsize)))


class Case(NamedTuple):
    """One input set: the op's inputs (all requiring grad) and the output gradients."""

    x: torch.Tensor
    residual: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    grad_y: torch.Tensor
    grad_s: torch.Tensor | None  # only when s is returned

    @property
    def inputs(self) -> tuple[torch.Tensor, ...]:
        return self.x, self.residual, self.weight, self.bias


def make_case(rows, hidden, dtype, residual_dtype, device, seed, *, return_residual) -> Case:
    generator = torch.Generator(device="cpu").manual_seed(seed)

    def draw(*shape, dtype, scale=1.0, shift=0.0, grad=True):
        values = torch.randn(*shape, generator=generator) * scale + shift
        return values.to(device, dtype).requires_grad_(grad)

    return Case(draw(rows, hidden, dtype=dtype), draw(rows, hidden, dtype=residual_dtype),
                draw(hidden, dtype=dtype, scale=0.1, shift=1.0),
                draw(hidden, dtype=dtype, scale=0.1),
                draw(rows, hidden, dtype=dtype, grad=False),
                draw(rows, hidden, dtype=residual_dtype, grad=False) if return_residual else None)


def layer_norm_call(provider, hidden, *, eps, dropout_p, return_residual):
    """fn(x, residual, weight, bias) -> y, or (y, s) with return_residual, for one provider."""
    if provider.startswith("fasttx-"):
        import fasttx
        backend = provider.removeprefix("fasttx-")

        def fused(x, residual, weight, bias):
            return fasttx.add_layer_norm(x, residual, weight, bias, eps, dropout_p=dropout_p,
                                         return_residual=return_residual, backend=backend)
        return fused

    def eager(x, residual, weight, bias):
        s = residual + F.dropout(x, dropout_p)
        # a wider residual stream makes s wider: y is normalised in s's dtype, returned in x's
        y = F.layer_norm(s, (hidden,), weight.to(s.dtype), bias.to(s.dtype), eps).to(x.dtype)
        return (y, s) if return_residual else y
    if provider == "eager":
        return eager
    if provider == "compiled":
        torch._dynamo.reset()  # each case compiles afresh: no recompile limit, no stale graphs
        return torch.compile(eager, fullgraph=True, dynamic=False)
    raise ValueError(f"{provider!r} is not a layer-norm provider")


def timed_call(call, mode):
    """(prepare, timed) for one mode: ``prepare(case)``, run before timing, returns the
    arguments of ``timed``, the function that is timed.

    fwd: ``timed(case)`` -> output under no_grad. fwd+bwd: ``timed(case)`` -> (output,
    gradients of x, residual, weight, bias). bwd: ``prepare`` runs the forward with
    autograd; ``timed(outputs, inputs, output_grads)`` -> the gradients (graph retained).
    """
    def outputs_and_grads(out, case):
        outputs = out if isinstance(out, tuple) else (out,)
        return outputs, (case.grad_y, case.grad_s)[:len(outputs)]

    if mode == "fwd":
        def forward(case):
            with torch.no_grad():
                return call(*case.inputs)
        return (lambda case: (case,)), forward
    if mode == "fwd+bwd":
        def forward_backward(case):
            out = call(*case.inputs)
            outputs, output_grads = outputs_and_grads(out, case)
            return out, torch.autograd.grad(outputs, case.inputs, output_grads)
        return (lambda case: (case,)), forward_backward
    if mode == "bwd":
        def prepare(case):
            return (*outputs_and_grads(call(*case.inputs), case), case.inputs)

        def backward(outputs, output_grads, inputs):
            return torch.autograd.grad(outputs, inputs, output_grads, retain_graph=True)
        return prepare, backward
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def run_case(args, dtype_name, hidden, table):
    dtype = DTYPES[dtype_name]
    residual_dtype = DTYPES[args.residual_dtype] if args.residual_dtype else dtype
    rows = args.rows or rows_for(hidden, dtype, args.activation_mb)
    sets = [make_case(rows, hidden, dtype, residual_dtype, args.device, seed,
                      return_residual=args.return_residual) for seed in range(args.input_sets)]
    options = dict(eps=args.eps, dropout_p=args.dropout, return_residual=args.return_residual)
    x_bytes = rows * hidden * dtype.itemsize
    copy_ms = harness.copy_ms(x_bytes, args.device, copies=args.input_sets)
    copy_rate = harness.gb_per_s(2 * x_bytes, copy_ms)
    expected = None
    if args.dropout == 0.0:  # with dropout, the providers draw different masks
        with torch.no_grad():
            expected = layer_norm_call("fasttx-reference", hidden, **options)(*sets[0].inputs)

    times = {mode: {"copy": copy_ms} for mode in args.modes}
    notes = {}
    for provider in args.providers:
        if provider == "copy":
            continue
        try:
            call = layer_norm_call(provider, hidden, **options)
            if expected is not None:
                with torch.no_grad():
                    harness.check_matches(provider, call(*sets[0].inputs), expected)
        except (harness.MismatchError, RuntimeError) as error:  # BackendUnavailable, OOM
            note = harness.failure_note(error)
            notes.update({(mode, provider): note for mode in args.modes})
            continue
        for mode in args.modes:
            try:
                prepare, timed = timed_call(call, mode)
                times[mode][provider] = harness.time_ms(timed, [prepare(case) for case in sets],
                                                        args.device)
            except RuntimeError as error:
                notes[mode, provider] = harness.failure_note(error)

    for mode in args.modes:
        eager_ms = times[mode].get("eager")
        for provider in args.providers:
            ms = times[mode].get(provider)
            if ms is None:
                table.add(hidden=hidden, rows=rows, dtype=dtype_name, mode=mode,
                          provider=provider, note=notes[mode, provider])
                continue
            if provider == "copy":
                rate, note = copy_rate, "ceiling: a copy of x's bytes (read + write)"
            else:
                rate, note = harness.gb_per_s(moved_bytes(
                    mode, rows, hidden, dtype, residual_dtype,
                    return_residual=args.return_residual), ms), None
            table.add(hidden=hidden, rows=rows, dtype=dtype_name, mode=mode, provider=provider,
                      ms=ms, gb_per_s=rate, vs_copy=rate / copy_rate,
                      vs_eager=(eager_ms / ms if eager_ms and provider not in ("eager", "copy")
                                else None), note=note)


def plot(table, path):
    harness.plot_panels(table, path, panel_by=("mode", "dtype"), x="hidden", y="gb_per_s",
                        series="provider", ylabel="GB/s")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden-sizes", type=harness.int_list, default=HIDDEN_SIZES)
    parser.add_argument("--dtypes", type=harness.choice_list(DTYPES), default=None,
                        help="comma-separated; default bf16 on a GPU, fp32 on CPU")
    parser.add_argument("--modes", type=harness.choice_list(MODES), default=list(MODES))
    parser.add_argument("--providers", type=harness.choice_list(PROVIDERS),
                        default=list(PROVIDERS))
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout_p on x")
    parser.add_argument("--return-residual", action="store_true",
                        help="also return (and write) s, as pre-norm stacks do")
    parser.add_argument("--residual-dtype", choices=list(DTYPES), default=None,
                        help="the residual stream's dtype (default: the dtype of x)")
    parser.add_argument("--eps", type=float, default=1e-5)
    parser.add_argument("--activation-mb", type=float, default=64.0,
                        help="rows are chosen so that x holds at least this many MiB")
    parser.add_argument("--rows", type=int, default=None, help="fixed rows (overrides the above)")
    parser.add_argument("--input-sets", type=int, default=2)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, for checking the script (CPU: the Triton interpreter)")
    parser.add_argument("--out", type=harness.Path, default=None,
                        help="results folder (default benchmarks/results/<gpu>/)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.dropout < 1.0:
        parser.error(f"--dropout must be in [0, 1), got {args.dropout}")
    for name in ("eps", "activation_mb", "rows", "input_sets"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.smoke:
        args.hidden_sizes, args.rows, args.input_sets = [16, 48], 8, 1
    args.dtypes = args.dtypes or ["bf16" if args.device == "cuda" else "fp32"]
    return args


def main(argv=None):
    args = parse_args(argv)
    env = harness.start(args.device)
    env.update(dtypes=",".join(args.dtypes), residual_dtype=args.residual_dtype or "as x",
               dropout=args.dropout, return_residual=args.return_residual, eps=args.eps,
               ceilings=harness.ceilings(args.device))
    table = harness.Table(COLUMNS)
    cases = [(dtype, hidden) for dtype in args.dtypes for hidden in args.hidden_sizes]
    for dtype, hidden in harness.progress(cases, len(cases), "add_layer_norm"):
        run_case(args, dtype, hidden, table)
    notes = ("GB/s from the bytes the op must move: fwd reads x, residual, weight, bias and "
             "writes y (and s when returned); bwd reads dy (and ds), s, weight, mean, rstd and "
             "writes dx, dresidual, dweight, dbias; fwd+bwd adds a forward that also writes s, "
             "mean and rstd for the backward. vs_copy: that rate / the copy's (a copy of x's "
             "bytes, read + write, same run); vs_eager: eager's time / this provider's."
             + (" Dropout > 0: outputs not checked (the masks differ)." if args.dropout else ""))
    path = harness.write_results("add_layer_norm", env, table, notes, args.out, plot)
    print(table.markdown())
    print(f"\nwritten: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
