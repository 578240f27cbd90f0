// int4 group-wise weight-only matrix-vector product for batch-1 decode, on tensor cores.
//
// y[n] = sum_k x[k] * s[n][k/128] * (c[n][k] - z[n][k/128]) for codes c stored by
// inferlab.quant.rtn.kernel_order (group 128: word j of a group holds, in nibble i, the code of
// column 16*i + j), packed two per byte, row-major [N, K/2].
//
// Why tensor cores at one row: the CUDA-core form (the Triton kernel, inferlab.quant.kernels)
// spends a multiply-add per code on top of the unpacking. Here a warp feeds 16 weight rows to
// mma.m16n8k16 as its A operand and the activation as B (all 8 columns of B the same: one is
// needed), so the products cost 1/64 of an instruction per code and the unpacking is most of what
// remains: 2.1-2.3 instructions per code against the Triton kernel's 3.4-3.7
// (data/results/quant-ncu-cuda-h200.json). Marlin (Frantar et al. 2024) does the same for batch
// 1-16 with weights pre-shuffled into fragment order. No shuffle is needed here: a dot product may
// take its K in any order if both operands agree, so each lane's A pairs are two adjacent columns
// of one nibble of two adjacent words (one byte permute), and its B pairs are the same two
// adjacent columns of x.
//
// A code becomes (bias + c) exactly in bf16 (bias 128) or fp16 (bias 1024) by writing it into the
// mantissa of the bias (one AND-OR per two codes), and (c - z) by one packed add of -(bias + z);
// the scale is applied in fp32 to each group's sum.
//
// Work: one block per 16 output rows; its warps split K, GS groups each. Every warp requests its
// weights (up to 8 groups, else a ring of 4), scales and zero points before it waits for the
// previous kernel (programmatic dependent launch, see inferlab.pdl): those bytes do not depend on
// it. After the wait it stages its slice of x in shared memory. Measured on an H200
// (data/results/quant-cuda-h200.json): 0.99-1.14x the Triton kernel per 8B layer, and the graphed
// 8B batch-1 step 1.12x faster (2.02 -> 1.80 ms).
//
// Two lessons kept in the code: x must be read through the coherent path, since under PDL the
// kernel that writes it can still run when this one starts (a read-only-cache load of x made the
// graphed step's logits wrong); and the weights through plain loads, since ptxas moves .nc loads
// after griddepcontrol.wait. Variants that lost on an H200: a persistent form (blocks walking
// tiles, the next tile's weights streamed during this one) was 30-50% slower on the large layers;
// K split over several blocks per tile (the last block adding their sums in a fixed order) never
// won a layer and made the 8B step 5% slower; taking the zero point out with each group's sum of x
// (10% fewer instructions) was no faster. The last two are in data/results/quant-cuda-variants-h200.json.

#include <cuda_runtime.h>
#include <stdint.h>

