// The Hopper (sm_90a) attention forward: FlashAttention-3 style, with TMA loads, wgmma
// tensor-core instructions and warp-specialised producer / consumer warpgroups. It computes
// what the sm_80 and Triton forwards compute (out = softmax(q k^T * scale) v per (sequence,
// head), top-left causal, grouped-query heads, dense or packed batches) and writes the same
// base-2 row log-sum-exp for the sm_80 backward. No dropout, no attn_mask, E = Ev in
// {64, 128}: try_attention_forward_sm90() declines everything else (and inputs whose tensor
// maps the driver refuses), which then run on the sm_80 kernels.
//
// Work split: one CTA per 128 query rows of one (sequence, head); 384 threads:
//   warpgroup 0  producer: one thread issues every TMA load (Q once, then K and V tiles of
//                128 keys into a ring of STAGES slots); the warpgroup gives registers back
//                (setmaxnreg.dec 24) to the consumers (setmaxnreg.inc 240): 24 + 2 * 240 =
//                3 * 168, the 65536 / 384 launch budget.
//   warpgroups 1, 2  consumers: each owns 64 query rows (rows 0-63 and 64-127 of the Q tile)
//                and runs, per key tile, S = Q K^T (wgmma, both operands in shared memory),
//                the online softmax in fp32 registers, and O += P V (wgmma, P from registers).
//                P V of tile i is left running while tile i+1's S = Q K^T is issued; one
//                wgmma.wait_group 0 then completes both. The two warpgroups are not
//                otherwise coordinated (no ping-pong named barriers): the tensor cores
//                overlap one warpgroup's softmax with the other's products as they fall.
//
// Pipeline and barriers (mbarrier objects in static shared memory; tile `it` uses slot
// s = it % STAGES, and it is the (it / STAGES)-th use of that slot):
//   q_full        1 arrival (the producer's arrive.expect_tx) + the Q bytes; waited with
//                 parity 0 (used once).
//   k_full[s]     1 arrival + the K tile's bytes; consumers wait with parity (it/STAGES) & 1.
//   v_full[s]     the same for V: S = Q K^T starts before V has landed.
//   empty[s]      256 arrivals (every consumer thread once its P V wgmma of that tile has
//                 completed, i.e. after the next tile's wait_group, so both K and V of the
//                 slot have been read); before refilling slot s for tile
//                 it >= STAGES the producer waits for the completion of phase it/STAGES - 1,
//                 parity (it/STAGES - 1) & 1. A barrier never runs two phases ahead of its
//                 waiter (each phase needs the other side's progress), so parity suffices.
//
// Shared-memory layouts (all 16-bit elements, every block 1024-byte aligned):
//   A tile of R rows x D columns is stored as D/64 column chunks of R rows x 128 bytes; the
//   TMA box is 64 columns x R rows with CU_TENSOR_MAP_SWIZZLE_128B: row r sits at r * 128
//   bytes of its chunk, its 16-byte piece j at position j ^ (r % 8). That is exactly the
//   wgmma 128-byte swizzle (Swizzle<3,4,3> on address bits), given 1024-byte aligned chunks.
//   Q: R = 128 query rows, D = E.   K: R = 128 keys, D = E.   V: R = 128 keys, D = Ev.
//
// wgmma operands (PTX "Shared Memory Matrix Layout", "Matrix Descriptor Format"):
//   S = Q K^T, m64n128k16, E/16 steps. A = Q (64 x 16, K-major), B = K tile (16 x 128 keys,
//     K-major: the head dim, the contraction, is contiguous), imm-trans-a = imm-trans-b = 0.
//     Canonical K-major 128B layout ((8,m),(8,2k)):((64,SBO),(1,8)) elements: 8-row core
//     groups 1024 bytes apart (SBO = 1024), the leading offset unused (encoded 1). Step kk
//     reads chunk kk / 4 at byte offset (kk % 4) * 32 inside the 128-byte rows: the start
//     address moves, the swizzle is applied to the final address bits, so the base offset
//     field stays 0. Consumer c's Q rows start 64 * 128 bytes into each Q chunk.
//   O += P V, m64n{Ev}k16, 128/16 = 8 steps. A = P from registers; B = V (16 keys x Ev),
//     which has the contraction (keys) as the strided dimension and Ev contiguous: MN-major,
//     imm-trans-b = 1. Canonical MN-major 128B layout ((8,8,m),(8,k)):((1,8,LBO),(64,SBO)):
//     64 value columns contiguous in a 128-byte row, the next 64 columns LBO = 128 keys *
//     128 bytes = 16384 bytes further (the next chunk, Ev = 128 only), 8-key groups SBO =
//     1024 bytes apart. Step kk starts at key row 16 kk: + 2048 kk bytes.
//
// Accumulator layout (PTX "WGMMA .m64nNk16 register fragment layout for accumulator D"):
// thread t of the warpgroup (warp w = t / 32, lane l) holds rows 16w + l/4 and 16w + l/4 + 8,
// and for each 8-column block i registers d[4i + 0, 1] = (row l/4, columns 8i + 2(l%4) + 0, 1),
// d[4i + 2, 3] = (row l/4 + 8, same columns). A row is thus spread over the 4 lanes of a quad
// (lanes 4g .. 4g+3): row reductions combine the thread's own values, then xor-shuffles over
// lane bits 0 and 1. The A fragment of P V for keys 16kk .. 16kk+15 (PTX "register fragment
// layout for matrix A", that of mma.m16n8k16 per warp) is a0..a7 = (g, 2t, 2t+1), (g+8, 2t,
// 2t+1), (g, 2t+8, 2t+9), (g+8, 2t+8, 2t+9): exactly accumulator registers 8kk .. 8kk+7, so
// P is repacked pairwise in place, no shuffles.
//
// Bounds: no TMA box passes its sequence's end. A query tile that would (the last of a
// sequence) is loaded shifted back so it ends at the sequence's end (tile_row = min(first
// row, len - 128); rows before the first row belong to the previous CTA and are not
// written); likewise the last key tile (tile_key = min(key_begin, len_k - 128)), whose keys
// before key_begin (already counted by the previous tile, or a packed neighbour's) are
// masked to -inf. Shifted boxes of short sequences start at negative rows, which TMA fills
// with zeros. So no box reads past the packed tensors' end, and the tensor maps need no
// packed totals (the params do not carry them): their row extent is just an upper bound.
#include "attention/attention_sm90.h"

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "attention/hopper_sm90.cuh"
#include "common/numeric.cuh"

