"""One prepared call that verifies and measures fasttx on a borrowed GPU (built for an H200).

GPU time comes by chance and briefly (one machine, about 15 minutes in all, a call at most
10), so the first run on hardware is one command, written and rehearsed on CPU beforehand:

    FASTTX_COMMIT=<sha> python3 tools/gpu_run.py --budget 540 --out "$OUT"   # GPU, repo root
    python3 tools/gpu_run.py --plan --budget 540         # here: phases, estimates, the count
    python3 tools/gpu_run.py --rehearse                  # here (CI runs it): CPU, tiny sizes
    python3 tools/gpu_run.py --phases build,tests --focus attention --out "$OUT"  # a rerun
                                                   # (a fresh machine needs the build again)

Phases, the smallest and most diagnostic first (``PHASES``):

  env        GPU, driver, versions, available_backends() with reasons, measured ceilings
  build      fasttx._C for sm_90a only, in the background beside the Triton phases; then its
             images must be sm_90a with wgmma in them, and a profiled call must show which
             attention kernel ran (the Hopper one or the sm_80 one)
  smoke      per op family x backend, a one-tile and realistic bf16/fp16 cases against the
             float64 reference on the GPU, each in its own process
  sanitizer  compute-sanitizer memcheck on the one-tile cases of every CUDA family and of
             the Triton attention; racecheck on the sm_80 attention
  tests      the gpu-marked pytest suite, tiles fixed (FASTTX_TRITON_AUTOTUNE=0) so the JIT
             compiles one variant per specialisation, spread over workers (pytest-xdist)
  bench      the headline benchmark cases of each op, every provider, autotuned

Every step is a subprocess in its own process group with its own timeout, so a hang, a
crash or a sticky CUDA error hides nothing else. ``--budget`` trims: a step whose estimate
no longer fits is skipped, with the reason. At the end the summary table (phase, step,
status, seconds, headline) is printed and written to OUT/summary.md; the logs go into
OUT/logs.tar.gz; the results, in the committed format, under OUT/<gpu>/ (gpu-tests.txt and
the benchmarks' JSON), ready to copy to benchmarks/results/. What comes back from the
machine is at most 8 files, 2 folders deep, 16 MiB each: ``pack`` keeps OUT within that.

Standard library only: the checks that need torch live in tools/gpu_checks.py.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("env", "build", "smoke", "sanitizer", "tests", "bench")
FOCUS = ("attention", "layer_norm", "ffn", "training")
OP_FAMILY = {"attention": "attention", "varlen_attention": "attention",
             "add_layer_norm": "layer_norm", "feed_forward": "ffn", "model": "training"}
MAX_FILES, MAX_FILE_BYTES, MAX_DEPTH = 8, 16 * 2**20, 2  # what comes back from OUT
LOG_BYTES = 2 * 2**20   # a log is cut to its head and tail beyond this in logs.tar.gz
RESERVE = 15            # seconds kept for the summary and the packing
WORKERS = 6             # pytest-xdist workers of the tests phase (Triton compiles in each)
# The tests phase on an H200, from the count (`--plan` runs it again): the suite's 119
# Triton cases compile 276 distinct kernel specialisations. All of them compiled for sm_90
# here with Triton 3.6 (the GPU machine's) in 330 s on a busy 2-core CPU, 1.2 s each (0.6 s
# with Triton 3.9 on an idle core): about 55 s over WORKERS workers, plus ~45 s for the
# tests themselves and the workers' start.
TESTS_ESTIMATE = 110


# ---------------------------------------------------------------- the plan

@dataclass
class Step:
    """One subprocess. ``command`` may be a function of the run (for paths known only once
    earlier steps ran); ``estimate`` is its expected seconds on the GPU (a guess until a run
    measures it, then the summary shows both)."""
    name: str
    command: list[str] | Callable[[Run], list[str]]
    estimate: float
    timeout: float
    family: str | None = None        # the --focus it belongs to (None: always)
    needs_build: bool = False        # waits for the build; skipped when it failed
    env: dict = field(default_factory=dict)
    skip: str | None = None          # known before it starts: why it can't run here
    check: Callable[[str, int], tuple[bool, str]] | None = None  # (log, rc) -> ok, headline


@dataclass
class Phase:
    name: str
    steps: list[Step]
    parallel: int = 1                # steps run this many at a time
    background: bool = False         # starts, then runs beside the phases after it


@dataclass
class Outcome:
    phase: str
    step: str
    status: str                      # ok | FAILED ... | TIMEOUT ... | skipped: why
    seconds: float
    estimate: float
    headline: str = ""


def last_result(log: str) -> dict:
    """The ``RESULT {json}`` line a gpu_checks command printed last ({} if none)."""
    lines = [line for line in log.splitlines() if line.startswith("RESULT ")]
    try:
        return json.loads(lines[-1][len("RESULT "):]) if lines else {}
    except json.JSONDecodeError:
        return {}


def tail_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def check_result(log: str, rc: int) -> tuple[bool, str]:
    """A gpu_checks command: its exit status, and the headline of its RESULT line."""
    return rc == 0, last_result(log).get("headline") or tail_line(log)


def build_result(log: str, rc: int) -> tuple[bool, str]:
    """The build: setup.py's own messages (the targets, warnings), else its last line."""
    said = [line.split("fasttx setup: ", 1)[1] for line in log.splitlines()
            if "fasttx setup: " in line]
    body = [line for line in log.splitlines()[1:] if line.strip()]  # (line 0: the command)
    return rc == 0, "; ".join(said)[:300] or (tail_line("\n".join(body)) if body else
                                              "compiled, nothing printed")


