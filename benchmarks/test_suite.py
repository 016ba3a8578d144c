"""The suite under pytest-benchmark: one test per (case, provider); see conftest.py."""

import pytest

from benchmarks import harness


def test_benchmark(benchmark, bench_item, bench_session):
    module, case, provider = bench_item
    benchmark.group = case.id

    def drive(timer: harness.Timer, warmup: int, calls: int) -> harness.Timing:
        timer.synchronize = timer.device == "cuda"  # pytest-benchmark's clock waits for the GPU
        timer.warm_up(warmup)
        benchmark.pedantic(timer, setup=timer.setup, rounds=calls, iterations=1)
        return timer.timing()

    try:
        prepared = bench_session.prepared(module, case)
    except harness.DeviceError:
        raise
    except harness.RUN_ERRORS as error:
        pytest.skip(harness.failure_note(error, bench_session.device))
    row = harness.run_provider(prepared, provider, bench_session.ceiling, drive=drive)
    bench_session.add(row)
    benchmark.extra_info.update(row)
    note = row["note"]
    if note and note.startswith("wrong output"):
        pytest.fail(note)
    if note:
        pytest.skip(note)
