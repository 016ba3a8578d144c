"""Reading parallel text, encoding, token-count batching and collation."""

import dataclasses

import numpy as np
import pytest
import torch

from fasttx.models import CopyTask
from fasttx.train.data import (
    DataError,
    EncodedCorpus,
    TokenBatcher,
    collate,
    collate_packed,
    encode_corpus,
    read_parallel,
)
from fasttx.train.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, WordTokenizer


def _write(path, data):
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# --- read_parallel ---------------------------------------------------------------------------

def test_read_parallel_pairs_lines_and_strips_them(tmp_path):
    src = _write(tmp_path / "train.de", "\ufeffein Hund\r\n  zwei Katzen \nÜber\n")
    tgt = _write(tmp_path / "train.en", "a dog\ntwo cats\t\nover")  # no final newline
    assert read_parallel(src, tgt) == [("ein Hund", "a dog"), ("zwei Katzen", "two cats"),
                                       ("Über", "over")]


def test_read_parallel_splits_only_at_newlines(tmp_path):
    src = _write(tmp_path / "a.txt", "one\u2028still one\x0cand one\nline two\n")
    tgt = _write(tmp_path / "b.txt", "x\ny\n")
    assert read_parallel(src, tgt) == [("one\u2028still one\x0cand one", "x"), ("line two", "y")]


def test_read_parallel_refuses_an_empty_file(tmp_path):
    src = _write(tmp_path / "src.txt", "")
    tgt = _write(tmp_path / "tgt.txt", "a\n")
    with pytest.raises(DataError, match=r"src\.txt: the file is empty"):
        read_parallel(src, tgt)
    with pytest.raises(DataError, match=r"src\.txt: the file is empty"):
        read_parallel(tgt, src)


def test_read_parallel_names_both_files_and_counts_when_lengths_differ(tmp_path):
    src = _write(tmp_path / "src.txt", "a\nb\nc\n")
    tgt = _write(tmp_path / "tgt.txt", "x\ny\n")
    with pytest.raises(DataError, match=r"src\.txt has 3 lines but .*tgt\.txt has 2"):
        read_parallel(src, tgt)


def test_read_parallel_reports_invalid_utf8_with_its_line(tmp_path):
    src = _write(tmp_path / "src.txt", b"fine\nalso fine\nbad \xff byte\nok\n")
    tgt = _write(tmp_path / "tgt.txt", "1\n2\n3\n4\n")
    with pytest.raises(DataError, match=r"src\.txt, line 3: not valid UTF-8") as error:
        read_parallel(src, tgt)
    assert isinstance(error.value, ValueError)
    latin1 = _write(tmp_path / "latin1.txt", "a\nb\nc\nGr\u00fc\u00dfe\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt, line 4: not valid UTF-8"):
        read_parallel(tgt, latin1)


@pytest.mark.parametrize("side", ["src", "tgt"])
def test_read_parallel_refuses_empty_lines(tmp_path, side):
    good = "a\nb\nc\nd\n"
    bad = "a\nb\n  \t\nd\n"
    src = _write(tmp_path / "src.txt", bad if side == "src" else good)
    tgt = _write(tmp_path / "tgt.txt", bad if side == "tgt" else good)
    with pytest.raises(DataError, match=rf"{side}\.txt, line 3: the line is empty"):
        read_parallel(src, tgt)


def test_read_parallel_points_at_a_trailing_blank_line(tmp_path):
    src = _write(tmp_path / "src.txt", "a\nb\n\n\n")
    tgt = _write(tmp_path / "tgt.txt", "x\ny\n")
    with pytest.raises(DataError, match=r"src\.txt, line 3: the line is empty \(and 1 more"):
        read_parallel(src, tgt)


def test_read_parallel_refuses_a_missing_file(tmp_path):
    tgt = _write(tmp_path / "tgt.txt", "x\n")
    with pytest.raises(DataError, match=r"missing\.txt: cannot read the file"):
        read_parallel(tmp_path / "missing.txt", tgt)
    with pytest.raises(DataError, match="cannot read"):
        read_parallel(tgt, tmp_path)  # a directory


# --- encode_corpus ---------------------------------------------------------------------------

TOKENIZER = WordTokenizer(["a", "b", "c", "d"])


