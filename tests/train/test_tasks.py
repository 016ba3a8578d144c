"""The built-in synthetic tasks: right targets, determinism, vocabularies and lengths."""

import random

import pytest

from fasttx.train.tasks import TASKS, get_task, number_to_words, synthetic_corpus
from fasttx.train.tokenizer import UNK_ID, WordTokenizer


def test_the_tasks_are_registered_with_descriptions():
    assert list(TASKS) == ["copy", "reverse", "sort", "numbers", "cipher"]
    for name, task in TASKS.items():
        assert task.name == name and get_task(name) is task
        assert task.description and "\n" not in task.description
        assert isinstance(task.tokenizer, WordTokenizer)


def test_get_task_lists_the_valid_names():
    with pytest.raises(ValueError,
                       match="unknown task 'translate'.*copy, reverse, sort, numbers, cipher"):
        get_task("translate")
    with pytest.raises(ValueError, match="unknown task"):
        synthetic_corpus("nope", 3, 0)


@pytest.mark.parametrize("name, rule", [
    ("copy", lambda letters: letters),
    ("reverse", lambda letters: letters[::-1]),
    ("sort", sorted),
])
def test_letter_tasks_give_the_right_targets(name, rule):
    pairs = synthetic_corpus(name, 500, seed=3)
    lengths = set()
    for source, target in pairs:
        letters = source.split()
        assert 1 <= len(letters) <= 10 and set(letters) <= set("abcdefghij")
        assert target.split() == list(rule(letters))
        lengths.add(len(letters))
    assert lengths == set(range(1, 11))  # every length occurs
    assert len({source for source, _ in pairs}) > 400  # mostly distinct inputs
    if name != "copy":
        assert any(source != target for source, target in pairs)


@pytest.mark.parametrize("number, words", [
    (0, "zero"),
    (7, "seven"),
    (13, "thirteen"),
    (20, "twenty"),
    (21, "twenty one"),
    (100, "one hundred"),
    (101, "one hundred one"),
    (110, "one hundred ten"),
    (999, "nine hundred ninety nine"),
    (1000, "one thousand"),
    (1001, "one thousand one"),
    (12345, "twelve thousand three hundred forty five"),
    (40715, "forty thousand seven hundred fifteen"),
    (100000, "one hundred thousand"),
    (200019, "two hundred thousand nineteen"),
    (999999, "nine hundred ninety nine thousand nine hundred ninety nine"),
])
def test_number_to_words(number, words):
    assert number_to_words(number) == words


@pytest.mark.parametrize("number", [-1, 1_000_000, 3.0, True, "7"])
def test_number_to_words_refuses_numbers_out_of_range(number):
    with pytest.raises(ValueError, match="number must be an int"):
        number_to_words(number)


def test_numbers_task_translates_digits_to_words():
    pairs = synthetic_corpus("numbers", 3000, seed=0)
    digit_counts = [len(source.split()) for source, _ in pairs]
    for source, target in pairs:
        digits = source.split()
        assert all(len(d) == 1 and d.isdigit() for d in digits)
        assert len(digits) == 1 or digits[0] != "0"  # no leading zeros
        assert target == number_to_words(int("".join(digits)))
        assert "-" not in target and " and " not in f" {target} "
    for count in range(1, 7):  # uniform over 1..6 digits: ~500 each
        assert 400 < digit_counts.count(count) < 600


def test_corpus_is_deterministic_per_seed():
    for name in TASKS:
        first = synthetic_corpus(name, 50, seed=7)
        assert synthetic_corpus(name, 50, seed=7) == first
        assert synthetic_corpus(name, 50, seed=8) != first
        assert synthetic_corpus(name, 20, seed=7) == first[:20]
    assert synthetic_corpus("copy", 0, seed=1) == []


def test_sample_draws_from_the_given_rng():
    task = get_task("reverse")
    assert task.sample(random.Random(5)) == task.sample(random.Random(5))
    rng = random.Random(5)
    assert [task.sample(rng) for _ in range(3)] == synthetic_corpus("reverse", 3, seed=5)


@pytest.mark.parametrize("num_pairs, seed", [(-1, 0), (2.0, 0), (2, "0"), (2, None)])
def test_corpus_checks_its_arguments(num_pairs, seed):
    with pytest.raises(ValueError, match="num_pairs|seed"):
        synthetic_corpus("copy", num_pairs, seed)


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "numbers"])
def test_every_word_is_in_the_vocabulary_and_fits_the_tiny_model(name):
    task = get_task(name)
    longest = 0
    for source, target in synthetic_corpus(name, 2000, seed=1):
        for text in (source, target):
            ids = task.tokenizer.encode(text)
            assert UNK_ID not in ids
            assert task.tokenizer.decode(ids) == text
            longest = max(longest, len(ids) + 2)  # with bos and eos
    assert longest <= 64
    assert task.tokenizer.vocab_size <= 64


def test_cipher_has_the_shapes_of_real_translation():
    task = get_task("cipher")
    assert task.tokenizer.vocab_size == 32_004
    pairs = synthetic_corpus("cipher", 4000, seed=2)
    lengths = sorted(len(source.split()) for source, _ in pairs)
    assert 20 <= lengths[len(lengths) // 2] <= 30  # median, as WMT's sentences
    assert lengths[0] >= 1 and lengths[-1] <= 200 and lengths[int(0.9 * len(lengths))] > 40
    partner = {}
    for source, target in pairs:  # word for word, through one fixed bijection
        assert len(source.split()) == len(target.split())
        for word, image in zip(source.split(), target.split(), strict=True):
            assert partner.setdefault(word, image) == image
    assert len(set(partner.values())) == len(partner) > 10_000
    assert UNK_ID not in task.tokenizer.encode(pairs[0][0] + " " + pairs[0][1])
