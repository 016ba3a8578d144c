// PTX wrappers for the Hopper (sm_90a) attention forward: mbarriers, TMA tensor loads,
// warpgroup register reallocation and wgmma. Thin, one instruction each, so that the kernel
// reads as the algorithm; every syntax follows the PTX ISA (8.0+) sections named beside it.
//
// Only the sm_90a pass of attention_forward_sm90.cu may call these (the kernel body is
// guarded by FASTTX_SM90A_ENABLED); the declarations compile for every target.
#pragma once

#include <cuda.h>  // CUtensorMap (a type only: nothing of libcuda is linked)
#include <cuda_runtime.h>

#include <cstdint>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FASTTX_SM90A_ENABLED 1
#else
#define FASTTX_SM90A_ENABLED 0
#endif

namespace fasttx::attention::sm90 {

__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}

// ---- mbarrier (PTX "mbarrier.*"): 64-bit barrier objects in shared memory, addressed by
// their 32-bit shared-window address.

__device__ __forceinline__ void mbarrier_init(uint32_t barrier, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(barrier), "r"(arrivals)
               : "memory");
}

// Makes the initialised barriers visible to the other threads and to the async proxy (TMA).
__device__ __forceinline__ void fence_barrier_init() {
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}

// One arrival, announcing that `bytes` more will land through complete_tx (the TMA loads).
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint32_t barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(barrier),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void mbarrier_arrive(uint32_t barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(barrier) : "memory");
}

// Blocks until the phase of parity `parity` has completed (try_wait may return false after
// a time limit, hence the loop). Acquire semantics (the default): the waiting thread then
// sees the data whose arrival completed the phase.
__device__ __forceinline__ void mbarrier_wait(uint32_t barrier, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred complete;\n"
        "mbarrier.try_wait.parity.shared::cta.b64 complete, [%1], %2;\n"
        "selp.u32 %0, 1, 0, complete;\n}\n"
        : "=r"(done)
        : "r"(barrier), "r"(parity)
        : "memory");
  } while (done == 0);
}

// ---- TMA (PTX "cp.async.bulk.tensor"): a 4-D box global -> shared, completion counted in
// bytes on `barrier`. Coordinates are element indices, innermost first; parts of the box
// outside the tensor (negative coordinates included) are filled with zeros. The
// .shared::cluster destination form (PTX 8.0) takes a CTA-local shared address.
__device__ __forceinline__ void tma_load_4d(uint32_t destination, const CUtensorMap* map,
                                            uint32_t barrier, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5}], [%6];" ::"r"(destination),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(barrier)
      : "memory");
}

__device__ __forceinline__ void prefetch_tensor_map(const CUtensorMap* map) {
  asm volatile("prefetch.tensormap [%0];" ::"l"(reinterpret_cast<uint64_t>(map)) : "memory");
}

// ---- Register reallocation between warpgroups (PTX "setmaxnreg"): every warp of a
// warpgroup executes the same one.
template <int REGISTERS>
__device__ __forceinline__ void release_registers() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(REGISTERS));
}
template <int REGISTERS>
__device__ __forceinline__ void claim_registers() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(REGISTERS));
}

// ---- wgmma (PTX "wgmma.fence", "wgmma.commit_group", "wgmma.wait_group").
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int PENDING>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(PENDING) : "memory");
}

// Keeps the compiler from moving reads or writes of an accumulator register across the
// asynchronous wgmma that owns it (an empty asm that "modifies" the register).
template <int N>
__device__ __forceinline__ void fence_registers(float (&registers)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(registers[i])::"memory");
}

// Shared-memory matrix descriptor of a wgmma operand (PTX "Matrix Descriptor Format"):
// bits 0-13 start address >> 4, 16-29 leading-dimension byte offset >> 4, 32-45
// stride-dimension byte offset >> 4, 49-51 base offset (0: every swizzle atom here starts
// on a 1024-byte boundary), 62-63 swizzle mode (1 = 128-byte swizzle).
__device__ __forceinline__ uint64_t smem_descriptor(uint32_t start, uint32_t leading_bytes,
                                                    uint32_t stride_bytes) {
  return static_cast<uint64_t>((start & 0x3FFFF) >> 4) |
         static_cast<uint64_t>((leading_bytes & 0x3FFFF) >> 4) << 16 |
         static_cast<uint64_t>((stride_bytes & 0x3FFFF) >> 4) << 32 | uint64_t{1} << 62;
}

