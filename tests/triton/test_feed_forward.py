"""The Triton feed-forward kernels against the float64 reference, under the budget rule.

Every check compares ``fasttx.feed_forward(..., backend="triton")`` and its gradients with
the float64 reference backend (the same Philox seed where there is dropout), allowing 2x
(outputs) or 3x (gradients) the error of plain PyTorch in the same low precision.

Without a GPU the kernels run under Triton's interpreter on CPU tensors, in fp32 and fp16
(the interpreter's bf16 dot is wrong) and at small sizes with 16x16x16 tiles, so widths
that are not multiples of 16 exercise every masked tail; the GPU tests run the same checks
at realistic sizes in bf16, fp16 and fp32 (TF32 off).
"""

import contextlib
import zlib

import pytest
import torch

import fasttx
from benchmarks.static.launches import recorded_launches
from fasttx import random as philox
from fasttx.testing import (
    DEFAULT_FLOOR,
    assert_within_budget,
    gpu,
    gpu_backends,
    random_tensor,
    requires_triton,
    to_float64,
)
from tests.ops.test_feed_forward import ACTIVATIONS, make_weights, torch_feed_forward

pytestmark = requires_triton
triton_feed_forward = pytest.importorskip("fasttx.triton.feed_forward")
fixed_blocks = triton_feed_forward.fixed_blocks
triton_settings = pytest.importorskip("fasttx.triton._settings")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GRADIENT_NAMES = ("dx", "dw1", "db1", "dw2", "db2")


def seed_of(*key):
    return zlib.crc32(repr(key).encode()) % 1000  # reproducible across runs


def ffn_inputs(shape, hidden, dim_out, dtype, *, bias=True, seed=0, device=DEVICE):
    """x of ``shape`` (standard normal) and w1, b1, w2, b2 (weights ~ 1/sqrt(fan_in), so
    every value stays O(1)), all leaves on ``device`` that require grad."""
    x = random_tensor(*shape, dtype=dtype, device=device, seed=seed, requires_grad=True)
    weights = tuple(None if w is None else w.to(device).requires_grad_(True)
                    for w in make_weights(shape[-1], hidden, dim_out, dtype, bias))
    return x, weights


