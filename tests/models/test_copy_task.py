"""The copy task, the training loop and ``python -m fasttx``."""

import time

import pytest
import torch

from fasttx.__main__ import main
from fasttx.models import (
    CopyTask,
    TransformerConfig,
    evaluate_copy_task,
    noam_lr,
    sequence_accuracy,
    train_copy_task,
)


def test_batches_are_deterministic_and_framed():
    task = CopyTask(vocab_size=16, max_len=8)
    first = next(task.batches(32, seed=3))
    again = next(task.batches(32, seed=3))
    other = next(task.batches(32, seed=4))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    src, tgt = first
    assert src.dtype == tgt.dtype == torch.long
    assert tgt.shape == (32, src.shape[1] + 1) and src.shape[1] <= 9
    assert (tgt[:, 0] == 1).all() and torch.equal(tgt[:, 1:], src)
    for row in src.tolist():
        end = row.index(2)
        assert 1 <= end <= 8
        assert all(t >= 3 for t in row[:end]) and all(t == 0 for t in row[end + 1:])
    lengths = (src != 0).sum(1)
    assert lengths.min() < lengths.max()  # variable lengths, padded


def test_task_must_fit_the_model():
    with pytest.raises(ValueError, match="max_len"):
        CopyTask.for_config(TransformerConfig.tiny(max_len=8))
    with pytest.raises(ValueError, match="min_len"):
        CopyTask(vocab_size=16, min_len=0)
    with pytest.raises(ValueError, match="vocab_size"):
        CopyTask(vocab_size=4)


def test_sequence_accuracy():
    targets = torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0], [1, 3, 4, 5, 2]])
    predictions = torch.tensor([[1, 5, 6, 2], [1, 7, 7, 2], [1, 3, 4, 5]])  # last: no eos
    accuracy = sequence_accuracy(predictions, targets, pad_id=0)
    assert accuracy.exact_match == pytest.approx(1 / 3)
    assert accuracy.token_accuracy == pytest.approx((3 + 1 + 3) / 9)
    assert accuracy.num_sequences == 3


def test_noam_schedule():
    peak = noam_lr(4000, 512, 4000)
    assert peak == pytest.approx(512 ** -0.5 * 4000 ** -0.5)
    assert noam_lr(400, 512, 4000) == pytest.approx(peak / 10)  # linear warm-up
    assert noam_lr(16000, 512, 4000) == pytest.approx(peak / 2)  # inverse square root
    assert noam_lr(0, 512, 4000) == noam_lr(1, 512, 4000) > 0
    assert noam_lr(10, 64, 100, factor=3.0) == pytest.approx(3 * noam_lr(10, 64, 100))


@pytest.mark.slow
def test_tiny_model_learns_the_copy_task(one_thread):
    """~18 s on one busy CPU core: the tiny model copies fresh sequences."""
    start = time.perf_counter()
    with one_thread():
        result = train_copy_task(steps=400, progress=False)
        beam = evaluate_copy_task(result.model, CopyTask.for_config(result.config),
                                  num_sequences=128, seed=99, num_beams=3)
    elapsed = time.perf_counter() - start
    assert result.final_loss < 0.15
    assert result.exact_match >= 0.9 and result.token_accuracy >= 0.97
    assert beam.exact_match >= 0.9
    assert result.steps == 400 and result.tokens_per_second > 0
    assert result.backends == {"attention": "reference", "add_layer_norm": "reference",
                               "feed_forward": "reference"}
    assert len(result.examples) == 3
    assert sum(source == decoded for source, decoded in result.examples) >= 2
    assert elapsed < 60


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
