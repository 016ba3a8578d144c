"""The attention benchmark module: FLOP count, profiles, inputs, providers, a CPU smoke run."""

import itertools
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from benchmarks import attention as bench
from benchmarks import harness
from fasttx.testing import requires_triton_interpreter

SMOKE = bench.cases("smoke")
FP32_TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _shape_key(shape):
    return tuple(sorted(shape.items()))


def _case_id(case):
    shape = case.shape
    return f"{case.mode}-causal={shape['causal']}-padding={shape['padding']}"


def _smoke_case(*, causal, padding, cross=False):
    """The smoke case with these masks (the test fails if the profile lost it)."""
    [case] = [c for c in SMOKE if c.shape["causal"] == causal and c.shape["padding"] == padding
              and (c.shape["seqlen_q"] != c.shape["seqlen_k"]) == cross]
    return case


def test_flops_follow_the_field_convention():
    shape = bench.attention_shape(2, 3, 5, 7, 11, False, None)
    forward = 4 * 2 * 3 * 5 * 7 * 11  # two matmuls of 2 * Lq * Lk * D per batch and head
    assert bench.flops(shape, "fwd") == forward == 9240
    assert bench.flops(shape, "bwd") == 2.5 * forward
    assert bench.flops(shape, "fwd_bwd") == 3.5 * forward
    causal = bench.attention_shape(2, 3, 5, 7, 11, True, None)
    assert bench.flops(causal, "fwd") == forward / 2
    assert bench.flops(causal, "fwd_bwd") == 3.5 * forward / 2
    padded = bench.attention_shape(2, 3, 5, 7, 11, False, 0.5)  # dense count: effective rate
    assert bench.flops(padded, "bwd") == 2.5 * forward


@pytest.mark.parametrize("profile", harness.PROFILES)
def test_profile_cases_are_valid(profile):
    cases = bench.cases(profile)
    assert len({case.id for case in cases}) == len(cases)
    for case in cases:
        assert case.op == "attention" and case.flops == bench.flops(case.shape, case.mode) > 0
        assert case.shape["padding"] in (None, 0, 0.25, 0.5)
    with pytest.raises(ValueError, match="profile"):
        bench.cases("huge")


