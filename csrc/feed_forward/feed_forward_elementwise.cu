// The feed-forward op's elementwise kernels: what cuBLASLt's epilogues can't do.
//
//   activation_forward_kernel   h = dropout(act(a))   exact gelu (cuBLASLt's GELU is the tanh
//                                                     form), and any activation with dropout
//   activation_backward_kernel  da = dh * keep/(1-p) * act'(a), and h again for dW2
//
// Both are memory-bound passes over the dense row-major (N, F) hidden buffers, so element i
// of the flat buffer is hidden element (i / F, i % F) and i is exactly its Philox counter
// (n * F + f): no index arithmetic beyond the flat index. Each thread moves 16 bytes per
// access (8 fp16/bf16 or 4 fp32 elements) in a grid-stride loop; the last count % VEC
// elements go through a scalar tail. All math is fp32: values are upcast on load and
// rounded once on store.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/numeric.cuh"
#include "common/philox.cuh"
#include "feed_forward/feed_forward.h"

namespace fasttx::feed_forward {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 65535;  // grid-stride beyond this

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;
constexpr float kSqrt2OverPi = 0.79788456080286536f;
constexpr float kGeluTanhCubic = 0.044715f;

// tanh(z) = 1 - 2 / (exp(2z) + 1): saturates to +-1 without overflow (exp = inf gives 1),
// and with IEEE division, which --use_fast_math would otherwise make approximate (tanhf
// itself becomes the ~2^-11 hardware approximation under that flag).
__device__ __forceinline__ float tanh_via_exp(float z) {
  return 1.0f - __fdiv_rn(2.0f, __expf(2.0f * z) + 1.0f);
}

// act(a) in fp32.
template <Activation ACTIVATION>
__device__ __forceinline__ float activation(float a) {
  if constexpr (ACTIVATION == Activation::kRelu) {
    return fmaxf(a, 0.0f);
  } else if constexpr (ACTIVATION == Activation::kGelu) {
    return 0.5f * a * (1.0f + erff(a * kInvSqrt2));
  } else {
    return 0.5f * a * (1.0f + tanh_via_exp(kSqrt2OverPi * (a + kGeluTanhCubic * a * a * a)));
  }
}

// d act / d a in fp32 (gelu and gelu_tanh; relu's backward reads h instead of a).
template <Activation ACTIVATION>
__device__ __forceinline__ float activation_derivative(float a) {
  if constexpr (ACTIVATION == Activation::kGelu) {  // Phi(a) + a phi(a)
    return 0.5f * (1.0f + erff(a * kInvSqrt2)) + a * kInvSqrt2Pi * __expf(-0.5f * a * a);
  } else {  // 0.5 (1 + t) + 0.5 a (1 - t^2) sqrt(2/pi) (1 + 3 k a^2)
    const float t = tanh_via_exp(kSqrt2OverPi * (a + kGeluTanhCubic * a * a * a));
    const float slope = kSqrt2OverPi * (1.0f + 3.0f * kGeluTanhCubic * a * a);
    return 0.5f * (1.0f + t) + 0.5f * a * (1.0f - t * t) * slope;
  }
}

// The factor dropout multiplies element `counter` by: 1/(1-p) when kept, 0 when dropped,
// 1 without dropout.
__device__ __forceinline__ float dropout_factor(bool dropout, uint64_t seed, uint64_t counter,
                                                float dropout_p, float scale) {
  if (!dropout) return 1.0f;
  return dropout_keep(seed, counter, dropout_p) ? scale : 0.0f;
}

// h = dropout(act(a)) for one element (fp32 in and out).
template <Activation ACTIVATION>
__device__ __forceinline__ float hidden_value(float a, bool dropout, uint64_t seed,
                                              uint64_t counter, float dropout_p, float scale) {
  const float factor = dropout_factor(dropout, seed, counter, dropout_p, scale);
  return factor == 0.0f ? 0.0f : activation<ACTIVATION>(a) * factor;
}

template <typename T, Activation ACTIVATION>
__global__ void __launch_bounds__(kThreads) activation_forward_kernel(
    const T* preactivation,  // (N, F) dense: a (may be `hidden` itself: read before written)
    T* hidden,               // (N, F) dense, out: h = dropout(act(a))
    int64_t count,           // N * F
    const int64_t* seed,     // int64 (1,) Philox seed on the device, or null: no dropout
    float dropout_p, float scale) {  // scale = 1 / (1 - dropout_p)
  constexpr int VEC = 16 / sizeof(T);
  using Pack = Vector<T, VEC>;
  const bool dropout = seed != nullptr;
  const uint64_t seed_value = dropout ? static_cast<uint64_t>(*seed) : 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = count / VEC;

  for (int64_t pack = first; pack < packs; pack += stride) {
    Pack values = reinterpret_cast<const Pack*>(preactivation)[pack];
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = to_float(values.values[j]);  // upcast: fp32 math
      values.values[j] = from_float<T>(hidden_value<ACTIVATION>(
          a, dropout, seed_value, static_cast<uint64_t>(pack * VEC + j), dropout_p, scale));
    }
    reinterpret_cast<Pack*>(hidden)[pack] = values;
  }
  for (int64_t i = packs * VEC + first; i < count; i += stride) {  // the scalar tail
    const float a = to_float(preactivation[i]);  // upcast: fp32 math
    hidden[i] = from_float<T>(hidden_value<ACTIVATION>(a, dropout, seed_value,
                                                       static_cast<uint64_t>(i), dropout_p,
                                                       scale));
  }
}

