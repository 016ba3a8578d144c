// fasttx._C: the CUDA backend's compiled extension.
//
// Layout (filled in by the CUDA kernel work): one folder per op
//   csrc/attention/, csrc/add_layer_norm/, csrc/feed_forward/
// with kernels that take raw pointers and sizes, and binding files that hold the
// torch types. This file is the module's entry point; for now it only reports how
// it was built, so that the Python guard in fasttx/backends.py can tell a working
// extension from a missing one.
#include <torch/extension.h>

namespace {

std::string build_info() {
  std::string info = "fasttx._C built with torch " TORCH_VERSION;
#ifdef CUDA_VERSION
  info += ", CUDA " + std::to_string(CUDA_VERSION);
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fasttx CUDA kernels";
  m.def("build_info", &build_info, "How this extension was built.");
}
