"""pytest-benchmark glue: ``pytest benchmarks/`` runs the suite of ``python -m benchmarks``.

    pytest benchmarks/                                  # full profile on a GPU, smoke on CPU
    pytest benchmarks/ --bench-profile quick --bench-ops attention -k fasttx-triton
    pytest benchmarks/ --bench-out benchmarks/results/h200 --benchmark-json raw.json

Named on the command line (``pytest benchmarks/``), the suite runs the full profile on a
GPU; collected as part of the whole test suite (a bare ``pytest``, ``make test``) it runs
the smoke profile everywhere, in minutes. ``--bench-profile`` overrides both.

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
    named = getattr(config, "args_source", None) == pytest.Config.ArgsSource.ARGS \
        if hasattr(pytest.Config, "ArgsSource") else False
    profile = config.getoption("--bench-profile") or \
        ("full" if DEVICE == "cuda" and named else "smoke")
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
        items += [(module, case, name) for case in module.cases(_profile(metafunc.config))
                  for name in harness.providers_for(module, DEVICE)]
    metafunc.parametrize("bench_item", items, ids=[f"{case.id}-{name}" for _, case, name in items])


class Session:
    """The run's environment, ceilings and rows, and the current case's inputs (tests of
    one case follow each other, so one prepared case is kept at a time)."""

    def __init__(self, profile: str, out: str | None):
        self.profile, self.out, self.device = profile, out, DEVICE
        self.env = harness.environment(DEVICE, profile)
        self.ceiling = harness.ceilings(DEVICE)
        self.rows: list[dict] = []
        self._prepared: harness.Prepared | None = None
        self._kept: dict[Path, list[dict]] = {}  # earlier results each file adds to

    def prepared(self, module, case: harness.Case) -> harness.Prepared:
        if self._prepared is None or self._prepared.case != case:
            self._prepared = None
            self._prepared = harness.Prepared(module, case, self.device)
        return self._prepared

    def add(self, row: dict) -> None:
        """Keeps a result; with --bench-out, rewrites its op's results file at once (adding
        to an earlier file of the same GPU, profile and commit, as the CLI does)."""
        self.rows.append(row)
        if self.out:
            path = Path(self.out) / f"{harness.suite_name(row['op'], self.profile)}.json"
            kept = self._kept.setdefault(path, harness.kept_rows(path, self.env))
            harness.write_results(path, self.env, self.ceiling, harness.merge_rows(
                kept, [r for r in self.rows if r["op"] == row["op"]]))


@pytest.fixture(scope="session")
def bench_session(request):
    return Session(_profile(request.config), request.config.getoption("--bench-out"))