// One element of the backward: returns da, and sets h (gelu family only).
template <Activation ACTIVATION>
__device__ __forceinline__ float grad_value(float grad_hidden, float saved, bool dropout,
                                            uint64_t seed, uint64_t counter, float dropout_p,
                                            float scale, float& hidden) {
  if constexpr (ACTIVATION == Activation::kRelu) {
    // saved = h = dropout(relu(a)): positive exactly where a > 0 and the element was kept,
    // so it carries both masks; `scale` is 1 without dropout.
    hidden = saved;
    return saved > 0.0f ? grad_hidden * scale : 0.0f;
  } else {
    const float factor = dropout_factor(dropout, seed, counter, dropout_p, scale);
    hidden = factor == 0.0f ? 0.0f : activation<ACTIVATION>(saved) * factor;
    return factor == 0.0f ? 0.0f : grad_hidden * factor * activation_derivative<ACTIVATION>(saved);
  }
}

template <typename T, Activation ACTIVATION>
__global__ void __launch_bounds__(kThreads) activation_backward_kernel(
    T* grad,                // (N, F) dense: in dh = dy @ w2, out da (in place)
    const T* saved,         // (N, F) dense: h for relu, the pre-activation a otherwise
    T* hidden,              // (N, F) dense, out: h = dropout(act(a)); null to skip (relu: null)
    int64_t count,          // N * F
    const int64_t* seed,    // int64 (1,) Philox seed on the device, or null: no dropout
    float dropout_p, float scale) {  // scale = 1 / (1 - dropout_p), also without a seed
  constexpr int VEC = 16 / sizeof(T);
  using Pack = Vector<T, VEC>;
  const bool dropout = seed != nullptr;
  const uint64_t seed_value = dropout ? static_cast<uint64_t>(*seed) : 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = count / VEC;

  for (int64_t pack = first; pack < packs; pack += stride) {
    Pack grads = reinterpret_cast<const Pack*>(grad)[pack];
    const Pack saves = reinterpret_cast<const Pack*>(saved)[pack];
    Pack hiddens;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      float h;  // upcasts: fp32 math
      grads.values[j] = from_float<T>(grad_value<ACTIVATION>(
          to_float(grads.values[j]), to_float(saves.values[j]), dropout, seed_value,
          static_cast<uint64_t>(pack * VEC + j), dropout_p, scale, h));
      hiddens.values[j] = from_float<T>(h);
    }
    reinterpret_cast<Pack*>(grad)[pack] = grads;
    if (hidden != nullptr) reinterpret_cast<Pack*>(hidden)[pack] = hiddens;
  }
  for (int64_t i = packs * VEC + first; i < count; i += stride) {  // the scalar tail
    float h;  // upcasts: fp32 math
    grad[i] = from_float<T>(grad_value<ACTIVATION>(to_float(grad[i]), to_float(saved[i]),
                                                   dropout, seed_value,
                                                   static_cast<uint64_t>(i), dropout_p, scale,
                                                   h));
    if (hidden != nullptr) hidden[i] = from_float<T>(h);
  }
}

