"""The training loop: the recipe's pieces, resume, stopping, outputs and learning."""

import dataclasses
import json
import random
import re
import signal

import pytest
import torch

from fasttx.train import NonFiniteLossError, Trainer, noam_lr
from fasttx.train import checkpoint as ckpt
from fasttx.train.data import DataError
from fasttx.train.distributed import LossForward
from fasttx.train.tasks import TASKS
from tests.train.conftest import read_metrics, step_losses


def _run(options, **run_kwargs):
    return Trainer(options, echo=lambda *args, **kwargs: None).run(**run_kwargs)


def test_run_writes_checkpoint_metrics_tokenizer_and_plot(quick_options, tmp_path):
    options = quick_options()
    summary = _run(options)
    out = tmp_path / "run"
    assert summary.status == "finished" and summary.step == 6 and len(summary.losses) == 6
    assert {"checkpoint.pt", "metrics.jsonl", "tokenizer.json", "loss.png"} <= \
        {path.name for path in out.iterdir()}
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]
    records = read_metrics(out)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 7))
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 and r["tokens"] > 0 for r in train)
    assert [r["loss"] for r in train] == pytest.approx(summary.losses)
    # the end: greedy validation, then the test split with beam search
    assert [r["split"] for r in records if "split" in r] == ["valid", "test"]
    test = records[-1]
    assert test["test_num_beams"] == 2 and test["test_num_sentences"] == 40
    assert 0.0 <= test["test_bleu"] <= 100.0 and 0.0 <= test["test_exact_match"] <= 1.0
    state = ckpt.load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 6 and state["options"]["task"] == "copy"
    assert json.loads(state["tokenizer"]) == json.loads((out / "tokenizer.json").read_text())


def test_noam_schedule():
    peak = noam_lr(4000, 512, 4000)
    assert peak == pytest.approx(512 ** -0.5 * 4000 ** -0.5)
    assert noam_lr(400, 512, 4000) == pytest.approx(peak / 10)  # linear warm-up
    assert noam_lr(16000, 512, 4000) == pytest.approx(peak / 2)  # inverse square root
    assert noam_lr(0, 512, 4000) == noam_lr(1, 512, 4000) > 0
    assert noam_lr(10, 64, 100, factor=3.0) == pytest.approx(3 * noam_lr(10, 64, 100))


def test_learning_rate_follows_warmup_then_inverse_square_root(quick_options, tmp_path):
    options = quick_options(max_steps=8, warmup=4, lr_factor=2.0)
    _run(options, evaluate=False, save=False)
    lrs = [r["lr"] for r in read_metrics(tmp_path / "run") if "lr" in r]
    d_model = 64
    expected = [2.0 * d_model ** -0.5 * min((s + 1) ** -0.5, (s + 1) * 4 ** -1.5)
                for s in range(1, 9)]  # the rate the next step will use
    assert lrs == pytest.approx(expected)


def test_resume_continues_to_the_same_losses(quick_options, tmp_path):
    straight = quick_options(max_steps=8, out=str(tmp_path / "straight"))
    _run(straight)
    first = quick_options(max_steps=3, out=str(tmp_path / "resumed"))
    _run(first)
    resumed = _run(dataclasses.replace(first, max_steps=8, resume=True))
    assert resumed.step == 8 and len(resumed.losses) == 5
    assert step_losses(tmp_path / "resumed") == step_losses(tmp_path / "straight")


def test_resume_between_records_gives_the_same_records(quick_options, tmp_path):
    """Records end at every checkpoint, so windows of log_every > 1 steps line up."""
    straight = quick_options(max_steps=8, log_every=3, save_every=4, out=str(tmp_path / "a"))
    _run(straight, evaluate=False)
    first = quick_options(max_steps=4, log_every=3, save_every=4, out=str(tmp_path / "b"))
    _run(first, evaluate=False)
    _run(dataclasses.replace(first, max_steps=8, resume=True), evaluate=False)
    assert step_losses(tmp_path / "a") == step_losses(tmp_path / "b")
    assert [step for step, _ in step_losses(tmp_path / "a")] == [3, 4, 6, 8]


