// The Hopper (sm_90a) attention forward: wgmma tensor-core instructions, TMA loads and
// warp-specialised producer/consumer warps. It serves the inputs attention_sm90_supports
// accepts; attention_forward (csrc/attention/) sends everything else to the sm_80 kernels,
// which run on Hopper too. Its lse is the same base-2 statistic the sm_80 backward reads.
#pragma once

#include <cuda_runtime.h>

#include "attention/attention.h"

namespace fasttx::attention {

// True when the Hopper kernel was compiled into this build (an sm_90a target), the current
// device is sm_90, and it serves these inputs.
bool attention_sm90_supports(const AttentionParams& params);

cudaError_t attention_forward_sm90(const AttentionParams& params, cudaStream_t stream);

}  // namespace fasttx::attention
