"""The report: speedups over the best peer, tables, plots, the README's section.

The results here are made up (a fictitious GPU): they test the rendering, not a kernel.
"""

import json

import matplotlib.pyplot
import matplotlib.text
import pytest

from benchmarks import harness, report
from fasttx.backends import CPU_TIMINGS_CAVEAT

CEILING = {"bf16_matmul_tflops": 800.0, "copy_gbps": 4000.0}
ENV = {"date": "2026-11-20T10:00:00+00:00", "commit": "0123456789abcdef", "dirty": False,
       "profile": "full", "device": "cuda", "gpu": "Test GPU", "capability": "9.0",
       "gpu_memory_gib": 80.0, "torch": "2.11", "cuda": "13.0", "triton": "3.6",
       "cudnn": 91000, "flash_attn": None, "fasttx": "0.1.0"}
#: (seqlen, provider) -> median ms; "floor" is a bound, not a peer
TIMES = {(1024, "fasttx-triton"): 1.0, (1024, "fasttx-cuda"): 0.5, (1024, "eager"): 2.0,
         (1024, "torch-x"): 1.5, (1024, "floor"): 0.1,
         (4096, "fasttx-triton"): 4.0, (4096, "eager"): 8.0, (4096, "torch-x"): None,
         (4096, "fasttx-reference"): 7.0,
         (4096, "floor"): 0.2}


@pytest.fixture(autouse=True)
def fake_op(monkeypatch):
    monkeypatch.setattr(report, "floors_of", lambda op: ("floor",) if op == "fake" else ())
    monkeypatch.setattr(report, "load", lambda op: type("Module", (), {"PLOTS": [
        harness.Plot("seqlen", x="seqlen", metric="tflops", panels=("mode",),
                     sweeps=("long",), log_x=True)]}))
    monkeypatch.setattr(report, "OPS", ("fake",))


def _rows():
    rows = []
    for (seqlen, provider), ms in TIMES.items():
        case = harness.Case("fake", "long", "fwd", "bf16", {"seqlen": seqlen, "heads": 8},
                            flops=seqlen * 1e9)
        timing = harness.Timing(ms, ms * 0.9, ms * 1.1, 20) if ms else None
        rows.append(harness.result_row(case, provider, timing, 10.0, CEILING,
                                       note=None if ms else "skipped: refuses the mask"))
    return rows


def _write(folder, env=ENV):
    return harness.write_results(folder / "fake.json", env, CEILING, _rows())


def test_speedups_are_over_the_fastest_peer_never_a_floor_or_a_fasttx_kernel():
    rows = _rows()
    # torch-x at 1024; fasttx's reference (plain PyTorch, a peer) at 4096
    assert report.speedups(rows, "fasttx-triton") == [1.5, 1.75]
    assert report.speedups(rows, "fasttx-cuda") == [3.0]  # it did not run at 4096
    assert report.geometric_mean([1.5, 8 / 3]) == pytest.approx(2.0)


def test_sweep_tables_show_each_backend_the_best_peer_and_the_speedup():
    table = report.sweep_table(_rows())
    lines = table.splitlines()
    assert "every case: heads=8" in lines[0] and "TFLOP/s" in lines[0]
    assert lines[2] == ("| seqlen | mode | dtype | fasttx-triton | fasttx-cuda | best peer "
                        "| triton × | cuda × |")
    first, second = lines[4], lines[5]
    assert first.startswith("| 1024 | fwd | bf16 | 1 ms · 1,024 (128%) | 0.5 ms · 2,048 (256%)")
    assert "torch-x: 1.5 ms" in first and "**1.50×** | **3.00×** |" in first
    assert "fasttx-reference: 7 ms" in second and "**1.75×** | – |" in second


def test_cpu_results_are_labelled_not_performance_figures(tmp_path):
    data = harness.load_results(_write(tmp_path, {**ENV, "gpu": None, "device": "cpu"}))
    assert "CPU smoke run" in report.op_markdown(data)
    assert "CPU smoke run" not in report.op_markdown(harness.load_results(_write(tmp_path)))