namespace {

template <bool BF16>
struct Format;
template <>
struct Format<true> {
  static constexpr uint32_t kMagic = 0x43004300u;  // bf16 pair (128, 128)
  static constexpr uint32_t kOnes = 0x3F803F80u;   // bf16 pair (1, 1)
  static constexpr float kBias = 128.0f;
};
template <>
struct Format<false> {
  static constexpr uint32_t kMagic = 0x64006400u;  // fp16 pair (1024, 1024)
  static constexpr uint32_t kOnes = 0x3C003C00u;   // fp16 pair (1, 1)
  static constexpr float kBias = 1024.0f;
};

template <bool BF16>
__device__ __forceinline__ void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  if constexpr (BF16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// Weights, scales and zero points: read once, and requested before the wait for the previous
// kernel. Plain (coherent) loads: ptxas moves read-only-cache (.nc) loads past griddepcontrol.wait,
// which would leave the bytes unrequested until the previous kernel has finished.
__device__ __forceinline__ uint4 load_streaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 load_streaming(const uint2* p) {
  uint2 v;
  asm volatile("ld.global.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t load_streaming(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.global.L1::no_allocate.u32 %0, [%1];" : "=r"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t load_streaming(const uint16_t* p) {
  uint16_t v;
  asm volatile("ld.global.L1::no_allocate.u16 %0, [%1];" : "=h"(v) : "l"(p));
  return v;
}

__device__ __forceinline__ void wait_previous_kernel(bool pdl) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (pdl) {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
  }
#endif
}

__device__ __forceinline__ float half_to_float(uint16_t h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

__device__ __forceinline__ uint16_t float_to(float v, bool bf16) {
  uint16_t h;
  if (bf16) {
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
  } else {
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  }
  return h;
}

// Scales (fp16, two per word) and zero points (bytes, four per word) of GS consecutive groups of
// one row, kept packed until used.
template <int GS>
struct GroupConstants {
  uint32_t s[GS / 2];
  uint32_t z[(GS + 3) / 4];
  __device__ __forceinline__ float scale(int q) const {
    return half_to_float(static_cast<uint16_t>(s[q / 2] >> (16 * (q % 2))));
  }
  __device__ __forceinline__ uint32_t zero(int q) const { return (z[q / 4] >> (8 * (q % 4))) & 0xFFu; }
};

template <int GS>
__device__ __forceinline__ GroupConstants<GS> load_constants(const uint16_t* s, const uint8_t* z) {
  static_assert(GS == 2 || GS == 4 || GS % 8 == 0, "GS is 2, 4 or a multiple of 8");
  GroupConstants<GS> c;
  if constexpr (GS == 2) {
    c.s[0] = load_streaming(reinterpret_cast<const uint32_t*>(s));
    c.z[0] = load_streaming(reinterpret_cast<const uint16_t*>(z));
  } else if constexpr (GS == 4) {
    const uint2 v = load_streaming(reinterpret_cast<const uint2*>(s));
    c.s[0] = v.x, c.s[1] = v.y;
    c.z[0] = load_streaming(reinterpret_cast<const uint32_t*>(z));
  } else {
#pragma unroll
    for (int i = 0; i < GS / 8; ++i) {
      const uint4 v = load_streaming(reinterpret_cast<const uint4*>(s) + i);
      c.s[4 * i] = v.x, c.s[4 * i + 1] = v.y, c.s[4 * i + 2] = v.z, c.s[4 * i + 3] = v.w;
      const uint2 u = load_streaming(reinterpret_cast<const uint2*>(z) + i);
      c.z[2 * i] = u.x, c.z[2 * i + 1] = u.y;
    }
  }
  return c;
}

// x is written by the kernel before this one, which may still run when this one starts
// (programmatic dependent launch): read it through the coherent path, never the read-only cache.
__device__ __forceinline__ uint4 load_activation(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p) : "memory");
  return v;
}

// (c - z) for the two codes in a pair made by mantissa_pair: (bias + c) + (-(bias + z)), exact.
template <bool BF16>
__device__ __forceinline__ uint32_t minus_zero(uint32_t pair, uint32_t negative_zero) {
  uint32_t d;
  if constexpr (BF16) {
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(pair), "r"(Format<true>::kOnes), "r"(negative_zero));
  } else {
    asm("add.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(pair), "r"(negative_zero));
  }
  return d;
}

// Nibble m of two words as a pair of (bias + code) in the activation's type: low half from a, high from b.
template <bool BF16>
__device__ __forceinline__ uint32_t mantissa_pair(uint32_t a, uint32_t b, int m) {
  const int byte = m >> 1;
  uint32_t p = __byte_perm(a, b, byte | ((4 + byte) << 8));  // byte m/2 of a in bits 0-7, of b in 16-23
  if (m & 1) p >>= 4;
  uint32_t d;  // (p & mask) | magic as one instruction (the compiler splits it in two)
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(d) : "r"(p), "r"(0x000F000Fu), "r"(Format<BF16>::kMagic));
  return d;
}

constexpr int kMaxWarps = 16;
// warps per block at most: more groups per warp take more registers
__host__ __device__ constexpr int max_warps(int gs) { return gs >= 16 ? 8 : kMaxWarps; }
// groups of weights in flight per warp: all of them up to 8 (requested before the wait), else a ring of 4
// (a deeper ring costs registers and lost on the 8B down projection)
__host__ __device__ constexpr int depth(int gs) { return gs <= 8 ? gs : 4; }

// One group (128 columns) of rows g and g+8 of a tile against x: sum of (c - z) * x per row.
// xg: this lane's activations of the group in shared memory (x[16m + 4t .. 16m + 4t + 3] at xg[4m]).
template <bool BF16>
__device__ __forceinline__ void group_dot(const uint4& wl, const uint4& wh, uint32_t z_lo, uint32_t z_hi,
                                          const uint2* xg, float (&dot)[4]) {
  const uint32_t negative = BF16 ? 0xC300C300u : 0xE400E400u;  // -(bias) as a pair; the zero point is ORed in
  const uint32_t nz_lo = negative | (z_lo * 0x00010001u), nz_hi = negative | (z_hi * 0x00010001u);
#pragma unroll
  for (int m = 0; m < 8; ++m) {  // nibble m: columns 16m + 4t .. 16m + 4t + 3 of the group
    const uint2 xv = xg[4 * m];
    const uint32_t a0 = minus_zero<BF16>(mantissa_pair<BF16>(wl.x, wl.y, m), nz_lo);
    const uint32_t a1 = minus_zero<BF16>(mantissa_pair<BF16>(wh.x, wh.y, m), nz_hi);
    const uint32_t a2 = minus_zero<BF16>(mantissa_pair<BF16>(wl.z, wl.w, m), nz_lo);
    const uint32_t a3 = minus_zero<BF16>(mantissa_pair<BF16>(wh.z, wh.w, m), nz_hi);
    mma<BF16>(dot, a0, a1, a2, a3, xv.x, xv.y);
  }
}

// One block per 16 output rows; its warps split K, GS groups each. Every warp requests its first
// kDepth groups of weights, and all of its scales and zero points, before it waits for the previous
// kernel; then it copies its slice of x to shared memory (one round trip instead of one per group)
// and refills each group's slot with the group kDepth further on as it takes it.
template <bool BF16, int GS>
__global__ void __launch_bounds__(32 * max_warps(GS)) gemv_int4_kernel(const uint16_t* x,
                                                                   const uint4* __restrict__ w,
                                                                   const uint16_t* __restrict__ scales,
                                                                   const uint8_t* __restrict__ zeros,
                                                                   uint16_t* __restrict__ y, int K, bool pdl) {
  constexpr int D = depth(GS);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;  // mma fragment coordinates: A rows g and g+8, K pair t
  const int groups = K / 128;
  const int first_group = warp * GS;
  const size_t row_lo = static_cast<size_t>(blockIdx.x) * 16 + g, row_hi = row_lo + 8;

  // A operand: rows row_lo and row_hi, words 4t..4t+3 of each group (16 bytes; a group is 64)
  const uint4* wp = w + row_lo * (K / 32) + first_group * 4 + t;
  const size_t hi_offset = 8 * static_cast<size_t>(K / 32);
  uint4 lo[D], hi[D];
#pragma unroll
  for (int q = 0; q < D; ++q) {
    lo[q] = load_streaming(wp + 4 * q);
    hi[q] = load_streaming(wp + hi_offset + 4 * q);
  }
  const GroupConstants<GS> c_lo = load_constants<GS>(scales + row_lo * groups + first_group, zeros + row_lo * groups + first_group);
  const GroupConstants<GS> c_hi = load_constants<GS>(scales + row_hi * groups + first_group, zeros + row_hi * groups + first_group);

  wait_previous_kernel(pdl);

  // B operand: this warp's GS * 128 activations, staged in shared memory
  extern __shared__ uint4 x_shared[];  // GS * 16 per warp (sized at launch)
  uint4* mine = x_shared + warp * GS * 16;
  const uint4* xg = reinterpret_cast<const uint4*>(x + first_group * 128);
#pragma unroll
  for (int i = lane; i < GS * 16; i += 32) mine[i] = load_activation(xg + i);
  __syncwarp();
  const uint2* xs = reinterpret_cast<const uint2*>(mine) + t;

  float acc_lo = 0.f, acc_hi = 0.f;
#pragma unroll
  for (int q = 0; q < GS; ++q) {
    const uint4 wl = lo[q % D], wh = hi[q % D];
    if (q + D < GS) {
      lo[q % D] = load_streaming(wp + 4 * (q + D));
      hi[q % D] = load_streaming(wp + hi_offset + 4 * (q + D));
    }
    float dot[4] = {0.f, 0.f, 0.f, 0.f};
    group_dot<BF16>(wl, wh, c_lo.zero(q), c_hi.zero(q), xs + 32 * q, dot);
    acc_lo += c_lo.scale(q) * dot[0];  // D row g (every column holds the same sum)
    acc_hi += c_hi.scale(q) * dot[2];  // D row g + 8
  }

  // the warps' partial sums, added in a fixed order
  __shared__ float partial[max_warps(GS)][16];
  if (t == 0) {
    partial[warp][g] = acc_lo;
    partial[warp][g + 8] = acc_hi;
  }
  __syncthreads();
  if (threadIdx.x < 16) {
    float total = 0.f;
    for (int i = 0; i < static_cast<int>(blockDim.x >> 5); ++i) total += partial[i][threadIdx.x];
    y[static_cast<size_t>(blockIdx.x) * 16 + threadIdx.x] = float_to(total, BF16);
  }
}

template <bool BF16, int GS>
cudaError_t launch(const void* x, const void* w, const void* s, const void* z, void* y, int N, int K, bool pdl,
                   cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(N / 16);
  config.blockDim = dim3(32 * (K / (128 * GS)));
  config.dynamicSmemBytes = (K / 128) * 256;  // the block's activations: K bf16/fp16
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&config, gemv_int4_kernel<BF16, GS>, static_cast<const uint16_t*>(x),
                            static_cast<const uint4*>(w), static_cast<const uint16_t*>(s),
                            static_cast<const uint8_t*>(z), static_cast<uint16_t*>(y), K, pdl);
}