namespace fasttx::attention {
namespace {

constexpr int kBlockM = 128;       // query rows per CTA
constexpr int kBlockN = 128;       // keys per tile
constexpr int kThreads = 384;      // producer warpgroup + 2 consumer warpgroups
constexpr int kChunkColumns = 64;  // 16-bit columns per 128-byte swizzled row
constexpr int kRowBytes = 128;
constexpr float kLog2e = 1.4426950408889634f;

template <int HEAD_DIM>
struct Tiles {
  static constexpr int kChunks = HEAD_DIM / kChunkColumns;
  static constexpr int kStages = HEAD_DIM == 64 ? 3 : 2;      // K+V ring: 96 or 128 KB
  static constexpr uint32_t kQChunkBytes = kBlockM * kRowBytes;    // 16 KB
  static constexpr uint32_t kKvChunkBytes = kBlockN * kRowBytes;   // 16 KB
  static constexpr uint32_t kQBytes = kChunks * kQChunkBytes;
  static constexpr uint32_t kKvBytes = kChunks * kKvChunkBytes;    // one K or one V tile
  static constexpr uint32_t kSmemBytes = kQBytes + 2 * kStages * kKvBytes + 1024;  // + align
  static constexpr int kBarriers = 1 + 3 * kStages;  // q_full, k_full[], v_full[], empty[]
};
static_assert(kBlockM == kBlockN, "Q, K and V tiles share one TMA box shape");
static_assert(Tiles<64>::kSmemBytes + 8 * Tiles<64>::kBarriers <= 227 * 1024 &&
                  Tiles<128>::kSmemBytes + 8 * Tiles<128>::kBarriers <= 227 * 1024,
              "shared memory per CTA");

struct KernelArgs {
  CUtensorMap q_map, k_map, v_map;  // 4-D (dim, row, head, batch) maps, 64 x 128 x 1 x 1 boxes
  void* out;                        // (B, H, Lq, Ev) or packed (total_q, H, Ev), written
  float* lse;                       // (B, H, Lq) or (H, total_q) fp32, base-2, written
  int64_t out_strides[4];           // (batch, head, row, dim) in elements, dim stride 1
  int64_t lse_strides[2];           // (batch, head); rows contiguous
  const int32_t* cu_seqlens_q;      // int32 (B + 1,) packed row offsets, or null when dense
  const int32_t* cu_seqlens_k;
  int heads, group_size;            // H, H / Hk
  int len_q, len_k;                 // dense lengths, or the longest packed ones
  int num_m_tiles;                  // ceil(len_q / kBlockM)
  float qk_scale;                   // scale * log2(e): scores in base 2
  bool is_causal;
};

#if FASTTX_SM90A_ENABLED

constexpr int kConsumerRows = 64;        // query rows per consumer warpgroup (wgmma M)
constexpr int kProducerRegisters = 24;   // setmaxnreg budgets: 24 + 2 * 240 = 3 * 168
constexpr int kConsumerRegisters = 240;

// What one CTA computes: query rows [first_row, first_row + 128) of (batch, head).
struct CtaWork {
  int batch, head;
  int q_start, seq_len_q, k_start, seq_len_k;  // packed row offsets (0 when dense), lengths
  int first_row;      // first query row written by this CTA
  int tile_row;       // query row held by row 0 of the Q tile (<= first_row, see "Bounds")
  int num_key_tiles;  // key tiles [0, num_key_tiles) of 128 keys
};

__device__ __forceinline__ CtaWork cta_work(const KernelArgs& args) {
  CtaWork work;
  int m_tile = blockIdx.x % args.num_m_tiles;
  const int rest = blockIdx.x / args.num_m_tiles;
  if (args.is_causal) m_tile = args.num_m_tiles - 1 - m_tile;  // longest rows start first
  work.head = rest % args.heads;
  work.batch = rest / args.heads;
  work.q_start = 0, work.k_start = 0, work.seq_len_q = args.len_q, work.seq_len_k = args.len_k;
  if (args.cu_seqlens_q != nullptr) {
    work.q_start = args.cu_seqlens_q[work.batch];
    work.seq_len_q = args.cu_seqlens_q[work.batch + 1] - work.q_start;
    work.k_start = args.cu_seqlens_k[work.batch];
    work.seq_len_k = args.cu_seqlens_k[work.batch + 1] - work.k_start;
  }
  work.first_row = m_tile * kBlockM;
  work.tile_row = min(work.first_row, work.seq_len_q - kBlockM);
  int key_end = work.seq_len_k;
  if (args.is_causal) key_end = min(key_end, work.tile_row + kBlockM);  // last row + 1
  work.num_key_tiles = key_end > 0 ? (key_end + kBlockN - 1) / kBlockN : 0;
  return work;
}

// Key held by row 0 of key tile `tile`: shifted back so the box ends at the sequence's end.
__device__ __forceinline__ int tile_first_key(int tile, int seq_len_k) {
  return min(tile * kBlockN, seq_len_k - kBlockN);
}

// Barrier addresses: q_full, then k_full[STAGES], v_full[STAGES], empty[STAGES].
template <int STAGES>
struct Barriers {
  uint32_t base;
  __device__ uint32_t q_full() const { return base; }
  __device__ uint32_t k_full(int stage) const { return base + 8 * (1 + stage); }
  __device__ uint32_t v_full(int stage) const { return base + 8 * (1 + STAGES + stage); }
  __device__ uint32_t empty(int stage) const { return base + 8 * (1 + 2 * STAGES + stage); }
};

template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float low, float high) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 pair = __floats2half2_rn(low, high);  // .x (low 16 bits) = low
    return *reinterpret_cast<uint32_t*>(&pair);
  } else {
    __nv_bfloat162 pair = __floats2bfloat162_rn(low, high);
    return *reinterpret_cast<uint32_t*>(&pair);
  }
}

