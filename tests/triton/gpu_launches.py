"""The Triton kernel launches of the GPU test suite, replayed on CPU without running a kernel.

A GPU run's test phase is bounded by Triton's JIT: every distinct specialisation of a kernel
(its compile-time constants, the dtypes and 16-byte alignment of its pointers, which of its
ints equal 1 or are multiples of 16) compiles once. This module counts them without a GPU:

- each gpu-marked test of ``tests/triton`` whose backend is Triton has a replay here (the
  test's own inputs, shapes and options, from its module's helpers) that calls the ops on
  CPU tensors, forward and backward, skipping the oracle and the checks;
- while it runs, every kernel launch is recorded instead of run, after the launchers chose
  the tiles as on an H200 with autotuning off (``FASTTX_TRITON_AUTOTUNE=0``, as the GPU
  run's test phase sets it);
- :func:`specialisation` reduces a launch to what Triton's JIT keys its compiles on.

``python -m tests.triton.gpu_launches`` prints the count per kernel and, with ``--time N``,
compiles N of them for sm_90 with Triton's compiler to time a compile
(``tools/gpu_run.py --plan`` reads that). ``tests/triton/test_gpu_launches.py`` checks that
every GPU test has a replay.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from collections import Counter
from unittest import mock

import torch

if __name__ == "__main__":  # before triton is imported: kernels interpreted, so recordable
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fasttx  # noqa: E402
from fasttx.testing import attention_inputs, attention_mask, key_padding_mask  # noqa: E402

#: What the tiles are chosen for: an H200 (sm_90, 132 SMs, 227 KiB of shared memory).
H200 = types.SimpleNamespace(name="NVIDIA H200", major=9, minor=0, multi_processor_count=132,
                             shared_memory_per_block_optin=232448,
                             total_memory=141 * 2**30)
LAUNCHER_MODULES = ("attention", "add_layer_norm", "feed_forward")
REPLAYS: dict[str, object] = {}


def replay(module: str, test: str):
    """Registers the replay of ``module::test`` (called with the test's parameters)."""
    def register(function):
        REPLAYS[f"{module}::{test}"] = function
        return function
    return register


# ---------------------------------------------------------------- the replays

def _grads(out, inputs):
    leaves = [t for t in inputs if t is not None and t.requires_grad]
    outs = out if isinstance(out, tuple) else (out,)
    torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs])


def _sdpa(q, k, v, mask=None, kind="none", backward=True, **kwargs):
    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                              is_causal=kind.endswith("causal"),
                                              enable_gqa=True, backend="triton", **kwargs)
    if backward:
        _grads(out, (q, k, v, mask))


@replay("tests.triton.test_attention", "test_gpu_matches_reference_within_budget")
def _(shape, mask_kind, dtype, **_):
    batch, heads, kv_heads, len_q, len_k, dim, value_dim = shape
    q, k, v = attention_inputs(batch, heads, len_q, len_k, dim, kv_heads=kv_heads,
                               value_dim=value_dim, dtype=dtype, requires_grad=True, seed=21)
    mask = attention_mask(mask_kind, batch, heads, len_q, len_k, seed=21)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype).requires_grad_(True)
    _sdpa(q, k, v, mask, mask_kind)


@replay("tests.triton.test_attention", "test_gpu_dropout_drops_the_philox_mask_of_fasttx_random")
def _(mask_kind, **_):
    q, k, _v = attention_inputs(2, 3, 77, 130, 64, dtype=torch.float16, seed=24)
    v = torch.eye(130, dtype=torch.float16).expand(2, 3, 130, 130)
    mask = attention_mask(mask_kind, 2, 3, 77, 130, seed=24)
    if mask is not None and mask.is_floating_point():
        mask = mask.half()
    _sdpa(q, k, v, mask, mask_kind, backward=False, dropout_p=0.3)


@replay("tests.triton.test_attention", "test_gpu_autotuned_tiles_agree_with_fixed_tiles")
def _(**_):
    triton_attention = importlib.import_module("fasttx.triton.attention")
    q, k, v = attention_inputs(2, 8, 2048, 2048, 128, dtype=torch.bfloat16, requires_grad=True,
                               seed=22)
    mask = key_padding_mask([2048, 1000], 2048)
    for tiles in (None, (64, 64)):
        with triton_attention.fixed_blocks(*tiles) if tiles else contextlib.nullcontext():
            _sdpa(q, k, v, mask, "key_padding+causal", dropout_p=0.1)


@replay("tests.triton.test_attention", "test_gpu_memory_is_linear_in_sequence_length")
def _(**_):
    q, k, v = attention_inputs(1, 8, 32768, 32768, 128, dtype=torch.bfloat16,
                               requires_grad=True, seed=23)
    _sdpa(q, k, v, kind="causal")


