// Warp-level building blocks of the sm_80+ attention kernels (FlashAttention-2 structure):
// inline-PTX wrappers for cp.async, ldmatrix and mma.sync m16n8k16 (fp16/bf16 inputs, fp32
// accumulators), a swizzled shared-memory tile layout, tile loaders with zero fill, the two
// warp GEMM shapes the kernels use, and the attention rules shared by the forward and the
// backward (sequence spans, masked base-2 scores, dropout counters).
//
// Everything here is device code for sm_80 and later (Ampere, Ada, Hopper): mma.sync and
// cp.async exist on all of them, so one set of kernels serves every GPU the build targets.
//
// ---------------------------------------------------------------------------------------
// Register layouts relied on (PTX ISA, "Matrix fragments for mma.m16n8k16" and "ldmatrix").
// In a warp, lane = 4 * g + t with g = lane / 4 (the "group", 0..7) and t = lane % 4.
//
//   A (16 x 16, row-major, 16-bit): four .b32 registers of two elements each; the element of
//     lower column index sits in the low half.
//       a[0] = A[g    ][2t, 2t+1]      a[1] = A[g + 8][2t, 2t+1]
//       a[2] = A[g    ][2t+8, 2t+9]    a[3] = A[g + 8][2t+8, 2t+9]
//   B (16 x 8, "col": indexed B[k][n]): two .b32 registers.
//       b[0] = B[2t, 2t+1][g]          b[1] = B[2t+8, 2t+9][g]
//   C/D (16 x 8, fp32): four floats.
//       c[0], c[1] = C[g][2t], C[g][2t+1]      c[2], c[3] = C[g + 8][2t], C[g + 8][2t+1]
//
//   ldmatrix.x4 loads four 8x8 16-bit matrices; lanes 8i..8i+7 give the addresses of the
//   eight rows of matrix i, and register r[i] of every lane receives from matrix i
//       plain:  row g, columns 2t, 2t+1        .trans: rows 2t, 2t+1 of column g
//
// Consequences used below:
//   * an A fragment of rows r0..r0+15 and columns c0..c0+15 of a row-major smem tile is one
//     ldmatrix.x4 with lane L addressing row r0 + L % 16, column c0 + 8 * (L / 16);
//   * B = X^T for a row-major tile X[n][k] (keys by head dims, as K in q.k^T) is the plain
//     ldmatrix of X's rows: b[0] = X[g][2t, 2t+1] (k = 2t, 2t+1; n = g);
//   * B = X for a row-major tile X[k][n] (keys by value dims, as V in P.V) is the .trans
//     ldmatrix of X's rows: b[0] = X[2t][g], X[2t+1][g];
//   * two adjacent C tiles (n = 0..7 and 8..15) of fp32 accumulators become, converted to
//     16 bits, the A fragment of a 16 x 16 operand with k = those 16 columns:
//       a[0] = C0[0,1]  a[1] = C0[2,3]  a[2] = C1[0,1]  a[3] = C1[2,3]
//     (row g / g + 8 and columns 2t, 2t+1 / 2t+8, 2t+9 match the A layout above), so the
//     probabilities P = softmax(Q K^T) feed P V without leaving registers.
// ---------------------------------------------------------------------------------------
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "attention/attention.h"
#include "common/numeric.cuh"
#include "common/philox.cuh"

