"""Drop-in benchmark: fasttx inside the models users already have, against those models as
they are. Two sweeps, each timing one whole training step (mode "fwd_bwd"): the forward
and the loss under ``torch.autocast(bf16)`` with fp32 parameters,
``zero_grad(set_to_none=True)``, the backward and an Adam step, the same for every
provider. Each provider builds its model and optimizer once, untimed, with its weights
drawn from one seed, so every provider of a sweep starts from the same weights.

- sweep ``nn``: ``fasttx.nn.Transformer`` against ``torch.nn.Transformer`` built with the
  same constructor arguments (a :mod:`fasttx.models` preset's sizes: base is d_model 512,
  8 heads, 6 + 6 layers, d_ff 2048, dropout 0.1, post-norm ReLU; ``batch_first=True``).
  The fasttx module loads the torch module's ``state_dict`` with ``strict=True``. Inputs
  are random embeddings src and tgt (B, L, d_model), key padding masks for src, tgt and
  memory (each sequence n ~ U[L/2, L] long: :func:`benchmarks.model._padded`), the bool
  causal tgt_mask with ``tgt_is_causal=True``, and a random regression target (B, L,
  d_model): the loss is the mean square error of the output against it over the
  non-padded target positions (the mean square of the output alone is about constant after
  its final LayerNorm: next to no gradient would reach the layers). L = 64, 256, 1024
  with 25000 // L sequences (25k tokens, as in the paper) for src and tgt alike.
- sweep ``marian``: ``transformers.MarianMTModel`` of Helsinki-NLP/opus-mt-en-de's
  configuration (``MARIAN_CONFIGS``; random weights, no download) with labels -> loss,
  as Hugging Face's Seq2Seq training feeds it: ``input_ids`` + ``attention_mask`` (right
  padding), ``labels`` with -100 on padding (the model shifts them into
  ``decoder_input_ids``; no ``decoder_attention_mask``, as ``DataCollatorForSeq2Seq``
  gives none). L = 64, 256 (the model has 512 positions) at 25k tokens.

Profiles: "full" the grid above; "quick" L = 256 of each sweep; "smoke" tiny models in
fp32 on CPU, batch 2, L 8, dropout 0 (``SMOKE_MODEL``, :data:`SMOKE_MARIAN`: their fields
are shape keys).

Providers:

- ``fasttx-nn-triton``, ``fasttx-nn-cuda``: ``fasttx.nn.Transformer`` with
  ``fasttx.use_backend("triton" | "cuda")`` around the step;
- ``torch-nn``: ``torch.nn.Transformer``; ``torch-nn-compiled``: its forward + loss under
  ``torch.compile(fullgraph=True, dynamic=False)`` (the backward through AOTAutograd, the
  optimizer eager);
- ``hf-fasttx``: the Marian model with ``attn_implementation="fasttx"`` after
  ``fasttx.integrations.transformers.register()`` (fasttx's default backend choice: the
  Triton kernels on a GPU, the reference on CPU); ``hf-sdpa``, ``hf-eager``: transformers'
  own attentions. Without transformers (or with one older than the integration supports)
  they are reported ``skipped`` with the reason.

A provider of the other sweep's model is "n/a" for a case (left out of the report).

Checks: each provider's ``call`` is the model's eval-mode (dropout off) output on the
case's inputs, checked against the oracle (torch-nn, hf-eager) where the harness checks,
in cases without dropout (the smoke profile): with dropout the training steps draw
different masks, so the full and quick cases are timed unchecked, as in
:mod:`benchmarks.model`.

Metrics: tokens/s of target tokens (batch * tgt_len per step) and TFLOP/s by
:func:`benchmarks.model.train_flops` on the padded sizes (the nn sweep has no output
projection: :func:`nn_train_flops`).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

import fasttx
import fasttx.nn
from benchmarks import harness
from benchmarks.model import (
    LEARNING_RATE,
    MODEL_SEED,
    SMOKE_MODEL,
    TOKENS_PER_BATCH,
    _padded,
    model_config,
    train_flops,
)
from fasttx.models import PRESETS, TransformerConfig

OP = "dropin"
NN_PROVIDERS = ("fasttx-nn-triton", "fasttx-nn-cuda", "torch-nn", "torch-nn-compiled")
MARIAN_PROVIDERS = ("hf-fasttx", "hf-sdpa", "hf-eager")
PROVIDERS = NN_PROVIDERS + MARIAN_PROVIDERS
CPU_PROVIDERS = ("fasttx-nn-triton", "torch-nn", "hf-fasttx", "hf-sdpa", "hf-eager")
ORACLES = ("torch-nn", "hf-eager")
FLOORS = ()
#: fasttx's own providers (the report's columns); every other one is a peer.
FASTTX_PROVIDERS = ("fasttx-nn-triton", "fasttx-nn-cuda", "hf-fasttx")
#: The providers of each sweep: the others are "n/a" for its cases.
SWEEP_PROVIDERS = {"nn": NN_PROVIDERS, "marian": MARIAN_PROVIDERS}
PLOTS = [
    harness.Plot("nn-train-step", x="tgt_len", metric="tokens_per_s", panels=("preset",),
                 sweeps=("nn",), log_x=True),
    harness.Plot("marian-train-step", x="tgt_len", metric="tokens_per_s",
                 panels=("config",), sweeps=("marian",), log_x=True),
]

NN_LENGTHS = (64, 256, 1024)
MARIAN_LENGTHS = (64, 256)
#: Helsinki-NLP/opus-mt-en-de's config.json (the fields that shape the model and its
#: training step; generation settings left out).
MARIAN_CONFIGS = {
    "opus-mt-en-de": dict(
        vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
        decoder_ffn_dim=2048, activation_function="swish", dropout=0.1,
        attention_dropout=0.0, activation_dropout=0.0, encoder_layerdrop=0.0,
        decoder_layerdrop=0.0, max_position_embeddings=512, scale_embedding=True,
        share_encoder_decoder_embeddings=True, init_std=0.02, pad_token_id=58100,
        decoder_start_token_id=58100, eos_token_id=0),
}
#: The smoke profile's Marian: opus-mt-en-de cut down (head dim 12, 61 tokens, the last
#: of them pad as in the real vocabulary).
SMOKE_MARIAN = {"vocab_size": 61, "d_model": 24,
                "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
                "decoder_attention_heads": 2, "encoder_ffn_dim": 40, "decoder_ffn_dim": 40,
                "pad_token_id": 60, "decoder_start_token_id": 60}


# ---------------------------------------------------------------------------- cases


def nn_train_flops(config: TransformerConfig, batch: int, src_len: int, tgt_len: int) -> int:
    """:func:`benchmarks.model.train_flops` without the output projection: the matmul and
    attention FLOPs of nn.Transformer's training step (3x its forward) on padded sizes."""
    output_projection = 2 * config.d_model * config.vocab_size * tgt_len
    return train_flops(config, batch, src_len, tgt_len) - 3 * batch * output_projection