@replay("tests.triton.test_varlen_attention", "test_gpu_matches_reference_within_budget")
def _(is_causal, dtype, **_):
    tests = importlib.import_module("tests.triton.test_varlen_attention")
    generator = torch.Generator().manual_seed(0)
    lengths_q = torch.randint(1, 2049, (8,), generator=generator).tolist()
    lengths_k = torch.randint(1, 2049, (8,), generator=generator).tolist()
    q, k, v, cu_q, cu_k, max_q, max_k = tests.packed_inputs(lengths_q, lengths_k, 8, 2, 128,
                                                            dtype, device="cpu")
    out = tests.varlen(q, k, v, cu_q, cu_k, max_q, max_k, "triton", is_causal=is_causal)
    _grads(out, (q, k, v))


def _add_layer_norm(inputs, dropout_p):
    out = fasttx.add_layer_norm(*inputs, dropout_p=dropout_p, return_residual=True,
                                backend="triton")
    _grads(out, inputs)


@replay("tests.triton.test_add_layer_norm", "test_gpu_matches_reference_within_budget")
def _(shape, dtype, **_):
    tests = importlib.import_module("tests.triton.test_add_layer_norm")
    inputs = tests.layer_norm_inputs(shape, dtype, seed=tests.seed_of(shape, dtype))
    _add_layer_norm(inputs, 0.1)


@replay("tests.triton.test_add_layer_norm", "test_gpu_fp32_residual_stream_and_determinism")
def _(dim, **_):
    tests = importlib.import_module("tests.triton.test_add_layer_norm")
    inputs = tests.layer_norm_inputs((2048, dim), torch.bfloat16, seed=80,
                                     residual_dtype=torch.float32)
    _add_layer_norm(inputs, 0.0)
    _add_layer_norm(inputs, 0.1)


@replay("tests.triton.test_add_layer_norm", "test_gpu_constant_and_ill_conditioned_rows")
def _(dtype, dim, **_):
    tests = importlib.import_module("tests.triton.test_add_layer_norm")
    x, residual, weight, bias = tests.constant_rows(dim, dtype, seed=dim)
    for eps in (1e-5, 1e-12):
        fasttx.add_layer_norm(x, residual, weight, bias, eps, backend="triton")
    if dtype == torch.float32:
        inputs = tests.layer_norm_inputs((257, dim), dtype, seed=91, offset=2e4)
        out = fasttx.add_layer_norm(*inputs, eps=1e-12, return_residual=True,
                                    backend="triton")
        _grads(out, inputs)


def _feed_forward(x, weights, activation):
    out = fasttx.feed_forward(x, *weights, activation=activation, dropout_p=0.1,
                              backend="triton")
    _grads(out, (x, *weights))


@replay("tests.triton.test_feed_forward", "test_gpu_matches_reference_within_budget")
def _(shape, activation, dtype, **_):
    tests = importlib.import_module("tests.triton.test_feed_forward")
    x_shape, hidden, dim_out = shape
    _feed_forward(*tests.ffn_inputs(x_shape, hidden, dim_out, dtype, device="cpu"), activation)


@replay("tests.triton.test_feed_forward",
        "test_gpu_fp32_without_tf32_matches_reference_within_budget")
def _(shape, activation, **_):
    tests = importlib.import_module("tests.triton.test_feed_forward")
    x_shape, hidden, dim_out = shape
    with tests.tf32_disabled():
        _feed_forward(*tests.ffn_inputs(x_shape, hidden, dim_out, torch.float32,
                                        device="cpu"), activation)


# ---------------------------------------------------------------- recording

def gpu_test_items(paths=("tests/triton",)) -> list:
    """The collected gpu-marked test items under ``paths`` (pytest's own collection)."""
    import pytest

    class Collector:
        items: list = []

        def pytest_collection_modifyitems(self, items):
            self.items.extend(item for item in items if item.get_closest_marker("gpu"))

    collector = Collector()
    with contextlib.redirect_stdout(sys.stderr):
        pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", *paths],
                    plugins=[collector])
    return collector.items


def test_key(item) -> str:
    return f"{item.module.__name__}::{item.originalname}"


def specialisation(name: str, args: tuple, kwargs: dict) -> tuple:
    """What Triton's JIT compiles a launch for: the kernel, each argument's type class
    (pointer dtype and 16-byte alignment; int equal to 1, a multiple of 16, or 64-bit) and
    the compile-time constants (tiles, flags, num_warps, num_stages)."""
    def kind(value):
        if isinstance(value, torch.Tensor):
            return ("*", str(value.dtype), value.data_ptr() % 16 == 0)
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, int):
            return ("i64" if not -2**31 <= value < 2**31 else "i32",
                    "1" if value == 1 else "d16" if value % 16 == 0 else "")
        if isinstance(value, float):
            return "fp32"
        return repr(value)
    return (name, tuple(kind(a) for a in args),
            tuple(sorted((key, kind(value)) for key, value in kwargs.items())))


