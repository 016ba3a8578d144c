"""The CUDA backend's kernels (``csrc/**/*.cu``) as the static cost report sees them: one
record per kernel function, each template instantiation its own, compiled for sm_90a.

No GPU is needed. Each source compiles to a cubin with nvcc and the flags ``setup.py``
gives it (taken from ``tools/check_cuda.py``, which ``make check-cuda`` runs), and with
``-Xptxas -v``: ptxas's own report gives each kernel's registers, stack frame, spill
stores and loads, and static shared memory. ``cuobjdump -sass`` then gives the machine code,
read by ``benchmarks.static.sass`` into instruction counts and loops. A cubin carries no
PTX, so the use of tensor cores and TMA is read from SASS opcodes instead: HGMMA
(``wgmma``), HMMA (``mma.sync``), UTMALDG/UTMASTG (TMA) and USETMAXREG (``setmaxnreg``).
``cuobjdump -elf`` gives the ``__launch_bounds__`` a kernel declares ("max_threads"); the
threads a block is launched with ("threads") are known only for the kernels whose launcher
uses exactly that bound (``LAUNCHED_AT_BOUNDS``), None elsewhere.

``records()`` returns, per kernel: "source", "op" (the csrc subfolder), "function"
(demangled), "mangled", "kernel" (the unqualified name), "max_threads", "threads",
"ptxas": {"registers", "stack", "spill_stores", "spill_loads", "shared"}, "sass": {"hgmma",
"hmma", "tma", "setmaxnreg"}, "instructions" and "loops": [{"start", "end", "opcodes"}].

Shared memory is ptxas's figure: static ``__shared__`` arrays only. Most kernels here take
their tiles as dynamic shared memory, sized by the launcher at run time, which no compiler
report shows.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib.util
import pathlib
import re
import shutil
import subprocess
import tempfile
from types import ModuleType

from benchmarks.static import sass

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CSRC = ROOT / "csrc"
ARCH = "9.0a"       # check_cuda's spelling: compute_90a / sm_90a

# Opcode families counted over a whole function (the mnemonic before its first dot).
SASS_COUNTS = {
    "hgmma": ("HGMMA",),                            # wgmma.mma_async: warpgroup MMA
    "hmma": ("HMMA",),                              # mma.sync: warp MMA
    "tma": ("UTMALDG", "UTMASTG", "UTMAREDG"),      # cp.async.bulk.tensor (reduce too)
    "setmaxnreg": ("USETMAXREG",),                  # warpgroup register reallocation
}

# Kernels whose launcher's block size is exactly their __launch_bounds__, by the kernel's
# unqualified name (its template instantiations share it). A kernel missing here gets
# "threads": None. Left out on purpose: add_layer_norm_forward_kernel and
# add_layer_norm_backward_kernel, bounded by 512 but launched with the row layout's
# block_threads (256 for rows of up to 32 threads, else the row's threads).
LAUNCHED_AT_BOUNDS = {
    # add_layer_norm_backward.cu, launch_add_layer_norm_backward: kRowDotsThreads, and
    # dim3(kColumnSumColumns, kColumnSumSlices)
    "add_layer_norm_backward_row_dots_kernel",
    "add_layer_norm_column_sum_kernel",
    # add_layer_norm_forward.cu, the wide path: kWideThreads
    "add_layer_norm_forward_wide_kernel",
    # attention_backward.cu, launch_delta: 256; launch_dkdv: 32 * KEY_WARPS * DIM_SPLIT;
    # launch_dq: 32 * WARPS
    "attention_backward_delta_kernel",
    "attention_backward_dkdv_kernel",
    "attention_backward_dq_kernel",
    # attention_forward.cu, the launcher: WARPS * 32
    "attention_forward_kernel",
    # attention_forward_sm90.cu, the launcher: kThreads
    "attention_forward_sm90_kernel",
    # feed_forward_elementwise.cu, launch_activation_forward/backward: kThreads
    "activation_forward_kernel",
    "activation_backward_kernel",
}

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")
_SHARED = re.compile(r"(\d+) bytes smem")
# `.nv.info.<mangled name>` opens a kernel's attributes in `cuobjdump -elf`; MAX_THREADS is
# the (x, y, z) of its __launch_bounds__:
#     Attribute:	EIATTR_MAX_THREADS
#     Format:	EIFMT_SVAL
#     Value:	0x180 0x1 0x1
_INFO_SECTION = re.compile(r"^\.nv\.info\.(\S+)\s*$")
_MAX_THREADS = re.compile(r"EIATTR_MAX_THREADS\s+Format:\s*\S+\s+Value:\s*((?:0x[0-9a-f]+\s*)+)")


class CompileError(RuntimeError):
    pass


@functools.cache
def check_cuda() -> ModuleType:
    """``tools/check_cuda.py`` (not a package: loaded from its path)."""
    spec = importlib.util.spec_from_file_location("check_cuda", ROOT / "tools" / "check_cuda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nvcc_path() -> str | None:
    return check_cuda().nvcc_path()


def nvcc_version() -> str:
    """nvcc's release, "13.0.88"."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise CompileError("nvcc was found neither in $CUDA_HOME/bin nor on PATH")
    output = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                            check=True).stdout
    match = re.search(r"\bV(\d[\w.]*)", output)
    return match.group(1) if match else output.strip().splitlines()[-1]


