// Forward of the fused residual add + dropout + LayerNorm:
//     s = residual + dropout(x)   (rounded to the stream dtype: the s that is returned)
//     y = (s - mean(s)) * rstd(s) * weight + bias
// One read of x and the residual, one write of s and y: a memory-bound row kernel.
//
// Two kernels, picked by the launcher from D:
// - add_layer_norm_forward_kernel (D <= 16384): the whole row in fp32 registers, 32
//   elements per thread; rows of up to 32 threads share a block (several rows per block,
//   warp-shuffle reductions), wider rows get a block of up to 512 threads each. The
//   statistics are two-pass over the registers (mean, then the mean of squared
//   deviations; no E[s^2] - E[s]^2 cancellation).
// - add_layer_norm_forward_wide_kernel (wider rows, up to 65536 and beyond): one block
//   per row walks the row three times; the first walk writes s to the output and keeps a
//   copy of the row in shared memory (in the stream dtype, which is exact: the statistics
//   are of s as stored) when it fits, the two others (squared deviations, then y) read
//   that copy, or s back from global memory (L2) when it does not fit. Each thread only
//   reads back the elements it wrote itself, so the copy needs no synchronisation.
// Reduction strategy for the statistics, in both kernels: a shifted two-pass, as in the
// reference (fasttx/reference/add_layer_norm.py, shifted_row_statistics). Every thread of a
// row reads the row's first element K of s (one broadcast load of a cached line), the sums
// are of s - K, and mean = K + mean(s - K) is stored for the backward. A constant row shifts
// to exact zeros, so y is exactly the bias whatever eps (unshifted, the rounding of mean(s)
// leaves s - mean an ulp off zero, which rstd = 1 / sqrt(eps) magnifies a millionfold at
// eps = 1e-12); rows far from zero (mean / std ~ 1e4) keep an accurate mean.
// Both are templated on x's dtype X, the stream dtype S ((T, T) and (T, float) only) and
// the vector width VEC (16 bytes of X, or 1 when D, a stride or a pointer is not
// aligned for 16 bytes): 4 instantiations per (X, S), 20 in all.
#include "add_layer_norm/add_layer_norm.h"
#include "add_layer_norm/add_layer_norm_common.cuh"

namespace fasttx::add_layer_norm {
namespace {

constexpr int kElementsPerThread = 32;  // fp32 registers holding each thread's share of a row
constexpr int kMaxRowThreads = 512;     // at most 128 registers per thread for the row kernel
constexpr int kRegisterRowCapacity = kElementsPerThread * kMaxRowThreads;  // 16384
constexpr int kWideThreads = 1024;
constexpr int kWarpSumBytes = kWarpSize * sizeof(float);  // the wide kernel's reduction scratch

// s = residual + dropout(x) for VEC elements of row `row` from `column` on, rounded to S
// (x and the residual are upcast to fp32 on load; the sum is fp32).
template <typename X, typename S, int VEC>
__device__ __forceinline__ void residual_stream(const ForwardParams& params, int64_t row,
                                                int column, uint64_t seed, float (&s)[VEC]) {
  load_floats<X, VEC>(static_cast<const X*>(params.x) + row * params.x_row_stride + column, s);
  if (params.seed != nullptr) {
    apply_dropout(s, seed, static_cast<uint64_t>(row) * params.dim + column, params.dropout_p,
                  params.dropout_scale);
  }
  if (params.residual != nullptr) {
    float residual[VEC];
    load_floats<S, VEC>(
        static_cast<const S*>(params.residual) + row * params.residual_row_stride + column,
        residual);
#pragma unroll
    for (int j = 0; j < VEC; ++j) s[j] += residual[j];
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) s[j] = round_to<S>(s[j]);
}

// K = s[row, 0] as stored: the shift of the row's statistics (see the file comment).
template <typename X, typename S>
__device__ __forceinline__ float stream_shift(const ForwardParams& params, int64_t row,
                                              uint64_t seed) {
  float first[1];
  residual_stream<X, S, 1>(params, row, 0, seed, first);
  return first[0];
}

// y = (s - K - shifted_mean) * rstd * weight + bias for VEC elements, written in X.
template <typename X, int VEC>
__device__ __forceinline__ void write_normalised(const ForwardParams& params, int64_t row,
                                                 int column, const float (&s)[VEC], float shift,
                                                 float shifted_mean, float rstd) {
  float weight[VEC], bias[VEC], y[VEC];
  load_parameter<X, VEC>(params.weight, params.weight_is_float, 1.0f, column, weight);
  load_parameter<X, VEC>(params.bias, params.bias_is_float, 0.0f, column, bias);
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    y[j] = __fmul_rn(__fmul_rn((s[j] - shift) - shifted_mean, rstd), weight[j]) + bias[j];
  }
  store_floats<X, VEC>(static_cast<X*>(params.y) + row * params.dim + column, y);
}

__device__ __forceinline__ float reciprocal_sqrt(float value) {
  return __fdiv_rn(1.0f, __fsqrt_rn(value));  // correctly rounded, not rsqrtf's approximation
}

// Rows held in registers. Block b, row group `group` handles row b * rows_per_block + group;
// thread `lane` of the group holds the vectors i * row_threads + lane (i < ITEMS).
// row_threads: a power of two up to 32 (blockDim.x = 256) or blockDim.x (one row per block).
template <typename X, typename S, int ITEMS, int VEC>
__global__ void __launch_bounds__(kMaxRowThreads)
    add_layer_norm_forward_kernel(const ForwardParams params, const int row_threads) {
  __shared__ float warp_sums[kWarpSize][1];
  const int group = threadIdx.x / row_threads;
  const int lane = threadIdx.x - group * row_threads;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / row_threads) + group;
  // rows past N compute zeros but still take part in the shuffles (no early return)
  const bool row_valid = row < params.rows;
  const int dim = params.dim;
  const uint64_t seed = params.seed != nullptr ? static_cast<uint64_t>(*params.seed) : 0;