@contextlib.contextmanager
def recording():
    """Yields a list of (kernel name, args, kwargs) that fills with every kernel launch
    inside the block; no kernel runs. The launchers pick tiles as on an H200."""
    from triton.runtime.interpreter import InterpretedFunction

    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("recording needs the kernels interpreted: TRITON_INTERPRET=1 "
                           "before triton is imported")
    launches = []

    def record(self, *args, grid=None, warmup=False, **kwargs):
        launches.append((self.fn.__name__, args, kwargs))

    patches = [mock.patch.object(InterpretedFunction, "run", record),
               mock.patch.object(torch.cuda, "get_device_properties", lambda *_: H200)]
    for name in LAUNCHER_MODULES:  # the GPU test run's tiles: not interpreted, not autotuned
        module = importlib.import_module(f"fasttx.triton.{name}")
        patches.append(mock.patch.object(module, "interpreting", lambda: False))
        if hasattr(module, "interpreter_dtype_reason"):  # bf16 as on the GPU: nothing runs
            patches.append(mock.patch.object(module, "interpreter_dtype_reason",
                                             lambda *_: None))
        if hasattr(module, "autotuning"):
            patches.append(mock.patch.object(module, "autotuning", lambda: False))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield launches


def record_suite(paths=("tests/triton",)) -> dict[str, list]:
    """{test id: its launches} for every Triton case of the GPU tests under ``paths``."""
    recorded = {}
    for item in gpu_test_items(paths):
        params = dict(getattr(item, "callspec", None) and item.callspec.params or {})
        if params.get("backend", "triton") != "triton":
            continue  # the cuda backend's cases launch no Triton kernel
        key = test_key(item)
        if key not in REPLAYS:
            raise KeyError(f"{key} has no replay in {__name__}: add one beside the others")
        with recording() as launches:
            REPLAYS[key](**params)
        recorded[item.nodeid] = launches
    return recorded


def count(recorded: dict[str, list]) -> Counter:
    """Distinct specialisations per kernel over all recorded launches."""
    distinct = {specialisation(*launch) for launches in recorded.values()
                for launch in launches}
    return Counter(key[0] for key in distinct)


def time_compiles(recorded: dict[str, list], samples: int) -> list[dict]:
    """Compiles up to ``samples`` distinct specialisations (spread over the kernels) for
    sm_90 in a fresh process, as the GPU would, and returns their compile seconds."""
    seen, chosen = set(), []
    for launches in recorded.values():
        for name, args, kwargs in launches:
            key = specialisation(name, args, kwargs)
            if key not in seen:
                seen.add(key)
                chosen.append((name, args, kwargs))
    by_kernel: dict[str, list] = {}
    for launch in chosen:
        by_kernel.setdefault(launch[0], []).append(launch)
    picked = []
    while len(picked) < samples and any(by_kernel.values()):
        for launches in by_kernel.values():  # round robin: every kernel sampled
            if launches and len(picked) < samples:
                picked.append(launches.pop(0))
    from benchmarks.static.launches import argument_spec
    request = [{"kernel": name, "specs": [argument_spec(a) for a in args],
                "constants": {k: v for k, v in kwargs.items()
                              if k not in ("num_warps", "num_stages")},
                "options": {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}}
               for name, args, kwargs in picked]
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: every compile is real
        done = subprocess.run([sys.executable, "-m", "tests.triton.gpu_launches", "--compile"],
                              input=json.dumps(request), capture_output=True, text=True,
                              env=dict(os.environ, TRITON_INTERPRET="0",
                                       TRITON_CACHE_DIR=cache))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout)


def _kernels_by_name() -> dict:
    """Every Triton kernel, by function name: the JIT functions of the private kernel
    modules fasttx/triton/_*.py (the launchers only wrap them)."""
    import pkgutil

    import triton

    import fasttx.triton as package
    kernels = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_"):
            module = importlib.import_module(f"fasttx.triton.{info.name}")
            kernels.update({value.fn.__name__: value for value in vars(module).values()
                            if isinstance(value, triton.JITFunction)})
    return kernels


def _compile(request: list[dict]) -> list[dict]:
    """(In a process with TRITON_INTERPRET=0.) Compiles each requested launch for sm_90."""
    import triton
    from triton.backends.compiler import GPUTarget

    from benchmarks.static.compile import source
    kernels = _kernels_by_name()
    results = []
    for launch in request:
        kernel = kernels[launch["kernel"]]
        started = time.perf_counter()
        triton.compile(source(kernel, launch["specs"], launch["constants"]),
                       target=GPUTarget("cuda", 90, 32), options=launch["options"])
        results.append({"kernel": launch["kernel"],
                        "seconds": round(time.perf_counter() - started, 2)})
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=int, default=0, metavar="N",
                        help="also compile N specialisations for sm_90 and time them")
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", default=["tests/triton"])
    args = parser.parse_args(argv)
    if args.compile:
        json.dump(_compile(json.load(sys.stdin)), sys.stdout)
        return 0
    started = time.perf_counter()
    recorded = record_suite(args.paths)
    counts = count(recorded)
    report = {"tests": len(recorded), "launches": sum(map(len, recorded.values())),
              "specialisations": sum(counts.values()), "by_kernel": dict(counts),
              "record_seconds": round(time.perf_counter() - started, 1)}
    if args.time:
        report["compiles"] = time_compiles(recorded, args.time)
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
