"""The encoder-decoder Transformer of "Attention Is All You Need": embeddings, the
encoder and decoder stacks, the label-smoothed loss, and greedy / beam-search generation.

    model = Seq2SeqTransformer(TransformerConfig.base(vocab_size=32000))
    out = model.loss(src, tgt)          # src (B, Ls), tgt (B, Lt) = [bos] + tokens + [eos]
    out.loss.backward()
    out = model.loss_packed(PackedBatch.from_sequences(src_lists, tgt_lists))  # no padding
    tokens = model.generate(src, num_beams=4)   # (B, L): bos, tokens, eos, padding

The layers (and how residual add & norm is fused, post- and pre-norm) are in
:mod:`fasttx.models.layers`, the key/value cache of incremental decoding in
:mod:`fasttx.models.cache`, packed (padding-free) batches in :mod:`fasttx.models.packing`.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fasttx.models.cache import KVCache
from fasttx.models.config import TransformerConfig
from fasttx.models.layers import CrossAttention, DecoderLayer, EncoderLayer, SelfAttention
from fasttx.models.packing import PackedBatch
from fasttx.nn.layers import AddLayerNorm

__all__ = ["Seq2SeqLoss", "Seq2SeqTransformer", "sinusoidal_positions"]


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """(length, dim) table: PE[p, 2i] = sin(p / 10000^(2i/dim)), PE[p, 2i+1] = cos(...)."""
    position = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(1e4) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table.float()


@dataclass
class Seq2SeqLoss:
    """loss: label-smoothed cross-entropy, mean over the target tokens (differentiable);
    nll: the plain negative log-likelihood per token (detached); num_tokens: non-pad targets."""

    loss: torch.Tensor
    nll: torch.Tensor
    num_tokens: int


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer; batch-first token ids (B, L), padded with ``pad_id``.

    One embedding matrix (V, D) serves the source, the target and the output projection.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_model
        self.embedding = nn.Embedding(config.vocab_size, d)
        self.register_buffer("positions", sinusoidal_positions(config.max_len, d),
                             persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(config)
                                     for _ in range(config.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(config)
                                     for _ in range(config.num_decoder_layers))
        # Pre-norm only: LayerNorm of the (dropped-out) embeddings in front of each stack.
        self.encoder_input_norm = self.decoder_input_norm = None
        if config.norm_first:
            self.encoder_input_norm = AddLayerNorm(d, config.layer_norm_eps, dropout=config.dropout)
            self.decoder_input_norm = AddLayerNorm(d, config.layer_norm_eps, dropout=config.dropout)
        self.reset_parameters()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike | dict, *,
                        device: str | torch.device | None = None) -> Seq2SeqTransformer:
        """The model that ``fasttx-train`` saved, with its trained weights, in eval mode.

        Args:
            checkpoint: the path of a ``checkpoint.pt`` that ``fasttx-train`` wrote, or the
                dict that :func:`fasttx.train.checkpoint.load_checkpoint` read from one.
            device: where to put the model; default the CPU. (The checkpoint stores its
                tensors on the CPU whatever device trained it, so a GPU run's checkpoint
                opens on a machine without one.)

        The tokenizer saved with it, and translation of text: :class:`fasttx.train.translate.
        Translator` (``Translator.from_checkpoint(path)``) or the ``fasttx-translate``
        command. Raises :class:`fasttx.train.checkpoint.CheckpointError` for a file that is
        missing, unreadable or not a fasttx training checkpoint.
        """
        # Read lazily: the checkpoint format belongs to fasttx.train, which imports this
        # module (fasttx.models does not depend on the trainer otherwise).
        from fasttx.train.checkpoint import FORMAT, load_checkpoint

        if isinstance(checkpoint, dict):
            if checkpoint.get("format") != FORMAT:
                raise ValueError(f"checkpoint must be a path or a fasttx training checkpoint's "
                                 f"dict (format {FORMAT!r}), got a dict with format "
                                 f"{checkpoint.get('format')!r}")
            state = checkpoint
        else:
            state = load_checkpoint(checkpoint)
        model = cls(TransformerConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
        if device is not None:
            model.to(device)
        return model.eval()

    def reset_parameters(self) -> None:
        """Xavier-uniform projections (each D x D block of a fused projection on its own, as
        if separate), zero biases, unit LayerNorms, and N(0, d_model^-0.5) embeddings: times
        sqrt(d_model) they enter with unit scale, like the positions, and as the tied output
        projection they give logits of unit scale from the normalised decoder output."""
        fused = {id(m.qkv_proj) for m in self.modules() if isinstance(m, SelfAttention)} \
            | {id(m.kv_proj) for m in self.modules() if isinstance(m, CrossAttention)}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                rows = module.in_features if id(module) in fused else module.out_features
                for block in module.weight.split(rows, dim=0):
                    nn.init.xavier_uniform_(block)
                nn.init.zeros_(module.bias)
            elif isinstance(module, AddLayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.embedding.weight, std=self.config.d_model ** -0.5)

    # ------------------------------------------------------------------ checks

    def _check_tokens(self, name: str, tokens, offset: int = 0) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of token ids, got "
                            f"{type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must hold token ids as int64 or int32, got {tokens.dtype}")
        if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"{name} must have shape (B, L) with B, L >= 1, got "
                             f"{tuple(tokens.shape)}")
        self._check_length(name, offset + tokens.shape[1])
        self._check_token_ids({name: tokens})

    def _check_length(self, name: str, length: int) -> None:
        if length > self.config.max_len:
            raise ValueError(f"{name} reaches position {length}, beyond "
                             f"max_len={self.config.max_len}")

    def _check_token_ids(self, named_tokens: dict[str, torch.Tensor]) -> None:
        """Every id in [0, vocab_size), checked with one device sync for all the tensors."""
        if torch.compiler.is_compiling():
            return
        bounds = torch.stack([torch.stack(torch.aminmax(tokens))
                              for tokens in named_tokens.values()]).tolist()  # one device sync
        for name, (low, high) in zip(named_tokens, bounds, strict=True):
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(f"{name} holds token id {bad}, outside [0, vocab_size="
                                 f"{self.config.vocab_size})")

    # ------------------------------------------------------------------ stacks

    def _embed(self, tokens, offset, input_norm):
        """tokens (B, L) at positions offset.. -> (x, stream) (B, L, D) for the first layer."""
        length = tokens.shape[1]
        return self._embed_at(tokens, self.positions[offset:offset + length], input_norm)

    def _embed_at(self, tokens, positions, input_norm):
        """tokens (..., L) plus their position encodings (..., L, D) -> (x, stream)."""
        x = self.embedding(tokens) * math.sqrt(self.config.d_model) + positions
        if input_norm is not None:  # pre-norm: LN(dropout(x)), stream dropout(x)
            return input_norm(x, None, return_residual=True)
        x = F.dropout(x, self.config.dropout, self.training)
        return x, x

    def encode(self, src: torch.Tensor):
        """src (B, Ls) -> memory (B, Ls, D) and src_mask bool (B, 1, 1, Ls), True = token."""
        self._check_tokens("src", src)
        return self._encode(src)

    def decode(self, tgt, memory, src_mask, cache: KVCache | None = None):
        """Next-token logits (B, Lt, V) for target tokens tgt (B, Lt).

        Without a cache, tgt is the whole (teacher-forced) target: causal self-attention
        with the target padding mask. With a cache, tgt holds the tokens after the
        ``cache.length`` cached ones; their keys/values are appended to the cache.
        Generation feeds no padding to unfinished rows, so no padding mask is applied then.
        memory, src_mask: what :meth:`encode` returned.
        """
        self._check_tokens("tgt", tgt, 0 if cache is None else cache.length)
        if not isinstance(memory, torch.Tensor) or memory.dim() != 3 \
                or memory.shape[0] != tgt.shape[0] or memory.shape[2] != self.config.d_model:
            shape = tuple(memory.shape) if isinstance(memory, torch.Tensor) else memory
            raise ValueError(f"memory must have shape (B, Ls, d_model={self.config.d_model}) "
                             f"with tgt's B = {tgt.shape[0]}, got {shape}")
        return self._decode(tgt, memory, src_mask, cache)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """src (B, Ls), tgt_in (B, Lt) (bos + target, shifted right) -> logits (B, Lt, V)."""
        self._check_pair(src, tgt_in, "tgt_in")
        return self._decode(tgt_in, *self._encode(src))

    def loss(self, src: torch.Tensor, tgt: torch.Tensor) -> Seq2SeqLoss:
        """Teacher-forced label-smoothed cross-entropy of tgt (B, Lt) = [bos, y..., eos, pad...]
        given src (B, Ls): inputs tgt[:, :-1], targets tgt[:, 1:], padding ignored.

        Equals ``F.cross_entropy(logits, target, ignore_index=pad_id,
        label_smoothing=config.label_smoothing)``.
        """
        self._check_pair(src, tgt, "tgt")
        if tgt.shape[1] < 2:
            raise ValueError(f"tgt must hold at least bos and one token, got shape "
                             f"{tuple(tgt.shape)}")
        logits = self._decode(tgt[:, :-1], *self._encode(src))
        target = tgt[:, 1:]
        keep = target != self.config.pad_id
        return self._label_smoothed_loss(logits[keep], target[keep])

    def loss_packed(self, batch: PackedBatch) -> Seq2SeqLoss:
        """:meth:`loss` of a packed batch, computing no padding: the same value as ``loss``
        on the padded batch of the same sequences (mean over batch.num_tokens targets).

        Attention runs through :func:`fasttx.varlen_attention`: encoder self-attention
        within each source, causal decoder self-attention within each target, and each
        target attends to its own source.
        """
        if not isinstance(batch, PackedBatch):
            raise TypeError(f"batch must be a PackedBatch (PackedBatch.from_sequences), got "
                            f"{type(batch).__name__}")
        self._check_length("batch's longest src", batch.max_src)
        self._check_length("batch's longest tgt", batch.max_tgt + 1)  # bos ... eos, as in loss
        self._check_token_ids({"batch.src": batch.src, "batch.tgt_in": batch.tgt_in,
                               "batch.tgt_out": batch.tgt_out})
        logits = self._decode_packed(batch, self._encode_packed(batch))
        return self._label_smoothed_loss(logits, batch.tgt_out)

    def _label_smoothed_loss(self, logits, target) -> Seq2SeqLoss:
        """logits (N, V) and targets (N,) of the N scored tokens -> their mean loss."""
        log_probs = F.log_softmax(logits, dim=-1,
                                  dtype=torch.promote_types(logits.dtype, torch.float32))
        nll = -log_probs.gather(1, target.unsqueeze(1)).sum()
        uniform = -log_probs.mean(dim=1).sum()  # cross-entropy with the uniform distribution
        count = target.shape[0]
        eps = self.config.label_smoothing
        loss = ((1.0 - eps) * nll + eps * uniform) / max(count, 1)
        return Seq2SeqLoss(loss, nll.detach() / max(count, 1), count)

    def _check_pair(self, src, tgt, tgt_name: str) -> None:
        self._check_tokens("src", src)
        self._check_tokens(tgt_name, tgt)
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"src and {tgt_name} must have the same batch size, got "
                             f"{src.shape[0]} and {tgt.shape[0]}")

    def _encode(self, src):
        src_mask = (src != self.config.pad_id)[:, None, None, :]
        x, stream = self._embed(src, 0, self.encoder_input_norm)
        for layer in self.encoder:
            x, stream = layer(x, stream, src_mask)
        return x, src_mask

    def _encode_packed(self, batch: PackedBatch):
        """The packed sources -> memory (Ts, D)."""
        x, stream = self._embed_at(batch.src, self.positions[batch.src_positions],
                                   self.encoder_input_norm)
        for layer in self.encoder:
            x, stream = layer(x, stream, None, packed=batch)
        return x

    def _decode_packed(self, batch: PackedBatch, memory):
        """The packed decoder inputs and memory (Ts, D) -> next-token logits (Tt, V)."""
        x, stream = self._embed_at(batch.tgt_in, self.positions[batch.tgt_positions],
                                   self.decoder_input_norm)
        for layer in self.decoder:
            x, stream = layer(x, stream, memory, None, None, True, packed=batch)
        return F.linear(x, self.embedding.weight)

    def _decode(self, tgt, memory, src_mask, cache=None):
        offset, length = (0 if cache is None else cache.length), tgt.shape[1]
        if cache is None:
            tgt_mask, is_causal = (tgt != self.config.pad_id)[:, None, None, :], True
        elif length == 1:
            tgt_mask, is_causal = None, False
        else:  # is_causal is top-left aligned: spell out "key j <= offset + query i"
            keys = torch.arange(offset + length, device=tgt.device)
            queries = torch.arange(offset, offset + length, device=tgt.device)
            tgt_mask, is_causal = keys[None, :] <= queries[:, None], False
        x, stream = self._embed(tgt, offset, self.decoder_input_norm)
        for i, layer in enumerate(self.decoder):
            x, stream = layer(x, stream, memory, src_mask, tgt_mask, is_causal,
                              None if cache is None else cache.layers[i])
        return F.linear(x, self.embedding.weight)

    # ------------------------------------------------------------------ generation

    def _next_log_probs(self, tokens, memory, src_mask, cache):
        """Log-probabilities (B, V) of the token after tokens (B, t); pad and bos (unless it
        doubles as eos) are never chosen."""
        config = self.config
        new = tokens if cache is None else tokens[:, cache.length:]
        logits = self._decode(new, memory, src_mask, cache)[:, -1]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logits[:, config.pad_id] = float("-inf")
        if config.bos_id != config.eos_id:
            logits[:, config.bos_id] = float("-inf")
        return F.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def generate(self, src: torch.Tensor, max_new_tokens: int | None = None, num_beams: int = 1,
                 length_penalty: float = 0.6, use_cache: bool = True) -> torch.Tensor:
        """Greedy (num_beams=1) or beam-search decoding of src (B, Ls), in eval mode.

        Args:
            max_new_tokens: tokens to generate at most after bos; default
                min(Ls + 50, max_len - 1), as in the paper (input length + 50).
            num_beams: beam width; beams rank by log P / ((5 + len) / 6) ** length_penalty
                (GNMT), len counting the generated tokens up to eos.
            use_cache: decode incrementally with the key/value cache (False re-decodes the
                whole prefix each step: same tokens, slower).

        Returns:
            (B, L) token ids: bos, the generated tokens, eos, then pad_id.
        """
        config = self.config
        self._check_tokens("src", src)
        if max_new_tokens is None:
            max_new_tokens = min(src.shape[1] + 50, config.max_len - 1)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
                or not 1 <= max_new_tokens < config.max_len:
            raise ValueError(f"max_new_tokens must be an int in [1, max_len - 1 = "
                             f"{config.max_len - 1}], got {max_new_tokens!r}")
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) \
                or not 1 <= num_beams < config.vocab_size:
            raise ValueError(f"num_beams must be an int in [1, vocab_size - 1 = "
                             f"{config.vocab_size - 1}], got {num_beams!r}")
        with _eval_mode(self):
            memory, src_mask = self._encode(src)
            if num_beams == 1:
                tokens = self._greedy(memory, src_mask, max_new_tokens, use_cache)
            else:
                tokens = self._beam_search(memory, src_mask, max_new_tokens, num_beams,
                                           float(length_penalty), use_cache)
        return tokens

    def _start(self, memory, rows, max_new_tokens, use_cache):
        tokens = torch.full((rows, 1), self.config.bos_id, dtype=torch.long,
                            device=memory.device)
        cache = KVCache(len(self.decoder), 1 + max_new_tokens) if use_cache else None
        return tokens, cache

    def _greedy(self, memory, src_mask, max_new_tokens, use_cache):
        tokens, cache = self._start(memory, memory.shape[0], max_new_tokens, use_cache)
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for _ in range(max_new_tokens):
            log_probs = self._next_log_probs(tokens, memory, src_mask, cache)
            token = log_probs.argmax(dim=-1).masked_fill(finished, self.config.pad_id)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            finished |= token == self.config.eos_id
            if finished.all():
                break
        return tokens

    def _beam_search(self, memory, src_mask, max_new_tokens, num_beams, alpha, use_cache):
        """Finished beams stay in the beam with a frozen score and length, extended by pad."""
        batch, beams, vocab = memory.shape[0], num_beams, self.config.vocab_size
        memory = memory.repeat_interleave(beams, dim=0)        # (B*K, Ls, D)
        src_mask = src_mask.repeat_interleave(beams, dim=0)
        tokens, cache = self._start(memory, batch * beams, max_new_tokens, use_cache)
        device = tokens.device
        scores = torch.zeros(batch, beams, device=device)      # sum of log-probs
        scores[:, 1:] = float("-inf")                           # all beams start equal: keep one
        scores = scores.view(-1)
        lengths = torch.zeros(batch * beams, dtype=torch.long, device=device)
        finished = torch.zeros(batch * beams, dtype=torch.bool, device=device)
        only_pad = torch.full((vocab,), float("-inf"), device=device)
        only_pad[self.config.pad_id] = 0.0
        first_beam = torch.arange(batch, device=device).unsqueeze(1) * beams
        for _ in range(max_new_tokens):
            log_probs = self._next_log_probs(tokens, memory, src_mask, cache)
            log_probs = torch.where(finished[:, None], only_pad.to(log_probs.dtype), log_probs)
            total = scores.to(log_probs.dtype)[:, None] + log_probs        # (B*K, V)
            new_lengths = lengths + (~finished).long()
            penalty = ((5.0 + new_lengths) / 6.0) ** alpha
            ranked = (total / penalty[:, None]).view(batch, beams * vocab)
            top = ranked.topk(beams, dim=1).indices                        # (B, K), best first
            index = (first_beam + top // vocab).view(-1)                   # source row per beam
            token = (top % vocab).view(-1)
            scores = total.view(batch, -1).gather(1, top).view(-1)
            lengths = new_lengths[index]
            finished = finished[index] | (token == self.config.eos_id)
            tokens = torch.cat([tokens[index], token[:, None]], dim=1)
            if cache is not None:
                cache.reorder_beams(index)
            if finished.all():
                break
        best = tokens.view(batch, beams, -1)[:, 0]
        used = int((best != self.config.pad_id).any(dim=0).nonzero().max()) + 1
        return best[:, :used]


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """Puts ``module`` in eval mode for the block and restores its training flag after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
