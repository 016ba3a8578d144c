"""The feed-forward kernels compile for real GPUs (sm_80, sm_90) without register spills.

The launches of real calls are recorded under the interpreter and compiled ahead of time
with Triton's compiler and the ptxas it ships (see benchmarks/static/launches.py). On Hopper
every config of the family a launch autotunes over is compiled and must use wgmma and
spill nothing: the worst cases of each family (gelu_tanh with dropout and the bias-gradient
row sums for the heavy one; relu's backward epilogue and the biased linear layer for the
light one), with a K that is not a multiple of the tile, stand for the rest. No GPU is
needed.
"""

import pytest
import torch

import fasttx
from benchmarks.static.launches import as_bf16, compile_launches, record_launches
from fasttx.testing import requires_triton

pytestmark = requires_triton
pytest.importorskip("triton.backends.nvidia.compiler")
triton_feed_forward = pytest.importorskip("fasttx.triton.feed_forward")


def training_step(activation, dropout_p, dtype=torch.float16):
    """Records one forward + backward of a small FFN with biases; bf16 launches are
    recorded in fp16 (the interpreter's bf16 dot is wrong) and renamed."""
    def call():
        x = torch.randn(64, 48, dtype=dtype, requires_grad=True)
        w1, w2 = (torch.randn(*shape, dtype=dtype, requires_grad=True)
                  for shape in ((80, 48), (40, 80)))
        b1, b2 = (torch.randn(n, dtype=dtype, requires_grad=True) for n in (80, 40))
        y = fasttx.feed_forward(x, w1, b1, w2, b2, activation=activation, dropout_p=dropout_p,
                                backend="triton")
        y.sum().backward()
    return as_bf16(record_launches(triton_feed_forward, call))


def by_kind(launches, kind, **flags):
    return [launch for launch in launches if launch[0] == kind
            and all(launch[2].get(name) == value for name, value in flags.items())]


def test_every_hopper_config_compiles_to_wgmma_without_spills():
    heavy = training_step("gelu_tanh", 0.1)
    light = training_step("relu", 0.0)
    launches = (by_kind(heavy, "up") + by_kind(heavy, "hidden_grad")
                + by_kind(light, "linear", SUM_A_ROWS=True)[:1] + by_kind(light, "hidden_grad")
                + by_kind(light, "linear", SUM_A_ROWS=False, HAS_BIAS=True))
    assert [triton_feed_forward.family(kind, meta) for kind, _, meta in launches] == \
        ["heavy", "heavy", "heavy", "light", "light"]
    results = compile_launches("feed_forward", launches, ["hopper"], all_configs=True)
    # every config of the family, but those the pruning refuses for this K (spill_free)
    results = [result for result in results if result["autotuned"]]
    assert len(results) >= 3 * len(launches)
    for result in results:
        assert result["wgmma"], result
        assert result["spill_bytes"] == 0, result
        # the autotuner's pruning trusts this estimate: it must not fall short
        assert result["shared"] <= result["estimated_shared"] + 1024, result


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_every_launch_compiles_for_ampere_and_hopper(activation):
    launches = training_step(activation, 0.1)
    assert sorted({kind for kind, _, _ in launches}) == ["hidden_grad", "linear", "up"]
    results = compile_launches("feed_forward", launches, ["ampere", "hopper"])
    assert len(results) == 2 * len(launches)
    assert all(r["wgmma"] for r in results if r["arch"] == "hopper")
