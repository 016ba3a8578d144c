"""Tokenizers of the training CLI: a closed word vocabulary and a trained BPE vocabulary.

    tokenizer = SubwordTokenizer.train(source_lines + target_lines, vocab_size=8000)
    ids = tokenizer.encode("Hello world")                 # no bos / eos added
    text = tokenizer.decode(ids)                          # "Hello world"
    tokenizer.save("run/tokenizer.json")
    same = load_tokenizer("run/tokenizer.json")           # either kind, from its "kind" field

    words = WordTokenizer(["a", "b", "c"])                # the synthetic tasks' vocabularies
    words.encode("a c x")                                 # [4, 6, 3]: "x" is unknown

Both kinds share the special ids of the model: pad 0 ``<pad>``, bos 1 ``<s>``, eos 2
``</s>``, unk 3 ``<unk>``. ``decode`` leaves out pad, bos and eos wherever they are (it does
not stop at eos: trimming is the caller's) and writes unk as ``<unk>``, so a reader sees
that something was unknown. A tokenizer serialises to one JSON document (``to_json``) that
a checkpoint can embed and :func:`tokenizer_from_json` restores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from fasttx.train._files import write_atomically

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "UNK_ID",
    "SubwordTokenizer",
    "Tokenizer",
    "WordTokenizer",
    "load_tokenizer",
    "tokenizer_from_json",
]

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
#: The special tokens, in id order: every vocabulary starts with them.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
#: The sentencepiece-style word-start marker of the subword pieces ("▁").
_WORD_START = "\u2581"
#: Fewest pieces a subword vocabulary may ask for: the specials and at least one more.
MIN_SUBWORD_VOCAB = len(SPECIAL_TOKENS) + 1


class Tokenizer:
    """What both tokenizers offer; ``vocab_size`` counts the four special tokens."""

    kind: str = ""
    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``, without bos or eos."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """``[encode(text) for text in texts]``, faster where the tokenizer can batch."""
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; pad, bos and eos are left out, unk is written ``<unk>``."""
        raise NotImplementedError

    def to_json(self) -> str:
        """One JSON document with a ``"kind"`` field; :func:`tokenizer_from_json` reads it."""
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> None:
        """Writes :meth:`to_json` to ``path`` atomically: a crash leaves any old file whole."""
        write_atomically(path, text=self.to_json())

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary "
                             f"[0, vocab_size={self.vocab_size})")
        return ids


class WordTokenizer(Tokenizer):
    """A closed vocabulary of whitespace-separated words; ``words[i]`` gets id ``4 + i``.

    Words not in the vocabulary encode to ``unk_id``; decode joins words with single spaces.
    """

    kind = "word"

    def __init__(self, words: Sequence[str]):
        words = list(words)
        ids: dict[str, int] = {}
        for index, word in enumerate(words):
            if not isinstance(word, str) or not word or word != "".join(word.split()):
                raise ValueError(f"words[{index}] must be a non-empty string without "
                                 f"whitespace, got {word!r}")
            if word in SPECIAL_TOKENS:
                raise ValueError(f"words[{index}] is the special token {word!r}; the "
                                 f"specials {SPECIAL_TOKENS} come first on their own")
            if word in ids:
                raise ValueError(f"words[{index}] = {word!r} repeats words["
                                 f"{ids[word] - len(SPECIAL_TOKENS)}]")
            ids[word] = len(SPECIAL_TOKENS) + index
        if not ids:
            raise ValueError("a WordTokenizer needs at least one word")
        self.words = tuple(words)
        self._ids = ids
        self._tokens = SPECIAL_TOKENS + self.words

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(word, UNK_ID) for word in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        skipped = (PAD_ID, BOS_ID, EOS_ID)
        return " ".join(self._tokens[i] for i in self._check_ids(ids) if i not in skipped)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "words": list(self.words)}, ensure_ascii=False)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def _tokenizers_library():
    try:
        import tokenizers
    except ImportError as error:
        raise ImportError("the subword tokenizer needs the tokenizers library: "
                          "pip install 'fasttx[train]'") from error
    return tokenizers


