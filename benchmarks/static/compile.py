"""Compiles recorded kernel launches ahead of time (see benchmarks/static/launches.py).

Reads {"op", "launches": [[kind, argument specs, meta], ...], "architectures": [...],
"all_configs": bool, "analyse": bool} as JSON on stdin and prints one JSON record per
(launch, architecture, config). Runs with TRITON_INTERPRET=0 so that the kernels are JIT
functions the compiler can take. Autotuned kernels compile with each architecture's first
config (or all of them); the others with the meta-parameters of the launch itself.

With ``analyse`` each record also carries what the compiler itself reports: ptxas's
registers, stack frame and spill stores/loads (its ``-v`` log: each kernel compiles with
an empty Triton cache, so that ptxas runs), the PTX's warpgroup MMA, wait depths,
TMA and ``setmaxnreg``, and every SASS loop's opcode counts (``benchmarks.static.sass``).
Any Python with Triton and torch can run it (``python -m benchmarks.static.compile`` with
the repository on PYTHONPATH), so the same launches compile under several Triton versions.
"""

import collections
import contextlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.static import sass

CAPABILITY = {"ampere": 80, "hopper": 90}
SIZES = {"fp16": 2, "bf16": 2, "fp32": 4, "u8": 1, "i32": 4, "i64": 8}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                         "cuobjdump")
_PTXAS_USAGE = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads.*?Used (\d+) registers", re.S)


def source(kernel, specs, constants):
    """An ASTSource with the signature Triton's JIT would give these arguments: ints equal
    to 1 become constants, multiples of 16 and aligned pointers carry divisibility hints."""
    signature, constexprs, attrs = {}, dict(constants), {}
    for index, (name, spec) in enumerate(zip(kernel.arg_names, specs, strict=False)):
        kind, *rest = spec
        if kind == "pointer":
            signature[name] = "*" + rest[0]
            if rest[1]:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif kind == "float":
            signature[name] = "fp32"
        elif rest[0] == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32" if abs(rest[0]) < 2**31 else "i64"
            if rest[0] % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    for name in constants:
        signature[name] = "constexpr"
    return ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)


