"""The CUDA backend: hand-written CUDA C++ kernels from the compiled extension ``fasttx._C``.

One module per op (``attention``, ``varlen_attention``, ``add_layer_norm``,
``feed_forward``) with ``<op>_forward`` and ``<op>_backward`` taking the reference
backend's arguments; each calls the extension's ops ``torch.ops.fasttx_cuda.*`` (schemas in
``csrc/ops.cpp``, kernels in ``csrc/<op>/``). The package imports everywhere; whether the
extension loads is asked of :func:`fasttx.cuda._extension.load_error`, which is what
``fasttx.available_backends()["cuda"]`` reports; :func:`build_info` says what it was built
with (targets, and which attention kernels are compiled in).
"""

from fasttx.cuda._extension import build_info

__all__ = ["build_info"]
