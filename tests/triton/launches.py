"""Records the attention kernels' launches (which kernel, its arguments) in a test."""

import contextlib
from unittest import mock


@contextlib.contextmanager
def recorded_launches(triton_attention, describe=lambda argument: argument):
    """Yields a list that fills with (kind, [describe(arg)...], meta) per kernel launch."""
    launches = []
    real_launch = triton_attention._launch

    def spy(kind, grid, *args, **meta):
        launches.append((kind, [describe(a) for a in args], meta))
        real_launch(kind, grid, *args, **meta)

    with mock.patch.object(triton_attention, "_launch", spy):
        yield launches