def test_render_writes_tables_and_plots(tmp_path):
    _write(tmp_path)
    readme = report.render(tmp_path)
    text = readme.read_text()
    assert "Test GPU" in text and "800.0 TFLOP/s" in text and "commit `0123456789ab`" in text
    assert "skipped: refuses the mask" in text  # every provider's row, in the details
    assert "![fake: seqlen](fake-seqlen.png)" in text
    assert (tmp_path / "fake-seqlen.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no results files"):
        report.render(tmp_path / "empty")


def test_the_readme_section_shows_the_newest_gpu_run_only(tmp_path, monkeypatch):
    root = tmp_path / "results"
    older, newer, cpu = root / "older-gpu", root / "test-gpu", root / "cpu"
    _write(older, {**ENV, "date": "2026-01-01T00:00:00+00:00"})
    _write(newer)
    _write(cpu, {**ENV, "gpu": None, "date": "2027-01-01T00:00:00+00:00"})
    assert report.latest_gpu_folder(root) == newer
    report.render(newer)
    (newer / "fake-quick-seqlen.png").write_bytes(b"")
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\n{report.README_BEGIN}\nold\n"
                      f"{report.README_END}\n\nafter\n")
    report.update_readme(readme, newer)
    text = readme.read_text()
    assert "old" not in text and text.endswith(f"{report.README_END}\n\nafter\n")
    assert "[all tables and plots](results/test-gpu/README.md)" in text
    assert "| fake | long | fasttx-triton | 1.62× (1.50–1.75×) | 2 |" in text
    assert "| fake | long | fasttx-cuda | 3.00× (3.00–3.00×) | 1 |" in text
    assert "](results/test-gpu/fake-seqlen.png)" in text
    assert "fake-quick" not in text  # another profile's plots are not this one's
    report.update_readme(readme, None)
    assert "No GPU results are committed yet" in readme.read_text()
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- benchmarks:begin -->"):
        report.update_readme(readme, newer)


def test_the_report_command_renders_folders_and_names_bad_files(tmp_path, capsys):
    _write(tmp_path)
    report.main([str(tmp_path)])
    assert (tmp_path / "README.md").exists()
    (tmp_path / "broken.json").write_text(json.dumps([1, 2]))
    with pytest.raises(SystemExit, match="broken.json: a results file holds"):
        report.main([str(tmp_path)])


def test_cpu_plots_carry_the_caveat_gpu_plots_do_not():
    spec = report.load("fake").PLOTS[0]
    for env, caveat_expected in (({**ENV, "gpu": None, "device": "cpu"}, True), (ENV, False)):
        figure = report.plot_figure(_rows(), spec, env)
        texts = [text.get_text() for text in figure.findobj(matplotlib.text.Text)]
        assert any(CPU_TIMINGS_CAVEAT in text for text in texts) == caveat_expected, texts
        matplotlib.pyplot.close(figure)


def test_report_without_folders_renders_every_results_folder_cpu_included(
        tmp_path, monkeypatch, capsys):
    """The smoke run's results, just written to results/cpu/, are reported (labelled)."""
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    gpu, cpu = tmp_path / "test-gpu", tmp_path / "cpu"
    _write(gpu)
    _write(cpu, {**ENV, "gpu": None, "device": "cpu", "date": "2027-01-01T00:00:00+00:00"})
    (tmp_path / "empty").mkdir()
    report.main([])
    assert "Test GPU" in (gpu / "README.md").read_text()
    cpu_text = (cpu / "README.md").read_text()
    assert "CPU smoke run" in cpu_text and CPU_TIMINGS_CAVEAT in cpu_text
    assert (cpu / "fake-seqlen.png").exists()
    err = capsys.readouterr().err
    assert f"written: {cpu / 'README.md'} (CPU smoke run: {CPU_TIMINGS_CAVEAT})" in err
    assert f"written: {gpu / 'README.md'}\n" in err
    assert report.results_folders(tmp_path) == [cpu, gpu]  # the newest run first
