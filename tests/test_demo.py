"""``python -m fasttx``: the demo run of the training CLI."""

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
