"""Inputs torch's F.scaled_dot_product_attention takes that fasttx once refused: key/value
batches broadcast against the query's, Lq = 0, Lk = 0 and dropout_p = 1. fasttx handles them
above the backend dispatch; each is checked against torch's SDPA, output and gradients, under
the budget rule: on the reference backend in float64, on the Triton kernels in float32 under
the interpreter (CPU), and on a GPU on the Triton and CUDA kernels in bfloat16."""

import pytest
import torch
import torch.nn.functional as F

import fasttx
from fasttx.testing import (
    assert_within_budget,
    random_tensor,
    requires_cuda_extension,
    requires_triton_interpreter,
    to_float64,
)

ON_GPU = [pytest.mark.gpu,
          pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
# (backend, dtype, device) of each run.
BACKENDS = [
    pytest.param("reference", torch.float64, "cpu", id="reference"),
    pytest.param("triton", torch.float32, "cpu", marks=requires_triton_interpreter,
                 id="triton-interpreter"),
    pytest.param("triton", torch.bfloat16, "cuda", marks=ON_GPU, id="triton-gpu"),
    pytest.param("cuda", torch.bfloat16, "cuda", marks=[*ON_GPU, requires_cuda_extension],
                 id="cuda"),
]


def check_against_torch(backend, dtype, device, shapes, mask=None, seed=0, **kwargs):
    """fasttx on ``backend`` in ``dtype`` on ``device`` against torch's SDPA in float64 (the
    oracle) and in ``dtype`` (the baseline): the output, and the gradients of q, k, v and a
    float mask.

    shapes: those of q, k and v; mask: None, or a bool or float64 mask; kwargs: SDPA's.
    """
    q, k, v = (random_tensor(*shape, dtype=dtype, device=device, seed=seed + i,
                             requires_grad=True) for i, shape in enumerate(shapes))
    if mask is not None:
        mask = mask.to(device)
        if mask.is_floating_point():
            mask = mask.to(dtype).requires_grad_(True)
    leaves = [t for t in (q, k, v, mask) if t is not None and t.requires_grad]
    q64, k64, v64, mask64 = to_float64(q, k, v, mask)
    leaves64 = [t for t in (q64, k64, v64, mask64) if t is not None and t.requires_grad]

    out = fasttx.scaled_dot_product_attention(q, k, v, attn_mask=mask, backend=backend,
                                              **kwargs)
    expected = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=mask64, **kwargs)
    baseline = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
    assert out.dtype == dtype
    assert_within_budget(out, expected, baseline, factor=2.0)

    grad = random_tensor(*out.shape, dtype=dtype, device=device, seed=seed + 3)
    got = torch.autograd.grad(out, leaves, grad)
    # torch skips an empty mask (Lk = 0) in its graph: its missing gradient is empty zeros.
    want = torch.autograd.grad(expected, leaves64, grad.double(), materialize_grads=True)
    base = torch.autograd.grad(baseline, leaves, grad, materialize_grads=True)
    for name, g, w, b in zip(("dq", "dk", "dv", "dmask"), got, want, base, strict=False):
        assert_within_budget(g, w, b, factor=3.0, name=name)
    return out, got


@pytest.mark.parametrize("backend,dtype,device", BACKENDS)
@pytest.mark.parametrize("shapes", [
    ((3, 2, 5, 12), (1, 2, 7, 12), (1, 2, 7, 10)),           # key/value batch 1
    ((2, 1, 2, 5, 8), (1, 3, 2, 7, 8), (2, 3, 2, 7, 8)),     # N... broadcast both ways
], ids=["kv_batch_1", "batch_dims_broadcast"])
def test_key_value_batch_broadcasts_against_the_query(backend, dtype, device, shapes):
    batch = torch.broadcast_shapes(*(shape[:-3] for shape in shapes))
    mask = torch.randn(*batch, 1, 5, 7, dtype=torch.float64)
    out, _ = check_against_torch(backend, dtype, device, shapes, mask, seed=11)
    assert out.shape == (*batch, 2, 5, shapes[2][-1])
    check_against_torch(backend, dtype, device, shapes, seed=12, is_causal=True)


@pytest.mark.parametrize("backend,dtype,device", BACKENDS)
def test_no_queries_give_an_empty_output(backend, dtype, device):
    out, (_, grad_k, grad_v) = check_against_torch(
        backend, dtype, device, ((2, 3, 0, 8), (2, 3, 6, 8), (2, 3, 6, 5)), seed=21)
    assert out.shape == (2, 3, 0, 5)
    assert not grad_k.any() and not grad_v.any()


@pytest.mark.parametrize("backend,dtype,device", BACKENDS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_no_keys_give_zeros(backend, dtype, device, is_causal):
    shapes = ((2, 3, 5, 8), (2, 3, 0, 8), (2, 3, 0, 6))
    mask = torch.randn(2, 1, 5, 0, dtype=torch.float64)
    out, (grad_q, *_) = check_against_torch(backend, dtype, device, shapes, mask, seed=31,
                                            is_causal=is_causal)
    assert out.shape == (2, 3, 5, 6) and not out.any() and not grad_q.any()


@pytest.mark.parametrize("backend,dtype,device", BACKENDS)
@pytest.mark.parametrize("mask_kind", ["none", "bool", "float"])
def test_dropout_of_one_gives_zeros_and_zero_gradients(backend, dtype, device, mask_kind):
    shapes = ((2, 4, 5, 8), (2, 2, 7, 8), (2, 2, 7, 6))
    generator = torch.Generator().manual_seed(41)
    mask = {"none": None, "bool": torch.rand(2, 1, 5, 7, generator=generator) > 0.3,
            "float": torch.randn(2, 4, 5, 7, dtype=torch.float64, generator=generator)}
    out, grads = check_against_torch(backend, dtype, device, shapes, mask[mask_kind], seed=41,
                                     dropout_p=1.0, enable_gqa=True)
    assert out.shape == (2, 4, 5, 6) and not out.any()
    assert all(not g.any() for g in grads)
