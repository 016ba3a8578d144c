"""The Triton add + dropout + LayerNorm kernels against the float64 reference, under the
budget rule.

Without a GPU the kernels run under Triton's interpreter on CPU tensors, in fp32 and fp16
(never bf16 there) and at small sizes; the wide-row (column-chunked) path is forced at those
sizes with ``column_chunks``. The GPU tests run the same checks at realistic sizes in bf16
and fp16, hidden sizes on both sides of ``MAX_REGISTER_ROW`` included.
"""

import contextlib
import zlib

import pytest
import torch

import fasttx
from benchmarks.static.launches import recorded_launches
from fasttx import random as philox
from fasttx.testing import (
    assert_within_budget,
    gpu,
    gpu_backends,
    random_tensor,
    requires_triton,
    to_float64,
)
from tests.ops.test_add_layer_norm import constant_rows, torch_add_layer_norm

pytestmark = requires_triton
triton_add_layer_norm = pytest.importorskip("fasttx.triton.add_layer_norm")
column_chunks = triton_add_layer_norm.column_chunks

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
EPS = 1e-5

# Odd row counts N with a small hidden size, then odd hidden sizes D with a few rows; both
# leading-shape kinds: (tokens, D) and (B, L, D).
SHAPES = [
    (1, 33), (7, 40), (257, 64), (8, 125, 24), (4099, 16),
    (13, 1), (3, 5, 7), (11, 97), (2, 9, 200), (9, 1000),
]


def seed_of(*key):
    return zlib.crc32(repr(key).encode()) % 1000  # reproducible across runs


def layer_norm_inputs(shape, dtype, *, seed, residual=True, weight=True, bias=True,
                      residual_dtype=None, offset=0.0):
    """x (scale 2), a residual around ``offset``, weight around 1 and bias, all leaves that
    require grad (None where not wanted)."""
    dim = shape[-1]

    def leaf(values, dtype):
        return values.to(device=DEVICE, dtype=dtype).requires_grad_(True)

    x = leaf(random_tensor(*shape, dtype=torch.float64, seed=seed, scale=2.0), dtype)
    r = leaf(random_tensor(*shape, dtype=torch.float64, seed=seed + 1) + offset,
             residual_dtype or dtype) if residual else None
    w = leaf(1 + random_tensor(dim, dtype=torch.float64, seed=seed + 2, scale=0.5), dtype) \
        if weight else None
    b = leaf(random_tensor(dim, dtype=torch.float64, seed=seed + 3), dtype) if bias else None
    return x, r, w, b


def triton_add_layer_norm_call(x, residual, weight, bias, *, eps=EPS, dropout_p=0.0,
                               torch_seed=0, backend="triton"):
    """(y, s) with the dropout seed drawn after ``torch.manual_seed(torch_seed)``."""
    torch.manual_seed(torch_seed)
    return fasttx.add_layer_norm(x, residual, weight, bias, eps, dropout_p=dropout_p,
                                 return_residual=True, backend=backend)


def keep_mask(shape, p, torch_seed):
    """The Philox keep mask of a call made after ``torch.manual_seed(torch_seed)``."""
    torch.manual_seed(torch_seed)
    return philox.keep_mask(philox.draw_seed(DEVICE), philox.counters(shape, device=DEVICE), p)