def test_encode_corpus_frames_sentences_and_drops_long_pairs():
    pairs = [("a b", "c"), ("a b c d", "a"), ("a", "a b c"), ("d zz", "b a"), ("c", "d")]
    corpus, dropped = encode_corpus(pairs, TOKENIZER, max_len=4)
    # "a b c d" + eos = 5 > 4 and bos + "a b c" + eos = 5 > 4 are dropped
    assert dropped == 2 and len(corpus) == 3
    assert corpus.src == [[4, 5, EOS_ID], [7, UNK_ID, EOS_ID], [6, EOS_ID]]
    assert corpus.tgt == [[BOS_ID, 6, EOS_ID], [BOS_ID, 5, 4, EOS_ID], [BOS_ID, 7, EOS_ID]]
    assert corpus.pair_indices == [0, 3, 4]
    assert corpus.src_lengths.tolist() == [3, 3, 2] and corpus.src_lengths.dtype == np.int64
    assert corpus.tgt_lengths.tolist() == [3, 4, 3]
    everything, none = encode_corpus(pairs, TOKENIZER, max_len=5)
    assert none == 0 and len(everything) == 5 and everything.pair_indices == [0, 1, 2, 3, 4]


def test_encode_corpus_checks_max_len():
    with pytest.raises(ValueError, match="max_len"):
        encode_corpus([("a", "b")], TOKENIZER, max_len=0)


def test_encoded_corpus_checks_its_fields():
    assert EncodedCorpus([[4, 2]], [[1, 4, 2]]).pair_indices == [0]
    with pytest.raises(ValueError, match="as many sentences"):
        EncodedCorpus([[4, 2]], [])
    with pytest.raises(ValueError, match="pair_indices"):
        EncodedCorpus([[4, 2]], [[1, 4, 2]], pair_indices=[0, 1])


# --- TokenBatcher ----------------------------------------------------------------------------

def _random_lengths(n, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.integers(2, 60, n)
    tgt = np.clip(src + rng.integers(-5, 6, n), 3, None)  # correlated, as in translation
    return src, tgt


def _padded_tokens(batches, widths):
    return sum(len(batch) * widths[batch].max() for batch in batches)


@pytest.mark.parametrize("n", [1, 7, 97, 1000])
def test_batcher_covers_every_sentence_once_within_the_budget(n):
    src, tgt = _random_lengths(n)
    widths = np.maximum(src, tgt)
    batcher = TokenBatcher(src, tgt, max_tokens=300, seed=1)
    assert len(batcher) == n
    for epoch in range(3):
        batches = batcher.epoch_batches(epoch)
        assert sorted(i for batch in batches for i in batch) == list(range(n))
        assert all(isinstance(i, int) for batch in batches for i in batch)
        for batch in batches:
            assert batch and len(batch) * widths[batch].max() <= 300


def test_batcher_packs_greedily():
    src = np.full(100, 10)
    batches = TokenBatcher(src, src, max_tokens=250, seed=0).epoch_batches(0)
    assert [len(b) for b in batches] == [25, 25, 25, 25]
    batches = TokenBatcher(src, src, max_tokens=249, seed=0).epoch_batches(0)
    assert sorted(map(len, batches)) == [4, 24, 24, 24, 24]
    tgt = np.r_[np.full(50, 10), np.full(50, 20)]  # the wider side sets the cost
    batches = TokenBatcher(src, tgt, max_tokens=200, seed=0, shuffle=False).epoch_batches(0)
    assert [len(b) for b in batches] == [20, 20, 10, 10, 10, 10, 10, 10]


def test_batcher_puts_an_oversized_sentence_alone():
    src = np.array([5, 50, 5, 5, 30, 5])
    tgt = np.array([5, 5, 5, 5, 40, 5])
    batches = TokenBatcher(src, tgt, max_tokens=20, seed=0).epoch_batches(0)
    assert [1] in batches and [4] in batches  # 50 and 40 tokens alone
    assert sorted(map(sorted, batches)) == [[0, 2, 3, 5], [1], [4]]


def test_batcher_is_deterministic_per_seed_and_epoch():
    src, tgt = _random_lengths(1000)
    batcher = TokenBatcher(src, tgt, max_tokens=500, seed=3)
    first = batcher.epoch_batches(0)
    assert TokenBatcher(src, tgt, max_tokens=500, seed=3).epoch_batches(0) == first
    assert batcher.epoch_batches(0) == first
    assert batcher.epoch_batches(1) != first
    assert TokenBatcher(src, tgt, max_tokens=500, seed=4).epoch_batches(0) != first
    # not only the order of the batches changes: their members do too
    as_sets = lambda batches: {frozenset(batch) for batch in batches}
    assert as_sets(batcher.epoch_batches(1)) != as_sets(first)
    # and the batches come in a shuffled order, not shortest first
    widths = np.maximum(src, tgt)
    batch_widths = [widths[batch].max() for batch in first]
    assert batch_widths != sorted(batch_widths)


def test_batcher_groups_similar_lengths():
    src, tgt = _random_lengths(2000, seed=5)
    widths = np.maximum(src, tgt)
    batches = TokenBatcher(src, tgt, max_tokens=1000, seed=0).epoch_batches(0)
    real_tokens = widths.sum()
    bucketed_padding = 1 - real_tokens / _padded_tokens(batches, widths)
    sizes = [len(b) for b in batches]
    order = np.random.default_rng(0).permutation(2000)
    random_batches = np.split(order, np.cumsum(sizes)[:-1])
    random_padding = 1 - real_tokens / _padded_tokens(random_batches, widths)
    assert bucketed_padding < 0.05 < 0.3 < random_padding
    assert len(batches) < 1.1 * _padded_tokens(batches, widths) / 1000 + 1  # batches are full


def test_batcher_without_shuffle_is_sorted_and_stable():
    src = np.array([4, 2, 9, 2, 4, 7])
    tgt = np.array([3, 2, 1, 3, 4, 8])
    batcher = TokenBatcher(src, tgt, max_tokens=8, seed=0, shuffle=False)
    batches = batcher.epoch_batches(0)
    assert batches == [[1, 3], [0, 4], [5], [2]]  # widths 2, 3 | 4, 4 | 8 | 9
    assert batcher.epoch_batches(5) == batches


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_tokens=0), "max_tokens must be a positive int"),
    (dict(max_tokens=10.5), "max_tokens"),
    (dict(seed=-1), "seed"),
    (dict(src_lengths=[1, 2]), "one entry per sentence"),
    (dict(src_lengths=[], tgt_lengths=[]), "no sentences"),
    (dict(src_lengths=[1.5, 2.0, 3.0]), "non-negative ints"),
])
def test_batcher_checks_its_arguments(kwargs, message):
    arguments = dict(src_lengths=[3, 4, 5], tgt_lengths=[3, 4, 5], max_tokens=10, seed=0)
    with pytest.raises(ValueError, match=message):
        TokenBatcher(**{**arguments, **kwargs})
    with pytest.raises(ValueError, match="epoch"):
        TokenBatcher([3], [3], 10).epoch_batches(-1)


