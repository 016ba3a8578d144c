"""benchmarks/static/report.py: occupancy, the hot-loop choice, rendering and comparison,
on figures with known answers (no compile)."""

import json

import pytest

from benchmarks.static import report, sass


@pytest.mark.parametrize("registers, warps, shared, expected", [
    (99, 16, 16384, (1, "registers")),    # LayerNorm backward: 104 x 32 x 16 > 32768 regs
    (64, 16, 16384, (2, "registers")),
    (254, 8, 229376, (1, "registers")),   # attention forward d128, 224 KiB: both say 1
    (168, 4, 114688, (2, "shared")),      # 112 KiB + 1 KiB reserved, twice in 228 KiB
    (87, 4, 24576, (5, "registers")),     # 88 x 32 x 4 = 11264 registers per CTA
    (24, 16, 16384, (4, "warps")),
    (16, 1, 0, (32, "ctas")),
])
def test_ctas_per_sm_follow_hopper_limits(registers, warps, shared, expected):
    assert report.ctas_per_sm(registers, warps, shared) == expected


def loop(start, size, tensor):
    return sass.Loop(start, start + 16 * size, {"HGMMA": tensor, "FADD": size - tensor})


def test_hot_loop_rules():
    bulk, boundary, prologue = loop(0x100, 600, 16), loop(0x2000, 700, 16), loop(0x10, 40, 0)
    loops = [prologue, bulk, boundary]
    assert report.hot_loop(loops, "fewest") is bulk        # attention's mask-free pass
    assert report.hot_loop(loops, "most") is boundary      # the slowest GEMM programs
    assert report.hot_loop(loops, "sum").size == 1340
    assert report.hot_loop(loops, "kernel") is None
    assert report.hot_loop([], "fewest") is None


def row(case="d128 none", registers=254, per_unit=10.56, total=676, spill=0):
    return {"backend": "triton", "op": "attention", "case": case, "kernel": "forward",
            "function": "attention_forward_kernel", "config": "128x128 w8 s3", "warps": 8,
            "stages": 3, "registers": registers, "spill_stores": spill, "spill_loads": spill,
            "stack": spill, "shared": 229376, "autotuned": True, "ctas_per_sm": 1,
            "limiter": "registers", "assumed_ctas_per_sm": None, "wgmma": 32,
            "wgmma_wait": [0], "mma_sync": 0, "tma": 0, "setmaxnreg": 0, "cp_async": 96,
            "loops": 2, "hot_loop": "fewest", "unit": "score", "units_per_iteration": 16384,
            "mix": {"total": total, "tensor": 16, "fp32": 334}, "per_unit": per_unit}


def a_report(*rows, triton="3.9.0"):
    return {"env": {"date": "2026-12-04T00:00:00+00:00", "commit": "abc", "dirty": False,
                    "target": "sm_90", "triton": triton}, "rows": list(rows)}


def test_markdown_has_a_row_per_kernel_and_flags_spills():
    text = report.markdown(a_report(row(), dict(row(case="d128 causal", spill=8), loop_spills=0)))
    assert "# Static cost report: sm_90, Triton 3.9.0" in text
    lines = [line for line in text.splitlines() if line.startswith("| d128")]
    assert len(lines) == 2
    assert "| 254 | 0 | 224 | 1 (registers) | 32 (0) |" in lines[0]
    assert "**8/8** outside loops" in lines[1]
    assert "10.56/score" in lines[0]


def test_compare_shows_what_changed_and_counts_the_rest():
    before = a_report(row(), row(case="d64 none"), row(case="gone"))
    after = a_report(row(registers=240, total=614, per_unit=9.59), row(case="d64 none"),
                     row(case="new"), triton="3.6.0")
    text = report.compare(before, after)
    assert "Triton 3.9.0 @ abc -> Triton 3.6.0 @ abc" in text
    changed = [line for line in text.splitlines() if "d128 none" in line]
    assert len(changed) == 1
    assert "254 -> 240 (-6%)" in changed[0] and "676 -> 614 (-9%)" in changed[0]
    assert "| gone | forward | 128x128 w8 s3 | only before |" in text
    assert "| new | forward | 128x128 w8 s3 | only after |" in text
    assert "1 kernels unchanged." in text


def test_the_command_line_compares_two_files(tmp_path, capsys):
    paths = []
    for name, registers in (("before", 254), ("after", 255)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(a_report(row(registers=registers))))
    report.main(["--compare", *map(str, paths)])
    assert "254 -> 255" in capsys.readouterr().out
