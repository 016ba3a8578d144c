"""--compare-backends: the same run on each backend, its report and its table."""

import json

import pytest

from fasttx.train.compare import compare_backends, format_table, parse_entries


def test_parse_entries():
    assert parse_entries("reference, triton+compile") == [("reference", False),
                                                          ("triton", True)]
    for bad in ("reference,fast", "triton+jit", "reference,reference", ""):
        with pytest.raises(ValueError, match="--compare-backends"):
            parse_entries(bad)


def test_report_compares_backends_on_the_same_batches(quick_options, tmp_path):
    """reference and triton (the interpreter on CPU) train the same model; cuda can't run
    here and says why."""
    options = quick_options(max_steps=2, max_tokens=40)
    messages = []
    report = compare_backends(options, parse_entries("reference,triton,cuda"),
                              echo=messages.append)
    rows = {row["backend"]: row for row in report["results"]}
    assert report["baseline"] == "reference" and list(rows) == ["reference", "triton", "cuda"]
    assert rows["cuda"]["status"].startswith("skipped: ")
    reference, triton = rows["reference"], rows["triton"]
    assert reference["status"] == triton["status"] == "ok"
    assert set(triton["backends_used"].values()) == {"triton"}
    assert set(reference["backends_used"].values()) == {"reference"}
    assert len(triton["losses"]) == 2 and triton["max_abs_loss_diff"] < 1e-4
    assert reference["speedup"] == 1.0 and reference["max_abs_loss_diff"] == 0.0
    assert triton["tokens_per_s"] > 0 and triton["peak_memory_mb"] is None  # CPU
    written = json.loads((tmp_path / "run" / "compare_backends.json").read_text())
    assert written["results"] == report["results"]
    assert {"torch", "triton", "date", "device"} <= set(written["env"])
    assert (tmp_path / "run" / "compare_backends.png").exists()
    table = format_table(report)
    assert "reference" in table and "skipped" in table and table in messages

