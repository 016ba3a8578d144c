"""Backend selection: auto, explicit backends that never fall back, use_backend, reasons."""

import pytest
import torch

import fasttx
from fasttx import backends
from fasttx.testing import attention_inputs, random_tensor, requires_triton_interpreter


def test_available_backends_reports_reasons():
    available = fasttx.available_backends()
    assert set(available) == {"reference", "triton", "cuda"}
    assert available["reference"] is True
    for name, ok in available.items():
        assert isinstance(ok, bool)
        assert ok or available.reasons[name]
    assert "cuda" in repr(available)


@pytest.mark.skipif(fasttx.available_backends()["cuda"], reason="fasttx._C is built here")
def test_cuda_backend_without_extension_names_the_build_flag():
    q, k, v = attention_inputs(1, 1, 2, 2, 4)
    with pytest.raises(fasttx.BackendUnavailableError, match="FASTTX_SKIP_CUDA_BUILD"):
        fasttx.scaled_dot_product_attention(q, k, v, backend="cuda")
    assert not fasttx.available_backends()["cuda"]


def test_explicit_backend_never_falls_back_on_cpu_tensors():
    q, k, v = attention_inputs(1, 1, 2, 2, 4)
    for name in ("triton", "cuda"):
        if backends.unsupported_reason(name, "attention", q.device) is None:
            continue  # e.g. the Triton interpreter is on
        with pytest.raises(fasttx.BackendUnavailableError, match=name):
            fasttx.scaled_dot_product_attention(q, k, v, backend=name)


@requires_triton_interpreter
@pytest.mark.parametrize("op", ["attention", "varlen_attention", "feed_forward"])
def test_triton_refuses_bfloat16_on_cpu_tensors_where_its_kernels_use_tl_dot(op):
    """The interpreter's bf16 tl.dot returns garbage (errors ~1e9) without an error: CPU
    tensors in bf16 are refused with that reason, like float64; CUDA tensors keep bf16."""
    cpu = torch.device("cpu")
    reason = backends.unsupported_reason("triton", op, cpu, dtype=torch.bfloat16)
    assert reason is not None and "bfloat16" in reason and "interpreter" in reason
    assert backends.unsupported_reason("triton", op, cpu, dtype=torch.float16) is None
    check = backends.op_module("triton", op).unsupported_reason
    assert check(dtype=torch.bfloat16, device=torch.device("cuda")) is None
    assert backends.select_backend(op, cpu, "auto", dtype=torch.bfloat16) == "reference"


@requires_triton_interpreter
def test_triton_refusals_of_bfloat16_reach_the_ops_and_spare_add_layer_norm():
    """An explicit backend="triton" names the reason; add_layer_norm, whose kernels use no
    tl.dot, keeps bf16 on the interpreter (its results match the reference)."""
    q, k, v = attention_inputs(1, 1, 3, 3, 16, dtype=torch.bfloat16)
    with pytest.raises(fasttx.BackendUnavailableError, match="bfloat16 only on CUDA"):
        fasttx.scaled_dot_product_attention(q, k, v, backend="triton")
    x = random_tensor(3, 16, dtype=torch.bfloat16)
    weights = [random_tensor(*shape, dtype=torch.bfloat16, seed=i)
               for i, shape in enumerate([(16, 16), (16,), (16, 16), (16,)])]
    with pytest.raises(fasttx.BackendUnavailableError, match="bfloat16 only on CUDA"):
        fasttx.feed_forward(x, *weights, backend="triton")
    weight, bias = torch.ones(16, dtype=torch.bfloat16), torch.zeros(16, dtype=torch.bfloat16)
    torch.testing.assert_close(fasttx.add_layer_norm(x, x, weight, bias, backend="triton"),
                               fasttx.add_layer_norm(x, x, weight, bias, backend="reference"))


def test_auto_on_cpu_picks_the_reference():
    device = torch.device("cpu")
    assert backends.select_backend("attention", device, "auto") == "reference"
    assert backends.select_backend("feed_forward", device, None) == "reference"


def test_use_backend_sets_and_restores_the_default():
    assert fasttx.current_backend() == "auto"
    with fasttx.use_backend("reference"):
        assert fasttx.current_backend() == "reference"
        with fasttx.use_backend("cuda"):
            assert fasttx.current_backend() == "cuda"
            q, k, v = attention_inputs(1, 1, 2, 2, 4)
            if not fasttx.available_backends()["cuda"]:
                with pytest.raises(fasttx.BackendUnavailableError):
                    fasttx.scaled_dot_product_attention(q, k, v)
            # an explicit argument wins over the active default
            fasttx.scaled_dot_product_attention(q, k, v, backend="reference")
        assert fasttx.current_backend() == "reference"
    assert fasttx.current_backend() == "auto"


def test_unknown_backend_names_are_rejected():
    with pytest.raises(ValueError, match="backend"):
        with fasttx.use_backend("fast"):
            pass
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="backend"):
        fasttx.add_layer_norm(x, None, None, None, backend="fast")


def test_missing_op_module_is_a_clear_reason(monkeypatch):
    monkeypatch.setitem(backends._PACKAGES, "reference", "fasttx.nonexistent_backend")
    backends._op_module.cache_clear()
    try:
        reason = backends.unsupported_reason("reference", "attention", torch.device("cpu"))
        assert "no kernel for attention" in reason
    finally:
        monkeypatch.undo()
        backends._op_module.cache_clear()


def test_compiled_function_follows_use_backend():
    torch._dynamo.reset()
    q, k, v = attention_inputs(1, 1, 3, 3, 4)
    compiled = torch.compile(lambda q, k, v: fasttx.scaled_dot_product_attention(q, k, v),
                             fullgraph=True, backend="aot_eager")
    with fasttx.use_backend("reference"):
        compiled(q, k, v)
    if not fasttx.available_backends()["cuda"]:
        with fasttx.use_backend("cuda"), pytest.raises(Exception, match="cuda"):
            compiled(q, k, v)


def test_record_selections_reports_the_backend_of_each_op():
    q, k, v = attention_inputs(1, 1, 2, 2, 4)
    with backends.record_selections() as used:
        fasttx.scaled_dot_product_attention(q, k, v)
        fasttx.add_layer_norm(torch.randn(2, 4), None, None, None, backend="reference")
    assert used == {"attention": "reference", "add_layer_norm": "reference"}
    fasttx.feed_forward(torch.randn(2, 4), torch.randn(3, 4), None, torch.randn(4, 3), None)
    assert "feed_forward" not in used  # recording ends with the block


def test_an_op_module_that_fails_to_import_is_reported_as_such(monkeypatch, tmp_path):
    package = tmp_path / "broken_backend"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "attention.py").write_text("import a_dependency_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(backends._PACKAGES, "reference", "broken_backend")
    backends._op_module.cache_clear()
    try:
        reason = backends.unsupported_reason("reference", "attention", torch.device("cpu"))
        assert "do not import" in reason and "a_dependency_that_is_not_installed" in reason
    finally:
        monkeypatch.undo()
        backends._op_module.cache_clear()