def test_resume_drops_metrics_recorded_after_the_checkpoint(quick_options, tmp_path):
    options = quick_options(max_steps=4)
    _run(options)
    out = tmp_path / "run"
    with (out / "metrics.jsonl").open("a") as file:  # a crash after step 4's checkpoint
        file.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "lo')
    _run(dataclasses.replace(options, max_steps=6, resume=True))
    steps = [step for step, _ in step_losses(out)]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_other_training_options(quick_options, tmp_path):
    options = quick_options(max_steps=2)
    _run(options)
    with pytest.raises(ckpt.CheckpointError, match="--seed 0 -> 1"):
        Trainer(dataclasses.replace(options, seed=1, resume=True))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        Trainer(dataclasses.replace(options, out=str(tmp_path / "empty"), resume=True))


def test_a_new_run_never_overwrites_an_existing_one(quick_options, tmp_path):
    options = quick_options(max_steps=2)
    _run(options)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(ckpt.CheckpointError, match="already holds a run .*--resume"):
        Trainer(options)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_an_evaluation_split_that_does_not_fit_is_an_error(tmp_path, quick_options):
    for split in ("train", "valid"):
        (tmp_path / f"{split}.src").write_text("a b\n" if split == "train" else "a " * 80 + "\n")
        (tmp_path / f"{split}.tgt").write_text("c d\n")
    files = {f"{split}_{side}": str(tmp_path / f"{split}.{side}")
             for split in ("train", "valid") for side in ("src", "tgt")}
    with pytest.raises(DataError, match=r"valid\.src: every one of its 1 pairs is longer"):
        Trainer(quick_options(vocab_size=20, max_len=10, **files))


def test_packed_batches_train_like_padded_ones(quick_options, tmp_path):
    padded = _run(quick_options(out=str(tmp_path / "padded")), evaluate=False, save=False)
    packed = _run(quick_options(out=str(tmp_path / "packed"), pack=True), evaluate=False,
                  save=False)
    assert packed.losses == pytest.approx(padded.losses, rel=1e-5)
    assert packed.step_tokens == padded.step_tokens


def test_accumulation_weighs_every_target_token_the_same(quick_options, tmp_path):
    """Two accumulated batches of a step give the loss of their tokens pooled."""
    summary = _run(quick_options(accum_steps=2, max_steps=1), evaluate=False, save=False)
    trainer = Trainer(quick_options(max_steps=1, out=str(tmp_path / "pooled")))
    batches = [trainer._collate(b)[0] for b in trainer.stream.batcher.epoch_batches(0)[:2]]
    with torch.no_grad():
        outs = [trainer.model.loss(*batch) for batch in batches]
    pooled = sum(o.loss.item() * o.num_tokens for o in outs) / sum(o.num_tokens for o in outs)
    assert summary.losses[0] == pytest.approx(pooled, rel=1e-6)
    assert summary.step_tokens[0] == sum(o.num_tokens for o in outs)


def test_non_finite_loss_stops_before_updating_and_keeps_the_checkpoint(
        quick_options, tmp_path, monkeypatch):
    options = quick_options(max_steps=10, save_every=2)
    calls = {"n": 0}
    forward = LossForward.forward

    def poisoned(self, batch):
        calls["n"] += 1
        out = forward(self, batch)
        if calls["n"] == 5:  # step 5
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(LossForward, "forward", poisoned)
    messages = []
    trainer = Trainer(options, echo=messages.append)
    summary = trainer.run()
    assert summary.status == "non-finite" and summary.step == 4
    assert summary.checkpoint == str(tmp_path / "run" / "checkpoint.pt")
    assert any(re.search(r"loss is nan .*at step 5\..*checkpoint\.pt \(step 4\)", m)
               for m in messages), messages
    state = ckpt.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 4  # the step-4 checkpoint, not overwritten after the NaN
    for name, value in trainer.model.state_dict().items():  # step 5 changed nothing
        torch.testing.assert_close(value, state["model"][name], rtol=0, atol=0)
    assert all(p.grad is None for p in trainer.model.parameters())


def test_train_step_raises_on_an_infinite_gradient_with_a_finite_loss(quick_options):
    trainer = Trainer(quick_options())
    before = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    weight = next(trainer.model.encoder[0].ffn.parameters())
    weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.raises(NonFiniteLossError,
                       match=r"loss is [0-9.]+ \(gradient norm inf\) at step 1"):
        trainer.train_step()
    assert trainer.step == 0
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_stop_request_saves_after_the_current_step(quick_options, tmp_path, monkeypatch):
    """What Ctrl-C triggers (the signal itself is tested through the CLI)."""
    options = quick_options(max_steps=50)
    trainer = Trainer(options, echo=lambda *args: None)
    step = trainer.train_step

    def step_then_request():
        result = step()
        if trainer.step == 3:
            signal.raise_signal(signal.SIGINT)
        return result

    monkeypatch.setattr(trainer, "train_step", step_then_request)
    summary = trainer.run()
    assert summary.status == "interrupted" and summary.step == 3
    assert ckpt.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 3


