// fasttx._C: the op schemas of the CUDA backend, all in one place.
//
// The public ops fasttx::<op>_forward / _backward are declared in Python
// (fasttx/ops/library.py) and pick a backend at run time; the CUDA backend's Python modules
// (fasttx/cuda/<op>.py) call the kernels through the ops declared here, in their own
// namespace fasttx_cuda so that the two libraries never collide. Each op folder
// (csrc/<op>/<op>.cpp) registers the CUDA implementations under
// TORCH_LIBRARY_IMPL(fasttx_cuda, CUDA, m); fasttx/cuda/_extension.py registers their fakes.
//
// Importing fasttx._C loads this library, which registers everything; the Python module
// itself is empty (no pybind11, so no torch/extension.h: the file compiles in seconds).
#include <Python.h>
#include <cuda.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

namespace {

// setup.py passes the build's targets, e.g. -DFASTTX_CUDA_TARGETS=sm_80,sm_90a.
#define FASTTX_STRINGIFY(...) #__VA_ARGS__
#define FASTTX_EXPAND_STRINGIFY(...) FASTTX_STRINGIFY(__VA_ARGS__)
#ifdef FASTTX_CUDA_TARGETS
constexpr const char* kTargets = FASTTX_EXPAND_STRINGIFY(FASTTX_CUDA_TARGETS);
#else
constexpr const char* kTargets = "unknown";
#endif

// "torch 2.11.0; CUDA 13.0; targets sm_80,sm_90a; attention kernels sm80,sm90a": the
// attention kernels compiled in are the sm_80 ones (every target) and the Hopper one when
// an sm_90a target was built (fasttx/cuda/_extension.py parses this).
std::string build_info() {
  const std::string targets = kTargets;
  const bool hopper = ("," + targets + ",").find(",sm_90a,") != std::string::npos;
  return std::string("torch ") + TORCH_VERSION + "; CUDA " + std::to_string(CUDA_VERSION / 1000) +
         "." + std::to_string(CUDA_VERSION % 1000 / 10) + "; targets " + targets +
         "; attention kernels sm80" + (hopper ? ",sm90a" : "");
}

}  // namespace

TORCH_LIBRARY(fasttx_cuda, m) {
  m.def("build_info() -> str", &build_info);

  // Dense q (B, H, Lq, E), k (B, Hk, Lk, E), v (B, Hk, Lk, Ev) with attn_mask (B, H, Lq, Lk)
  // (bool: True = may attend; float: added to the scores; stride 0 where broadcast), or
  // packed q (total_q, H, E), k/v (total_k, Hk, E/Ev) with cu_seqlens_q/k int32 (B + 1,)
  // and no mask. max_seqlen_q/k: the longest lengths (dense: Lq and Lk).
  // Returns out (like q, with Ev) and lse fp32 (B, H, Lq) or (H, total_q): the base-2
  // log-sum-exp of the base-2 scores, which only this backend's backward reads.
  m.def("attention_forward(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, "
        "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
        "Tensor? dropout_seed, float dropout_p, bool is_causal, float scale) -> (Tensor, Tensor)");
  // Returns dq, dk, dv and d(attn_mask) ((0,) unless mask_needs_grad).
  m.def("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? attn_mask, "
        "Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, "
        "Tensor out, Tensor lse, Tensor? dropout_seed, float dropout_p, bool is_causal, "
        "float scale, bool mask_needs_grad) -> (Tensor, Tensor, Tensor, Tensor)");

  // x, residual (N, D); weight, bias (D,). Returns y (N, D), s = residual + dropout(x)
  // (N, D) in the residual's dtype, and the fp32 row statistics mean, rstd (N,).
  m.def("add_layer_norm_forward(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, "
        "float eps, Tensor? dropout_seed, float dropout_p) -> (Tensor, Tensor, Tensor, Tensor)");
  // Returns dx, dresidual, dweight, dbias ((0,) where the input was None).
  m.def("add_layer_norm_backward(Tensor grad_y, Tensor? grad_residual_out, Tensor residual_out, "
        "Tensor? weight, Tensor? bias, Tensor mean, Tensor rstd, Tensor? dropout_seed, "
        "float dropout_p, bool has_residual) -> (Tensor, Tensor, Tensor, Tensor)");

  // x (N, D), w1 (F, D), b1 (F,), w2 (D', F), b2 (D',). Returns y (N, D') and the (N, F)
  // activation this backend's backward reads (see csrc/feed_forward/feed_forward.cpp).
  m.def("feed_forward_forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
        "str activation, Tensor? dropout_seed, float dropout_p) -> (Tensor, Tensor)");
  // Returns dx, dw1, db1, dw2, db2 ((0,) where the bias was None).
  m.def("feed_forward_backward(Tensor grad_y, Tensor x, Tensor w1, Tensor? b1, Tensor w2, "
        "Tensor? b2, Tensor saved, str activation, Tensor? dropout_seed, float dropout_p) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// The Python module fasttx._C: empty; importing it runs the registrations above.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "fasttx CUDA kernels", -1,
                                      nullptr};
  return PyModule_Create(&module);
}
