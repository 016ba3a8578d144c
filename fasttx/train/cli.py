"""``fasttx-train`` (also ``python -m fasttx.train``): train the bundled Transformer.

    fasttx-train                                        # tiny model, synthetic copy task
    fasttx-train --task numbers --max-steps 3000        # digits -> English words
    fasttx-train --preset base --train-src train.de --train-tgt train.en \\
        --valid-src dev.de --valid-tgt dev.en --test-src test.de --test-tgt test.en
    fasttx-train --task reverse --resume                # continue runs/reverse-tiny
    fasttx-train --compare-backends reference,reference+compile,triton,cuda --max-steps 200
    torchrun --nproc-per-node 8 -m fasttx.train --preset big --fsdp ...

The flags, defaults and help texts come from :class:`fasttx.train.options.TrainOptions`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

from fasttx.backends import BACKENDS, BackendUnavailableError
from fasttx.models.config import PRESETS
from fasttx.train.options import PRESET_DEFAULTS, RESUMABLE, TrainOptions, changed_options

__all__ = ["EXIT_CODES", "build_parser", "main", "missing_train_extra", "options_from_args"]

#: Exit status of each outcome.
EXIT_CODES = {"finished": 0, "error": 2, "non-finite": 3, "interrupted": 130}

_EPILOG = """\
exit status: 0 finished; 2 bad arguments, data files or checkpoint; 3 stopped on a NaN/inf
loss (the last checkpoint is left as it was); 130 interrupted by Ctrl-C or SIGTERM (after
saving a checkpoint: continue with --resume).

output in --out: checkpoint.pt (model, optimizer, schedule, random states, data position),
tokenizer.json, metrics.jsonl (one JSON object per --log-every steps and per evaluation),
loss.png; with --compare-backends, compare_backends.json and .png."""

_GROUPS = {None: "model and kernels", "data": "data", "optimisation": "optimisation",
           "output": "output, evaluation and checkpoints"}


def _choices(name: str):
    from fasttx.train.tasks import TASKS

    return {"task": sorted(TASKS), "preset": list(PRESETS),
            "backend": ["auto", *BACKENDS], "precision": ["auto", "bf16", "fp32"]}.get(name)


def _value_type(annotation: str):
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if annotation.startswith(name):
            return kind
    return str


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainOptions` field; unset flags are absent from the result
    (so a resumed run keeps its checkpoint's values)."""
    from fasttx.train.tasks import TASKS

    tasks = "\n".join(f"  {name:<8} {task.description}" for name, task in TASKS.items())
    parser = argparse.ArgumentParser(
        prog="fasttx-train", epilog=f"synthetic tasks (--task):\n{tasks}\n\n{_EPILOG}",
        argument_default=argparse.SUPPRESS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train fasttx's encoder-decoder Transformer (Vaswani et al., 2017) with "
                    "fused kernels: on a built-in synthetic task or on parallel text files.")
    groups = {key: parser.add_argument_group(title) for key, title in _GROUPS.items()}
    for spec in dataclasses.fields(TrainOptions):
        kind = _value_type(str(spec.type))
        help_text = f"{spec.metadata['help']} (default {_shown_default(spec)})"
        group = groups[spec.metadata.get("group")]
        flag = "--" + spec.name.replace("_", "-")
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            group.add_argument(flag, type=kind, choices=_choices(spec.name), help=help_text,
                               metavar=None if _choices(spec.name) else spec.name.upper())
    return parser


def missing_train_extra(uses_files: bool = False) -> str | None:
    """None when the ``train`` extra's modules a run imports are installed, else a one-line
    error saying what to install. ``uses_files``: the run trains a subword tokenizer
    (``tokenizers``); matplotlib is not checked, a run without it only skips its plots."""
    needed = ["tqdm", "sacrebleu"] + (["tokenizers"] if uses_files else [])
    missing = [name for name in needed if not _importable(name)]
    if not missing:
        return None
    return (f"training needs the train extra (no module {', '.join(missing)} here): "
            f"pip install 'fasttx[train]'")


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _shown_default(spec: dataclasses.Field) -> str:
    """A flag's default as --help shows it: the field's; for a None default, the presets'
    values (PRESET_DEFAULTS, else the model presets'), what None means (``shown_default``),
    or none."""
    if spec.default is not None:
        return str(spec.default)
    for presets in (PRESET_DEFAULTS, PRESETS):
        if spec.name in presets["tiny"]:
            return "per preset: " + ", ".join(f"{preset} {values[spec.name]}"
                                              for preset, values in presets.items())
    return spec.metadata.get("shown_default", "none")


def options_from_args(given: dict) -> TrainOptions:
    """The resolved options of the flags ``given``; with ``resume``, the checkpoint's
    options with the given flags on top (only those in :data:`RESUMABLE` may differ)."""
    return _options_and_start(given)[0]


