"""The static report's budgets, which CI checks (tests/benchmarks/static/test_budgets.py) on
a small fixed subset of the headline launches, compiled with the Triton CI installs:

- no register spills inside a loop in any config the Hopper autotuner may pick. A spill
  outside the loops (a few stores and loads once per program, as the 255-register attention
  forward's 128 x 128 tile has with masks or causal under Triton 3.6) is reported but
  allowed: pruning that tile would leave 128 x 64, with 26-28% more instructions per score;
- warpgroup MMA (wgmma) in every such config of the attention and FFN kernels (the 32 x 32
  4-warp tiles fell back to mma.sync; they are no longer listed for Hopper);
- at least the CTAs per SM a launcher assumes (add_layer_norm's persistent backward);
- hot-loop SASS instructions per thread per iteration at most today's figures, for each
  kernel's first config the autotuner may pick. Lower them as the kernels improve: a
  regression in the hot loop then fails CI like a wrong answer does.

The instruction counts depend on the Triton version; for a version not listed, the nearest
listed one's figures hold with ``UNKNOWN_VERSION_SLACK``.
"""

from __future__ import annotations

#: (op, case) of benchmarks.static.cases compiled by the CI test: the attention kernels at
#: the 254-255-register edge (d128 plain, causal, dropout), the LayerNorm kernels with
#: dropout (the backward's most registers), the FFN's GEMMs at the base size.
SUBSET = (("attention", "d128 none"), ("attention", "d128 causal"),
          ("attention", "d128 dropout"), ("add_layer_norm", "25000x512 p0.1"),
          ("feed_forward", "25000x512x2048"))
UNKNOWN_VERSION_SLACK = 1.10

#: Triton major.minor -> (op, case, kernel) -> hot-loop instructions per thread per
#: iteration of the first config its Hopper autotuner may pick.
HOT_LOOP_INSTRUCTIONS = {
    "3.6": {
        "attention|d128 none|forward #0": 649,
        "attention|d128 none|dq #1": 308,
        "attention|d128 none|dkdv #2": 283,
        "attention|d128 causal|forward #0": 650,
        "attention|d128 causal|dq #1": 317,
        "attention|d128 causal|dkdv #2": 306,
        "attention|d128 dropout|forward #0": 2303,
        "attention|d128 dropout|dq #1": 1176,
        "attention|d128 dropout|dkdv #2": 1317,
        "add_layer_norm|25000x512 p0.1|forward #0": 880,
        "add_layer_norm|25000x512 p0.1|backward #1": 1279,
        "add_layer_norm|25000x512 p0.1|column_sum #2": 107,
        "feed_forward|25000x512x2048|up #0": 134,
        "feed_forward|25000x512x2048|linear #1": 134,
        "feed_forward|25000x512x2048|hidden_grad #2": 98,
        "feed_forward|25000x512x2048|linear #3": 266,
        "feed_forward|25000x512x2048|linear #4": 98,
        "feed_forward|25000x512x2048|linear #5": 266,
    },
    "3.9": {
        "attention|d128 none|forward #0": 676,
        "attention|d128 none|dq #1": 354,
        "attention|d128 none|dkdv #2": 316,
        "attention|d128 causal|forward #0": 675,
        "attention|d128 causal|dq #1": 363,
        "attention|d128 causal|dkdv #2": 316,
        "attention|d128 dropout|forward #0": 2496,
        "attention|d128 dropout|dq #1": 1312,
        "attention|d128 dropout|dkdv #2": 1436,
        "add_layer_norm|25000x512 p0.1|forward #0": 896,
        "add_layer_norm|25000x512 p0.1|backward #1": 1246,
        "add_layer_norm|25000x512 p0.1|column_sum #2": 106,
        "feed_forward|25000x512x2048|up #0": 129,
        "feed_forward|25000x512x2048|linear #1": 129,
        "feed_forward|25000x512x2048|hidden_grad #2": 103,
        "feed_forward|25000x512x2048|linear #3": 277,
        "feed_forward|25000x512x2048|linear #4": 103,
        "feed_forward|25000x512x2048|linear #5": 277,
    },
}


def hot_loop_budgets(triton_version: str) -> tuple[dict, float]:
    """The budgets for this Triton version and the slack they hold with."""
    version = tuple(int(part) for part in triton_version.split(".")[:2])
    listed = {tuple(map(int, key.split("."))): key for key in HOT_LOOP_INSTRUCTIONS}
    if version in listed:
        return HOT_LOOP_INSTRUCTIONS[listed[version]], 1.0
    nearest = min(listed, key=lambda known: (abs(known[0] - version[0]),
                                             abs(known[1] - version[1])))
    return HOT_LOOP_INSTRUCTIONS[listed[nearest]], UNKNOWN_VERSION_SLACK


def violations(report: dict) -> list[str]:
    """Every budget the report's Triton rows break, in words (empty when all hold)."""
    found = []
    budgets, slack = hot_loop_budgets(report["env"]["triton"])
    first_config_seen = set()
    for row in report["rows"]:
        if row["backend"] != "triton" or not row["autotuned"]:
            continue
        where = f"{row['op']} {row['case']} {row['kernel']} {row['config']}"
        if row["loop_spills"]:
            found.append(f"{where}: {row['loop_spills']} spill instructions in a loop "
                         f"({row['spill_stores']} B stored, {row['spill_loads']} B loaded "
                         f"per thread)")
        if row["op"] != "add_layer_norm" and not row["wgmma"]:
            found.append(f"{where}: no wgmma ({row['mma_sync']} mma.sync)")
        assumed = row["assumed_ctas_per_sm"]
        if assumed and row["ctas_per_sm"] < assumed:
            found.append(f"{where}: {row['ctas_per_sm']} CTAs/SM ({row['limiter']}), the "
                         f"launcher assumes {assumed}")
        key = (row["op"], row["case"], row["kernel"])
        if key in first_config_seen:
            continue
        first_config_seen.add(key)
        budget = budgets.get("|".join(key))
        if budget is None:
            found.append(f"{where}: no hot-loop budget (add today's figure, "
                         f"{row['mix']['total']}, to benchmarks/static/budgets.py)")
        elif row["mix"]["total"] > budget * slack:
            found.append(f"{where}: hot loop {row['mix']['total']} instructions per thread per "
                         f"iteration, budget {budget}" + (f" x {slack}" if slack != 1 else ""))
    return found
