// Attention backward for sm_80+ (Ampere, Ada, Hopper): FlashAttention-2 structure on
// mma.sync, recomputing the probabilities from the forward's base-2 log-sum-exp.
//
// With P = exp2(S * scale * log2(e) + mask * log2(e) - lse) (rebuilt tile by tile), K the
// dropout keep mask times 1 / (1 - p) and delta = rowsum(dO * O):
//
//     dV = (P * K)^T dO        dP = (dO V^T) * K        dS = P * (dP - delta)
//     dQ = dS K * scale        dK = dS^T Q * scale      d(mask) = dS
//
// Three kernels, no atomics, so results are bit-identical run to run:
//   1. attention_backward_delta_kernel: delta per query row (fp32 row dot products).
//   2. attention_backward_dkdv_kernel: one CTA per key tile of one key/value head. Its key
//      and value tiles stay in shared memory while it loops over the query tiles of every
//      query head sharing that key/value head (grouped-query attention needs no reduction
//      afterwards), query and dO tiles double-buffered with cp.async. Each warp owns 16 keys:
//      it computes S^T = K Q^T and dP^T = V dO^T for them (keys as the mma's M dimension),
//      so P^T and dS^T sit in registers in the A-operand layout of dV += P^T dO and
//      dK += dS^T Q. For the 256 bucket two warps share 16 keys, each accumulating half the
//      columns of dK and dV (both recompute S^T and dP^T), to keep the fp32 accumulators
//      at 128 registers per thread.
//   3. attention_backward_dq_kernel: one CTA per query tile, the forward's structure (Q and dO
//      resident, key and value tiles double-buffered): dQ += dS K, and d(mask) = dS written
//      when a float mask needs its gradient.
// Templates and runtime flags as in attention_forward.cu; every tile fits 99 KB of shared
// memory.
#include <climits>

#include "attention/attention.h"
#include "attention/flash_sm80.cuh"

