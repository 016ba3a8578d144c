"""Build script: the pure-Python package always, the CUDA extension ``fasttx._C`` when possible.

``fasttx._C`` is compiled from ``csrc/`` with ``torch.utils.cpp_extension`` only where
nvcc and a CUDA build of torch are both present. Everywhere else (CPU-only machines, CI,
``FASTTX_SKIP_CUDA_BUILD=1``) the build is skipped with a message, and the ``cuda``
backend reports itself unavailable at run time.

Environment:
    FASTTX_SKIP_CUDA_BUILD=1   never build the extension.
    FASTTX_CUDA_ARCHS          semicolon list of targets, default "8.0;9.0a" (Ampere, and
                               Hopper with its arch-specific instructions: wgmma, TMA); else
                               a pre-set TORCH_CUDA_ARCH_LIST. A Hopper entry without its
                               "a" (9.0, 9.0+PTX) is built as 9.0a, loudly: plain sm_90
                               code has no wgmma/TMA, and the Hopper attention kernel would
                               compile to an empty body that nothing reports.
    MAX_JOBS, NVCC_THREADS     bound the build's parallelism.

The targets are compiled into the extension: ``fasttx.cuda.build_info()`` reports them and
which attention kernels they hold.
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


# The CUDA library headers that torch's CUDA headers (and the FFN's cuBLASLt calls) include.
LIBRARY_HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


def wheel_paths(*pattern):
    """Paths matching nvidia/<pattern> in the NVIDIA wheels torch brings (on sys.path)."""
    return [path for entry in sys.path
            for path in sorted(glob.glob(os.path.join(entry, "nvidia", *pattern)))]


def cublaslt_library():
    """The cuBLASLt shared library to link (the feed-forward GEMMs call it directly): the
    toolkit's, else the one torch's CUDA wheels bring (nvidia/*/lib). At run time torch has
    already loaded it, so the extension resolves to the very same library."""
    from torch.utils.cpp_extension import CUDA_HOME

    candidates = [os.path.join(CUDA_HOME, "lib64", "libcublasLt.so")]
    candidates += wheel_paths("*", "lib", "libcublasLt.so*")
    for candidate in candidates:
        if os.path.exists(candidate):
            return candidate
    raise RuntimeError("fasttx setup: libcublasLt.so was found neither in the CUDA toolkit "
                       f"({CUDA_HOME}/lib64) nor in torch's nvidia wheels; set "
                       "FASTTX_SKIP_CUDA_BUILD=1 to build without the CUDA backend")


def library_include_dirs():
    """Include folders for the LIBRARY_HEADERS the toolkit lacks (a toolkit of nvcc and the
    runtime only, as pip-installed ones are), from torch's nvidia wheels; empty when the
    toolkit has them all."""
    from torch.utils.cpp_extension import CUDA_HOME

    missing = [name for name in LIBRARY_HEADERS
               if not os.path.exists(os.path.join(CUDA_HOME, "include", name))]
    folders = []
    for folder in wheel_paths("*", "include"):
        found = [name for name in missing if os.path.exists(os.path.join(folder, name))]
        if found:
            folders.append(folder)
            missing = [name for name in missing if name not in found]
    if missing:
        raise RuntimeError(f"fasttx setup: {', '.join(missing)} found neither in the CUDA "
                           f"toolkit ({CUDA_HOME}/include) nor in torch's nvidia wheels; set "
                           "FASTTX_SKIP_CUDA_BUILD=1 to build without the CUDA backend")
    return folders


DEFAULT_ARCHS = "8.0;9.0a"
HOPPER = "9.0a"  # the Hopper attention kernel's target: sm_90 with its arch-specific features


def cuda_archs(environ=os.environ):
    """(TORCH_CUDA_ARCH_LIST to build, messages to show): FASTTX_CUDA_ARCHS, else a pre-set
    TORCH_CUDA_ARCH_LIST, else the default, with every Hopper entry made 9.0a."""
    requested = (environ.get("FASTTX_CUDA_ARCHS") or environ.get("TORCH_CUDA_ARCH_LIST")
                 or DEFAULT_ARCHS)
    archs, messages = [], []
    for arch in requested.replace(",", ";").replace(" ", ";").split(";"):
        if arch in ("9.0", "9.0+PTX"):
            messages.append(f"WARNING: target {arch} has no wgmma/TMA (the Hopper attention "
                            f"kernel would be empty): building {HOPPER} instead")
            arch = HOPPER
        if arch and arch not in archs:
            archs.append(arch)
    if HOPPER not in archs:
        messages.append(f"WARNING: no {HOPPER} target in {';'.join(archs)}: the Hopper attention "
                        f"kernel (wgmma/TMA) is not compiled in; Hopper GPUs run the sm_80 kernels")
    return ";".join(archs), messages


def target_names(archs):
    """"8.0;9.0a" -> "sm_80,sm_90a": the targets as build_info() reports them."""
    return ",".join("sm_" + arch.split("+")[0].replace(".", "") for arch in archs.split(";"))


def extension_sources(root="."):
    """The C++ and CUDA sources of fasttx._C: every csrc/**/*.cpp, then every .cu, as paths
    relative to ``root`` (the source tree: a clone or an unpacked sdist)."""
    return [path for pattern in ("csrc/**/*.cpp", "csrc/**/*.cu")
            for path in sorted(glob.glob(pattern, root_dir=root, recursive=True))]


def cuda_extensions():
    reason = cuda_extension_reason()
    if reason is not None:
        _log(f"skipping the CUDA extension fasttx._C: {reason}")
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    archs, messages = cuda_archs()
    for message in messages:
        _log(message)
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    targets = f"-DFASTTX_CUDA_TARGETS={target_names(archs)}"  # read by build_info()
    nvcc_threads = os.environ.get("NVCC_THREADS", "4")
    # after the toolkit's own include folder: only what it lacks comes from the wheels
    library_includes = [flag for folder in library_include_dirs() for flag in ("-isystem", folder)]
    if library_includes:
        _log(f"CUDA library headers from torch's nvidia wheels: {' '.join(library_includes[1::2])}")
    sources = extension_sources()
    _log(f"building fasttx._C for {archs} from {len(sources)} sources")
    extension = CUDAExtension(
        name="fasttx._C",
        sources=sources,
        include_dirs=[os.path.abspath("csrc")],
        # torch picks the C++ standard (C++20 for torch >= 2.10); the kernels are C++17.
        extra_compile_args={
            "cxx": ["-O3", targets, *library_includes],
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo", f"--threads={nvcc_threads}",
                     targets, *library_includes],
        },
        extra_link_args=[cublaslt_library()],
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


if __name__ == "__main__":  # (setuptools runs it so; tests import the helpers above)
    ext_modules, cmdclass = cuda_extensions()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