def check_within_budget(x, residual, weight, bias, *, eps=EPS, dropout_p=0.0, seed=0,
                        backend="triton"):
    """y, s and every gradient (with gradients flowing into both y and s) of the fused
    kernels against the float64 reference, with plain PyTorch in the inputs' dtypes as the
    baseline. Returns the Triton outputs and gradients."""
    inputs = [t for t in (x, residual, weight, bias) if t is not None]
    stream_dtype = x.dtype if residual is None else residual.dtype
    y, s = triton_add_layer_norm_call(x, residual, weight, bias, eps=eps, dropout_p=dropout_p,
                                      torch_seed=seed, backend=backend)
    assert y.dtype == x.dtype and s.dtype == stream_dtype
    assert y.shape == x.shape and s.shape == x.shape
    assert y.is_contiguous() and s.is_contiguous()

    wide = to_float64(x, residual, weight, bias)
    wide_inputs = [t for t in wide if t is not None]
    expected_y, expected_s = triton_add_layer_norm_call(*wide, eps=eps, dropout_p=dropout_p,
                                                        torch_seed=seed, backend="reference")
    keep = keep_mask(x.shape, dropout_p, seed) if dropout_p > 0 else None
    # plain PyTorch: the add in the stream dtype, LayerNorm in it too (its parameters cast
    # to it when the stream is kept in fp32), y cast back to x's dtype
    affine = [None if t is None else t.to(stream_dtype) for t in (weight, bias)]
    baseline_y, baseline_s = torch_add_layer_norm(x, residual, *affine, eps, keep, dropout_p)
    baseline_y = baseline_y.to(x.dtype)
    assert_within_budget(y, expected_y, baseline_y, factor=2.0, name="y")
    assert_within_budget(s, expected_s, baseline_s, factor=2.0, name="s")

    grad_y = random_tensor(*y.shape, dtype=y.dtype, device=DEVICE, seed=seed + 7)
    grad_s = random_tensor(*s.shape, dtype=s.dtype, device=DEVICE, seed=seed + 8)
    got = torch.autograd.grad((y, s), inputs, (grad_y, grad_s))
    want = torch.autograd.grad((expected_y, expected_s), wide_inputs,
                               (grad_y.double(), grad_s.double()))
    base = torch.autograd.grad((baseline_y, baseline_s), inputs, (grad_y, grad_s))
    names = [name for name, t in zip(("dx", "dresidual", "dweight", "dbias"),
                                     (x, residual, weight, bias), strict=True) if t is not None]
    for name, t, g, w, b in zip(names, inputs, got, want, base, strict=True):
        assert g.dtype == t.dtype, name
        assert_within_budget(g, w, b, factor=3.0, name=name)
    return (y, s), got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_reference_within_budget(shape, dtype):
    seed = seed_of(shape, dtype)
    check_within_budget(*layer_norm_inputs(shape, dtype, seed=seed), seed=seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_large_mean_offset_keeps_the_variance_accurate(dtype):
    """A residual stream far from zero: E[s^2] - E[s]^2 would cancel catastrophically."""
    offset = 1000.0 if dtype == torch.float32 else 100.0
    inputs = layer_norm_inputs((21, 300), dtype, seed=5, offset=offset)
    check_within_budget(*inputs, seed=5)
    with column_chunks(64):
        check_within_budget(*inputs, seed=5)


@pytest.mark.parametrize("return_residual", [True, False])
@pytest.mark.parametrize("affine", ["weight+bias", "weight", "bias", "none"])
@pytest.mark.parametrize("with_residual", [True, False])
def test_optional_inputs(with_residual, affine, return_residual):
    shape, dtype = (3, 5, 33), torch.float32
    seed = seed_of(with_residual, affine)
    x, residual, weight, bias = layer_norm_inputs(
        shape, dtype, seed=seed, residual=with_residual, weight="weight" in affine,
        bias="bias" in affine)
    if return_residual:
        (_, s), _ = check_within_budget(x, residual, weight, bias, seed=seed)
        if residual is None:  # s = x, in a new tensor
            assert torch.equal(s, x) and s.data_ptr() != x.data_ptr()
        return
    present = [(name, t) for name, t in zip(("dx", "dresidual", "dweight", "dbias"),
                                            (x, residual, weight, bias), strict=True)
               if t is not None]
    y = fasttx.add_layer_norm(x, residual, weight, bias, backend="triton")
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == shape
    wide = to_float64(x, residual, weight, bias)
    expected = fasttx.add_layer_norm(*wide, backend="reference")
    wide = [t for t in wide if t is not None]
    baseline, _ = torch_add_layer_norm(x, residual, weight, bias, EPS)
    assert_within_budget(y, expected, baseline, name="y")
    grad = random_tensor(*shape, device=DEVICE, seed=seed + 7)
    inputs = [t for _, t in present]
    for (name, _), g, w, b in zip(present, torch.autograd.grad(y, inputs, grad),
                                  torch.autograd.grad(expected, wide, grad.double()),
                                  torch.autograd.grad(baseline, inputs, grad), strict=True):
        assert_within_budget(g, w, b, factor=3.0, name=name)


def test_fp32_residual_stream_with_fp16_x():
    """Keeping the residual stream in fp32: s is fp32 and as accurate as an fp32 add."""
    x, residual, weight, bias = layer_norm_inputs((6, 37, 48), torch.float16, seed=9,
                                                  residual_dtype=torch.float32)
    (y, s), (_, grad_residual, _, _) = check_within_budget(x, residual, weight, bias, seed=9)
    assert y.dtype == torch.float16 and s.dtype == torch.float32
    assert grad_residual.dtype == torch.float32
    # s is the exact sum (an fp16 value plus an fp32 one, rounded once to fp32)
    torch.testing.assert_close(s, residual.detach() + x.detach().float(), rtol=0, atol=0)
    x, residual, weight, bias = layer_norm_inputs((3, 5, 40), torch.float16, seed=10,
                                                  residual_dtype=torch.float32)
    with column_chunks(16):
        (y, s), _ = check_within_budget(x, residual, weight, bias, dropout_p=0.3, seed=10)
    assert y.dtype == torch.float16 and s.dtype == torch.float32


def test_strided_rows_give_the_contiguous_results():
    """x and the residual as column slices of wider tensors (strided rows), and as transposed
    views (strided columns): the same outputs and gradients as contiguous copies."""
    dim = 45
    x_wide = random_tensor(4, 9, dim + 19, device=DEVICE, seed=20, requires_grad=True)
    r_wide = random_tensor(36, 2 * dim, device=DEVICE, seed=21, requires_grad=True)
    x_t = random_tensor(dim, 36, device=DEVICE, seed=22, requires_grad=True)
    weight, bias = (random_tensor(dim, device=DEVICE, seed=i, requires_grad=True)
                    for i in (23, 24))
    cases = [  # (x, residual) views, and the leaves they come from
        (x_wide[..., 3:3 + dim], r_wide[:, dim:].view(4, 9, dim), x_wide),
        (x_t.t(), r_wide[:, :dim], x_t),
    ]
    for x, residual, x_leaf in cases:
        leaves = (x_leaf, r_wide, weight, bias)
        assert not x.is_contiguous() and not residual.is_contiguous()
        if x.stride(-1) == 1:  # strided rows are read in place, through their row strides
            with recorded_launches(triton_add_layer_norm) as launches:
                fasttx.add_layer_norm(x, residual, weight, bias, backend="triton")
            (kind, args, _), = launches
            assert kind == "forward"
            assert args[0].data_ptr() == x.data_ptr() and args[1].data_ptr() == residual.data_ptr()
            assert (args[11], args[12]) == (x.stride(-2), residual.stride(-2))
        results = []
        for copy in (False, True):
            if copy:
                x, residual = x.contiguous(), residual.contiguous()
            y, s = triton_add_layer_norm_call(x, residual, weight, bias, dropout_p=0.2)
            loss = (y * torch.cos(s.detach())).sum() + (s * y.detach()).sum()
            results.append((y, s, torch.autograd.grad(loss, leaves)))
        (y, s, grads), (y_copy, s_copy, copy_grads) = results
        assert torch.equal(y, y_copy) and torch.equal(s, s_copy)
        for got, want in zip(grads, copy_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk", [None, 64])
@pytest.mark.parametrize("eps", [1e-5, 1e-12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("dim,with_residual", [(100, True), (257, False)])
def test_constant_rows_give_exactly_the_bias(dim, with_residual, dtype, eps, chunk):
    """As F.layer_norm: the shifted statistics make s - mean exactly 0, so y is the bias
    whatever eps, on the register and the wide-row path."""
    x, residual, weight, bias = (None if t is None else t.to(DEVICE) for t in constant_rows(
        dim, dtype, seed=dim, with_residual=with_residual))
    with column_chunks(chunk) if chunk else contextlib.nullcontext():
        y = fasttx.add_layer_norm(x, residual, weight, bias, eps, backend="triton")
    assert_within_budget(y, bias.expand_as(y), floor=0.0, name="y")


@pytest.mark.parametrize("chunk", [None, 32])
@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_ill_conditioned_rows_within_budget(eps, chunk):
    """A residual stream around 2e4 and noise of std ~2 (mean / std ~ 1e4): y, s and every
    gradient within budget, dweight and dbias within 3x of F.layer_norm's fp32 error."""
    inputs = layer_norm_inputs((37, 150), torch.float32, seed=90, offset=2e4)
    with column_chunks(chunk) if chunk else contextlib.nullcontext():
        check_within_budget(*inputs, eps=eps, seed=90)


# ---- the wide-row path: forced at small sizes with column_chunks ----

WIDE_CASES = [  # (shape, chunk): D below, between and above multiples of the chunk
    ((9, 200), 32), ((5, 40), 32), ((2, 3, 97), 32), ((4, 7), 16), ((6, 1), 16),
    ((3, 70), 16),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("shape,chunk", WIDE_CASES, ids=str)
def test_wide_rows_within_budget_and_match_the_register_path(shape, chunk, dtype):
    seed = seed_of(shape, chunk, dtype)
    inputs = layer_norm_inputs(shape, dtype, seed=seed)
    assert triton_add_layer_norm.Plan.of(shape[-1]).wide is False
    with column_chunks(chunk):
        assert triton_add_layer_norm.Plan.of(shape[-1]).wide is True
        (y, s), grads = check_within_budget(*inputs, dropout_p=0.1, seed=seed)
    (register_y, register_s), register_grads = check_within_budget(*inputs, dropout_p=0.1,
                                                                   seed=seed)
    assert torch.equal(s, register_s)  # the same mask and the same fp32 additions
    if dtype == torch.float32:  # in fp16 the wide path normalises s as stored (rounded)
        torch.testing.assert_close(y, register_y, rtol=1e-5, atol=1e-5)
        for got, want in zip(grads, register_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("affine", ["weight+bias", "none"])
def test_wide_rows_without_residual_or_affine(affine):
    inputs = layer_norm_inputs((5, 50), torch.float32, seed=30, residual=False,
                               weight=affine != "none", bias=affine != "none")
    with column_chunks(16):
        check_within_budget(*inputs, seed=30)


def test_plan_crosses_max_register_row():
    plan = triton_add_layer_norm.Plan
    limit = triton_add_layer_norm.MAX_REGISTER_ROW
    assert not plan.of(limit).wide and plan.of(limit).block_d == limit
    assert plan.of(limit + 1).wide and plan.of(65536).wide
    assert plan.of(12288).column_block_count(12288) > 1
    with column_chunks(32):
        forced = plan.of(100)
        assert forced.wide and forced.block_d == 32 and forced.column_block_count(100) == 4
    assert not plan.of(100).wide  # the context manager restores the default


# ---- dropout ----

def test_dropout_mask_is_recoverable_and_scaled_exactly():
    x, _, weight, bias = layer_norm_inputs((37, 64), torch.float32, seed=40, residual=False)
    p = 0.5  # 1 / (1 - p) = 2: kept elements of s are exactly 2x
    y, s = triton_add_layer_norm_call(x, None, weight, bias, dropout_p=p, torch_seed=42)
    keep = keep_mask(x.shape, p, 42)
    assert torch.equal(s[keep], x.detach()[keep] * 2)
    assert torch.equal(s[~keep], torch.zeros_like(s[~keep]))
    assert abs(1 - keep.double().mean().item() - p) < 0.05
    expected_y, _ = torch_add_layer_norm(*to_float64(x, None, weight, bias), EPS,
                                         keep.double(), p)
    torch.testing.assert_close(y.double(), expected_y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0.25, 0.5, 0.9])
def test_dropout_matches_the_reference_backend_under_the_same_seed(p):
    x, residual, weight, bias = layer_norm_inputs((2, 33, 48), torch.float32, seed=41)
    inputs = (x, residual, weight, bias)
    results = []
    for backend in ("triton", "reference"):
        y, s = triton_add_layer_norm_call(*inputs, dropout_p=p, torch_seed=7, backend=backend)
        grads = torch.autograd.grad((y, s), inputs, (torch.cos(s.detach()), y.detach()))
        results.append(((y, s), grads))
    ((y, s), grads), ((expected_y, expected_s), expected_grads) = results
    keep = keep_mask(x.shape, p, 7)
    assert torch.equal((s - residual) == 0, ~keep)
    torch.testing.assert_close(s, expected_s, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y, expected_y, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    grad_x, grad_residual = grads[:2]
    assert torch.equal(grad_x[~keep], torch.zeros_like(grad_x[~keep]))
    assert (grad_x[keep] != 0).all()
    torch.testing.assert_close(grad_x[keep], grad_residual[keep] / (1 - p), rtol=1e-6,
                               atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_dropout_within_budget(dtype):
    check_within_budget(*layer_norm_inputs((300, 72), dtype, seed=43), dropout_p=0.2, seed=43)


def test_dropout_is_reproducible_under_manual_seed():
    inputs = layer_norm_inputs((19, 80), torch.float16, seed=44)
    runs = []
    for torch_seed in (3, 3, 4):
        y, s = triton_add_layer_norm_call(*inputs, dropout_p=0.3, torch_seed=torch_seed)
        runs.append((y, s, torch.autograd.grad((y, s), inputs, (torch.ones_like(y), y))))
    (y1, s1, g1), (y2, s2, g2), (y3, s3, g3) = runs
    assert torch.equal(y1, y2) and torch.equal(s1, s2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))
    assert not torch.equal(s1, s3) and not torch.equal(y1, y3)
    assert not torch.equal(g1[0], g3[0])


# ---- determinism and the persistent grid ----

@pytest.mark.parametrize("chunk", [None, 16])
def test_backward_is_bit_identical_across_runs(chunk):
    shape = (257, 64) if chunk is None else (11, 50)
    inputs = layer_norm_inputs(shape, torch.float32, seed=50)
    with column_chunks(chunk) if chunk else contextlib.nullcontext():
        y, s = triton_add_layer_norm_call(*inputs, dropout_p=0.1)
        grad_y = random_tensor(*shape, device=DEVICE, seed=51)
        first = torch.autograd.grad((y, s), inputs, (grad_y, grad_y), retain_graph=True)
        second = torch.autograd.grad((y, s), inputs, (grad_y, grad_y))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def grid_recorder(grids):
    """A ``_launch`` that appends (kind, grid) to ``grids`` and launches."""
    real_launch = triton_add_layer_norm._launch

    def launch(kind, grid, *args, **meta):
        grids.append((kind, tuple(grid)))
        real_launch(kind, grid, *args, **meta)

    return launch


@pytest.mark.parametrize("shape,chunk", [((1000, 64), None), ((257, 200), None),
                                         ((9, 40), 32)], ids=str)
def test_results_do_not_depend_on_the_number_of_persistent_programs(shape, chunk,
                                                                    monkeypatch):
    """Each program sums its own rows' dweight/dbias: another program count changes the
    order of the sums (so a tolerance), never which rows are counted."""
    inputs = layer_norm_inputs(shape, torch.float32, seed=60)
    grad_y = random_tensor(*shape, device=DEVICE, seed=61)
    grad_s = random_tensor(*shape, device=DEVICE, seed=62)
    results, programs = [], []
    for count in (1, 5):
        grids = []
        with monkeypatch.context() as patch:
            patch.setattr(triton_add_layer_norm, "_INTERPRETER_PROGRAMS", count)
            patch.setattr(triton_add_layer_norm, "_persistent_programs",
                          lambda device, num_warps, count=count: count)  # on a GPU too
            patch.setattr(triton_add_layer_norm, "_launch", grid_recorder(grids))
            with column_chunks(chunk) if chunk else contextlib.nullcontext():
                y, s = triton_add_layer_norm_call(*inputs, dropout_p=0.1)
                results.append(torch.autograd.grad((y, s), inputs, (grad_y, grad_s)))
        (grid,) = [grid for kind, grid in grids if kind == "backward"]
        programs.append(grid[0])
    assert programs[0] == 1 and programs[1] > 1, programs  # the grids really differ
    for name, one, many in zip(("dx", "dresidual", "dweight", "dbias"), *results,
                               strict=True):
        if name in ("dx", "dresidual"):  # per-row: no cross-program sum
            assert torch.equal(one, many), name
        else:
            torch.testing.assert_close(one, many, rtol=1e-5, atol=1e-5, msg=name)


# ---- torch.compile, refusals (opcheck: tests/ops/test_library.py) ----

def test_compiles_fullgraph():
    torch._dynamo.reset()
    x, residual, weight, bias = layer_norm_inputs((2, 7, 24), torch.float32, seed=70)

    def fn(x, residual, weight, bias):
        return fasttx.add_layer_norm(x, residual, weight, bias, return_residual=True,
                                     backend="triton")

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    out, expected = compiled(x, residual, weight, bias), fn(x, residual, weight, bias)
    inputs = (x, residual, weight, bias)
    for got, want in zip(out, expected, strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(torch.autograd.grad(out[0].square().sum() + out[1].sum(), inputs),
                         torch.autograd.grad(expected[0].square().sum() + expected[1].sum(),
                                             inputs), strict=True):
        torch.testing.assert_close(got, want)


def test_float64_is_refused_with_the_dtype_named():
    x = torch.randn(4, 8, dtype=torch.float64, device=DEVICE)
    with pytest.raises(fasttx.BackendUnavailableError, match="float64"):
        fasttx.add_layer_norm(x, x, None, None, backend="triton")
    reason = triton_add_layer_norm.unsupported_reason(dtype=torch.float64, hidden_size=8)
    assert reason is not None and "float64" in reason
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert triton_add_layer_norm.unsupported_reason(dtype=dtype, hidden_size=8) is None
    with fasttx.backends.record_selections() as used:  # auto falls back
        fasttx.add_layer_norm(x, x, None, None, backend="auto")
    assert used["add_layer_norm"] != "triton"


# ---- GPU: realistic sizes in bf16 and fp16 (skipped without a CUDA GPU) ----

GPU_SHAPES = [(4099, 512), (2, 2049, 1024), (4099, 4096), (4099, 8192), (4099, 12288),
              (257, 65536)]


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", gpu_backends)
def test_gpu_matches_reference_within_budget(backend, shape, dtype):
    dim = shape[-1]
    rows = 1
    for size in shape[:-1]:
        rows *= size
    plan = triton_add_layer_norm.Plan.of(dim)
    assert plan.wide == (dim > triton_add_layer_norm.MAX_REGISTER_ROW)
    seed = seed_of(shape, dtype)
    check_within_budget(*layer_norm_inputs(shape, dtype, seed=seed), dropout_p=0.1, seed=seed,
                        backend=backend)


@gpu
@pytest.mark.parametrize("dim", [8192, 12288])
@pytest.mark.parametrize("backend", gpu_backends)
def test_gpu_fp32_residual_stream_and_determinism(backend, dim):
    inputs = layer_norm_inputs((2048, dim), torch.bfloat16, seed=80,
                               residual_dtype=torch.float32)
    check_within_budget(*inputs, seed=80, backend=backend)
    y, s = triton_add_layer_norm_call(*inputs, dropout_p=0.1, backend=backend)
    grads = [torch.autograd.grad((y, s), inputs, (torch.ones_like(y), torch.ones_like(s)),
                                 retain_graph=True) for _ in range(2)]
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)


@gpu
@pytest.mark.parametrize("dim", [1000, 12288, 20000])  # register/wide paths of both backends
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", gpu_backends)
def test_gpu_constant_and_ill_conditioned_rows(backend, dtype, dim):
    """Constant rows give exactly the bias at eps 1e-5 and 1e-12; rows of mean / std ~ 1e4
    stay within budget (fp32)."""
    x, residual, weight, bias = (t.to(DEVICE) for t in constant_rows(dim, dtype, seed=dim))
    for eps in (1e-5, 1e-12):
        y = fasttx.add_layer_norm(x, residual, weight, bias, eps, backend=backend)
        assert_within_budget(y, bias.expand_as(y), floor=0.0, name=f"y at eps {eps}")
    if dtype == torch.float32:
        check_within_budget(*layer_norm_inputs((257, dim), dtype, seed=91, offset=2e4),
                            eps=1e-12, seed=91, backend=backend)


def test_strided_weight_and_bias_give_the_contiguous_results():
    x, residual = (random_tensor(5, 40, dtype=torch.float32, seed=60 + i) for i in range(2))
    packed = random_tensor(40, 2, dtype=torch.float32, seed=62, requires_grad=True)
    weight, bias = packed[:, 0], packed[:, 1]  # stride 2: views of one packed parameter
    y = fasttx.add_layer_norm(x, residual, weight, bias, backend="triton")
    dense = packed.detach().clone().requires_grad_(True)
    y_dense = fasttx.add_layer_norm(x, residual, dense[:, 0].contiguous(),
                                    dense[:, 1].contiguous(), backend="triton")
    torch.testing.assert_close(y, y_dense, rtol=0, atol=0)
    grad, = torch.autograd.grad(y.sum(), packed)
    grad_dense, = torch.autograd.grad(y_dense.sum(), dense)
    torch.testing.assert_close(grad, grad_dense, rtol=0, atol=0)
