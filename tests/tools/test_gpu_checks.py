"""tools/gpu_checks.py, the checks of the GPU run, on CPU: a smoke case fails a kernel that
is off by more than the tolerance rule allows, and the ELF check tells an sm_90a build with
wgmma from an sm_90 one whose Hopper kernel is empty."""

import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest

from fasttx.testing import requires_triton

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("gpu_checks", ROOT / "tools" / "gpu_checks.py")
gpu_checks = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_checks"] = gpu_checks  # (its dataclasses look their module up)
SPEC.loader.exec_module(gpu_checks)


@pytest.fixture
def rehearsal(monkeypatch):
    """The rehearsal's setting: CPU tensors, the reference standing in for cuda."""
    monkeypatch.setattr(gpu_checks, "REHEARSE", True)
    return gpu_checks


@requires_triton
@pytest.mark.parametrize("family", gpu_checks.FAMILIES)
def test_every_smoke_case_passes_on_the_triton_kernels(rehearsal, family, capsys):
    for index, case in enumerate(rehearsal._cases()[family]):
        assert rehearsal.run_case(family, "triton", case, seed=index) == [], \
            capsys.readouterr().out


@requires_triton
@pytest.mark.parametrize("family,error", [("attention", 1e-2), ("add_layer_norm", 2e-3),
                                          ("feed_forward", 1e-2)])
def test_a_kernel_off_by_a_little_fails_its_case(rehearsal, monkeypatch, family, error, capsys):
    """The Triton kernels with an error added to their first output: the case must fail on
    that output, whatever the gradients do."""
    function = {"attention": "scaled_dot_product_attention", "add_layer_norm": "add_layer_norm",
                "feed_forward": "feed_forward"}[family]
    real = getattr(gpu_checks.fasttx, function)

    def off(*args, backend=None, **kwargs):
        out = real(*args, backend=backend, **kwargs)
        if backend != "triton":
            return out
        first = out[0] if isinstance(out, tuple) else out
        first = first + error * first.detach().abs().max()
        return (first, *out[1:]) if isinstance(out, tuple) else first

    monkeypatch.setattr(gpu_checks.fasttx, function, off)
    case = next(c for c in rehearsal._cases()[family] if c.size == "realistic")
    failed = rehearsal.run_case(family, "triton", case, seed=3)
    assert "out0" in failed, capsys.readouterr().out


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_the_elf_check_tells_sm90a_from_sm90(tmp_path):
    source = ROOT / "csrc" / "attention" / "attention_forward_sm90.cu"
    for arch, ok in (("90a", True), ("90", False)):
        obj = tmp_path / f"sm{arch}.o"
        subprocess.run(["nvcc", "-c", str(source), f"-I{ROOT / 'csrc'}", "-std=c++17", "-O3",
                        "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-o", str(obj)],
                       check=True, capture_output=True)
        done = subprocess.run([sys.executable, "tools/gpu_checks.py", "--rehearse", "elf",
                               str(obj)], cwd=ROOT, capture_output=True, text=True)
        assert (done.returncode == 0) is ok, done.stdout + done.stderr
        found = gpu_checks.json.loads(done.stdout.splitlines()[-1][len("RESULT "):])
        assert found["archs"] == [f"sm_{arch}"] and (found["hgmma"] > 0) is ok


@pytest.mark.parametrize("key,name", [
    ("void fasttx::attention::(anonymous namespace)::attention_forward_sm90_kernel<__half, 128>"
     "(fasttx::attention::(anonymous namespace)::KernelArgs)", "attention_forward_sm90_kernel"),
    ("attention_forward_kernel", "attention_forward_kernel"),
    ("void fasttx::add_layer_norm::forward_rows<__nv_bfloat16, 8>(fasttx::Params)",
     "forward_rows"),
    ("nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NNT", "nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NNT"),
])
def test_profiler_kernel_names_are_shortened_to_the_function(key, name):
    assert gpu_checks.short_kernel_name(key) == name