// The producer: one thread issues the TMA loads of Q and of every K and V tile.
template <int HEAD_DIM>
__device__ void load_tiles(const KernelArgs& args, const CtaWork& work, uint32_t smem,
                           const Barriers<Tiles<HEAD_DIM>::kStages>& bars) {
  using TILES = Tiles<HEAD_DIM>;
  const uint32_t k_smem = smem + TILES::kQBytes;
  const uint32_t v_smem = k_smem + TILES::kStages * TILES::kKvBytes;
  const int batch = args.cu_seqlens_q != nullptr ? 0 : work.batch;  // packed maps: 1 batch
  const int kv_head = work.head / args.group_size;
  sm90::prefetch_tensor_map(&args.q_map);
  if (work.num_key_tiles > 0) {  // without keys the K and V maps are never encoded
    sm90::prefetch_tensor_map(&args.k_map);
    sm90::prefetch_tensor_map(&args.v_map);
  }

  sm90::mbarrier_arrive_expect_tx(bars.q_full(), TILES::kQBytes);
#pragma unroll
  for (int c = 0; c < TILES::kChunks; ++c) {
    sm90::tma_load_4d(smem + c * TILES::kQChunkBytes, &args.q_map, bars.q_full(),
                      c * kChunkColumns, work.q_start + work.tile_row, work.head, batch);
  }
  for (int it = 0; it < work.num_key_tiles; ++it) {
    const int stage = it % TILES::kStages;
    if (it >= TILES::kStages) {  // wait until the consumers released this slot's last use
      sm90::mbarrier_wait(bars.empty(stage), (it / TILES::kStages - 1) & 1);
    }
    const int key_row = work.k_start + tile_first_key(it, work.seq_len_k);
    const uint32_t k_tile = k_smem + stage * TILES::kKvBytes;
    const uint32_t v_tile = v_smem + stage * TILES::kKvBytes;
    sm90::mbarrier_arrive_expect_tx(bars.k_full(stage), TILES::kKvBytes);
#pragma unroll
    for (int c = 0; c < TILES::kChunks; ++c) {
      sm90::tma_load_4d(k_tile + c * TILES::kKvChunkBytes, &args.k_map, bars.k_full(stage),
                        c * kChunkColumns, key_row, kv_head, batch);
    }
    sm90::mbarrier_arrive_expect_tx(bars.v_full(stage), TILES::kKvBytes);
#pragma unroll
    for (int c = 0; c < TILES::kChunks; ++c) {
      sm90::tma_load_4d(v_tile + c * TILES::kKvChunkBytes, &args.v_map, bars.v_full(stage),
                        c * kChunkColumns, key_row, kv_head, batch);
    }
  }
}

