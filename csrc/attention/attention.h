// The attention kernels' launch parameters and launchers: raw pointers, sizes and strides,
// no torch types (csrc/attention/attention.cpp fills them from tensors).
//
// One parameter block serves dense batches, addressed through (batch, head, row, dim)
// strides, and packed variable-length ones (batch stride 0, each sequence's rows starting
// at cu_seqlens[b]). All strides are in elements.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace fasttx::attention {

enum class MaskKind { kNone, kBool, kFloat };

struct AttentionParams {
  DType dtype;  // fp16 or bf16 (the tensor-core kernels' operand types)

  const void* q;    // (B, H, Lq, E) or packed (total_q, H, E)
  const void* k;    // (B, Hk, Lk, E) or packed (total_k, Hk, E)
  const void* v;    // (B, Hk, Lk, Ev) or packed (total_k, Hk, Ev)
  void* out;        // (B, H, Lq, Ev) or packed (total_q, H, Ev), written
  float* lse;       // fp32 (B, H, Lq) or (H, total_q): base-2 log-sum-exp, written
  int64_t q_strides[4], k_strides[4], v_strides[4], out_strides[4];  // (batch, head, row, dim)
  int64_t lse_strides[2];  // (batch, head); rows are contiguous

  MaskKind mask_kind;
  const void* mask;          // (B, H, Lq, Lk) bool as uint8 or float in q's dtype, or null
  DType mask_dtype;          // a float mask's dtype: q's dtype, or any of fp16, bf16, fp32 for
                             // the sm_80 kernels (attention_forward sends a float mask of
                             // another dtype than q's to them, never to the sm_90 kernel)
  int64_t mask_strides[4];   // 0 where broadcast
  bool mask_per_key;         // the mask is constant over heads and queries (key padding)
  const int32_t* key_range;  // int32 (B, 2): first and one past the last allowed key, when
                             // mask_per_key (tiles outside are skipped), else null

  const int32_t* cu_seqlens_q;  // int32 (B + 1,) packed row offsets, or null when dense
  const int32_t* cu_seqlens_k;

  int batch, heads, kv_heads;  // H is a multiple of Hk (grouped-query attention)
  int len_q, len_k;            // dense lengths, or the longest packed lengths
  int head_dim, value_dim;     // E and Ev, each up to 256
  float scale;                 // multiplies q.k
  bool is_causal;              // top-left aligned: query i sees keys j <= i
  float dropout_p;
  const int64_t* seed;  // int64 (1,) Philox seed on the device, or null without dropout.
                        // Counter of element (b, h, i, j): ((b * H + h) * len_q + i) * len_k + j
};

struct AttentionBackwardParams : AttentionParams {
  const void* grad_out;  // like out
  void* grad_q;          // like q, contiguous
  void* grad_k;          // like k, contiguous
  void* grad_v;          // like v, contiguous
  void* grad_mask;       // dense (B, H, Lq, Lk) in the mask's dtype, zero-filled, or null
  int64_t grad_out_strides[4], grad_q_strides[4], grad_k_strides[4], grad_v_strides[4];
  int64_t grad_mask_strides[4];
  float* delta;     // fp32 scratch like lse: rowsum(dO * O)
  float* dq_accum;  // fp32 scratch (total rows, H, E) for dq accumulation, zero-filled, or
                    // null when the launcher does not need it
};

// Launchers: return cudaSuccess or the launch error; the bindings raise it as a torch error.
cudaError_t attention_forward(const AttentionParams& params, cudaStream_t stream);
cudaError_t attention_backward(const AttentionBackwardParams& params, cudaStream_t stream);

}  // namespace fasttx::attention
