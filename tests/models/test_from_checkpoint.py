"""Seq2SeqTransformer.from_checkpoint: the model a fasttx-train checkpoint holds."""

import secrets

import pytest
import torch

from fasttx.models import CopyTask, Seq2SeqTransformer
from fasttx.testing import gpu
from fasttx.train import Trainer, TrainOptions
from fasttx.train import checkpoint as ckpt


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A Trainer after 3 steps of the copy task, and the checkpoint it wrote."""
    out = tmp_path_factory.mktemp("run")
    options = TrainOptions(task="copy", synthetic_size=120, max_tokens=160, max_steps=3,
                           eval_every=0, progress=False, out=str(out)).resolved()
    with one_thread():
        trainer = Trainer(options, echo=lambda *args, **kwargs: None)
        trainer.run(evaluate=False)
    return trainer, out / "checkpoint.pt"


def _batch(config, seed):
    """An odd-sized copy batch with padding (src (7, L), tgt (7, L + 1))."""
    return CopyTask.for_config(config).sample(7, torch.Generator().manual_seed(seed))


def test_the_loaded_model_is_the_trained_one(trained, one_thread):
    trainer, path = trained
    model = Seq2SeqTransformer.from_checkpoint(path)
    assert not model.training and model.config == trainer.model.config
    trained_state = trainer.model.state_dict()
    assert model.state_dict().keys() == trained_state.keys()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained_state[name]), name
    src, tgt = _batch(model.config, seed=secrets.randbits(31))  # fresh inputs every run
    trainer.model.eval()
    with one_thread(), torch.no_grad():
        assert torch.equal(model(src, tgt[:, :-1]), trainer.model(src, tgt[:, :-1]))
        assert torch.equal(model.generate(src, num_beams=2),
                           trainer.model.generate(src, num_beams=2))


def test_a_loaded_state_dict_gives_the_same_model(trained):
    _, path = trained
    state = ckpt.load_checkpoint(path)
    from_dict = Seq2SeqTransformer.from_checkpoint(state, device="cpu")
    from_path = Seq2SeqTransformer.from_checkpoint(str(path))
    assert all(torch.equal(a, b) for a, b in
               zip(from_dict.state_dict().values(), from_path.state_dict().values(), strict=True))


def test_bad_checkpoints_name_what_is_wrong(trained, tmp_path):
    _, path = trained
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at .*missing.pt"):
        Seq2SeqTransformer.from_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "weights.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="weights.pt is not a fasttx training"):
        Seq2SeqTransformer.from_checkpoint(foreign)
    with pytest.raises(ValueError, match="a dict with format None"):
        Seq2SeqTransformer.from_checkpoint({"model": {}})


@gpu
def test_device_puts_the_model_on_the_gpu(trained):
    trainer, path = trained
    model = Seq2SeqTransformer.from_checkpoint(path, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    src, tgt = _batch(model.config, seed=secrets.randbits(31))
    cpu = Seq2SeqTransformer.from_checkpoint(path).double()
    with torch.no_grad():
        expected = cpu(src, tgt[:, :-1])
        plain = cpu.float()(src, tgt[:, :-1])  # the same fp32 model, on the CPU
        actual = model(src.cuda(), tgt[:, :-1].cuda()).cpu()
    # the GPU's fp32 error against fp64 within 2x the CPU's fp32 error, plus a floor
    budget = 2 * (plain.double() - expected).abs().max() + 1e-4
    assert (actual.double() - expected).abs().max() <= budget
