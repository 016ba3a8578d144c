"""The options of a training run: one dataclass, the single source of the CLI's flags,
defaults and help texts.

    options = TrainOptions(task="reverse", preset="tiny", max_steps=500).resolved()

Fields left at None take the preset's default in :meth:`TrainOptions.resolved` (the paper's
recipe for base and big; a quick CPU-sized one for tiny), see :data:`PRESET_DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import torch

from fasttx.models.config import PRESETS

__all__ = ["PRESET_DEFAULTS", "RESUMABLE", "TrainOptions", "changed_options"]

#: Per-preset defaults of the fields left at None. base/big: the paper (25k-token batches,
#: warm-up 4000, lr factor 1; 100k steps for base, 300k for big). tiny learns the built-in
#: tasks on a CPU in about a minute.
PRESET_DEFAULTS = {
    "tiny": dict(max_steps=1500, max_tokens=2048, warmup=100, lr_factor=0.5, eval_every=500),
    "base": dict(max_steps=100_000, max_tokens=25_000, warmup=4000, lr_factor=1.0,
                 eval_every=5000),
    "big": dict(max_steps=300_000, max_tokens=25_000, warmup=4000, lr_factor=1.0,
                eval_every=5000),
}

#: Fields a resumed run may change (everything else must match the checkpoint's run, or the
#: run would not continue the same training).
RESUMABLE = ("max_steps", "backend", "device", "out", "resume", "log_every", "eval_every",
             "save_every", "eval_sentences", "num_beams", "length_penalty", "progress",
             "compile")


def _option(default, help: str, **cli):
    """A field with its CLI metadata: ``help``, ``group`` (of --help), and ``shown_default``
    (what a None default means, where not the presets' values)."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainOptions:
    """Every knob of ``fasttx-train``; the CLI flag of ``field_name`` is ``--field-name``."""

    # what to learn
    task: str = _option("copy", "built-in synthetic task, used when no --train-src is given")
    train_src: str | None = _option(None, "source side of the training text (one sentence "
                                    "per line, UTF-8)", group="data",
                                    shown_default="none: the built-in --task")
    train_tgt: str | None = _option(None, "target side of the training text, line-aligned "
                                    "with --train-src", group="data",
                                    shown_default="none: the built-in --task")
    valid_src: str | None = _option(None, "validation source text", group="data")
    valid_tgt: str | None = _option(None, "validation target text", group="data")
    test_src: str | None = _option(None, "test source text (scored with beam search at the "
                                   "end)", group="data")
    test_tgt: str | None = _option(None, "test target text", group="data")
    vocab_size: int = _option(8000, "subword vocabulary shared by source and target, trained "
                              "on the training text", group="data")
    synthetic_size: int = _option(50_000, "training pairs generated for a synthetic task "
                                  "(validation and test: a tenth as many, at most 500, "
                                  "each)", group="data")
    max_tokens: int | None = _option(None, "tokens per batch (padded, per rank and "
                                     "accumulation step)", group="data")
    pack: bool = _option(False, "pack sentences without padding (varlen attention) instead "
                         "of padding each batch", group="data")
    # the model and the kernels
    preset: str = _option("tiny", "model size: " + ", ".join(PRESETS))
    max_len: int | None = _option(None, "longest sentence in tokens (longer training pairs "
                                  "are dropped)")
    dropout: float | None = _option(None, "residual and embedding dropout")
    label_smoothing: float | None = _option(None, "label smoothing of the training loss")
    backend: str = _option("auto", "fasttx kernels: auto, triton, cuda or reference")
    compile: bool = _option(False, "torch.compile the training step")
    device: str | None = _option(None, "torch device",
                                 shown_default="cuda when available, else cpu")
    precision: str = _option("auto", "bf16 (autocast), fp32, or auto: bf16 on CUDA, fp32 "
                             "elsewhere")
    # the optimisation (the paper's recipe)
    max_steps: int | None = _option(None, "optimizer steps to train for (a resumed run "
                                    "continues up to it)", group="optimisation")
    warmup: int | None = _option(None, "linear warm-up steps before the inverse-square-root "
                                 "decay", group="optimisation")
    lr_factor: float | None = _option(None, "scales the schedule "
                                      "lr = factor * d_model^-0.5 * min(step^-0.5, "
                                      "step * warmup^-1.5)", group="optimisation")
    clip_norm: float = _option(1.0, "clip the global gradient norm to this (0: no clipping)",
                               group="optimisation")
    accum_steps: int = _option(1, "accumulate gradients over this many batches per step",
                               group="optimisation")
    seed: int = _option(0, "seeds the weights, the dropout, the data order and the synthetic "
                        "data", group="optimisation")
    fsdp: bool = _option(False, "under torchrun: shard parameters, gradients and optimizer "
                         "state with FSDP instead of replicating them with DDP",
                         group="optimisation")
    # output, evaluation, checkpoints
    out: str | None = _option(None, "output folder (checkpoint, metrics.jsonl, plots)",
                              group="output", shown_default="runs/<task or data>-<preset>")
    resume: bool = _option(False, "continue the run whose checkpoint is in --out",
                           group="output")
    log_every: int = _option(10, "steps per metrics.jsonl record", group="output")
    eval_every: int | None = _option(None, "steps between validations (greedy decoding) and "
                                     "checkpoints; 0: only at the end", group="output")
    save_every: int | None = _option(None, "steps between checkpoints", group="output",
                                     shown_default="--eval-every")
    eval_sentences: int = _option(500, "validation sentences decoded at each validation",
                                  group="output")
    num_beams: int = _option(4, "beam width of the final test decoding", group="output")
    length_penalty: float = _option(0.6, "beam search length penalty alpha", group="output")
    progress: bool = _option(True, "show a progress bar", group="output")
    compare_backends: str | None = _option(
        None, "comma-separated backends to train the same seed and data on, e.g. "
        "reference,triton,cuda (a +compile suffix also compiles): prints and writes a report",
        group="output")

    @property
    def uses_files(self) -> bool:
        return self.train_src is not None or self.train_tgt is not None

    def resolved(self) -> TrainOptions:
        """A copy with the preset's defaults filled in and every value checked."""
        if self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        values = {name: value for name, value in PRESET_DEFAULTS[self.preset].items()
                  if getattr(self, name) is None}
        options = dataclasses.replace(self, **values)
        if options.save_every is None:
            options = dataclasses.replace(options, save_every=options.eval_every)
        if options.out is None:
            source = "data" if options.uses_files else options.task
            options = dataclasses.replace(options, out=f"runs/{source}-{options.preset}")
        options._check()
        return options

    def _check(self) -> None:
        for name in ("max_steps", "max_tokens", "accum_steps", "log_every", "vocab_size",
                     "synthetic_size", "eval_sentences", "num_beams"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "save_every", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be at least 0, got {getattr(self, name)}")
        if self.lr_factor <= 0:
            raise ValueError(f"--lr-factor must be positive, got {self.lr_factor}")
        for name in ("clip_norm", "length_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{_flag(name)} must be at least 0, got {getattr(self, name)}")
        for name in ("dropout", "label_smoothing"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ValueError(f"--{_flag(name)} must be in [0, 1), got {value}")
        if self.max_len is not None and self.max_len < 3:
            raise ValueError(f"--max-len must be at least 3 (bos, a token, eos), got "
                             f"{self.max_len}")
        if self.uses_files and self.vocab_size < 5:
            raise ValueError(f"--vocab-size must be at least 5 (4 special tokens and one "
                             f"more), got {self.vocab_size}")
        if self.device is not None:
            try:
                device = torch.device(self.device)
            except RuntimeError as error:
                raise ValueError(f"--device must be a torch device such as cpu, cuda or "
                                 f"cuda:1, got {self.device!r}") from error
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"--device {self.device}: this torch build or machine has "
                                 f"no CUDA GPU")
        from fasttx.backends import BACKENDS
        from fasttx.train.tasks import TASKS

        for name, allowed in (("precision", ("auto", "bf16", "fp32")),
                              ("backend", ("auto", *BACKENDS)), ("task", tuple(TASKS))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{_flag(name)} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        pairs = [("train_src", "train_tgt"), ("valid_src", "valid_tgt"), ("test_src", "test_tgt")]
        for src, tgt in pairs:
            if (getattr(self, src) is None) != (getattr(self, tgt) is None):
                raise ValueError(f"--{_flag(src)} and --{_flag(tgt)} go together: give both")
        if not self.uses_files and (self.valid_src or self.test_src):
            raise ValueError("--valid-src/--test-src need --train-src and --train-tgt")
        if self.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
            # one process has nothing to shard: the run would silently train unsharded
            raise ValueError("--fsdp shards across the processes of a torchrun launch, and "
                             "this process runs alone: start it with torchrun "
                             "--nproc-per-node N (N >= 2) -m fasttx.train ...")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def changed_options(stored: dict, given: dict) -> str:
    """Empty when a run with options ``given`` may resume one with options ``stored``
    (only :data:`RESUMABLE` fields differ); else what differs, flag by flag."""
    changed = [f"--{_flag(name)} {stored.get(name)!r} -> {value!r}"
               for name, value in given.items()
               if name not in RESUMABLE and stored.get(name) != value]
    if not changed:
        return ""
    return (f"these options differ from the run's: {', '.join(changed)} (a resumed run may "
            f"only change {', '.join(f'--{_flag(name)}' for name in RESUMABLE)})")
