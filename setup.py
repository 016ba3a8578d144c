"""Build script: the pure-Python package always, the CUDA extension ``fasttx._C`` when possible.

``fasttx._C`` is compiled from ``csrc/`` with ``torch.utils.cpp_extension`` only where
nvcc and a CUDA build of torch are both present. Everywhere else (CPU-only machines, CI,
``FASTTX_SKIP_CUDA_BUILD=1``) the build is skipped with a message, and the ``cuda``
backend reports itself unavailable at run time.

Environment:
    FASTTX_SKIP_CUDA_BUILD=1   never build the extension.
    FASTTX_CUDA_ARCHS          semicolon list of targets, default "8.0;9.0a" (Ampere, and
                               Hopper with its arch-specific instructions: wgmma, TMA).
    MAX_JOBS, NVCC_THREADS     bound the build's parallelism.
"""

import glob
import os
import shutil
import sys

from setuptools import setup


def _log(message):
    print(f"fasttx setup: {message}", file=sys.stderr)


def cuda_extension_reason():
    """Returns None when the CUDA extension can be built, else why not."""
    if os.environ.get("FASTTX_SKIP_CUDA_BUILD", "0") == "1":
        return "FASTTX_SKIP_CUDA_BUILD=1"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return "torch is not importable at build time (use pip install --no-build-isolation)"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if CUDA_HOME is None:
        return "no CUDA toolkit was found (set CUDA_HOME)"
    if shutil.which("nvcc") is None and not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        return f"nvcc is neither on PATH nor in {CUDA_HOME}/bin"
    return None


def cublaslt_library():
    """The cuBLASLt shared library to link (the feed-forward GEMMs call it directly): the
    toolkit's, else the one torch's CUDA wheels bring (nvidia/*/lib). At run time torch has
    already loaded it, so the extension resolves to the very same library."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [os.path.join(CUDA_HOME, "lib64", "libcublasLt.so")]
    for entry in sys.path:
        wheel_libraries = os.path.join(entry, "nvidia", "*", "lib", "libcublasLt.so*")
        candidates += sorted(glob.glob(wheel_libraries))
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise RuntimeError("fasttx setup: libcublasLt.so was found neither in the CUDA toolkit "
                       f"({CUDA_HOME}/lib64) nor in torch's nvidia wheels; set "
                       "FASTTX_SKIP_CUDA_BUILD=1 to build without the CUDA backend")


def cuda_extensions():
    reason = cuda_extension_reason()
    if reason is not None:
        _log(f"skipping the CUDA extension fasttx._C: {reason}")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    # FASTTX_CUDA_ARCHS wins; else an existing TORCH_CUDA_ARCH_LIST; else Ampere + Hopper
    # (9.0a: the Hopper attention kernel's wgmma/TMA instructions exist only there).
    archs = os.environ.get("FASTTX_CUDA_ARCHS") or os.environ.get("TORCH_CUDA_ARCH_LIST")
    archs = archs or "8.0;9.0a"
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    nvcc_threads = os.environ.get("NVCC_THREADS", "4")
    sources = sorted(glob.glob("csrc/**/*.cpp", recursive=True))
    sources += sorted(glob.glob("csrc/**/*.cu", recursive=True))
    _log(f"building fasttx._C for {archs} from {len(sources)} sources")
    extension = CUDAExtension(
        name="fasttx._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        # torch picks the C++ standard (C++20 for torch >= 2.10); the kernels are C++17.
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo", f"--threads={nvcc_threads}"],
        },
        extra_link_args=[cublaslt_library()],
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = cuda_extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
