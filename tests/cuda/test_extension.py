"""The CUDA backend's extension, without a GPU: the load guard, the op schemas of
``csrc/ops.cpp`` against the fakes of ``fasttx/cuda/_extension.py``, and the Python modules'
signatures against their Triton sisters.

The fakes are checked with ``torch.library.opcheck`` against real implementations: where
``fasttx._C`` is absent, the schemas are parsed from ``csrc/ops.cpp`` into a stand-in
library whose CPU kernels are the reference backend, so shapes, dtypes and aliasing of
every fake are compared with what the contract computes.
"""

import importlib
import inspect
import pathlib
import re

import pytest
import torch

import fasttx
from fasttx import backends
from fasttx import random as philox
from fasttx.cuda import _extension
from fasttx.reference import add_layer_norm as reference_add_layer_norm
from fasttx.reference import attention as reference_attention
from fasttx.reference import feed_forward as reference_feed_forward
from fasttx.reference import varlen_attention as reference_varlen_attention
from fasttx.testing import random_tensor

OPS_CPP = pathlib.Path(__file__).resolve().parents[2] / "csrc" / "ops.cpp"
OPS = ("attention", "varlen_attention", "add_layer_norm", "feed_forward")


@pytest.fixture
def fresh_guard(monkeypatch):
    """Forgets the cached load result (and the registry's) before and after the test."""
    def clear():
        _extension.load_error.cache_clear()
        backends._backend_reason.cache_clear()

    clear()
    yield monkeypatch
    monkeypatch.undo()
    clear()


def _use_module(monkeypatch, tmp_path, source):
    """Makes the guard load a module with this source instead of fasttx._C."""
    name = f"stand_in_extension_{abs(hash(source))}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(_extension, "MODULE", name)


def test_missing_extension_is_reported_not_raised(fresh_guard):
    fresh_guard.setattr(_extension, "MODULE", "fasttx._C_not_built_here")
    reason = _extension.load_error()
    assert "not built" in reason and "FASTTX_SKIP_CUDA_BUILD" in reason
    available = fasttx.available_backends()
    assert available["cuda"] is False
    assert available.reasons["cuda"] == reason
    with pytest.raises(RuntimeError, match="not built"):
        _extension.ops()


@pytest.mark.parametrize("error", [
    ImportError("fasttx/_C.so: undefined symbol: _ZN3c104cuda9SetDevice"),
    OSError("libcublasLt.so.13: cannot open shared object file"),
    RuntimeError("Tried to register an operator (fasttx_cuda::build_info) more than once"),
], ids=["undefined-symbol", "missing-library", "registration"])
def test_broken_extension_is_reported_not_raised(fresh_guard, tmp_path, error):
    _use_module(fresh_guard, tmp_path, f"raise {error!r}")
    reason = _extension.load_error()
    assert str(error) in reason
    assert fasttx.available_backends()["cuda"] is False
    assert str(error) in fasttx.available_backends().reasons["cuda"]
    q, k, v = (random_tensor(1, 1, 2, 4, seed=i) for i in range(3))
    with pytest.raises(fasttx.BackendUnavailableError, match="fasttx._C"):
        fasttx.scaled_dot_product_attention(q, k, v, backend="cuda")


def test_extension_without_ops_is_reported(fresh_guard, tmp_path):
    _use_module(fresh_guard, tmp_path, "")
    fresh_guard.setattr(_extension, "NAMESPACE", "fasttx_cuda_missing_namespace")
    assert "registered no" in _extension.load_error()


def test_python_modules_take_the_triton_modules_arguments():
    """The CUDA and Triton implementations of an op take the same arguments."""
    for op in OPS:
        cuda = importlib.import_module(f"fasttx.cuda.{op}")
        sister = importlib.import_module(f"fasttx.triton.{op}")
        for function in (f"{op}_forward", f"{op}_backward"):
            assert (inspect.signature(getattr(cuda, function)).parameters.keys()
                    == inspect.signature(getattr(sister, function)).parameters.keys()), function


# ---- the schemas of csrc/ops.cpp against the fakes ----

def declared_schemas() -> dict[str, str]:
    """{op name: schema} of every m.def in csrc/ops.cpp (adjacent literals joined)."""
    source = OPS_CPP.read_text()
    schemas = {}
    for call in re.findall(r'm\.def\(((?:\s*"[^"]*")+)', source):
        schema = "".join(re.findall(r'"([^"]*)"', call))
        schemas[schema.split("(")[0]] = schema
    return schemas


def test_every_declared_op_has_a_fake():
    declared = set(declared_schemas()) - {"build_info"}
    assert declared == set(_extension.FAKES)


def _attention_forward(q, k, v, attn_mask, cu_q, cu_k, max_q, max_k, seed, p, causal, scale):
    if cu_q is None:
        return reference_attention.attention_forward(q, k, v, attn_mask, seed, p, causal, scale)
    return reference_varlen_attention.varlen_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k,
                                                               seed, p, causal, scale)


