"""Test session setup.

Without a CUDA GPU the Triton kernels run under Triton's CPU interpreter, which must be
switched on before triton is first imported: done here, before any test module loads.
"""

import contextlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