def sanitizer_result(log: str, rc: int) -> tuple[bool, str]:
    """compute-sanitizer's own summary: "ERROR SUMMARY: N errors" (memcheck) or
    "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)"."""
    errors = [int(n) for n in re.findall(r"ERROR SUMMARY: (\d+) error", log)]
    hazards = re.findall(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?", log)
    if not errors and not hazards:
        return False, "no sanitizer summary: " + tail_line(log)
    count = sum(errors) + sum(int(e) for _, e in hazards)
    return count == 0 and rc == 0, f"{count} sanitizer errors; {check_result(log, rc)[1]}"


def pytest_result(junit: Path) -> Callable[[str, int], tuple[bool, str]]:
    def check(log: str, rc: int) -> tuple[bool, str]:
        counts = junit_counts(junit)
        if counts is None:
            return False, "no junit report: " + tail_line(log)
        return rc == 0 and counts["failed"] == 0, ", ".join(
            f"{n} {k}" for k, n in counts.items() if n or k == "passed")
    return check


def bench_result(log: str, rc: int) -> tuple[bool, str]:
    """The benchmarks: rows timed and rows with a note (a provider that failed or does not
    apply), from the results files the run wrote."""
    timed = noted = 0
    for path in dict.fromkeys(re.findall(r"written: (\S+)", log)):
        try:
            rows = json.loads(Path(path).read_text())["results"]
        except (OSError, ValueError, KeyError):
            continue
        timed += sum(row.get("median_ms") is not None for row in rows)
        noted += sum(bool(row.get("note")) for row in rows)
    text = f"{timed} timings, {noted} notes"
    return rc == 0, text + ("" if rc == 0 else "; " + tail_line(log))


class Plan:
    """The phases of a GPU run, or of its CPU rehearsal."""

    def __init__(self, rehearse: bool, work: Path, python: str = sys.executable):
        self.rehearse, self.work, self.python = rehearse, work, python
        self.junit = work / "gpu-tests.xml"  # the tests phase's report

    def checks(self, *args: str) -> list[str]:
        return [self.python, "tools/gpu_checks.py", *(["--rehearse"] if self.rehearse else []),
                *args]

    def phases(self) -> list[Phase]:
        return [self.env(), self.build(), self.smoke(), self.sanitizer(), self.tests(),
                self.bench()]

    def env(self) -> Phase:
        return Phase("env", [Step("report", self.checks("env"), 30, 120, check=check_result)])

    def build(self) -> Phase:
        if self.rehearse:  # one Hopper source to an object: the ELF check has an image
            nvcc = shutil.which("nvcc")
            obj = str(self.work / "attention_forward_sm90.o")
            compile_step = Step("compile", [
                nvcc or "nvcc", "-c", "csrc/attention/attention_forward_sm90.cu", "-Icsrc",
                "-std=c++17", "-O3", "-gencode", "arch=compute_90a,code=sm_90a", "-o", obj],
                90, 300, skip=None if nvcc else "nvcc not found (rehearsal)", check=build_result)
            elf = Step("sm90a-images", self.checks("elf", obj), 10, 60, check=check_result,
                       skip=compile_step.skip)
        else:
            compile_step = Step("compile", [self.python, "setup.py", "build_ext", "--inplace"],
                                90, 420, env=dict(FASTTX_CUDA_ARCHS="9.0a",
                                                  MAX_JOBS=str(os.cpu_count() or 8)),
                                check=build_result)
            elf = Step("sm90a-images", lambda run: self.checks("elf", built_extension()), 10,
                       60, check=check_result)
        probe = Step("kernel-probe", self.checks("kernels"), 20, 120, check=check_result)
        return Phase("build", [compile_step, elf, probe], background=True)

    def smoke(self) -> Phase:
        # Triton's: JIT compiles (attention: ~24 kernels, its sm_80-path cases included)
        estimates = {"triton": {"attention": 45}, "cuda": {}}
        steps = [Step(f"{family}-{backend}", self.checks("smoke", family, backend),
                      estimates[backend].get(family, 25 if backend == "triton" else 15), 240,
                      family=OP_FAMILY[family],
                      needs_build=backend == "cuda", check=check_result)
                 for backend in ("triton", "cuda")
                 for family in ("attention", "varlen_attention", "add_layer_norm",
                                "feed_forward")]
        return Phase("smoke", steps, parallel=4)

    def sanitizer(self) -> Phase:
        sanitizer = find_tool("compute-sanitizer")

        def sanitized(tool, family, backend, *extra):
            if self.rehearse:  # no compute-sanitizer on CPU: a stand-in prints its summary
                prefix = [self.python, "tools/gpu_run.py", "--stand-in-sanitizer", tool, "--"]
            else:
                prefix = [sanitizer or "compute-sanitizer", "--tool", tool, "--print-limit",
                          "20"]
            name = f"{tool}-{family}-{backend}" + ("-sm80" if extra else "")
            return Step(name, prefix + self.checks("smoke", family, backend, "--size",
                                                   "one-tile", *extra),
                        60, 180, family=OP_FAMILY[family], needs_build=backend == "cuda",
                        env=dict(PYTORCH_NO_CUDA_MEMORY_CACHING="1", FASTTX_NO_PROFILER="1"),
                        check=sanitizer_result,
                        skip=None if self.rehearse or sanitizer
                        else "compute-sanitizer not found")
        steps = [sanitized("memcheck", "attention", "triton")]
        steps += [sanitized("memcheck", family, "cuda") for family in
                  ("attention", "varlen_attention", "add_layer_norm", "feed_forward")]
        steps.append(sanitized("racecheck", "attention", "cuda", "--head-dim", "80"))
        return Phase("sanitizer", steps, parallel=len(steps))  # CPU-bound starts: together

    def tests(self) -> Phase:
        command = [self.python, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider",
                   f"--junitxml={self.junit}"]
        if self.rehearse:  # a few interpreted cases stand in for the GPU suite
            command += ["tests/triton/test_varlen_attention.py", "-k",
                        "test_matches_reference_within_budget and float16 and not causal"]
        else:
            command += ["-m", "gpu", "tests"]
            if importlib.util.find_spec("xdist"):
                command += ["-n", str(WORKERS)]
            if importlib.util.find_spec("pytest_timeout"):
                command += ["--timeout", "150"]
        return Phase("tests", [Step("gpu-suite", command, TESTS_ESTIMATE, 330,
                                    needs_build=True, env=dict(FASTTX_TRITON_AUTOTUNE="0"),
                                    check=pytest_result(self.junit))])

    def bench(self) -> Phase:
        """Each op's headline sweep first (the sizes of the model the issues' targets
        name), then the longer sweeps; the budget trims from the end."""
        def step(name, family, estimate, *args):
            device = ["--device", "cpu"] if self.rehearse else ["--quick"]
            return Step(name, lambda run: [self.python, "-m", "benchmarks", *device, *args,
                                           "--out", str(run.results_dir())],
                        15 if self.rehearse else estimate, 240, family=family,
                        needs_build=True, check=bench_result)
        if self.rehearse:
            return Phase("bench", [step("add_layer_norm", "layer_norm", 15, "--op",
                                        "add_layer_norm", "--providers", "fasttx-triton,eager")])
        return Phase("bench", [
            step("attention-base", "attention", 60, "--op", "attention", "--sweeps",
                 "transformer-base"),
            step("add_layer_norm-base", "layer_norm", 25, "--op", "add_layer_norm", "--sweeps",
                 "transformer"),
            step("feed_forward-base", "ffn", 50, "--op", "feed_forward", "--sweeps",
                 "transformer"),
            step("attention-long", "attention", 80, "--op", "attention", "--sweeps",
                 "long-sequence,key-padding,cross-attention"),
            step("add_layer_norm-hidden", "layer_norm", 35, "--op", "add_layer_norm",
                 "--sweeps", "hidden-size"),
            step("model", "training", 60, "--op", "model"),
        ])


def find_tool(name: str) -> str | None:
    """A CUDA tool on PATH, else in the toolkit ($CUDA_HOME, /usr/local/cuda)."""
    home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    for candidate in (shutil.which(name), os.path.join(home, "bin", name),
                      os.path.join(home, name, name)):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def built_extension() -> str:
    found = sorted(ROOT.glob("fasttx/_C*.so"))
    return str(found[0]) if found else "fasttx/_C.so (not built)"


# ---------------------------------------------------------------- running

class Run:
    """Runs phases within a budget of seconds; every step's log goes to ``logs``."""

    def __init__(self, budget: float, out: Path, logs: Path, *, phases=PHASES, focus=None,
                 rehearse=False):
        self.budget, self.out, self.logs = budget, out, logs
        self.wanted, self.focus, self.rehearse = set(phases), focus, rehearse
        self.started = time.monotonic()
        self.outcomes: list[Outcome] = []
        self.facts: dict = {}             # the env step's RESULT: GPU name, versions
        self.build_thread: threading.Thread | None = None
        self.build_ok = True
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.started) - RESERVE

    def results_dir(self) -> Path:
        """OUT/<gpu>/: where results go in the committed format (benchmarks/results/<gpu>)."""
        name = self.facts.get("gpu") or ("cpu" if self.rehearse else "unknown-gpu")
        # benchmarks.harness.slug's rule (this file imports nothing that imports torch)
        return self.out / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu")

    def record(self, outcome: Outcome) -> Outcome:
        with self.lock:
            self.outcomes.append(outcome)
        mark = "  " if outcome.status == "ok" else "!!"
        print(f"{mark} {outcome.phase}/{outcome.step}: {outcome.status} "
              f"[{outcome.seconds:.0f} s, est. {outcome.estimate:.0f}] {outcome.headline}",
              flush=True)
        return outcome

    def run_phase(self, phase: Phase) -> None:
        if phase.name not in self.wanted:
            return
        if phase.background:
            self.build_thread = threading.Thread(target=self._run_steps, args=(phase,))
            self.build_thread.start()
        else:
            self._run_steps(phase)

    def _run_steps(self, phase: Phase) -> None:
        if phase.background:  # the build: a step after a failed one has nothing to check
            outcomes = []
            for step in phase.steps:
                failed = [o.step for o in outcomes if o.status.startswith(("FAILED", "TIMEOUT"))]
                outcomes.append(self.record(Outcome(
                    phase.name, step.name, f"skipped: {failed[0]} failed", 0, step.estimate))
                    if failed else self.run_step(phase, step))
        elif phase.parallel == 1:
            outcomes = [self.run_step(phase, step) for step in phase.steps]
        else:
            with ThreadPoolExecutor(phase.parallel) as pool:
                outcomes = list(pool.map(lambda step: self.run_step(phase, step), phase.steps))
        if phase.background:  # (a compile skipped for a known reason is no failure)
            self.build_ok = not any(o.status.startswith(("FAILED", "TIMEOUT"))
                                    for o in outcomes if o.step == "compile")

    def wait_for_build(self) -> bool:
        if self.build_thread is not None:
            self.build_thread.join(max(self.left(), 0))
        return self.build_ok and not (self.build_thread and self.build_thread.is_alive())

    def run_step(self, phase: Phase, step: Step) -> Outcome:
        def skipped(why):
            return self.record(Outcome(phase.name, step.name, f"skipped: {why}", 0,
                                       step.estimate))
        if self.stopping:
            return skipped("the run was stopped")
        if self.focus and step.family not in (None, self.focus):
            return skipped(f"not in --focus {self.focus}")
        if step.skip:
            return skipped(step.skip)
        if step.needs_build and "build" in self.wanted and not self.wait_for_build():
            return skipped("the build failed or did not finish")
        if step.estimate > self.left():
            return skipped(f"needs ~{step.estimate:.0f} s, {max(self.left(), 0):.0f} s left")
        command = step.command(self) if callable(step.command) else step.command
        log = self.logs / f"{phase.name}-{step.name}.log"
        status, rc, started, interrupted = "ok", None, time.monotonic(), False
        with open(log, "w") as stream:
            stream.write(f"$ {' '.join(command)}\n")
            stream.flush()
            try:
                process = subprocess.Popen(
                    command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                    env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1",
                             **step.env), start_new_session=True)
            except OSError as error:
                stream.write(f"could not start: {error}\n")
                status = f"FAILED to start ({error.strerror})"
            else:
                with self.lock:
                    self.running.add(process)
                timeout = max(min(step.timeout, self.left()), 1)
                try:
                    rc = process.wait(timeout)
                except subprocess.TimeoutExpired:
                    kill_group(process)
                    status = f"TIMEOUT after {timeout:.0f} s"
                except KeyboardInterrupt:  # the run is stopping: this step's result first
                    kill_group(process)
                    status, interrupted = "STOPPED (the run was interrupted)", True
                finally:
                    with self.lock:
                        self.running.discard(process)
        seconds = time.monotonic() - started
        text = log.read_text(errors="replace")
        headline = tail_line(text)
        if rc is not None:
            ok, headline = step.check(text, rc) if step.check else (rc == 0, tail_line(text))
            status = "ok" if ok else f"FAILED (exit {rc})"
        if phase.name == "env" and rc == 0:
            self.facts = last_result(text)
        outcome = self.record(Outcome(phase.name, step.name, status, seconds, step.estimate,
                                      headline))
        if interrupted:
            raise KeyboardInterrupt
        return outcome

    def stop(self) -> None:
        """Kills every running step (SIGTERM to the run: the device's time limit)."""
        self.stopping = True
        with self.lock:
            running = list(self.running)
        for process in running:
            kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """SIGTERM to the step's whole process group, SIGKILL 5 s later: a hung kernel's
    children (compile workers, pytest-xdist workers) go with it."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------- results and summary

def junit_counts(junit: Path) -> dict | None:
    if not junit.exists():
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for case in ElementTree.parse(junit).iter("testcase"):
        counts[junit_outcome(case)[0]] += 1
    return counts


def junit_outcome(case) -> tuple[str, str]:
    for tag, outcome in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
        found = case.find(tag)
        if found is not None:
            return outcome, (found.get("message") or "").splitlines()[0][:200] \
                if found.get("message") else ""
    return "passed", ""


def write_gpu_tests(run: Run, junit: Path) -> Path | None:
    """gpu-tests.txt in the results folder: date, commit, versions, and one line per test
    (failures first, with their message)."""
    if not junit.exists():
        return None
    rows = []
    for case in ElementTree.parse(junit).iter("testcase"):
        outcome, message = junit_outcome(case)
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        rows.append((outcome, float(case.get("time") or 0), name, message))
    order = {"failed": 0, "passed": 1, "skipped": 2}
    rows.sort(key=lambda row: (order[row[0]], row[2]))
    counts = {k: sum(row[0] == k for row in rows) for k in order}
    lines = ["# fasttx GPU test suite (pytest -m gpu, FASTTX_TRITON_AUTOTUNE=0)", "",
             *header_lines(run), f"result: {counts['passed']} passed, {counts['failed']} failed,"
             f" {counts['skipped']} skipped", ""]
    lines += [f"{outcome:7s} {seconds:7.2f} s  {name}" + (f"\n        {message}" if message
                                                            else "")
              for outcome, seconds, name, message in rows]
    path = run.results_dir() / "gpu-tests.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def commit() -> str:
    """HEAD (marked when tracked files differ), else FASTTX_COMMIT: a borrowed machine gets
    a copy of the working tree without .git, so the caller names the commit."""
    head = git("rev-parse", "HEAD")
    if head != "unknown":
        dirty = git("status", "--porcelain", "--untracked-files=no") not in ("", "unknown")
        return head + (" (with uncommitted changes)" if dirty else "")
    return os.environ.get("FASTTX_COMMIT") or "unknown (no .git here: set FASTTX_COMMIT)"


def header_lines(run: Run) -> list[str]:
    facts = run.facts
    return [f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"commit: {commit()}",
            f"gpu: {facts.get('gpu', 'none (CPU rehearsal)' if run.rehearse else 'unknown')}"
            f", driver {facts.get('driver', '-')}",
            f"versions: python {facts.get('python', '-')}, torch {facts.get('torch', '-')}, "
            f"triton {facts.get('triton', '-')}, CUDA {facts.get('cuda', '-')}, fasttx "
            f"{facts.get('fasttx', '-')}"]


def summary_markdown(run: Run) -> str:
    used = time.monotonic() - run.started
    lines = ["# fasttx GPU run" + (" (CPU rehearsal)" if run.rehearse else ""), "",
             *(f"- {line}" for line in header_lines(run)),
             f"- budget {run.budget:.0f} s, used {used:.0f} s", "",
             "| phase | step | status | seconds (est.) | headline |",
             "|---|---|---|---|---|"]
    for o in run.outcomes:
        headline = o.headline.replace("|", "/")
        lines.append(f"| {o.phase} | {o.step} | {o.status} | {o.seconds:.0f} "
                     f"({o.estimate:.0f}) | {headline} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- what comes back

def pack(out: Path, logs: Path) -> list[str]:
    """Keeps OUT within what the machine sends back (MAX_FILES files, MAX_DEPTH folders
    down, MAX_FILE_BYTES each, plain names): results that don't fit move into the logs,
    and the logs become OUT/logs.tar.gz (each cut to its head and tail past LOG_BYTES).
    Returns what was moved or cut."""
    notes = []
    files = sorted((p for p in out.rglob("*") if p.is_file()), key=_priority)
    kept = 0
    for path in files:
        relative = path.relative_to(out)
        fits = (len(relative.parts) - 1 <= MAX_DEPTH and path.stat().st_size <= MAX_FILE_BYTES
                and all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in relative.parts))
        if fits and kept < MAX_FILES - 1:  # one place is the logs archive's
            kept += 1
            continue
        target = logs / "overflow" / "__".join(relative.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        notes.append(f"{relative} moved into logs.tar.gz (file limits)")
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    archive, limit = out / "logs.tar.gz", LOG_BYTES
    with tempfile.TemporaryDirectory() as scratch:
        while True:
            with tarfile.open(archive, "w:gz") as tar:
                for path in sorted(p for p in logs.rglob("*") if p.is_file()):
                    tar.add(_cut(path, limit, Path(scratch)),
                            arcname=str(path.relative_to(logs)))
            if archive.stat().st_size <= MAX_FILE_BYTES or limit < 64 * 1024:
                break
            limit //= 4
    if limit != LOG_BYTES:
        notes.append(f"logs cut to {limit // 1024} KiB each to fit {MAX_FILE_BYTES >> 20} MiB")
    return notes


def _priority(path: Path) -> tuple:
    """summary.md first, then gpu-tests.txt, then results, anything else last."""
    rank = {"summary.md": 0, "gpu-tests.txt": 1}.get(path.name, 2 if path.suffix == ".json"
                                                      else 3)
    return rank, str(path)


def _cut(path: Path, limit: int, scratch: Path) -> Path:
    """The file itself, or (past ``limit`` bytes) a copy in ``scratch`` of its head and
    tail."""
    size = path.stat().st_size
    if size <= limit:
        return path
    cut = scratch / f"{len(list(scratch.iterdir()))}-{path.name}"
    with open(path, "rb") as source, open(cut, "wb") as target:
        target.write(source.read(limit // 4))
        target.write(f"\n... [{size - limit} bytes cut] ...\n".encode())
        source.seek(size - (limit - limit // 4))
        target.write(source.read())
    return cut


def check_out_limits(out: Path) -> list[str]:
    """What in OUT would not come back (empty when everything does)."""
    problems, files = [], [p for p in out.rglob("*") if p.is_file()]
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES})")
    for path in files:
        relative = path.relative_to(out)
        if len(relative.parts) - 1 > MAX_DEPTH:
            problems.append(f"{relative}: deeper than {MAX_DEPTH} folders")
        if path.stat().st_size > MAX_FILE_BYTES:
            problems.append(f"{relative}: {path.stat().st_size} bytes")
    return problems


# ---------------------------------------------------------------- the command line

def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def execute(run: Run, plan: Plan) -> int:
    """Runs the plan's phases, then always writes the summary and packs OUT (also when
    interrupted: Ctrl-C, or SIGTERM at the device's time limit); exit status 1 when a step
    failed or timed out, or OUT would not come back whole."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    phases = plan.phases()
    try:
        for phase in phases:
            run.run_phase(phase)
        if run.build_thread is not None:
            run.build_thread.join(max(run.left(), 0) + RESERVE)
    except KeyboardInterrupt:
        print("stopped: killing the running steps, keeping what was measured", flush=True)
        run.stop()
        if run.build_thread is not None:
            run.build_thread.join(RESERVE)
        done = {(o.phase, o.step) for o in run.outcomes}
        for phase in phases:
            for step in phase.steps:
                if phase.name in run.wanted and (phase.name, step.name) not in done:
                    run.record(Outcome(phase.name, step.name, "skipped: the run was stopped",
                                       0, step.estimate))
    finally:
        signal.signal(signal.SIGTERM, previous)
    write_gpu_tests(run, plan.junit)
    summary = summary_markdown(run)
    (run.out / "summary.md").write_text(summary)
    notes = pack(run.out, run.logs)
    if notes:
        with open(run.out / "summary.md", "a") as stream:
            stream.write("\n" + "\n".join(f"- {note}" for note in notes) + "\n")
    print("\n" + summary + ("\n".join(notes) + "\n" if notes else ""))
    problems = check_out_limits(run.out)
    for problem in problems:
        print(f"OUT limit: {problem}", file=sys.stderr)
    files = sorted(str(p.relative_to(run.out)) for p in run.out.rglob("*") if p.is_file())
    print(f"OUT ({run.out}): {', '.join(files)}")
    bad = [o for o in run.outcomes if o.status.startswith(("FAILED", "TIMEOUT", "STOPPED"))]
    return 1 if bad or problems else 0