class SubwordTokenizer(Tokenizer):
    """Byte-pair-encoding pieces (a ``tokenizers.Tokenizer``), sentencepiece style.

    Text is NFC-normalised, runs of whitespace become one space and the ends are stripped;
    each word then starts with "▁" (a Metaspace pre-tokenizer, with the matching decoder),
    so ``decode(encode(text)) == text`` for text already in that form. Characters never
    seen in training encode to ``unk_id``.
    """

    kind = "subword"

    def __init__(self, tokenizer):
        for token_id, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != token_id:
                raise ValueError(f"the tokenizer must have {token!r} at id {token_id}, got id "
                                 f"{tokenizer.token_to_id(token)}")
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, texts: Iterable[str | os.PathLike], vocab_size: int = 8000,
              min_frequency: int = 2) -> SubwordTokenizer:
        """Learns a BPE vocabulary of ``vocab_size`` pieces (the specials included).

        Args:
            texts: sentences (strings), or paths (``os.PathLike``) of text files read line by
                line. Pass both languages' training text to get one shared vocabulary.
            vocab_size: pieces wanted; the vocabulary can come out smaller (the text has
                fewer merges to offer) or larger (more distinct characters than that).
            min_frequency: a merge must occur at least this often.

        The same texts and settings give the same vocabulary.
        """
        for name, value, least in (("vocab_size", vocab_size, MIN_SUBWORD_VOCAB),
                                   ("min_frequency", min_frequency, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        library = _tokenizers_library()
        tokenizer = library.Tokenizer(library.models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
        tokenizer.normalizer = library.normalizers.Sequence([
            library.normalizers.NFC(),
            library.normalizers.Replace(library.Regex(r"\s+"), " "),
            library.normalizers.Strip(),
        ])
        tokenizer.pre_tokenizer = library.pre_tokenizers.Metaspace(
            replacement=_WORD_START, prepend_scheme="always")
        tokenizer.decoder = library.decoders.Metaspace(
            replacement=_WORD_START, prepend_scheme="always")
        trainer = library.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                              special_tokens=list(SPECIAL_TOKENS),
                                              show_progress=False)
        tokenizer.train_from_iterator(_lines(texts), trainer)
        if tokenizer.get_vocab_size() == len(SPECIAL_TOKENS):
            raise ValueError("no text to train the subword tokenizer on: texts is empty "
                             "or only whitespace")
        return cls(tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        skipped = (PAD_ID, BOS_ID, EOS_ID)
        kept = [i for i in self._check_ids(ids) if i not in skipped]
        return self.tokenizer.decode(kept, skip_special_tokens=False)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "tokenizer": json.loads(self.tokenizer.to_str())},
                          ensure_ascii=False)

    def __repr__(self) -> str:
        return f"SubwordTokenizer(vocab_size={self.vocab_size})"


def _lines(texts: Iterable[str | os.PathLike]):
    """The strings of ``texts``, with files expanded into their lines."""
    for text in texts:
        if isinstance(text, os.PathLike):
            with open(text, encoding="utf-8") as file:
                yield from file
        elif isinstance(text, str):
            yield text
        else:
            raise TypeError(f"texts must hold strings or paths, got {type(text).__name__}")


def tokenizer_from_json(text: str) -> Tokenizer:
    """The tokenizer that :meth:`Tokenizer.to_json` wrote, of either kind."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"not a tokenizer: invalid JSON ({error})") from None
    kind = document.get("kind") if isinstance(document, dict) else None
    if kind == WordTokenizer.kind:
        return WordTokenizer(_field(document, "words", list))
    if kind == SubwordTokenizer.kind:
        library = _tokenizers_library()
        model = json.dumps(_field(document, "tokenizer", dict))
        try:
            tokenizer = library.Tokenizer.from_str(model)
        except Exception as error:  # the library raises a bare Exception
            raise ValueError(f"not a subword tokenizer: {error}") from None
        return SubwordTokenizer(tokenizer)
    raise ValueError(f"not a tokenizer: the JSON's \"kind\" must be "
                     f"{WordTokenizer.kind!r} or {SubwordTokenizer.kind!r}, got {kind!r}")


def _field(document: dict, name: str, kind: type):
    if not isinstance(document.get(name), kind):
        raise ValueError(f"not a {document['kind']} tokenizer: the JSON needs a {name!r} "
                         f"field holding a {kind.__name__}")
    return document[name]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved at ``path`` by :meth:`Tokenizer.save`."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return tokenizer_from_json(text)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