namespace fasttx::attention {
namespace {

using namespace sm80;

constexpr int kDeltaRows = 64;  // query rows per CTA of the delta kernel (8 warps)

// delta[b, h, i] = sum over d of dO[b, h, i, d] * O[b, h, i, d]: one warp per row, upcast
// to fp32 and reduced over the warp with shuffles.
template <typename T>
__global__ void __launch_bounds__(256)
    attention_backward_delta_kernel(const __grid_constant__ AttentionBackwardParams params) {
  const int num_tiles = (params.len_q + kDeltaRows - 1) / kDeltaRows;
  const TileCoordinates at = tile_coordinates(num_tiles, params.heads);
  const SequenceSpan span = sequence_span(params, at.batch);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const T* out = static_cast<const T*>(params.out) + at.batch * params.out_strides[0] +
                 at.head * params.out_strides[1] + span.q_start * params.out_strides[2];
  const T* grad_out = static_cast<const T*>(params.grad_out) +
                      at.batch * params.grad_out_strides[0] +
                      at.head * params.grad_out_strides[1] +
                      span.q_start * params.grad_out_strides[2];
  float* delta = params.delta + at.batch * params.lse_strides[0] +
                 at.head * params.lse_strides[1] + span.q_start;
  for (int r = warp; r < kDeltaRows; r += 8) {
    const int row = at.tile * kDeltaRows + r;
    if (row >= span.len_q) break;  // uniform over the warp
    const T* out_row = out + row * params.out_strides[2];
    const T* grad_row = grad_out + row * params.grad_out_strides[2];
    float sum = 0.0f;
    for (int col = lane; col < params.value_dim; col += 32) {
      sum += to_float(out_row[col]) * to_float(grad_row[col]);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    }
    if (lane == 0) delta[row] = sum;
  }
}

// The base-2 lse of a row as the backward reads it: +inf for rows with no allowed key
// (forward lse -inf) and for rows past the sequence's end, so that their P is 0.
__device__ __forceinline__ float backward_lse(float lse) {
  return lse == -INFINITY ? INFINITY : lse;
}

template <typename T, int D, int KEY_WARPS, int DIM_SPLIT, int BLOCK_M>
__global__ void __launch_bounds__(KEY_WARPS * DIM_SPLIT * 32, 1)
    attention_backward_dkdv_kernel(const __grid_constant__ AttentionBackwardParams params,
                                   bool vectorized) {
  constexpr int BLOCK_N = 16 * KEY_WARPS, THREADS = 32 * KEY_WARPS * DIM_SPLIT;
  constexpr int M_TILES = BLOCK_M / 8;       // 8-query column tiles of a warp's S^T
  constexpr int OUT_D = D / DIM_SPLIT;       // dK / dV columns accumulated per warp
  constexpr int OUT_TILES = OUT_D / 8;
  extern __shared__ __align__(128) unsigned char shared[];
  T* k_tile = reinterpret_cast<T*>(shared);   // [BLOCK_N][D] swizzled, resident
  T* v_tile = k_tile + BLOCK_N * D;           // [BLOCK_N][D], resident
  T* q_tiles = v_tile + BLOCK_N * D;          // [2][BLOCK_M][D], streamed
  T* do_tiles = q_tiles + 2 * BLOCK_M * D;    // [2][BLOCK_M][D], streamed
  float* lse_rows = reinterpret_cast<float*>(do_tiles + 2 * BLOCK_M * D);  // [2][BLOCK_M]
  float* delta_rows = lse_rows + 2 * BLOCK_M;                             // [2][BLOCK_M]

  const int num_n_tiles = (params.len_k + BLOCK_N - 1) / BLOCK_N;
  const TileCoordinates at = tile_coordinates(num_n_tiles, params.kv_heads);
  const int kv_head = at.head, batch = at.batch;
  const SequenceSpan span = sequence_span(params, batch);
  const int key0 = at.tile * BLOCK_N;
  if (key0 >= span.len_k) return;  // past a packed sequence's end: no rows to write
  const int group = params.heads / params.kv_heads;

  load_tile<T, BLOCK_N, D, THREADS>(
      k_tile,
      static_cast<const T*>(params.k) + batch * params.k_strides[0] +
          kv_head * params.k_strides[1] + (span.k_start + key0) * params.k_strides[2],
      params.k_strides[2], min(BLOCK_N, span.len_k - key0), params.head_dim, vectorized,
      params.k);
  load_tile<T, BLOCK_N, D, THREADS>(
      v_tile,
      static_cast<const T*>(params.v) + batch * params.v_strides[0] +
          kv_head * params.v_strides[1] + (span.k_start + key0) * params.v_strides[2],
      params.v_strides[2], min(BLOCK_N, span.len_k - key0), params.value_dim, vectorized,
      params.v);
  cp_async_commit();

  // Query tiles that see this key tile: all, minus those wholly above the causal diagonal;
  // none when the tile lies outside a key-padding mask's allowed range.
  bool live = true;
  if (params.key_range != nullptr) {
    live = key0 + BLOCK_N > params.key_range[2 * batch] &&
           key0 < params.key_range[2 * batch + 1];
  }
  const int first_m = params.is_causal ? key0 / BLOCK_M : 0;
  const int end_m = live ? (span.len_q + BLOCK_M - 1) / BLOCK_M : 0;
  const int num_m = max(end_m - first_m, 0);
  const int iterations = group * num_m;  // (query head of the group, query tile) pairs

  auto load_queries = [&](int iteration, int stage) {
    const int head = kv_head * group + iteration / num_m;
    const int row0 = (first_m + iteration % num_m) * BLOCK_M;
    const int rows = min(BLOCK_M, span.len_q - row0);
    load_tile<T, BLOCK_M, D, THREADS>(
        q_tiles + stage * BLOCK_M * D,
        static_cast<const T*>(params.q) + batch * params.q_strides[0] +
            head * params.q_strides[1] + (span.q_start + row0) * params.q_strides[2],
        params.q_strides[2], rows, params.head_dim, vectorized, params.q);
    load_tile<T, BLOCK_M, D, THREADS>(
        do_tiles + stage * BLOCK_M * D,
        static_cast<const T*>(params.grad_out) + batch * params.grad_out_strides[0] +
            head * params.grad_out_strides[1] +
            (span.q_start + row0) * params.grad_out_strides[2],
        params.grad_out_strides[2], rows, params.value_dim, vectorized, params.grad_out);
    cp_async_commit();
    // row statistics by plain loads and stores (visible after the next __syncthreads)
    const int64_t stats = batch * params.lse_strides[0] + head * params.lse_strides[1] +
                          span.q_start + row0;
    for (int r = threadIdx.x; r < BLOCK_M; r += THREADS) {
      const bool inside = r < rows;
      lse_rows[stage * BLOCK_M + r] = inside ? backward_lse(params.lse[stats + r]) : INFINITY;
      delta_rows[stage * BLOCK_M + r] = inside ? params.delta[stats + r] : 0.0f;
    }
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int key_warp = warp % KEY_WARPS, split = warp / KEY_WARPS;
  const int warp_key0 = key0 + 16 * key_warp;  // this thread's keys: warp_key0 + g, + g + 8
  const bool has_dropout = params.dropout_p > 0.0f;
  const float keep_scale = has_dropout ? 1.0f / (1.0f - params.dropout_p) : 1.0f;
  Dropout dropout = dropout_of(params, batch, 0);

  float grad_k[OUT_TILES][4], grad_v[OUT_TILES][4];  // fp32 accumulators, keys g / g + 8
  zero(grad_k);
  zero(grad_v);

  if (iterations > 0) load_queries(0, 0);
  for (int iteration = 0; iteration < iterations; ++iteration) {
    const int stage = iteration & 1;
    if (iteration + 1 < iterations) {
      load_queries(iteration + 1, stage ^ 1);
      cp_async_wait<1>();  // K, V and this query tile have landed
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int head = kv_head * group + iteration / num_m;
    const int row0 = (first_m + iteration % num_m) * BLOCK_M;
    // warp-uniform: keys past the end, or every key right of the diagonal for all rows
    const bool active =
        warp_key0 < span.len_k && !(params.is_causal && warp_key0 > row0 + BLOCK_M - 1);
    if (active) {
      const T* q_tile = q_tiles + stage * BLOCK_M * D;
      const T* do_tile = do_tiles + stage * BLOCK_M * D;
      const float* lse = lse_rows + stage * BLOCK_M;
      const float* delta = delta_rows + stage * BLOCK_M;
      const ScoreRule rule = score_rule(params, span, batch, head);
      dropout.counter_base = (static_cast<int64_t>(batch) * params.heads + head) * params.len_q;

      float s_t[M_TILES][4], dp_t[M_TILES][4];  // S^T and dP^T: rows keys, columns queries
      zero(s_t);
      zero(dp_t);
      warp_gemm_abt<T, D, M_TILES>(s_t, k_tile, 16 * key_warp, q_tile, 0, params.head_dim);
      warp_gemm_abt<T, D, M_TILES>(dp_t, v_tile, 16 * key_warp, do_tile, 0, params.value_dim);

      const bool check = warp_key0 + 16 > span.len_k ||
                         (params.is_causal && warp_key0 + 15 > row0);
#pragma unroll
      for (int n = 0; n < M_TILES; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * n + 2 * t + (e & 1);  // query within the tile
          const int query = row0 + col, key = warp_key0 + g + 8 * (e >> 1);
          const float p = exp2f(rule(s_t[n][e], query, key, check) - lse[col]);
          float p_dropped = p, dp = dp_t[n][e];
          if (has_dropout) {
            const bool keep = dropout.keep(query, key);
            p_dropped = keep ? p * keep_scale : 0.0f;
            dp = keep ? dp * keep_scale : 0.0f;
          }
          s_t[n][e] = p_dropped;                // becomes the A operand of dV += P^T dO
          dp_t[n][e] = p * (dp - delta[col]);   // dS^T, the A operand of dK += dS^T Q
        }
      }
      uint32_t a_frag[M_TILES / 2][4];
      to_a_fragments<T, M_TILES>(a_frag, s_t);
      warp_gemm_ab<T, D, M_TILES / 2, OUT_TILES>(grad_v, a_frag, do_tile, 0,
                                                 split * OUT_D / 8,
                                                 params.value_dim - split * OUT_D);
      to_a_fragments<T, M_TILES>(a_frag, dp_t);
      warp_gemm_ab<T, D, M_TILES / 2, OUT_TILES>(grad_k, a_frag, q_tile, 0, split * OUT_D / 8,
                                                 params.head_dim - split * OUT_D);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  cp_async_wait<0>();  // nothing left in flight (K and V, when no query tile ran)

  // dK = scale * sum dS^T Q, dV = sum (P K)^T dO: zeros for a key tile nobody attends to
  T* grad_k_out = static_cast<T*>(params.grad_k) + batch * params.grad_k_strides[0] +
                  kv_head * params.grad_k_strides[1] + span.k_start * params.grad_k_strides[2];
  T* grad_v_out = static_cast<T*>(params.grad_v) + batch * params.grad_v_strides[0] +
                  kv_head * params.grad_v_strides[1] + span.k_start * params.grad_v_strides[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = warp_key0 + g + 8 * r;
    if (key >= span.len_k) continue;
    T* k_row = grad_k_out + key * params.grad_k_strides[2];
    T* v_row = grad_v_out + key * params.grad_v_strides[2];
#pragma unroll
    for (int dn = 0; dn < OUT_TILES; ++dn) {
      const int col = split * OUT_D + 8 * dn + 2 * t;
      if (col < params.head_dim) {
        store_pair(k_row + col, grad_k[dn][2 * r] * params.scale,
                   grad_k[dn][2 * r + 1] * params.scale, col + 1 < params.head_dim);
      }
      if (col < params.value_dim) {
        store_pair(v_row + col, grad_v[dn][2 * r], grad_v[dn][2 * r + 1],
                   col + 1 < params.value_dim);
      }
    }
  }
}

// One element of d(mask), in the mask's dtype.
__device__ __forceinline__ void store_mask_gradient(void* base, DType dtype, int64_t offset,
                                                    float value) {
  switch (dtype) {
    case DType::kFloat16: static_cast<__half*>(base)[offset] = __float2half_rn(value); break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(base)[offset] = __float2bfloat16_rn(value);
      break;
    default: static_cast<float*>(base)[offset] = value; break;
  }
}

template <typename T, int D, int WARPS, int BLOCK_N>
__global__ void __launch_bounds__(WARPS * 32, 1)
    attention_backward_dq_kernel(const __grid_constant__ AttentionBackwardParams params,
                                 bool vectorized) {
  constexpr int BLOCK_M = 16 * WARPS, THREADS = 32 * WARPS;
  constexpr int N_TILES = BLOCK_N / 8;  // 8-key column tiles of a warp's scores
  constexpr int D_TILES = D / 8;        // 8-column tiles of a warp's dQ
  extern __shared__ __align__(128) unsigned char shared[];
  T* q_tile = reinterpret_cast<T*>(shared);  // [BLOCK_M][D] swizzled, resident
  T* do_tile = q_tile + BLOCK_M * D;         // [BLOCK_M][D], resident
  T* k_tiles = do_tile + BLOCK_M * D;        // [2][BLOCK_N][D], streamed
  T* v_tiles = k_tiles + 2 * BLOCK_N * D;    // [2][BLOCK_N][D], streamed

  const int num_m_tiles = (params.len_q + BLOCK_M - 1) / BLOCK_M;
  const TileCoordinates at = tile_coordinates(num_m_tiles, params.heads);
  const int m_tile = params.is_causal ? num_m_tiles - 1 - at.tile : at.tile;
  const SequenceSpan span = sequence_span(params, at.batch);
  const int row0 = m_tile * BLOCK_M;
  if (row0 >= span.len_q) return;
  const int kv_head = at.head / (params.heads / params.kv_heads);
  const int rows = min(BLOCK_M, span.len_q - row0);

  load_tile<T, BLOCK_M, D, THREADS>(
      q_tile,
      static_cast<const T*>(params.q) + at.batch * params.q_strides[0] +
          at.head * params.q_strides[1] + (span.q_start + row0) * params.q_strides[2],
      params.q_strides[2], rows, params.head_dim, vectorized, params.q);
  load_tile<T, BLOCK_M, D, THREADS>(
      do_tile,
      static_cast<const T*>(params.grad_out) + at.batch * params.grad_out_strides[0] +
          at.head * params.grad_out_strides[1] +
          (span.q_start + row0) * params.grad_out_strides[2],
      params.grad_out_strides[2], rows, params.value_dim, vectorized, params.grad_out);
  cp_async_commit();

  const KeyValueTiles<T, BLOCK_N, D, THREADS> key_values(params, at.batch, kv_head, span.k_start);
  auto load_keys = [&](int tile, int stage) {
    key_values.load(k_tiles, v_tiles, params, tile, stage, span.len_k, vectorized);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int warp_row0 = row0 + 16 * warp;  // this thread's rows: warp_row0 + g, + g + 8
  const ScoreRule rule = score_rule(params, span, at.batch, at.head);
  const bool has_dropout = params.dropout_p > 0.0f;
  const float keep_scale = has_dropout ? 1.0f / (1.0f - params.dropout_p) : 1.0f;
  const Dropout dropout = dropout_of(params, at.batch, at.head);
  const int64_t stats = at.batch * params.lse_strides[0] + at.head * params.lse_strides[1] +
                        span.q_start;
  float row_lse[2], row_delta[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp_row0 + g + 8 * r;
    const bool inside = row < span.len_q;
    row_lse[r] = inside ? backward_lse(params.lse[stats + row]) : INFINITY;
    row_delta[r] = inside ? params.delta[stats + row] : 0.0f;
  }
  void* grad_mask = nullptr;  // &d(mask)[b, h, 0, 0] when a float mask needs its gradient
  if (params.grad_mask != nullptr) {
    const int element = params.mask_dtype == DType::kFloat32 ? 4 : 2;
    grad_mask = static_cast<char*>(params.grad_mask) +
                (at.batch * params.grad_mask_strides[0] +
                 at.head * params.grad_mask_strides[1]) * element;
  }

  float grad_q[D_TILES][4];  // fp32 accumulator, rows g / g + 8
  zero(grad_q);

  const KeyRange keys = key_range_of(params, span, at.batch, row0, BLOCK_M);
  const int first_tile = keys.first / BLOCK_N;
  const int end_tile = keys.end > keys.first ? (keys.end + BLOCK_N - 1) / BLOCK_N : first_tile;
  if (first_tile < end_tile) load_keys(first_tile, 0);
  for (int tile = first_tile; tile < end_tile; ++tile) {
    const int stage = (tile - first_tile) & 1;
    if (tile + 1 < end_tile) {
      load_keys(tile + 1, stage ^ 1);
      cp_async_wait<1>();  // Q, dO and this key tile have landed
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int key0 = tile * BLOCK_N;
    const bool active =
        warp_row0 < span.len_q && !(params.is_causal && key0 > warp_row0 + 15);
    if (active) {
      const T* k_tile = k_tiles + stage * BLOCK_N * D;
      const T* v_tile = v_tiles + stage * BLOCK_N * D;
      float s[N_TILES][4], dp[N_TILES][4];
      zero(s);
      zero(dp);
      warp_gemm_abt<T, D, N_TILES>(s, q_tile, 16 * warp, k_tile, 0, params.head_dim);
      warp_gemm_abt<T, D, N_TILES>(dp, do_tile, 16 * warp, v_tile, 0, params.value_dim);

      // edge tiles check bounds too: past-the-end keys (k = 0) could overflow exp2
      const bool check = key0 + BLOCK_N > span.len_k ||
                         (params.is_causal && key0 + BLOCK_N - 1 > warp_row0);
#pragma unroll
      for (int n = 0; n < N_TILES; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int row = warp_row0 + g + 8 * (e >> 1), key = key0 + 8 * n + 2 * t + (e & 1);
          const float p = exp2f(rule(s[n][e], row, key, check) - row_lse[e >> 1]);
          float grad_p = dp[n][e];
          if (has_dropout) grad_p = dropout.keep(row, key) ? grad_p * keep_scale : 0.0f;
          const float grad_s = p * (grad_p - row_delta[e >> 1]);
          if (grad_mask != nullptr && row < span.len_q && key < span.len_k) {
            store_mask_gradient(grad_mask, params.mask_dtype,
                                row * params.grad_mask_strides[2] +
                                    key * params.grad_mask_strides[3],
                                grad_s);
          }
          s[n][e] = grad_s;
        }
      }
      uint32_t ds_frag[N_TILES / 2][4];  // dS as the 16-bit A operand of dS K
      to_a_fragments<T, N_TILES>(ds_frag, s);
      warp_gemm_ab<T, D, N_TILES / 2, D_TILES>(grad_q, ds_frag, k_tile, 0, 0, params.head_dim);
    }
    __syncthreads();
  }
  cp_async_wait<0>();

  T* grad_q_out = static_cast<T*>(params.grad_q) + at.batch * params.grad_q_strides[0] +
                  at.head * params.grad_q_strides[1] + span.q_start * params.grad_q_strides[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = warp_row0 + g + 8 * r;
    if (row >= span.len_q) continue;
    T* q_row = grad_q_out + row * params.grad_q_strides[2];
#pragma unroll
    for (int dn = 0; dn < D_TILES; ++dn) {
      const int col = 8 * dn + 2 * t;
      if (col < params.head_dim) {
        store_pair(q_row + col, grad_q[dn][2 * r] * params.scale,
                   grad_q[dn][2 * r + 1] * params.scale, col + 1 < params.head_dim);
      }
    }
  }
}

template <typename T>
cudaError_t launch_delta(const AttentionBackwardParams& params, cudaStream_t stream) {
  const long long grid = static_cast<long long>((params.len_q + kDeltaRows - 1) / kDeltaRows) *
                         params.heads * params.batch;
  if (grid == 0) return cudaSuccess;
  if (grid > INT_MAX) return cudaErrorInvalidConfiguration;
  attention_backward_delta_kernel<T><<<static_cast<unsigned>(grid), 256, 0, stream>>>(params);
  return cudaGetLastError();
}

template <typename T, int D, int KEY_WARPS, int DIM_SPLIT, int BLOCK_M>
cudaError_t launch_dkdv(const AttentionBackwardParams& params, bool vectorized,
                        cudaStream_t stream) {
  constexpr int BLOCK_N = 16 * KEY_WARPS;
  constexpr int kSharedBytes =
      (2 * BLOCK_N + 4 * BLOCK_M) * D * sizeof(T) + 4 * BLOCK_M * sizeof(float);
  static_assert(kSharedBytes <= 101376, "tiles must fit 99 KB of shared memory");
  const long long grid = static_cast<long long>((params.len_k + BLOCK_N - 1) / BLOCK_N) *
                         params.kv_heads * params.batch;
  if (grid == 0) return cudaSuccess;
  if (grid > INT_MAX) return cudaErrorInvalidConfiguration;
  auto kernel = attention_backward_dkdv_kernel<T, D, KEY_WARPS, DIM_SPLIT, BLOCK_M>;
  cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
  if (error != cudaSuccess) return error;
  kernel<<<static_cast<unsigned>(grid), 32 * KEY_WARPS * DIM_SPLIT, kSharedBytes, stream>>>(
      params, vectorized);
  return cudaGetLastError();
}

template <typename T, int D, int WARPS, int BLOCK_N>
cudaError_t launch_dq(const AttentionBackwardParams& params, bool vectorized,
                      cudaStream_t stream) {
  constexpr int BLOCK_M = 16 * WARPS;
  constexpr int kSharedBytes = (2 * BLOCK_M + 4 * BLOCK_N) * D * sizeof(T);
  static_assert(kSharedBytes <= 101376, "tiles must fit 99 KB of shared memory");
  const long long grid = static_cast<long long>((params.len_q + BLOCK_M - 1) / BLOCK_M) *
                         params.heads * params.batch;
  if (grid == 0) return cudaSuccess;
  if (grid > INT_MAX) return cudaErrorInvalidConfiguration;
  auto kernel = attention_backward_dq_kernel<T, D, WARPS, BLOCK_N>;
  cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
  if (error != cudaSuccess) return error;
  kernel<<<static_cast<unsigned>(grid), 32 * WARPS, kSharedBytes, stream>>>(params, vectorized);
  return cudaGetLastError();
}

// Tiles per head-dim bucket (99 KB of shared memory at most):
//   dK/dV: 64:  128 keys (8 warps) x 64 queries;  128: 128 keys (8 warps) x 32 queries;
//          256: 64 keys (8 warps, two per 16 keys, each half the columns) x 16 queries
//   dQ:    64:  128 queries (8 warps) x 64 keys;  128: 64 queries (4 warps) x 64 keys;
//          256: 64 queries (4 warps) x 16 keys
template <typename T>
cudaError_t backward_for_dtype(const AttentionBackwardParams& params, cudaStream_t stream) {
  const bool vectorized = rows_16_byte_aligned(params.q, params.q_strides) &&
                          rows_16_byte_aligned(params.k, params.k_strides) &&
                          rows_16_byte_aligned(params.v, params.v_strides) &&
                          rows_16_byte_aligned(params.grad_out, params.grad_out_strides);
  cudaError_t error = launch_delta<T>(params, stream);
  if (error != cudaSuccess) return error;
  switch (head_dim_bucket(params.head_dim, params.value_dim)) {
    case 64:
      error = launch_dkdv<T, 64, 8, 1, 64>(params, vectorized, stream);
      if (error != cudaSuccess) return error;
      return launch_dq<T, 64, 8, 64>(params, vectorized, stream);
    case 128:
      error = launch_dkdv<T, 128, 8, 1, 32>(params, vectorized, stream);
      if (error != cudaSuccess) return error;
      return launch_dq<T, 128, 4, 64>(params, vectorized, stream);
    default:
      error = launch_dkdv<T, 256, 4, 2, 16>(params, vectorized, stream);
      if (error != cudaSuccess) return error;
      return launch_dq<T, 256, 4, 16>(params, vectorized, stream);
  }
}

}  // namespace

cudaError_t attention_backward(const AttentionBackwardParams& params, cudaStream_t stream) {
  if (params.head_dim < 1 || params.head_dim > 256 || params.value_dim < 1 ||
      params.value_dim > 256 || params.kv_heads < 1 || params.heads % params.kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  switch (params.dtype) {
    case DType::kFloat16: return backward_for_dtype<__half>(params, stream);
    case DType::kBFloat16: return backward_for_dtype<__nv_bfloat16>(params, stream);
    default: return cudaErrorInvalidValue;  // fp32 is served by the Triton backend
  }
}

}  // namespace fasttx::attention
