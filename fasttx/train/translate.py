"""``fasttx-translate`` (also ``python -m fasttx.train.translate``): translate text with a
model that ``fasttx-train`` trained.

    fasttx-translate runs/numbers-tiny/checkpoint.pt input.txt -o output.txt
    echo "4 0 7" | fasttx-translate runs/numbers-tiny --num-beams 1

    translator = Translator.from_checkpoint("runs/numbers-tiny/checkpoint.pt")
    translator.translate(["4 0 7", "1 2"])            # ["four hundred seven", "twelve"]

One sentence per line in, its translation on the same line out, in the input's order;
blank lines stay blank. Decoding is the trainer's own (:func:`fasttx.train.evaluate.
translate`): batches of similar-length sentences, greedy or beam search with the key/value
cache, under the run's precision. The defaults are those of the run's final test
evaluation: its ``--num-beams``, ``--length-penalty``, ``--max-tokens`` and ``--precision``.
(That evaluation also knew the references' lengths, which shape its batches: the test
sources decode to the same tokens where they fall into the same batches.)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fasttx.backends import BACKENDS, BackendUnavailableError, use_backend
from fasttx.models import Seq2SeqTransformer
from fasttx.train import evaluate
from fasttx.train._files import write_atomically
from fasttx.train.checkpoint import CheckpointError, load_checkpoint
from fasttx.train.cli import EXIT_CODES
from fasttx.train.data import DataError, decode_lines, encode_corpus, read_lines
from fasttx.train.tokenizer import tokenizer_from_json
from fasttx.train.trainer import precision_autocast

__all__ = ["Translator", "build_parser", "main"]

#: What ``INPUT`` is called in messages when it is standard input.
STDIN = "<stdin>"


class Translator:
    """A trained model, its tokenizer and the decoding settings of its run.

    Attributes:
        model: the :class:`~fasttx.models.Seq2SeqTransformer`, in eval mode.
        tokenizer: the run's tokenizer (:mod:`fasttx.train.tokenizer`).
        num_beams, length_penalty, max_tokens, precision: the defaults of :meth:`translate`,
            from a checkpoint the run's options (those of its final test evaluation).
    """

    def __init__(self, model: Seq2SeqTransformer, tokenizer, *, num_beams: int = 4,
                 length_penalty: float = 0.6, max_tokens: int = 2048, precision: str = "auto"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.num_beams, self.length_penalty = num_beams, length_penalty
        self.max_tokens, self.precision = max_tokens, precision

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, *,
                        device: str | torch.device | None = None) -> Translator:
        """The model, tokenizer and decoding settings of a ``fasttx-train`` checkpoint:
        ``path`` is the ``checkpoint.pt`` or the run's ``--out`` folder holding it;
        ``device``: where the model goes (default the CPU). Raises
        :class:`~fasttx.train.checkpoint.CheckpointError` for a missing, unreadable or
        foreign file."""
        path = Path(path)
        state = load_checkpoint(path / "checkpoint.pt" if path.is_dir() else path)
        options = state["options"]
        return cls(Seq2SeqTransformer.from_checkpoint(state, device=device),
                   tokenizer_from_json(state["tokenizer"]), num_beams=options["num_beams"],
                   length_penalty=options["length_penalty"],
                   max_tokens=options["max_tokens"], precision=options["precision"])

    @property
    def device(self) -> torch.device:
        return self.model.embedding.weight.device

    def translate(self, sentences: Sequence[str], *, num_beams: int | None = None,
                  length_penalty: float | None = None, max_tokens: int | None = None,
                  max_new_tokens: int | None = None,
                  on_batch: Callable[[int], object] | None = None) -> list[str]:
        """The translation of each of ``sentences``, in their order; a blank sentence
        translates to "" (the model does not see it).

        Arguments left at None take the attributes of the same name; ``max_new_tokens``
        defaults to generate's (a batch's longest source + 50); ``on_batch(count)`` is
        called after each batch of ``count`` sentences. Raises DataError naming the first
        sentence (counting from 1) longer than the model's ``max_len`` with its eos.
        """
        max_len = self.model.config.max_len
        filled = [index for index, sentence in enumerate(sentences) if sentence.strip()]
        corpus, dropped = encode_corpus([(sentences[index], "") for index in filled],
                                        self.tokenizer, max_len)
        if dropped:
            first = min(set(range(len(filled))) - set(corpus.pair_indices))
            length = len(self.tokenizer.encode(sentences[filled[first]])) + 1
            more = f" (and {dropped - 1} more)" if dropped > 1 else ""
            raise DataError(f"sentence {filled[first] + 1} is {length} tokens long with eos, "
                            f"beyond the model's max_len={max_len}{more}")
        translations = [""] * len(sentences)
        if not filled:
            return translations
        device = self.device
        hypotheses = evaluate.translate(
            self.model, corpus, self.max_tokens if max_tokens is None else max_tokens, device,
            lambda: precision_autocast(self.precision, device),
            self.num_beams if num_beams is None else num_beams,
            self.length_penalty if length_penalty is None else length_penalty,
            max_new_tokens, on_batch)
        for index, ids in zip(filled, hypotheses, strict=True):
            translations[index] = self.tokenizer.decode(ids)
        return translations


_EPILOG = """\
exit status: 0 translated; 2 bad arguments, checkpoint or input (a missing or foreign
checkpoint, an unreadable, empty or non-UTF-8 input, a sentence longer than the model's
max_len); 130 interrupted by Ctrl-C.

