"""torch.library.opcheck over every op declared in fasttx/ops/library.py (``SCHEMAS``).

Each op, forward and backward, has a builder of small sample argument lists: odd sizes, head
dims that are not powers of two, every optional input both given and None, dropout on and
off, and the layouts the functional API and the autograd formulas pass (head-split strided
views, stride-0 broadcast masks, transposed rows, empty packed sequences). A backward op's
samples come from the same backend's forward op, so they hold the saved tensors that backend
writes (the Triton log-sum-exp is base 2). opcheck checks the schema, the autograd
registration, the fake (meta) implementation against the real one (shapes, strides, dtypes)
and AOT dispatch with dynamic shapes, through the autograd formula where an input requires
grad. Run on the reference backend in float64 and on the Triton backend in float32 (on CPU
tensors under the Triton interpreter, so tiny sizes; on a GPU when there is one), where the
test also checks that Triton kernels were launched. A test checks that every op in
``SCHEMAS`` has samples, so a new op can't go without an opcheck.
"""

import math

import pytest
import torch

import fasttx  # noqa: F401 - registers the ops
from fasttx.ops.library import ACTIVATIONS, SCHEMAS
from fasttx.testing import (
    attention_inputs,
    key_padding_mask,
    random_tensor,
    requires_triton,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# backend -> (dtype, device) of its samples: the reference in float64 on CPU; Triton in
# float32 (the interpreter's bf16 dot is wrong, and fp16 would add nothing opcheck sees).
SETTINGS = {"reference": (torch.float64, "cpu"), "triton": (torch.float32, DEVICE)}
# The Triton module whose kernel launches each op goes through (varlen shares attention's).
TRITON_MODULES = {"attention": "attention", "varlen_attention": "attention",
                  "add_layer_norm": "add_layer_norm", "feed_forward": "feed_forward"}


def seed_tensor(device, value=7):
    """A fixed Philox seed, int64 (1,) like fasttx.random.draw_seed's."""
    return torch.tensor([value], dtype=torch.int64, device=device)


def detached(args):
    """The arguments with every tensor detached (views keep their strides)."""
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


def forward_outputs(op_name, args):
    """The outputs of forward op ``op_name`` on ``args``, without autograd."""
    with torch.no_grad():
        return getattr(torch.ops.fasttx, op_name)(*detached(args))


# ---- samples: builder(backend) -> [(name, args)], args ending with the backend ----

def attention_forward_samples(backend):
    dtype, device = SETTINGS[backend]
    samples = []
    # A float mask that gets a gradient, dropout, causal.
    q, k, v = attention_inputs(2, 2, 3, 5, 12, value_dim=6, dtype=dtype, device=device, seed=1,
                               requires_grad=True)
    mask = random_tensor(2, 2, 3, 5, dtype=dtype, device=device, seed=4, requires_grad=True)
    samples.append(("float_mask+dropout+causal",
                    (q, k, v, mask, seed_tensor(device), 0.1, True, 0.3, backend)))
    # Grouped-query heads and a bool key-padding mask, one sequence fully masked.
    q, k, v = attention_inputs(2, 4, 4, 7, 6, kv_heads=2, dtype=dtype, device=device, seed=2,
                               requires_grad=True)
    padding = key_padding_mask([5, 0], 7, device=device).expand(2, 4, 4, 7)
    samples.append(("gqa+bool_mask+empty_rows",
                    (q, k, v, padding, None, 0.0, False, 1 / math.sqrt(6), backend)))
    # Head-split views of one (B, L, 3 * H * D) projection, and a transposed float mask
    # broadcast over the heads (stride 0) that gets a gradient, as the modules pass them.
    x = random_tensor(2, 5, 3 * 2 * 6, dtype=dtype, device=device, seed=3, requires_grad=True)
    q, k, v = (t.unflatten(-1, (2, 6)).transpose(1, 2) for t in x.chunk(3, dim=-1))
    mask = random_tensor(2, 1, 5, 5, dtype=dtype, device=device, seed=5).transpose(-1, -2)
    mask.requires_grad_(True)
    samples.append(("strided_views+broadcast_mask+dropout",
                    (q, k, v, mask.expand(2, 2, 5, 5), seed_tensor(device, 1), 0.1, True, 0.3,
                     backend)))
    return samples


def attention_backward_samples(backend):
    samples = []
    for name, args in attention_forward_samples(backend):
        q, k, v, mask, seed, dropout_p, is_causal, scale, _ = detached(args)
        out, lse = forward_outputs("attention_forward", args)
        grad_out = random_tensor(*out.shape, dtype=out.dtype, device=out.device, seed=6)
        mask_needs_grad = args[3] is not None and args[3].requires_grad
        samples.append((name, (grad_out, q, k, v, mask, out, lse, seed, dropout_p, is_causal,
                               scale, mask_needs_grad, backend)))
    return samples


def packed(lengths, heads, dim, dtype, device, seed):
    """(total, H, E) rows (requiring grad) and the int32 cu_seqlens of ``lengths``."""
    rows = random_tensor(sum(lengths), heads, dim, dtype=dtype, device=device, seed=seed,
                         requires_grad=True)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                              device=device)
    return rows, cu_seqlens


