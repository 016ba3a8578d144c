// Counter-based dropout randomness shared with fasttx/random.py and the Triton kernels.
//
// Philox4x32-10 with key = the seed's two 32-bit halves and counter = (counter_lo,
// counter_hi, 0, 0); the first output word, read as int32 and folded with ~x when negative,
// times 2^-31 (rounded down so the result stays below 1) in fp32. Bit-identical to
// fasttx.random.uniform and to Triton's tl.rand, so every backend drops the same elements.
// Host and device: tests/cuda/test_philox.py compiles it into a host program and compares
// it with fasttx.random.
#pragma once

#include <cstdint>

#ifndef FASTTX_HOST_DEVICE
#ifdef __CUDACC__
#define FASTTX_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTTX_HOST_DEVICE inline
#endif
#endif

namespace fasttx {

// High and low words of the 64-bit product of two 32-bit words.
FASTTX_HOST_DEVICE void multiply_wide(uint32_t a, uint32_t b, uint32_t& high, uint32_t& low) {
#ifdef __CUDA_ARCH__
  high = __umulhi(a, b);
  low = a * b;
#else
  const uint64_t product = static_cast<uint64_t>(a) * b;
  high = static_cast<uint32_t>(product >> 32);
  low = static_cast<uint32_t>(product);
#endif
}

// The first 32-bit word of Philox4x32-10(key = seed, counter = (counter, 0)).
FASTTX_HOST_DEVICE uint32_t philox_first_word(uint64_t seed, uint64_t counter) {
  uint32_t key0 = static_cast<uint32_t>(seed), key1 = static_cast<uint32_t>(seed >> 32);
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = 0, c3 = 0;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    uint32_t high_b, low_b, high_a, low_a;
    multiply_wide(0xCD9E8D57u, c2, high_b, low_b);
    multiply_wide(0xD2511F53u, c0, high_a, low_a);
    const uint32_t next0 = high_b ^ c1 ^ key0;
    const uint32_t next2 = high_a ^ c3 ^ key1;
    c0 = next0;
    c1 = low_b;
    c2 = next2;
    c3 = low_a;
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  return c0;
}

// Uniform in [0, 1), fp32, for element `counter` of the stream `seed`.
FASTTX_HOST_DEVICE float philox_uniform(uint64_t seed, uint64_t counter) {
  int32_t word = static_cast<int32_t>(philox_first_word(seed, counter));
  word = word < 0 ? ~word : word;  // fold negatives as Triton's uint_to_uniform_float does
  return static_cast<float>(word) * 4.6566127342e-10f;
}

// True where an element survives dropout with probability p (the reference's rule u >= p).
FASTTX_HOST_DEVICE bool dropout_keep(uint64_t seed, uint64_t counter, float p) {
  return philox_uniform(seed, counter) >= p;
}

}  // namespace fasttx