def marian_sizes(shape: dict) -> TransformerConfig:
    """The Marian model of ``shape`` as a TransformerConfig of the same sizes (for its
    FLOPs: Marian is the paper's post-norm model with a tied output projection)."""
    config = marian_fields(shape)
    return TransformerConfig(
        vocab_size=config["vocab_size"], d_model=config["d_model"],
        num_heads=config["encoder_attention_heads"], d_ff=config["encoder_ffn_dim"],
        num_encoder_layers=config["encoder_layers"],
        num_decoder_layers=config["decoder_layers"])


def _nn_case(preset: str, batch: int, length: int, dtype: str,
             overrides: dict | None = None) -> harness.Case:
    shape = {"preset": preset, **(overrides or {}), "batch": batch, "src_len": length,
             "tgt_len": length, "dropout": PRESETS[preset]["dropout"]}
    return harness.Case(OP, "nn", "fwd_bwd", dtype, shape,
                        flops=nn_train_flops(model_config(shape), batch, length, length),
                        tokens=batch * length)


def _marian_case(name: str, batch: int, length: int, dtype: str,
                 overrides: dict | None = None, dropout: float | None = None) -> harness.Case:
    shape = {"config": name, **(overrides or {}), "batch": batch, "src_len": length,
             "tgt_len": length,
             "dropout": MARIAN_CONFIGS[name]["dropout"] if dropout is None else dropout}
    return harness.Case(OP, "marian", "fwd_bwd", dtype, shape,
                        flops=train_flops(marian_sizes(shape), batch, length, length),
                        tokens=batch * length)


