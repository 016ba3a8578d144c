"""``python -m fasttx``: the demo run of the training CLI."""

import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from fasttx.__main__ import main


def test_main_runs_and_reports(capsys):
    threads = torch.get_num_threads()
    assert main(["--steps", "4", "--device", "cpu", "--seed", "1",
                 "--min-accuracy", "0"]) == 0
    out = capsys.readouterr().out
    for expected in ("device cpu", "backends available: reference", "final loss",
                     "kernels used: attention=reference", "exact match", "OK"):
        assert expected in out
    assert torch.get_num_threads() == threads
    assert main(["--steps", "2", "--min-accuracy", "1.0"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_main_reports_an_unavailable_backend(capsys):
    if torch.cuda.is_available():
        pytest.skip("the cuda backend may be available here")
    assert main(["--steps", "1", "--backend", "cuda", "--device", "cpu"]) == 1
    assert "cuda" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["tqdm", "sacrebleu"])
def test_without_the_train_extra_it_says_what_to_install(module, monkeypatch, capsys):
    """`fasttx-demo` comes with a plain `pip install fasttx`, the train extra does not."""
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` raises ImportError
    assert main(["--steps", "1", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert f"no module {module}" in line and "pip install 'fasttx[train]'" in line


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_installs_the_train_extra_not_the_test_extras():
    root = pathlib.Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "demo"], cwd=root, capture_output=True, text=True,
                          check=True).stdout
    assert '-e ".[train]"' in plan and "[test]" not in plan
    assert "-m fasttx" in plan