def test_full_profile_covers_the_issue_grid():
    full = bench.cases("full")
    assert {case.dtype for case in full} == {"bf16"}
    modes = defaultdict(set)
    shapes = defaultdict(list)
    for case in full:
        modes[case.sweep, _shape_key(case.shape)].add(case.mode)
        if case.mode == "fwd":
            shapes[case.sweep].append(case.shape)
    assert all(found == {"fwd", "bwd", "fwd_bwd"} for found in modes.values())
    assert set(shapes) == {"transformer-base", "transformer-big", "long-sequence",
                           "key-padding", "cross-attention"}

    for sweep, d_model, heads in (("transformer-base", 512, 8), ("transformer-big", 1024, 16)):
        layers = {(s["layer"], s["seqlen_q"]): s for s in shapes[sweep]}
        assert set(layers) == set(itertools.product(
            ("encoder-self", "decoder-self", "cross"), (64, 128, 256, 512, 1024)))
        for (layer, seqlen), s in layers.items():
            assert (s["d_model"], s["heads"], s["head_dim"]) == (d_model, heads, 64)
            assert s["batch"] == 25000 // seqlen and s["padding"] == 0.25
            assert s["causal"] == (layer == "decoder-self")
            assert s["seqlen_k"] == (seqlen * 5 // 4 if layer == "cross" else seqlen)

    long = shapes["long-sequence"]
    assert sorted((s["seqlen_q"], s["head_dim"], s["causal"]) for s in long) == sorted(
        itertools.product((512, 1024, 2048, 4096, 8192, 16384, 32768), (64, 128, 256),
                          (False, True)))
    for s in long:
        assert s["padding"] is None and s["seqlen_k"] == s["seqlen_q"]
        assert s["batch"] == max(1, 16384 // s["seqlen_q"]) and s["heads"] * s["head_dim"] == 2048

    padded = shapes["key-padding"]
    assert sorted((s["seqlen_q"], s["padding"], s["causal"]) for s in padded) == sorted(
        itertools.product((1024, 4096, 16384), (0, 0.25, 0.5), (False, True)))
    assert all((s["head_dim"], s["heads"]) == (128, 16) for s in padded)

    cross = shapes["cross-attention"]
    pairs = ((512, 4096), (4096, 512), (1024, 16384), (16384, 1024))
    found = [(s["seqlen_q"], s["seqlen_k"], s["padding"]) for s in cross]
    assert len(found) == 8 and set(found) == {
        (seqlen_q, seqlen_k, padding) for (seqlen_q, seqlen_k) in pairs for padding in (None, 0.25)}
    for s in cross:
        assert (s["heads"], s["head_dim"], s["causal"]) == (16, 128, False)
        assert s["batch"] == max(1, 16384 // max(s["seqlen_q"], s["seqlen_k"]))


def test_quick_profile_is_a_handful_of_full_cases():
    quick = bench.cases("quick")
    full = {(case.sweep, _shape_key(case.shape)) for case in bench.cases("full")}
    shapes = {(case.sweep, _shape_key(case.shape)) for case in quick}
    assert shapes <= full and 6 <= len(shapes) <= 10
    assert {case.mode for case in quick} == {"fwd", "bwd"}
    assert {sweep for sweep, _ in shapes} == {"transformer-base", "long-sequence", "key-padding",
                                              "cross-attention"}


def test_smoke_profile_is_tiny_and_covers_the_masks():
    assert {case.mode for case in SMOKE} == {"fwd", "bwd", "fwd_bwd"}
    assert {case.dtype for case in SMOKE} == {"fp32"}
    for case in SMOKE:
        s = case.shape
        assert s["head_dim"] == 24 and 16 <= s["seqlen_q"] <= 24 and 16 <= s["seqlen_k"] <= 24
        assert s["batch"] * s["heads"] * max(s["seqlen_q"], s["seqlen_k"]) * 24 * 4 < 16 * 2**10
    no_mask = _smoke_case(causal=False, padding=None)
    assert no_mask.shape["seqlen_q"] == no_mask.shape["seqlen_k"]
    assert _smoke_case(causal=True, padding=None).shape["seqlen_q"] == 20
    assert _smoke_case(causal=True, padding=0.25).shape["seqlen_q"] == 24
    assert _smoke_case(causal=False, padding=0.5, cross=True).shape["padding"] == 0.5


@pytest.mark.parametrize("padding", [0, 0.25, 0.5])
def test_key_padding_pads_the_requested_fraction_on_average(padding):
    generator = torch.Generator().manual_seed(0)
    mask = bench.key_padding_mask(20000, 200, padding, generator)
    assert mask.shape == (20000, 1, 1, 200) and mask.dtype == torch.bool
    lengths = mask.sum(-1).flatten()
    assert lengths.min() >= max(1, round(200 * (1 - 2 * padding))) and lengths.max() == 200
    assert torch.equal(mask[:, 0, 0, :], torch.arange(200) < lengths[:, None])  # a prefix
    assert abs(1 - mask.double().mean().item() - padding) < 0.01


def test_make_inputs_shapes_and_seeds():
    case = _smoke_case(causal=False, padding=0.5, cross=True)  # Lq 16, Lk 24
    inputs = bench.make_inputs(case, "cpu", seed=0)
    q, k, v, mask = inputs.inputs
    (grad_out,) = inputs.grads
    assert q.shape == grad_out.shape == (2, 2, 16, 24) and k.shape == v.shape == (2, 2, 24, 24)
    assert mask.shape == (2, 1, 1, 24) and mask.dtype == torch.bool
    assert inputs.differentiable() == [q, k, v] and not grad_out.requires_grad
    assert all(t.dtype == torch.float32 for t in (q, k, v, grad_out))
    again, other = (bench.make_inputs(case, "cpu", seed) for seed in (0, 1))
    assert torch.equal(again.inputs[0], q) and not torch.equal(other.inputs[0], q)
    assert bench.make_inputs(_smoke_case(causal=False, padding=None), "cpu", 0).inputs[3] is None


def test_torch_gets_padding_and_causal_folded_into_one_mask():
    case = _smoke_case(causal=True, padding=0.25)
    original = bench.make_inputs(case, "cpu", seed=3)
    adapted = bench.provider(case, "torch-default", "cpu").adapt(original)
    padding, folded = original.inputs[3], adapted.inputs[3]
    assert adapted.inputs[:3] == original.inputs[:3] and adapted.grads == original.grads
    assert folded.shape == (2, 1, 24, 24) and not padding.all()
    for b, i, j in itertools.product(range(2), range(24), range(24)):
        assert bool(folded[b, 0, i, j]) == (bool(padding[b, 0, 0, j]) and j <= i), (b, i, j)
    for causal, padding in ((True, None), (False, 0.5)):  # one mask kind: passed as is
        shape = bench.attention_shape(2, 2, 16, 16, 24, causal, padding)
        assert bench.provider(harness.Case("attention", "t", "fwd", "fp32", shape), "torch-math",
                              "cpu").adapt is None


def _run(case, name, mode, input_set):
    """A provider's result on one input set: fwd -> output, bwd / fwd_bwd -> gradients."""
    provider = bench.provider(case, name, "cpu")
    adapted = provider.adapt(input_set) if provider.adapt else input_set
    prepare, timed = harness.mode_function(provider.call, mode)
    return timed(*prepare(adapted))


@pytest.mark.parametrize("case", SMOKE, ids=_case_id)
@pytest.mark.parametrize("name", ["eager", "torch-math", "torch-default", pytest.param(
    "fasttx-triton", marks=requires_triton_interpreter)])
def test_cpu_providers_match_the_reference(case, name):
    input_set = bench.make_inputs(case, "cpu", seed=1)
    for mode in harness.MODES:
        expected = _run(case, "fasttx-reference", mode, input_set)
        torch.testing.assert_close(_run(case, name, mode, input_set), expected, **FP32_TOLERANCE,
                                   msg=lambda text, mode=mode: f"{mode}: {text}")


def test_compiled_matches_the_reference_on_one_tiny_case():
    case = _smoke_case(causal=True, padding=0.25)
    input_set = bench.make_inputs(case, "cpu", seed=0)
    (q, k, v, mask), (grad_out,) = input_set.inputs, input_set.grads
    results = []
    for name in ("fasttx-reference", "compiled"):
        out = bench.provider(case, name, "cpu").call(q, k, v, mask)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
    torch.testing.assert_close(results[1], results[0], **FP32_TOLERANCE)


@pytest.mark.parametrize("name", ["torch-flash", "torch-efficient", "torch-cudnn", "flash-attn",
                                  "flash-attn-3"])
def test_gpu_only_providers_are_unavailable_on_cpu(name):
    with pytest.raises(harness.Unavailable, match="CUDA GPUs only"):
        bench.provider(SMOKE[0], name, "cpu")


def test_materialising_providers_refuse_scores_over_8_gib():
    limit = bench.attention_shape(1, 32, 8192, 8192, 64, False, None)  # 4 * 32 * 8192^2 = 8 GiB
    over = bench.attention_shape(1, 32, 8192, 8200, 64, False, None)
    for name in ("fasttx-reference", "eager", "compiled", "torch-math"):
        bench.provider(harness.Case("attention", "t", "fwd", "bf16", limit), name, "cpu")
        with pytest.raises(harness.Unavailable, match=r"8\.0 GiB \(limit 8 GiB\)"):
            bench.provider(harness.Case("attention", "t", "fwd", "bf16", over), name, "cpu")
    for name in ("fasttx-triton", "torch-default"):  # they never build the scores
        bench.provider(harness.Case("attention", "t", "fwd", "bf16", over), name, "cpu")
    with pytest.raises(LookupError, match="not an attention provider"):
        bench.provider(SMOKE[0], "xformers", "cpu")


def _stand_in_flash_attn():
    """flash-attn's documented contract in plain PyTorch: (B, L, H, D) tensors, varlen
    sequences packed along the first dimension; returns (out, lse) as some flash-attn-3
    builds do. Causal only where Lq == Lk (where bottom-right = top-left)."""
    def dense(q, k, v, causal=False):
        out = bench.eager_attention(*(t.transpose(1, 2) for t in (q, k, v)), None, causal)
        return out.transpose(1, 2), None

    def varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=False):
        outs = []
        for b in range(len(cu_seqlens_q) - 1):
            sequence = [t[int(cu[b]):int(cu[b + 1])] for t, cu in
                        ((q, cu_seqlens_q), (k, cu_seqlens_k), (v, cu_seqlens_k))]
            assert sequence[0].shape[0] <= max_seqlen_q and sequence[1].shape[0] <= max_seqlen_k
            outs.append(dense(*(t[None] for t in sequence), causal)[0][0])
        return torch.cat(outs), None
    return SimpleNamespace(flash_attn_func=dense, flash_attn_varlen_func=varlen)


@pytest.mark.parametrize("causal, padding", [(True, None), (False, 0.5), (True, 0)])
def test_flash_attn_layouts_and_gradients_with_a_stand_in(causal, padding):
    case = harness.Case("attention", "t", "fwd_bwd", "fp32",
                        bench.attention_shape(3, 2, 20, 20, 24, causal, padding))
    flash = bench.flash_attn_provider(_stand_in_flash_attn(), case.shape)
    prepared = harness.Prepared(bench, case, "cpu")
    torch.testing.assert_close(prepared.forward(flash), prepared.expected, **FP32_TOLERANCE)
    input_set = prepared.sets[0]
    adapted = flash.adapt(input_set)
    assert all(t.is_leaf and t.requires_grad for t in adapted.differentiable())
    grads = harness.mode_function(flash.call, "fwd_bwd")[1](adapted)
    expected = _run(case, "fasttx-reference", "fwd_bwd", input_set)
    batch, heads, seqlen, dim = input_set.inputs[0].shape
    in_layout = [g.transpose(1, 2) for g in expected]  # (B, L, H, D)
    if padding is not None:  # q packed (B*Lq, H, D); k, v only the valid keys (total_k, H, D)
        valid = input_set.inputs[3][:, 0, 0, :]
        in_layout = [in_layout[0].reshape(batch * seqlen, heads, dim),
                     *(g[valid] for g in in_layout[1:])]
        assert adapted.inputs[5:] == (20, int(valid.sum(-1).max()))
    assert adapted.grads[0].shape == in_layout[0].shape
    torch.testing.assert_close(grads, tuple(in_layout), **FP32_TOLERANCE)


@pytest.mark.parametrize("seqlen_k, padding", [(24, 0.25), (28, None)])
def test_flash_attn_refuses_bottom_right_causal_cases(seqlen_k, padding):
    shape = bench.attention_shape(2, 2, 24, seqlen_k, 24, True, padding)
    with pytest.raises(harness.Unavailable, match="bottom-right"):
        bench.flash_attn_provider(_stand_in_flash_attn(), shape)


@pytest.mark.parametrize("case", SMOKE, ids=_case_id)
def test_smoke_cases_run_end_to_end(case):
    prepared = harness.Prepared(bench, case, "cpu")
    assert prepared.oracle == "fasttx-reference"
    for name in harness.providers_for(bench, "cpu"):
        row = harness.run_provider(prepared, name)
        assert row["note"] is None, row
        assert row["median_ms"] > 0 and row["tflops"] > 0 and row["mode"] == case.mode, row
    for name in ("fasttx-cuda", "torch-flash", "flash-attn"):  # not on CPU: a reason, no time
        row = harness.run_provider(prepared, name)
        assert row["median_ms"] is None and row["note"].startswith("skipped: "), row
