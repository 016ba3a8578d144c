"""Shared set-up of the training tests: small, fast runs of the tiny preset on CPU."""

import json

import pytest

from fasttx.train import TrainOptions

#: A run of a few steps: small synthetic data, small batches, a record per step.
QUICK = dict(task="copy", synthetic_size=400, max_tokens=192, max_steps=6, log_every=1,
             eval_every=0, eval_sentences=8, num_beams=2, progress=False)


@pytest.fixture
def quick_options(tmp_path):
    """``quick_options(**changes)``: resolved TrainOptions of a quick run in tmp_path."""

    def make(**changes):
        values = {**QUICK, "out": str(tmp_path / "run"), **changes}
        return TrainOptions(**values).resolved()

    return make


@pytest.fixture(autouse=True)
def _train_on_one_thread(one_thread):
    """The tiny model trains fastest on one thread (and two are slower on a busy CPU)."""
    with one_thread():
        yield


def read_metrics(out) -> list[dict]:
    """The records of ``out``/metrics.jsonl."""
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def step_losses(out) -> list[tuple[int, float]]:
    """(step, loss) of each training record."""
    return [(r["step"], r["loss"]) for r in read_metrics(out) if "loss" in r]
