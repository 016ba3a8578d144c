"""Whole-model benchmark: one training step and greedy generation of the encoder-decoder
Transformer (:class:`fasttx.models.Seq2SeqTransformer`) against ``torch.nn.Transformer``.

What is timed (each provider builds its model and optimizer once, untimed, from the same
seed, so every provider starts from the same weights):

- sweep ``train`` (mode "fwd_bwd"): one whole training step as
  :mod:`fasttx.train` runs it: the forward and the label-smoothed loss under
  ``torch.autocast(bf16)`` with fp32 parameters, ``zero_grad(set_to_none=True)``, the
  backward and an Adam step. Presets base and big with their own dropout (0.1, 0.3; a case
  with dropout is not checked against the oracle, the masks differ), source and target
  lengths L = 64, 256, 1024 with 25000 // L sequences per batch (25k tokens, as in the
  paper). Each sequence's length is drawn uniformly from [L/2, L] and padded with pad_id:
  src (B, L) = tokens + [eos] + pad, tgt (B, L + 1) = [bos] + tokens + [eos] + pad, so the
  decoder runs on tgt_len = L positions (``max_len`` is raised to L + 1 where needed: it
  only sizes the table of positions).
- sweep ``generate`` (mode "fwd"): greedy decoding, ``model.generate(src,
  max_new_tokens=64, num_beams=1)`` with fasttx's key/value cache, in eval mode with the
  model cast to bf16 (as a deployed model decodes; autocast would recast every fp32 weight
  on each of the 64 small decoding steps). Presets base and big, batch 64 and 256, source
  length 64. Eval mode has no dropout, so these cases are checked: every provider's
  teacher-forced logits on a target of max_new_tokens positions against the oracle's.
  Random weights hardly ever emit eos, so every row decodes max_new_tokens tokens.

Profiles: "full" the grid above; "quick" base train L=256 and base generate batch 64;
"smoke" a cut-down tiny preset (``SMOKE_MODEL``: its fields are shape keys) in fp32 on
CPU, batch 2, L 8, 4 new tokens.

Providers:

- ``fasttx-triton``, ``fasttx-cuda``, ``fasttx-reference``: the fasttx model with
  ``fasttx.use_backend(name)`` active around the step (every attention, add & norm and
  FFN runs on that backend).
- ``torch-transformer``: ``torch.nn.Transformer`` (same d_model, heads, layers, d_ff,
  dropout, activation, norm_first, ``batch_first=True``) inside the same shared embedding,
  sinusoidal positions, tied output projection and label-smoothed loss
  (``F.cross_entropy(..., label_smoothing=...)``), with padding masks
  (src/tgt/memory_key_padding_mask) and a causal tgt_mask. Two adjustments make it the
  same function as fasttx's model, whose weights it copies (LightSeq's method of checking
  a fused model): the final LayerNorm nn.Transformer appends to each stack is removed in
  post-norm (the paper's model has none), and its attention and FFN-hidden dropout take
  the config's attention_dropout / activation_dropout (0) instead of ``dropout``.
  nn.Transformer has no key/value cache: its greedy generation re-decodes the whole prefix
  at every step, which is all it offers.
- ``torch-transformer-compiled``: ``torch.compile(fullgraph=True, dynamic=False)`` of the
  torch-transformer's forward + loss (the backward through AOTAutograd; the optimizer
  eager). Generation is unavailable: the cache-less loop grows the prefix every step.

Metrics: tokens/s of target tokens per call (batch * tgt_len for train, batch *
max_new_tokens for generate); TFLOP/s for train only, by :func:`train_flops`: the
matmul and attention FLOPs on the padded sizes, forward x3.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import fasttx
from benchmarks import harness
from fasttx.models import PRESETS, Seq2SeqTransformer, TransformerConfig
from fasttx.models.layers import SelfAttention
from fasttx.models.seq2seq import sinusoidal_positions

OP = "model"
PROVIDERS = ("fasttx-triton", "fasttx-cuda", "fasttx-reference", "torch-transformer",
             "torch-transformer-compiled")
CPU_PROVIDERS = ("fasttx-triton", "fasttx-reference", "torch-transformer")
ORACLES = ("fasttx-reference",)
FLOORS = ()
PLOTS = [
    harness.Plot("train-step", x="tgt_len", metric="tokens_per_s", panels=("preset",),
                 sweeps=("train",), log_x=True),
    harness.Plot("greedy-generation", x="batch", metric="tokens_per_s", panels=("preset",),
                 sweeps=("generate",), log_x=True),
]

#: Seeds the weights of every provider's model.
MODEL_SEED = 0
#: Adam's (constant) learning rate: small enough that the timed steps stay finite.
LEARNING_RATE = 1e-4
TOKENS_PER_BATCH = 25000
TRAIN_LENGTHS = (64, 256, 1024)
GENERATE_BATCHES = (64, 256)
GENERATE_SRC_LEN = GENERATE_NEW_TOKENS = 64
#: The smoke profile's model: the tiny preset cut down further, since the Triton
#: interpreter pays per program and per launch (a step of the whole tiny preset at batch 4
#: takes ~10 s under it, this one ~1 s).
SMOKE_MODEL = {"d_model": 32, "num_heads": 2, "d_ff": 64, "num_encoder_layers": 1,
               "num_decoder_layers": 1}


# ---------------------------------------------------------------------------- cases


def train_flops(config: TransformerConfig, batch: int, src_len: int, tgt_len: int) -> int:
    """Matmul + attention FLOPs of a training step on padded (B, Ls) / (B, Lt) batches:
    3x the forward (the backward does two matmuls of each forward one's size).

    Forward, with D = d_model, F = d_ff, V = vocab_size and 2 FLOPs per multiply-add:

    - each encoder layer, per source token: Q, K, V, output projections 4 * 2 * D^2;
      attention (QK^T and PV) 4 * Ls * D; FFN 2 * 2 * D * F;
    - each decoder layer, per target token: self-attention projections 4 * 2 * D^2;
      causal attention half of 4 * Lt * D; cross-attention Q and output projections
      2 * 2 * D^2 and attention 4 * Ls * D; FFN 2 * 2 * D * F; and per source token the
      cross-attention K and V projections 2 * 2 * D^2;
    - the output projection 2 * D * V per target token.

    Embeddings, LayerNorms, softmax, dropout, the loss and the optimizer are not counted.
    """
    d, d_ff = config.d_model, config.d_ff
    encoder_layer = src_len * (8 * d * d + 4 * src_len * d + 4 * d * d_ff)
    decoder_layer = (tgt_len * (8 * d * d + 2 * tgt_len * d + 4 * d * d + 4 * src_len * d
                                + 4 * d * d_ff)
                     + src_len * 4 * d * d)
    forward = (config.num_encoder_layers * encoder_layer
               + config.num_decoder_layers * decoder_layer
               + tgt_len * 2 * d * config.vocab_size)
    return 3 * batch * forward


def _train_case(preset: str, batch: int, length: int, dtype: str,
                overrides: dict | None = None) -> harness.Case:
    shape = {"preset": preset, **(overrides or {}), "batch": batch, "src_len": length,
             "tgt_len": length, "dropout": PRESETS[preset]["dropout"]}
    config = model_config(shape)
    return harness.Case(OP, "train", "fwd_bwd", dtype, shape,
                        flops=train_flops(config, batch, length, length),
                        tokens=batch * length)


def _generate_case(preset: str, batch: int, src_len: int, new_tokens: int, dtype: str,
                   overrides: dict | None = None) -> harness.Case:
    shape = {"preset": preset, **(overrides or {}), "batch": batch, "src_len": src_len,
             "max_new_tokens": new_tokens}
    return harness.Case(OP, "generate", "fwd", dtype, shape, tokens=batch * new_tokens)


def cases(profile: str) -> list[harness.Case]:
    """The cases of ``profile`` ("full", "quick", "smoke"), see the module docstring."""
    if profile == "full":
        return ([_train_case(preset, TOKENS_PER_BATCH // length, length, "bf16")
                 for preset in ("base", "big") for length in TRAIN_LENGTHS]
                + [_generate_case(preset, batch, GENERATE_SRC_LEN, GENERATE_NEW_TOKENS, "bf16")
                   for preset in ("base", "big") for batch in GENERATE_BATCHES])
    if profile == "quick":
        return [_train_case("base", TOKENS_PER_BATCH // 256, 256, "bf16"),
                _generate_case("base", 64, GENERATE_SRC_LEN, GENERATE_NEW_TOKENS, "bf16")]
    if profile == "smoke":
        return [_train_case("tiny", 2, 8, "fp32", SMOKE_MODEL),
                _generate_case("tiny", 2, 8, 4, "fp32", SMOKE_MODEL)]
    raise ValueError(f"profile must be one of {harness.PROFILES}, got {profile!r}")


def model_config(shape: dict) -> TransformerConfig:
    """The preset of ``shape`` with its dropout and the config fields it names
    (SMOKE_MODEL's), and max_len raised to fit the sequences."""
    preset = PRESETS[shape["preset"]]
    longest = max(shape["src_len"], shape.get("tgt_len", 0) + 1,
                  shape.get("max_new_tokens", 0) + 1)
    overrides = {field: shape[field] for field in SMOKE_MODEL if field in shape}
    return TransformerConfig.preset(shape["preset"], **overrides,
                                    dropout=shape.get("dropout", preset["dropout"]),
                                    max_len=max(preset["max_len"], longest))


# ---------------------------------------------------------------------------- inputs


def _padded(generator, config: TransformerConfig, batch: int, width: int) -> torch.Tensor:
    """(batch, width) rows of n ~ U[width/2, width] tokens, the last eos, then pad_id.
    Tokens are ids above the special ones (0, 1, 2 in every preset)."""
    lengths = torch.randint(max(1, width // 2), width + 1, (batch, 1), generator=generator)
    tokens = torch.randint(3, config.vocab_size, (batch, width), generator=generator)
    position = torch.arange(width)
    tokens = tokens.masked_fill(position == lengths - 1, config.eos_id)
    return tokens.masked_fill(position >= lengths, config.pad_id)


def make_inputs(case: harness.Case, device: str, seed: int) -> harness.InputSet:
    """train: (src (B, Ls), tgt (B, Lt + 1) = [bos] + tokens + [eos] + pad);
    generate: (src (B, Ls), tgt_in (B, max_new_tokens) = [bos] + tokens, unpadded), tgt_in
    only for checking the logits."""
    shape = case.shape
    config = model_config(shape)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batch = shape["batch"]
    src = _padded(generator, config, batch, shape["src_len"])
    bos = torch.full((batch, 1), config.bos_id)
    if case.sweep == "train":
        tgt = torch.cat([bos, _padded(generator, config, batch, shape["tgt_len"])], dim=1)
    else:
        body = torch.randint(3, config.vocab_size, (batch, shape["max_new_tokens"] - 1),
                             generator=generator)
        tgt = torch.cat([bos, body], dim=1)
    return harness.InputSet(inputs=(src.to(device), tgt.to(device)))


# ---------------------------------------------------------------------------- nn.Transformer


class TorchTransformer(nn.Module):
    """``nn.Transformer`` inside fasttx's embedding, positions, output projection and loss:
    the same function as :class:`Seq2SeqTransformer` of ``config`` (module docstring)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, d)
        self.register_buffer("positions", sinusoidal_positions(config.max_len, d),
                             persistent=False)
        activation = (_gelu_tanh if config.activation == "gelu_tanh"
                      else config.activation)
        self.transformer = nn.Transformer(
            d_model=d, nhead=config.num_heads, num_encoder_layers=config.num_encoder_layers,
            num_decoder_layers=config.num_decoder_layers, dim_feedforward=config.d_ff,
            dropout=config.dropout, activation=activation, layer_norm_eps=config.layer_norm_eps,
            batch_first=True, norm_first=config.norm_first)
        if not config.norm_first:  # the paper's post-norm stacks end with a layer's norm
            self.transformer.encoder.norm = self.transformer.decoder.norm = None
        for layer in (*self.transformer.encoder.layers, *self.transformer.decoder.layers):
            layer.dropout.p = config.activation_dropout  # on the FFN's hidden activation
            layer.self_attn.dropout = config.attention_dropout
            if hasattr(layer, "multihead_attn"):
                layer.multihead_attn.dropout = config.attention_dropout

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> dropout(embedding * sqrt(D) + positions) (B, L, D)."""
        x = self.embedding(tokens) * math.sqrt(self.config.d_model) \
            + self.positions[:tokens.shape[1]]
        return F.dropout(x, self.config.dropout, self.training)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """src (B, Ls), tgt_in (B, Lt) -> logits (B, Lt, V)."""
        pad = self.config.pad_id
        x = self.transformer(
            self._embed(src), self._embed(tgt_in), tgt_mask=_causal_mask(tgt_in),
            src_key_padding_mask=src == pad, tgt_key_padding_mask=tgt_in == pad,
            memory_key_padding_mask=src == pad, tgt_is_causal=True)
        return F.linear(x, self.embedding.weight)

    def loss(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Label-smoothed cross-entropy of tgt (B, Lt + 1) given src (B, Ls), mean over the
        non-pad targets: Seq2SeqTransformer.loss's ``loss``."""
        logits = self(src, tgt[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(),
                               ignore_index=self.config.pad_id,
                               label_smoothing=self.config.label_smoothing)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding of src (B, Ls) in eval mode without a cache: every step
        re-decodes the whole prefix. -> (B, <= 1 + max_new_tokens): bos, tokens, eos, pad
        (Seq2SeqTransformer's rule: pad, and bos unless it doubles as eos, are never chosen)."""
        config = self.config
        src_padding = src == config.pad_id
        memory = self.transformer.encoder(self._embed(src), src_key_padding_mask=src_padding)
        banned = [config.pad_id] + ([config.bos_id] if config.bos_id != config.eos_id else [])
        tokens = src.new_full((src.shape[0], 1), config.bos_id)
        finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_new_tokens):
            x = self.transformer.decoder(self._embed(tokens), memory,
                                         tgt_mask=_causal_mask(tokens), tgt_is_causal=True,
                                         memory_key_padding_mask=src_padding)
            logits = F.linear(x[:, -1], self.embedding.weight).float()     # (B, V)
            logits[:, banned] = float("-inf")
            token = logits.argmax(dim=-1).masked_fill(finished, config.pad_id)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            finished |= token == config.eos_id
            if finished.all():
                break
        return tokens


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """fasttx's "gelu_tanh" activation for nn.Transformer (which names only relu, gelu)."""
    return F.gelu(x, approximate="tanh")


def _causal_mask(tokens: torch.Tensor) -> torch.Tensor:
    """(L, L) bool, True above the diagonal (nn.Transformer's convention: not attended)."""
    length = tokens.shape[1]
    return torch.ones(length, length, dtype=torch.bool, device=tokens.device).triu(1)


def copy_weights(source: Seq2SeqTransformer, target: TorchTransformer) -> None:
    """Copies fasttx's weights into ``target``: fused projections map onto in_proj_weight
    ([q; k; v] rows, the same head split), FFNs onto linear1/linear2, and the n-th
    LayerNorm of each stack onto the n-th (pre-norm: fasttx's input norm is nn's first
    layer's norm1 and fasttx's last norm nn's final norm)."""
    stacks = target.transformer
    pairs = [(target.embedding.weight, source.embedding.weight)]
    for ours, theirs in zip((*source.encoder, *source.decoder),
                            (*stacks.encoder.layers, *stacks.decoder.layers), strict=True):
        attentions = [(ours.self_attn, theirs.self_attn)]
        if hasattr(ours, "cross_attn"):
            attentions.append((ours.cross_attn, theirs.multihead_attn))
        for mine, torch_attention in attentions:
            weight, bias = _in_projection(mine)
            pairs += [(torch_attention.in_proj_weight, weight),
                      (torch_attention.in_proj_bias, bias),
                      (torch_attention.out_proj.weight, mine.out_proj.weight),
                      (torch_attention.out_proj.bias, mine.out_proj.bias)]
        for name in ("linear1", "linear2"):
            pairs += [(getattr(theirs, name).weight, getattr(ours.ffn, name).weight),
                      (getattr(theirs, name).bias, getattr(ours.ffn, name).bias)]
    for ours, theirs in ((_norms([source.encoder_input_norm], source.encoder),
                          _norms([], stacks.encoder.layers, stacks.encoder.norm)),
                         (_norms([source.decoder_input_norm], source.decoder),
                          _norms([], stacks.decoder.layers, stacks.decoder.norm))):
        for mine, torch_norm in zip(ours, theirs, strict=True):
            pairs += [(torch_norm.weight, mine.weight), (torch_norm.bias, mine.bias)]
    with torch.no_grad():
        for destination, value in pairs:
            destination.copy_(value)


def _in_projection(attention) -> tuple[torch.Tensor, torch.Tensor]:
    """fasttx attention -> (3D, D) weight and (3D,) bias of nn's in_proj ([q; k; v])."""
    if isinstance(attention, SelfAttention):
        return attention.qkv_proj.weight, attention.qkv_proj.bias
    return (torch.cat([attention.q_proj.weight, attention.kv_proj.weight]),
            torch.cat([attention.q_proj.bias, attention.kv_proj.bias]))


def _norms(first: list, layers, last=None) -> list:
    """A stack's LayerNorms in the order the data meets them (None ones left out)."""
    inner = [getattr(layer, name) for layer in layers for name in ("norm1", "norm2", "norm3")
             if hasattr(layer, name)]
    return [norm for norm in (*first, *inner, last) if norm is not None]


# ---------------------------------------------------------------------------- providers


@dataclasses.dataclass
class _Model:
    """What a provider runs: ``logits(src, tgt_in)`` (B, Lt, V), ``loss(src, tgt)`` a
    scalar and ``generate(src, max_new_tokens)`` (B, <= 1 + max_new_tokens)."""

    module: nn.Module
    logits: Callable
    loss: Callable
    generate: Callable | None


def build_model(name: str, config: TransformerConfig) -> _Model:
    """Provider ``name``'s model, its weights drawn from MODEL_SEED (on CPU)."""
    torch.manual_seed(MODEL_SEED)
    model = Seq2SeqTransformer(config)
    if name.startswith("fasttx-"):
        return _Model(model, model.forward, lambda src, tgt: model.loss(src, tgt).loss,
                      lambda src, n: model.generate(src, max_new_tokens=n, num_beams=1))
    peer = TorchTransformer(config)
    copy_weights(model, peer)
    if name == "torch-transformer-compiled":
        # compiled on first call: the step in the harness's untimed warm-up, the forward
        # only where it is checked (dropout 0)
        return _Model(peer, harness.compiled(peer.forward), harness.compiled(peer.loss), None)
    return _Model(peer, peer.forward, peer.loss, peer.generate)


def provider(case: harness.Case, name: str, device: str) -> harness.Provider:
    """Builds ``name``'s model (and optimizer) once; the harness times its step."""
    if name not in PROVIDERS:
        raise LookupError(f"provider must be one of {PROVIDERS}, got {name!r}")
    backend = name.removeprefix("fasttx-") if name.startswith("fasttx-") else None
    if backend is not None:
        reason = fasttx.available_backends().reasons.get(backend)
        if reason is not None:
            raise harness.Unavailable(f"fasttx {backend} backend: {reason}")
    if name == "torch-transformer-compiled" and case.sweep == "generate":
        raise harness.Unavailable("nn.Transformer has no key/value cache: its greedy loop "
                                  "re-decodes a longer prefix every step (a recompile each)")
    model = build_model(name, model_config(case.shape))
    model.module.to(device)

    def active_backend():
        return fasttx.use_backend(backend) if backend else contextlib.nullcontext()
    if case.sweep == "generate":
        return _generate_provider(case, model, active_backend)
    return _train_provider(case, model, active_backend, device)


def _train_provider(case, model: _Model, active_backend, device) -> harness.Provider:
    """call: the training-mode logits (B, Lt, V) of (src, tgt); timed: a training step."""
    model.module.train()
    optimizer = torch.optim.Adam(model.module.parameters(), lr=LEARNING_RATE,
                                 betas=(0.9, 0.98), eps=1e-9)

    def autocast():
        return torch.autocast(device, dtype=case.torch_dtype, enabled=case.dtype != "fp32")

    def logits(src, tgt):
        with active_backend(), autocast():
            return model.logits(src, tgt[:, :-1])

    def step(src, tgt):
        with active_backend():
            with autocast():
                loss = model.loss(src, tgt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return loss.detach()
    return harness.Provider(call=logits, timed=(lambda input_set: input_set.inputs, step))


def _generate_provider(case, model: _Model, active_backend) -> harness.Provider:
    """call: the eval-mode logits (B, Lt, V) of (src, tgt_in); timed: greedy decoding."""
    model.module.eval().to(case.torch_dtype)
    new_tokens = case.shape["max_new_tokens"]

    def logits(src, tgt_in):
        with active_backend():
            return model.logits(src, tgt_in)

    def generate(src):
        with active_backend():
            return model.generate(src, new_tokens)
    return harness.Provider(call=logits, timed=(lambda input_set: input_set.inputs[:1],
                                                generate))
