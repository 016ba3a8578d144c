"""The data of a run: the tokenizer and the encoded train / valid / test splits.

    corpora = load_corpora(options, world, out_dir, print)
    corpora.tokenizer, corpora.train, corpora.valid, corpora.test

Synthetic task (no ``--train-src``): the task's closed word vocabulary, and
``synthetic_size`` training pairs plus a tenth as many (at most 500) validation and test
pairs each, generated from the seed (each split from its own seed). Text files: the
parallel files read and checked (:func:`fasttx.train.data.read_parallel`), a subword
tokenizer trained on both sides of the training text by rank 0 (or restored from the
checkpoint being resumed) and saved as ``tokenizer.json``. Pairs longer than the model's
``max_len`` are dropped, with a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fasttx.models.config import PRESETS
from fasttx.train.data import DataError, EncodedCorpus, encode_corpus, read_parallel
from fasttx.train.tasks import get_task, synthetic_corpus
from fasttx.train.tokenizer import SubwordTokenizer, load_tokenizer, tokenizer_from_json

__all__ = ["Corpora", "EvalSet", "load_corpora"]

#: Most validation and test pairs generated for a synthetic task (each a tenth of the
#: training pairs up to this).
SYNTHETIC_EVAL_SIZE = 500


class EvalSet(NamedTuple):
    """An evaluation split: its encoded ``corpus`` and the text ``pairs`` it came from,
    index-aligned (the references are the raw target sentences)."""

    corpus: EncodedCorpus
    pairs: list[tuple[str, str]]

    def head(self, count: int) -> EvalSet:
        """The first ``count`` sentences."""
        return EvalSet(EncodedCorpus(self.corpus.src[:count], self.corpus.tgt[:count]),
                       self.pairs[:count])


@dataclass
class Corpora:
    tokenizer: object
    train: EncodedCorpus
    valid: EvalSet | None
    test: EvalSet | None


def load_corpora(options, world, out: Path, echo, tokenizer_json: str | None = None) -> Corpora:
    """The tokenizer and splits of ``options`` (a resolved TrainOptions); ``tokenizer_json``
    restores a checkpoint's tokenizer instead of building one."""
    if options.uses_files:
        train_pairs = read_parallel(options.train_src, options.train_tgt)
        valid_pairs = _read_optional(options.valid_src, options.valid_tgt)
        test_pairs = _read_optional(options.test_src, options.test_tgt)
        tokenizer = _subword_tokenizer(options, world, out, train_pairs, tokenizer_json, echo)
        name = f"{options.train_src} / {options.train_tgt}"
    else:
        task = get_task(options.task)
        tokenizer = task.tokenizer
        train_pairs = synthetic_corpus(task.name, options.synthetic_size, options.seed)
        size = max(1, min(SYNTHETIC_EVAL_SIZE, options.synthetic_size // 10))
        valid_pairs = synthetic_corpus(task.name, size, options.seed + 10_007)
        test_pairs = synthetic_corpus(task.name, size, options.seed + 20_011)
        name = f"the synthetic {task.name!r} task"
        if world.is_main:
            tokenizer.save(out / "tokenizer.json")

    max_len = options.max_len or PRESETS[options.preset]["max_len"]
    train, dropped = encode_corpus(train_pairs, tokenizer, max_len)
    if dropped:
        echo(f"dropped {dropped} of {len(train_pairs)} training pairs of {name} longer than "
             f"{max_len} tokens (--max-len)")
    if len(train) == 0:
        raise DataError(f"no training pair of {name} fits in {max_len} tokens (--max-len)")
    valid = _encode_eval(valid_pairs, tokenizer, max_len, options.valid_src or "valid", echo)
    test = _encode_eval(test_pairs, tokenizer, max_len, options.test_src or "test", echo)
    return Corpora(tokenizer, train, valid, test)


def _read_optional(src, tgt):
    return None if src is None else read_parallel(src, tgt)


def _subword_tokenizer(options, world, out: Path, pairs, tokenizer_json, echo):
    path = out / "tokenizer.json"
    if tokenizer_json is not None:
        return tokenizer_from_json(tokenizer_json)
    if world.is_main:
        echo(f"training a subword vocabulary (--vocab-size {options.vocab_size}) on "
             f"{len(pairs)} sentence pairs")
        tokenizer = SubwordTokenizer.train((text for pair in pairs for text in pair),
                                           vocab_size=options.vocab_size)
        # the text may offer fewer pieces than asked for (or more distinct characters)
        echo(f"the subword vocabulary has {tokenizer.vocab_size} tokens")
        tokenizer.save(path)
    world.barrier()
    return tokenizer if world.is_main else load_tokenizer(path)


def _encode_eval(pairs, tokenizer, max_len: int, name: str, echo) -> EvalSet | None:
    if pairs is None:
        return None
    corpus, dropped = encode_corpus(pairs, tokenizer, max_len)
    if not len(corpus):
        raise DataError(f"{name}: every one of its {len(pairs)} pairs is longer than "
                        f"{max_len} tokens (--max-len)")
    if dropped:
        echo(f"{name}: skipping {dropped} of {len(pairs)} pairs longer than {max_len} tokens")
    kept = [pairs[index] for index in corpus.pair_indices]
    return EvalSet(EncodedCorpus(corpus.src, corpus.tgt), kept)
