"""Test session setup.

Without a CUDA GPU the Triton kernels run under Triton's CPU interpreter, which must be
switched on before triton is first imported: done here, before any test module loads.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
