"""The training loop of ``fasttx-train``: the paper's recipe, resumable to the same losses.

    summary = Trainer(TrainOptions(task="reverse", max_steps=800).resolved()).run()

One step: this rank's ``accum_steps`` token-count batches, forward under bf16 autocast (on
CUDA), the label-smoothed loss of each micro-batch weighted by its share of the step's
target tokens over all ranks (so every target token counts the same, however the batches
fall), backward (gradients reduced across ranks on the last micro-batch only), global-norm
clipping, Adam(0.9, 0.98, 1e-9) with the warm-up + inverse-square-root schedule.

What the run leaves in ``--out``: ``checkpoint.pt`` (every ``save_every`` steps, at the end,
and on Ctrl-C / SIGTERM: see :mod:`fasttx.train.checkpoint`), ``tokenizer.json``,
``metrics.jsonl`` (a record per ``log_every`` steps and per evaluation) and ``loss.png``.
A non-finite loss stops the run before the optimizer step, leaving the last checkpoint as
it was.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fasttx.backends import record_selections, use_backend
from fasttx.models import Seq2SeqTransformer, TransformerConfig
from fasttx.train import checkpoint as ckpt
from fasttx.train._files import write_atomically
from fasttx.train.corpus import Corpora, load_corpora
from fasttx.train.data import TokenBatcher, collate, collate_packed
from fasttx.train.distributed import (
    World,
    full_state,
    gradient_sync,
    init_distributed,
    load_full_state,
    wrap_model,
)
from fasttx.train.evaluate import Scores, evaluate
from fasttx.train.options import TrainOptions, changed_options

__all__ = ["NonFiniteLossError", "TrainSummary", "Trainer", "noam_lr", "precision_autocast"]


def noam_lr(step: int, d_model: int, warmup: int, factor: float = 1.0) -> float:
    """The paper's schedule: linear warm-up for ``warmup`` steps, then step^-0.5 decay.

    Peaks at ``factor * (d_model * warmup)^-0.5`` on step ``warmup``; step counts from 1.
    """
    step = max(step, 1)
    return factor * d_model ** -0.5 * min(step ** -0.5, step * warmup ** -1.5)


def precision_autocast(precision: str, device: torch.device):
    """The autocast context of ``--precision`` on ``device``: bf16 for "bf16", and for
    "auto" on CUDA; else disabled (fp32)."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class TrainSummary:
    """What a run did. ``status``: "finished", "interrupted" or "non-finite";
    ``losses``: the loss of every step this process ran (after a resume, from there);
    ``step_seconds`` / ``step_tokens``: each of those steps' time and target tokens."""

    status: str
    step: int
    seconds: float
    tokens_per_s: float
    final_loss: float
    peak_memory_mb: float | None
    checkpoint: str | None
    backends: dict[str, str]
    valid: Scores | None = None
    test: Scores | None = None
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)


class _StopRequest:
    """First Ctrl-C (or SIGTERM) asks the loop to stop after the current step and save;
    a second Ctrl-C aborts at once. ``signal`` names the first one (the loop reports it:
    a handler must not print, it may have interrupted a print)."""

    def __init__(self):
        self.requested, self.signal, self._previous = False, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number, frame):
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signal = True, signal.Signals(number).name