  // loads only in this loop (the stores of s come later), so that all of them are in flight
  float s[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int column = (i * row_threads + lane) * VEC;
    if (row_valid && column < dim) {
      residual_stream<X, S, VEC>(params, row, column, seed, s[i]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) s[i][j] = 0.0f;  // outside the row: adds nothing to the sum
    }
  }

  // first pass over the registers: the sum of s - K (only of elements inside the row)
  const float shift = row_valid ? stream_shift<X, S>(params, row, seed) : 0.0f;
  float sum[1] = {0.0f};
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int column = (i * row_threads + lane) * VEC;
    if (row_valid && column < dim) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) sum[0] += s[i][j] - shift;
    }
  }
  row_group_sum(sum, row_threads, warp_sums);
  const float shifted_mean = divide_by_dim(sum[0], dim);

  // second pass over the registers: squared deviations (only of elements inside the row)
  float squares[1] = {0.0f};
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int column = (i * row_threads + lane) * VEC;
    if (row_valid && column < dim) {
      store_floats<S, VEC>(static_cast<S*>(params.stream) + row * dim + column, s[i]);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float deviation = (s[i][j] - shift) - shifted_mean;
        squares[0] += deviation * deviation;
      }
    }
  }
  row_group_sum(squares, row_threads, warp_sums);
  const float rstd = reciprocal_sqrt(divide_by_dim(squares[0], dim) + params.eps);
  if (row_valid && lane == 0) {
    params.mean[row] = shift + shifted_mean;
    params.rstd[row] = rstd;
  }

#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const int column = (i * row_threads + lane) * VEC;
    if (row_valid && column < dim) {
      write_normalised<X, VEC>(params, row, column, s[i], shift, shifted_mean, rstd);
    }
  }
}

// Rows too wide for registers: one block of kWideThreads per row (blockIdx.x), walking the
// row's vectors in strides of the block, three times (see the file comment).
// Dynamic shared memory: kWarpSumBytes of reduction scratch, then, when cache_in_shared,
// the row s as stored (D elements of S).
template <typename X, typename S, int VEC>
__global__ void __launch_bounds__(kWideThreads)
    add_layer_norm_forward_wide_kernel(const ForwardParams params, const bool cache_in_shared) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  float(*warp_sums)[1] = reinterpret_cast<float(*)[1]>(shared_bytes);
  const int64_t row = blockIdx.x;
  const int dim = params.dim;
  const int stride = blockDim.x * VEC;
  const uint64_t seed = params.seed != nullptr ? static_cast<uint64_t>(*params.seed) : 0;
  S* const stream_row = static_cast<S*>(params.stream) + row * dim;
  // where the later walks read s from: the shared copy, or the output just written
  const S* const cached_row =
      cache_in_shared ? reinterpret_cast<const S*>(shared_bytes + kWarpSumBytes) : stream_row;

  const float shift = stream_shift<X, S>(params, row, seed);
  float sum[1] = {0.0f};  // of s - K
  for (int column = threadIdx.x * VEC; column < dim; column += stride) {
    float s[VEC];
    residual_stream<X, S, VEC>(params, row, column, seed, s);
    store_floats<S, VEC>(stream_row + column, s);
    if (cache_in_shared) {
      store_floats<S, VEC>(reinterpret_cast<S*>(shared_bytes + kWarpSumBytes) + column, s);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum[0] += s[j] - shift;
  }
  row_group_sum(sum, blockDim.x, warp_sums);
  const float shifted_mean = divide_by_dim(sum[0], dim);

  // second pass: squared deviations, from the copy each thread wrote itself
  float squares[1] = {0.0f};
  for (int column = threadIdx.x * VEC; column < dim; column += stride) {
    float s[VEC];
    load_floats<S, VEC>(cached_row + column, s);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float deviation = (s[j] - shift) - shifted_mean;
      squares[0] += deviation * deviation;
    }
  }
  row_group_sum(squares, blockDim.x, warp_sums);
  const float rstd = reciprocal_sqrt(divide_by_dim(squares[0], dim) + params.eps);
  if (threadIdx.x == 0) {
    params.mean[row] = shift + shifted_mean;
    params.rstd[row] = rstd;
  }

  for (int column = threadIdx.x * VEC; column < dim; column += stride) {
    float s[VEC];
    load_floats<S, VEC>(cached_row + column, s);
    write_normalised<X, VEC>(params, row, column, s, shift, shifted_mean, rstd);
  }
}

