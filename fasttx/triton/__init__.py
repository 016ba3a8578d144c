"""The Triton backend: fused kernels written in Triton.

One module per op (``attention``, ``varlen_attention``, ...) with ``<op>_forward`` and
``<op>_backward`` taking the reference backend's arguments; the kernels themselves live
in the private ``_<op>_*`` modules beside them. On CUDA tensors the kernels are compiled
and autotuned; on CPU tensors they run under Triton's interpreter when
``TRITON_INTERPRET=1`` is set before triton is imported (how the tests run without a GPU).
"""