def test_real_text_files_train_a_subword_tokenizer(tmp_path, quick_options):
    rng = random.Random(0)
    lines = [TASKS["numbers"].sample(rng) for _ in range(300)]
    for split, rows in (("train", lines[:260]), ("valid", lines[260:280]),
                        ("test", lines[280:])):
        (tmp_path / f"{split}.src").write_text("".join(s + "\n" for s, _ in rows))
        (tmp_path / f"{split}.tgt").write_text("".join(t + "\n" for _, t in rows))
    files = {f"{split}_{side}": str(tmp_path / f"{split}.{side}")
             for split in ("train", "valid", "test") for side in ("src", "tgt")}
    options = quick_options(vocab_size=60, max_steps=3, **files)
    summary = _run(options)
    assert summary.status == "finished" and summary.test.num_sentences == 20
    state = ckpt.load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert json.loads(state["tokenizer"])["kind"] == "subword"
    assert state["model_config"]["vocab_size"] <= 60


def test_the_vocabulary_message_gives_the_size_trained_not_the_size_asked(tmp_path,
                                                                         quick_options):
    rng = random.Random(1)
    rows = [TASKS["numbers"].sample(rng) for _ in range(50)]
    (tmp_path / "train.src").write_text("".join(s + "\n" for s, _ in rows))
    (tmp_path / "train.tgt").write_text("".join(t + "\n" for _, t in rows))
    messages = []
    trainer = Trainer(quick_options(vocab_size=4999, train_src=str(tmp_path / "train.src"),
                                    train_tgt=str(tmp_path / "train.tgt")),
                      echo=messages.append)
    size = trainer.data.tokenizer.vocab_size
    assert size < 4999  # 50 short sentences offer far fewer pieces
    assert f"the subword vocabulary has {size} tokens" in messages, messages
    assert not [message for message in messages if "4999-token" in message]


@pytest.mark.parametrize("label_smoothing, label", [
    (None, "train"),  # the tiny preset has none
    (0.1, "train (label smoothing 0.1)"),
])
def test_the_loss_plot_names_the_label_smoothing_the_loss_has(label_smoothing, label,
                                                              quick_options, monkeypatch):
    pytest.importorskip("matplotlib")
    from fasttx.train import plots

    legends, save = [], plots._save

    def save_and_record_the_legend(figure, plt, path):
        legends.append([text.get_text() for text in figure.axes[0].get_legend().get_texts()])
        return save(figure, plt, path)

    monkeypatch.setattr(plots, "_save", save_and_record_the_legend)
    _run(quick_options(max_steps=2, label_smoothing=label_smoothing), evaluate=False,
         save=False)
    assert legends == [[label]]


@pytest.mark.slow
@pytest.mark.parametrize("task, steps", [("copy", 800), ("sort", 1200), ("reverse", 1000),
                                         ("numbers", 1000)])
def test_tiny_preset_learns_each_synthetic_task(task, steps, quick_options):
    """40-75 s each on one CPU core: held-out test sentences decoded greedily, exactly.

    The step counts leave a margin over 0.9 exact matches at seeds 0-2 and with torch's
    AVX2 and AVX-512 CPU kernels (measured: copy 0.99-1.0, sort 0.94-0.99, reverse 0.95,
    numbers 0.96-0.99). Training is chaotic in the last bit, so a run that only just
    passed (copy at 500 steps: 0.76-0.96) passed or failed by the machine's CPU. The
    held-out NLL is judged, not the last batch's loss, which one long batch can spike.
    """
    options = quick_options(task=task, synthetic_size=20_000, max_tokens=1024,
                            max_steps=steps, log_every=100, num_beams=1)
    summary = _run(options, save=False)
    assert summary.test.num_sentences == 500
    assert summary.test.exact_match >= 0.9, (task, summary.test)
    assert summary.test.bleu >= 90 and summary.test.loss < 0.1
    assert set(summary.backends.values()) == {"reference"}
