"""Decoder-only Hugging Face models on fasttx with a sliding window shorter than their
inputs: Mistral, Qwen2 (sliding on its second layer only) and Phi-3,
``attn_implementation="fasttx"`` against ``"eager"``.

transformers folds the window into the mask it builds, so fasttx's kernels take it with
the mask. As for the encoder-decoder families (``test_transformers.py``, whose helpers
this module shares): eager in float64 is the oracle, eager or sdpa in float32 (the one
further from it) the baseline of the tolerance rule; logits, loss and every parameter
gradient follow the rule, greedy ``generate()`` on the key/value cache gives eager's
tokens, and eager without the window gives other logits and tokens (the window matters).
Mistral runs on the reference backend and the Triton kernels, the others on the reference.

The forward pass takes right padding shorter than the window, so that every query row
attends to some key: a row that attends to none gives zeros with fasttx and an average
with eager (NaN in float64, whose mask value overflows eager's float32 softmax).
``generate()`` takes left padding, as decoder-only models are used.
"""

from __future__ import annotations

import pytest
import torch

import fasttx
from tests.integrations.conftest import build_model

transformers = pytest.importorskip("transformers")
from tests.integrations.test_transformers import (  # noqa: E402 - after the skip
    NAME,
    assert_matches_oracle,
    logits_loss_grads,
)

BATCH, LENGTH, WINDOW, VOCAB, PAD, EOS = 3, 9, 4, 50, 1, 2
LENGTHS = (9, 7, 6)  # at most WINDOW - 1 padded positions
# Head dim 16, grouped-query heads (4 query heads on 2 key/value heads); a large init so
# that the random models' logits are far from ties (generate compares tokens).
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              initializer_range=0.3, attention_dropout=0.0, pad_token_id=PAD, bos_token_id=0,
              eos_token_id=EOS, sliding_window=WINDOW)
FAMILIES = {
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM",
              dict(use_sliding_window=True, max_window_layers=1)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
}
CASES = [(family, "reference") for family in FAMILIES] + [("mistral", "triton")]


def build(family: str, implementation: str, dtype=torch.float32, **overrides):
    """A tiny random model of ``family``; the same overrides give the same weights."""
    config_name, model_name, extra = FAMILIES[family]
    return build_model(config_name, model_name, implementation, dtype,
                       **{**COMMON, **extra, **overrides})


def model_inputs(left_padding: bool, seed: int = 1) -> dict[str, torch.Tensor]:
    """Padded token ids with their attention mask, and labels (-100 on padding)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (BATCH, LENGTH), generator=generator)
    mask = (torch.arange(LENGTH) < torch.tensor(LENGTHS)[:, None]).long()
    mask = mask.flip(1) if left_padding else mask
    ids = ids.masked_fill(mask == 0, PAD)
    return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


@pytest.mark.parametrize("family,backend", CASES, ids=[f"{f}-{b}" for f, b in CASES])
def test_logits_loss_and_gradients_match_eager(family, backend, spy):
    inputs = model_inputs(left_padding=False)
    want = logits_loss_grads(build(family, "eager", torch.float64), inputs)
    eager = logits_loss_grads(build(family, "eager"), inputs)
    sdpa = logits_loss_grads(build(family, "sdpa"), inputs)
    with fasttx.use_backend(backend), fasttx.backends.record_selections() as used:
        got = logits_loss_grads(build(family, NAME), inputs)
    assert used["attention"] == backend
    assert len(spy.calls) == COMMON["num_hidden_layers"]
    assert all(call["mask"] is not None for call in spy.calls)  # the window is in the mask
    assert_matches_oracle(got, want, eager, sdpa)
    # The window matters on these inputs: without it, eager's logits are another model's.
    unwindowed, _, _ = logits_loss_grads(build(family, "eager", sliding_window=None), inputs)
    assert (unwindowed - want[0]).abs().max() > 0.1


@pytest.mark.parametrize("family,backend", CASES, ids=[f"{f}-{b}" for f, b in CASES])
def test_greedy_generate_with_cache_gives_eager_tokens(family, backend, spy):
    inputs = model_inputs(left_padding=True)
    inputs.pop("labels")
    options = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True,
                   pad_token_id=PAD)
    want = build(family, "eager").generate(**inputs, **options)
    with fasttx.use_backend(backend):
        got = build(family, NAME).generate(**inputs, **options)
    assert want.shape[1] == LENGTH + 8 > 2 * WINDOW
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    unwindowed = build(family, "eager", sliding_window=None).generate(**inputs, **options)
    assert not torch.equal(unwindowed, want)  # the window changes the tokens
    cached_steps = [c for c in spy.calls if c["len_q"] == 1 and c["len_k"] > 1]
    assert cached_steps, "generate() never attended from one new token to cached keys"