// One key tile's online-softmax step, in fp32: scales the raw q.k scores (`scores`, the
// S accumulator) to base 2, masks them to -inf where `masked` (keys before key_begin and,
// causal, keys after the row), folds them into the running row max / sum, rescales the
// output accumulator, and packs the probabilities as the 16-bit A fragments of P V.
// `key0`: key of this thread's column 0 (tile_key + 2 * (lane % 4)); row0: its first row.
template <typename T, int OUT_REGS>
__device__ __forceinline__ void softmax_tile(float (&scores)[64], float (&out_acc)[OUT_REGS],
                                             float (&row_max)[2], float (&row_sum)[2],
                                             uint32_t (&probs)[kBlockN / 16][4],
                                             float qk_scale, bool masked, bool causal,
                                             int key0, int key_begin, int row0) {
#pragma unroll
  for (int i = 0; i < kBlockN / 2; ++i) scores[i] *= qk_scale;
  if (masked) {  // register j of block i: key key0 + 8i + (j & 1), row row0 + 8 (j >> 1)
#pragma unroll
    for (int i = 0; i < kBlockN / 8; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int key = key0 + 8 * i + (j & 1);
        const int row = row0 + (j >> 1) * 8;
        if (key < key_begin || (causal && key > row)) scores[4 * i + j] = -INFINITY;
      }
    }
  }
  // Row max: the thread's 32 values of each row, then the quad (xor over lane bits 0, 1).
  float new_max[2] = {row_max[0], row_max[1]};
#pragma unroll
  for (int i = 0; i < kBlockN / 8; ++i) {
    new_max[0] = fmaxf(new_max[0], fmaxf(scores[4 * i], scores[4 * i + 1]));
    new_max[1] = fmaxf(new_max[1], fmaxf(scores[4 * i + 2], scores[4 * i + 3]));
  }
  float shift[2], correction[2], tile_sum[2] = {0.f, 0.f};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(0xffffffffu, new_max[r], 1));
    new_max[r] = fmaxf(new_max[r], __shfl_xor_sync(0xffffffffu, new_max[r], 2));
    // a row that has seen no allowed key yet keeps max -inf: shift by 0, not by -inf
    shift[r] = new_max[r] == -INFINITY ? 0.f : new_max[r];
    correction[r] = exp2f(row_max[r] - shift[r]);
    row_max[r] = new_max[r];
  }
#pragma unroll
  for (int i = 0; i < kBlockN / 8; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      scores[4 * i + j] = exp2f(scores[4 * i + j] - shift[j >> 1]);
      tile_sum[j >> 1] += scores[4 * i + j];
    }
  }
  // Sums stay per thread (the quad's partial sums share the rows' correction factors);
  // they are reduced over the quad once, at the end.
  row_sum[0] = row_sum[0] * correction[0] + tile_sum[0];
  row_sum[1] = row_sum[1] * correction[1] + tile_sum[1];
#pragma unroll
  for (int i = 0; i < OUT_REGS / 4; ++i) {
    out_acc[4 * i] *= correction[0];
    out_acc[4 * i + 1] *= correction[0];
    out_acc[4 * i + 2] *= correction[1];
    out_acc[4 * i + 3] *= correction[1];
  }
