// Attention forward for sm_80+ (Ampere, Ada, Hopper): FlashAttention-2 tiling on mma.sync.
//
// One CTA computes BLOCK_M = 16 * WARPS query rows of one (sequence, head); each warp owns
// 16 rows. The query tile is copied once to shared memory (cp.async); key and value tiles
// of BLOCK_N rows stream through two shared buffers (the copy of tile n + 1 overlaps the
// math of tile n). Per key tile a warp computes S = Q K^T with mma.sync m16n8k16 (fp32
// accumulators), turns it into masked base-2 scores, updates the online softmax (running
// max m and sum l per row, fp32, exp2) and accumulates O += P V with P converted to 16 bits
// in registers (the accumulator layout is the A operand's, see flash_sm80.cuh). Dropout
// zeroes probabilities in the accumulator only, so l stays the undropped sum. The result is
// out = O / l (times 1 / (1 - p) under dropout) and lse = m + log2(l), the base-2
// log-sum-exp of the base-2 scores that the backward reads; a row that may attend to no key
// gets zeros and lse = -inf, as in the Triton kernels.
//
// Templates: element type and a head-dim bucket (64, 128, 256: both E and Ev padded to it
// in shared memory, loads masked, whole 16-column steps past the real dims skipped); the
// mask kind, causal, dropout and varlen are runtime flags (warp-uniform branches), which
// keeps the file at six instantiations. Tiles are sized to fit 99 KB of shared memory, the
// limit of sm_86/sm_89-class parts, so the same kernels run everywhere.
//
// attention_forward hands Hopper inputs to the sm_90 kernel first (attention_sm90.h).
#include <climits>

#include "attention/attention.h"
#include "attention/attention_sm90.h"
#include "attention/flash_sm80.cuh"

namespace fasttx::attention {
namespace {

using namespace sm80;

template <typename T, int D, int WARPS, int BLOCK_N>
__global__ void __launch_bounds__(WARPS * 32, 1)
    attention_forward_kernel(const __grid_constant__ AttentionParams params, bool vectorized) {
  constexpr int BLOCK_M = 16 * WARPS, THREADS = 32 * WARPS;
  constexpr int N_TILES = BLOCK_N / 8;  // 8-key column tiles of a warp's scores
  constexpr int DV_TILES = D / 8;       // 8-column tiles of a warp's output
  extern __shared__ __align__(128) unsigned char shared[];
  T* q_tile = reinterpret_cast<T*>(shared);  // [BLOCK_M][D] swizzled
  T* k_tiles = q_tile + BLOCK_M * D;         // [2][BLOCK_N][D]
  T* v_tiles = k_tiles + 2 * BLOCK_N * D;    // [2][BLOCK_N][D]

  const int num_m_tiles = (params.len_q + BLOCK_M - 1) / BLOCK_M;
  const TileCoordinates at = tile_coordinates(num_m_tiles, params.heads);
  // causal: the longest rows (most key tiles) start first, for a better tail
  const int m_tile = params.is_causal ? num_m_tiles - 1 - at.tile : at.tile;
  const SequenceSpan span = sequence_span(params, at.batch);
  const int row0 = m_tile * BLOCK_M;
  if (row0 >= span.len_q) return;  // a packed sequence shorter than this tile: nothing to do
  const int kv_head = at.head / (params.heads / params.kv_heads);

  const T* q = static_cast<const T*>(params.q) + at.batch * params.q_strides[0] +
               at.head * params.q_strides[1] + (span.q_start + row0) * params.q_strides[2];
  load_tile<T, BLOCK_M, D, THREADS>(q_tile, q, params.q_strides[2],
                                    min(BLOCK_M, span.len_q - row0), params.head_dim,
                                    vectorized, params.q);
  cp_async_commit();

  const KeyValueTiles<T, BLOCK_N, D, THREADS> key_values(params, at.batch, kv_head, span.k_start);
  auto load_keys = [&](int tile, int stage) {
    key_values.load(k_tiles, v_tiles, params, tile, stage, span.len_k, vectorized);
  };

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int warp_row0 = row0 + 16 * warp;  // this thread's rows: warp_row0 + g and + g + 8
  const ScoreRule rule = score_rule(params, span, at.batch, at.head);
  const bool has_dropout = params.dropout_p > 0.0f;
  const Dropout dropout = dropout_of(params, at.batch, at.head);

  float acc[DV_TILES][4];  // fp32 output accumulator, rows g / g + 8
  zero(acc);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};

