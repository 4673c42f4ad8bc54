// Hopper warpgroup MMA (wgmma) primitives for the GEMV: f32 += f16 A (registers) x f16 B (shared
// memory, K-major, no swizzle), and for the FP8 x FP8 GEMM (both operands in shared memory, 128-byte
// swizzle). sm_90a only; CUDA sources only.
//
// A warpgroup (4 consecutive warps) computes a 64 x N tile: warp w of the group holds rows
// 16w .. 16w + 15 of A in the m16n8k16 register layout (lane (g, t): a[0] = row g, k {2t, 2t+1};
// a[1] = row g + 8, same k; a[2] = row g, k {2t+8, 2t+9}; a[3] = row g + 8, same k) and the same
// rows of D: d[4i + j] = D[row g + 8 * (j / 2), col 8i + 2t + j % 2].
// B is read through a descriptor: 8 x 16-byte "core matrices" (8 columns n, 8 consecutive k
// each), the two k halves of a column group `lbo` bytes apart, column groups `sbo` apart.
#ifndef LMHEAD_KERNELS_CUDA_WGMMA_CUH_
#define LMHEAD_KERNELS_CUDA_WGMMA_CUH_

#include <cuda_fp8.h>

#include <cstdint>

namespace lmhead::cuda {

// Two E4M3 codes (low byte first) -> fp16x2 (low half first), exact: the FP8 x fp16 kernels'
// weight decode (any GPU).
__device__ __forceinline__ uint32_t Fp8x2ToHalf2(uint32_t two) {
  const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(static_cast<__nv_fp8x2_storage_t>(two & 0xffffu), __NV_E4M3);
  return static_cast<uint32_t>(h.x) | (static_cast<uint32_t>(h.y) << 16);
}

// An L2 cache policy for data a kernel reads once (a GEMV's weights): its lines are the first the
// L2 evicts, so that what stays there is what the kernels use again (activations, partial
// statistics, stored logits). For loads with .L2::cache_hint (sm_80 and later).
__device__ __forceinline__ uint64_t EvictFirstPolicy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define LMHEAD_HAS_WGMMA 1
#else
#define LMHEAD_HAS_WGMMA 0
#endif

// A kernel's dynamic shared memory `smem` (the extern __shared__ array) rounded up to a 1024-byte
// boundary, as the 128-byte-swizzled boxes need. Pointer arithmetic on the array itself (no round
// trip through an integer) lets the compiler see that every access through the result is to
// shared memory (LDS / STS rather than generic loads and stores).
__device__ __forceinline__ uint8_t* AlignShared1024(uint8_t* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return smem + ((1024u - (addr & 1023u)) & 1023u);
}

// Shared-memory matrix descriptor, no swizzle: address, leading (k) and stride (n) byte offsets.
__device__ __forceinline__ uint64_t SmemDescriptor(const void* smem, uint32_t lbo, uint32_t sbo) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return uint64_t{(addr >> 4) & 0x3fffu} | (uint64_t{(lbo >> 4) & 0x3fffu} << 16) |
         (uint64_t{(sbo >> 4) & 0x3fffu} << 32);
}

// Shared-memory matrix descriptor for a K-major tile written with the 128-byte swizzle (TMA's
// CU_TENSOR_MAP_SWIZZLE_128B): rows of 128 bytes, 8-row atoms 1024 bytes apart, the tile 1024-byte
// aligned; `smem` may point 32 k-bytes into it per k32 step (the swizzle is applied on addresses).
__device__ __forceinline__ uint64_t SwizzledDescriptor(const void* smem) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  return uint64_t{(addr >> 4) & 0x3fffu} | (uint64_t{1} << 16) | (uint64_t{1024 >> 4} << 32) | (uint64_t{1} << 62);
}

