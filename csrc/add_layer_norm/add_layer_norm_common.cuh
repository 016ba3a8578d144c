// Pieces shared by the add + dropout + LayerNorm forward and backward kernels: vector loads
// that upcast to fp32, the row-group sum, dropout, and the host-side choice of how many
// threads share a row.
//
// Row layout used by every kernel here: a row (or a column window of it) is handled by a
// group of row_threads threads; thread `lane` of the group owns the vectors
// i * row_threads + lane (i < ITEMS) of VEC consecutive elements each, so that for every i
// the group reads one contiguous, coalesced stretch of the row. row_threads is a power of
// two up to 32 (several rows per block, reduced with warp shuffles) or the whole block (one
// row per block, reduced through shared memory).
#pragma once

#include <cstdint>

#include "common/numeric.cuh"
#include "common/philox.cuh"

namespace fasttx::add_layer_norm {

constexpr int kWarpSize = 32;
constexpr int kSmallRowBlockThreads = 256;  // block size when several rows share a block

// ---- device helpers ---------------------------------------------------------------------

// Loads VEC consecutive elements of T (aligned to VEC * sizeof(T) bytes: one 16-byte access,
// two for 8 floats) and upcasts them to fp32, the type of every computation below.
template <typename T, int VEC>
__device__ __forceinline__ void load_floats(const T* source, float (&out)[VEC]) {
  const Vector<T, VEC> packed = *reinterpret_cast<const Vector<T, VEC>*>(source);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = to_float(packed.values[j]);
}

// Rounds VEC fp32 values to T and stores them (same alignment as load_floats).
template <typename T, int VEC>
__device__ __forceinline__ void store_floats(T* target, const float (&values)[VEC]) {
  Vector<T, VEC> packed;
#pragma unroll
  for (int j = 0; j < VEC; ++j) packed.values[j] = from_float<T>(values[j]);
  *reinterpret_cast<Vector<T, VEC>*>(target) = packed;
}

// VEC elements of a LayerNorm parameter (D,) from `column` on, upcast to fp32: `fill`
// when the parameter is absent, else read as fp32 or as X (a uniform runtime choice, so
// that the parameters' dtypes add no template instantiations).
template <typename X, int VEC>
__device__ __forceinline__ void load_parameter(const void* parameter, bool is_float, float fill,
                                               int column, float (&out)[VEC]) {
  if (parameter == nullptr) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = fill;
  } else if (is_float) {
    load_floats<float, VEC>(static_cast<const float*>(parameter) + column, out);
  } else {
    load_floats<X, VEC>(static_cast<const X*>(parameter) + column, out);
  }
}

// The fp32 value of `value` once stored as T (the statistics are of s as stored).
template <typename T>
__device__ __forceinline__ float round_to(float value) {
  return to_float(from_float<T>(value));
}

// values[j] *= keep / (1 - p) for the elements with Philox counters counter + j. The
// product is rounded on its own (no FMA with a following add), as the reference computes it.
template <int VEC>
__device__ __forceinline__ void apply_dropout(float (&values)[VEC], uint64_t seed,
                                              uint64_t counter, float p, float scale) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    values[j] = dropout_keep(seed, counter + j, p) ? __fmul_rn(values[j], scale) : 0.0f;
  }
}

// Sums each of values[0..COUNT) over the row_threads threads of a row group and leaves the
// totals, bit-identical, in every thread of the group. Reduction strategy: xor-butterfly
// shuffles inside the warp (a + b == b + a, so all lanes agree), then, when the group is
// the whole block (row_threads > 32), the per-warp totals through shared memory, added by
// every thread in the same fixed order. Every thread of the block must call it (it
// shuffles with a full mask and, for whole-block groups, synchronises the block).
// warp_sums: shared (32, COUNT) scratch.
template <int COUNT>
__device__ __forceinline__ void row_group_sum(float (&values)[COUNT], int row_threads,
                                              float (*warp_sums)[COUNT]) {
  const int lanes = row_threads < kWarpSize ? row_threads : kWarpSize;
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (int v = 0; v < COUNT; ++v) values[v] += __shfl_xor_sync(0xffffffffu, values[v], offset);
  }
  if (row_threads <= kWarpSize) return;  // uniform: row_threads is the same in every thread
  const int warp = threadIdx.x / kWarpSize;
  if (threadIdx.x % kWarpSize == 0) {
#pragma unroll
    for (int v = 0; v < COUNT; ++v) warp_sums[warp][v] = values[v];
  }
  __syncthreads();
  const int warps = blockDim.x / kWarpSize;
#pragma unroll
  for (int v = 0; v < COUNT; ++v) {
    float total = 0.0f;
    for (int w = 0; w < warps; ++w) total += warp_sums[w][v];
    values[v] = total;
  }
  __syncthreads();  // warp_sums is reused by the next call
}

// sum / D with correct rounding (not --use_fast_math's approximate division).
__device__ __forceinline__ float divide_by_dim(float sum, int dim) {
  return __fdiv_rn(sum, static_cast<float>(dim));
}

// ---- host helpers -----------------------------------------------------------------------

struct RowLayout {
  int row_threads;    // threads per row
  int block_threads;  // kSmallRowBlockThreads for power-of-two groups up to a warp, else
                      // row_threads (one row per block)
  int rows_per_block;
};

// The layout for rows of `vectors` vectors at `items` vectors per thread: the fewest
// threads that cover the row, rounded up to a power of two within a warp, or to whole
// warps beyond.
inline RowLayout row_layout(int vectors, int items) {
  const int needed = vectors > items ? (vectors + items - 1) / items : 1;
  RowLayout layout;
  if (needed <= kWarpSize) {
    int threads = 1;
    while (threads < needed) threads *= 2;
    layout.row_threads = threads;
    layout.block_threads = kSmallRowBlockThreads;
  } else {
    layout.row_threads = (needed + kWarpSize - 1) / kWarpSize * kWarpSize;
    layout.block_threads = layout.row_threads;
  }
  layout.rows_per_block = layout.block_threads / layout.row_threads;
  return layout;
}

// True when `pointer` (null counts as aligned) is a multiple of `bytes`.
inline bool is_aligned(const void* pointer, size_t bytes) {
  return reinterpret_cast<uintptr_t>(pointer) % bytes == 0;
}

// True when rows starting `row_stride` elements apart stay vector-aligned (any stride is
// fine for a single row).
inline bool stride_allows(int64_t row_stride, int64_t rows, int vec) {
  return rows <= 1 || row_stride % vec == 0;
}

}  // namespace fasttx::add_layer_norm