def cases(profile: str) -> list[harness.Case]:
    """The cases of ``profile`` ("full", "quick", "smoke"), see the module docstring."""
    if profile == "full":
        return ([_nn_case("base", TOKENS_PER_BATCH // length, length, "bf16")
                 for length in NN_LENGTHS]
                + [_marian_case("opus-mt-en-de", TOKENS_PER_BATCH // length, length, "bf16")
                   for length in MARIAN_LENGTHS])
    if profile == "quick":
        return [_nn_case("base", TOKENS_PER_BATCH // 256, 256, "bf16"),
                _marian_case("opus-mt-en-de", TOKENS_PER_BATCH // 256, 256, "bf16")]
    if profile == "smoke":
        return [_nn_case("tiny", 2, 8, "fp32", SMOKE_MODEL),
                _marian_case("opus-mt-en-de", 2, 8, "fp32", SMOKE_MARIAN, dropout=0.0)]
    raise ValueError(f"profile must be one of {harness.PROFILES}, got {profile!r}")


def nn_kwargs(shape: dict) -> dict:
    """The constructor arguments both nn sweep modules get: the preset's sizes (with the
    fields of SMOKE_MODEL that ``shape`` names) and ``shape``'s dropout, batch_first."""
    config = model_config(shape)
    return dict(d_model=config.d_model, nhead=config.num_heads,
                num_encoder_layers=config.num_encoder_layers,
                num_decoder_layers=config.num_decoder_layers, dim_feedforward=config.d_ff,
                dropout=config.dropout, activation=config.activation,
                layer_norm_eps=config.layer_norm_eps, norm_first=config.norm_first,
                batch_first=True)


def marian_fields(shape: dict) -> dict:
    """``shape``'s MarianConfig arguments: its named config, with the fields ``shape``
    names (SMOKE_MARIAN's, dropout)."""
    base = MARIAN_CONFIGS[shape["config"]]
    return {**base, **{key: shape[key] for key in base if key in shape}}


# ---------------------------------------------------------------------------- inputs


def make_inputs(case: harness.Case, device: str, seed: int) -> harness.InputSet:
    """nn: (src (B, Ls, D), tgt (B, Lt, D), src_padding (B, Ls), tgt_padding (B, Lt),
    causal (Lt, Lt), target (B, Lt, D)): fp32 embeddings and target, bool masks with True
    where not attended (torch's convention). marian: (input_ids (B, Ls), attention_mask
    (B, Ls), labels (B, Lt)): tokens above eos and below pad, eos last, then pad in
    input_ids (mask 0) and -100 in labels."""
    shape = case.shape
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batch, src_len, tgt_len = shape["batch"], shape["src_len"], shape["tgt_len"]
    if case.sweep == "nn":
        config = model_config(shape)
        src_padding = _padded(generator, config, batch, src_len) == config.pad_id
        tgt_padding = _padded(generator, config, batch, tgt_len) == config.pad_id
        causal = torch.ones(tgt_len, tgt_len, dtype=torch.bool).triu(1)
        src, tgt, target = (torch.randn(batch, length, config.d_model, generator=generator)
                            for length in (src_len, tgt_len, tgt_len))
        inputs = (src, tgt, src_padding, tgt_padding, causal, target)
    else:
        fields = marian_fields(shape)
        input_ids, attention_mask = _marian_tokens(generator, fields, batch, src_len)
        labels, kept = _marian_tokens(generator, fields, batch, tgt_len)
        inputs = (input_ids, attention_mask, labels.masked_fill(kept == 0, -100))
    return harness.InputSet(inputs=tuple(t.to(device) for t in inputs))


def _marian_tokens(generator, fields: dict, batch: int, width: int):
    """(ids, mask) (batch, width): :func:`benchmarks.model._padded`'s rows (ids 3.. below
    Marian's pad, the last id) with its eos and pad mapped to Marian's; mask 1 on tokens."""
    drawn = TransformerConfig(vocab_size=fields["pad_token_id"], d_model=2, num_heads=1,
                              d_ff=2, num_encoder_layers=1, num_decoder_layers=1)
    rows = _padded(generator, drawn, batch, width)
    mask = rows != drawn.pad_id
    ids = rows.masked_fill(rows == drawn.eos_id, fields["eos_token_id"])
    return ids.masked_fill(~mask, fields["pad_token_id"]), mask.long()


# ---------------------------------------------------------------------------- models


def build_nn(name: str, shape: dict) -> nn.Module:
    """Provider ``name``'s module (on CPU): torch.nn.Transformer drawn from MODEL_SEED, or
    fasttx.nn.Transformer of the same arguments loading its state_dict (strict)."""
    kwargs = nn_kwargs(shape)
    torch.manual_seed(MODEL_SEED)
    reference = nn.Transformer(**kwargs)
    if not name.startswith("fasttx-"):
        return reference
    module = fasttx.nn.Transformer(**kwargs)
    module.load_state_dict(reference.state_dict(), strict=True)
    return module


def _transformers():
    """The transformers package, or Unavailable saying why not."""
    try:
        import transformers
    except ImportError as error:
        raise harness.Unavailable(f"transformers is not importable ({error}): pip install "
                                  f"'transformers>=4.53'") from None
    return transformers


def build_marian(name: str, shape: dict) -> nn.Module:
    """Provider ``name``'s MarianMTModel (on CPU, fp32, train mode), weights drawn from
    MODEL_SEED: hf-fasttx registers fasttx's attention first."""
    transformers = _transformers()
    implementation = name.removeprefix("hf-")
    if implementation == "fasttx":
        from fasttx.integrations import transformers as fasttx_hf
        try:
            fasttx_hf.register()
        except ImportError as error:  # a transformers older than the integration supports
            raise harness.Unavailable(str(error)) from None
    config = transformers.MarianConfig(**marian_fields(shape))
    torch.manual_seed(MODEL_SEED)
    model = transformers.MarianMTModel._from_config(copy.deepcopy(config),
                                                    attn_implementation=implementation)
    return model.train()


# ---------------------------------------------------------------------------- providers


def provider(case: harness.Case, name: str, device: str) -> harness.Provider:
    """Builds ``name``'s model and optimizer once; the harness times its training step."""
    if name not in PROVIDERS:
        raise LookupError(f"provider must be one of {PROVIDERS}, got {name!r}")
    if name not in SWEEP_PROVIDERS[case.sweep]:
        raise harness.NotApplicable(f"{name} runs the "
                                    f"{'nn' if name in NN_PROVIDERS else 'marian'} sweep")
    backend = name.removeprefix("fasttx-nn-") if name.startswith("fasttx-nn-") else None
    if backend is not None:
        reason = fasttx.available_backends().reasons.get(backend)
        if reason is not None:
            raise harness.Unavailable(f"fasttx {backend} backend: {reason}")

    def active_backend():
        return fasttx.use_backend(backend) if backend else contextlib.nullcontext()
    if case.sweep == "nn":
        module = build_nn(name, case.shape).to(device)
        forward, loss = _nn_output, _nn_loss
        if name == "torch-nn-compiled":  # compiled on first call (the untimed warm-up)
            forward, loss = harness.compiled(_nn_output), harness.compiled(_nn_loss)
    else:
        module = build_marian(name, case.shape).to(device)
        forward, loss = _marian_logits, _marian_loss
    return train_step_provider(case, module, forward, loss, active_backend, device)


def _nn_output(module, src, tgt, src_padding, tgt_padding, causal, target):
    """The nn.Transformer call every nn provider times: (B, Lt, D)."""
    return module(src, tgt, tgt_mask=causal, src_key_padding_mask=src_padding,
                  tgt_key_padding_mask=tgt_padding, memory_key_padding_mask=src_padding,
                  tgt_is_causal=True)


def _nn_loss(module, src, tgt, src_padding, tgt_padding, causal, target):
    """Mean square error against ``target`` over the non-padded target positions (a
    weighted mean, no boolean indexing: the compiled graph keeps static shapes)."""
    out = _nn_output(module, src, tgt, src_padding, tgt_padding, causal, target)
    kept = (~tgt_padding).float()
    return ((out.float() - target).square().mean(-1) * kept).sum() / kept.sum()


def _marian_logits(model, input_ids, attention_mask, labels):
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits


def _marian_loss(model, input_ids, attention_mask, labels):
    return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss


def train_step_provider(case: harness.Case, module: nn.Module, forward: Callable,
                        loss: Callable, active_backend: Callable,
                        device: str) -> harness.Provider:
    """call: ``forward(module, *inputs)`` in eval mode (dropout off), the output the oracle
    checks; timed: one training step of ``loss(module, *inputs)`` as
    :func:`benchmarks.model`'s providers run it (autocast, zero_grad, backward, Adam)."""
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98),
                                 eps=1e-9)

    def autocast():
        return torch.autocast(device, dtype=case.torch_dtype, enabled=case.dtype != "fp32")

    def output(*inputs):
        module.eval()
        try:
            with active_backend(), autocast(), warnings.catch_warnings():
                # nn.TransformerEncoder's eval fast path packs a padded batch as a nested
                # tensor, and says that their API is a prototype: not the benchmark's concern
                warnings.filterwarnings("ignore", "The PyTorch API of nested tensors")
                return forward(module, *inputs)
        finally:
            module.train()

    def step(*inputs):
        with active_backend():
            with autocast():
                value = loss(module, *inputs)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
        return value.detach()
    return harness.Provider(call=output, timed=(lambda input_set: input_set.inputs, step))