// Orders register writes before the wgmma that reads them (and accumulator reads after a wait).
__device__ __forceinline__ void WgmmaFence() {
#if LMHEAD_HAS_WGMMA
  asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#if LMHEAD_HAS_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
// Waits until at most `Pending` committed wgmma groups of this warp are still running.
template <int Pending>
__device__ __forceinline__ void WgmmaWait() {
#if LMHEAD_HAS_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(Pending) : "memory");
#endif
}
// Makes this thread's generic-proxy shared-memory writes (stores, cp.async) visible to wgmma's
// async proxy; follow with a barrier before the wgmma.
__device__ __forceinline__ void FenceSharedForAsyncProxy() {
#if LMHEAD_HAS_WGMMA
  asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
// Keeps the compiler from moving accesses of `r` across this point (wgmma reads and writes its
// registers asynchronously, which the compiler does not see).
__device__ __forceinline__ void PinRegister(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void PinRegister(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }
// After a main loop: waits for all of this warp's MMAs, so that the accumulators (the wgmma D
// fragments, acc[i][0..3]) hold their final sums when read next.
template <int kFragments>
__device__ __forceinline__ void WaitForAccumulators(float (&acc)[kFragments][4]) {
  WgmmaWait<0>();
#pragma unroll
  for (int i = 0; i < kFragments; ++i) {
#pragma unroll
    for (int r = 0; r < 4; ++r) PinRegister(acc[i][r]);
  }
}

// d[N / 2] += A (64 x 16, registers) x B (16 x N, descriptor b). Defined for N = 16, 24, 32, 48, 64 and 128.
template <int N>
__device__ __forceinline__ void Wgmma(float* d, const uint32_t (&a)[4], uint64_t b);

#if LMHEAD_HAS_WGMMA
template <>
__device__ __forceinline__ void Wgmma<16>(float* d, const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %13, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, %12, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

template <>
__device__ __forceinline__ void Wgmma<24>(float* d, const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %17, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n24k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11}, {%12, %13, %14, %15}, %16, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

template <>
__device__ __forceinline__ void Wgmma<32>(float* d, const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, {%16, %17, %18, %19}, %20, "
      "p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<48>(float* d, const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %29, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n48k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23}, {%24, %25, %26, %27}, %28, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
template <>
__device__ __forceinline__ void Wgmma<64>(float* d, const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

template <>
__device__ __forceinline__ void Wgmma<128>(float* d, const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}

// d[32] (+)= A (64 x 32 E4M3, descriptor a) x B (32 x 64 E4M3, descriptor b), both K-major in
// shared memory; accumulate = false overwrites d. D layout as Wgmma<64>. The tensor cores add into
// d with less than fp32 precision (~14 bits kept): sum a few MMAs at a time into a fresh d and add
// that into fp32 registers.
__device__ __forceinline__ void WgmmaE4m3(float* d, uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "%32, %33, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "l"(a), "l"(b), "r"(accumulate ? 1 : 0));
}

// The same with N = 128 (d[64], D layout as Wgmma<128>).
__device__ __forceinline__ void WgmmaE4m3N128(float* d, uint64_t a, uint64_t b, bool accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
      "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "%64, %65, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "l"(a), "l"(b), "r"(accumulate ? 1 : 0));
}

// Warp-specialized kernels: a warpgroup gives up registers (DecreaseRegisters) so that others can
// take them (IncreaseRegisters); every warp of the warpgroup executes it.
template <int N>
__device__ __forceinline__ void IncreaseRegisters() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(N));
}
template <int N>
__device__ __forceinline__ void DecreaseRegisters() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(N));
}

// Shared-memory barrier (mbarrier) completed by the bulk copies of BulkCopyToShared.
__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// One thread initializes; the block then synchronizes before any thread uses the barrier.
__device__ __forceinline__ void BarrierInit(uint64_t* barrier, int arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SharedAddress(barrier)), "r"(arrivals) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
// Copies `bytes` (a multiple of 16; both addresses 16-byte aligned) from global to shared memory
// on the copy engine, completing that many of `barrier`'s transaction bytes (expected by an
// earlier BarrierExpectBytes).
__device__ __forceinline__ void BulkCopyBytesToShared(void* dst, const void* src, uint32_t bytes, uint64_t* barrier) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   SharedAddress(dst)),
               "l"(src), "r"(bytes), "r"(SharedAddress(barrier))
               : "memory");
}
// Copies the box at (x, y) of a 2-D tensor map to shared memory on the copy engine (what the map
// says: box size, swizzle, zeros outside the tensor), completing `barrier`'s transaction bytes;
// arrive with expect_tx on the barrier first. `map` is a __grid_constant__ kernel parameter.
__device__ __forceinline__ void TensorCopyToShared(void* dst, const void* map, int x, int y, uint64_t* barrier) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" ::"r"(
          SharedAddress(dst)),
      "l"(map), "r"(x), "r"(y), "r"(SharedAddress(barrier))
      : "memory");
}
// The same with an L2 cache policy (EvictFirstPolicy: for data read once).
__device__ __forceinline__ void TensorCopyToShared(void* dst, const void* map, int x, int y, uint64_t* barrier,
                                                   uint64_t policy) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, "
      "%3}], [%4], %5;" ::"r"(SharedAddress(dst)),
      "l"(map), "r"(x), "r"(y), "r"(SharedAddress(barrier)), "l"(policy)
      : "memory");
}
__device__ __forceinline__ void BarrierExpectBytes(uint64_t* barrier, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(SharedAddress(barrier)), "r"(bytes)
               : "memory");
}
// The same copy with its own arrival: the barrier's phase completes when the bytes have landed.
__device__ __forceinline__ void BulkCopyToShared(void* dst, const void* src, uint32_t bytes, uint64_t* barrier) {
  BarrierExpectBytes(barrier, bytes);
  BulkCopyBytesToShared(dst, src, bytes, barrier);
}
// One arrival on the barrier (its phase completes after the count given to BarrierInit).
__device__ __forceinline__ void BarrierArrive(uint64_t* barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(SharedAddress(barrier)) : "memory");
}
// Waits until the barrier's phase of parity `parity` (0 for its first, 1 for its second, ...)
// has completed.
__device__ __forceinline__ void BarrierWait(uint64_t* barrier, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(SharedAddress(barrier)), "r"(parity)
        : "memory");
  } while (!done);
}
#else
__device__ __forceinline__ void BarrierInit(uint64_t*, int) { __trap(); }
__device__ __forceinline__ void BulkCopyToShared(void*, const void*, uint32_t, uint64_t*) { __trap(); }
__device__ __forceinline__ void BulkCopyBytesToShared(void*, const void*, uint32_t, uint64_t*) { __trap(); }
__device__ __forceinline__ void TensorCopyToShared(void*, const void*, int, int, uint64_t*) { __trap(); }
__device__ __forceinline__ void TensorCopyToShared(void*, const void*, int, int, uint64_t*, uint64_t) { __trap(); }
__device__ __forceinline__ void BarrierExpectBytes(uint64_t*, uint32_t) { __trap(); }
__device__ __forceinline__ void BarrierArrive(uint64_t*) { __trap(); }
__device__ __forceinline__ void WgmmaE4m3(float*, uint64_t, uint64_t, bool) { __trap(); }
__device__ __forceinline__ void WgmmaE4m3N128(float*, uint64_t, uint64_t, bool) { __trap(); }
template <int N>
__device__ __forceinline__ void IncreaseRegisters() {}
template <int N>
__device__ __forceinline__ void DecreaseRegisters() {}
__device__ __forceinline__ void BarrierWait(uint64_t*, uint32_t) { __trap(); }
template <int N>
__device__ __forceinline__ void Wgmma(float*, const uint32_t (&)[4], uint64_t) {
  __trap();  // not built for sm_90a: the launcher never picks a wgmma kernel there
}
#endif

}  // namespace lmhead::cuda

#endif  // LMHEAD_KERNELS_CUDA_WGMMA_CUH_