class _Stream:
    """This rank's batches, step after step, through the epochs: a step takes the next
    ``world_size * accum_steps`` batches of the epoch's order, this rank its own run of
    ``accum_steps``. ``position`` (epoch, next batch) is stored in checkpoints."""

    def __init__(self, batcher: TokenBatcher, world: World, accum_steps: int):
        self.batcher, self.world, self.accum_steps = batcher, world, accum_steps
        self.epoch, self.cursor, self._order = 0, 0, None

    @property
    def position(self) -> dict:
        return {"epoch": self.epoch, "batch": self.cursor}

    def seek(self, position: dict) -> None:
        self.epoch, self.cursor, self._order = position["epoch"], position["batch"], None

    def next_step(self) -> list[list[int]]:
        batches = []
        for _ in range(self.world.world_size * self.accum_steps):
            if self._order is None:
                self._order = self.batcher.epoch_batches(self.epoch)
            batches.append(self._order[self.cursor])
            self.cursor += 1
            if self.cursor == len(self._order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        start = self.world.rank * self.accum_steps
        return batches[start:start + self.accum_steps]


class Trainer:
    """Sets up data, model, optimizer and (with ``options.resume``) the checkpoint's state;
    :meth:`run` trains to ``options.max_steps``. ``options`` must be resolved
    (:meth:`TrainOptions.resolved`); ``echo`` prints messages (rank 0 only)."""

    def __init__(self, options: TrainOptions, world: World | None = None, echo=print):
        self.options = options
        self.world = world or init_distributed(options.device)
        self.device = self.world.device
        self.echo = echo if self.world.is_main else (lambda *args, **kwargs: None)
        self.out = Path(options.out)
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.metrics_path = self.out / "metrics.jsonl"
        if options.resume:
            state = self._load_resume_state()
        else:
            state = None
            taken = [p.name for p in (self.checkpoint_path, self.metrics_path) if p.exists()]
            if taken:  # a new run would overwrite that run's checkpoint and mix its metrics
                raise ckpt.CheckpointError(
                    f"{self.out} already holds a run ({', '.join(taken)}): continue it with "
                    f"--resume, or give another --out")
        if self.world.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

        self.data: Corpora = load_corpora(options, self.world, self.out, self.echo,
                                          tokenizer_json=state and state["tokenizer"])
        tokenizer = self.data.tokenizer
        overrides = {name: getattr(options, name) for name in
                     ("dropout", "label_smoothing", "max_len")
                     if getattr(options, name) is not None}
        self.config = TransformerConfig.preset(
            options.preset, vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id,
            bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, **overrides)

        torch.manual_seed(options.seed)  # the same initial weights on every rank
        self.model = Seq2SeqTransformer(self.config).to(self.device)
        torch.manual_seed(options.seed + self.world.rank)  # each rank its own dropout
        self.train_module = wrap_model(self.model, self.world, options.fsdp)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1.0, betas=(0.9, 0.98),
                                          eps=1e-9)
        d_model, warmup, factor = self.config.d_model, options.warmup, options.lr_factor
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda index: noam_lr(index + 1, d_model, max(warmup, 1), factor))
        self.step_fn = torch.compile(self.train_module) if options.compile else self.train_module
        self.stream = _Stream(TokenBatcher(self.data.train.src_lengths,
                                           self.data.train.tgt_lengths, options.max_tokens,
                                           seed=options.seed), self.world, options.accum_steps)
        if options.num_beams >= self.config.vocab_size:
            raise ValueError(f"--num-beams must be below the vocabulary size "
                             f"({self.config.vocab_size}), got {options.num_beams}")
        self.step = self.saved_step = 0
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ setup

    def _load_resume_state(self) -> dict:
        state = ckpt.load_checkpoint(self.checkpoint_path)
        changed = changed_options(state["options"], asdict(self.options))
        if changed:
            raise ckpt.CheckpointError(f"cannot resume {self.checkpoint_path}: {changed}")
        if state["world_size"] != self.world.world_size:
            raise ckpt.CheckpointError(
                f"{self.checkpoint_path} was written by {state['world_size']} processes; "
                f"resume it with as many (got {self.world.world_size}) to keep its data order")
        return state

    def _data_size(self) -> dict:
        """What identifies the training data (a resumed run must see the same)."""
        train = self.data.train
        return {"pairs": len(train), "tokens": int(train.src_lengths.sum()
                                                   + train.tgt_lengths.sum())}

    def _restore(self, state: dict) -> None:
        if state["data_size"] != self._data_size():
            raise ckpt.CheckpointError(
                f"the training data differs from the data {self.checkpoint_path} was trained "
                f"on ({self._data_size()} now, {state['data_size']} then): its data position "
                f"would point elsewhere")
        load_full_state(self.model, self.optimizer, state["model"], state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = self.saved_step = state["step"]
        self.stream.seek(state["data_position"])
        ckpt.restore_rng(state["rng"][self.world.rank], self.device)
        if self.world.is_main:  # drop records of steps after the checkpoint (a crashed run)
            _truncate_metrics(self.metrics_path, self.step)
        self.echo(f"resumed from {self.checkpoint_path} at step {self.step}")

    # ------------------------------------------------------------------ pieces

    def autocast(self):
        return precision_autocast(self.options.precision, self.device)

    def _collate(self, indices) -> tuple[object, int]:
        """This batch on the device (padded (src, tgt) or packed) and its number of target
        tokens, counted on the host so that no step waits for the device to count them."""
        tokens = sum(len(self.data.train.tgt[i]) - 1 for i in indices)
        if self.options.pack:
            return collate_packed(self.data.train, indices).to(self.device), tokens
        src, tgt = collate(self.data.train, indices, self.config.pad_id)
        return (src.to(self.device), tgt.to(self.device)), tokens

    def train_step(self) -> tuple[float, int]:
        """One optimizer step; returns (loss per target token over all ranks, target tokens
        over all ranks). Raises :class:`NonFiniteLossError` before updating anything."""
        collated = [self._collate(indices) for indices in self.stream.next_step()]
        batches, local = [batch for batch, _ in collated], [tokens for _, tokens in collated]
        (total,) = self.world.sum([sum(local)])
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(batches):
            with gradient_sync(self.train_module, i == len(batches) - 1):
                with self.autocast():
                    out = self.step_fn(batch)
                # DDP averages over ranks: weigh by world_size * this batch's token share
                (out.loss * (local[i] * self.world.world_size / total)).backward()
            loss_sum += out.loss.detach().double() * local[i]
        (loss,) = self.world.sum([loss_sum.item()])
        loss /= total
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.options.clip_norm or float("inf"))
        if not (math.isfinite(loss) and math.isfinite(float(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"the loss is {loss} (gradient norm {float(grad_norm)}) "
                                     f"at step {self.step + 1}")
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss, int(total)

    def save(self) -> Path:
        """Writes the checkpoint (a collective: every rank calls it)."""
        model_state, optimizer_state = full_state(self.train_module, self.optimizer)
        rng = self.world.gather(ckpt.capture_rng(self.device))
        if self.world.is_main:
            ckpt.save_checkpoint(self.checkpoint_path, {
                "format": ckpt.FORMAT, "step": self.step,
                "data_position": self.stream.position, "data_size": self._data_size(),
                "model": model_state,
                "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                "rng": rng, "world_size": self.world.world_size,
                "options": asdict(self.options), "model_config": asdict(self.config),
                "tokenizer": self.data.tokenizer.to_json()})
        self.world.barrier()
        self.saved_step = self.step
        return self.checkpoint_path

    def evaluate(self, split: str, num_beams: int, limit: int | None = None) -> Scores | None:
        """Scores of the model on the split ("valid" or "test"), decoded with ``num_beams``;
        every rank runs it (FSDP gathers shards collectively)."""
        data = getattr(self.data, split)
        if data is None:
            return None
        corpus, pairs = data.head(limit) if limit else data
        return evaluate(self.model, corpus, pairs, self.data.tokenizer, self.options.max_tokens,
                        self.device, self.autocast, num_beams, self.options.length_penalty)

    # ------------------------------------------------------------------ the loop

    def run(self, evaluate: bool = True, save: bool = True) -> TrainSummary:
        """Trains from the current step to ``options.max_steps``; then (unless disabled)
        saves the checkpoint and evaluates: greedy on the validation split, beam search on
        the test split. Stops early, after a step, on Ctrl-C / SIGTERM (saving) or on a
        non-finite loss (not saving)."""
        options, world = self.options, self.world
        metrics = _Metrics(self.metrics_path, world.is_main)
        bar = _progress(options, world, self.step)
        summary = TrainSummary(status="finished", step=self.step, seconds=0.0,
                               tokens_per_s=0.0, final_loss=float("nan"), peak_memory_mb=None,
                               checkpoint=None, backends={})
        window = _Window()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        with use_backend(options.backend), record_selections() as backends, \
                _StopRequest() as stop:
            self.model.train()
            while self.step < options.max_steps:
                (requested,) = world.sum([float(stop.requested)])  # every rank stops together
                if requested:
                    summary.status = "interrupted"
                    self.echo(f"\n{stop.signal or 'stop requested'}: stopping after step "
                              f"{self.step}")
                    break
                epoch, start = self.stream.epoch, time.perf_counter()
                try:
                    loss, tokens = self.train_step()
                except NonFiniteLossError as error:
                    summary.status = "non-finite"
                    last = (f"{self.checkpoint_path} (step {self.saved_step})"
                            if self.saved_step else "none (no checkpoint was written yet)")
                    self.echo(f"\nstopping: {error}. Nothing was updated; the last good "
                              f"checkpoint is {last}. Lower --lr-factor, raise --warmup or "
                              f"use --precision fp32.")
                    break
                seconds = time.perf_counter() - start
                summary.losses.append(loss)
                summary.step_seconds.append(seconds)
                summary.step_tokens.append(tokens)
                window.add(loss, tokens, seconds, epoch)
                bar.update(1)
                will_save = save and options.save_every and self.step % options.save_every == 0
                if self.step % options.log_every == 0 or self.step == options.max_steps \
                        or will_save:  # a record ends at every checkpoint: resumes align
                    record = window.record(self.step, self.scheduler.get_last_lr()[0])
                    metrics.write(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}",
                                    tok_s=f"{record['tokens_per_s']:,.0f}",
                                    lr=f"{record['lr']:.2e}")
                    window = _Window()
                if evaluate and options.eval_every and self.step % options.eval_every == 0 \
                        and self.step < options.max_steps:
                    summary.valid = self._validate(metrics, bar)
                if will_save:
                    summary.checkpoint = str(self.save())
            bar.close()
            if window.tokens:  # the steps since the last record (an early stop)
                metrics.write(window.record(self.step, self.scheduler.get_last_lr()[0]))
            if save and summary.status != "non-finite" and self.saved_step != self.step:
                summary.checkpoint = str(self.save())
            elif save and self.saved_step:
                summary.checkpoint = str(self.checkpoint_path)
            if summary.status == "interrupted":
                self.echo(f"interrupted at step {self.step}"
                          + (f": saved {self.checkpoint_path}; continue with --resume"
                             if save else ""))
            elif summary.status == "finished" and evaluate:
                summary.valid = self._validate(metrics, None) or summary.valid
                summary.test = self._final_test(metrics)
            summary.backends = dict(backends)
        summary.step = self.step
        summary.seconds = sum(summary.step_seconds)
        summary.tokens_per_s = sum(summary.step_tokens) / max(summary.seconds, 1e-9)
        summary.final_loss = summary.losses[-1] if summary.losses else float("nan")
        if self.device.type == "cuda":
            summary.peak_memory_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        if world.is_main:
            from fasttx.train.plots import plot_loss_curve

            plot_loss_curve(self.metrics_path, self.out / "loss.png", echo=self.echo,
                            label_smoothing=self.config.label_smoothing)
        return summary

    def _validate(self, metrics, bar) -> Scores | None:
        scores = self.evaluate("valid", 1, self.options.eval_sentences)
        if scores is not None:
            metrics.write({"step": self.step, "split": "valid", **scores.metrics("valid")})
            line = (f"step {self.step}: valid loss {scores.loss:.4f}, BLEU {scores.bleu:.1f}, "
                    f"chrF {scores.chrf:.1f}, exact match {scores.exact_match:.1%} (greedy)")
            (bar.write if bar is not None else self.echo)(line)
        return scores

    def _final_test(self, metrics) -> Scores | None:
        beams = self.options.num_beams
        scores = self.evaluate("test", beams)
        if scores is not None:
            metrics.write({"step": self.step, "split": "test", **scores.metrics("test")})
            self.echo(f"test: BLEU {scores.bleu:.1f}, chrF {scores.chrf:.1f}, exact match "
                      f"{scores.exact_match:.1%} (beam {beams}, length penalty "
                      f"{self.options.length_penalty})")
            for source, hypothesis, reference in scores.examples:
                self.echo(f"  {source!r} -> {hypothesis!r} (reference {reference!r})")
        return scores


class _Window:
    """Loss and throughput over the steps since the last metrics record."""

    def __init__(self):
        self.loss_sum = self.tokens = self.seconds = 0.0
        self.epoch = 0

    def add(self, loss: float, tokens: int, seconds: float, epoch: int) -> None:
        """One step's loss, tokens and time; ``epoch``: the epoch its batches came from."""
        self.loss_sum += loss * tokens
        self.tokens += tokens
        self.seconds += seconds
        self.epoch = epoch

    def record(self, step: int, lr: float) -> dict:
        return {"step": step, "epoch": self.epoch, "loss": self.loss_sum / max(self.tokens, 1),
                "lr": lr, "tokens_per_s": self.tokens / max(self.seconds, 1e-9),
                "tokens": int(self.tokens)}


class _Metrics:
    """Appends one JSON object per line to metrics.jsonl (rank 0 only), flushed each time."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """Keeps the records of steps <= ``step`` (those after the checkpoint are redone)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines
            if (record := _parse(line)) is not None and record.get("step", step + 1) <= step]
    write_atomically(path, text="".join(line + "\n" for line in kept))


def _parse(line: str) -> dict | None:
    """A metrics record, or None for a line a crash cut short."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _progress(options: TrainOptions, world: World, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=options.max_steps, initial=initial, unit="step", dynamic_ncols=True,
                disable=not (options.progress and world.is_main), desc="training")