def schedule(phases: list[Phase], budget: float) -> list[tuple[str, str, float, float | None]]:
    """(phase, step, start, end or None when trimmed) for every step, as Run would place
    them if each took its estimate: the build beside the phases after it, a parallel
    phase's steps on its workers in order, a step that needs the build not before it ends,
    a step that would end past the budget (less RESERVE) trimmed."""
    limit, clock, build_end, rows = budget - RESERVE, 0.0, 0.0, []
    for phase in phases:
        workers = [clock] * (1 if phase.background else phase.parallel)
        for step in phase.steps:
            worker = workers.index(min(workers))
            start = max(workers[worker], build_end if step.needs_build else 0.0)
            if start + step.estimate > limit:
                rows.append((phase.name, step.name, start, None))
                continue
            workers[worker] = start + step.estimate
            rows.append((phase.name, step.name, start, workers[worker]))
        if phase.background:
            build_end = workers[0]
        else:
            clock = max(workers)
    return rows


def count_tests_estimate(python: str) -> float:
    """The tests phase's seconds from a fresh count: the GPU suite's Triton launches replayed
    on CPU (tests/triton/gpu_launches.py), their distinct specialisations times a compile's
    seconds for sm_90 measured here, over WORKERS, plus the tests' own run."""
    print("counting the GPU suite's kernel specialisations (a replay on CPU, ~2 min) ...",
          flush=True)
    done = subprocess.run([python, "-m", "tests.triton.gpu_launches", "--time", "12"],
                          cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    report = json.loads(done.stdout)
    per_compile = sum(c["seconds"] for c in report["compiles"]) / len(report["compiles"])
    compiling = report["specialisations"] * per_compile
    estimate = round(compiling / WORKERS + 45)
    print(f"{report['tests']} Triton test cases make {report['launches']} launches of "
          f"{report['specialisations']} distinct specialisations ("
          f"{', '.join(f'{k} {v}' for k, v in sorted(report['by_kernel'].items()))})")
    print(f"a compile for sm_90 took {per_compile:.2f} s here ({len(report['compiles'])} "
          f"samples): {compiling:.0f} s of compiling, {compiling / WORKERS:.0f} s over "
          f"{WORKERS} workers, + 45 s for the tests themselves and pytest -> ~{estimate} s")
    return estimate


def plan_report(plan: Plan, budget: float, count: bool) -> int:
    """The dry count: every step with its estimate and its place in the schedule against
    the budget. Exit status 1 when a step other than the benchmarks' would be trimmed."""
    phases = plan.phases()
    if count:
        phases[PHASES.index("tests")].steps[0].estimate = count_tests_estimate(plan.python)
    rows = schedule(phases, budget)
    estimates = {(phase.name, step.name): step.estimate for phase in phases
                 for step in phase.steps}
    print(f"\n{'phase':10s} {'step':32s} {'est. s':>7s} {'start':>6s} {'end':>6s}")
    for phase, step, start, end in rows:
        place = f"{start:6.0f} {end:6.0f}" if end is not None else "trimmed: past the budget"
        print(f"{phase:10s} {step:32s} {estimates[phase, step]:7.0f} {place}")
    ends = [end for *_, end in rows if end is not None]
    trimmed = [(phase, step) for phase, step, _, end in rows if end is None]
    print(f"\nthe run ends at ~{max(ends):.0f} s of a {budget:.0f} s budget ({RESERVE} s kept "
          f"for the summary and packing); trimmed: "
          f"{', '.join('/'.join(t) for t in trimmed) or 'nothing'}")
    essential = [t for t in trimmed if t[0] != "bench"]
    return 1 if essential else 0


def stand_in_sanitizer(tool: str, command: list[str]) -> int:
    """The rehearsal's compute-sanitizer: runs the program and prints the summary line the
    real tool prints (no memory is checked: there is no GPU)."""
    rc = subprocess.run(command).returncode
    print(f"========= (rehearsal stand-in for compute-sanitizer --tool {tool})")
    if tool == "racecheck":
        print("========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)")
    else:
        print("========= ERROR SUMMARY: 0 errors")
    return rc


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--stand-in-sanitizer"]:
        return stand_in_sanitizer(argv[1], argv[3:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\nPhases")[0].split("\n\n", 1)[1])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--rehearse", action="store_true",
                      help="run every phase on CPU (interpreter, reference, tiny sizes)")
    mode.add_argument("--plan", action="store_true",
                      help="print the phases and their estimates against the budget")
    parser.add_argument("--budget", type=float, default=540,
                        help="seconds for the whole run, summary and packing included "
                             "(default 540: a 600 s call with a margin)")
    parser.add_argument("--out", type=Path, default=None,
                        help="the folder whose files come back (default: $OUT, else a "
                             "temporary folder)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help=f"comma-separated, out of {', '.join(PHASES)} (default: all)")
    parser.add_argument("--focus", choices=FOCUS, default=None,
                        help="only this family's smoke, sanitizer, tests and bench steps")
    parser.add_argument("--no-count", action="store_true",
                        help="with --plan: the stored tests estimate, not a fresh count")
    args = parser.parse_args(argv)
    phases = args.phases.split(",")
    unknown = [name for name in phases if name not in PHASES]
    if unknown:
        parser.error(f"--phases: unknown {', '.join(unknown)} (out of {', '.join(PHASES)})")
    with tempfile.TemporaryDirectory(prefix="gpu_run-") as scratch:
        work = Path(scratch)
        plan = Plan(args.rehearse, work)
        if args.plan:
            return plan_report(plan, args.budget, count=not args.no_count)
        out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else
                           Path(tempfile.mkdtemp(prefix="gpu_run-out-")))
        out.mkdir(parents=True, exist_ok=True)
        print(f"OUT: {out}", flush=True)
        logs = work / "logs"
        logs.mkdir()
        run = Run(args.budget, out, logs, phases=phases, focus=args.focus,
                  rehearse=args.rehearse)
        return execute(run, plan)


if __name__ == "__main__":
    sys.exit(main())