namespace fasttx::attention::sm80 {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kMaxFloat = 3.4028234663852886e38f;

// ------------------------------------------------------------------------ PTX wrappers

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// Asynchronous 16-byte global -> shared copy; only the first `source_bytes` (0..16) are
// read, the rest of the 16 bytes are zero-filled.
__device__ __forceinline__ void cp_async_16(uint32_t destination, const void* source,
                                            int source_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(destination),
               "l"(source), "r"(source_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most PENDING of this thread's committed groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// d += a * b for one 16x8x16 tile: 16-bit inputs, fp32 accumulators (layouts above).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4],
                                                  uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two fp32 values rounded to T and packed into one register, `low` in the low half.
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float low, float high);

template <>
__device__ __forceinline__ uint32_t pack_pair<__half>(float low, float high) {
  const __half2 pair = __floats2half2_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

template <>
__device__ __forceinline__ uint32_t pack_pair<__nv_bfloat16>(float low, float high) {
  const __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
  return *reinterpret_cast<const uint32_t*>(&pair);
}

// Reductions over the four lanes (t = 0..3) that share the rows g and g + 8.
__device__ __forceinline__ float quad_max(float value) {
  value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, 1));
  return fmaxf(value, __shfl_xor_sync(0xffffffffu, value, 2));
}

__device__ __forceinline__ float quad_sum(float value) {
  value += __shfl_xor_sync(0xffffffffu, value, 1);
  return value + __shfl_xor_sync(0xffffffffu, value, 2);
}

// ---------------------------------------------------------------- shared-memory tiles

// A tile of rows x WIDTH 16-bit elements (WIDTH a multiple of 64: rows of 128 bytes or
// more) stored as 16-byte chunks, chunk c of row r at position c ^ (r % 8) of its row. The
// eight rows an ldmatrix phase reads (consecutive rows, one logical chunk) then sit in eight
// different 16-byte bank groups: no bank conflicts, for plain and .trans loads alike.
template <int WIDTH>
__device__ __forceinline__ int swizzled(int row, int chunk) {
  static_assert(WIDTH % 64 == 0, "swizzled tiles need rows of at least 8 chunks");
  return row * WIDTH + ((chunk ^ (row & 7)) << 3);
}

// Copies rows [0, ROWS) x columns [0, WIDTH) of a row-major global tile (unit column
// stride) into a swizzled shared tile; rows >= valid_rows and columns >= valid_cols become
// zeros. `vectorized`: every row start is 16-byte aligned, so 16-byte cp.async copies are
// used (asynchronous: the caller commits and waits); otherwise plain element loads.
// `safe` is any valid address, given to copies that read nothing.
template <typename T, int ROWS, int WIDTH, int THREADS>
__device__ __forceinline__ void load_tile(T* tile, const T* source, int64_t row_stride,
                                          int valid_rows, int valid_cols, bool vectorized,
                                          const void* safe) {
  constexpr int kChunks = WIDTH / 8;
  if (vectorized) {
#pragma unroll
    for (int step = 0; step < (ROWS * kChunks + THREADS - 1) / THREADS; ++step) {
      const int i = threadIdx.x + step * THREADS;
      if (ROWS * kChunks % THREADS != 0 && i >= ROWS * kChunks) break;
      const int row = i / kChunks, chunk = i % kChunks, col = chunk * 8;
      const bool inside = row < valid_rows && col < valid_cols;
      const int bytes = inside ? min(valid_cols - col, 8) * static_cast<int>(sizeof(T)) : 0;
      const void* from = inside ? static_cast<const void*>(source + row * row_stride + col) : safe;
      cp_async_16(shared_address(tile + swizzled<WIDTH>(row, chunk)), from, bytes);
    }
  } else {
    const T zero = from_float<T>(0.0f);
    for (int i = threadIdx.x; i < ROWS * WIDTH; i += THREADS) {
      const int row = i / WIDTH, col = i % WIDTH;
      const bool inside = row < valid_rows && col < valid_cols;
      tile[swizzled<WIDTH>(row, col / 8) + col % 8] = inside ? source[row * row_stride + col]
                                                             : zero;
    }
  }
}

// ------------------------------------------------------------------------- warp GEMMs

// acc[n] (16 x 8 tiles, n = 0..N_TILES-1) += A * B^T with A = rows a_row..a_row+15 of the
// swizzled tile `a` and B = rows b_row..b_row+8*N_TILES-1 of the swizzled tile `b` (both
// WIDTH wide), contracting over columns [0, k_limit) rounded up to 16 (the columns past the
// real dims are zeros in shared memory; whole 16-column steps past them are skipped).
// Serves Q K^T, dO V^T and their transposes K Q^T, V dO^T.
template <typename T, int WIDTH, int N_TILES>
__device__ __forceinline__ void warp_gemm_abt(float (&acc)[N_TILES][4], const T* a, int a_row,
                                              const T* b, int b_row, int k_limit) {
  static_assert(N_TILES % 2 == 0, "B rows come in pairs of 8-row tiles");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kc = 0; kc < WIDTH / 16; ++kc) {
    if (kc * 16 >= k_limit) break;  // uniform over the warp
    uint32_t a_frag[4];
    ldmatrix_x4(a_frag, shared_address(a + swizzled<WIDTH>(a_row + (lane & 15),
                                                            2 * kc + (lane >> 4))));
#pragma unroll
    for (int nn = 0; nn < N_TILES / 2; ++nn) {
      // matrices: (rows 0-7, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 0-7), (rows 8-15, k 8-15)
      uint32_t b_frag[4];
      ldmatrix_x4(b_frag,
                  shared_address(b + swizzled<WIDTH>(b_row + 16 * nn + ((lane >> 4) << 3) +
                                                         (lane & 7),
                                                     2 * kc + ((lane >> 3) & 1))));
      mma_16816<T>(acc[2 * nn], a_frag, b_frag[0], b_frag[1]);
      mma_16816<T>(acc[2 * nn + 1], a_frag, b_frag[2], b_frag[3]);
    }
  }
}