def cuobjdump(cubin: bytes, *options: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        return subprocess.run([CUOBJDUMP, *options, file.name], capture_output=True,
                              text=True, check=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """Registers and spill bytes per thread, from cuobjdump's resource usage."""
    report = cuobjdump(cubin, "--dump-resource-usage")
    registers = re.search(r"REG:(\d+)", report)
    stack = re.search(r"STACK:(\d+)", report)
    return {"registers": int(registers.group(1)) if registers else None,
            "spill_bytes": int(stack.group(1)) if stack else None}


HOPPER_SHARED_PER_CTA = 232448  # the opt-in limit the autotuners prune with on H100/H200


def attention_configs(module, kind, specs, meta, arch):
    """(meta-parameters, options, estimated shared memory, whether the autotuner may pick it)
    per config listed for ``arch``."""
    for block_m, block_n, warps, stages in module._CONFIGS[kind][arch]:
        mask_size = (SIZES[specs[3][1]] if meta["MASK"] != "none"
                     and not meta["MASK_PER_KEY"] else 0)  # specs[3]: the mask pointer
        estimate = module._shared_memory(kind, block_m, block_n, stages, SIZES[specs[0][1]],
                                         meta["BLOCK_D"], meta["BLOCK_DV"], mask_size)
        tried = arch != "hopper" or (estimate <= HOPPER_SHARED_PER_CTA and module.spill_free(
            kind, block_m, block_n, meta))
        yield dict(BLOCK_M=block_m, BLOCK_N=block_n), dict(num_warps=warps,
                                                           num_stages=stages), estimate, tried


def feed_forward_configs(module, kind, specs, meta, arch):
    k = specs[[i for i, name in enumerate(module._KERNELS[kind][0].fn.arg_names)
               if name == "K"][0]][1]
    for cfg in (module._config(*c) for c in module._CONFIGS[module.family(kind, meta)][arch]):
        constants = dict(cfg.kwargs, EVEN_K=k % cfg.kwargs["BLOCK_K"] == 0)
        yield constants, dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages), \
            module._shared_memory(cfg, SIZES[specs[0][1]]), module.spill_free(cfg, k)


def fixed_configs(module, kind, specs, meta, arch):
    yield {}, dict(num_warps=meta.pop("num_warps", 4), num_stages=meta.pop("num_stages", 3)), \
        None, True


CONFIGS = {"attention": attention_configs, "feed_forward": feed_forward_configs,
           "add_layer_norm": fixed_configs}


def kernel_of(module, kind):
    kernel = module._KERNELS[kind]
    kernel = kernel[0] if isinstance(kernel, tuple) else kernel
    while not isinstance(kernel, triton.JITFunction):  # heuristics/autotune wrappers
        kernel = kernel.fn
    return kernel


def analysis(compiled, ptxas_log: str) -> dict:
    """What the compiler reports about one compiled kernel (see the module docstring)."""
    ptx = compiled.asm["ptx"]
    usage = _PTXAS_USAGE.search(ptxas_log)
    if usage is None:
        raise RuntimeError("no ptxas report: was the kernel served from Triton's cache? "
                           f"(the log read: {ptxas_log[-500:]!r})")
    stack, spill_stores, spill_loads, registers = map(int, usage.groups())
    functions = sass.parse(cuobjdump(compiled.asm["cubin"], "-sass"))
    (name, instructions), = functions.items()
    return {
        "function": name,
        "ptxas": {"registers": registers, "stack": stack, "spill_stores": spill_stores,
                  "spill_loads": spill_loads},
        "ptx": {"wgmma": ptx.count("wgmma.mma_async"),
                "wgmma_wait": sorted({int(n) for n in re.findall(
                    r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)}),
                "mma_sync": len(re.findall(r"\bmma\.sync", ptx)),
                "cp_async": len(re.findall(r"cp\.async\.c[ag]", ptx)),
                "tma": ptx.count("cp.async.bulk.tensor"),
                "setmaxnreg": ptx.count("setmaxnreg")},
        "instructions": len(instructions),
        "opcodes": dict(collections.Counter(i.opcode for i in instructions)),
        "loops": [{"start": loop.start, "end": loop.end, "opcodes": loop.opcodes}
                  for loop in sass.loops(instructions)],
    }


def compile_one(kernel, specs, constants, options, arch, analyse):
    """triton.compile; when analysing, in an empty cache with ptxas's log captured (Triton
    prints it under TRITON_DUMP_PTXAS_LOG)."""
    def compile_():
        return triton.compile(source(kernel, specs, constants),
                              target=GPUTarget("cuda", CAPABILITY[arch], 32), options=options)

    if not analyse:
        return compile_(), {}
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as cache, contextlib.redirect_stdout(log):
        os.environ.update(TRITON_CACHE_DIR=cache, TRITON_DUMP_PTXAS_LOG="1")
        compiled = compile_()
    return compiled, analysis(compiled, log.getvalue())


def main():
    request = json.load(sys.stdin)
    module = importlib.import_module(f"fasttx.triton.{request['op']}")
    results = []
    for launch, (kind, specs, meta) in enumerate(request["launches"]):
        kernel = kernel_of(module, kind)
        for arch in request["architectures"]:
            configs = list(CONFIGS[request["op"]](module, kind, specs, dict(meta), arch))
            if not request["all_configs"]:  # the first the autotuner may pick
                configs = [next(config for config in configs if config[3])]
            for constants, options, estimate, tried in configs:
                launch_meta = {k: v for k, v in meta.items()
                               if k not in ("num_warps", "num_stages")}
                compiled, details = compile_one(kernel, specs, dict(launch_meta, **constants),
                                                options, arch, request.get("analyse"))
                results.append({"launch": launch, "kind": kind, "arch": arch, "config": constants,
                                "options": options, "shared": compiled.metadata.shared,
                                "estimated_shared": estimate, "autotuned": tried,
                                "wgmma": "wgmma" in compiled.asm["ptx"],
                                **resource_usage(compiled.asm["cubin"]), **details})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
