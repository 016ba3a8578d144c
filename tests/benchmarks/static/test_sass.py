"""benchmarks/static/sass.py: the SASS reader, on a listing written by hand and on a tiny
Triton kernel compiled for sm_90 whose instruction counts are known."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks.static import sass
from benchmarks.static.launches import REPOSITORY

# A loop with an inner loop, a predicated back branch, a forward branch and the trailing
# branch to itself after EXIT, laid out as cuobjdump prints it.
LISTING = """
	code for sm_90a
		Function : tiny_kernel
	.headerflags	@"EF_CUDA_ACCELERATORS EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                 /* 0x00000a00ff017b82 */
                                                                          /* 0x000fe20000000800 */
        /*0010*/              @!P0 BRA 0x90 ;                             /* 0x0000000000008947 */
        /*0020*/                   LDG.E.128 R4, desc[UR4][R2.64] ;       /* 0x0000000402047981 */
        /*0030*/                   FFMA R5, R4, R4, R5 ;                  /* 0x0000000404057223 */
        /*0040*/                   SHFL.BFLY PT, R6, R5, 0x1, 0x1f ;      /* 0x0c201f0005067f89 */
        /*0050*/               @P1 BRA 0x30 ;                             /* 0xfffffffc00d01947 */
        /*0060*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR8], RZ ;  /* 0x0 */
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;          /* 0x0000000000007b1d */
        /*0080*/              @!P2 BRA 0x20 ;                             /* 0xfffffff800e0a947 */
        /*0090*/                   STG.E desc[UR4][R2.64], R5 ;           /* 0x0000000502007986 */
        /*00a0*/                   EXIT ;                                 /* 0x000000000000794d */
        /*00b0*/                   BRA 0xb0;                              /* 0xfffffffc00fc7947 */
"""


def test_parse_reads_every_instruction_with_its_opcode():
    (name, instructions), = sass.parse(LISTING).items()
    assert name == "tiny_kernel"
    assert [i.address for i in instructions] == list(range(0, 0xC0, 0x10))
    assert [i.opcode for i in instructions][:4] == ["LDC", "BRA", "LDG", "FFMA"]
    assert instructions[5].text == "@P1 BRA 0x30" and instructions[5].branch_target == 0x30
    assert instructions[1].branch_target == 0x90   # forward: not a loop
    assert instructions[2].branch_target is None


def test_loops_are_backward_branches_and_the_branch_to_itself_is_not_one():
    (instructions,) = sass.parse(LISTING).values()
    outer, inner = sass.loops(instructions)
    assert (outer.start, outer.end) == (0x20, 0x80)
    assert (inner.start, inner.end) == (0x30, 0x50)
    assert outer.opcodes == {"LDG": 1, "FFMA": 1, "SHFL": 1, "BRA": 2, "HGMMA": 1, "BAR": 1}
    assert inner.size == 3 and outer.size == 7
    assert sass.innermost([outer, inner]) == [inner]
    mix = outer.mix()
    assert (mix["tensor"], mix["fp32"], mix["shfl"], mix["bar"], mix["ldg"], mix["total"]) == \
        (1, 1, 1, 1, 1, 7)


# Each iteration loads one fp32 per thread and does one fused multiply-add on it: one
# LDG and one FFMA per element, however far ptxas unrolls the loop; one store at the end.
TINY_KERNEL = textwrap.dedent('''
    import json, sys
    import triton
    import triton.language as tl
    from benchmarks.static import compile as worker

    @triton.jit
    def tiny_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offsets = tl.arange(0, BLOCK)
        acc = tl.zeros((BLOCK,), tl.float32)
        for i in range(n):
            acc = acc * 0.5 + tl.load(x_ptr + i * BLOCK + offsets)
        tl.store(out_ptr + offsets, acc)

    specs = [["pointer", "fp32", True], ["pointer", "fp32", True], ["int", 7]]
    compiled, details = worker.compile_one(tiny_kernel, specs, {"BLOCK": 32},
                                           {"num_warps": 1, "num_stages": 1}, "hopper", True)
    json.dump(dict(details, usage=worker.resource_usage(compiled.asm["cubin"])), sys.stdout)
''')


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("triton.backends.nvidia.compiler")
    script = tmp_path_factory.mktemp("tiny") / "tiny_kernel.py"  # @jit needs a source file
    script.write_text(TINY_KERNEL)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=REPOSITORY, env={**os.environ, "TRITON_INTERPRET": "0",
                                               "PYTHONPATH": REPOSITORY})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_a_tiny_kernel_counts_what_it_computes(tiny):
    assert tiny["function"] == "tiny_kernel"
    # ptxas's own report agrees with the cubin's resource usage
    assert tiny["ptxas"]["registers"] == tiny["usage"]["registers"] > 0
    assert tiny["ptxas"]["spill_stores"] == tiny["ptxas"]["spill_loads"] == 0
    assert tiny["ptx"]["wgmma"] == tiny["ptx"]["tma"] == tiny["ptx"]["setmaxnreg"] == 0
    assert tiny["opcodes"]["STG"] == 1
    loops = [sass.Loop(loop["start"], loop["end"], loop["opcodes"]) for loop in tiny["loops"]]
    assert loops, "the K loop was not found"
    for loop in loops:  # the main loop and any remainder loop of ptxas's unrolling
        mix = loop.mix()
        assert mix["ldg"] == loop.opcodes.get("FFMA", 0) >= 1, loop.opcodes
        assert mix["tensor"] == mix["shfl"] == mix["bar"] == mix["spill"] == 0