def varlen_attention_forward_samples(backend):
    dtype, device = SETTINGS[backend]
    samples = []
    # Grouped-query heads, dropout, causal within each sequence.
    q, cu_q = packed([2, 3], 2, 6, dtype, device, seed=1)
    (k, cu_k), (v, _) = packed([3, 1], 1, 6, dtype, device, 2), packed([3, 1], 1, 6, dtype,
                                                                          device, 3)
    samples.append(("gqa+dropout+causal",
                    (q, k, v, cu_q, cu_k, 3, 3, seed_tensor(device), 0.2, True, 0.5, backend)))
    # Empty sequences on either side, a value dim other than the key dim, and k a view of
    # a packed (T, 2, H, E) projection (row stride 2 * H * E), as the models split theirs.
    q, cu_q = packed([4, 0, 1], 3, 12, dtype, device, seed=4)
    projection, cu_k = packed([2, 3, 0], 2 * 3, 12, dtype, device, seed=5)
    k = projection.unflatten(1, (2, 3))[:, 0]
    v, _ = packed([2, 3, 0], 3, 10, dtype, device, seed=6)
    samples.append(("empty_sequences+projection_views",
                    (q, k, v, cu_q, cu_k, 4, 3, None, 0.0, False, 0.3, backend)))
    return samples


def varlen_attention_backward_samples(backend):
    samples = []
    for name, args in varlen_attention_forward_samples(backend):
        q, k, v, cu_q, cu_k, max_q, max_k, seed, dropout_p, is_causal, scale, _ = detached(args)
        out, lse = forward_outputs("varlen_attention_forward", args)
        grad_out = random_tensor(*out.shape, dtype=out.dtype, device=out.device, seed=7)
        samples.append((name, (grad_out, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, seed,
                               dropout_p, is_causal, scale, backend)))
    return samples


def add_layer_norm_forward_samples(backend):
    dtype, device = SETTINGS[backend]
    x, residual = (random_tensor(5, 12, dtype=dtype, device=device, seed=i, requires_grad=True)
                   for i in (1, 2))
    weight, bias = (random_tensor(12, dtype=dtype, device=device, seed=i, requires_grad=True)
                    for i in (3, 4))
    # Transposed (column-major) rows, and x in lower precision than the residual stream.
    x_t, residual_t = (random_tensor(18, 7, dtype=dtype, device=device, seed=i,
                                     requires_grad=True).t() for i in (5, 6))
    weight_t = random_tensor(18, dtype=dtype, device=device, seed=9, requires_grad=True)
    low = {torch.float64: torch.float32, torch.float32: torch.float16}[dtype]
    x_low = random_tensor(3, 10, dtype=low, device=device, seed=7, requires_grad=True)
    residual_high = random_tensor(3, 10, dtype=dtype, device=device, seed=8, requires_grad=True)
    return [
        ("residual+affine+dropout", (x, residual, weight, bias, 1e-5, seed_tensor(device), 0.3,
                                     backend)),
        ("x_only", (x, None, None, None, 1e-5, None, 0.0, backend)),
        ("transposed_rows+weight_only", (x_t, residual_t, weight_t, None, 1e-6, None, 0.0,
                                         backend)),
        ("low_precision_x", (x_low, residual_high, None, None, 1e-5, seed_tensor(device), 0.1,
                             backend)),
    ]


