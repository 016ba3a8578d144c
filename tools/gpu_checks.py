"""The checks ``tools/gpu_run.py`` runs, each in its own process (this file imports torch).

    python3 tools/gpu_checks.py env                                  # versions, GPU, ceilings
    python3 tools/gpu_checks.py kernels                              # which attention kernel ran
    python3 tools/gpu_checks.py elf fasttx/_C*.so                    # sm_90a images, wgmma in them
    python3 tools/gpu_checks.py smoke attention triton [--size one-tile|realistic|all]
    ... --rehearse                                                   # on CPU: tiny, interpreter

A smoke case runs one op through the functional API on a backend, forward and backward, and
holds it to the tolerance rule against the reference in float64 on the same device, with
the reference in the inputs' own dtype as the plain-PyTorch baseline (2x for outputs, 3x for
gradients, the same dropout mask everywhere). Every command prints one line per check and,
last, ``RESULT {json}`` with what gpu_run's summary shows; its exit status is 1 when a check
failed. Under ``--rehearse`` the "cuda" backend is the reference (there is no GPU) and
bf16 becomes fp32 (the interpreter's bf16 dot product is wrong).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: fasttx, benchmarks
REHEARSE = "--rehearse" in sys.argv
if REHEARSE:  # before triton is imported: kernels on CPU tensors
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import fasttx  # noqa: E402
from fasttx.testing import assert_within_budget, attention_mask, random_tensor  # noqa: E402

FAMILIES = ("attention", "varlen_attention", "add_layer_norm", "feed_forward")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# words in the kernel names worth reporting: fasttx's own, and cuBLAS(Lt)'s GEMMs
KERNEL_WORDS = ("attention", "layer_norm", "column_sum", "feed_forward", "activation", "gemm",
                "nvjet", "xmma", "cutlass")


def device() -> str:
    return "cpu" if REHEARSE else "cuda"


def backend_name(backend: str) -> str:
    return "reference" if REHEARSE and backend == "cuda" else backend


def result(headline: str, **fields) -> None:
    """The command's last line: what gpu_run's summary shows, and the figures beside it."""
    print("RESULT " + json.dumps(dict(headline=headline, **fields)), flush=True)


# ---------------------------------------------------------------- env, kernels, elf

def ceilings() -> dict:
    """An 8192^3 bf16 matmul (TFLOP/s) and a 2 GiB copy (GB/s), as the benchmarks measure."""
    from benchmarks import harness  # the suite's own timing: the same figures it reports
    return harness.ceilings(device())


def command_env(_args) -> int:
    info = {"python": sys.version.split()[0], "torch": torch.__version__,
            "cuda": torch.version.cuda, "fasttx": fasttx.__version__,
            "backends": {name: ok for name, ok in fasttx.available_backends().items()},
            "reasons": dict(fasttx.available_backends().reasons)}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError as error:
        info["triton"] = f"not importable: {error}"
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}",
                    sms=properties.multi_processor_count,
                    memory_gib=round(properties.total_memory / 2**30, 1),
                    driver=_nvidia_smi("driver_version"))
    info["ceilings"] = ceilings()
    for name, value in info.items():
        print(f"{name}: {value}")
    peak = info["ceilings"]
    result(f"{info.get('gpu', 'no GPU')}, driver {info.get('driver', '-')}, torch "
           f"{info['torch']}, triton {info['triton']}, CUDA {info['cuda']}; ceilings "
           f"{peak.get('bf16_matmul_tflops', '-')} TFLOP/s bf16, {peak.get('copy_gbps', '-')} "
           f"GB/s copy; unavailable: {', '.join(info['reasons']) or 'none'}", **info)
    return 0


def _nvidia_smi(query: str) -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                          capture_output=True, text=True)
    return done.stdout.strip() or None


def kernels_of(call) -> list[str]:
    """The CUDA kernels ``call`` launches (profiler names, shortened at their template)."""
    from torch.profiler import ProfilerActivity, profile
    if REHEARSE or os.environ.get("FASTTX_NO_PROFILER"):  # under compute-sanitizer
        call()
        return []
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        call()
        torch.cuda.synchronize()
    names = {short_kernel_name(event.key) for event in prof.key_averages()}
    return sorted(name for name in names if any(word in name for word in KERNEL_WORDS))


def short_kernel_name(key: str) -> str:
    """"void fasttx::attention::(anonymous namespace)::attention_forward_sm90_kernel<__half,
    128>(...)" -> "attention_forward_sm90_kernel"."""
    key = key.replace("(anonymous namespace)::", "")
    return re.split(r"[<(]", key)[0].split()[-1].split("::")[-1] if key.strip() else key