// acc[n] (16 x 8 tiles) += A * B with A in registers (K_CHUNKS fragments of 16 x 16, from
// accumulators via to_a_fragments) and B = rows b_row..b_row+16*K_CHUNKS-1 (the k index)
// by columns 8*col_chunk.. (the n index) of the swizzled tile `b`, read with ldmatrix.trans.
// Output columns at or past n_limit (relative to col_chunk) are skipped in steps of 16.
// Serves P V, dS K, P^T dO and dS^T Q.
template <typename T, int WIDTH, int K_CHUNKS, int N_TILES>
__device__ __forceinline__ void warp_gemm_ab(float (&acc)[N_TILES][4],
                                             const uint32_t (&a_frag)[K_CHUNKS][4], const T* b,
                                             int b_row, int col_chunk, int n_limit) {
  static_assert(N_TILES % 2 == 0, "output columns come in pairs of 8-column tiles");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int dn = 0; dn < N_TILES / 2; ++dn) {
    if (dn * 16 >= n_limit) break;  // uniform over the warp
#pragma unroll
    for (int kc = 0; kc < K_CHUNKS; ++kc) {
      // matrices: (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
      uint32_t b_frag[4];
      ldmatrix_x4_trans(b_frag,
                        shared_address(b + swizzled<WIDTH>(b_row + 16 * kc +
                                                               (((lane >> 3) & 1) << 3) +
                                                               (lane & 7),
                                                           col_chunk + 2 * dn + (lane >> 4))));
      mma_16816<T>(acc[2 * dn], a_frag[kc], b_frag[0], b_frag[1]);
      mma_16816<T>(acc[2 * dn + 1], a_frag[kc], b_frag[2], b_frag[3]);
    }
  }
}

// fp32 accumulator tiles (16 x 8 each) -> 16-bit A fragments (16 x 16 each), in registers.
template <typename T, int N_TILES>
__device__ __forceinline__ void to_a_fragments(uint32_t (&a_frag)[N_TILES / 2][4],
                                               const float (&acc)[N_TILES][4]) {
#pragma unroll
  for (int kc = 0; kc < N_TILES / 2; ++kc) {
    a_frag[kc][0] = pack_pair<T>(acc[2 * kc][0], acc[2 * kc][1]);
    a_frag[kc][1] = pack_pair<T>(acc[2 * kc][2], acc[2 * kc][3]);
    a_frag[kc][2] = pack_pair<T>(acc[2 * kc + 1][0], acc[2 * kc + 1][1]);
    a_frag[kc][3] = pack_pair<T>(acc[2 * kc + 1][2], acc[2 * kc + 1][3]);
  }
}

template <int N_TILES>
__device__ __forceinline__ void zero(float (&acc)[N_TILES][4]) {
#pragma unroll
  for (int n = 0; n < N_TILES; ++n) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
  }
}

// Stores two adjacent fp32 values (columns col, col + 1 of a row) as T, the second only
// when `both`; one 32-bit store when aligned.
template <typename T>
__device__ __forceinline__ void store_pair(T* destination, float first, float second,
                                           bool both) {
  if (both && (reinterpret_cast<uintptr_t>(destination) & 3) == 0) {
    *reinterpret_cast<uint32_t*>(destination) = pack_pair<T>(first, second);
  } else {
    destination[0] = from_float<T>(first);
    if (both) destination[1] = from_float<T>(second);
  }
}

// ------------------------------------------------------------------ attention rules

// Rows of one sequence: dense batches start at row 0 with the full lengths, packed ones at
// cu_seqlens[b] (row offsets in int64: packed rows x row stride may pass 2^31 elements).
struct SequenceSpan {
  int64_t q_start, k_start;
  int len_q, len_k;
};