def settings(torch: bool = True) -> tuple:
    """The compile settings ``check_cuda.commands`` takes: (include dirs, nvcc flags, nvcc,
    CUDA library header dirs). With ``torch`` they are the extension build's (torch's
    includes and flags; library headers fetched into build/cuda-headers if missing), without
    it only the toolkit's: enough for a self-contained source. Exits, as ``make check-cuda``
    does, where nvcc or the toolkit's headers are missing."""
    tools = check_cuda()
    nvcc = tools.find_nvcc()
    cuda_include = tools.cuda_include_dir(nvcc)
    if not torch:
        return [cuda_include], [], nvcc, []
    includes, nvcc_flags = tools.torch_settings()
    return includes + [cuda_include], nvcc_flags, nvcc, tools.library_headers(cuda_include)


def compile_cubin(source: pathlib.Path, compile_settings: tuple, cubin: pathlib.Path) -> str:
    """Compiles ``source`` to ``cubin`` for sm_90a; returns nvcc's output (ptxas's report)."""
    command = check_cuda().commands(source, compile_settings, ARCH, True, cubin)
    command[command.index("-c")] = "-cubin"   # the device code alone, not a host object
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CompileError(f"{source} failed to compile:\n{' '.join(command)}\n"
                           f"{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def ptxas_report(log: str) -> dict[str, dict[str, int]]:
    """Per kernel (mangled name): registers, stack, spill_stores, spill_loads, shared, from
    ptxas's ``-v`` lines:

        ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90a'
        ptxas info    : Function properties for _Z6kernelPf
            0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
        ptxas info    : Used 168 registers, used 1 barriers, 64 bytes smem
    """
    frames: dict[str, tuple[int, int, int]] = {}
    report: dict[str, dict[str, int]] = {}
    entry = properties = None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            entry = match.group(1)
        elif match := _PROPERTIES.search(line):
            properties = match.group(1)   # also printed for non-inlined device functions
        elif (match := _FRAME.search(line)) and properties is not None:
            frames[properties] = tuple(map(int, match.groups()))
        elif (match := _REGISTERS.search(line)) and entry is not None:
            shared = _SHARED.search(line)
            stack, spill_stores, spill_loads = frames.get(entry, (0, 0, 0))
            report[entry] = {"registers": int(match.group(1)), "stack": stack,
                             "spill_stores": spill_stores, "spill_loads": spill_loads,
                             "shared": int(shared.group(1)) if shared else 0}
            entry = None
    return report


def cuobjdump_path() -> str:
    """cuobjdump beside nvcc, on PATH, or the one Triton ships (CUDA 13's nvcc-only
    toolkits lack it)."""
    nvcc = nvcc_path()
    if nvcc and (found := shutil.which("cuobjdump", path=str(pathlib.Path(nvcc).parent))):
        return found
    if found := shutil.which("cuobjdump"):
        return found
    triton = importlib.util.find_spec("triton")   # located, not imported
    for folder in triton.submodule_search_locations if triton else []:
        bundled = pathlib.Path(folder) / "backends" / "nvidia" / "bin" / "cuobjdump"
        if bundled.exists():
            return str(bundled)
    raise CompileError("no cuobjdump beside nvcc, on PATH, or in Triton")


def cuobjdump(cubin: pathlib.Path, option: str) -> str:
    return subprocess.run([cuobjdump_path(), option, str(cubin)], capture_output=True,
                          text=True, check=True).stdout


def max_threads(elf: str) -> dict[str, int]:
    """Per kernel (mangled name): the threads per block its ``__launch_bounds__`` allows
    (x * y * z), from ``cuobjdump -elf``. Kernels that declare none are absent."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in elf.splitlines():
        if match := _INFO_SECTION.match(line):
            current = sections.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    bounds = {}
    for name, lines in sections.items():
        if match := _MAX_THREADS.search("\n".join(lines)):
            bounds[name] = functools.reduce(
                lambda a, b: a * b, (int(value, 16) for value in match.group(1).split()))
    return bounds


def demangle(names: list[str]) -> dict[str, str]:
    """Mangled -> demangled, by cu++filt, or binutils' c++filt (device code follows the
    Itanium C++ ABI); names stay mangled where neither is installed."""
    nvcc = nvcc_path()
    tool = ((nvcc and shutil.which("cu++filt", path=str(pathlib.Path(nvcc).parent)))
            or shutil.which("cu++filt") or shutil.which("c++filt"))
    if tool is None or not names:
        return {name: name for name in names}
    output = subprocess.run([tool], input="\n".join(names) + "\n", capture_output=True,
                            text=True, check=True).stdout.splitlines()
    return dict(zip(names, output, strict=True))


def kernel_name(demangled: str) -> str:
    """The unqualified name: "void fasttx::a::(anonymous namespace)::k<float, 64>(Args)"
    -> "k"."""
    name = demangled.replace("(anonymous namespace)::", "")
    name = re.split(r"[<(]", name, maxsplit=1)[0]
    return name.split()[-1].split("::")[-1]


def sass_counts(instructions: list[sass.Instruction]) -> dict[str, int]:
    opcodes = [instruction.opcode for instruction in instructions]
    return {key: sum(opcodes.count(op) for op in ops) for key, ops in SASS_COUNTS.items()}


def analyse(source: pathlib.Path, compile_settings: tuple) -> list[dict]:
    """One record per kernel in ``source``, in the order ptxas compiled them."""
    source = source.resolve()
    with tempfile.TemporaryDirectory() as scratch:
        cubin = pathlib.Path(scratch) / "kernels.cubin"
        report = ptxas_report(compile_cubin(source, compile_settings, cubin))
        functions = sass.parse(cuobjdump(cubin, "-sass"))
        bounds = max_threads(cuobjdump(cubin, "-elf"))
    names = demangle(list(report))
    relative = source.relative_to(ROOT) if source.is_relative_to(ROOT) else None
    found = []
    for mangled, usage in report.items():
        if mangled not in functions:
            raise CompileError(f"{source}: ptxas compiled {mangled}, cuobjdump lists no SASS")
        instructions = functions[mangled]
        kernel = kernel_name(names[mangled])
        limit = bounds.get(mangled)
        found.append({
            "source": str(relative) if relative else str(source),
            # the csrc subfolder: "attention", "add_layer_norm", "feed_forward"
            "op": relative.parts[1] if relative and relative.parts[0] == "csrc" else None,
            "function": names[mangled],
            "mangled": mangled,
            "kernel": kernel,
            "max_threads": limit,
            "threads": limit if kernel in LAUNCHED_AT_BOUNDS else None,
            "ptxas": usage,
            "sass": sass_counts(instructions),
            "instructions": len(instructions),
            "loops": [{"start": loop.start, "end": loop.end, "opcodes": loop.opcodes}
                      for loop in sass.loops(instructions)],
        })
    return found


def default_sources() -> list[pathlib.Path]:
    """Every ``.cu`` under ``csrc/``."""
    return sorted(CSRC.glob("**/*.cu"))


def records(sources: list[pathlib.Path] | None = None, jobs: int = 2) -> list[dict]:
    """Every kernel of ``sources`` (default: every ``csrc/**/*.cu``), one nvcc per source
    and ``jobs`` at a time, in the order of the sources."""
    chosen = list(sources) if sources is not None else default_sources()
    compile_settings = settings()
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        per_source = pool.map(lambda source: analyse(source, compile_settings), chosen)
        return [record for found in per_source for record in found]
