"""The attention benchmark script: its FLOP convention, its inputs, and a CPU smoke run."""

import json

import pytest
import torch

from benchmarks import attention
from fasttx.testing import requires_triton


def test_flops_follow_the_field_convention():
    dense = attention.flops(2, 16, 4096, 128, "none", "fwd")
    assert dense == 4 * 2 * 16 * 4096 * 4096 * 128
    assert attention.flops(2, 16, 4096, 128, "causal", "fwd") == dense / 2
    assert attention.flops(2, 16, 4096, 128, "key_padding", "fwd+bwd") == 3.5 * dense
    assert attention.flops(2, 16, 4096, 128, "key_padding+causal", "fwd+bwd") == 1.75 * dense


def test_padded_cases_give_torch_the_equivalent_mask():
    _, _, _, padding, torch_mask, causal = attention.make_case(3, 2, 16, 16,
                                                               "key_padding+causal",
                                                               torch.float32, "cpu", seed=0)
    assert causal and padding.shape == (3, 1, 1, 16) and torch_mask.shape == (3, 1, 16, 16)
    for b, length in enumerate(padding.sum(-1).flatten().tolist()):
        assert padding[b, 0, 0, :length].all() and not padding[b, 0, 0, length:].any()
        for i in range(16):
            for j in range(16):
                assert bool(torch_mask[b, 0, i, j]) == (j <= i and j < length), (b, i, j)
    fraction_padded = 1 - attention.make_case(64, 1, 256, 16, "key_padding", torch.float32,
                                              "cpu", seed=1)[3].double().mean()
    assert 0.4 < fraction_padded < 0.6  # half the keys padded on average


def test_bad_arguments_are_rejected():
    with pytest.raises(SystemExit):
        attention.parse_args(["--masks", "sliding_window"])


@requires_triton
def test_cpu_smoke_run_writes_results(tmp_path, capsys):
    attention.main(["--device", "cpu", "--smoke", "--masks", "none,key_padding+causal",
                    "--out", str(tmp_path)])
    results = json.loads(next(tmp_path.glob("attention-*.json")).read_text())
    assert results["environment"]["commit"] and results["environment"]["torch"]
    rows = results["rows"]
    timed = {(r["mask"], r["mode"], r["provider"]) for r in rows if r["ms"] is not None}
    for mask in ("none", "key_padding+causal"):
        for mode in ("fwd", "fwd+bwd"):
            assert {(mask, mode, "fasttx"), (mask, mode, "torch-default")} <= timed
    assert all(r["tflops"] > 0 for r in rows if r["ms"] is not None)
    assert "| fasttx |" in capsys.readouterr().out