#pragma unroll
  for (int kk = 0; kk < kBlockN / 16; ++kk) {  // A fragment = accumulator regs 8kk .. 8kk+7
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      probs[kk][q] = pack_pair<T>(scores[8 * kk + 2 * q], scores[8 * kk + 2 * q + 1]);
    }
  }
}

// out = acc / row sum (0 for a row with no allowed key) and lse = max + log2(sum) (-inf
// then), for this thread's two rows, skipping rows an earlier CTA writes.
template <typename T, int OUT_REGS>
__device__ __forceinline__ void store_rows(const KernelArgs& args, const CtaWork& work,
                                           const float (&out_acc)[OUT_REGS],
                                           const float (&row_max)[2], float (&row_sum)[2],
                                           int row0, int lane) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {  // all lanes shuffle before any branch
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 1);
    row_sum[r] += __shfl_xor_sync(0xffffffffu, row_sum[r], 2);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    if (row < work.first_row || row >= work.seq_len_q) continue;
    const bool attended = row_sum[r] > 0.f;
    const float inverse = attended ? 1.f / row_sum[r] : 0.f;
    const int64_t packed_row = static_cast<int64_t>(work.q_start) + row;
    T* out_row = static_cast<T*>(args.out) + work.batch * args.out_strides[0] +
                 work.head * args.out_strides[1] + packed_row * args.out_strides[2];
#pragma unroll
    for (int i = 0; i < OUT_REGS / 4; ++i) {  // columns 8i + 2 (lane % 4) + 0, 1
      *reinterpret_cast<uint32_t*>(out_row + 8 * i + 2 * (lane % 4)) = pack_pair<T>(
          out_acc[4 * i + 2 * r] * inverse, out_acc[4 * i + 2 * r + 1] * inverse);
    }
    if (lane % 4 == 0) {
      args.lse[work.batch * args.lse_strides[0] + work.head * args.lse_strides[1] + packed_row] =
          attended ? row_max[r] + log2f(row_sum[r]) : -INFINITY;
    }
  }
}

// A consumer warpgroup: 64 query rows (`consumer` 0: Q tile rows 0-63, 1: rows 64-127).
template <typename T, int HEAD_DIM>
__device__ void attend(const KernelArgs& args, const CtaWork& work, uint32_t smem,
                       const Barriers<Tiles<HEAD_DIM>::kStages>& bars, int consumer) {
  using TILES = Tiles<HEAD_DIM>;
  constexpr bool BF16 = std::is_same_v<T, __nv_bfloat16>;
  constexpr int OUT_REGS = HEAD_DIM / 2;  // fp32 accumulator registers of m64n{Ev}
  const int thread = threadIdx.x % 128, warp = thread / 32, lane = thread % 32;
  const int first_row = work.tile_row + consumer * kConsumerRows;  // of this warpgroup
  const int row0 = first_row + 16 * warp + lane / 4;              // this thread's rows: +0, +8
  const uint32_t q_smem = smem + consumer * kConsumerRows * kRowBytes;
  const uint32_t k_smem = smem + TILES::kQBytes;
  const uint32_t v_smem = k_smem + TILES::kStages * TILES::kKvBytes;

  float out_acc[OUT_REGS], scores[kBlockN / 2];
  uint32_t probs[kBlockN / 16][4];
#pragma unroll
  for (int i = 0; i < OUT_REGS; ++i) out_acc[i] = 0.f;
#pragma unroll
  for (int i = 0; i < kBlockN / 2; ++i) scores[i] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  sm90::mbarrier_wait(bars.q_full(), 0);
  for (int it = 0; it < work.num_key_tiles; ++it) {
    const int stage = it % TILES::kStages;
    const uint32_t parity = (it / TILES::kStages) & 1;
    const int key_begin = it * kBlockN;
    const int tile_key = tile_first_key(it, work.seq_len_k);
    const uint32_t k_tile = k_smem + stage * TILES::kKvBytes;
    const uint32_t v_tile = v_smem + stage * TILES::kKvBytes;

    // S = Q K^T: E / 16 steps; step kk reads column chunk kk / 4 at byte (kk % 4) * 32.
    sm90::mbarrier_wait(bars.k_full(stage), parity);
    sm90::fence_registers(scores);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < HEAD_DIM / 16; ++kk) {
      const uint32_t offset = (kk % 4) * 32;  // 16 columns x 2 bytes
      const uint64_t q_desc = sm90::smem_descriptor(
          q_smem + (kk / 4) * TILES::kQChunkBytes + offset, 16, 8 * kRowBytes);
      const uint64_t k_desc = sm90::smem_descriptor(
          k_tile + (kk / 4) * TILES::kKvChunkBytes + offset, 16, 8 * kRowBytes);
      sm90::wgmma_ss<BF16>(scores, q_desc, k_desc, kk > 0);
    }
    sm90::wgmma_commit();
    // Completes S and the previous tile's P V, which was left running (out_acc and probs
    // untouched meanwhile) so that it overlaps this tile's wait and S issue; that
    // previous tile's slot is then fully read.
    sm90::wgmma_wait<0>();
    sm90::fence_registers(scores);
    sm90::fence_registers(out_acc);
    if (it > 0) sm90::mbarrier_arrive(bars.empty((it - 1) % TILES::kStages));

    // Element masks only on tiles that need them: the shifted last tile, or keys past the
    // warpgroup's first row under the causal mask.
    const bool masked = tile_key < key_begin ||
                        (args.is_causal && tile_key + kBlockN - 1 > first_row);
    softmax_tile<T>(scores, out_acc, row_max, row_sum, probs, args.qk_scale, masked,
                    args.is_causal, tile_key + 2 * (lane % 4), key_begin, row0);

    // O += P V: 8 steps of 16 keys; V is MN-major (trans-b), next 64 columns LBO away.
    sm90::mbarrier_wait(bars.v_full(stage), parity);
    sm90::fence_registers(out_acc);
    sm90::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const uint64_t v_desc = sm90::smem_descriptor(v_tile + kk * 16 * kRowBytes,
                                                    TILES::kKvChunkBytes, 8 * kRowBytes);
      sm90::wgmma_rs<BF16>(out_acc, probs[kk], v_desc);
    }
    sm90::wgmma_commit();
  }
  sm90::wgmma_wait<0>();  // the last P V
  sm90::fence_registers(out_acc);
  if (work.num_key_tiles > 0) {  // (no later load waits for it; released for symmetry)
    sm90::mbarrier_arrive(bars.empty((work.num_key_tiles - 1) % TILES::kStages));
  }
  store_rows<T>(args, work, out_acc, row_max, row_sum, row0, lane);
}

