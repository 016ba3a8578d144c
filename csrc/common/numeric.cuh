// Device-side numeric helpers shared by the kernels: conversions of the storage types to
// and from fp32 (every kernel computes in fp32), 16-byte vector access, and the
// dtype dispatch that turns a runtime DType into a template argument.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common/dtype.h"

namespace fasttx {

template <typename T> __device__ __forceinline__ float to_float(T value);
template <> __device__ __forceinline__ float to_float(float value) { return value; }
template <> __device__ __forceinline__ float to_float(__half value) { return __half2float(value); }
template <> __device__ __forceinline__ float to_float(__nv_bfloat16 value) {
  return __bfloat162float(value);
}

template <typename T> __device__ __forceinline__ T from_float(float value);
template <> __device__ __forceinline__ float from_float(float value) { return value; }
template <> __device__ __forceinline__ __half from_float(float value) {
  return __float2half_rn(value);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float(float value) {
  return __float2bfloat16_rn(value);
}

// VEC elements of T in one 16-byte (or narrower, for small rows) aligned access.
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vector {
  T values[VEC];
};

// Calls fn(T{}) with T the storage type of `dtype` (float, __half or __nv_bfloat16) and
// returns its result: one instantiation per dtype, chosen at run time.
template <typename Fn>
cudaError_t dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

inline unsigned ceil_div(long long a, long long b) { return static_cast<unsigned>((a + b - 1) / b); }

}  // namespace fasttx
