"""Shared fixtures of the model tests."""

import pytest

import fasttx.reference


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
