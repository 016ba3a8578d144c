"""fasttx.patch_torch(): F.scaled_dot_product_attention through fasttx, torch otherwise."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.backends.registry import lookup_backend

import fasttx
from fasttx.backends import record_selections
from fasttx.testing import requires_triton_interpreter

TORCH_SDPA = F.scaled_dot_product_attention


@pytest.fixture(autouse=True)
def _always_unpatched():
    yield
    fasttx.unpatch_torch()
    assert F.scaled_dot_product_attention is TORCH_SDPA


def _inputs(batch=2, heads=3, len_q=7, len_k=5, dim=12, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator, dtype=dtype,
                           requires_grad=True) for length in (len_q, len_k, len_k))
    return q, k, v


def test_patch_and_unpatch_swap_the_function():
    assert not fasttx.is_torch_patched() and "is_torch_patched" in fasttx.__all__
    fasttx.patch_torch()
    assert fasttx.is_torch_patched() and F.scaled_dot_product_attention is not TORCH_SDPA
    fasttx.patch_torch()  # twice is once
    fasttx.unpatch_torch()
    assert F.scaled_dot_product_attention is TORCH_SDPA
    fasttx.unpatch_torch()  # a no-op when unpatched


def test_with_block_undoes_the_patch_even_on_error():
    with pytest.raises(RuntimeError, match="inside"):
        with fasttx.patch_torch():
            assert fasttx.is_torch_patched()
            raise RuntimeError("inside")
    assert F.scaled_dot_product_attention is TORCH_SDPA


def test_with_blocks_nest():
    """Each block's end restores the patch in effect at its start, not torch's function."""
    q, k, v = _inputs()
    fasttx.patch_torch("reference")  # a patch outside any block survives the blocks
    with fasttx.patch_torch("triton"):
        with fasttx.patch_torch(("reference", "triton")):
            assert fasttx.is_torch_patched()
        assert fasttx.is_torch_patched()
        with record_selections() as chosen:
            F.scaled_dot_product_attention(q, k, v)
        assert chosen == {"attention": "triton"}
    assert fasttx.is_torch_patched()
    with record_selections() as chosen:
        F.scaled_dot_product_attention(q, k, v)
    assert chosen == {"attention": "reference"}
    fasttx.unpatch_torch()
    with fasttx.patch_torch():
        with fasttx.patch_torch("reference"):
            pass
        assert fasttx.is_torch_patched()
    assert not fasttx.is_torch_patched()


def test_default_patch_warns_once_when_cpu_tensors_pass_through(monkeypatch):
    monkeypatch.setattr(fasttx.patching, "_warned_cpu_passthrough", False)
    q, k, v = _inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fasttx.patch_torch("reference"):  # fasttx runs the call: nothing to say
            F.scaled_dot_product_attention(q, k, v)
        assert not caught
        for _ in range(2):
            with fasttx.patch_torch():
                F.scaled_dot_product_attention(q, k, v)
                F.scaled_dot_product_attention(q, k, v)
    assert len(caught) == 1, [str(w.message) for w in caught]
    assert "cpu tensors runs on torch's own" in str(caught[0].message)
    assert "backend=" in str(caught[0].message) and caught[0].filename == __file__


def test_bad_backend_names_are_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        fasttx.patch_torch("fast")
    with pytest.raises(ValueError, match="at least one"):
        fasttx.patch_torch(())
    assert F.scaled_dot_product_attention is TORCH_SDPA


@requires_triton_interpreter
@pytest.mark.parametrize("causal", [False, True])
def test_patched_calls_run_fasttx_and_match_torch(causal):
    q, k, v = _inputs()
    mask = torch.rand(2, 1, 7, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True  # no fully masked row: torch gives NaN there, fasttx zeros
    expected = TORCH_SDPA(q, k, v, attn_mask=mask, is_causal=False)
    grads = torch.autograd.grad(expected.sum(), (q, k, v))
    with fasttx.patch_torch("triton"), record_selections() as chosen:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
    assert chosen == {"attention": "triton"}
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out.sum(), (q, k, v)), grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    if causal:
        with fasttx.patch_torch("triton"):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(out, TORCH_SDPA(q, k, v, is_causal=True), rtol=1e-4,
                                   atol=1e-5)


def test_what_fasttx_cannot_run_falls_back_to_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(fasttx.patching, "_torch_sdpa",
                        lambda *args, **kwargs: calls.append(kwargs) or TORCH_SDPA(*args,
                                                                                   **kwargs))
    q, k, v = _inputs()
    monkeypatch.setattr(fasttx.patching, "_warned_cpu_passthrough", True)  # (warning tested above)
    with fasttx.patch_torch(), record_selections() as chosen:  # default: triton, CPU tensors
        F.scaled_dot_product_attention(q, k, v)  # CPU: torch's kernels are the fast path
        F.scaled_dot_product_attention(*_inputs(dtype=torch.float64))
        F.scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0])  # 2-D: not fasttx's
    assert chosen == {} and len(calls) == 3


def test_reference_backend_patch_runs_torch_modules_through_fasttx():
    """torch.nn.MultiheadAttention (its slow path, in training) calls the patched function."""
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(24, 4, batch_first=True)
    x = torch.randn(3, 9, 24)
    padding = torch.zeros(3, 9, dtype=torch.bool)
    padding[0, 6:] = True
    expected, _ = attention(x, x, x, key_padding_mask=padding, need_weights=False)
    with fasttx.patch_torch("reference"), record_selections() as chosen:
        out, _ = attention(x, x, x, key_padding_mask=padding, need_weights=False)
    assert chosen == {"attention": "reference"}
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@requires_triton_interpreter
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("backend", ["triton", None], ids=["triton", "default"])
def test_patched_calls_compile_with_fullgraph(compiler, backend):
    """torch.compile(fullgraph=True) traces through the patched function (a graph break
    fails it): fasttx's op in the graph where the patch routes the call, torch's op where
    the default patch passes CPU tensors through; outputs and gradients are eager torch's."""
    q, k, v = _inputs(len_q=5)
    mask = torch.rand(2, 1, 5, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3) * 2

    expected = attend(q, k, v)
    grads = torch.autograd.grad(expected.sum(), (q, k, v))
    graphs = []

    def recording(graph, example_inputs):
        graphs.append(graph)
        return lookup_backend(compiler)(graph, example_inputs)

    torch._dynamo.reset()
    with warnings.catch_warnings(), fasttx.patch_torch(backend):
        warnings.simplefilter("ignore")  # the default patch's CPU pass-through warning
        out = torch.compile(attend, fullgraph=True, backend=recording)(q, k, v)
    fasttx_ops = {node.target for graph in graphs for node in graph.graph.nodes
                  if isinstance(node.target, torch._ops.OpOverload)
                  and node.target.namespace == "fasttx"}
    assert bool(fasttx_ops) == (backend is not None), fasttx_ops
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    for got, want in zip(torch.autograd.grad(out.sum(), (q, k, v)), grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
