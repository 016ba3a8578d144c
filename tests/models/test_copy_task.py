"""The copy task: its batches and the accuracy of decodes against them."""


import pytest
import torch

from fasttx.models import CopyTask, TransformerConfig, sequence_accuracy


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