  const KeyRange keys = key_range_of(params, span, at.batch, row0, BLOCK_M);
  const int first_tile = keys.first / BLOCK_N;
  const int end_tile = keys.end > keys.first ? (keys.end + BLOCK_N - 1) / BLOCK_N : first_tile;
  if (first_tile < end_tile) load_keys(first_tile, 0);
  for (int tile = first_tile; tile < end_tile; ++tile) {
    const int stage = (tile - first_tile) & 1;
    if (tile + 1 < end_tile) {
      load_keys(tile + 1, stage ^ 1);
      cp_async_wait<1>();  // the Q tile and this key tile have landed
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int key0 = tile * BLOCK_N;
    // warp-uniform: rows past the sequence's end, or every key right of the diagonal
    const bool active =
        warp_row0 < span.len_q && !(params.is_causal && key0 > warp_row0 + 15);
    if (active) {
      const T* k_tile = k_tiles + stage * BLOCK_N * D;
      const T* v_tile = v_tiles + stage * BLOCK_N * D;
      float s[N_TILES][4];
      zero(s);
      warp_gemm_abt<T, D, N_TILES>(s, q_tile, 16 * warp, k_tile, 0, params.head_dim);

      // masked base-2 scores; bounds and causal checks only where they can fail
      const bool check = key0 + BLOCK_N > span.len_k ||
                         (params.is_causal && key0 + BLOCK_N - 1 > warp_row0);
#pragma unroll
      for (int n = 0; n < N_TILES; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          s[n][e] = rule(s[n][e], warp_row0 + g + 8 * (e >> 1), key0 + 8 * n + 2 * t + (e & 1),
                         check);
        }
      }

      // online softmax in fp32: the max over the quad's columns, the accumulator rescaled
      // when it grows; the row sum stays a per-thread partial until the end
      float shift[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float tile_max = -INFINITY;
#pragma unroll
        for (int n = 0; n < N_TILES; ++n) {
          tile_max = fmaxf(tile_max, fmaxf(s[n][2 * r], s[n][2 * r + 1]));
        }
        const float new_max = fmaxf(row_max[r], quad_max(tile_max));
        // a row that has seen no allowed key keeps max -inf: shift by 0, not by -inf
        shift[r] = new_max == -INFINITY ? 0.0f : new_max;
        const float correction = exp2f(row_max[r] - shift[r]);
        row_max[r] = new_max;
        row_sum[r] *= correction;
#pragma unroll
        for (int dn = 0; dn < DV_TILES; ++dn) {
          acc[dn][2 * r] *= correction;
          acc[dn][2 * r + 1] *= correction;
        }
      }
#pragma unroll
      for (int n = 0; n < N_TILES; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float p = exp2f(s[n][e] - shift[e >> 1]);
          row_sum[e >> 1] += p;  // undropped sum
          s[n][e] = p;
        }
      }
      if (has_dropout) {  // probabilities dropped in the accumulator only
#pragma unroll
        for (int n = 0; n < N_TILES; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (!dropout.keep(warp_row0 + g + 8 * (e >> 1), key0 + 8 * n + 2 * t + (e & 1))) {
              s[n][e] = 0.0f;
            }
          }
        }
      }

      uint32_t p_frag[N_TILES / 2][4];  // P as the 16-bit A operand of P V
      to_a_fragments<T, N_TILES>(p_frag, s);
      warp_gemm_ab<T, D, N_TILES / 2, DV_TILES>(acc, p_frag, v_tile, 0, 0, params.value_dim);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }
  cp_async_wait<0>();  // nothing left in flight (the Q copy, when no key tile ran)