# --- collate ---------------------------------------------------------------------------------

def test_collate_pads_like_the_copy_task():
    task = CopyTask(vocab_size=16, max_len=8)
    src, tgt = task.sample(16, torch.Generator().manual_seed(0))
    corpus = EncodedCorpus([[t for t in row if t != PAD_ID] for row in src.tolist()],
                           [[t for t in row if t != PAD_ID] for row in tgt.tolist()])
    assert (torch.tensor(corpus.src_lengths) == (src != PAD_ID).sum(1)).all()
    out_src, out_tgt = collate(corpus, list(range(16)), PAD_ID)
    assert out_src.dtype == out_tgt.dtype == torch.long
    assert torch.equal(out_src, src) and torch.equal(out_tgt, tgt)


def test_collate_takes_the_rows_asked_for():
    corpus = EncodedCorpus([[4, 5, 2], [6, 2], [7, 7, 7, 7, 2]],
                           [[1, 4, 2], [1, 6, 6, 6, 2], [1, 7, 2]])
    src, tgt = collate(corpus, [1, 0], pad_id=0)
    assert src.tolist() == [[6, 2, 0], [4, 5, 2]]
    assert tgt.tolist() == [[1, 6, 6, 6, 2], [1, 4, 2, 0, 0]]
    src, _ = collate(corpus, [2], pad_id=9)
    assert src.tolist() == [[7, 7, 7, 7, 2]]
    _, tgt = collate(corpus, [0, 2], pad_id=9)
    assert tgt.tolist() == [[1, 4, 2], [1, 7, 2]]
    with pytest.raises(ValueError, match="at least one"):
        collate(corpus, [])


def test_collate_packed_builds_the_packed_batch_of_the_rows():
    packing = pytest.importorskip("fasttx.models.packing")
    corpus = EncodedCorpus([[4, 5, 2], [6, 2], [7, 7, 7, 7, 2]],
                           [[1, 4, 2], [1, 6, 6, 6, 2], [1, 7, 2]])
    batch = collate_packed(corpus, [2, 0])
    assert isinstance(batch, packing.PackedBatch)
    assert batch.src.tolist() == [7, 7, 7, 7, 2, 4, 5, 2]
    expected = packing.PackedBatch.from_sequences([corpus.src[2], corpus.src[0]],
                                                  [corpus.tgt[2], corpus.tgt[0]])
    for field in dataclasses.fields(expected):
        mine, theirs = getattr(batch, field.name), getattr(expected, field.name)
        assert torch.equal(mine, theirs) if isinstance(mine, torch.Tensor) else mine == theirs
    with pytest.raises(ValueError, match="at least one"):
        collate_packed(corpus, [])