// wgmma.mma_async, D (fp32, 64 x N over the warpgroup) += A (64 x 16) * B (16 x N).
//  _SS: A and B from shared memory through descriptors, both K-major (imm-trans-a =
//       imm-trans-b = 0); `accumulate` = 0 computes D = A*B (the scale-d predicate).
//  _RS: A from registers (four .b32 registers holding 8 fp16/bf16 values, the fragment
//       layout of the PTX figure "WGMMA .m64nNk16 register fragment layout for matrix A"),
//       B from shared memory MN-major (imm-trans-b = 1); always accumulates.
// The operand lists are long and regular: generated, then checked against the syntax
//   wgmma.mma_async.sync.aligned.shape.f32.ab.ab d, a-desc, b-desc, scale-d, imm-scale-a,
//       imm-scale-b, imm-trans-a, imm-trans-b;
//   wgmma.mma_async.sync.aligned.shape.f32.ab.ab d, a, b-desc, scale-d, imm-scale-a,
//       imm-scale-b, imm-trans-b;
#define FTX_WGMMA_M64N128K16_SS(NAME, AB)                                                         \
  __device__ __forceinline__ void NAME(float (&d)[64], uint64_t a_desc,                           \
                                       uint64_t b_desc, int accumulate) {                         \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                     \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32" AB " {"                            \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11,"                              \
                 "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23,"                    \
                 "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35,"                    \
                 "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"                    \
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59,"                    \
                 "%60, %61, %62, %63"                                                             \
                 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"                                               \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),          \
                 "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),        \
                 "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),    \
                 "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),    \
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),    \
                 "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),    \
                 "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),    \
                 "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),    \
                 "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),    \
                 "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),    \
                 "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                               \
               : "l"(a_desc), "l"(b_desc), "r"(accumulate)                                        \
               : "memory");                                                                       \
  }

#define FTX_WGMMA_M64N128K16_RS(NAME, AB)                                                         \
  __device__ __forceinline__ void NAME(float (&d)[64], const uint32_t (&a)[4],                    \
                                       uint64_t b_desc) {                                         \
    asm volatile("{\n"                                                                            \
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32" AB " {"                            \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11,"                              \
                 "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23,"                    \
                 "%24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35,"                    \
                 "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47,"                    \
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59,"                    \
                 "%60, %61, %62, %63"                                                             \
                 "}, {%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n}\n"                                 \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),          \
                 "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),        \
                 "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),    \
                 "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),    \
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),    \
                 "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),    \
                 "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),    \
                 "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),    \
                 "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]),    \
                 "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]),    \
                 "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])                               \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc)                          \
               : "memory");                                                                       \
  }

#define FTX_WGMMA_M64N64K16_RS(NAME, AB)                                                          \
  __device__ __forceinline__ void NAME(float (&d)[32], const uint32_t (&a)[4],                    \
                                       uint64_t b_desc) {                                         \
    asm volatile("{\n"                                                                            \
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32" AB " {"                             \
                 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11,"                              \
                 "%12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23,"                    \
                 "%24, %25, %26, %27, %28, %29, %30, %31"                                         \
                 "}, {%32, %33, %34, %35}, %36, 1, 1, 1, 1;\n}\n"                                 \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),          \
                 "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]),        \
                 "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]),    \
                 "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),    \
                 "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]),    \
                 "+f"(d[30]), "+f"(d[31])                                                         \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b_desc)                          \
               : "memory");                                                                       \
  }

FTX_WGMMA_M64N128K16_SS(wgmma_m64n128k16_ss_f16, ".f16.f16")
FTX_WGMMA_M64N128K16_SS(wgmma_m64n128k16_ss_bf16, ".bf16.bf16")
FTX_WGMMA_M64N128K16_RS(wgmma_m64n128k16_rs_f16, ".f16.f16")
FTX_WGMMA_M64N128K16_RS(wgmma_m64n128k16_rs_bf16, ".bf16.bf16")
FTX_WGMMA_M64N64K16_RS(wgmma_m64n64k16_rs_f16, ".f16.f16")
FTX_WGMMA_M64N64K16_RS(wgmma_m64n64k16_rs_bf16, ".bf16.bf16")

#undef FTX_WGMMA_M64N128K16_SS
#undef FTX_WGMMA_M64N128K16_RS
#undef FTX_WGMMA_M64N64K16_RS

// D (64 x 128) = or += A * B, both from shared memory (S = Q K^T).
template <bool BF16>
__device__ __forceinline__ void wgmma_ss(float (&d)[64], uint64_t a_desc, uint64_t b_desc,
                                         int accumulate) {
  if constexpr (BF16) {
    wgmma_m64n128k16_ss_bf16(d, a_desc, b_desc, accumulate);
  } else {
    wgmma_m64n128k16_ss_f16(d, a_desc, b_desc, accumulate);
  }
}

// D (64 x 2N) += A (registers) * B (shared, MN-major) (O += P V), N = 32 or 64 registers.
template <bool BF16, int N>
__device__ __forceinline__ void wgmma_rs(float (&d)[N], const uint32_t (&a)[4], uint64_t b_desc) {
  static_assert(N == 32 || N == 64, "value tile of 64 or 128 columns");
  if constexpr (N == 64) {
    if constexpr (BF16) {
      wgmma_m64n128k16_rs_bf16(d, a, b_desc);
    } else {
      wgmma_m64n128k16_rs_f16(d, a, b_desc);
    }
  } else {
    if constexpr (BF16) {
      wgmma_m64n64k16_rs_bf16(d, a, b_desc);
    } else {
      wgmma_m64n64k16_rs_f16(d, a, b_desc);
    }
  }
}

}  // namespace fasttx::attention::sm90