def add_layer_norm_backward_samples(backend):
    samples = []
    for name, args in add_layer_norm_forward_samples(backend):
        _, residual, weight, bias, _, seed, dropout_p, _ = detached(args)
        y, residual_out, mean, rstd = forward_outputs("add_layer_norm_forward", args)
        grad_y = random_tensor(*y.shape, dtype=y.dtype, device=y.device, seed=9)
        # The stream's gradient when the caller returned it (pre-norm stacks), else None.
        grad_residual_out = None if residual is None else random_tensor(
            *residual_out.shape, dtype=residual_out.dtype, device=y.device, seed=10)
        samples.append((name, (grad_y, grad_residual_out, residual_out, weight, bias, mean,
                               rstd, seed, dropout_p, residual is not None, backend)))
    return samples


def feed_forward_forward_samples(backend):
    dtype, device = SETTINGS[backend]

    def tensor(*shape, seed):
        return random_tensor(*shape, dtype=dtype, device=device, seed=seed,
                             scale=shape[-1] ** -0.5, requires_grad=True)

    x = tensor(5, 6, seed=1)
    w1, b1, w2, b2 = tensor(10, 6, seed=2), tensor(10, seed=3), tensor(7, 10, seed=4), \
        tensor(7, seed=5)
    samples = [(f"{activation}+biases+dropout",
                (x, w1, b1, w2, b2, activation, seed_tensor(device), 0.3, backend))
               for activation in ACTIVATIONS]
    # No biases; x and w1 transposed views (the layouts the functional API accepts).
    x_t, w1_t = tensor(6, 5, seed=6).t(), tensor(6, 10, seed=7).t()
    samples.append(("gelu+no_bias+dropout+transposed",
                    (x_t, w1_t, None, w2, None, "gelu", seed_tensor(device, 2), 0.1, backend)))
    return samples


def feed_forward_backward_samples(backend):
    samples = []
    for name, args in feed_forward_forward_samples(backend):
        x, w1, b1, w2, b2, activation, seed, dropout_p, _ = detached(args)
        y, saved = forward_outputs("feed_forward_forward", args)
        grad_y = random_tensor(*y.shape, dtype=y.dtype, device=y.device, seed=8)
        samples.append((name, (grad_y, x, w1, b1, w2, b2, saved, activation, seed, dropout_p,
                               backend)))
    return samples


SAMPLES = {
    "attention_forward": attention_forward_samples,
    "attention_backward": attention_backward_samples,
    "varlen_attention_forward": varlen_attention_forward_samples,
    "varlen_attention_backward": varlen_attention_backward_samples,
    "add_layer_norm_forward": add_layer_norm_forward_samples,
    "add_layer_norm_backward": add_layer_norm_backward_samples,
    "feed_forward_forward": feed_forward_forward_samples,
    "feed_forward_backward": feed_forward_backward_samples,
}


def test_every_op_has_samples():
    assert set(SAMPLES) == set(SCHEMAS)


def run_opcheck(op_name, backend):
    samples = SAMPLES[op_name](backend)
    assert samples
    op = getattr(torch.ops.fasttx, op_name).default
    for name, args in samples:
        assert args[-1] == backend
        try:
            torch.library.opcheck(op, args)
        except Exception as error:
            error.add_note(f"sample {name!r} of {op_name} on the {backend} backend")
            raise


@pytest.mark.parametrize("op_name", sorted(SCHEMAS))
def test_opcheck_reference(op_name):
    run_opcheck(op_name, "reference")


@requires_triton
@pytest.mark.parametrize("op_name", sorted(SCHEMAS))
def test_opcheck_triton(op_name):
    from benchmarks.static.launches import recorded_launches

    module = pytest.importorskip(f"fasttx.triton.{TRITON_MODULES[op_name.rsplit('_', 1)[0]]}")
    with recorded_launches(module) as launches:
        run_opcheck(op_name, "triton")
    assert launches, f"no Triton kernel ran for {op_name}"


@pytest.mark.parametrize("op", sorted(name.removesuffix("_forward") for name in SCHEMAS
                                      if name.endswith("_forward")))
def test_double_backward_is_refused_naming_the_op(op):
    """A first derivative taken with create_graph=True works; differentiating it again
    raises an error that names the op (not torch's hint to call register_autograd)."""
    _, args = SAMPLES[f"{op}_forward"]("reference")[0]
    args = tuple(a.detach().requires_grad_(True) if isinstance(a, torch.Tensor)
                 and a.is_floating_point() else a for a in args)
    inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    out = getattr(torch.ops.fasttx, f"{op}_forward")(*args)[0]
    grads = torch.autograd.grad(out.sum(), inputs, create_graph=True)
    with pytest.raises(RuntimeError, match=f"fasttx's {op} op .* does not support double "
                                           f"backward"):
        sum(g.sum() for g in grads).backward()
