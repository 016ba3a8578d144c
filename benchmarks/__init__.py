"""fasttx's benchmark suite: one module per op on one harness, a CLI and a report.

    python -m benchmarks                        # every op, the full profile, on the GPU
    python -m benchmarks --op attention --quick
    python -m benchmarks report                 # tables and plots from the committed results
    pytest benchmarks/                          # the same suite under pytest-benchmark

See benchmarks/README.md.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: The op modules, in the order they run and are reported.
OPS = ("attention", "add_layer_norm", "feed_forward", "model", "dropin")


def load(op: str) -> ModuleType:
    """The op module ``benchmarks.<op>``."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; the ops are {', '.join(OPS)}")
    return importlib.import_module(f"benchmarks.{op}")