#endif  // FASTTX_SM90A_ENABLED

template <typename T, int HEAD_DIM>
__global__ void __launch_bounds__(kThreads, 1)
    attention_forward_sm90_kernel(const __grid_constant__ KernelArgs args) {
#if FASTTX_SM90A_ENABLED
  using TILES = Tiles<HEAD_DIM>;
  // Static shared memory holds only these barriers: an sm_90a body is the only one with a
  // static footprint, which supports() reads back (see kernel_is_built).
  __shared__ alignas(8) uint64_t barrier_storage[TILES::kBarriers];
  extern __shared__ uint8_t dynamic_smem[];

  const CtaWork work = cta_work(args);
  if (work.first_row >= work.seq_len_q) return;  // uniform: packed tile past its sequence
  const uint32_t smem = (sm90::shared_address(dynamic_smem) + 1023) & ~1023u;
  const Barriers<TILES::kStages> bars{sm90::shared_address(barrier_storage)};
  if (threadIdx.x == 0) {
    sm90::mbarrier_init(bars.q_full(), 1);
    for (int s = 0; s < TILES::kStages; ++s) {
      sm90::mbarrier_init(bars.k_full(s), 1);
      sm90::mbarrier_init(bars.v_full(s), 1);
      sm90::mbarrier_init(bars.empty(s), 2 * 128);
    }
    sm90::fence_barrier_init();
  }
  __syncthreads();

  if (threadIdx.x < 128) {
    sm90::release_registers<kProducerRegisters>();
    if (threadIdx.x == 0) load_tiles<HEAD_DIM>(args, work, smem, bars);
  } else {
    sm90::claim_registers<kConsumerRegisters>();
    attend<T, HEAD_DIM>(args, work, smem, bars, threadIdx.x / 128 - 1);
  }
#endif
}

// ---- host side ----

