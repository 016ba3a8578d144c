"""pytest-benchmark glue: ``pytest benchmarks/`` runs the suite of ``python -m benchmarks``.

    pytest benchmarks/                                  # full profile on a GPU, smoke on CPU
    pytest benchmarks/ --bench-profile quick --bench-ops attention -k fasttx-triton
    pytest benchmarks/ --bench-out benchmarks/results/h200 --benchmark-json raw.json

Each test is one (case, provider): it checks the provider against the op's oracle, then
times it with the harness's timer driven by pytest-benchmark (``benchmark.pedantic``), so
pytest-benchmark's table and JSON hold the wall-clock rounds and ``extra_info`` holds the
CUDA-event median, percentiles, rate and peak memory. A provider that can't run is
skipped with its reason; a wrong output fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from benchmarks import OPS, harness, load

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
harness.start(DEVICE)  # on CPU: the Triton interpreter, before fasttx's first kernel


def pytest_addoption(parser):
    group = parser.getgroup("fasttx benchmarks")
    group.addoption("--bench-profile", choices=harness.PROFILES, default=None,
                    help="full (default on a GPU), quick, or smoke (the only one on CPU)")
    group.addoption("--bench-ops", type=harness.choice_list(OPS), default=list(OPS),
                    help=f"comma-separated ops out of {', '.join(OPS)}")
    group.addoption("--bench-out", default=None,
                    help="also write the suite's results files (<op>.json) to this folder")


def _profile(config) -> str:
    profile = config.getoption("--bench-profile") or ("full" if DEVICE == "cuda" else "smoke")
    if DEVICE == "cpu" and profile != "smoke":
        raise pytest.UsageError(f"--bench-profile {profile} needs a GPU; on CPU only the "
                                f"smoke profile runs")
    return profile


def pytest_generate_tests(metafunc):
    if "bench_item" not in metafunc.fixturenames:
        return
    items = []
    for op in metafunc.config.getoption("--bench-ops"):
        module = load(op)
        providers = module.PROVIDERS if DEVICE == "cuda" else module.CPU_PROVIDERS
        items += [(module, case, name) for case in module.cases(_profile(metafunc.config))
                  for name in providers]
    metafunc.parametrize("bench_item", items, ids=[f"{case.id}-{name}" for _, case, name in items])


class Session:
    """The run's environment, ceilings and rows, and the current case's inputs (tests of
    one case follow each other, so one prepared case is kept at a time)."""

    def __init__(self, profile: str):
        self.profile = profile
        self.env = harness.environment(DEVICE, profile)
        self.ceiling = harness.ceilings(DEVICE)
        self.rows: list[dict] = []
        self._prepared: harness.Prepared | None = None

    def prepared(self, module, case: harness.Case) -> harness.Prepared:
        if self._prepared is None or self._prepared.case != case:
            self._prepared = None
            self._prepared = harness.Prepared(module, case, DEVICE)
        return self._prepared

    def write(self, folder: str) -> None:
        for op in dict.fromkeys(row["op"] for row in self.rows):
            path = Path(folder) / f"{harness.suite_name(op, self.profile)}.json"
            harness.write_results(path, self.env, self.ceiling,
                                  [row for row in self.rows if row["op"] == op])


@pytest.fixture(scope="session")
def bench_session(request):
    session = Session(_profile(request.config))
    yield session
    out = request.config.getoption("--bench-out")
    if out and session.rows:
        session.write(out)
