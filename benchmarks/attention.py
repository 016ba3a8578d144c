"""Attention benchmark: fasttx's Triton kernels against every torch SDPA backend.

    python -m benchmarks.attention                       # the default grid on the GPU
    python -m benchmarks.attention --head-dims 128 --seqlens 4096,16384 --masks causal
    python -m benchmarks.attention --device cpu --smoke  # a seconds-long run of the script

For each head dim, sequence length, mask and mode (forward, forward+backward) it times
fasttx (``backend="triton"``) and torch's SDPA with each backend forced (flash, efficient,
cudnn, math) and with torch's default choice; a backend that refuses the input is
recorded as such. Batch x sequence is fixed (16k tokens by default) and the heads fill a
model width of 2048, as FlashAttention's benchmarks do.

Masks: "none"; "causal"; "key_padding" (bool (B, 1, 1, L), each sequence's length drawn
uniformly from [1, L], so half the keys are padded on average); "key_padding+causal"
(fasttx takes the padding mask and is_causal=True; torch, which can't combine them on the
fast paths, gets the equivalent (B, 1, L, L) mask, built before timing).

TFLOP/s use the field's FLOP convention (FlashAttention's) on the dense problem: forward
4 * B * H * L^2 * D, forward+backward 3.5x that, causal half; for padded batches this is
an effective rate (the work a dense kernel would do per second). Every case also checks
that fasttx's output matches torch's default backend.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys

import torch
import torch.nn.functional as F

from benchmarks import harness

TORCH_BACKENDS = {"torch-flash": "FLASH_ATTENTION", "torch-efficient": "EFFICIENT_ATTENTION",
                  "torch-cudnn": "CUDNN_ATTENTION", "torch-math": "MATH"}
PROVIDERS = ("fasttx", "torch-default", *TORCH_BACKENDS)
MASKS = ("none", "causal", "key_padding", "key_padding+causal")
MODES = ("fwd", "fwd+bwd")
COLUMNS = ["head_dim", "seqlen", "batch", "heads", "mask", "mode", "provider", "ms", "tflops",
           "vs_default", "vs_best_torch", "note"]


def flops(batch, heads, seqlen, head_dim, mask, mode):
    """The FLOPs of one call as FlashAttention counts them."""
    forward = 4 * batch * heads * seqlen * seqlen * head_dim
    forward *= 0.5 if mask.endswith("causal") else 1.0
    return forward * (3.5 if mode == "fwd+bwd" else 1.0)


def make_case(batch, heads, seqlen, head_dim, mask, dtype, device, seed):
    """q, k, v (B, H, L, D) and each provider's masks: (fasttx_mask, torch_mask, causal)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, seqlen, head_dim, generator=generator).to(device, dtype)
               for _ in range(3))
    padding = None
    if mask.startswith("key_padding"):
        lengths = torch.randint(1, seqlen + 1, (batch,), generator=generator)
        padding = (torch.arange(seqlen) < lengths[:, None])[:, None, None, :].to(device)
    causal = mask.endswith("causal")
    torch_mask = padding
    if padding is not None and causal:
        lower = torch.ones(seqlen, seqlen, dtype=torch.bool, device=device).tril()
        torch_mask = padding & lower
    return q, k, v, padding, torch_mask, causal


def attention_call(provider):
    """fn(q, k, v, fasttx_mask, torch_mask, causal) -> out for one provider."""
    if provider == "fasttx":
        import fasttx

        def run(q, k, v, mask, _torch_mask, causal):
            return fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                       backend="triton")
        return run
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def run(q, k, v, _mask, torch_mask, causal):
        # torch's fast paths refuse attn_mask together with is_causal: the folded mask
        causal_flag = causal and torch_mask is None
        forced = (sdpa_kernel(getattr(SDPBackend, TORCH_BACKENDS[provider]))
                  if provider in TORCH_BACKENDS else contextlib.nullcontext())
        with forced:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=torch_mask,
                                                  is_causal=causal_flag)
    return run


def timed_call(provider, mode):
    attend = attention_call(provider)
    if mode == "fwd":
        def forward(*case):
            with torch.no_grad():
                return attend(*case)
        return forward

    def forward_backward(q, k, v, *masks):
        out = attend(q, k, v, *masks)
        return torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return forward_backward