def command_kernels(_args) -> int:
    """Which attention forward kernel the cuda backend runs: the Hopper one (fp16/bf16,
    head dim 64 or 128, no mask) and the sm_80 one (head dim 80)."""
    from fasttx.cuda import build_info
    info = build_info() if not REHEARSE else {"attention_kernels": ["(rehearsal)"]}
    print("build:", info)
    ran = {}
    for case, dim in (("hopper_case", 128), ("sm80_case", 80)):
        q, k, v = (random_tensor(2, 8, 1024, dim, dtype=torch.float16, device=device(), seed=i)
                   for i in range(3))
        ran[case] = kernels_of(lambda q=q, k=k, v=v: fasttx.scaled_dot_product_attention(
            q, k, v, backend=backend_name("cuda")))
        print(f"{case} (head dim {dim}): {ran[case]}")
    hopper_ran = any("sm90" in name for name in ran["hopper_case"])
    expected = "sm90a" in info["attention_kernels"] and not REHEARSE
    result(f"head dim 128 ran {ran['hopper_case']}, head dim 80 ran {ran['sm80_case']}; "
           f"compiled in: {info['attention_kernels']}", build=info,
           hopper_kernel_ran=hopper_ran, **ran)
    if expected and not hopper_ran:
        print("FAIL: the Hopper kernel is built but the sm_80 one ran", file=sys.stderr)
        return 1
    return 0


def cuobjdump() -> str:
    """The toolkit's cuobjdump, else the one Triton ships."""
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for candidate in (os.path.join(home, "bin", "cuobjdump"), shutil.which("cuobjdump")):
        if candidate and os.path.exists(candidate):
            return candidate
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                        "cuobjdump")


def command_elf(args) -> int:
    """Every GPU image in the file is sm_90a, and the Hopper kernel's holds wgmma (HGMMA):
    an sm_90 image would carry it with an empty body."""
    tool = cuobjdump()
    elf = subprocess.run([tool, "--dump-elf", args.path], capture_output=True, text=True)
    archs = re.findall(r"arch = (sm_\w+)", elf.stdout)
    sass = subprocess.run([tool, "--dump-sass", args.path], capture_output=True, text=True)
    hgmma = len(re.findall(r"\bHGMMA\.", sass.stdout))
    print(f"{args.path}: {len(archs)} images, arch {sorted(set(archs))}, {hgmma} HGMMA")
    ok = bool(archs) and set(archs) == {"sm_90a"} and hgmma > 0
    result(f"{len(archs)} images {sorted(set(archs))}, {hgmma} HGMMA", images=len(archs),
           archs=sorted(set(archs)), hgmma=hgmma, ok=ok)
    return 0 if ok else 1


# ---------------------------------------------------------------- smoke cases

@dataclass
class Case:
    """One smoke case of a family: its size class, dtype and shape/options."""
    size: str      # "one-tile" or "realistic"
    dtype: str
    shape: dict = field(default_factory=dict)

    def label(self, family: str) -> str:
        sizes = " ".join(f"{k}={v}" for k, v in self.shape.items())
        return f"{family} {self.size} {self.dtype} {sizes}"


