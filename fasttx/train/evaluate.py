"""Evaluation of a trained model: held-out loss, decoding, BLEU, chrF and exact match.

    scores = evaluate(model, corpus, references, tokenizer, num_beams=4)
    scores.bleu, scores.chrf, scores.exact_match, scores.loss

Decoding is :meth:`Seq2SeqTransformer.generate` (greedy, or beam search with the GNMT
length penalty) with the model's key/value cache, on batches of similar-length sources.
BLEU and chrF are sacrebleu's corpus scores on detokenized text: the tokenizer's
``decode`` of the hypotheses against the raw reference sentences.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from fasttx.train.data import EncodedCorpus, TokenBatcher, collate

__all__ = ["Scores", "corpus_loss", "evaluate", "score_translations", "translate"]


@dataclass
class Scores:
    """loss / nll: label-smoothed and plain cross-entropy per target token (teacher forced);
    bleu, chrf: sacrebleu corpus scores (0-100); exact_match: share of sentences decoded
    exactly; num_beams: the decoding's beam width; examples: a few (source, hypothesis,
    reference) triples."""

    loss: float
    nll: float
    bleu: float
    chrf: float
    exact_match: float
    num_sentences: int
    num_beams: int
    examples: list[tuple[str, str, str]]

    def metrics(self, prefix: str) -> dict:
        """The numbers as ``{prefix}_loss``, ... for metrics.jsonl (no examples)."""
        values = asdict(self)
        values.pop("examples")
        return {f"{prefix}_{key}": value for key, value in values.items()}


def _batches(corpus: EncodedCorpus, max_tokens: int):
    """Index batches of similar lengths, shortest first (no shuffling)."""
    return TokenBatcher(corpus.src_lengths, corpus.tgt_lengths, max_tokens, seed=0,
                        shuffle=False).epoch_batches(0)


@torch.no_grad()
def corpus_loss(model, corpus: EncodedCorpus, max_tokens: int, device, autocast) -> tuple:
    """(loss, nll) per target token of the whole corpus, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    loss_sum = nll_sum = tokens = 0.0
    try:
        for indices in _batches(corpus, max_tokens):
            src, tgt = (t.to(device) for t in collate(corpus, indices, model.config.pad_id))
            with autocast():
                out = model.loss(src, tgt)
            loss_sum += float(out.loss) * out.num_tokens
            nll_sum += float(out.nll) * out.num_tokens
            tokens += out.num_tokens
    finally:
        model.train(was_training)
    return loss_sum / max(tokens, 1), nll_sum / max(tokens, 1)


@torch.no_grad()
def translate(model, corpus: EncodedCorpus, max_tokens: int, device, autocast,
              num_beams: int = 1, length_penalty: float = 0.6,
              max_new_tokens: int | None = None, on_batch=None) -> list[list[int]]:
    """Decodes every source sentence of ``corpus``; returns the token ids of each
    hypothesis (without bos, eos and padding) in the corpus order.

    ``max_new_tokens``: as in :meth:`Seq2SeqTransformer.generate` (default: the batch's
    longest source + 50); ``on_batch(count)``, if given, is called after each batch with
    its number of sentences (to advance a progress bar).
    """
    pad, eos = model.config.pad_id, model.config.eos_id
    hypotheses: list[list[int] | None] = [None] * len(corpus)
    for indices in _batches(corpus, max(1, max_tokens // max(num_beams, 1))):
        src, _ = collate(corpus, indices, pad)
        with autocast():
            out = model.generate(src.to(device), max_new_tokens=max_new_tokens,
                                 num_beams=num_beams, length_penalty=length_penalty)
        for index, row in zip(indices, out.tolist(), strict=True):
            tokens = row[1:]
            hypotheses[index] = tokens[:tokens.index(eos)] if eos in tokens else \
                [t for t in tokens if t != pad]
        if on_batch is not None:
            on_batch(len(indices))
    return hypotheses


def score_translations(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu) and the exact-match share of ``hypotheses``."""
    try:
        import sacrebleu
    except ImportError as error:
        raise ImportError("BLEU and chrF need sacrebleu: pip install 'fasttx[train]'") \
            from error
    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"need as many hypotheses as references (at least one), got "
                         f"{len(hypotheses)} and {len(references)}")
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references, strict=True))
    return {"bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "exact_match": exact / len(references)}


def evaluate(model, corpus: EncodedCorpus, pairs: list[tuple[str, str]], tokenizer,
             max_tokens: int, device, autocast, num_beams: int = 1,
             length_penalty: float = 0.6, num_examples: int = 3) -> Scores:
    """Loss, decodes and scores of ``corpus`` (encoded from the text ``pairs``)."""
    loss, nll = corpus_loss(model, corpus, max_tokens, device, autocast)
    decoded = translate(model, corpus, max_tokens, device, autocast, num_beams, length_penalty)
    hypotheses = [tokenizer.decode(ids) for ids in decoded]
    references = [target for _, target in pairs]
    scores = score_translations(hypotheses, references)
    examples = [(pairs[i][0], hypotheses[i], references[i])
                for i in range(min(num_examples, len(pairs)))]
    return Scores(loss=loss, nll=nll, num_sentences=len(pairs), num_beams=num_beams,
                  examples=examples, **scores)
