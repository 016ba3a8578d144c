"""Attention benchmark: fasttx's kernels against every torch SDPA backend and flash-attn.

Times masked scaled-dot-product attention ``softmax(q k^T / sqrt(D) + mask) v`` with q
(B, H, Lq, D) and k, v (B, H, Lk, D), forward (``fwd``), backward alone (``bwd``) and both
(``fwd_bwd``), gradients for q, k and v. Providers:

- ``fasttx-triton``, ``fasttx-cuda``, ``fasttx-reference``:
  ``fasttx.scaled_dot_product_attention(q, k, v, attn_mask, is_causal, backend=...)``;
- ``eager``: the plain composition (:func:`eager_attention`) and ``compiled``, its
  ``torch.compile``;
- ``torch-default`` (torch's own choice) and ``torch-flash``, ``torch-efficient``,
  ``torch-cudnn``, ``torch-math``: ``F.scaled_dot_product_attention`` with that backend
  forced; torch can't take a mask together with ``is_causal`` on its fast paths, so with
  both it gets them folded into one (B, 1, Lq, Lk) mask, built untimed;
- ``flash-attn`` (``flash_attn``) and ``flash-attn-3`` (``flash_attn_interface``):
  ``flash_attn_func`` on (B, L, H, D) tensors, ``flash_attn_varlen_func`` on the unpadded
  keys when there is key padding (layouts converted untimed), where importable.

The fasttx reference, eager, compiled and torch-math providers build the whole score
matrix, so they are skipped when its fp32 copy would exceed 8 GiB.

Sweeps ("full" profile, bf16): ``transformer-base`` / ``transformer-big`` (the
Transformer's attention layers: d_model 512 / 1024, 8 / 16 heads of 64; sequences 64-1024
at 25k tokens per batch; encoder self-attention with key padding, decoder self-attention
causal with key padding, cross-attention with 5/4 as many keys as queries);
``long-sequence`` (512-32k, head dim 64/128/256, causal or not, no mask; 16k tokens per
batch, 2048 / D heads); ``key-padding`` (25% and 50% of the keys padded on average, and
a mask with none padded: the cost of passing one); ``cross-attention`` (Lq != Lk up to
16:1 either way, with and without key padding).

A key padding mask is bool (B, 1, 1, Lk), True where a key may be attended; for a padding
fraction p each sequence keeps a uniform draw from [round(Lk (1 - 2p)), Lk] keys (at
least 1). Causal masks are top-left aligned (query i attends keys j <= i).

TFLOP/s follow the field's convention (FlashAttention's): forward 4 B H Lq Lk D, halved
when causal, backward 2.5x and forward+backward 3.5x that, counted on the dense problem
even with padding (an effective rate).
"""

from __future__ import annotations

import contextlib
import importlib

import torch
import torch.nn.functional as F

from benchmarks import harness

OP = "attention"
TORCH_BACKENDS = {"torch-flash": "FLASH_ATTENTION", "torch-efficient": "EFFICIENT_ATTENTION",
                  "torch-cudnn": "CUDNN_ATTENTION", "torch-math": "MATH"}
FLASH_ATTN_MODULES = {"flash-attn": "flash_attn", "flash-attn-3": "flash_attn_interface"}
PROVIDERS = ("fasttx-triton", "fasttx-cuda", "fasttx-reference", "eager", "compiled",
             "torch-default", *TORCH_BACKENDS, *FLASH_ATTN_MODULES)