The translations are written once all are done (OUTPUT atomically: a crash leaves no half
file), one per input line and in its order; blank input lines stay blank."""


def _at_least(kind: type, least):
    """An argparse type: a ``kind`` (int or float) of at least ``least``."""

    def parse(text: str):
        value = kind(text)  # a ValueError becomes argparse's "invalid int value: ..."
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _device(text: str) -> torch.device:
    try:
        return torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device such as cpu, cuda or cuda:1: "
                                         f"{text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fasttx-translate", epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Translate text, one sentence per line, with a model trained by "
                    "fasttx-train; decoding defaults to the run's test evaluation.")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="checkpoint.pt written by fasttx-train, or its --out folder")
    parser.add_argument("input", metavar="INPUT", nargs="?", default="-",
                        help="UTF-8 text to translate, one sentence per line (default -: "
                             "standard input)")
    parser.add_argument("-o", "--output", metavar="OUTPUT",
                        help="file for the translations (default standard output)")
    parser.add_argument("--num-beams", "--beams", type=_at_least(int, 1), metavar="N",
                        help="beam width, 1 for greedy decoding (default the run's "
                             "--num-beams, which its test evaluation used; 4 unless set)")
    parser.add_argument("--length-penalty", type=_at_least(float, 0.0), metavar="ALPHA",
                        help="beam search length penalty (default the run's; 0.6 unless set)")
    parser.add_argument("--max-tokens", type=_at_least(int, 1), metavar="N",
                        help="padded source tokens per batch, shared by its beams (default "
                             "the run's --max-tokens)")
    parser.add_argument("--max-len", type=_at_least(int, 1), metavar="N",
                        help="longest translation in tokens (default its batch's longest "
                             "source + 50, within the model's max_len)")
    parser.add_argument("--device", type=_device,
                        help="torch device (default cuda when available, else cpu)")
    parser.add_argument("--backend", choices=["auto", *BACKENDS], default="auto",
                        help="fasttx kernels (default auto)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                        help="bf16 (autocast), fp32, or auto: bf16 on CUDA (default the run's)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction,
                        help="progress bar on standard error (default: shown when INPUT is "
                             "a file)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device is not None and args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this torch build or machine has no CUDA GPU")
    try:
        return _run(args)
    except (CheckpointError, DataError, BackendUnavailableError, ImportError, ValueError,
            OSError) as error:  # what the checkpoint, the input or the disk can get wrong
        print(f"fasttx-translate: error: {error}", file=sys.stderr)
        return EXIT_CODES["error"]
    except KeyboardInterrupt:
        print("fasttx-translate: interrupted", file=sys.stderr)
        return EXIT_CODES["interrupted"]


def _run(args: argparse.Namespace) -> int:
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    translator = Translator.from_checkpoint(args.checkpoint, device=device)
    if args.precision is not None:
        translator.precision = args.precision
    config = translator.model.config
    if args.num_beams is not None and args.num_beams >= config.vocab_size:
        raise ValueError(f"--num-beams must be below the vocabulary size ({config.vocab_size})"
                         f", got {args.num_beams}")
    if args.max_len is not None and args.max_len >= config.max_len:
        raise ValueError(f"--max-len must be below the model's max_len ({config.max_len}: bos "
                         f"and the translation), got {args.max_len}")
    name = STDIN if args.input == "-" else args.input
    lines = decode_lines(sys.stdin.buffer.read(), STDIN) if args.input == "-" \
        else read_lines(args.input)
    sentences = sum(1 for line in lines if line)
    if not sentences:
        raise DataError(f"{name}: no sentence to translate (every line is blank)")
    bar = _progress_bar(sentences, args.input != "-" if args.progress is None else args.progress)
    try:
        with use_backend(args.backend):
            translations = translator.translate(
                lines, num_beams=args.num_beams, length_penalty=args.length_penalty,
                max_tokens=args.max_tokens, max_new_tokens=args.max_len,
                on_batch=bar and bar.update)
    except DataError as error:
        raise DataError(f"{name}: {error}") from None
    finally:
        if bar is not None:
            bar.close()
    text = "".join(translation + "\n" for translation in translations)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_atomically(args.output, text=text)
    return EXIT_CODES["finished"]


def _progress_bar(total: int, enabled: bool):
    """A tqdm bar of translated sentences on standard error, or None (tqdm is then not
    needed: it comes with the train extra)."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError("the progress bar needs tqdm: pip install 'fasttx[train]' (or pass "
                          "--no-progress)") from error
    return tqdm(total=total, unit="sentence", dynamic_ncols=True, desc="translating")


if __name__ == "__main__":
    sys.exit(main())
