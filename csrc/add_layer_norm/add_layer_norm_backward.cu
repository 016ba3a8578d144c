// Backward of the fused residual add + dropout + LayerNorm. With xhat = (s - mean) * rstd
// and g = dy * weight, per row:
//     ds = rstd * (g - mean(g) - xhat * mean(g * xhat)) + d(s returned)
//     dresidual = ds;  dx = ds * keep / (1 - p)   (the forward's Philox mask, regenerated)
// and over all rows dweight = sum(dy * xhat), dbias = sum(dy).
//
// Kernels:
// - add_layer_norm_backward_kernel: rows in fp32 registers, 16 elements per thread, with
//   the row layout of the forward (rows of up to 32 threads share a block of 256, wider
//   rows get a block each). Rows up to 8192 wide are handled whole, so the two row means
//   come from the registers; wider rows are split into column windows of 8192
//   (blockIdx.y), and the row means come from add_layer_norm_backward_row_dots_kernel,
//   a block-per-row pre-pass over dy and s.
// - Reduction strategy for dweight and dbias: deterministic, atomic-free, in two stages.
//   The grid is persistent (a fixed number of blocks per window, from the device's SM
//   count and the kernel's occupancy): every thread keeps the fp32 column sums of its
//   columns over the rows its block walks, in registers; at the end the row groups of a
//   block add theirs in a fixed order through shared memory and the block writes one row of
//   a (blocks, D) fp32 scratch buffer. add_layer_norm_column_sum_kernel then adds those
//   rows in a fixed order and casts to the parameter's dtype. Same GPU, same bits.
// Templated on grad_y's dtype G, the stream dtype S ((T, T) and (T, float) only) and the
// vector width VEC (16 bytes of G, or 1): 4 instantiations per (G, S), plus one column
// sum per output dtype: 23 in all.
#include <type_traits>

#include "add_layer_norm/add_layer_norm.h"
#include "add_layer_norm/add_layer_norm_common.cuh"

namespace fasttx::add_layer_norm {
namespace {

constexpr int kElementsPerThread = 16;  // per thread: dy*weight, xhat, and two column sums
constexpr int kMaxRowThreads = 512;     // at most 128 registers per thread
constexpr int kWindowCapacity = kElementsPerThread * kMaxRowThreads;  // 8192 columns
constexpr int kRowDotsThreads = 1024;
constexpr int kMinTilesPerBlock = 2;    // fewer, fuller blocks: less scratch per row
constexpr int kColumnSumColumns = 32;   // column sum block: 32 columns x 16 row slices
constexpr int kColumnSumSlices = 16;

// Block (b, w) walks the row tiles b, b + gridDim.x, ... (rows_per_block rows per tile)
// over column window w of kWindowCapacity columns (the whole row when gridDim.y == 1).
// Thread `lane` of row group `group` owns the vectors i * row_threads + lane (i < ITEMS)
// of the window. Dynamic shared memory, when several rows share the block: fp32
// (2, rows_per_block, window) for combining the row groups' column sums.
template <typename G, typename S, int ITEMS, int VEC>
__global__ void __launch_bounds__(kMaxRowThreads)
    add_layer_norm_backward_kernel(const BackwardParams params, const int row_threads) {
  extern __shared__ float column_sums[];
  __shared__ float warp_sums[kWarpSize][2];
  const int rows_per_block = blockDim.x / row_threads;
  const int group = threadIdx.x / row_threads;
  const int lane = threadIdx.x - group * row_threads;
  const int dim = params.dim;
  const int window = row_threads * ITEMS * VEC;
  const int column0 = blockIdx.y * window;
  const bool dots_given = gridDim.y > 1;  // uniform: the row reduction's barriers are safe
  const uint64_t seed = params.seed != nullptr ? static_cast<uint64_t>(*params.seed) : 0;

  // this thread's fp32 column sums of dy * xhat and dy over every row the block walks
  float sum_dy_xhat[ITEMS][VEC], sum_dy[ITEMS][VEC];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) sum_dy_xhat[i][j] = sum_dy[i][j] = 0.0f;
  }