CPU_PROVIDERS = ("fasttx-triton", "fasttx-reference", "eager", "torch-default", "torch-math")
ORACLES = ("fasttx-reference", "torch-default")
FLOORS = ()
#: Providers that build the (B, H, Lq, Lk) score matrix, and the largest fp32 one allowed.
MATERIALISING = ("fasttx-reference", "eager", "compiled", "torch-math")
MAX_SCORE_BYTES = 8 * 2**30
PLOTS = [
    harness.Plot("transformer", x="seqlen_q", metric="tflops",
                 panels=("mode", "d_model", "layer"),
                 sweeps=("transformer-base", "transformer-big"), log_x=True),
    harness.Plot("long-sequence", x="seqlen_q", metric="tflops",
                 panels=("mode", "head_dim", "causal"), sweeps=("long-sequence",), log_x=True),
    harness.Plot("key-padding", x="padding", metric="tflops",
                 panels=("mode", "seqlen_q", "causal"), sweeps=("key-padding",)),
    harness.Plot("cross-attention", x="seqlen_q", metric="tflops",
                 panels=("mode", "padding"), sweeps=("cross-attention",), log_x=True),
]


def flops(shape: dict, mode: str) -> float:
    """FLOPs of one call by FlashAttention's count: forward 4 B H Lq Lk D (two matmuls),
    halved when causal; bwd 2.5x (five matmuls), fwd_bwd 3.5x. Dense, whatever the padding."""
    forward = 4 * shape["batch"] * shape["heads"] * shape["seqlen_q"] * shape["seqlen_k"] \
        * shape["head_dim"] * (0.5 if shape["causal"] else 1.0)
    return forward * {"fwd": 1.0, "bwd": 2.5, "fwd_bwd": 3.5}[mode]


# ---------------------------------------------------------------------------- cases


def attention_shape(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int,
                    causal: bool, padding: float | None, **extra) -> dict:
    """A case's shape dict (``extra`` first: the transformer sweeps' layer and d_model)."""
    return {**extra, "batch": batch, "heads": heads, "seqlen_q": seqlen_q,
            "seqlen_k": seqlen_k, "head_dim": head_dim, "causal": causal, "padding": padding}


