"""The CUDA kernels' static records (benchmarks/static/cuda.py): the parsers on known text,
then one tiny kernel compiled for sm_90a for real (nvcc and cuobjdump, no GPU)."""

import pathlib

import pytest

from benchmarks.static import cuda

# A grid-stride loop doing one FMA per element, bounded to 128 threads per block.
TINY_KERNEL = r"""
__global__ void __launch_bounds__(128) axpy(float a, const float* x, float* y, int n) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    y[i] = fmaf(a, x[i], y[i]);
  }
}
"""

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90a'
ptxas info    : Function properties for _Z6kernelPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 64 bytes smem
ptxas info    : Compile time = 82.122 ms
ptxas info    : Compiling entry function '_Z5otherv' for 'sm_90a'
ptxas info    : Function properties for _Z5otherv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers
"""

ELF = """\
.nv.info._Z6kernelPf
\t<0x13>
\tAttribute:\tEIATTR_MAX_THREADS
\tFormat:\tEIFMT_SVAL
\tValue:\t0x20 0x10 0x1
\t<0x14>
\tAttribute:\tEIATTR_CRS_STACK_SIZE
\tFormat:\tEIFMT_SVAL
\tValue:\t0x0

.nv.info._Z5otherv
\t<0x14>
\tAttribute:\tEIATTR_CRS_STACK_SIZE
\tFormat:\tEIFMT_SVAL
\tValue:\t0x0
"""


def test_ptxas_report_per_entry_function():
    assert cuda.ptxas_report(PTXAS_LOG) == {
        "_Z6kernelPf": {"registers": 255, "stack": 8, "spill_stores": 4, "spill_loads": 12,
                        "shared": 64},
        "_Z5otherv": {"registers": 12, "stack": 0, "spill_stores": 0, "spill_loads": 0,
                      "shared": 0},
    }


def test_max_threads_multiplies_the_launch_bounds():
    assert cuda.max_threads(ELF) == {"_Z6kernelPf": 512}


def test_kernel_name_drops_namespaces_templates_and_arguments():
    demangled = ("void fasttx::attention::(anonymous namespace)::attention_forward_sm90_kernel"
                 "<__half, 128>(fasttx::attention::(anonymous namespace)::KernelArgs)")
    assert cuda.kernel_name(demangled) == "attention_forward_sm90_kernel"
    assert cuda.kernel_name("axpy(float, float const*, float*, int)") == "axpy"


@pytest.fixture(scope="module")
def tools():
    if cuda.nvcc_path() is None:
        pytest.skip("nvcc was found neither in $CUDA_HOME/bin nor on PATH")
    try:
        cuda.cuobjdump_path()
    except cuda.CompileError as error:
        pytest.skip(str(error))
    return cuda.settings(torch=False)


def test_tiny_kernel_compiles_to_a_record(tools, tmp_path: pathlib.Path):
    source = tmp_path / "tiny.cu"
    source.write_text(TINY_KERNEL)
    (record,) = cuda.analyse(source, tools)

    assert record["kernel"] == "axpy"
    assert record["function"].startswith("axpy(")
    assert record["mangled"].startswith("_Z4axpy")
    assert record["op"] is None                    # not under csrc/
    assert record["max_threads"] == 128
    assert record["threads"] is None               # not in LAUNCHED_AT_BOUNDS
    usage = record["ptxas"]
    assert usage["registers"] > 0
    assert usage["spill_stores"] == usage["spill_loads"] == usage["stack"] == 0
    assert record["sass"] == {"hgmma": 0, "hmma": 0, "tma": 0, "setmaxnreg": 0}
    assert record["instructions"] > 0
    assert any(loop["opcodes"].get("FFMA", 0) >= 1 for loop in record["loops"])
