"""torchrun with two CPU processes (gloo): DDP and FSDP train exactly like one process
accumulating the same batches, and a distributed run resumes to the same losses."""

import os
import subprocess
import sys

import pytest

from tests.train.conftest import step_losses

pytestmark = pytest.mark.slow

ARGS = ["--task", "copy", "--synthetic-size", "300", "--max-tokens", "160", "--log-every",
        "1", "--eval-sentences", "4", "--num-beams", "1", "--no-progress"]


def _torchrun(*args, nproc=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--standalone", "-m", "fasttx.train", *ARGS, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _single(*args):
    from fasttx.train.cli import main

    assert main([*ARGS, *args]) == 0


@pytest.fixture(scope="module")
def one_process_accumulating(tmp_path_factory):
    """Batches 2k and 2k+1 of every step in one process: what ranks 0 and 1 take."""
    out = tmp_path_factory.mktemp("single") / "run"
    _single("--max-steps", "5", "--accum-steps", "2", "--out", str(out))
    return step_losses(out)


def _close_to(losses, expected, rel):
    assert [step for step, _ in losses] == [step for step, _ in expected]
    assert [loss for _, loss in losses] == pytest.approx([loss for _, loss in expected], rel=rel)


def test_ddp_matches_one_process(one_process_accumulating, tmp_path):
    output = _torchrun("--max-steps", "5", "--out", str(tmp_path / "ddp"))
    assert output.count("finished: step 5/5") == 1  # rank 0 alone reports
    _close_to(step_losses(tmp_path / "ddp"), one_process_accumulating, 1e-6)


def test_fsdp_matches_one_process(one_process_accumulating, tmp_path):
    _torchrun("--max-steps", "5", "--fsdp", "--out", str(tmp_path / "fsdp"))
    _close_to(step_losses(tmp_path / "fsdp"), one_process_accumulating, 1e-5)


def test_distributed_resume_continues_to_the_same_losses(one_process_accumulating, tmp_path):
    out = str(tmp_path / "ddp")
    _torchrun("--max-steps", "2", "--out", out)
    _torchrun("--max-steps", "5", "--out", out, "--resume")
    _close_to(step_losses(tmp_path / "ddp"), one_process_accumulating, 1e-6)
