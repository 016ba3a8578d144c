"""Evaluation: held-out loss, decoding in corpus order, BLEU / chrF / exact match."""

import contextlib

import pytest
import torch

from fasttx.models import Seq2SeqTransformer, TransformerConfig
from fasttx.train.data import collate, encode_corpus
from fasttx.train.evaluate import corpus_loss, evaluate, score_translations, translate
from fasttx.train.tasks import TASKS, synthetic_corpus

TASK = TASKS["reverse"]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    config = TransformerConfig.tiny(vocab_size=TASK.tokenizer.vocab_size)
    model = Seq2SeqTransformer(config).eval()
    pairs = synthetic_corpus("reverse", 23, seed=3)
    corpus, dropped = encode_corpus(pairs, TASK.tokenizer, config.max_len)
    assert dropped == 0
    return model, corpus, pairs


def test_scores_of_perfect_and_wrong_translations():
    perfect = score_translations(["a b c d", "e f g h"], ["a b c d", "e f g h"])
    assert perfect == pytest.approx({"bleu": 100.0, "chrf": 100.0, "exact_match": 1.0})
    half = score_translations(["a b c d", "x y"], ["a b c d", "e f g h"])
    assert half["exact_match"] == 0.5 and 0 < half["bleu"] < 100
    with pytest.raises(ValueError, match="as many hypotheses as references"):
        score_translations(["a"], ["a", "b"])


def test_corpus_loss_is_the_token_weighted_mean(setup):
    model, corpus, _ = setup
    loss, nll = corpus_loss(model, corpus, 64, "cpu", contextlib.nullcontext)
    src, tgt = collate(corpus, list(range(len(corpus))), model.config.pad_id)
    with torch.no_grad():
        whole = model.loss(src, tgt)
    assert loss == pytest.approx(whole.loss.item(), rel=1e-5)
    assert nll == pytest.approx(whole.nll.item(), rel=1e-5)


def test_translate_returns_hypotheses_in_corpus_order(setup, monkeypatch):
    """With a model that echoes its source, each hypothesis must be its own sentence,
    whichever length-sorted batch decoded it; bos, eos and padding are cut off."""
    model, corpus, _ = setup

    def echo(src, max_new_tokens=None, num_beams=1, length_penalty=0.6):
        bos = torch.full((src.shape[0], 1), model.config.bos_id)
        return torch.cat([bos, src, torch.zeros_like(bos)], dim=1)  # src ends with eos

    monkeypatch.setattr(model, "generate", echo)
    hypotheses = translate(model, corpus, 40, "cpu", contextlib.nullcontext)  # several batches
    assert hypotheses == [sentence[:-1] for sentence in corpus.src]


def test_evaluate_reports_scores_and_examples(setup):
    model, corpus, pairs = setup
    scores = evaluate(model, corpus, pairs, TASK.tokenizer, 64, "cpu", contextlib.nullcontext,
                      num_beams=2, num_examples=2)
    assert scores.num_sentences == 23 and scores.num_beams == 2
    assert [source for source, _, _ in scores.examples] == [pairs[0][0], pairs[1][0]]
    assert set(scores.metrics("valid")) == {"valid_loss", "valid_nll", "valid_bleu",
                                            "valid_chrf", "valid_exact_match",
                                            "valid_num_sentences", "valid_num_beams"}


def test_translate_caps_the_length_and_reports_each_batch(setup):
    """max_new_tokens cuts greedy decoding short (a prefix of the uncut hypotheses), and
    on_batch hears of every batch."""
    model, corpus, _ = setup
    counts = []
    capped = translate(model, corpus, 40, "cpu", contextlib.nullcontext, max_new_tokens=3,
                       on_batch=counts.append)
    full = translate(model, corpus, 40, "cpu", contextlib.nullcontext)
    assert any(len(hypothesis) > 3 for hypothesis in full)  # the untrained model rambles
    assert capped == [hypothesis[:3] for hypothesis in full]
    assert len(counts) > 1 and sum(counts) == len(corpus)