using EncodeTiled = CUresult(CUDAAPI*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                       const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                       const cuuint32_t*, CUtensorMapInterleave,
                                       CUtensorMapSwizzle, CUtensorMapL2promotion,
                                       CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled from the driver, found at run time (the extension does not link
// libcuda); null when the driver lacks it.
EncodeTiled tensor_map_encoder() {
  static const EncodeTiled encoder = []() -> EncodeTiled {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
#if CUDART_VERSION >= 12050
    const cudaError_t error = cudaGetDriverEntryPointByVersion(
        "cuTensorMapEncodeTiled", &function, 12000, cudaEnableDefault, &found);
#else
    const cudaError_t error = cudaGetDriverEntryPoint("cuTensorMapEncodeTiled", &function,
                                                      cudaEnableDefault, &found);
#endif
    if (error != cudaSuccess || found != cudaDriverEntryPointSuccess || function == nullptr) {
      cudaGetLastError();  // not the caller's error
      return nullptr;
    }
    return reinterpret_cast<EncodeTiled>(function);
  }();
  return encoder;
}

// TMA needs 16-byte aligned base addresses and strides, and a contiguous last dimension.
// sizes, strides: (batch, head, row, dim), strides in elements; size-1 dims are free.
bool tma_compatible(const void* base, const int64_t (&sizes)[4], const int64_t (&strides)[4]) {
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0 || strides[3] != 1) return false;
  for (int d = 0; d < 3; ++d) {
    if (sizes[d] > 1 && (strides[d] <= 0 || strides[d] % 8 != 0 || strides[d] >= (1LL << 38))) {
      return false;
    }
  }
  return true;
}

// A (dim, row, head, batch) tensor map with 64-column x 128-row boxes, 128-byte swizzle,
// zeros outside. Size-1 dimensions get a harmless stride (their coordinate is always 0).
bool encode_map(CUtensorMap* map, DType dtype, const void* base, const int64_t (&sizes)[4],
                const int64_t (&strides)[4]) {
  const EncodeTiled encode = tensor_map_encoder();
  if (encode == nullptr) return false;
  cuuint64_t dims[4];  // innermost first: (dim, row, head, batch)
  for (int d = 0; d < 4; ++d) dims[d] = static_cast<cuuint64_t>(sizes[3 - d]);
  cuuint64_t byte_strides[3];
  for (int d = 0; d < 3; ++d) {  // stride of dims[d + 1]; a size-1 one reuses the inner one
    const cuuint64_t inner = d == 0 ? (dims[0] * 2 + 15) / 16 * 16 : byte_strides[d - 1];
    byte_strides[d] = dims[d + 1] > 1 ? static_cast<cuuint64_t>(strides[2 - d]) * 2 : inner;
  }
  const cuuint32_t box[4] = {kChunkColumns, kBlockM, 1, 1};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUtensorMapDataType type = dtype == DType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                                              : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const CUresult result =
      encode(map, type, 4, const_cast<void*>(base), dims, byte_strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS;
}

// The (batch, head, row, dim) sizes of q / k / v as the tensor maps see them: packed
// tensors are one batch of rows; their row count is bounded by batch x the longest length
// (never reached: boxes stop at each sequence's end, see "Bounds").
void map_sizes(const AttentionParams& p, bool keys, int dim, int64_t (&sizes)[4]) {
  const int64_t len = keys ? p.len_k : p.len_q;
  const bool packed = p.cu_seqlens_q != nullptr;
  const int64_t rows = packed ? len * p.batch : len;
  sizes[0] = packed ? 1 : p.batch;
  sizes[1] = keys ? p.kv_heads : p.heads;
  sizes[2] = rows < 1 ? 1 : (rows > INT_MAX ? INT_MAX : rows);
  sizes[3] = dim;
}

template <typename T, int HEAD_DIM>
bool kernel_is_built() {
  // Called on an sm_90 device only, so the image the runtime picks is the one an sm_90
  // launch would run. The sm_90a body declares static shared memory (its barriers); a body
  // compiled without sm_90a features (an sm_90 or PTX-JIT image) is empty and has none.
  static const bool built = [] {
    cudaFuncAttributes attributes{};
    if (cudaFuncGetAttributes(&attributes, attention_forward_sm90_kernel<T, HEAD_DIM>) !=
        cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return attributes.binaryVersion >= 90 && attributes.sharedSizeBytes > 0;
  }();
  return built;
}

// Encodes the tensor maps and launches. Returns false, having launched nothing, when the
// driver refuses a tensor map (the caller then runs the sm_80 kernel); else true, with the
// launch's result in *error.
template <typename T, int HEAD_DIM>
bool launch(const AttentionParams& p, cudaStream_t stream, cudaError_t* error) {
  using TILES = Tiles<HEAD_DIM>;
  const int num_m_tiles = static_cast<int>((p.len_q + kBlockM - 1) / kBlockM);
  const int64_t grid = static_cast<int64_t>(num_m_tiles) * p.heads * p.batch;
  *error = cudaSuccess;
  if (grid == 0) return true;
  KernelArgs args{};
  int64_t sizes[4];
  map_sizes(p, false, HEAD_DIM, sizes);
  if (!encode_map(&args.q_map, p.dtype, p.q, sizes, p.q_strides)) return false;
  map_sizes(p, true, HEAD_DIM, sizes);
  if (p.len_k > 0) {  // without keys no K or V tile is loaded (and k, v may be null)
    if (!encode_map(&args.k_map, p.dtype, p.k, sizes, p.k_strides) ||
        !encode_map(&args.v_map, p.dtype, p.v, sizes, p.v_strides)) {
      return false;
    }
  }
  args.out = p.out;
  args.lse = p.lse;
  for (int d = 0; d < 4; ++d) args.out_strides[d] = p.out_strides[d];
  args.lse_strides[0] = p.lse_strides[0];
  args.lse_strides[1] = p.lse_strides[1];
  args.cu_seqlens_q = p.cu_seqlens_q;
  args.cu_seqlens_k = p.cu_seqlens_k;
  args.heads = p.heads;
  args.group_size = p.heads / p.kv_heads;
  args.len_q = p.len_q;
  args.len_k = p.len_k;
  args.num_m_tiles = num_m_tiles;
  args.qk_scale = p.scale * kLog2e;
  args.is_causal = p.is_causal;

  auto kernel = attention_forward_sm90_kernel<T, HEAD_DIM>;
  *error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                TILES::kSmemBytes);
  if (*error != cudaSuccess) return true;
  kernel<<<static_cast<unsigned>(grid), kThreads, TILES::kSmemBytes, stream>>>(args);
  *error = cudaGetLastError();
  return true;
}

template <typename Fn>
auto dispatch(const AttentionParams& p, Fn&& fn) {
  const bool bf16 = p.dtype == DType::kBFloat16;
  if (p.head_dim == 64) {
    return bf16 ? fn(__nv_bfloat16{}, std::integral_constant<int, 64>{})
                : fn(__half{}, std::integral_constant<int, 64>{});
  }
  return bf16 ? fn(__nv_bfloat16{}, std::integral_constant<int, 128>{})
              : fn(__half{}, std::integral_constant<int, 128>{});
}

bool device_is_sm90() {
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
}

// Whether the Hopper kernel was compiled into this build (an sm_90a target), the current
// device is sm_90, and it serves these inputs (the tensor maps are tried at launch).
bool supports(const AttentionParams& p) {
  if (p.dtype != DType::kFloat16 && p.dtype != DType::kBFloat16) return false;
  if (p.head_dim != p.value_dim || (p.head_dim != 64 && p.head_dim != 128)) return false;
  if (p.mask_kind != MaskKind::kNone || p.dropout_p != 0.f) return false;
  if (p.batch < 1 || p.heads < 1 || p.kv_heads < 1 || p.heads % p.kv_heads != 0) return false;
  if (p.len_q < 0 || p.len_k < 0 || p.len_q > INT_MAX - kBlockM || p.len_k > INT_MAX - kBlockN) {
    return false;
  }
  if ((p.cu_seqlens_q == nullptr) != (p.cu_seqlens_k == nullptr)) return false;
  const int64_t grid =
      (static_cast<int64_t>(p.len_q) + kBlockM - 1) / kBlockM * p.heads * p.batch;
  if (grid > INT_MAX) return false;

  int64_t sizes[4];
  map_sizes(p, false, p.head_dim, sizes);
  if (!tma_compatible(p.q, sizes, p.q_strides)) return false;
  map_sizes(p, true, p.head_dim, sizes);
  if (!tma_compatible(p.k, sizes, p.k_strides) || !tma_compatible(p.v, sizes, p.v_strides)) {
    return false;
  }
  // out is written two elements (4 bytes) at a time, from registers
  if (p.out_strides[3] != 1 || reinterpret_cast<uintptr_t>(p.out) % 4 != 0) return false;
  for (int d = 0; d < 3; ++d) {
    if (p.out_strides[d] % 2 != 0) return false;
  }

  if (!device_is_sm90() || tensor_map_encoder() == nullptr) return false;
  const cudaError_t built = dispatch(p, [](auto type, auto head_dim) {
    return kernel_is_built<decltype(type), decltype(head_dim)::value>()
               ? cudaSuccess
               : cudaErrorNoKernelImageForDevice;
  });
  return built == cudaSuccess;
}

}  // namespace

bool try_attention_forward_sm90(const AttentionParams& p, cudaStream_t stream,
                                cudaError_t* error) {
  if (!supports(p)) return false;
  return dispatch(p, [&](auto type, auto head_dim) {
    return launch<decltype(type), decltype(head_dim)::value>(p, stream, error);
  });
}

}  // namespace fasttx::attention
