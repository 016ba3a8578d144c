"""Shared by the Hugging Face integration's tests: tiny random models, and a spy on
fasttx's fused attention call."""

import copy

import pytest
import torch

from fasttx.integrations import transformers as fasttx_hf


def build_model(config_name: str, model_name: str, implementation: str, dtype=torch.float32,
                seed: int = 0, **config):
    """A tiny random transformers model (``transformers.<model_name>``) in eval mode.

    The weights are drawn in float32 and then cast, so that one seed gives one model in
    every dtype (transformers' initialisers draw other values in float64).
    """
    import transformers

    config = getattr(transformers, config_name)(**config)
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)._from_config(
        copy.deepcopy(config), attn_implementation=implementation)
    assert model.config._attn_implementation == implementation
    return model.to(dtype).eval()


def worse_baseline(expected: torch.Tensor, *baselines: torch.Tensor) -> torch.Tensor:
    """Of plain PyTorch's results (transformers' "eager" and "sdpa" implementations in
    float32: both are what users have without fasttx), the one further from the float64
    ``expected``: the baseline of the tolerance rule. One seed's worst error can differ 5x
    between the two (BART's logits: eager 4e-6, sdpa 2.4e-5), so either alone would make
    the rule a draw of the seed."""
    return max(baselines, key=lambda baseline: float((baseline.double() - expected).abs().max()))


class Spy:
    """Wraps the integration's fused call: counts it and keeps each call's shapes/flags."""

    def __init__(self, monkeypatch):
        self.calls = []
        fused = fasttx_hf.scaled_dot_product_attention

        def spy(query, key, value, **kwargs):
            mask = kwargs["attn_mask"]
            self.calls.append(dict(len_q=query.shape[2], len_k=key.shape[2], mask=mask,
                                   is_causal=kwargs["is_causal"], dropout=kwargs["dropout_p"]))
            return fused(query, key, value, **kwargs)

        monkeypatch.setattr(fasttx_hf, "scaled_dot_product_attention", spy)


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)
