"""Shared fixtures of the model tests."""

import contextlib

import pytest
import torch

import fasttx.reference


@contextlib.contextmanager
def _one_thread():
    """Tiny ops run fastest on one thread (and far faster than two on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def one_thread():
    """A context manager limiting torch to one thread for its block: ``with one_thread():``.

    Session-scoped so module-scoped fixtures (a model trained once per module) can use it.
    """
    return _one_thread


@pytest.fixture
def count_reference_calls(monkeypatch):
    """``calls = count_reference_calls("attention", ...)``: from then on, calls[op] counts
    the calls of the reference backend's ``<op>_forward``."""

    def start(*ops):
        calls = dict.fromkeys(ops, 0)
        for op in ops:
            module = getattr(fasttx.reference, op)
            original = getattr(module, f"{op}_forward")

            def counting(*args, _op=op, _original=original, **kwargs):
                calls[_op] += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, f"{op}_forward", counting)
        return calls

    return start