template <bool BF16>
cudaError_t launch_gs(const void* x, const void* w, const void* s, const void* z, void* y, int N, int K, int gs,
                      bool pdl, cudaStream_t stream) {
  switch (gs) {
    case 2: return launch<BF16, 2>(x, w, s, z, y, N, K, pdl, stream);
    case 4: return launch<BF16, 4>(x, w, s, z, y, N, K, pdl, stream);
    case 8: return launch<BF16, 8>(x, w, s, z, y, N, K, pdl, stream);
    default: return launch<BF16, 16>(x, w, s, z, y, N, K, pdl, stream);
  }
}

}  // namespace

extern "C" {

// 0 on success, else a cudaError_t, or -1 for a shape the kernel does not take. The caller checks
// shapes first (inferlab.quant.cuda_gemv): N % 16 == 0, gs in {2, 4, 8, 16}, K % (128 * gs) == 0 and
// K / (128 * gs) <= max_warps(gs).
int inferlab_gemv_int4(const void* x, const void* w, const void* s, const void* z, void* y, int N, int K, int gs,
                       int bf16, int pdl, void* stream) {
  if (N % 16 != 0 || (gs != 2 && gs != 4 && gs != 8 && gs != 16) || K % (128 * gs) != 0 ||
      K / (128 * gs) > max_warps(gs) || K > 24576)  // K > 24576: x would not fit 48 KB of shared memory
    return -1;
  const auto st = static_cast<cudaStream_t>(stream);
  return bf16 ? launch_gs<true>(x, w, s, z, y, N, K, gs, pdl, st) : launch_gs<false>(x, w, s, z, y, N, K, gs, pdl, st);
}

const char* inferlab_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // extern "C"
