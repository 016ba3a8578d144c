"""Built-in synthetic tasks: parallel text that a tiny model learns in minutes on a CPU.

    pairs = synthetic_corpus("numbers", num_pairs=10_000, seed=0)
    source, target = pairs[0]     # e.g. "4 0 7 1 5", "forty thousand seven hundred fifteen"
    task = get_task("reverse")
    task.tokenizer.encode("c a b")  # [6, 4, 5]: a WordTokenizer over the task's words

- ``copy``, ``reverse``, ``sort``: 1..10 letters from "a".."j"; the target is the same
  letters, reversed, or sorted.
- ``numbers``: an integer in 0..999,999 written as digits ("1 2 0") becomes English words
  ("one hundred twenty"): no "and", no hyphens. The number of digits is drawn uniformly
  from 1..6, so short numbers are as common as long ones.

- ``cipher``: the shapes of real translation, for timing the base and big presets: words
  of a 32,000-word vocabulary, each replaced by its partner under a fixed permutation, in
  sentences whose lengths follow WMT's (log-normal, median 24 words, 1..200).

Every sequence of the first four fits the ``tiny`` preset (at most 10 source and 10 target
tokens, far below its 64 positions with bos and eos). The same (task, num_pairs, seed)
always gives the same pairs; other seeds give other pairs (held-out sets can still repeat
training pairs where the task has few distinct short inputs).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from fasttx.train.tokenizer import WordTokenizer

__all__ = ["TASKS", "SyntheticTask", "get_task", "number_to_words", "synthetic_corpus"]

LETTERS = tuple("abcdefghij")
MAX_LETTERS = 10
MAX_DIGITS = 6
CIPHER_WORDS = tuple(f"w{i}" for i in range(32_000))
#: Partner of each cipher word: a permutation fixed once for all runs.
_CIPHER = dict(zip(CIPHER_WORDS, random.Random(0).sample(CIPHER_WORDS, len(CIPHER_WORDS)),
                   strict=True))

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
         "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
         "seventeen", "eighteen", "nineteen")
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


class SyntheticTask:
    """A named generator of (source, target) sentences over a closed vocabulary.

    Attributes:
        name: the task's name in :data:`TASKS`.
        description: one line for ``--help``.
        tokenizer: a :class:`WordTokenizer` over every word of either side.
    """

    def __init__(self, name: str, description: str, words: tuple[str, ...],
                 sampler: Callable[[random.Random], tuple[str, str]]):
        self.name = name
        self.description = description
        self.tokenizer = WordTokenizer(words)
        self._sampler = sampler

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One (source, target) pair drawn from ``rng``."""
        return self._sampler(rng)

    def __repr__(self) -> str:
        return f"SyntheticTask({self.name!r})"


def _letters(rng: random.Random) -> list[str]:
    return rng.choices(LETTERS, k=rng.randint(1, MAX_LETTERS))


def _copy(rng: random.Random) -> tuple[str, str]:
    letters = " ".join(_letters(rng))
    return letters, letters


def _reverse(rng: random.Random) -> tuple[str, str]:
    letters = _letters(rng)
    return " ".join(letters), " ".join(reversed(letters))


def _sort(rng: random.Random) -> tuple[str, str]:
    letters = _letters(rng)
    return " ".join(letters), " ".join(sorted(letters))


def _below_thousand(number: int) -> list[str]:
    """The words of 1 <= number <= 999 (nothing for 0)."""
    words = []
    hundreds, rest = divmod(number, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        words.append(_TENS[rest // 10])
        rest %= 10
    if rest:
        words.append(_ONES[rest])
    return words


def number_to_words(number: int) -> str:
    """English words of 0 <= number <= 999,999: 21 -> "twenty one", 1001 -> "one thousand one"."""
    if isinstance(number, bool) or not isinstance(number, int) \
            or not 0 <= number < 10 ** MAX_DIGITS:
        raise ValueError(f"number must be an int in [0, {10 ** MAX_DIGITS - 1}], got {number!r}")
    if number == 0:
        return _ONES[0]
    thousands, rest = divmod(number, 1000)
    words = (_below_thousand(thousands) + ["thousand"]) if thousands else []
    return " ".join(words + _below_thousand(rest))


def _numbers(rng: random.Random) -> tuple[str, str]:
    digits = rng.randint(1, MAX_DIGITS)
    number = rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)
    return " ".join(str(number)), number_to_words(number)


def _cipher(rng: random.Random) -> tuple[str, str]:
    # log-normal lengths: median e^3.2 = 24.5 words, 1 in 20 sentences over 60 words
    length = min(200, max(1, round(rng.lognormvariate(3.2, 0.55))))
    words = rng.choices(CIPHER_WORDS, k=length)
    return " ".join(words), " ".join(_CIPHER[word] for word in words)


TASKS: dict[str, SyntheticTask] = {task.name: task for task in (
    SyntheticTask("copy", "copy 1-10 letters a-j: 'c a b' -> 'c a b'", LETTERS, _copy),
    SyntheticTask("reverse", "reverse 1-10 letters a-j: 'c a b' -> 'b a c'", LETTERS, _reverse),
    SyntheticTask("sort", "sort 1-10 letters a-j: 'c a b' -> 'a b c'", LETTERS, _sort),
    SyntheticTask("numbers", "digits to English words: '4 0 7' -> 'four hundred seven'",
                  tuple("0123456789") + _ONES + _TENS[2:] + ("hundred", "thousand"), _numbers),
    SyntheticTask("cipher", "32,000-word substitution, WMT-like lengths (median 24, max 200): "
                  "to time base/big", CIPHER_WORDS, _cipher),
)}


def get_task(name: str) -> SyntheticTask:
    """The task called ``name``; ValueError naming the valid names otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return TASKS[name]


def synthetic_corpus(name: str, num_pairs: int, seed: int) -> list[tuple[str, str]]:
    """``num_pairs`` (source, target) pairs of task ``name``, the same for the same seed."""
    task = get_task(name)
    for argument, value in (("num_pairs", num_pairs), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{argument} must be an int, got {value!r}")
    if num_pairs < 0:
        raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
    rng = random.Random(seed)
    return [task.sample(rng) for _ in range(num_pairs)]