// Calls fn(std::integral_constant<Activation, A>{}) for the runtime activation.
template <typename Fn>
cudaError_t dispatch_activation(Activation activation, Fn&& fn) {
  switch (activation) {
    case Activation::kRelu: return fn(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kGelu: return fn(std::integral_constant<Activation, Activation::kGelu>{});
    case Activation::kGeluTanh:
      return fn(std::integral_constant<Activation, Activation::kGeluTanh>{});
  }
  return cudaErrorInvalidValue;
}

bool aligned16(const void* pointer) {
  return reinterpret_cast<uintptr_t>(pointer) % 16 == 0;
}

// Enough blocks for one 16-byte pack per thread, capped (the loops stride over the rest).
unsigned blocks_for(int64_t count, int vec) {
  const int64_t packs = count / vec + 1;  // + 1: a tail-only buffer still gets a block
  const unsigned blocks = ceil_div(packs, kThreads);
  return blocks < kMaxBlocks ? blocks : kMaxBlocks;
}

float dropout_scale(const int64_t* seed, float dropout_p) {
  return seed != nullptr ? 1.0f / (1.0f - dropout_p) : 1.0f;
}

}  // namespace

cudaError_t launch_activation_forward(DType dtype, Activation activation,
                                      const void* preactivation, void* hidden, int64_t count,
                                      const int64_t* seed, float dropout_p,
                                      cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  if (!aligned16(preactivation) || !aligned16(hidden)) return cudaErrorMisalignedAddress;
  const float scale = dropout_scale(seed, dropout_p);
  return dispatch_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    return dispatch_activation(activation, [&](auto activation_tag) {
      constexpr Activation ACTIVATION = decltype(activation_tag)::value;
      activation_forward_kernel<T, ACTIVATION>
          <<<blocks_for(count, 16 / sizeof(T)), kThreads, 0, stream>>>(
              static_cast<const T*>(preactivation), static_cast<T*>(hidden), count, seed,
              dropout_p, scale);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_activation_backward(DType dtype, Activation activation, void* grad,
                                       const void* saved, void* hidden, int64_t count,
                                       const int64_t* seed, float dropout_p,
                                       cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  if (!aligned16(grad) || !aligned16(saved) || !aligned16(hidden)) {  // null is aligned
    return cudaErrorMisalignedAddress;
  }
  if (activation == Activation::kRelu) hidden = nullptr;  // h is `saved` itself
  const float scale = dropout_scale(seed, dropout_p);
  return dispatch_dtype(dtype, [&](auto type_tag) {
    using T = decltype(type_tag);
    return dispatch_activation(activation, [&](auto activation_tag) {
      constexpr Activation ACTIVATION = decltype(activation_tag)::value;
      activation_backward_kernel<T, ACTIVATION>
          <<<blocks_for(count, 16 / sizeof(T)), kThreads, 0, stream>>>(
              static_cast<T*>(grad), static_cast<const T*>(saved), static_cast<T*>(hidden),
              count, seed, dropout_p, scale);
      return cudaGetLastError();
    });
  });
}

}  // namespace fasttx::feed_forward
