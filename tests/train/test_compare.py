"""--compare-backends: the same run on each backend, its report and its table."""

import json

import pytest

import fasttx
from fasttx.backends import CPU_TIMINGS_CAVEAT
from fasttx.train.compare import (
    compare_backends,
    format_table,
    interpreter_warning,
    parse_entries,
)


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
    assert table.startswith(f"CPU run: {CPU_TIMINGS_CAVEAT}\n")
    assert messages[0].startswith("warning: triton will run fasttx's Triton kernels under "
                                  "Triton's interpreter")  # up front, before any training
    assert "2 steps of 40 tokens take roughly a minute or so per entry" in messages[0]


def test_interpreted_entries_are_named_in_the_warning_others_not(quick_options, monkeypatch):
    options = quick_options(max_steps=1500, max_tokens=2048)
    available = fasttx.available_backends()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    warning = interpreter_warning(options, parse_entries("reference,triton+compile,auto"),
                                  available)
    assert warning.startswith("warning: triton+compile, auto will run fasttx's Triton "
                              "kernels under Triton's interpreter (TRITON_INTERPRET=1)")
    assert "1500 steps of 2048 tokens take roughly 200 hours per entry" in warning
    assert "not a performance figure" in warning
    assert "--max-tokens 128 --max-steps 5" in warning
    short = interpreter_warning(quick_options(max_steps=5, max_tokens=128),
                                parse_entries("triton"), available)
    assert "5 steps of 128 tokens take roughly 2 minutes per entry" in short
    assert interpreter_warning(options, parse_entries("reference,cuda"), available) is None
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a GPU's compiled kernels: no warning
    assert interpreter_warning(options, parse_entries("triton"), available) is None


def _report(device_type, triton_speedup):
    rows = [{"backend": name, "status": "ok", "tokens_per_s": 1000.0 * speedup,
             "speedup": speedup, "peak_memory_mb": None, "final_loss": 2.5,
             "max_abs_loss_diff": 0.0} for name, speedup in
            (("reference", 1.0), ("triton", triton_speedup))]
    return {"env": {"device_type": device_type}, "results": rows}


def test_cpu_table_is_labelled_and_small_speedups_keep_their_digits():
    cpu = format_table(_report("cpu", 0.0012)).splitlines()
    assert cpu[0] == f"CPU run: {CPU_TIMINGS_CAVEAT}"
    assert "not a performance figure" in cpu[0]
    assert "  1.00x " in cpu[3] and "0.0012x" in cpu[4] and "0.00x" not in cpu[4]
    gpu = format_table(_report("cuda", 1.734)).splitlines()
    assert gpu[0].startswith("backend") and "1.73x" in gpu[3]