template <typename X, typename S, int VEC>
cudaError_t launch_forward(const ForwardParams& params, cudaStream_t stream) {
  if (params.dim <= kRegisterRowCapacity) {
    constexpr int ITEMS = kElementsPerThread / VEC;
    const RowLayout layout = row_layout((params.dim + VEC - 1) / VEC, ITEMS);
    const unsigned blocks = ceil_div(params.rows, layout.rows_per_block);
    add_layer_norm_forward_kernel<X, S, ITEMS, VEC>
        <<<blocks, layout.block_threads, 0, stream>>>(params, layout.row_threads);
    return cudaGetLastError();
  }
  // wide rows: keep the row in shared memory when it fits the block's opt-in maximum
  int device = 0, max_shared = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&max_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  }
  if (error != cudaSuccess) return error;
  const size_t row_bytes = static_cast<size_t>(params.dim) * sizeof(S);
  const bool cache_in_shared = kWarpSumBytes + row_bytes <= static_cast<size_t>(max_shared);
  const size_t shared_bytes = kWarpSumBytes + (cache_in_shared ? row_bytes : 0);
  const auto kernel = add_layer_norm_forward_wide_kernel<X, S, VEC>;
  if (shared_bytes > 48 * 1024) {
    error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(shared_bytes));
    if (error != cudaSuccess) return error;
  }
  kernel<<<static_cast<unsigned>(params.rows), kWideThreads, shared_bytes, stream>>>(
      params, cache_in_shared);
  return cudaGetLastError();
}

// 16-byte vectors of X when D, both row strides and every pointer allow them (the stream
// and fp32 parameters then take VEC * 4 bytes: two 16-byte accesses), else scalars.
template <int VEC>
bool can_vectorise(const ForwardParams& params, size_t stream_bytes) {
  const size_t x_bytes = 16;
  return params.dim % VEC == 0 && stride_allows(params.x_row_stride, params.rows, VEC) &&
         stride_allows(params.residual_row_stride, params.rows, VEC) &&
         is_aligned(params.x, x_bytes) && is_aligned(params.y, x_bytes) &&
         is_aligned(params.residual, VEC * stream_bytes) &&
         is_aligned(params.stream, VEC * stream_bytes) &&
         is_aligned(params.weight, params.weight_is_float ? VEC * sizeof(float) : x_bytes) &&
         is_aligned(params.bias, params.bias_is_float ? VEC * sizeof(float) : x_bytes);
}

}  // namespace

cudaError_t add_layer_norm_forward(const ForwardParams& params, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
  if (params.dim < 1) return cudaErrorInvalidValue;
  if (params.stream_dtype != params.x_dtype && params.stream_dtype != DType::kFloat32) {
    return cudaErrorInvalidValue;  // only (T, T) and (T, fp32) are instantiated
  }
  return dispatch_dtype(params.x_dtype, [&](auto x_tag) -> cudaError_t {
    using X = decltype(x_tag);
    constexpr int VEC = 16 / sizeof(X);
    const auto launch = [&](auto stream_tag) -> cudaError_t {
      using S = decltype(stream_tag);
      return can_vectorise<VEC>(params, sizeof(S)) ? launch_forward<X, S, VEC>(params, stream)
                                                   : launch_forward<X, S, 1>(params, stream);
    };
    return params.stream_dtype == params.x_dtype ? launch(X{}) : launch(float{});
  });
}

}  // namespace fasttx::add_layer_norm
