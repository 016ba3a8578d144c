"""The add + LayerNorm kernels compile for real GPUs without register spills.

The launches of real calls (under the interpreter) are compiled ahead of time for sm_80
and sm_90 with the meta-parameters the launcher chose; across hidden sizes that take each
path (several rows per program, one whole row up to the register limit, column chunks
beyond it) no kernel may spill, but for one documented case below: the launcher's plan,
not luck, keeps every size in registers. No GPU is needed.
"""

import pytest
import torch

import fasttx
from benchmarks.static.launches import as_bf16, compile_launches, record_launches
from fasttx.testing import requires_triton

pytestmark = requires_triton
pytest.importorskip("triton.backends.nvidia.compiler")
triton_add_layer_norm = pytest.importorskip("fasttx.triton.add_layer_norm")


def training_step(dim, rows=2, dtype=torch.float16, dropout_p=0.1):
    """Records forward + backward with every option on (residual in fp32, dropout, affine,
    the residual stream returned); 16-bit pointers are recorded as bf16."""
    def call():
        x = torch.randn(rows, dim, dtype=dtype, requires_grad=True)
        residual = torch.randn(rows, dim, dtype=torch.float32, requires_grad=True)
        weight, bias = (torch.randn(dim, dtype=dtype, requires_grad=True) for _ in range(2))
        y, s = fasttx.add_layer_norm(x, residual, weight, bias, dropout_p=dropout_p,
                                     return_residual=True, backend="triton")
        (y.float().sum() + s.sum()).backward()
    return as_bf16(record_launches(triton_add_layer_norm, call))


# The one known spill: the backward of a row at the register limit (4097..8192 columns)
# with dropout keeps 16 bytes per thread in local memory (16 warps; 32 warps spill more).
# The alternative, column blocks after a row-dot pre-pass, reads dy and s twice.
KNOWN_SPILLS = {("backward", 8192, True): 16}


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("dim", [96, 1000, 4096, 8192, 8193])
def test_compiles_without_spills_on_hopper(dim, dropout_p):
    launches = training_step(dim, dropout_p=dropout_p)
    kinds = [kind for kind, _, _ in launches]
    wide = dim > triton_add_layer_norm.MAX_REGISTER_ROW
    assert kinds == (["forward_wide", "row_dots", "backward", "column_sum", "column_sum"]
                     if wide else ["forward", "backward", "column_sum", "column_sum"])
    for result in compile_launches("add_layer_norm", launches, ["hopper"]):
        allowed = KNOWN_SPILLS.get((result["kind"], dim, dropout_p > 0), 0)
        assert result["spill_bytes"] <= allowed, result


def test_compiles_for_ampere():
    results = compile_launches("add_layer_norm", training_step(512), ["ampere"])
    assert all(result["spill_bytes"] == 0 for result in results)
