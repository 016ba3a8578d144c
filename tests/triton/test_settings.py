"""The launchers' shared settings: autotuning off (FASTTX_TRITON_AUTOTUNE=0) runs each kernel
with the first config its GPU architecture lists that fits, as the autotuner's pruning
decides, so a test run compiles one variant per specialisation."""

import types

import pytest
import torch

import fasttx
from benchmarks.static.launches import recorded_launches
from fasttx.testing import attention_inputs, requires_triton

pytestmark = requires_triton
triton_attention = pytest.importorskip("fasttx.triton.attention")
triton_feed_forward = pytest.importorskip("fasttx.triton.feed_forward")
from fasttx.triton import _settings  # noqa: E402  (after the skip: triton is installed)

HOPPER = types.SimpleNamespace(major=9, shared_memory_per_block_optin=232448)
AMPERE_86 = types.SimpleNamespace(major=8, shared_memory_per_block_optin=101376)


def test_autotuning_is_on_unless_switched_off(monkeypatch):
    monkeypatch.delenv("FASTTX_TRITON_AUTOTUNE", raising=False)
    assert _settings.autotuning()
    monkeypatch.setenv("FASTTX_TRITON_AUTOTUNE", "0")
    assert not _settings.autotuning()


def launches_of(module, call):
    with recorded_launches(module) as launches:
        call()
    return launches


def untuned(module, launch, properties, monkeypatch):
    kind, args, meta = launch
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: properties)
    return module.untuned_config(kind, *args, **meta)


def attention_launches(dtype, dim, **kwargs):
    q, k, v = attention_inputs(2, 2, 24, 40, dim, dtype=dtype, requires_grad=True)

    def call():
        out = fasttx.scaled_dot_product_attention(q, k, v, backend="triton", **kwargs)
        out.backward(torch.ones_like(out))
    return launches_of(triton_attention, call)


def test_attention_takes_the_first_listed_config_that_fits(monkeypatch):
    launches = attention_launches(torch.float16, 64, is_causal=True)
    assert [kind for kind, _, _ in launches] == ["forward", "dq", "dkdv"]
    for launch in launches:
        kind = launch[0]
        for properties, arch in ((HOPPER, "hopper"), (AMPERE_86, "ampere")):
            options = untuned(triton_attention, launch, properties, monkeypatch)
            assert set(options) == {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}
            first = triton_attention._CONFIGS[kind][arch][0]
            assert (options["BLOCK_M"], options["BLOCK_N"], options["num_warps"],
                    options["num_stages"]) == first, (kind, arch)


def test_attention_skips_configs_that_do_not_fit_and_falls_back(monkeypatch):
    # fp32, head dim 256 with a tiled float mask: the big Hopper tiles pass the shared memory
    forward = attention_launches(torch.float32, 256, attn_mask=torch.randn(2, 2, 24, 40))[0]
    options = untuned(triton_attention, forward, HOPPER, monkeypatch)
    chosen = (options["BLOCK_M"], options["BLOCK_N"], options["num_warps"],
              options["num_stages"])
    listed = triton_attention._CONFIGS["forward"]["hopper"]
    assert chosen in listed and chosen != listed[0]
    assert triton_attention._shared_memory("forward", *chosen[:2], chosen[3], 4, 256, 256,
                                           4) <= HOPPER.shared_memory_per_block_optin
    # nothing listed fits a GPU with little shared memory: the smallest config
    tiny = types.SimpleNamespace(major=8, shared_memory_per_block_optin=48 * 1024)
    options = untuned(triton_attention, forward, tiny, monkeypatch)
    assert (options["BLOCK_M"], options["BLOCK_N"], options["num_warps"],
            options["num_stages"]) == triton_attention._SMALLEST_CONFIG


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
def test_feed_forward_takes_its_familys_first_config(monkeypatch, dropout_p):
    # every K (64, 256 and the 64 tokens of the weight gradients) a multiple of BLOCK_K:
    # no tile is refused for spilling (see feed_forward.spill_free)
    x = torch.randn(64, 64, dtype=torch.float16, requires_grad=True)
    weights = [torch.randn(*shape, dtype=torch.float16, requires_grad=True)
               for shape in ((256, 64), (256,), (64, 256), (64,))]

    def call():
        out = fasttx.feed_forward(x, *weights, dropout_p=dropout_p, backend="triton")
        out.backward(torch.ones_like(out))
    launches = launches_of(triton_feed_forward, call)
    assert len(launches) >= 5
    for launch in launches:
        kind, _, meta = launch
        family = triton_feed_forward.family(kind, meta)
        options = untuned(triton_feed_forward, launch, HOPPER, monkeypatch)
        first = triton_feed_forward._CONFIGS[family]["hopper"][0]
        assert (options["BLOCK_M"], options["BLOCK_N"], options["BLOCK_K"],
                options["num_warps"], options["num_stages"]) == first, (kind, family)

