"""setup.py's choice of CUDA targets: the Hopper attention kernel is always built for sm_90a
(plain sm_90 code has no wgmma/TMA and would compile it to an empty body), or the build
says loudly that it is not compiled in; build_info() reports the targets."""

import importlib.util
import pathlib

import pytest

from fasttx.cuda._extension import parse_build_info

SETUP = pathlib.Path(__file__).resolve().parents[1] / "setup.py"


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("fasttx_setup", SETUP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; setup() runs only as __main__
    return module


@pytest.mark.parametrize("environ,archs,warnings", [
    ({}, "8.0;9.0a", []),
    ({"FASTTX_CUDA_ARCHS": "9.0a"}, "9.0a", []),
    ({"TORCH_CUDA_ARCH_LIST": "9.0"}, "9.0a", ["9.0 has no wgmma/TMA"]),
    ({"TORCH_CUDA_ARCH_LIST": "8.0 8.6 9.0+PTX"}, "8.0;8.6;9.0a", ["9.0+PTX has no wgmma/TMA"]),
    ({"FASTTX_CUDA_ARCHS": "9.0;9.0a", "TORCH_CUDA_ARCH_LIST": "7.5"}, "9.0a",
     ["9.0 has no wgmma/TMA"]),
    ({"TORCH_CUDA_ARCH_LIST": "8.0;8.9"}, "8.0;8.9", ["no 9.0a target"]),
], ids=["default", "hopper-only", "plain-9.0", "9.0+PTX", "fasttx-wins", "no-hopper"])
def test_hopper_is_built_as_sm90a_or_said_loudly(setup_module, environ, archs, warnings):
    got, messages = setup_module.cuda_archs(environ)
    assert got == archs
    assert len(messages) == len(warnings)
    for message, words in zip(messages, warnings, strict=True):
        assert message.startswith("WARNING") and words in message


def test_targets_reach_build_info_as_named_kernels(setup_module):
    assert setup_module.target_names("8.0;9.0a") == "sm_80,sm_90a"
    assert setup_module.target_names("8.6+PTX") == "sm_86"
    info = parse_build_info("torch 2.11.0+cu130; CUDA 13.0; targets sm_80,sm_90a; "
                            "attention kernels sm80,sm90a")
    assert info == {"torch": "2.11.0+cu130", "cuda": "13.0", "targets": ["sm_80", "sm_90a"],
                    "attention_kernels": ["sm80", "sm90a"]}
    with pytest.raises(RuntimeError, match="lacks .*rebuild"):
        parse_build_info("fasttx._C built with torch 2.11.0, CUDA 13.0")



def test_library_headers_a_bare_toolkit_lacks_come_from_torchs_wheels(setup_module,
                                                                       monkeypatch, tmp_path):
    """A pip-installed toolkit (nvcc and the runtime) has no cuBLAS/cuSPARSE/cuSOLVER headers,
    which torch's CUDA headers include: they are taken from the nvidia wheels beside torch."""
    from torch.utils import cpp_extension

    toolkit, site = tmp_path / "cuda", tmp_path / "site-packages"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cublas_v2.h").touch()
    for wheel, headers in (("cu13", ["cublasLt.h", "cusparse.h"]), ("cusolver", ["cusolverDn.h"]),
                           ("nccl", ["nccl.h"])):
        (site / "nvidia" / wheel / "include").mkdir(parents=True)
        for name in headers:
            (site / "nvidia" / wheel / "include" / name).touch()
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(toolkit))
    monkeypatch.setattr("sys.path", [str(site)])
    assert setup_module.library_include_dirs() == [str(site / "nvidia" / "cu13" / "include"),
                                                   str(site / "nvidia" / "cusolver" / "include")]
    for name in setup_module.LIBRARY_HEADERS:  # a complete toolkit needs none of them
        (toolkit / "include" / name).touch()
    assert setup_module.library_include_dirs() == []
    (toolkit / "include" / "cusparse.h").unlink()
    (site / "nvidia" / "cu13" / "include" / "cusparse.h").unlink()
    with pytest.raises(RuntimeError, match="cusparse.h found neither"):
        setup_module.library_include_dirs()