def _cases() -> dict[str, list[Case]]:
    if REHEARSE:  # the interpreter: a few tiles at most
        one = dict(attention=dict(batch=1, heads=1, kv_heads=1, len_q=16, len_k=16, dim=16),
                   varlen_attention=dict(lengths_q=[1, 16], lengths_k=[3, 16], heads=1,
                                         kv_heads=1, dim=16),
                   add_layer_norm=dict(rows=1, dim=32),
                   feed_forward=dict(tokens=7, dim=16, hidden=32))
        big = dict(attention=dict(batch=2, heads=2, kv_heads=1, len_q=33, len_k=20, dim=24,
                                  mask="key_padding", causal=True, dropout=0.1),
                   varlen_attention=dict(lengths_q=[5, 1, 12], lengths_k=[9, 3, 12], heads=2,
                                         kv_heads=1, dim=24, causal=True),
                   add_layer_norm=dict(rows=13, dim=97, dropout=0.1),
                   feed_forward=dict(tokens=9, dim=24, hidden=40, activation="gelu",
                                     dropout=0.1))
        sm80 = dict(batch=1, heads=1, kv_heads=1, len_q=16, len_k=16, dim=80,
                    mask="key_padding")
        dtypes = ("fp16", "fp32")
    else:
        one = dict(attention=dict(batch=1, heads=1, kv_heads=1, len_q=128, len_k=128, dim=64),
                   varlen_attention=dict(lengths_q=[1, 64], lengths_k=[64, 1], heads=1,
                                         kv_heads=1, dim=64),
                   add_layer_norm=dict(rows=1, dim=512),
                   feed_forward=dict(tokens=16, dim=64, hidden=256))
        big = dict(attention=dict(batch=4, heads=8, kv_heads=2, len_q=1000, len_k=1000,
                                  dim=128, causal=True),
                   varlen_attention=dict(lengths_q=[1, 127, 128, 129, 300, 1000],
                                         lengths_k=[5, 128, 1, 200, 300, 999], heads=8,
                                         kv_heads=2, dim=128, causal=True),
                   add_layer_norm=dict(rows=4099, dim=1024, dropout=0.1),
                   feed_forward=dict(tokens=4099, dim=512, hidden=2048, activation="gelu",
                                     dropout=0.1))
        sm80 = dict(batch=1, heads=1, kv_heads=1, len_q=64, len_k=64, dim=80, mask="key_padding")
        dtypes = ("bf16", "fp16")
    cases = {}
    for family in FAMILIES:
        cases[family] = [Case("one-tile", "fp16", one[family])]
        cases[family] += [Case("realistic", dtype, big[family]) for dtype in dtypes]
    # the sm_80 attention kernels of the cuda backend: a mask, head dim 80, dropout
    cases["attention"].append(Case("one-tile", "fp16", sm80))
    if not REHEARSE:
        cases["attention"] += [Case("realistic", dtype, dict(
            batch=3, heads=4, kv_heads=4, len_q=777, len_k=513, dim=80, mask="bool",
            dropout=0.1)) for dtype in dtypes]
    return cases


def _leaves(tensors, dtype):
    return [None if t is None else t.to(dtype=dtype).detach().requires_grad_(t.is_floating_point())
            for t in tensors]