def _options_and_start(given: dict) -> tuple[TrainOptions, int]:
    """(:func:`options_from_args`, the step the run starts from: the checkpoint's with
    ``resume``, else 0), reading the checkpoint once."""
    options = TrainOptions(**given).resolved()
    if not options.resume:
        return options, 0
    from fasttx.train.checkpoint import CheckpointError, load_checkpoint

    path = Path(options.out) / "checkpoint.pt"
    if not path.exists():
        raise CheckpointError(f"--resume: no checkpoint at {path} (is --out right?)")
    state = load_checkpoint(path)
    stored, start = state["options"], state["step"]
    del state  # the model and optimizer: the trainer loads them again
    changed = changed_options(stored, given)
    if changed:
        raise CheckpointError(f"--resume continues {path} as it was trained; {changed}")
    merged = {**stored, **{name: given[name] for name in given if name in RESUMABLE},
              "resume": True, "out": options.out}
    if "eval_every" in given and "save_every" not in given:
        merged["save_every"] = None  # follows the new --eval-every, as documented
    return TrainOptions(**merged).resolved(), start


def main(argv: list[str] | None = None) -> int:
    from fasttx.train.checkpoint import CheckpointError
    from fasttx.train.data import DataError

    parser = build_parser()
    given = vars(parser.parse_args(argv))
    try:
        options, start = _options_and_start(given)
    except CheckpointError as error:
        print(f"fasttx-train: error: {error}", file=sys.stderr)
        return EXIT_CODES["error"]
    except ValueError as error:
        parser.error(str(error))  # exits with 2 and the usage
    missing = missing_train_extra(options.uses_files)
    if missing:
        print(f"fasttx-train: error: {missing}", file=sys.stderr)
        return EXIT_CODES["error"]
    if start >= options.max_steps:
        print(f"nothing to do: the checkpoint in {options.out} is at step {start}, and "
              f"--max-steps is {options.max_steps} (raise it to train on)")
        return EXIT_CODES["finished"]
    try:
        return _run(options)
    except (DataError, CheckpointError, BackendUnavailableError, ImportError, ValueError,
            OSError) as error:  # what the data, checkpoint, options or disk can get wrong
        print(f"fasttx-train: error: {error}", file=sys.stderr)
        return EXIT_CODES["error"]
    except KeyboardInterrupt:  # outside the training loop: setup, the final evaluation
        print("fasttx-train: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]


def _run(options: TrainOptions) -> int:
    from fasttx.train.compare import compare_backends, parse_entries
    from fasttx.train.distributed import init_distributed
    from fasttx.train.trainer import Trainer

    if options.compare_backends:
        report = compare_backends(options, parse_entries(options.compare_backends))
        return EXIT_CODES["finished"] if report["baseline"] else EXIT_CODES["error"]
    world = init_distributed(options.device)
    new_folders = _new_folders(Path(options.out))
    try:
        trainer = Trainer(options, world)
        summary = trainer.run()
    finally:
        if world.is_main:
            _remove_if_unused(new_folders)
        world.close()
    if world.is_main:
        print(_summary_line(summary, options))
    return EXIT_CODES[summary.status]


#: What a run writes into --out before its first metrics record (the next run rebuilds it).
_SETUP_FILES = ("tokenizer.json",)


def _new_folders(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, innermost first."""
    new = []
    while not path.exists() and path != path.parent:
        new.append(path)
        path = path.parent
    return new


def _remove_if_unused(new_folders: list[Path]) -> None:
    """Removes the --out folders this run created when it left nothing in them but its
    setup files: a run that failed before writing metrics or a checkpoint. A folder that
    existed before the run is never in ``new_folders``."""
    if not new_folders or not new_folders[0].is_dir():
        return
    leftovers = list(new_folders[0].iterdir())
    if not all(path.name in _SETUP_FILES and path.is_file() for path in leftovers):
        return
    for path in leftovers:
        path.unlink()
    for folder in new_folders:
        try:
            folder.rmdir()
        except OSError:  # something else was put there meanwhile: keep it
            return


def _summary_line(summary, options) -> str:
    parts = [f"{summary.status}: step {summary.step}/{options.max_steps}",
             f"{summary.seconds:.1f} s training", f"{summary.tokens_per_s:,.0f} target tokens/s",
             f"last loss {summary.final_loss:.4f}"]
    if summary.peak_memory_mb is not None:
        parts.append(f"peak memory {summary.peak_memory_mb:,.0f} MB")
    scores = summary.test or summary.valid
    if scores is not None:
        parts.append(f"{'test' if summary.test else 'valid'} BLEU {scores.bleu:.1f}, chrF "
                     f"{scores.chrf:.1f}, exact match {scores.exact_match:.1%}")
    if summary.checkpoint:
        parts.append(f"checkpoint {summary.checkpoint}")
    return "; ".join(parts)
