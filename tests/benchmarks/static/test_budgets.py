"""The static report's budgets (benchmarks/static/budgets.py), checked in CI: a small fixed
subset of the headline launches compiled for sm_90 with every config the Hopper autotuner
may pick, under the installed Triton. No GPU is needed; about a minute on two cores."""

import copy

import pytest

from benchmarks.static import budgets, cases, report


@pytest.fixture(scope="module")
def subset_report():
    pytest.importorskip("triton.backends.nvidia.compiler")
    selected = [case for case in cases.cases() if (case.op, case.name) in budgets.SUBSET]
    assert len(selected) == len(budgets.SUBSET)
    return report.collect(selected, jobs=2, cuda=False)


def test_the_subset_keeps_every_budget(subset_report):
    assert budgets.violations(subset_report) == []


def test_the_subset_covers_every_kernel_with_a_budget(subset_report):
    kernels = {(row["op"], row["case"], row["kernel"]) for row in subset_report["rows"]}
    assert {row[0] for row in kernels} == {"attention", "add_layer_norm", "feed_forward"}
    assert len(kernels) == 3 * 3 + 3 + 6


def test_each_budget_can_fail(subset_report):
    rows = subset_report["rows"]
    attention = next(row for row in rows if (row["case"], row["kernel"], row["config"]) ==
                     ("d128 none", "forward #0", "128x128 w8 s3"))
    backward = next(row for row in rows if row["assumed_ctas_per_sm"])
    broken = copy.deepcopy(subset_report)
    for row in broken["rows"]:
        if (row["op"], row["case"], row["kernel"], row["config"]) == \
                (attention["op"], attention["case"], attention["kernel"], attention["config"]):
            row.update(spill_stores=8, loop_spills=2, wgmma=0, mix=dict(row["mix"],
                                                         total=row["mix"]["total"] * 2))
        if row["kernel"] == backward["kernel"] and row["case"] == backward["case"]:
            row.update(ctas_per_sm=row["assumed_ctas_per_sm"] - 1)
    found = "\n".join(budgets.violations(broken))
    assert "forward #0 128x128 w8 s3: 2 spill instructions in a loop (8 B stored" in found
    assert "forward #0 128x128 w8 s3: no wgmma" in found
    assert "forward #0 128x128 w8 s3: hot loop" in found
    assert "the launcher assumes" in found

