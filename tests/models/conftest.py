"""Shared fixtures of the model tests."""

import contextlib

import pytest
import torch


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