__device__ __forceinline__ SequenceSpan sequence_span(const AttentionParams& params, int batch) {
  if (params.cu_seqlens_q == nullptr) return {0, 0, params.len_q, params.len_k};
  const int q_start = params.cu_seqlens_q[batch], k_start = params.cu_seqlens_k[batch];
  return {q_start, k_start, params.cu_seqlens_q[batch + 1] - q_start,
          params.cu_seqlens_k[batch + 1] - k_start};
}

// The keys and values a query-tile program walks: kv_head of sequence `batch` from its first
// key row, copied a BLOCK_N-key tile at a time into a double-buffered ring of swizzled
// (BLOCK_N x D) shared-memory tiles.
template <typename T, int BLOCK_N, int D, int THREADS>
struct KeyValueTiles {
  const T* k;  // &k[batch, kv_head, first key of the sequence, 0]
  const T* v;  // &v[batch, kv_head, first key of the sequence, 0]

  __device__ __forceinline__ KeyValueTiles(const AttentionParams& params, int64_t batch,
                                           int kv_head, int64_t k_start)
      : k(static_cast<const T*>(params.k) + batch * params.k_strides[0] +
          kv_head * params.k_strides[1] + k_start * params.k_strides[2]),
        v(static_cast<const T*>(params.v) + batch * params.v_strides[0] +
          kv_head * params.v_strides[1] + k_start * params.v_strides[2]) {}

  // Starts the copies of key tile `tile` into ring slot `stage` as one cp.async commit
  // group; keys past len_k and dims past E/Ev are zero-filled.
  __device__ __forceinline__ void load(T* k_tiles, T* v_tiles, const AttentionParams& params,
                                       int tile, int stage, int len_k, bool vectorized) const {
    const int key0 = tile * BLOCK_N, rows = min(BLOCK_N, len_k - key0);
    load_tile<T, BLOCK_N, D, THREADS>(k_tiles + stage * BLOCK_N * D,
                                      k + key0 * params.k_strides[2], params.k_strides[2],
                                      rows, params.head_dim, vectorized, params.k);
    load_tile<T, BLOCK_N, D, THREADS>(v_tiles + stage * BLOCK_N * D,
                                      v + key0 * params.v_strides[2], params.v_strides[2],
                                      rows, params.value_dim, vectorized, params.v);
    cp_async_commit();
  }
};

// The CTA's tile, head and batch in a 1-D grid of tiles x heads x batch (tiles fastest, so
// CTAs sharing one head's keys and values run together; no 65535 limit on any axis).
struct TileCoordinates {
  int tile, head, batch;
};

__device__ __forceinline__ TileCoordinates tile_coordinates(int num_tiles, int num_heads) {
  const int pid = blockIdx.x;
  const int rest = pid / num_tiles;
  return {pid % num_tiles, rest % num_heads, rest / num_heads};
}

// Key range [first, end) that query rows [row0, row0 + rows) may attend to: all keys of the
// sequence, cut to the allowed range of a key-padding mask and left of the causal diagonal;
// empty when no row lies inside the sequence.
struct KeyRange {
  int first, end;
};

__device__ __forceinline__ KeyRange key_range_of(const AttentionParams& params,
                                                 const SequenceSpan& span, int batch, int row0,
                                                 int rows) {
  int first = 0, end = span.len_k;
  if (params.key_range != nullptr) {
    first = params.key_range[2 * batch];
    end = min(end, params.key_range[2 * batch + 1]);
  }
  if (params.is_causal) end = min(end, row0 + rows);
  if (row0 >= span.len_q) end = 0;
  return {first, max(end, first)};
}

// The masked base-2 score of one (query, key) element of one (batch, head).
struct ScoreRule {
  const void* mask;  // &mask[b, h, 0, 0] (uint8 for bool masks), or null
  int64_t mask_stride_q, mask_stride_k;
  MaskKind mask_kind;
  DType mask_dtype;  // of a float mask
  int len_q, len_k;  // the sequence's lengths
  float qk_scale;    // scale * log2(e)
  bool causal;