def transformer_shapes(d_model: int, heads: int) -> list[dict]:
    """Encoder self, decoder self and cross attention of a Transformer layer, 25k tokens
    per batch; key padding 25%; cross-attention reads 5/4 as many source tokens."""
    shapes = []
    for seqlen in (64, 128, 256, 512, 1024):
        layers = {"encoder-self": (seqlen, False), "decoder-self": (seqlen, True),
                  "cross": (seqlen * 5 // 4, False)}
        for layer, (seqlen_k, causal) in layers.items():
            shapes.append(attention_shape(25000 // seqlen, heads, seqlen, seqlen_k,
                                          d_model // heads, causal, 0.25, layer=layer,
                                          d_model=d_model))
    return shapes


def _long_batch_heads(seqlen: int, head_dim: int) -> tuple[int, int]:
    """16k tokens per batch (at least one sequence), heads filling a width of 2048."""
    return max(1, 16384 // seqlen), 2048 // head_dim


def long_sequence_shapes() -> list[dict]:
    return [attention_shape(*_long_batch_heads(seqlen, head_dim), seqlen, seqlen, head_dim,
                            causal, None)
            for head_dim in (64, 128, 256) for causal in (False, True)
            for seqlen in (2**n for n in range(9, 16))]


def key_padding_shapes() -> list[dict]:
    return [attention_shape(*_long_batch_heads(seqlen, 128), seqlen, seqlen, 128, causal,
                            padding)
            for causal in (False, True) for seqlen in (1024, 4096, 16384)
            for padding in (0, 0.25, 0.5)]


def cross_attention_shapes() -> list[dict]:
    return [attention_shape(max(1, 16384 // max(seqlen_q, seqlen_k)), 16, seqlen_q, seqlen_k,
                            128, False, padding)
            for seqlen_q, seqlen_k in ((512, 4096), (4096, 512), (1024, 16384), (16384, 1024))
            for padding in (None, 0.25)]


def full_shapes() -> dict[str, list[dict]]:
    """Every sweep's shapes, by sweep."""
    return {"transformer-base": transformer_shapes(512, 8),
            "transformer-big": transformer_shapes(1024, 16),
            "long-sequence": long_sequence_shapes(), "key-padding": key_padding_shapes(),
            "cross-attention": cross_attention_shapes()}


def quick_shapes() -> dict[str, list[dict]]:
    """A few representative shapes of the full sweeps."""
    full = full_shapes()
    return {
        "transformer-base": [s for s in full["transformer-base"] if s["seqlen_q"] == 256],
        "long-sequence": [s for s in full["long-sequence"]
                          if s["seqlen_q"] == 4096 and s["head_dim"] in (64, 128)],
        "key-padding": [s for s in full["key-padding"]
                        if (s["seqlen_q"], s["padding"], s["causal"]) == (4096, 0.5, False)],
        "cross-attention": [s for s in full["cross-attention"]
                            if (s["seqlen_q"], s["seqlen_k"], s["padding"]) == (1024, 16384, 0.25)],
    }


def _case(sweep: str, mode: str, dtype: str, shape: dict) -> harness.Case:
    return harness.Case(op=OP, sweep=sweep, mode=mode, dtype=dtype, shape=shape,
                        flops=flops(shape, mode))


def cases(profile: str) -> list[harness.Case]:
    """full: every sweep in every mode, bf16; quick: a few shapes, fwd and bwd; smoke:
    four tiny fp32 cases (no mask; causal; causal + padding; cross with padding) spread
    over the modes, head dim 24 (not a power of two)."""
    if profile == "smoke":
        smoke = [("fwd", attention_shape(2, 2, 16, 16, 24, False, None)),
                 ("fwd_bwd", attention_shape(2, 2, 20, 20, 24, True, None)),
                 ("bwd", attention_shape(2, 2, 24, 24, 24, True, 0.25)),
                 ("fwd_bwd", attention_shape(2, 2, 16, 24, 24, False, 0.5))]
        return [_case("smoke", mode, "fp32", shape) for mode, shape in smoke]
    if profile not in harness.PROFILES:
        raise ValueError(f"profile must be one of {harness.PROFILES}, got {profile!r}")
    sweeps, modes = (full_shapes(), harness.MODES) if profile == "full" \
        else (quick_shapes(), ("fwd", "bwd"))
    return [_case(sweep, mode, "bf16", shape)
            for sweep, shapes in sweeps.items() for shape in shapes for mode in modes]


# ---------------------------------------------------------------------------- inputs


def key_padding_mask(batch: int, seqlen_k: int, padding: float,
                     generator: torch.Generator) -> torch.Tensor:
    """(B, 1, 1, Lk) bool, True for each row's first n keys, n uniform in
    [max(1, round(Lk (1 - 2 p))), Lk]: a fraction p of the keys padded on average."""
    shortest = max(1, round(seqlen_k * (1 - 2 * padding)))
    lengths = torch.randint(shortest, seqlen_k + 1, (batch,), generator=generator)
    return (torch.arange(seqlen_k) < lengths[:, None])[:, None, None, :]


def causal_mask(seqlen_q: int, seqlen_k: int, device) -> torch.Tensor:
    """(Lq, Lk) bool, True where key j <= query i (top-left aligned)."""
    return torch.ones(seqlen_q, seqlen_k, dtype=torch.bool, device=device).tril()


def make_inputs(case: harness.Case, device: str, seed: int) -> harness.InputSet:
    """inputs (q, k, v, mask): q (B, H, Lq, D), k and v (B, H, Lk, D) requiring grad, the
    key padding mask (B, 1, 1, Lk) or None; grads (dout,): (B, H, Lq, D)."""
    shape = case.shape
    generator = torch.Generator(device="cpu").manual_seed(seed)
    batch, heads, head_dim = shape["batch"], shape["heads"], shape["head_dim"]

    def draw(seqlen, grad=True):
        values = torch.randn(batch, heads, seqlen, head_dim, generator=generator)
        return values.to(device, case.torch_dtype).requires_grad_(grad)

    q, k, v = draw(shape["seqlen_q"]), draw(shape["seqlen_k"]), draw(shape["seqlen_k"])
    grad_out = draw(shape["seqlen_q"], grad=False)
    mask = None
    if shape["padding"] is not None:
        mask = key_padding_mask(batch, shape["seqlen_k"], shape["padding"], generator)
        mask = mask.to(device)
    return harness.InputSet(inputs=(q, k, v, mask), grads=(grad_out,))


# ---------------------------------------------------------------------------- providers


def eager_attention(q, k, v, mask, causal: bool):
    """Attention as plain PyTorch ops: scores in the inputs' dtype, -inf where a key may
    not be attended (padding ``mask`` (B, 1, 1, Lk) or None, and causal), softmax in fp32
    cast back, then @ v. (B, H, Lq, D)."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, Lq, Lk)
    allowed = mask
    if causal:
        lower = causal_mask(q.shape[-2], k.shape[-2], q.device)
        allowed = lower if allowed is None else allowed & lower
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def check_scores_fit(shape: dict) -> None:
    """Raises Unavailable when the fp32 (B, H, Lq, Lk) scores exceed MAX_SCORE_BYTES."""
    size = 4 * shape["batch"] * shape["heads"] * shape["seqlen_q"] * shape["seqlen_k"]
    if size > MAX_SCORE_BYTES:
        raise harness.Unavailable(f"its fp32 score matrix would take {size / 2**30:.1f} GiB "
                                  f"(limit {MAX_SCORE_BYTES / 2**30:.0f} GiB)")


def fold_causal_into_mask(input_set: harness.InputSet) -> harness.InputSet:
    """The same inputs with the padding mask (B, 1, 1, Lk) and the causal mask folded into
    one (B, 1, Lq, Lk) bool mask, for torch's SDPA."""
    q, k, v, mask = input_set.inputs
    folded = mask & causal_mask(q.shape[-2], k.shape[-2], mask.device)
    return harness.InputSet(inputs=(q, k, v, folded), grads=input_set.grads)


def _fasttx(backend: str, causal: bool) -> harness.Provider:
    import fasttx

    def call(q, k, v, mask):
        return fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                   backend=backend)
    return harness.Provider(call=call)


def _torch_sdpa(name: str, shape: dict, device: str) -> harness.Provider:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = TORCH_BACKENDS.get(name)
    if backend not in (None, "MATH") and device != "cuda":
        raise harness.Unavailable(f"torch's {backend} SDPA backend runs on CUDA GPUs only")
    causal, padded = shape["causal"], shape["padding"] is not None

    def call(q, k, v, mask):
        forced = sdpa_kernel(getattr(SDPBackend, backend)) if backend \
            else contextlib.nullcontext()
        with forced:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                  is_causal=causal and not padded)
    return harness.Provider(call=call, adapt=fold_causal_into_mask if causal and padded else None)


def _to_flash_layout(t: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> a contiguous leaf (B, L, H, D), requiring grad as ``t`` does."""
    return t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad)


def to_flash_layout(input_set: harness.InputSet) -> harness.InputSet:
    """inputs (q, k, v) in flash-attn's (B, L, H, D); grads (dout (B, Lq, H, D),)."""
    q, k, v, _ = input_set.inputs
    (grad_out,) = input_set.grads
    return harness.InputSet(inputs=tuple(_to_flash_layout(t) for t in (q, k, v)),
                            grads=(grad_out.transpose(1, 2).contiguous(),))


def unpad_keys(input_set: harness.InputSet) -> harness.InputSet:
    """The varlen layout: inputs (q (B*Lq, H, D), k and v (total_k, H, D) holding the valid
    keys only, cu_seqlens_q and cu_seqlens_k (B+1,) int32, max_seqlen_q, max_seqlen_k);
    grads (dout (B*Lq, H, D),). Query rows are never padded (the mask pads keys only)."""
    q, k, v, mask = input_set.inputs
    (grad_out,) = input_set.grads
    batch, heads, seqlen_q, head_dim = q.shape
    valid = mask[:, 0, 0, :]  # (B, Lk)
    lengths = valid.sum(-1, dtype=torch.int32)
    cu_seqlens_k = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    cu_seqlens_q = torch.arange(batch + 1, dtype=torch.int32, device=q.device) * seqlen_q

    def packed_keys(t):  # (B, H, Lk, D) -> (total_k, H, D), a leaf
        return t.detach().transpose(1, 2)[valid].requires_grad_(t.requires_grad)

    def packed_queries(t):  # (B, H, Lq, D) -> (B*Lq, H, D)
        flat = t.detach().transpose(1, 2).contiguous().view(batch * seqlen_q, heads, head_dim)
        return flat.requires_grad_(t.requires_grad)

    return harness.InputSet(
        inputs=(packed_queries(q), packed_keys(k), packed_keys(v), cu_seqlens_q, cu_seqlens_k,
                seqlen_q, int(lengths.max())),
        grads=(packed_queries(grad_out),))


def _first(out):
    """flash-attn-3 returns (out, lse) in some versions, out alone in others."""
    return out[0] if isinstance(out, tuple | list) else out


def flash_attn_provider(module, shape: dict) -> harness.Provider:
    """How a flash-attn module (``flash_attn`` or ``flash_attn_interface``: the same
    function names) runs a case: ``flash_attn_func`` without a mask, else
    ``flash_attn_varlen_func`` on the unpadded keys; outputs restored to (B, H, Lq, D)."""
    causal = shape["causal"]
    if causal and (shape["seqlen_q"] != shape["seqlen_k"] or shape["padding"]):
        raise harness.Unavailable(
            "flash-attn aligns its causal mask bottom-right when a sequence has fewer or more "
            "keys than queries (padding, Lq != Lk); fasttx and torch align it top-left")
    if shape["padding"] is None:
        return harness.Provider(
            call=lambda q, k, v: _first(module.flash_attn_func(q, k, v, causal=causal)),
            adapt=to_flash_layout, restore=lambda out, _original: out.transpose(1, 2))

    def call(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
        return _first(module.flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k,
                                                    max_seqlen_q, max_seqlen_k, causal=causal))

    def restore(out, original):  # (B*Lq, H, D) -> (B, H, Lq, D)
        batch, heads, seqlen_q, _ = original.inputs[0].shape
        return out.view(batch, seqlen_q, heads, -1).transpose(1, 2)
    return harness.Provider(call=call, adapt=unpad_keys, restore=restore)


def _flash_attn(name: str, shape: dict, device: str) -> harness.Provider:
    module_name = FLASH_ATTN_MODULES[name]
    if device != "cuda":
        raise harness.Unavailable(f"{module_name} runs on CUDA GPUs only")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - a wheel built for another torch fails anyhow
        raise harness.Unavailable(f"{module_name} is not importable ({error})") from None
    return flash_attn_provider(module, shape)


def provider(case: harness.Case, name: str, device: str) -> harness.Provider:
    """How ``name`` runs ``case``: ``call(q, k, v, mask)`` on :func:`make_inputs`' sets
    (or on the provider's own layout through ``adapt``)."""
    shape, causal = case.shape, case.shape["causal"]
    if name not in PROVIDERS:
        raise LookupError(f"{name!r} is not an attention provider ({', '.join(PROVIDERS)})")
    if name in MATERIALISING:
        check_scores_fit(shape)
    if name.startswith("fasttx-"):
        return _fasttx(name.removeprefix("fasttx-"), causal)
    if name in ("eager", "compiled"):
        def eager(q, k, v, mask):
            return eager_attention(q, k, v, mask, causal)
        if name == "eager":
            return harness.Provider(call=eager)
        return harness.Provider(call=harness.compiled(eager))
    if name in FLASH_ATTN_MODULES:
        return _flash_attn(name, shape, device)
    return _torch_sdpa(name, shape, device)