  // out = O / l (zero for a row with no allowed key), lse = m + log2(l) or -inf
  const float keep_scale = has_dropout ? 1.0f / (1.0f - params.dropout_p) : 1.0f;
  T* out = static_cast<T*>(params.out) + at.batch * params.out_strides[0] +
           at.head * params.out_strides[1] + span.q_start * params.out_strides[2];
  float* lse = params.lse + at.batch * params.lse_strides[0] + at.head * params.lse_strides[1] +
               span.q_start;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float sum = quad_sum(row_sum[r]);
    const float inverse = sum > 0.0f ? keep_scale / sum : 0.0f;
    const int row = warp_row0 + g + 8 * r;
    if (row >= span.len_q) continue;
    T* out_row = out + row * params.out_strides[2];
#pragma unroll
    for (int dn = 0; dn < DV_TILES; ++dn) {
      const int col = 8 * dn + 2 * t;
      if (col < params.value_dim) {
        store_pair(out_row + col, acc[dn][2 * r] * inverse, acc[dn][2 * r + 1] * inverse,
                   col + 1 < params.value_dim);
      }
    }
    if (t == 0) lse[row] = sum > 0.0f ? row_max[r] + log2f(sum) : -INFINITY;
  }
}

template <typename T, int D, int WARPS, int BLOCK_N>
cudaError_t launch_forward(const AttentionParams& params, cudaStream_t stream) {
  constexpr int BLOCK_M = 16 * WARPS;
  constexpr int kSharedBytes = (BLOCK_M + 4 * BLOCK_N) * D * sizeof(T);
  static_assert(kSharedBytes <= 101376, "tiles must fit 99 KB of shared memory");
  const long long grid = static_cast<long long>((params.len_q + BLOCK_M - 1) / BLOCK_M) *
                         params.heads * params.batch;
  if (grid == 0) return cudaSuccess;
  if (grid > INT_MAX) return cudaErrorInvalidConfiguration;
  auto kernel = attention_forward_kernel<T, D, WARPS, BLOCK_N>;
  cudaError_t error =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
  if (error != cudaSuccess) return error;
  const bool vectorized = rows_16_byte_aligned(params.q, params.q_strides) &&
                          rows_16_byte_aligned(params.k, params.k_strides) &&
                          rows_16_byte_aligned(params.v, params.v_strides);
  kernel<<<static_cast<unsigned>(grid), WARPS * 32, kSharedBytes, stream>>>(params, vectorized);
  return cudaGetLastError();
}

// Tiles per head-dim bucket (99 KB of shared memory at most, see launch_forward):
//   64:  128 query rows (8 warps) x 64 keys,  48 KB
//   128: 128 query rows (8 warps) x 64 keys,  96 KB
//   256:  64 query rows (4 warps) x 32 keys,  96 KB (a 128-float accumulator per thread)
template <typename T>
cudaError_t forward_for_dtype(const AttentionParams& params, cudaStream_t stream) {
  switch (head_dim_bucket(params.head_dim, params.value_dim)) {
    case 64: return launch_forward<T, 64, 8, 64>(params, stream);
    case 128: return launch_forward<T, 128, 8, 64>(params, stream);
    default: return launch_forward<T, 256, 4, 32>(params, stream);
  }
}

}  // namespace

cudaError_t attention_forward(const AttentionParams& params, cudaStream_t stream) {
  // The sm_90 kernel reads a float mask in q's dtype; any other mask dtype stays here.
  const bool mask_in_q_dtype =
      params.mask_kind != MaskKind::kFloat || params.mask_dtype == params.dtype;
  cudaError_t sm90_error = cudaSuccess;
  if (mask_in_q_dtype && try_attention_forward_sm90(params, stream, &sm90_error)) {
    return sm90_error;
  }
  if (params.head_dim < 1 || params.head_dim > 256 || params.value_dim < 1 ||
      params.value_dim > 256 || params.kv_heads < 1 || params.heads % params.kv_heads != 0) {
    return cudaErrorInvalidValue;
  }
  switch (params.dtype) {
    case DType::kFloat16: return forward_for_dtype<__half>(params, stream);
    case DType::kBFloat16: return forward_for_dtype<__nv_bfloat16>(params, stream);
    default: return cudaErrorInvalidValue;  // fp32 is served by the Triton backend
  }
}

}  // namespace fasttx::attention
