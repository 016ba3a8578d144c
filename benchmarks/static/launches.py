"""Records a Triton op module's kernel launches, and compiles them ahead of time.

Every launcher module (``fasttx.triton.attention``, ``add_layer_norm``, ``feed_forward``)
launches through one ``_launch(kind, grid, *args, **meta)``; spying on it gives the exact
arguments of real calls, which the compile tests and the static cost report then compile
for real GPUs in a subprocess (``benchmarks.static.compile``) without needing one.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from unittest import mock

import torch

TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
         torch.int32: "i32", torch.int64: "i64", torch.uint8: "u8"}
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def recorded_launches(module, describe=lambda argument: argument, run=True):
    """Yields a list that fills with (kind, [describe(arg)...], meta) per kernel launch.
    With ``run=False`` the kernels are not run at all (their outputs stay uninitialised):
    enough to record the launches of large shapes, whose arguments do not depend on
    values."""
    launches = []
    real_launch = module._launch

    def spy(kind, grid, *args, **meta):
        launches.append((kind, [describe(a) for a in args], meta))
        if run:
            real_launch(kind, grid, *args, **meta)

    with mock.patch.object(module, "_launch", spy):
        yield launches


def argument_spec(value):
    """What Triton's JIT specialises on: a pointer's type and alignment, an int's value."""
    if isinstance(value, torch.Tensor):
        return ["pointer", TYPES[value.dtype], value.data_ptr() % 16 == 0]
    if isinstance(value, float):
        return ["float"]
    return ["int", int(value)]


def record_launches(module, call, run=True):
    """(kind, argument specs, meta) of every kernel launch of ``module`` inside ``call()``."""
    with recorded_launches(module, argument_spec, run=run) as launches:
        call()
    return launches


def as_bf16(launches):
    """The launches with their fp16 pointers made bf16: bf16 launches are recorded in fp16
    (the interpreter's bf16 dot is wrong) and compiled as bf16."""
    for _, specs, _ in launches:
        for spec in specs:
            if spec[0] == "pointer" and spec[1] == "fp16":
                spec[1] = "bf16"
    return launches


def compile_launches(op, launches, architectures, all_configs=False, analyse=False,
                     python=None, environment=None):
    """Compiles each launch of ``fasttx.triton.<op>`` in a fresh process where the kernels
    are real JIT functions; returns one record per (launch, architecture, config) with the
    shared memory, whether wgmma was used, and the registers and spill bytes per thread
    (``benchmarks.static.compile`` lists the rest, with ``analyse``). ``python``: the
    interpreter to compile with (another virtualenv's, for another Triton version)."""
    request = json.dumps({"op": op, "launches": launches, "architectures": architectures,
                          "all_configs": all_configs, "analyse": analyse})
    environment = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1",
                       **(environment or {}))
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [REPOSITORY, environment.get("PYTHONPATH")]))
    done = subprocess.run([python or sys.executable, "-m", "benchmarks.static.compile"],
                          input=request, capture_output=True, text=True, env=environment,
                          cwd=REPOSITORY)
    if done.returncode != 0:
        raise RuntimeError(f"compiling {op} launches failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)
