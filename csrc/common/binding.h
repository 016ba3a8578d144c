// Helpers for the binding files (the only files that see torch types): argument checks
// that name the argument and what was expected, dtype mapping, the current stream, and
// launch-error reporting.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>
#include <string>

#include "common/dtype.h"

namespace fasttx::binding {

inline void check_cuda(const at::Tensor& tensor, const char* name) {
  TORCH_CHECK(tensor.is_cuda(), name, ": expected a CUDA tensor, got one on ", tensor.device());
}

inline void check_same_device(const at::Tensor& tensor, const char* name, const at::Tensor& like,
                              const char* like_name) {
  TORCH_CHECK(tensor.device() == like.device(), name, ": expected a tensor on ", like.device(),
              " (the device of ", like_name, "), got one on ", tensor.device());
}

// fp16, bf16 or fp32 (the kernels' storage types).
inline DType float_dtype(const at::Tensor& tensor, const char* name) {
  switch (tensor.scalar_type()) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kFloat: return DType::kFloat32;
    default:
      TORCH_CHECK(false, name, ": expected float16, bfloat16 or float32, got ",
                  tensor.scalar_type());
  }
  return DType::kFloat32;
}

inline void check_same_dtype(const at::Tensor& tensor, const char* name, const at::Tensor& like,
                             const char* like_name) {
  TORCH_CHECK(tensor.scalar_type() == like.scalar_type(), name, ": expected dtype ",
              like.scalar_type(), " (that of ", like_name, "), got ", tensor.scalar_type());
}

inline void check_dim(const at::Tensor& tensor, const char* name, int64_t dim,
                      const char* layout) {
  TORCH_CHECK(tensor.dim() == dim, name, ": expected a ", dim, "-D tensor ", layout, ", got shape ",
              tensor.sizes());
}

inline void check_shape(const at::Tensor& tensor, const char* name, at::IntArrayRef shape,
                        const char* layout) {
  TORCH_CHECK(tensor.sizes() == shape, name, ": expected shape ", shape, " ", layout, ", got ",
              tensor.sizes());
}

// The device pointer of the Philox seed (int64 (1,) beside `like`), or nullptr when
// dropout is off.
inline const int64_t* seed_pointer(const std::optional<at::Tensor>& seed, double dropout_p,
                                   const at::Tensor& like) {
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p: expected a probability in [0, 1), got ",
              dropout_p);
  if (dropout_p == 0.0) return nullptr;
  TORCH_CHECK(seed.has_value(), "dropout_seed: expected an int64 tensor of shape (1,) when ",
              "dropout_p > 0, got None");
  check_cuda(*seed, "dropout_seed");
  check_same_device(*seed, "dropout_seed", like, "the inputs");
  TORCH_CHECK(seed->scalar_type() == at::kLong && seed->numel() == 1,
              "dropout_seed: expected an int64 tensor of shape (1,), got ", seed->scalar_type(),
              " of shape ", seed->sizes());
  return seed->data_ptr<int64_t>();
}

// An optional tensor's data pointer, or nullptr when it is absent.
template <typename T = void>
inline const T* optional_pointer(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? static_cast<const T*>(tensor->data_ptr()) : nullptr;
}

inline cudaStream_t current_stream(const at::Tensor& like) {
  return at::cuda::getCurrentCUDAStream(like.device().index()).stream();
}

// Raises a torch error naming the kernel when its launch failed.
inline void check_launch(cudaError_t error, const char* kernel) {
  TORCH_CHECK(error == cudaSuccess, "fasttx._C: launching ", kernel, " failed: ",
              cudaGetErrorString(error));
}

}  // namespace fasttx::binding
