"""The attention kernels compile for real GPUs (sm_80, sm_90), not only interpret.

The Triton interpreter accepts code the compiler rejects (a global that is not a
constexpr, a type mismatch between branches...). These tests record the exact launches of
real calls (under the interpreter on CPU) and compile each one ahead of time for Ampere
and Hopper with Triton's own compiler and the ptxas it ships, specialising the arguments
the way Triton's JIT does (ints equal to 1 become constants, multiples of 16 and aligned
pointers carry divisibility hints), with each architecture's first autotuning config, and check the
shared-memory estimate that config pruning relies on. No GPU is needed.
"""

import pytest
import torch

import fasttx
from benchmarks.static import launches as launches_module
from fasttx.testing import attention_inputs, key_padding_mask, requires_triton

pytestmark = requires_triton
pytest.importorskip("triton.backends.nvidia.compiler")
triton_attention = pytest.importorskip("fasttx.triton.attention")

def compile_launches(launches, architectures):
    compiled = launches_module.compile_launches("attention", launches, architectures)
    assert len(compiled) == len(launches) * len(architectures)
    for result in compiled:
        if result["arch"] == "hopper":  # tensor cores through warp-group MMA
            assert result["wgmma"], result
        # the autotuner's pruning trusts this estimate: it must not fall short
        assert result["shared"] <= result["estimated_shared"] + 1024, result


def record_launches(call):
    return launches_module.record_launches(triton_attention, call)


def forward_backward(q, k, v, **kwargs):
    out = fasttx.scaled_dot_product_attention(q, k, v, backend="triton", **kwargs)
    out.backward(torch.ones_like(out))


def test_padding_causal_dropout_bf16_compiles_for_ampere_and_hopper():
    # recorded in fp16 (the triton backend refuses bf16 under the interpreter), compiled as bf16
    q, k, v = attention_inputs(2, 2, 32, 32, 128, dtype=torch.float16, requires_grad=True)
    launches = record_launches(lambda: forward_backward(
        q, k, v, attn_mask=key_padding_mask([32, 17], 32), is_causal=True, dropout_p=0.1))
    assert [kind for kind, _, _ in launches] == ["forward", "dq", "dkdv"]
    compile_launches(launches_module.as_bf16(launches), ["ampere", "hopper"])


def test_float_mask_gradient_gqa_fp16_compiles_for_hopper():
    q, k, v = attention_inputs(1, 4, 24, 40, 80, kv_heads=2, dtype=torch.float16,
                               requires_grad=True)
    mask = torch.randn(1, 1, 24, 40, dtype=torch.float16, requires_grad=True)
    launches = record_launches(lambda: forward_backward(q, k, v, attn_mask=mask,
                                                        enable_gqa=True))
    assert [meta.get("MASK_GRAD") for kind, _, meta in launches if kind == "dq"] == [True]
    compile_launches(launches, ["hopper"])


def test_varlen_fp16_compiles_for_hopper():
    q, k, v = (torch.randn(37, 2, 64, dtype=torch.float16, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, 5, 37], dtype=torch.int32)

    def call():
        out = fasttx.varlen_attention(q, k, v, cu, cu, 32, 32, is_causal=True, backend="triton")
        out.backward(torch.ones_like(out))

    launches = record_launches(call)
    assert all(meta["VARLEN"] for _, _, meta in launches)
    compile_launches(launches, ["hopper"])