def _attention_backward(grad_out, q, k, v, attn_mask, cu_q, cu_k, max_q, max_k, out, lse, seed,
                        p, causal, scale, mask_needs_grad):
    if cu_q is None:
        return reference_attention.attention_backward(grad_out, q, k, v, attn_mask, out, lse,
                                                      seed, p, causal, scale, mask_needs_grad)
    grads = reference_varlen_attention.varlen_attention_backward(
        grad_out, q, k, v, cu_q, cu_k, max_q, max_k, out, lse, seed, p, causal, scale)
    return (*grads, q.new_empty((0,)))


def _no_none(function):
    """The reference returns None for gradients nobody asked for; the ops return (0,)."""
    def wrapped(*args):
        outputs = function(*args)
        return tuple(args[1].new_empty((0,)) if t is None else t.clone() for t in outputs)
    return wrapped


REFERENCE_KERNELS = {
    "attention_forward": _attention_forward,
    "attention_backward": _attention_backward,
    "add_layer_norm_forward": reference_add_layer_norm.add_layer_norm_forward,
    "add_layer_norm_backward": reference_add_layer_norm.add_layer_norm_backward,
    "feed_forward_forward": reference_feed_forward.feed_forward_forward,
    "feed_forward_backward": reference_feed_forward.feed_forward_backward,
}


@pytest.fixture(scope="module")
def stand_in_ops():
    """torch.ops.fasttx_cuda with the reference as CPU kernels, where fasttx._C is absent."""
    if _extension.load_error() is None:
        pytest.skip("fasttx._C is loaded here: its own ops are tested on the GPU")
    library = torch.library.Library(_extension.NAMESPACE, "DEF")
    for name, schema in declared_schemas().items():
        if name == "build_info":
            continue
        library.define(schema)
        library.impl(name, _no_none(REFERENCE_KERNELS[name]), "CPU")
    _extension.register_fakes()
    yield getattr(torch.ops, _extension.NAMESPACE)
    library._destroy()
    _extension.register_fakes.cache_clear()


def _seed():
    torch.manual_seed(3)
    return philox.draw_seed("cpu")


def _attention_cases():
    q, k, v = (random_tensor(2, 4, 5, 6, seed=1), random_tensor(2, 2, 7, 6, seed=2),
               random_tensor(2, 2, 7, 3, seed=3))
    mask = random_tensor(2, 1, 5, 7, seed=4).expand(2, 4, 5, 7)
    grad_out = random_tensor(2, 4, 5, 3, seed=5)
    for attn_mask, needs_grad in ((None, False), (mask > 0, False), (mask, True)):
        forward = (q, k, v, attn_mask, None, None, 5, 7, _seed(), 0.25, True, 0.4)
        out, lse = _attention_forward(*forward)
        yield "attention_forward", forward
        yield "attention_backward", (grad_out, q, k, v, attn_mask, None, None, 5, 7, out, lse,
                                     _seed(), 0.25, True, 0.4, needs_grad)
    cu_q = torch.tensor([0, 3, 8], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 7], dtype=torch.int32)
    q, k, v = (random_tensor(8, 4, 6, seed=6), random_tensor(7, 2, 6, seed=7),
               random_tensor(7, 2, 5, seed=8))
    forward = (q, k, v, None, cu_q, cu_k, 5, 4, _seed(), 0.1, False, 0.3)
    out, lse = _attention_forward(*forward)
    yield "attention_forward", forward
    yield "attention_backward", (random_tensor(8, 4, 5, seed=9), q, k, v, None, cu_q, cu_k, 5, 4,
                                 out, lse, _seed(), 0.1, False, 0.3, False)


def _add_layer_norm_cases():
    x = random_tensor(7, 12, dtype=torch.float16, seed=10)
    weight, bias = random_tensor(12, seed=11), random_tensor(12, seed=12)
    for residual, w, b in ((random_tensor(7, 12, seed=13), weight, bias), (None, None, None)):
        forward = (x, residual, w, b, 1e-5, _seed(), 0.2)
        y, s, mean, rstd = reference_add_layer_norm.add_layer_norm_forward(*forward)
        yield "add_layer_norm_forward", forward
        yield "add_layer_norm_backward", (torch.ones_like(y), torch.ones_like(s), s, w, b, mean,
                                          rstd, _seed(), 0.2, residual is not None)


def _feed_forward_cases():
    x = random_tensor(9, 6, seed=20)
    w1, b1 = random_tensor(10, 6, seed=21), random_tensor(10, seed=22)
    w2, b2 = random_tensor(5, 10, seed=23), random_tensor(5, seed=24)
    for activation, biases in (("relu", (b1, b2)), ("gelu", (None, None))):
        args = (x, w1, biases[0], w2, biases[1], activation, _seed(), 0.3)
        y, saved = reference_feed_forward.feed_forward_forward(*args)
        yield "feed_forward_forward", args
        yield "feed_forward_backward", (torch.ones_like(y), x, w1, biases[0], w2, biases[1], saved,
                                        activation, _seed(), 0.3)


CASES = [*_attention_cases(), *_add_layer_norm_cases(), *_feed_forward_cases()]


@pytest.mark.parametrize("name, args", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_fakes_agree_with_the_schemas_and_the_reference(stand_in_ops, name, args):
    torch.library.opcheck(getattr(stand_in_ops, name), args,
                          test_utils=("test_schema", "test_faketensor"))
