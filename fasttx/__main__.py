"""``python -m fasttx`` (or ``fasttx-demo``): train the tiny Transformer on the copy task.

A short, fixed run of the training CLI (:mod:`fasttx.train`, ``fasttx-train`` for every
option): :meth:`TransformerConfig.tiny` on the synthetic copy task, on the best device here
(CUDA if available, else CPU), then greedy decoding of held-out sequences. It reports the
backend each fused op ran on, the loss, the exact-match accuracy, the time and a few
decodes, and exits with 1 when the accuracy is below ``--min-accuracy`` (2 without the
``train`` extra: ``pip install 'fasttx[train]'``). Nothing is written outside a temporary
folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch

import fasttx
from fasttx.backends import BACKENDS, BackendUnavailableError

DEFAULT_STEPS = 600


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fasttx",
        description="Train fasttx's tiny encoder-decoder Transformer on the copy task "
                    "(fasttx-train has every option).")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"optimizer steps (default {DEFAULT_STEPS})")
    parser.add_argument("--device", default=None,
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--backend", default="auto", choices=("auto",) + BACKENDS,
                        help="fasttx kernel backend (default auto)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--min-accuracy", type=float, default=0.9,
                        help="exit with 1 below this exact-match accuracy (default 0.9)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from fasttx.train.cli import missing_train_extra

    args = _parser().parse_args(argv)
    if args.steps < 1:
        print("error: --steps must be at least 1", file=sys.stderr)
        return 1
    missing = missing_train_extra()
    if missing:  # fasttx-demo is installed by a plain `pip install fasttx`
        print(f"error: {missing}", file=sys.stderr)
        return 2
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # The tiny model's ops are too small for intra-op threads to pay off: one thread
        # is ~20% slower than two on an idle 2-core machine, but 2-5x faster on a busy one.
        torch.set_num_threads(1)
    try:
        return _run(args, device)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace, device: torch.device) -> int:
    from fasttx.train import Trainer, TrainOptions

    available = fasttx.available_backends()
    print(f"fasttx {fasttx.__version__}, torch {torch.__version__}, device {device}")
    print("backends available: " + ", ".join(name for name, ok in available.items() if ok))
    for name, reason in available.reasons.items():
        print(f"  {name} unavailable: {reason}")
    with tempfile.TemporaryDirectory(prefix="fasttx-demo-") as out:
        options = TrainOptions(
            task="copy", preset="tiny", max_steps=args.steps, max_tokens=1024,
            synthetic_size=20_000, seed=args.seed, device=str(device), backend=args.backend,
            out=out, eval_every=0, log_every=max(1, args.steps // 4), num_beams=1,
            progress=False).resolved()
        print(f"model: tiny, copy task, {args.steps} steps of {options.max_tokens}-token "
              f"batches, backend={args.backend!r}")
        try:
            summary = Trainer(options).run(save=False)
        except BackendUnavailableError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    if summary.status != "finished":  # Ctrl-C, or a non-finite loss (already reported)
        return 130 if summary.status == "interrupted" else 1
    used = ", ".join(f"{op}={name}" for op, name in summary.backends.items())
    accuracy = summary.test.exact_match
    print(f"\nkernels used: {used}")
    print(f"final loss {summary.final_loss:.4f}; held-out greedy decodes: exact match "
          f"{accuracy:.1%}, BLEU {summary.test.bleu:.1f}")
    print(f"time {summary.seconds:.1f} s for {summary.step} steps "
          f"({summary.tokens_per_s:,.0f} target tokens/s)")
    if accuracy < args.min_accuracy:
        print(f"FAILED: exact-match accuracy {accuracy:.1%} is below {args.min_accuracy:.0%} "
              f"(train longer with --steps)")
        return 1
    print(f"OK: exact-match accuracy {accuracy:.1%} >= {args.min_accuracy:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
