"""Compiles recorded attention kernel launches ahead of time (see test_attention_compiles).

Reads {"launches": [[kind, argument specs, meta], ...], "architectures": [...]} as JSON
on stdin; prints one JSON record per (launch, architecture). Runs with TRITON_INTERPRET=0
so that the kernels are JIT functions the compiler can take.
"""

import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fasttx.triton import attention

CAPABILITY = {"ampere": 80, "hopper": 90}


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


def main():
    request = json.load(sys.stdin)
    results = []
    for kind, specs, meta in request["launches"]:
        kernel = attention._KERNELS[kind][0]
        for arch in request["architectures"]:
            block_m, block_n, warps, stages = attention._CONFIGS[kind][arch][0]
            compiled = triton.compile(
                source(kernel, specs, dict(meta, BLOCK_M=block_m, BLOCK_N=block_n)),
                target=GPUTarget("cuda", CAPABILITY[arch], 32),
                options=dict(num_warps=warps, num_stages=stages))
            sizes = {"fp16": 2, "bf16": 2, "fp32": 4, "u8": 1}
            mask_size = (sizes[specs[3][1]] if meta["MASK"] != "none"
                         and not meta["MASK_PER_KEY"] else 0)  # specs[3]: the mask pointer
            estimate = attention._shared_memory(kind, block_m, block_n, stages,
                                                sizes[specs[0][1]], meta["BLOCK_D"],
                                                meta["BLOCK_DV"], mask_size)
            results.append({"kind": kind, "arch": arch, "shared": compiled.metadata.shared,
                            "estimated_shared": estimate,
                            "cubin_bytes": len(compiled.asm["cubin"]),
                            "wgmma": "wgmma" in compiled.asm["ptx"]})
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
