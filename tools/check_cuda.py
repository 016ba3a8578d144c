"""Compile-checks every ``csrc/`` source without a GPU: ``make check-cuda``.

Each ``.cu`` file is compiled by nvcc all the way to machine code (ptxas included, so
register-allocation and inline-PTX errors surface) for every target of the build
(sm_80 and sm_90a by default), with the flags ``setup.py`` gives it through
``torch.utils.cpp_extension``. Each ``.cpp`` binding file is checked by the host
compiler against the installed torch's headers. A CPU-only torch wheel ships the CUDA
headers of ATen and c10 but not those of the CUDA libraries they include (cuBLAS,
cuBLASLt, cuSPARSE, cuSOLVER): those are fetched once from PyPI (NVIDIA's own wheels,
pinned below) into ``build/cuda-headers``.

Usage:
    python tools/check_cuda.py [--verbose] [--archs 8.0;9.0a] [file ...]

``--verbose`` prints ptxas's register and spill report for every kernel. Exit status 1
when a file fails to compile, with the compiler's messages.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
HEADER_CACHE = ROOT / "build" / "cuda-headers"
DEFAULT_ARCHS = "8.0;9.0a"
# NVIDIA's wheels that carry the headers torch's CUDA headers include, by the header that
# tells whether they are needed. Pinned: the same headers on every run.
HEADER_WHEELS = {
    "cublasLt.h": "nvidia-cublas==13.10.0.20",
    "cusparse.h": "nvidia-cusparse==12.9.4.2",
    "cusolverDn.h": "nvidia-cusolver==12.4.1.2",
}


def nvcc_path() -> str | None:
    """nvcc in $CUDA_HOME, $CUDA_PATH or /usr/local/cuda, else on PATH; None without one."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and (pathlib.Path(candidate) / "bin" / "nvcc").exists():
            return str(pathlib.Path(candidate) / "bin" / "nvcc")
    return shutil.which("nvcc")


def find_nvcc() -> str:
    nvcc = nvcc_path()
    if nvcc is None:
        sys.exit("check-cuda: nvcc was found neither in $CUDA_HOME/bin nor on PATH")
    return nvcc


def cuda_include_dir(nvcc: str) -> pathlib.Path:
    """The toolkit's include folder (the one holding cuda_runtime.h)."""
    for root in (pathlib.Path(nvcc).resolve().parent.parent, pathlib.Path("/usr/local/cuda")):
        for include in (root / "include", root / "targets" / "x86_64-linux" / "include"):
            if (include / "cuda_runtime.h").exists():
                return include
    sys.exit(f"check-cuda: no cuda_runtime.h beside {nvcc}")


def library_headers(cuda_include: pathlib.Path) -> list[pathlib.Path]:
    """Include folders for the CUDA library headers the toolkit lacks, fetched as needed."""
    missing = [header for header in HEADER_WHEELS if not (cuda_include / header).exists()]
    folders = []
    for header in missing:
        wheel_spec = HEADER_WHEELS[header]
        target = HEADER_CACHE / wheel_spec.replace("==", "-")
        found = list(target.glob(f"**/include/{header}"))
        if not found:
            _fetch_headers(wheel_spec, target)
            found = list(target.glob(f"**/include/{header}"))
            if not found:
                sys.exit(f"check-cuda: {wheel_spec} has no include/{header}")
        folders.append(found[0].parent)
    return sorted(set(folders))


def _fetch_headers(wheel_spec: str, target: pathlib.Path) -> None:
    print(f"check-cuda: fetching the headers of {wheel_spec} from PyPI", flush=True)
    with tempfile.TemporaryDirectory() as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                        "--dest", download, wheel_spec], check=True)
        (wheel,) = pathlib.Path(download).glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if "/include/" in member:
                    archive.extract(member, target)


def torch_settings():
    """(include dirs, nvcc flags) as torch.utils.cpp_extension builds fasttx._C."""
    from torch.utils import cpp_extension

    includes = [pathlib.Path(p) for p in cpp_extension.include_paths()]
    nvcc_flags = list(cpp_extension.COMMON_NVCC_FLAGS)
    return includes, nvcc_flags


def gencode_flags(archs: str) -> list[str]:
    flags = []
    for arch in filter(None, re.split(r"[;\s,]+", archs)):
        digits = arch.replace(".", "")
        flags += ["-gencode", f"arch=compute_{digits},code=sm_{digits}"]
    return flags


def commands(source: pathlib.Path, settings, archs: str, verbose: bool, out: pathlib.Path):
    includes, nvcc_flags, nvcc, extra_includes = settings
    include_flags = [f"-I{CSRC}"] + [f"-I{p}" for p in includes + extra_includes]
    defines = ["-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
               # a CPU wheel lacks this generated header; its only content is export macros
               "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"]
    if source.suffix == ".cu":
        return [nvcc, "-c", str(source), "-o", str(out), "-std=c++17", "-O3",
                "--use_fast_math", "-Xcompiler", "-fPIC", *nvcc_flags, *gencode_flags(archs),
                *(["-Xptxas", "-v"] if verbose else []), *include_flags, *defines]
    python_include = sysconfig.get_paths()["include"]
    return ["c++", "-fsyntax-only", "-std=c++20", "-O0", "-fPIC", "-Wall",
            "-Wno-unused-variable", *include_flags, f"-I{python_include}", *defines,
            str(source)]


def check(source: pathlib.Path, settings, archs: str, verbose: bool):
    with tempfile.TemporaryDirectory() as scratch:
        command = commands(source, settings, archs, verbose, pathlib.Path(scratch) / "out.o")
        started = time.monotonic()
        result = subprocess.run(command, capture_output=True, text=True)
        return source, result, time.monotonic() - started, command


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=pathlib.Path,
                        help="sources to check (default: every .cu and .cpp under csrc/)")
    parser.add_argument("--archs", default=os.environ.get("FASTTX_CUDA_ARCHS", DEFAULT_ARCHS),
                        help=f"semicolon list of targets (default {DEFAULT_ARCHS})")
    parser.add_argument("--verbose", action="store_true", help="print ptxas resource usage")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)

    sources = [f.resolve() for f in args.files] or sorted(
        [*CSRC.glob("**/*.cu"), *CSRC.glob("**/*.cpp")])
    nvcc = find_nvcc()
    includes, nvcc_flags = torch_settings()
    cuda_include = cuda_include_dir(nvcc)
    settings = (includes + [cuda_include], nvcc_flags, nvcc, library_headers(cuda_include))
    print(f"check-cuda: {len(sources)} sources, targets {args.archs}, {args.jobs} jobs",
          flush=True)

    failures = 0
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        jobs = [pool.submit(check, s, settings, args.archs, args.verbose) for s in sources]
        for job in concurrent.futures.as_completed(jobs):
            source, result, seconds, command = job.result()
            name = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
            status = "ok" if result.returncode == 0 else "FAILED"
            print(f"  {status:6} {name} ({seconds:.0f} s)", flush=True)
            if result.returncode != 0:
                failures += 1
                print(" ".join(command))
            if result.returncode != 0 or args.verbose:
                print(_relevant(result.stdout + result.stderr, args.verbose), flush=True)
    if failures:
        print(f"check-cuda: {failures} of {len(sources)} sources failed to compile")
        return 1
    print(f"check-cuda: all {len(sources)} sources compile")
    return 0


def _relevant(output: str, verbose: bool) -> str:
    """Compiler output without the warnings torch's own headers raise."""
    lines = [line for line in output.splitlines()
             if "torch/include" not in line or "error" in line]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