  // Base-2 additive bias of the mask at (i, j): 0 / -inf for a bool mask; a float mask
  // upcast to fp32 and times log2(e), kept finite when finite (finfo.min * log2(e) would
  // overflow), as torch does. Outside the sequence: -inf for bool masks, 0 for float ones.
  __device__ __forceinline__ float mask_bias(int i, int j) const {
    const bool inside = i < len_q && j < len_k;
    const int64_t offset = i * mask_stride_q + j * mask_stride_k;
    if (mask_kind == MaskKind::kBool) {
      return inside && static_cast<const uint8_t*>(mask)[offset] != 0 ? 0.0f : -INFINITY;
    }
    if (!inside) return 0.0f;
    float value;  // upcast to fp32
    switch (mask_dtype) {
      case DType::kFloat16: value = __half2float(static_cast<const __half*>(mask)[offset]); break;
      case DType::kBFloat16:
        value = __bfloat162float(static_cast<const __nv_bfloat16*>(mask)[offset]);
        break;
      default: value = static_cast<const float*>(mask)[offset]; break;
    }
    return value == -INFINITY ? value : fmaxf(value * kLog2e, -kMaxFloat);
  }

  // qk: the fp32 q.k product of query i and key j (positions within the sequence).
  // `check`: apply the causal rule (j <= i) and the key bound (j < len_k); callers skip
  // them on tiles where they can't fail.
  __device__ __forceinline__ float operator()(float qk, int i, int j, bool check) const {
    float score = qk * qk_scale;
    if (mask_kind != MaskKind::kNone) score += mask_bias(i, j);
    if (check && ((causal && j > i) || j >= len_k)) score = -INFINITY;
    return score;
  }
};

__device__ __forceinline__ ScoreRule score_rule(const AttentionParams& params,
                                                const SequenceSpan& span, int batch, int head) {
  ScoreRule rule;
  rule.mask_kind = params.mask_kind;
  rule.mask_dtype = params.mask_dtype;
  rule.mask = nullptr;
  if (params.mask_kind != MaskKind::kNone) {
    const int element = params.mask_kind == MaskKind::kBool ? 1
                        : params.mask_dtype == DType::kFloat32 ? 4 : 2;
    rule.mask = static_cast<const char*>(params.mask) +
                (batch * params.mask_strides[0] + head * params.mask_strides[1]) * element;
  }
  rule.mask_stride_q = params.mask_strides[2];
  rule.mask_stride_k = params.mask_strides[3];
  rule.len_q = span.len_q;
  rule.len_k = span.len_k;
  rule.qk_scale = params.scale * kLog2e;
  rule.causal = params.is_causal;
  return rule;
}

// Dropout of the (batch, head) probabilities: element (i, j) has the Philox counter
// ((b * H + h) * len_q + i) * len_k + j of the dense (B, H, len_q, len_k) layout (len_q,
// len_k the padded lengths for packed batches), as fasttx.random and the Triton kernels.
struct Dropout {
  uint64_t seed;
  int64_t counter_base;  // (b * H + h) * len_q
  int64_t len_k;
  float p;

  __device__ __forceinline__ bool keep(int i, int j) const {
    return dropout_keep(seed, static_cast<uint64_t>((counter_base + i) * len_k + j), p);
  }
};

__device__ __forceinline__ Dropout dropout_of(const AttentionParams& params, int batch, int head) {
  Dropout dropout;
  dropout.seed = params.seed != nullptr ? static_cast<uint64_t>(*params.seed) : 0;
  dropout.counter_base = (static_cast<int64_t>(batch) * params.heads + head) * params.len_q;
  dropout.len_k = params.len_k;
  dropout.p = params.dropout_p;
  return dropout;
}

// Whether q, k, v (and dO) allow 16-byte cp.async copies of their rows: 16-byte aligned
// bases and batch, head and row strides that are multiples of 8 elements.
inline bool rows_16_byte_aligned(const void* base, const int64_t (&strides)[4]) {
  return reinterpret_cast<uintptr_t>(base) % 16 == 0 && strides[0] % 8 == 0 &&
         strides[1] % 8 == 0 && strides[2] % 8 == 0;
}

// The head-dim bucket (columns of the shared tiles) serving head dims E and Ev.
inline int head_dim_bucket(int head_dim, int value_dim) {
  const int widest = head_dim > value_dim ? head_dim : value_dim;
  return widest <= 64 ? 64 : widest <= 128 ? 128 : 256;
}

}  // namespace fasttx::attention::sm80