  const int64_t tiles = (params.rows + rows_per_block - 1) / rows_per_block;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {  // same count in the block
    const int64_t row = tile * rows_per_block + group;
    const bool row_valid = row < params.rows;  // no early exit: shuffles need every lane
    const float mean = row_valid ? params.mean[row] : 0.0f;
    const float rstd = row_valid ? params.rstd[row] : 0.0f;

    // loads only: g = dy * weight and xhat, upcast to fp32 (0 outside the row)
    float g[ITEMS][VEC], xhat[ITEMS][VEC];
    float dots[2] = {0.0f, 0.0f};  // sum(g * xhat), sum(g) over this thread's columns
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int column = column0 + (i * row_threads + lane) * VEC;
      if (row_valid && column < dim) {
        const int64_t offset = row * dim + column;
        float dy[VEC], s[VEC], weight[VEC];
        load_floats<G, VEC>(static_cast<const G*>(params.grad_y) + offset, dy);
        load_floats<S, VEC>(static_cast<const S*>(params.stream) + offset, s);
        load_parameter<G, VEC>(params.weight, params.weight_is_float, 1.0f, column, weight);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          xhat[i][j] = __fmul_rn(s[j] - mean, rstd);
          g[i][j] = __fmul_rn(dy[j], weight[j]);
          sum_dy_xhat[i][j] += dy[j] * xhat[i][j];
          sum_dy[i][j] += dy[j];
          dots[0] += g[i][j] * xhat[i][j];
          dots[1] += g[i][j];
        }
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) g[i][j] = xhat[i][j] = 0.0f;
      }
    }

    float mean_g_xhat, mean_g;
    if (!dots_given) {
      row_group_sum(dots, row_threads, warp_sums);
      mean_g_xhat = divide_by_dim(dots[0], dim);
      mean_g = divide_by_dim(dots[1], dim);
    } else {
      mean_g_xhat = row_valid ? params.row_dots[row] : 0.0f;
      mean_g = row_valid ? params.row_dots[params.rows + row] : 0.0f;
    }

    // ds into g (loads of d(s returned) only, before any store)
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int column = column0 + (i * row_threads + lane) * VEC;
      if (row_valid && column < dim) {
        float grad_stream[VEC];
        if (params.grad_stream != nullptr) {
          load_floats<S, VEC>(static_cast<const S*>(params.grad_stream) + row * dim + column,
                              grad_stream);
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) grad_stream[j] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          g[i][j] = rstd * (g[i][j] - mean_g - xhat[i][j] * mean_g_xhat) + grad_stream[j];
        }
      }
    }
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int column = column0 + (i * row_threads + lane) * VEC;
      if (row_valid && column < dim) {
        const int64_t offset = row * dim + column;
        if (params.grad_residual != nullptr) {
          store_floats<S, VEC>(static_cast<S*>(params.grad_residual) + offset, g[i]);
        }
        if (params.seed != nullptr) {
          apply_dropout(g[i], seed, static_cast<uint64_t>(offset), params.dropout_p,
                        params.dropout_scale);
        }
        store_floats<G, VEC>(static_cast<G*>(params.grad_x) + offset, g[i]);
      }
    }
  }

  if (params.partials == nullptr) return;  // uniform: no dweight or dbias wanted
  float* const partial_weight = params.partials + static_cast<int64_t>(blockIdx.x) * dim;
  float* const partial_bias = params.partials + static_cast<int64_t>(gridDim.x + blockIdx.x) * dim;
  if (rows_per_block == 1) {
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
      const int column = column0 + (i * row_threads + lane) * VEC;
      if (column < dim) {
        store_floats<float, VEC>(partial_weight + column, sum_dy_xhat[i]);
        store_floats<float, VEC>(partial_bias + column, sum_dy[i]);
      }
    }
    return;
  }
  // several row groups: add their sums in a fixed order (group 0, 1, ...) through shared
  // memory. rows_per_block > 1 only when the row is a single window, so column0 == 0.
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int element = (i * row_threads + lane) * VEC + j;
      column_sums[group * window + element] = sum_dy_xhat[i][j];
      column_sums[(rows_per_block + group) * window + element] = sum_dy[i][j];
    }
  }
  __syncthreads();
  for (int column = threadIdx.x; column < dim && column < window; column += blockDim.x) {
    float weight_total = 0.0f, bias_total = 0.0f;
    for (int r = 0; r < rows_per_block; ++r) {
      weight_total += column_sums[r * window + column];
      bias_total += column_sums[(rows_per_block + r) * window + column];
    }
    partial_weight[column] = weight_total;
    partial_bias[column] = bias_total;
  }
}

// The pre-pass for rows split into column windows: mean(g * xhat) and mean(g) of row
// blockIdx.x into row_dots (2, N), one block per row walking it in strides of the block.
template <typename G, typename S, int VEC>
__global__ void __launch_bounds__(kRowDotsThreads)
    add_layer_norm_backward_row_dots_kernel(const BackwardParams params) {
  __shared__ float warp_sums[kWarpSize][2];
  const int64_t row = blockIdx.x;
  const int dim = params.dim;
  const float mean = params.mean[row];
  const float rstd = params.rstd[row];
  float dots[2] = {0.0f, 0.0f};  // fp32 sums of g * xhat and g
  for (int column = threadIdx.x * VEC; column < dim; column += blockDim.x * VEC) {
    float dy[VEC], s[VEC], weight[VEC];
    load_floats<G, VEC>(static_cast<const G*>(params.grad_y) + row * dim + column, dy);
    load_floats<S, VEC>(static_cast<const S*>(params.stream) + row * dim + column, s);
    load_parameter<G, VEC>(params.weight, params.weight_is_float, 1.0f, column, weight);
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float g = __fmul_rn(dy[j], weight[j]);
      dots[0] += g * __fmul_rn(s[j] - mean, rstd);
      dots[1] += g;
    }
  }
  row_group_sum(dots, blockDim.x, warp_sums);
  if (threadIdx.x == 0) {
    params.row_dots[row] = divide_by_dim(dots[0], dim);
    params.row_dots[params.rows + row] = divide_by_dim(dots[1], dim);
  }
}