def _inputs(family: str, shape: dict, seed: int) -> tuple[list, dict]:
    """float64 inputs on the device and the call's options."""
    dev = device()
    if family == "attention":
        q = random_tensor(shape["batch"], shape["heads"], shape["len_q"], shape["dim"],
                          dtype=torch.float64, device=dev, seed=seed)
        k, v = (random_tensor(shape["batch"], shape["kv_heads"], shape["len_k"], shape["dim"],
                              dtype=torch.float64, device=dev, seed=seed + i) for i in (1, 2))
        mask = attention_mask(shape.get("mask", "none"), shape["batch"], shape["heads"],
                              shape["len_q"], shape["len_k"], seed=seed, device=dev)
        options = dict(attn_mask=mask, is_causal=shape.get("causal", False), enable_gqa=True,
                       dropout_p=shape.get("dropout", 0.0))
        return [q, k, v], options
    if family == "varlen_attention":
        def packed(lengths, heads, offset):
            return random_tensor(sum(lengths), heads, shape["dim"], dtype=torch.float64,
                                 device=dev, seed=seed + offset)
        cu = [torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                           device=dev) for lengths in (shape["lengths_q"], shape["lengths_k"])]
        tensors = [packed(shape["lengths_q"], shape["heads"], 0),
                   packed(shape["lengths_k"], shape["kv_heads"], 1),
                   packed(shape["lengths_k"], shape["kv_heads"], 2)]
        options = dict(cu_seqlens_q=cu[0], cu_seqlens_k=cu[1],
                       max_seqlen_q=max(shape["lengths_q"]), max_seqlen_k=max(shape["lengths_k"]),
                       is_causal=shape.get("causal", False))
        return tensors, options
    if family == "add_layer_norm":
        rows, dim = shape["rows"], shape["dim"]
        x = random_tensor(rows, dim, dtype=torch.float64, device=dev, seed=seed, scale=2.0)
        residual = random_tensor(rows, dim, dtype=torch.float64, device=dev, seed=seed + 1)
        weight = 1 + random_tensor(dim, dtype=torch.float64, device=dev, seed=seed + 2,
                                   scale=0.5)
        bias = random_tensor(dim, dtype=torch.float64, device=dev, seed=seed + 3)
        return [x, residual, weight, bias], dict(dropout_p=shape.get("dropout", 0.0),
                                                 return_residual=True)
    tokens, dim, hidden = shape["tokens"], shape["dim"], shape["hidden"]
    x = random_tensor(tokens, dim, dtype=torch.float64, device=dev, seed=seed)
    w1 = random_tensor(hidden, dim, dtype=torch.float64, device=dev, seed=seed + 1,
                       scale=1 / math.sqrt(dim))
    b1 = random_tensor(hidden, dtype=torch.float64, device=dev, seed=seed + 2, scale=0.1)
    w2 = random_tensor(dim, hidden, dtype=torch.float64, device=dev, seed=seed + 3,
                       scale=1 / math.sqrt(hidden))
    b2 = random_tensor(dim, dtype=torch.float64, device=dev, seed=seed + 4, scale=0.1)
    return [x, w1, b1, w2, b2], dict(activation=shape.get("activation", "relu"),
                                     dropout_p=shape.get("dropout", 0.0))


def _call(family, tensors, options, backend):
    """The functional op on ``backend``, its dropout seed drawn after manual_seed(0)."""
    torch.manual_seed(0)
    function = {"attention": fasttx.scaled_dot_product_attention,
                "varlen_attention": fasttx.varlen_attention,
                "add_layer_norm": fasttx.add_layer_norm,
                "feed_forward": fasttx.feed_forward}[family]
    if family == "attention" and options["attn_mask"] is not None \
            and options["attn_mask"].is_floating_point():
        options = dict(options, attn_mask=options["attn_mask"].to(tensors[0].dtype))
    out = function(*tensors, **options, backend=backend)
    return out if isinstance(out, tuple) else (out,)


def run_case(family: str, backend: str, case: Case, seed: int) -> list[str]:
    """Checks a case's outputs and gradients; returns the names of failed checks."""
    wide, options = _inputs(family, case.shape, seed)
    low = _leaves(wide, DTYPES[case.dtype])
    wide = _leaves(wide, torch.float64)
    outputs = _call(family, low, options, backend_name(backend))
    expected = _call(family, wide, options, "reference")
    baseline_inputs = _leaves(low, DTYPES[case.dtype])
    baseline = _call(family, baseline_inputs, options, "reference")
    grads = [random_tensor(*o.shape, dtype=o.dtype, device=device(), seed=seed + 9 + i)
             for i, o in enumerate(outputs)]
    checks = [(f"out{i}", o, e, b, 2.0) for i, (o, e, b) in
              enumerate(zip(outputs, expected, baseline, strict=True))]
    for name, got, want, base in zip(
            ("dx0", "dx1", "dx2", "dx3", "dx4"),
            torch.autograd.grad(outputs, low, grads),
            torch.autograd.grad(expected, wide, [g.double() for g in grads]),
            torch.autograd.grad(baseline, baseline_inputs, grads), strict=False):
        checks.append((name, got, want, base, 3.0))
    failed = []
    for name, got, want, base, factor in checks:
        try:
            assert_within_budget(got, want, base, factor=factor, name=name)
            print(f"    ok   {name}: max error {(got.double() - want).abs().max():.2e}")
        except AssertionError as error:
            print(f"    FAIL {error}")
            failed.append(name)
    return failed


