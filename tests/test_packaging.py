"""The source distribution: complete enough that ``pip install fasttx-<version>.tar.gz`` on a
machine with nvcc and a CUDA torch builds ``fasttx._C``, and that its tests and tools run;
licensed the PEP 639 way. Built here as pip builds it (setuptools' PEP 517 hook, in a copy
of the source tree so that no egg-info lands in it)."""

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What a clone has beside the package and the sdist must carry too.
SOURCE_FOLDERS = ("csrc", "tools", "tests", "benchmarks")
SOURCE_SUFFIXES = {".py", ".cpp", ".cu", ".cuh", ".h", ".md"}
#: Generated, never shipped: caches, build outputs, benchmark results.
NOT_SOURCES = ("__pycache__", "build", "dist", "results", "*.egg-info", ".pytest_cache",
               "runs", ".benchmarks", "*.so", ".git")


def _sources(root: Path) -> set[str]:
    """The source files of SOURCE_FOLDERS under ``root``, relative to it."""
    found = set()
    for folder in SOURCE_FOLDERS:
        for path in (root / folder).rglob("*"):
            relative = path.relative_to(root)
            if path.suffix in SOURCE_SUFFIXES and not {"__pycache__", "results"} & \
                    set(relative.parts):
                found.add(relative.as_posix())
    return found


def _build(kind: str, tree: Path, **environ) -> tuple[Path, str]:
    """(the archive, the build's log) of setuptools' PEP 517 hook build_<kind> in ``tree``."""
    result = subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; "
         f"print(build_meta.build_{kind}('dist'))"],
        cwd=tree, capture_output=True, text=True, timeout=300, env={**os.environ, **environ})
    assert result.returncode == 0, result.stderr[-3000:]
    return tree / "dist" / result.stdout.strip().splitlines()[-1], result.stdout + result.stderr


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """(unpacked sdist folder, the build's log) of an sdist of this source tree."""
    work = tmp_path_factory.mktemp("sdist")
    tree = work / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    archive, log = _build("sdist", tree)
    with tarfile.open(archive) as tar:
        tar.extractall(work / "unpacked", filter="data")
    (unpacked,) = (work / "unpacked").iterdir()
    return unpacked, log


def test_sdist_holds_the_cuda_sources_tools_tests_and_benchmarks(sdist):
    unpacked, _ = sdist
    expected = _sources(ROOT)
    assert {"csrc/ops.cpp", "tools/check_cuda.py", "tests/conftest.py",
            "benchmarks/harness.py"} <= expected
    missing = sorted(expected - _sources(unpacked))
    assert not missing, f"the sdist lacks {missing}"
    for name in ("README.md", "LICENSE", "Makefile", "setup.py", "pyproject.toml"):
        assert (unpacked / name).is_file(), name


def test_setup_finds_every_cuda_source_in_the_unpacked_sdist(sdist):
    """What setup.py compiles into fasttx._C where nvcc and a CUDA torch exist."""
    unpacked, _ = sdist
    spec = importlib.util.spec_from_file_location("sdist_setup", unpacked / "setup.py")
    setup_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(setup_module)  # defines the helpers; setup() runs only as __main__
    compiled = {path for path in _sources(ROOT)
                if path.startswith("csrc/") and path.endswith((".cpp", ".cu"))}
    assert len(compiled) >= 10
    assert set(setup_module.extension_sources(unpacked)) == compiled
    assert setup_module.extension_sources(unpacked / "nowhere") == []


def test_sdist_declares_its_license_the_pep_639_way(sdist):
    unpacked, log = sdist
    assert "Apache License" in (unpacked / "LICENSE").read_text()
    assert "Version 2.0, January 2004" in (unpacked / "LICENSE").read_text()
    metadata = (unpacked / "PKG-INFO").read_text()
    assert "License-Expression: Apache-2.0" in metadata
    assert "License-File: LICENSE" in metadata
    assert "License :: " not in metadata  # no classifier beside the expression (PEP 639)
    assert "DeprecationWarning" not in log, log[-2000:]  # was: `project.license` as a table


def test_the_wheel_built_from_the_sdist_is_the_python_package_alone(sdist):
    """Without nvcc (or with FASTTX_SKIP_CUDA_BUILD=1) the wheel is Triton-only: the package,
    its metadata and the license, no fasttx._C and no sources outside fasttx/."""
    unpacked, _ = sdist
    wheel, _ = _build("wheel", unpacked, FASTTX_SKIP_CUDA_BUILD="1")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fasttx/triton/attention.py" in names and "fasttx/train/cli.py" in names
    outside = [name for name in names if not name.startswith(("fasttx/", "fasttx-"))]
    assert not outside, outside
    assert not [name for name in names if name.endswith(".so")]
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
