// The Hopper (sm_90a) attention forward: wgmma tensor-core instructions, TMA loads and
// warp-specialised producer/consumer warps. It serves the inputs it accepts (below);
// attention_forward (csrc/attention/) runs everything else on the sm_80 kernels, which run
// on Hopper too. Its lse is the same base-2 statistic the sm_80 backward reads.
#pragma once

#include <cuda_runtime.h>

#include "attention/attention.h"

namespace fasttx::attention {

// Runs the Hopper kernel when it serves these inputs: it was compiled into this build (an
// sm_90a target), the current device is sm_90, the inputs are of its kind (fp16/bf16, E = Ev
// in {64, 128}, no mask, no dropout, TMA-compatible strides) and the driver encodes their
// tensor maps. Returns false, having launched nothing, otherwise (the caller then runs the
// sm_80 kernel); true with the launch's result in *error when it launched.
bool try_attention_forward_sm90(const AttentionParams& params, cudaStream_t stream,
                                cudaError_t* error);

}  // namespace fasttx::attention
