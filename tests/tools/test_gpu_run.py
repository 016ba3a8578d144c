"""tools/gpu_run.py, the one-call GPU run, rehearsed on CPU: the whole run end to end, and
its runner's promises one by one (a hang is killed with its children and hides nothing, the
budget trims with a reason, OUT always comes back whole)."""

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("gpu_run", ROOT / "tools" / "gpu_run.py")
gpu_run = importlib.util.module_from_spec(SPEC)
sys.modules["gpu_run"] = gpu_run  # (its dataclasses look their module up)
SPEC.loader.exec_module(gpu_run)

PYTHON = sys.executable


def python_step(name, code, *, timeout=30.0, estimate=1.0, **kwargs):
    return gpu_run.Step(name, [PYTHON, "-c", code], estimate, timeout, **kwargs)


def make_run(tmp_path, budget=120.0, **kwargs):
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    return gpu_run.Run(budget, out, logs, **kwargs)


class FixedPlan:
    """A plan of the given phases (what execute() runs)."""

    def __init__(self, tmp_path, *phases):
        self.junit = tmp_path / "gpu-tests.xml"
        self._phases = list(phases)

    def phases(self):
        return self._phases


def test_rehearsal_runs_every_phase_and_out_comes_back_whole(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([PYTHON, "tools/gpu_run.py", "--rehearse", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert gpu_run.check_out_limits(out) == []
    summary = (out / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| ") and
            not line.startswith("| phase")]
    phases = {row.split(" | ")[0].strip("| ") for row in rows}
    assert phases == set(gpu_run.PHASES)
    for row in rows:  # every step ran and passed (the ELF check needs nvcc's object)
        if shutil.which("nvcc") is None and (" compile " in row or " sm90a-images " in row):
            assert "skipped: nvcc not found" in row, row
            continue
        assert " | ok | " in row, row
    tests = (out / "cpu" / "gpu-tests.txt").read_text()
    assert "commit: " in tests and "versions: python" in tests
    assert "result: 8 passed, 0 failed, 0 skipped" in tests
    assert json.loads((out / "cpu" / "add_layer_norm-smoke.json").read_text())
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
    assert "smoke-attention-triton.log" in names and "tests-gpu-suite.log" in names
    assert len(names) == len(rows)  # one log per step


def test_a_hanging_step_is_killed_with_its_children_and_hides_nothing(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    hang = python_step("hang", (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)\n"), timeout=3)
    crash = python_step("crash", "import os; os.abort()")
    after = python_step("after", "print('RESULT {\"fine\": 1}')")
    run = make_run(tmp_path)
    started = time.monotonic()
    for step in (hang, crash, after):
        run.run_step(gpu_run.Phase("smoke", []), step)
    assert time.monotonic() - started < 30
    statuses = [o.status for o in run.outcomes]
    assert statuses[0].startswith("TIMEOUT after 3 s")
    assert statuses[1].startswith("FAILED (exit -6)")
    assert statuses[2] == "ok"
    grandchild = int(pid_file.read_text())
    time.sleep(0.5)
    status = pathlib.Path(f"/proc/{grandchild}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()  # killed (or a zombie)


def test_the_budget_trims_steps_and_says_why(tmp_path):
    run = make_run(tmp_path, budget=gpu_run.RESERVE + 20)
    phase = gpu_run.Phase("bench", [python_step("fits", "pass", estimate=5),
                                    python_step("too-long", "pass", estimate=100)])
    run.run_phase(phase)
    fits, too_long = run.outcomes
    assert fits.status == "ok"
    assert too_long.status.startswith("skipped: needs ~100 s,") and "s left" in too_long.status


def test_steps_outside_the_focus_or_waiting_on_a_failed_build_are_skipped(tmp_path):
    run = make_run(tmp_path, focus="attention")
    build = gpu_run.Phase("build", [python_step("compile", "raise SystemExit(2)")],
                          background=True)
    smoke = gpu_run.Phase("smoke", [
        python_step("attention-triton", "pass", family="attention"),
        python_step("ffn-triton", "pass", family="ffn"),
        python_step("attention-cuda", "pass", family="attention", needs_build=True)],
        parallel=2)
    run.run_phase(build)
    run.run_phase(smoke)
    status = {o.step: o.status for o in run.outcomes}
    assert status["compile"] == "FAILED (exit 2)"
    assert status["attention-triton"] == "ok"
    assert status["ffn-triton"] == "skipped: not in --focus attention"
    assert status["attention-cuda"] == "skipped: the build failed or did not finish"


def test_sigterm_stops_the_run_and_still_writes_summary_and_logs(tmp_path):
    run = make_run(tmp_path)
    plan = FixedPlan(tmp_path, gpu_run.Phase("env", [python_step("report", "print('hi')")]),
                     gpu_run.Phase("tests", [python_step("hang", "import time; time.sleep(600)",
                                                         timeout=300)]),
                     gpu_run.Phase("bench", [python_step("late", "pass")]))
    threading.Timer(3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    assert gpu_run.execute(run, plan) == 1
    assert time.monotonic() - started < 30
    status = {o.step: o.status for o in run.outcomes}
    assert status["report"] == "ok" and status["hang"] == "STOPPED (the run was interrupted)"
    assert status["late"] == "skipped: the run was stopped"
    assert "| tests | hang | STOPPED" in (run.out / "summary.md").read_text()
    assert (run.out / "logs.tar.gz").exists()


def test_pack_moves_what_would_not_come_back_into_the_logs(tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    (out / "nvidia-h200" / "deeper" / "still").mkdir(parents=True)
    logs.mkdir()
    (out / "summary.md").write_text("summary")
    (out / "nvidia-h200" / "gpu-tests.txt").write_text("tests")
    for i in range(8):
        (out / "nvidia-h200" / f"op{i}-quick.json").write_text("{}")
    (out / "nvidia-h200" / "deeper" / "still" / "x.json").write_text("{}")
    (out / "odd name.txt").write_text("spaces")
    (out / "big.bin").write_bytes(os.urandom(gpu_run.MAX_FILE_BYTES + 1))
    (logs / "smoke.log").write_text("ok\n")
    (logs / "huge.log").write_bytes(b"head\n" + os.urandom(3 * gpu_run.LOG_BYTES) + b"\ntail\n")
    assert gpu_run.check_out_limits(out)
    notes = gpu_run.pack(out, logs)
    assert gpu_run.check_out_limits(out) == []
    kept = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert len(kept) == gpu_run.MAX_FILES
    assert kept[:3] == ["logs.tar.gz", "nvidia-h200/gpu-tests.txt", "nvidia-h200/op0-quick.json"]
    assert "summary.md" in kept and not (out / "nvidia-h200" / "deeper").exists()
    assert len(notes) == 6  # three results past the count, the deep, the odd and the big file
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = tar.getnames()
        huge = tar.extractfile("huge.log").read()
    assert "overflow/nvidia-h200__deeper__still__x.json" in names
    assert "overflow/odd name.txt" in names and "overflow/big.bin" in names
    assert huge.startswith(b"head\n") and huge.endswith(b"\ntail\n")
    assert len(huge) < gpu_run.LOG_BYTES + 100 and b"bytes cut]" in huge


@pytest.mark.parametrize("log,ok,words", [
    ("========= ERROR SUMMARY: 0 errors\nRESULT {}", True, "0 sanitizer errors"),
    ("========= Invalid __global__ read\n========= ERROR SUMMARY: 3 errors", False, "3 sanitizer"),
    ("========= RACECHECK SUMMARY: 2 hazards displayed (1 error, 1 warning)", False, "1 sanitizer"),
    ("Device not supported", False, "no sanitizer summary"),
])
def test_the_sanitizers_own_summary_decides(log, ok, words):
    passed, headline = gpu_run.sanitizer_result(log, 0)
    assert passed is ok and words in headline


def test_gpu_tests_txt_lists_failures_first_with_versions(tmp_path):
    junit = tmp_path / "gpu-tests.xml"
    junit.write_text(
        '<testsuites><testsuite><testcase classname="tests.a" name="test_ok" time="1.5"/>'
        '<testcase classname="tests.b" name="test_bad" time="2"><failure message="max error '
        '3e-2 exceeds&#10;more"/></testcase><testcase classname="tests.c" name="test_cuda" '
        'time="0"><skipped message="needs fasttx._C"/></testcase></testsuite></testsuites>')
    run = make_run(tmp_path)
    run.facts = {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "triton": "3.6.0"}
    path = gpu_run.write_gpu_tests(run, junit)
    assert path == run.out / "nvidia-h200" / "gpu-tests.txt"
    text = path.read_text()
    assert "gpu: NVIDIA H200" in text and "torch 2.11.0+cu130, triton 3.6.0" in text
    assert "result: 1 passed, 1 failed, 1 skipped" in text
    lines = [line for line in text.splitlines() if line.startswith(("failed", "passed",
                                                                     "skipped"))]
    assert lines[0].startswith("failed") and "tests.b::test_bad" in lines[0]
    assert "max error 3e-2 exceeds" in text and "more" not in text


def test_the_plan_fits_the_budget_with_each_phase_estimated():
    done = subprocess.run([PYTHON, "tools/gpu_run.py", "--plan", "--no-count", "--budget", "540"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for phase in gpu_run.PHASES:
        assert f"\n{phase}" in done.stdout
    tight = subprocess.run([PYTHON, "tools/gpu_run.py", "--plan", "--no-count", "--budget",
                            "200"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert tight.returncode == 1 and "past the budget" in tight.stdout


def test_a_copy_without_git_is_told_its_commit(monkeypatch):
    monkeypatch.setattr(gpu_run, "git", lambda *args: "unknown")
    monkeypatch.setenv("FASTTX_COMMIT", "0123abc")
    assert gpu_run.commit() == "0123abc"
    monkeypatch.delenv("FASTTX_COMMIT")
    assert "set FASTTX_COMMIT" in gpu_run.commit()