def keep_mask_after(seed, rows_shape, hidden, p, device=DEVICE):
    """The Philox keep mask (..., F) of the call made right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return philox.keep_mask(philox.draw_seed(device),
                            philox.counters((*rows_shape, hidden), device=device), p)


def run(x, weights, activation, backend, dropout_p=0.0, seed=0):
    torch.manual_seed(seed)
    return fasttx.feed_forward(x, *weights, activation=activation, dropout_p=dropout_p,
                               backend=backend)


def rounding_floor(expected, dtype):
    """Half an ulp of the largest expected value, in ``dtype``: rounding the result itself
    costs that much, and where only a few values are that large the baseline's max error
    can dodge it by luck (then 2x that error is less than the kernel's one rounding)."""
    largest = float(expected.detach().abs().max()) if expected.numel() else 0.0
    return max(DEFAULT_FLOOR[dtype], 0.5 * torch.finfo(dtype).eps * largest)


def check_within_budget(x, weights, activation, *, dropout_p=0.0, seed=0, backend="triton"):
    """y and every gradient of the fused kernels against the float64 reference (same
    dropout seed), with plain PyTorch in x's dtype (same keep mask) as the baseline."""
    dtype, hidden = x.dtype, weights[0].shape[0]
    inputs = [t for t in (x, *weights) if t is not None]
    names = [n for n, t in zip(GRADIENT_NAMES, (x, *weights), strict=True) if t is not None]
    wide = to_float64(x, *weights)
    y = run(x, weights, activation, backend, dropout_p, seed)
    expected = run(wide[0], wide[1:], activation, "reference", dropout_p, seed)
    keep = keep_mask_after(seed, x.shape[:-1], hidden, dropout_p, x.device) \
        if dropout_p > 0 else None
    baseline = torch_feed_forward(x, *weights, activation, keep, dropout_p)
    assert y.dtype == dtype and y.is_contiguous()
    assert y.shape == (*x.shape[:-1], weights[2].shape[0])
    assert_within_budget(y, expected, baseline, factor=2.0,
                         floor=rounding_floor(expected, dtype), name="y")

    grad = random_tensor(*y.shape, dtype=dtype, device=x.device, seed=seed + 99)
    got = torch.autograd.grad(y, inputs, grad)
    want = torch.autograd.grad(expected, [t for t in wide if t is not None], grad.double())
    base = torch.autograd.grad(baseline, inputs, grad)
    for name, g, w, b in zip(names, got, want, base, strict=True):
        assert g.dtype == dtype, name
        assert_within_budget(g, w, b, factor=3.0, floor=rounding_floor(w, dtype), name=name)


# ---- every activation, dtype and bias setting at one small shape ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_matches_reference_within_budget(activation, bias, dtype):
    # 7 tokens, D = 24 and F = 40 (K tails of the 16-wide tiles), D_out = 20 != D
    x, weights = ffn_inputs((7, 24), 40, 20, dtype, bias=bias, seed=seed_of(activation, bias))
    check_within_budget(x, weights, activation, seed=seed_of(activation, bias, dtype))


# ---- shapes: token counts, odd and tiny widths, leading dims ----

# (x's shape, F, D_out, activation, dtype, bias, dropout_p)
SHAPE_CASES = [
    ((1, 24), 40, 24, "gelu", torch.float16, True, 0.0),          # one token
    ((257, 8), 24, 8, "relu", torch.float32, True, 0.0),          # K = N has a tail in dW
    ((257, 8), 24, 12, "gelu_tanh", torch.float16, False, 0.0),
    ((1000, 6), 10, 6, "relu", torch.float16, True, 0.0),         # many tokens, small widths
    ((1000, 6), 10, 8, "gelu_tanh", torch.float32, True, 0.1),    # ... and dropout
    ((5, 200), 130, 200, "gelu", torch.float32, True, 0.0),       # d_model 200 / d_ff 130
    ((9, 5), 7, 5, "gelu_tanh", torch.float32, True, 0.0),        # widths below 16
    ((9, 5), 7, 3, "relu", torch.float16, False, 0.0),
    ((2, 5, 24), 40, 24, "relu", torch.float16, True, 0.0),       # (B, L, D)
    ((3, 4, 2, 12), 17, 9, "gelu", torch.float32, False, 0.0),
]


@pytest.mark.parametrize("case", SHAPE_CASES, ids=lambda c: "x".join(map(str, c[0]))
                         + f"-{c[1]}-{c[2]}-{c[3]}-{str(c[4])[6:]}-{'b' if c[5] else 'nob'}"
                         + f"-p{c[6]}")
def test_shapes_within_budget(case):
    shape, hidden, dim_out, activation, dtype, bias, dropout_p = case
    seed = seed_of(case)
    x, weights = ffn_inputs(shape, hidden, dim_out, dtype, bias=bias, seed=seed)
    check_within_budget(x, weights, activation, dropout_p=dropout_p, seed=seed)


# ---- tiles ----

@pytest.mark.parametrize("activation", ["relu", "gelu_tanh"])
def test_results_do_not_depend_on_the_tiles(activation):
    """What autotuning may pick changes the summation order, never the result or the
    dropout mask: unequal tiles, K steps of 16 and 32, grouped and ungrouped rows."""
    x, weights = ffn_inputs((37, 24), 40, 20, torch.float32, seed=5)
    inputs = [x, *weights]
    results = []
    for blocks in (None, (16, 32, 16), (32, 16, 32, 1)):
        with fixed_blocks(*blocks) if blocks else contextlib.nullcontext():
            y = run(x, weights, activation, "triton", dropout_p=0.3, seed=6)
            results.append((y, torch.autograd.grad(y, inputs, torch.ones_like(y))))
    (y, grads), *others = results
    for other_y, other_grads in others:
        torch.testing.assert_close(other_y, y, rtol=1e-5, atol=1e-5)
        for name, got, want in zip(GRADIENT_NAMES, other_grads, grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)


def test_fixed_blocks_restores_the_interpreter_tiles():
    with fixed_blocks(16, 32, 16):
        with fixed_blocks(32, 16, 32, group_m=1):
            assert triton_feed_forward._fixed_blocks == {
                "BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 1}
        assert triton_feed_forward._fixed_blocks["BLOCK_N"] == 32
    assert triton_feed_forward._fixed_blocks is None


# ---- dropout ----

@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_dropout_mask_is_recoverable_and_kept_elements_are_scaled(activation):
    """With w2 = I and no b2, y is the hidden activation itself: zero where the Philox mask
    drops, act(a) / (1 - p) where it keeps."""
    p = 0.4
    x, (w1, b1, _, _) = ffn_inputs((23, 24), 40, 40, torch.float32, seed=7)
    identity = torch.eye(40, device=DEVICE)
    y = run(x, (w1, b1, identity, None), activation, "triton", dropout_p=p, seed=8)
    keep = keep_mask_after(8, (23,), 40, p)
    assert keep.any() and not keep.all()
    assert (y[~keep] == 0).all()
    a = torch.nn.functional.linear(x.double(), w1.double(), b1.double())
    expected = ACTIVATIONS[activation](a) / (1 - p)
    torch.testing.assert_close(y[keep].double(), expected[keep], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_dropout_matches_the_reference_under_the_same_seed(activation, dtype):
    x, weights = ffn_inputs((37, 24), 40, 20, dtype, seed=seed_of("dropout", activation))
    check_within_budget(x, weights, activation, dropout_p=0.25,
                        seed=seed_of("dropout", activation, dtype))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_dropout_is_reproducible_under_manual_seed(activation):
    x, weights = ffn_inputs((19, 24), 40, 24, torch.float32, seed=9)
    inputs = [x, *weights]
    grad = random_tensor(19, 24, device=DEVICE, seed=10)
    results = []
    for seed in (10, 10, 11):
        y = run(x, weights, activation, "triton", dropout_p=0.5, seed=seed)
        results.append((y, torch.autograd.grad(y, inputs, grad)))
    (first, first_grads), (second, second_grads), (third, third_grads) = results
    assert torch.equal(first, second) and not torch.equal(first, third)
    for name, a, b, c in zip(GRADIENT_NAMES, first_grads, second_grads, third_grads,
                             strict=True):
        assert torch.equal(a, b), name
        if name != "db2":  # the sum of dy's rows: the one gradient the mask doesn't touch
            assert not torch.equal(a, c), name


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_saved_output_is_h_for_relu_and_the_preactivation_for_gelu(activation):
    """relu saves h = dropout(relu(a)), whose sign is both masks, so its backward doesn't
    read the Philox stream: another seed gives the same gradients. gelu saves a and
    regenerates the mask from the seed."""
    p = 0.3
    x, (w1, b1, w2, b2) = ffn_inputs((21, 24), 40, 20, torch.float32, seed=12)
    seed, other_seed = (torch.tensor([s], device=DEVICE) for s in (1234, 4321))
    args = (x.detach(), w1.detach(), b1.detach(), w2.detach(), b2.detach())
    y, saved = torch.ops.fasttx.feed_forward_forward(*args, activation, seed, p, "triton")
    expected_y, _ = torch.ops.fasttx.feed_forward_forward(*to_float64(*args), activation, seed,
                                                          p, "reference")
    torch.testing.assert_close(y.double(), expected_y, rtol=1e-5, atol=1e-5)
    a = torch.nn.functional.linear(*to_float64(x, w1, b1))
    if activation == "relu":
        keep = philox.keep_mask(seed, philox.counters((21, 40), device=DEVICE), p)
        assert (saved[~keep] == 0).all()
        expected_saved = torch.relu(a) * keep / (1 - p)
    else:
        expected_saved = a
    torch.testing.assert_close(saved.double(), expected_saved.detach(), rtol=1e-5, atol=1e-5)

    grad_y = random_tensor(21, 20, device=DEVICE, seed=13)
    grads, other_grads = (
        torch.ops.fasttx.feed_forward_backward(grad_y, *args, saved, activation, s, p,
                                               "triton") for s in (seed, other_seed))
    for name, got, other in zip(GRADIENT_NAMES, grads, other_grads, strict=True):
        if activation == "relu":
            assert torch.equal(got, other), name
        elif name != "db2":  # da and the regenerated h depend on the mask, dy doesn't
            assert not torch.equal(got, other), name


# ---- layouts ----

def test_strided_and_transposed_inputs_are_read_in_place():
    """x a slice with a non-unit column stride, w1 and w2 transposed views of (D, F) and
    (F, D_out) tensors: correct results, and the kernels get the views, not copies."""
    dtype = torch.float16
    x_wide = random_tensor(13, 48, dtype=dtype, device=DEVICE, seed=14, requires_grad=True)
    _, (w1, b1, w2, b2) = ffn_inputs((13, 24), 40, 20, dtype, seed=14)
    w1_t = w1.detach().t().contiguous().requires_grad_(True)  # (D, F)
    w2_t = w2.detach().t().contiguous().requires_grad_(True)  # (F, D_out)
    x = x_wide[:, 1::2]
    assert not x.is_contiguous() and not w1_t.t().is_contiguous()
    with recorded_launches(triton_feed_forward) as launches:
        y = fasttx.feed_forward(x, w1_t.t(), b1, w2_t.t(), b2, activation="gelu",
                                backend="triton")
    kind, args, _ = launches[0]
    assert kind == "up"
    assert args[0].data_ptr() == x.data_ptr() and args[0].stride() == x.stride()
    assert args[1].data_ptr() == w1_t.data_ptr() and args[1].stride() == (1, 40)

    leaves = (x_wide, w1_t, b1, w2_t, b2)
    wide = to_float64(*leaves)
    expected = fasttx.feed_forward(wide[0][:, 1::2], wide[1].t(), wide[2], wide[3].t(), wide[4],
                                   activation="gelu", backend="reference")
    baseline = torch_feed_forward(x, w1_t.t(), b1, w2_t.t(), b2, "gelu")
    assert_within_budget(y, expected, baseline, factor=2.0,
                         floor=rounding_floor(expected, dtype), name="y")
    grad = random_tensor(13, 20, dtype=dtype, device=DEVICE, seed=15)
    grads = torch.autograd.grad(y, leaves, grad)
    assert (grads[0][:, 0::2] == 0).all()  # the columns x skips
    for name, got, want, base in zip(
            GRADIENT_NAMES, grads, torch.autograd.grad(expected, wide, grad.double()),
            torch.autograd.grad(baseline, leaves, grad), strict=True):
        assert_within_budget(got, want, base, factor=3.0, floor=rounding_floor(want, dtype),
                             name=name)


# biases may be views (slices of packed parameters): the launcher makes them dense
def test_strided_biases_are_read_through_their_strides():
    dtype = torch.float32
    x, (w1, b1, w2, b2) = ffn_inputs((9, 24), 40, 20, dtype, seed=20)
    b1_packed = torch.stack([b1.detach(), torch.zeros_like(b1)], 1).requires_grad_(True)
    b2_packed = torch.stack([b2.detach(), torch.zeros_like(b2)], 1).requires_grad_(True)
    b1_view, b2_view = b1_packed[:, 0], b2_packed[:, 0]  # stride 2
    assert b1_view.stride() == (2,) and b2_view.stride() == (2,)
    leaves = (x, w1, b1_packed, w2, b2_packed)
    y = fasttx.feed_forward(x, w1, b1_view, w2, b2_view, activation="gelu", backend="triton")
    wide = to_float64(*leaves)
    expected = fasttx.feed_forward(wide[0], wide[1], wide[2][:, 0], wide[3], wide[4][:, 0],
                                   activation="gelu", backend="reference")
    baseline = torch_feed_forward(x, w1, b1_view, w2, b2_view, "gelu")
    assert_within_budget(y, expected, baseline, factor=2.0,
                         floor=rounding_floor(expected, dtype), name="y")
    grad = random_tensor(9, 20, dtype=dtype, device=DEVICE, seed=21)
    for name, got, want, base in zip(
            GRADIENT_NAMES, torch.autograd.grad(y, leaves, grad),
            torch.autograd.grad(expected, wide, grad.double()),
            torch.autograd.grad(baseline, leaves, grad), strict=True):
        assert_within_budget(got, want, base, factor=3.0, floor=rounding_floor(want, dtype),
                             name=name)


def test_zero_tokens_give_empty_outputs_and_zero_weight_gradients():
    for shape, activation, p in (((0, 24), "relu", 0.0), ((2, 0, 24), "gelu", 0.2)):
        x, weights = ffn_inputs(shape, 40, 20, torch.float32, seed=16)
        y = run(x, weights, activation, "triton", dropout_p=p, seed=17)
        assert y.shape == (*shape[:-1], 20)
        grads = torch.autograd.grad(y.sum(), [x, *weights])
        assert grads[0].shape == x.shape
        for name, g, w in zip(GRADIENT_NAMES[1:], grads[1:], weights, strict=True):
            assert g.shape == w.shape and torch.equal(g, torch.zeros_like(w)), name


# ---- torch.compile, refusals (opcheck: tests/ops/test_library.py) ----

def test_compiles_fullgraph():
    x, (w1, b1, w2, b2) = ffn_inputs((2, 5, 24), 40, 20, torch.float32, seed=18)

    def fn(x, w1, b1, w2, b2):
        return fasttx.feed_forward(x, w1, b1, w2, b2, activation="gelu_tanh", dropout_p=0.2,
                                   backend="triton")

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    inputs = (x, w1, b1, w2, b2)
    torch.manual_seed(0)  # the Philox seed is drawn inside the compiled graph
    out = compiled(*inputs)
    torch.manual_seed(0)
    expected = fn(*inputs)
    torch.testing.assert_close(out, expected)
    for name, got, want in zip(GRADIENT_NAMES, torch.autograd.grad(out.sum(), inputs),
                               torch.autograd.grad(expected.sum(), inputs), strict=True):
        torch.testing.assert_close(got, want, msg=name)


def test_float64_is_refused_with_the_dtype_named():
    x, weights = ffn_inputs((4, 8), 16, 8, torch.float64, seed=19)
    with pytest.raises(fasttx.BackendUnavailableError, match="float64"):
        fasttx.feed_forward(x, *weights, backend="triton")
    assert "float64" in triton_feed_forward.unsupported_reason(dtype=torch.float64)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert triton_feed_forward.unsupported_reason(dtype=dtype) is None


# ---- GPU: realistic sizes in bf16, fp16 and fp32 (skipped without a CUDA GPU) ----

# (x's shape, F, D_out): Transformer base (4096 tokens), and d_model 200 / d_ff 130
GPU_SHAPES = [((4, 1024, 512), 2048, 512), ((4, 257, 200), 130, 200)]


@contextlib.contextmanager
def tf32_disabled():
    """fp32 matmuls in full precision, for torch and (through the same setting) the kernels."""
    matmul = torch.backends.cuda.matmul
    name, value = (("fp32_precision", "ieee") if hasattr(matmul, "fp32_precision")
                   else ("allow_tf32", False))
    previous = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, (*s[0], *s[1:]))))
@pytest.mark.parametrize("backend", gpu_backends)
def test_gpu_matches_reference_within_budget(backend, shape, activation, dtype):
    x_shape, hidden, dim_out = shape
    seed = seed_of("gpu", shape, activation)
    x, weights = ffn_inputs(x_shape, hidden, dim_out, dtype, seed=seed, device="cuda")
    check_within_budget(x, weights, activation, dropout_p=0.1, seed=seed, backend=backend)


@gpu
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, (*s[0], *s[1:]))))
@pytest.mark.parametrize("backend", gpu_backends)
def test_gpu_fp32_without_tf32_matches_reference_within_budget(backend, shape, activation):
    x_shape, hidden, dim_out = shape
    seed = seed_of("gpu fp32", shape, activation)
    x, weights = ffn_inputs(x_shape, hidden, dim_out, torch.float32, seed=seed, device="cuda")
    with tf32_disabled():
        assert triton_settings.fp32_dot_precision(torch.float32) == "ieee"
        check_within_budget(x, weights, activation, dropout_p=0.1, seed=seed, backend=backend)