def run_case(args, head_dim, seqlen, mask, table):
    batch = max(1, args.batch_tokens // seqlen)
    heads = max(1, args.width // head_dim)
    sets = [make_case(batch, heads, seqlen, head_dim, mask, args.dtype, args.device, seed)
            for seed in range(args.input_sets)]
    reference = None
    for mode in args.modes:
        if mode == "fwd+bwd":
            sets = [tuple(t.requires_grad_(True) if i < 3 else t for i, t in enumerate(case))
                    for case in sets]
        times = {}
        for provider in args.providers:
            note = None
            try:
                call = timed_call(provider, mode)
                if mode == "fwd" and provider in ("fasttx", "torch-default"):
                    reference = _check(provider, call(*sets[0]), reference)
                times[provider] = harness.time_ms(call, sets, args.device)
            except torch.cuda.OutOfMemoryError:
                note = "out of memory"
            except RuntimeError as error:  # a backend that refuses these inputs
                note = "refuses: " + str(error).splitlines()[0][:60]
            if note is not None:
                table.add(head_dim=head_dim, seqlen=seqlen, batch=batch, heads=heads, mask=mask,
                          mode=mode, provider=provider, note=note)
                if args.device == "cuda":
                    torch.cuda.empty_cache()
        torch_times = [t for p, t in times.items() if p.startswith("torch-") and p != "torch-math"]
        best_torch = min(torch_times) if torch_times else None
        for provider, ms in times.items():
            table.add(head_dim=head_dim, seqlen=seqlen, batch=batch, heads=heads, mask=mask,
                      mode=mode, provider=provider, ms=ms,
                      tflops=flops(batch, heads, seqlen, head_dim, mask, mode) / ms / 1e9,
                      vs_default=(times["torch-default"] / ms if "torch-default" in times
                                  and provider == "fasttx" else None),
                      vs_best_torch=best_torch / ms if best_torch and provider == "fasttx"
                      else None)


def _check(provider, out, reference):
    """fasttx's forward must match torch's default before either is timed."""
    if reference is None:
        return out
    error = (out.float() - reference.float()).abs().max().item()
    if not error < 0.05 * max(1.0, reference.float().abs().max().item()):
        raise AssertionError(f"{provider} differs from the first provider by {error:.3g}")
    return reference


def plot(table, path):
    import matplotlib.pyplot as plt
    rows = [r for r in table.rows if r["tflops"] is not None]
    panels = sorted({(r["mode"], r["mask"], r["head_dim"]) for r in rows})
    columns = min(4, len(panels))
    figure, axes = plt.subplots(math.ceil(len(panels) / columns), columns, squeeze=False,
                                figsize=(4.2 * columns, 3.4 * math.ceil(len(panels) / columns)))
    for axis, (mode, mask, head_dim) in zip(axes.flat, panels, strict=False):
        for provider in PROVIDERS:
            points = sorted((r["seqlen"], r["tflops"]) for r in rows if r["provider"] == provider
                            and (r["mode"], r["mask"], r["head_dim"]) == (mode, mask, head_dim))
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=provider)
        axis.set(title=f"{mode}, {mask}, d={head_dim}", xscale="log", xlabel="sequence length",
                 ylabel="TFLOP/s")
    axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--head-dims", type=harness.int_list, default=[64, 128])
    parser.add_argument("--seqlens", type=harness.int_list, default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--masks", type=harness.choice_list(MASKS), default=list(MASKS))
    parser.add_argument("--modes", type=harness.choice_list(MODES), default=list(MODES))
    parser.add_argument("--providers", type=harness.choice_list(PROVIDERS), default=list(PROVIDERS))
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                        help="default bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--batch-tokens", type=int, default=16384)
    parser.add_argument("--width", type=int, default=2048, help="heads x head dim")
    parser.add_argument("--input-sets", type=int, default=2)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, for checking the script (CPU: the Triton interpreter)")
    parser.add_argument("--out", type=harness.Path, default=None,
                        help="results folder (default benchmarks/results/<gpu>/)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.head_dims, args.seqlens, args.batch_tokens, args.width = [16], [32], 64, 32
        args.input_sets = 1
    if args.device == "cpu":
        args.providers = [p for p in args.providers if p in ("fasttx", "torch-default",
                                                             "torch-math")]
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if args.device == "cuda" else "float32"))
    return args


def main(argv=None):
    args = parse_args(argv)
    env = harness.start(args.device)
    env.update(dtype=str(args.dtype).removeprefix("torch."), ceilings=harness.ceilings(args.device))
    table = harness.Table(COLUMNS)
    cases = [(d, n, m) for d in args.head_dims for n in args.seqlens for m in args.masks]
    for head_dim, seqlen, mask in harness.progress(cases, len(cases), "attention"):
        run_case(args, head_dim, seqlen, mask, table)
    notes = ("TFLOP/s by the dense FLOP convention (fwd 4BHL^2D, fwd+bwd 3.5x, causal /2); "
             "vs_default / vs_best_torch: torch's time / fasttx's time (best torch excludes "
             "math).")
    path = harness.write_results("attention", env, table, notes, args.out, plot)
    print(table.markdown())
    print(f"\nwritten: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