def _device_usable() -> bool:
    """False after a sticky CUDA error (an illegal address): the context is lost."""
    try:
        torch.zeros(1, device="cuda").add_(1)
        torch.cuda.synchronize()
        return True
    except RuntimeError:
        return False


def command_smoke(args) -> int:
    cases = [c for c in _cases()[args.family] if args.size in ("all", c.size)
             and args.head_dim in (None, c.shape["dim"])]
    if not cases:
        print(f"no {args.family} case of size {args.size} and head dim {args.head_dim}")
        result("no case selected", family=args.family, backend=args.backend, cases=0, passed=0,
               failed=["no case selected"], kernels=[], seconds=0)
        return 1
    passed, failed, kernels, started = 0, [], [], time.perf_counter()
    for index, case in enumerate(cases):
        label = case.label(args.family)
        print(f"  {args.backend} {label}", flush=True)
        case_started = time.perf_counter()
        try:
            names = run_case(args.family, args.backend, case, seed=17 * index + 1)
            if not REHEARSE:
                torch.cuda.synchronize()  # an asynchronous error shows here, in this case
        except Exception as error:  # noqa: BLE001 - a case that raises is a failed check
            print(f"    FAIL raised {type(error).__name__}: {error}")
            names = ["raised"]
        print(f"    ({time.perf_counter() - case_started:.1f} s)", flush=True)
        failed += [f"{label}: {name}" for name in names]
        passed += not names
        if "raised" in names and not REHEARSE and not _device_usable():
            failed.append("the GPU context is broken: the cases after this one did not run")
            break
        if index == 0 and args.backend == "cuda":
            wide, options = _inputs(args.family, case.shape, 1)
            low = _leaves(wide, DTYPES[case.dtype])
            kernels = kernels_of(lambda low=low, options=options: _call(
                args.family, low, options, backend_name("cuda")))
            print(f"    kernels: {kernels}")
    headline = f"{passed}/{len(cases)} cases passed"
    headline += f"; failed: {'; '.join(failed)[:200]}" if failed else ""
    headline += f"; kernels {', '.join(kernels)[:160]}" if kernels else ""
    result(headline, family=args.family, backend=args.backend, cases=len(cases), passed=passed,
           failed=failed, kernels=kernels, seconds=round(time.perf_counter() - started, 1))
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true",
                        help="on CPU: tiny cases, the interpreter, the reference for cuda")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="versions, GPU, backends and the measured ceilings")
    commands.add_parser("kernels", help="which attention kernel the cuda backend runs")
    elf = commands.add_parser("elf", help="the GPU images of a binary are sm_90a")
    elf.add_argument("path")
    smoke = commands.add_parser("smoke", help="one op family on one backend")
    smoke.add_argument("family", choices=FAMILIES)
    smoke.add_argument("backend", choices=("triton", "cuda"))
    smoke.add_argument("--size", choices=("one-tile", "realistic", "all"), default="all")
    smoke.add_argument("--head-dim", type=int, default=None,
                       help="only the cases of this head dim (80: the sm_80 attention kernels)")
    args = parser.parse_args(argv)
    return {"env": command_env, "kernels": command_kernels, "elf": command_elf,
            "smoke": command_smoke}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