// Stage two of the dweight/dbias reduction: out[d] = sum over p of partials[p, d], added in
// the fixed order p = slice, slice + 16, ... within each of the 16 row slices, then slices
// 0..15 in order. partials: fp32 (partial_rows, D); out: (D,) in O.
template <typename O>
__global__ void __launch_bounds__(kColumnSumColumns * kColumnSumSlices)
    add_layer_norm_column_sum_kernel(const float* partials, O* out, int partial_rows, int dim) {
  __shared__ float slice_sums[kColumnSumSlices][kColumnSumColumns];
  const int column = blockIdx.x * kColumnSumColumns + threadIdx.x;
  float sum = 0.0f;
  if (column < dim) {
    for (int p = threadIdx.y; p < partial_rows; p += kColumnSumSlices) {
      sum += partials[static_cast<int64_t>(p) * dim + column];
    }
  }
  slice_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && column < dim) {
    float total = 0.0f;
    for (int slice = 0; slice < kColumnSumSlices; ++slice) total += slice_sums[slice][threadIdx.x];
    out[column] = from_float<O>(total);
  }
}

// Dynamic shared memory of add_layer_norm_backward_kernel for a layout.
size_t combine_bytes(int rows_per_block, int block_threads) {
  return rows_per_block > 1 ? 2 * static_cast<size_t>(block_threads) * kElementsPerThread *
                                  sizeof(float)
                            : 0;
}

template <typename G, typename S, int VEC>
cudaError_t plan_for(const BackwardParams& params, int sm_count, BackwardPlan* plan) {
  constexpr int ITEMS = kElementsPerThread / VEC;
  RowLayout layout;
  plan->vec = VEC;
  if (params.dim <= kWindowCapacity) {
    layout = row_layout((params.dim + VEC - 1) / VEC, ITEMS);
    plan->windows = 1;
  } else {
    layout = RowLayout{kMaxRowThreads, kMaxRowThreads, 1};
    plan->windows = (params.dim + kWindowCapacity - 1) / kWindowCapacity;
  }
  plan->row_threads = layout.row_threads;
  plan->block_threads = layout.block_threads;
  plan->row_dots = plan->windows > 1;
  int blocks_per_sm = 0;
  const cudaError_t error = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      &blocks_per_sm, add_layer_norm_backward_kernel<G, S, ITEMS, VEC>, layout.block_threads,
      combine_bytes(layout.rows_per_block, layout.block_threads));
  if (error != cudaSuccess) return error;
  const int64_t tiles = (params.rows + layout.rows_per_block - 1) / layout.rows_per_block;
  const int64_t resident = static_cast<int64_t>(sm_count) * (blocks_per_sm > 0 ? blocks_per_sm : 1);
  const int64_t per_window = resident / plan->windows > 0 ? resident / plan->windows : 1;
  const int64_t wanted = (tiles + kMinTilesPerBlock - 1) / kMinTilesPerBlock;
  plan->partial_rows = static_cast<int>(wanted < per_window ? wanted : per_window);
  return cudaSuccess;
}

template <typename G, typename S, int VEC>
cudaError_t launch_backward(const BackwardParams& params, const BackwardPlan& plan,
                            cudaStream_t stream) {
  constexpr int ITEMS = kElementsPerThread / VEC;
  if (params.rows == 0) return cudaSuccess;
  if (plan.row_dots) {
    add_layer_norm_backward_row_dots_kernel<G, S, VEC>
        <<<static_cast<unsigned>(params.rows), kRowDotsThreads, 0, stream>>>(params);
    const cudaError_t error = cudaGetLastError();
    if (error != cudaSuccess) return error;
  }
  const int rows_per_block = plan.block_threads / plan.row_threads;
  add_layer_norm_backward_kernel<G, S, ITEMS, VEC>
      <<<dim3(plan.partial_rows, plan.windows), plan.block_threads,
         combine_bytes(rows_per_block, plan.block_threads), stream>>>(params, plan.row_threads);
  return cudaGetLastError();
}

