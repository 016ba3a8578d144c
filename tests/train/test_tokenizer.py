"""The word and subword tokenizers: encoding, decoding, training and serialisation."""

import json

import pytest

from fasttx.train.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    SubwordTokenizer,
    WordTokenizer,
    load_tokenizer,
    tokenizer_from_json,
)

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on the mat",
    "Die Katze sitzt auf der Matte.",
    "Der Hund sitzt auf dem Baumstamm.",
    "Über die Brücke läuft ein Hund, café au lait!",
] * 20


@pytest.fixture(scope="module")
def subword():
    return SubwordTokenizer.train(SENTENCES, vocab_size=100)


def test_special_ids_are_fixed():
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    words = WordTokenizer(["x"])
    assert (words.pad_id, words.bos_id, words.eos_id, words.unk_id) == (0, 1, 2, 3)


def test_word_tokenizer_encodes_decodes_and_marks_unknown_words():
    tokenizer = WordTokenizer(["a", "b", "c"])
    assert tokenizer.vocab_size == 7
    assert tokenizer.encode("a  c\tb\n") == [4, 6, 5]
    assert tokenizer.encode("a zz c") == [4, UNK_ID, 6]
    assert tokenizer.encode("") == []
    assert tokenizer.decode([4, 6, 5]) == "a c b"
    assert tokenizer.decode([BOS_ID, 4, 5, EOS_ID, PAD_ID, PAD_ID]) == "a b"  # specials left out
    assert tokenizer.decode([4, EOS_ID, 5]) == "a b"  # does not stop at eos
    assert tokenizer.decode([4, UNK_ID]) == "a <unk>"
    with pytest.raises(ValueError, match="token id 7 is outside"):
        tokenizer.decode([4, 7])


@pytest.mark.parametrize("words, message", [
    (["a", "b", "a"], "repeats"),
    (["a", ""], "non-empty"),
    (["a b"], "whitespace"),
    (["<s>"], "special"),
    ([], "at least one"),
])
def test_word_tokenizer_refuses_bad_vocabularies(words, message):
    with pytest.raises(ValueError, match=message):
        WordTokenizer(words)


def test_subword_round_trip(subword):
    for text in ["the cat sat on the mat", "Über die Brücke läuft ein Hund, café au lait!",
                 "a dog met the cat", "Katzen und Hunde"]:
        ids = subword.encode(text)
        assert ids and all(4 <= i < subword.vocab_size for i in ids)
        assert subword.decode(ids) == text
        assert subword.decode([BOS_ID, *ids, EOS_ID, PAD_ID]) == text
    assert subword.decode(subword.encode("  the   cat\tsat ")) == "the cat sat"  # whitespace
    assert subword.encode_batch(["the cat", "der Hund"]) == \
        [subword.encode("the cat"), subword.encode("der Hund")]
    assert [subword.tokenizer.id_to_token(i) for i in range(4)] == \
        ["<pad>", "<s>", "</s>", "<unk>"]


def test_subword_learns_merges_and_marks_unknown_characters(subword):
    assert len(subword.encode("the cat sat on the mat")) < len("the cat sat on the mat") // 2
    ids = subword.encode("the 猫")  # a character never seen in training
    assert UNK_ID in ids
    assert "<unk>" in subword.decode(ids)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        subword.decode([subword.vocab_size])


def test_subword_training_is_deterministic_and_sized(subword):
    again = SubwordTokenizer.train(SENTENCES, vocab_size=100)
    assert again.to_json() == subword.to_json()
    assert subword.vocab_size == 100
    smaller = SubwordTokenizer.train(SENTENCES, vocab_size=60)
    assert smaller.vocab_size == 60
    text = "the dog sat on the mat"
    assert len(smaller.encode(text)) >= len(subword.encode(text))


def test_subword_trains_from_files(tmp_path, subword):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    from_file = SubwordTokenizer.train([path], vocab_size=100)
    assert from_file.encode("the cat sat on the mat") == subword.encode("the cat sat on the mat")


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=4), "vocab_size must be an int >= 5"),
    (dict(vocab_size=100.0), "vocab_size"),
    (dict(vocab_size=True), "vocab_size"),
    (dict(min_frequency=0), "min_frequency"),
])
def test_subword_training_checks_its_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SubwordTokenizer.train(SENTENCES, **kwargs)


def test_subword_training_needs_text():
    with pytest.raises(ValueError, match="no text"):
        SubwordTokenizer.train([], vocab_size=100)
    with pytest.raises(ValueError, match="no text"):
        SubwordTokenizer.train(["   ", "\n"], vocab_size=100)


def test_subword_tokenizer_needs_the_library(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers":
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(ImportError, match=r"pip install 'fasttx\[train\]'"):
        SubwordTokenizer.train(SENTENCES, vocab_size=100)


@pytest.mark.parametrize("kind", ["word", "subword"])
def test_json_and_file_round_trips_keep_the_encoding(kind, subword, tmp_path):
    tokenizer = WordTokenizer(["the", "cat", "sat", "Katze"]) if kind == "word" else subword
    text = "the cat sat on the Katze"
    restored = tokenizer_from_json(tokenizer.to_json())
    assert type(restored) is type(tokenizer)
    assert json.loads(tokenizer.to_json())["kind"] == kind
    assert restored.vocab_size == tokenizer.vocab_size
    assert restored.encode(text) == tokenizer.encode(text)
    assert restored.decode(tokenizer.encode(text)) == tokenizer.decode(tokenizer.encode(text))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    loaded = load_tokenizer(path)
    assert loaded.encode(text) == tokenizer.encode(text)
    assert loaded.to_json() == tokenizer.to_json()
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]  # no temporary left


def test_save_replaces_an_old_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    WordTokenizer(["a"]).save(path)
    WordTokenizer(["a", "b"]).save(path)
    assert load_tokenizer(path).vocab_size == 6


@pytest.mark.parametrize("text, message", [
    ("not json", "invalid JSON"),
    ('{"kind": "morse"}', "'word' or 'subword', got 'morse'"),
    ("[1, 2]", "got None"),
    ('{"kind": "word"}', "'words' field"),
    ('{"kind": "subword", "tokenizer": {"model": 7}}', "not a subword tokenizer"),
])
def test_tokenizer_from_json_refuses_bad_documents(text, message):
    with pytest.raises(ValueError, match=message):
        tokenizer_from_json(text)


def test_load_tokenizer_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"kind": "word", "words": ["a", "a"]}')
    with pytest.raises(ValueError, match="broken.json.*repeats"):
        load_tokenizer(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
