"""Checkpoints: atomic writes, clear errors on bad files, random states restored."""

import random

import numpy as np
import pytest
import torch

from fasttx.train import checkpoint as ckpt


def _state(step=1):
    return {key: None for key in ckpt.KEYS} | {"format": ckpt.FORMAT, "step": step,
                                               "model": {"w": torch.arange(5.0)}}


def test_save_then_load_round_trips(tmp_path):
    path = ckpt.save_checkpoint(tmp_path / "sub" / "checkpoint.pt", _state(7))
    state = ckpt.load_checkpoint(path)
    assert state["step"] == 7
    torch.testing.assert_close(state["model"]["w"], torch.arange(5.0))
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left
    assert path.stat().st_mode & 0o044  # readable like any file, not mkstemp's 0600


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = ckpt.save_checkpoint(tmp_path / "checkpoint.pt", _state(1))

    def crash(obj, file):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_save_refuses_an_incomplete_state(tmp_path):
    state = _state()
    del state["rng"]
    with pytest.raises(ValueError, match="rng"):
        ckpt.save_checkpoint(tmp_path / "c.pt", state)


def test_load_names_what_is_wrong(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ckpt.CheckpointError, match="cannot read checkpoint .*garbage.pt"):
        ckpt.load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a fasttx training checkpoint"):
        ckpt.load_checkpoint(foreign)


def test_random_states_are_restored():
    device = torch.device("cpu")
    state = ckpt.capture_rng(device)
    first = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng(state, device)
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert first[:2] == again[:2]
    torch.testing.assert_close(first[2], again[2], rtol=0, atol=0)