// dweight or dbias from its (partial_rows, D) block of partials, in the output's dtype.
cudaError_t launch_column_sum(const float* partials, void* out, DType out_dtype,
                              int partial_rows, int dim, cudaStream_t stream) {
  return dispatch_dtype(out_dtype, [&](auto out_tag) -> cudaError_t {
    using O = decltype(out_tag);
    add_layer_norm_column_sum_kernel<O>
        <<<ceil_div(dim, kColumnSumColumns), dim3(kColumnSumColumns, kColumnSumSlices), 0,
           stream>>>(partials, static_cast<O*>(out), partial_rows, dim);
    return cudaGetLastError();
  });
}

// 16-byte vectors of G when D and every pointer allow them (stream-dtype and fp32 tensors
// then take VEC * 4 bytes per access), else scalars. All (N, D) tensors are contiguous.
template <int VEC>
bool can_vectorise(const BackwardParams& params, size_t stream_bytes) {
  const size_t grad_bytes = 16;
  return params.dim % VEC == 0 && is_aligned(params.grad_y, grad_bytes) &&
         is_aligned(params.grad_x, grad_bytes) && is_aligned(params.stream, VEC * stream_bytes) &&
         is_aligned(params.grad_stream, VEC * stream_bytes) &&
         is_aligned(params.grad_residual, VEC * stream_bytes) &&
         is_aligned(params.weight, params.weight_is_float ? VEC * sizeof(float) : grad_bytes);
}

// Calls fn(G{}, S{}, std::integral_constant<int, VEC>) for the instantiated combination.
template <typename Fn>
cudaError_t dispatch_backward(const BackwardParams& params, Fn&& fn) {
  if (params.stream_dtype != params.grad_dtype && params.stream_dtype != DType::kFloat32) {
    return cudaErrorInvalidValue;  // only (T, T) and (T, fp32) are instantiated
  }
  return dispatch_dtype(params.grad_dtype, [&](auto grad_tag) -> cudaError_t {
    using G = decltype(grad_tag);
    constexpr int VEC = 16 / sizeof(G);
    const auto with_stream = [&](auto stream_tag) -> cudaError_t {
      using S = decltype(stream_tag);
      if (can_vectorise<VEC>(params, sizeof(S))) {
        return fn(G{}, S{}, std::integral_constant<int, VEC>{});
      }
      return fn(G{}, S{}, std::integral_constant<int, 1>{});
    };
    return params.stream_dtype == params.grad_dtype ? with_stream(G{}) : with_stream(float{});
  });
}

}  // namespace

cudaError_t plan_add_layer_norm_backward(const BackwardParams& params, BackwardPlan* plan) {
  if (params.dim < 1 || params.rows < 0) return cudaErrorInvalidValue;
  int device = 0, sm_count = 0;
  cudaError_t error = cudaGetDevice(&device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);
  }
  if (error != cudaSuccess) return error;
  return dispatch_backward(params, [&](auto grad_tag, auto stream_tag, auto vec) {
    return plan_for<decltype(grad_tag), decltype(stream_tag), decltype(vec)::value>(
        params, sm_count, plan);
  });
}

cudaError_t add_layer_norm_backward(const BackwardParams& params, const BackwardPlan& plan,
                                    cudaStream_t stream) {
  const bool wants_partials = params.grad_weight != nullptr || params.grad_bias != nullptr;
  if (params.dim < 1 || (wants_partials && params.rows > 0 && params.partials == nullptr) ||
      (plan.row_dots && params.row_dots == nullptr) ||
      (params.rows > 0 && (plan.partial_rows < 1 || plan.windows < 1))) {
    return cudaErrorInvalidValue;
  }
  // the kernel stores VEC floats at a time into partials (its row length D is a multiple of VEC)
  if (!is_aligned(params.partials, plan.vec * sizeof(float))) return cudaErrorMisalignedAddress;
  cudaError_t error = dispatch_backward(params, [&](auto grad_tag, auto stream_tag, auto vec) {
    using G = decltype(grad_tag);
    using S = decltype(stream_tag);
    constexpr int VEC = decltype(vec)::value;
    // the plan must be this one's (the vector width follows from the pointers)
    if (plan.vec != VEC) return cudaErrorInvalidValue;
    return launch_backward<G, S, VEC>(params, plan, stream);
  });
  if (error != cudaSuccess) return error;
  // stage two of dweight/dbias; with N == 0 it writes zeros (a sum over no rows)
  if (params.grad_weight != nullptr) {
    error = launch_column_sum(params.partials, params.grad_weight, params.grad_weight_dtype,
                              plan.partial_rows, params.dim, stream);
    if (error != cudaSuccess) return error;
  }
  if (params.grad_bias != nullptr) {
    error = launch_column_sum(
        params.partials + static_cast<int64_t>(plan.partial_rows) * params.dim, params.grad_bias,
        params.grad_bias_dtype, plan.partial_rows, params.dim, stream);
  }
  return error;
}

}  // namespace fasttx::add_layer_norm
