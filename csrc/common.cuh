// What every attention kernel of the CUDA backend shares: the host/device qualifier, element
// conversions, the DropAttention key mask (Philox), and the cooperative tile copies between global
// and shared memory.
//
// Everything here is plain C++ when no CUDA compiler reads it, so that the host build
// (csrc/host_launch.cpp) runs the kernels' own per-thread code on the CPU. No torch header is
// included: nvcc compiles csrc/cuda_launch.cu on its own (tests/test_cuda_backend_nvcc.py).
#pragma once

#include <cstdint>
#include <cstring>

#include <cmath>

#if defined(__CUDACC__)
#define STTR_HD __host__ __device__ __forceinline__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#else
#define STTR_HD inline
#endif

namespace sttr {

// Part of DropAttention's function, not a guard (docs/network.md §8).
constexpr double kDropAttentionEps = 1e-8;
constexpr double kLog2e = 1.4426950408889634;

// --- math in the accumulator type ----------------------------------------------------------------

// On the device ex2.approx.ftz (one MUFU.EX2): exp2f adds a fix-up for results below 2^-126,
// which flush to 0 here, where weights are lost anyway (docs/kernels.md §8).
STTR_HD float exp2_acc(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return std::exp2(x);
#endif
}
STTR_HD double exp2_acc(double x) {
#if defined(__CUDA_ARCH__)
  return exp2(x);
#else
  return std::exp2(x);
#endif
}
// On the device lg2.approx (one MUFU.LG2, absolute error about 2^-22 in log2, below float's
// rounding of the statistic it enters) times ln 2: logf's accurate path took some twenty
// instructions. x is a denominator here, at least 1e-8: normal, so the flush to zero never bites.
STTR_HD float log_acc(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y * 0.693147180559945f;
#else
  return std::log(x);
#endif
}
STTR_HD double log_acc(double x) {
#if defined(__CUDA_ARCH__)
  return log(x);
#else
  return std::log(x);
#endif
}
// fmax: one FMNMX on the device (a comparison and a select took two). Of a NaN and a number it
// gives the number, where a > b ? a : b gave the NaN; a NaN score still makes its row NaN through
// its exponential.
template <typename A>
STTR_HD A max_acc(A a, A b) {
#if defined(__CUDA_ARCH__)
  return fmax(a, b);
#else
  return std::fmax(a, b);
#endif
}
template <typename A>
STTR_HD A neg_inf() { return -static_cast<A>(INFINITY); }

// The float16 scaling of the temporal forward (docs/kernels.md §8): for the largest of a row's
// kept weights ``largest`` (>= 0, finite), ``up`` = 2^(127 - e) and ``down`` = 2^(e - 127), e its
// biased exponent but at least 1, so that largest·up lies in [1, 2) and both products are exact;
// largest = 0 (no kept key) or a subnormal gives up = 2^126 and down = 2^-126, both finite, so a
// scaled weight is never inf and never meets a 0 to make NaN.
STTR_HD uint32_t float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
#endif
}
STTR_HD float bits_float(uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
#endif
}
STTR_HD void power_of_two_scales(float largest, float& up, float& down) {
  const uint32_t biased = float_bits(largest) >> 23;
  const uint32_t exponent = biased > 1u ? biased : 1u;
  up = bits_float((254u - exponent) << 23);
  down = bits_float(exponent << 23);
}

// 1 / x. On the device a float division is a fast path plus a slow-path subroutine for the
// IEEE corner cases, and the call made ptxas spill; __fdividef is within 2 ulp for the
// denominators here (K + 1e-8·L lies in [1e-8, 2^126)).
STTR_HD float reciprocal(float x) {
#if defined(__CUDA_ARCH__)
  return __fdividef(1.0f, x);
#else
  return 1.0f / x;
#endif
}
STTR_HD double reciprocal(double x) { return 1.0 / x; }

// --- the DropAttention key mask (docs/kernels.md §6) ---------------------------------------------

STTR_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// The first output word of Philox-4x32 with 10 rounds, as triton.language.philox computes it:
// key (seed low word, seed high word), counter (c0, c1, c2, c3).
STTR_HD uint32_t philox_first_word(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const uint32_t old0 = c0, old2 = c2;
    c0 = mulhi32(0xCD9E8D57u, old2) ^ c1 ^ k0;
    c2 = mulhi32(0xD2511F53u, old0) ^ c3 ^ k1;
    c1 = 0xCD9E8D57u * old2;
    c3 = 0xD2511F53u * old0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// Whether the key at ``flat_index`` is kept: counter (index low, index high, offset low, offset
// high); the word becomes u in [0, 1) as triton.language.uint_to_uniform_float does (the int32
// view, negatives complemented, times 4.6566127342e-10 in float32); kept when u >= p, with p in
// float32 as a Triton kernel receives it.
STTR_HD bool keep_key(uint64_t seed, uint64_t call_offset, uint64_t flat_index, float p) {
  const uint32_t word = philox_first_word(seed, static_cast<uint32_t>(flat_index),
                                          static_cast<uint32_t>(flat_index >> 32),
                                          static_cast<uint32_t>(call_offset),
                                          static_cast<uint32_t>(call_offset >> 32));
  int32_t x = static_cast<int32_t>(word);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * 4.6566127342e-10f >= p;
}

struct MaskParams {
  const int64_t* rng_state;  // (seed, call offset), read where the kernel runs
  bool* mask;                // contiguous, numel entries
  int64_t numel;
  float p;
};

// One keep decision per thread and flat index; ``index`` is the thread's global index.
STTR_HD void materialize_key_mask(const MaskParams& params, int64_t index) {
  if (index < params.numel) {
    params.mask[index] = keep_key(static_cast<uint64_t>(params.rng_state[0]),
                                  static_cast<uint64_t>(params.rng_state[1]),
                                  static_cast<uint64_t>(index), params.p);
  }
}

// --- tensors and tiles ---------------------------------------------------------------------------

enum class Dtype { float16, bfloat16, float32, float64 };

#if !defined(__CUDACC__)
// The host build's float16 element (GCC and Clang on x86-64 and AArch64): conversions round to
// nearest even like __float2half_rn, with float16's range and subnormals, so the host build runs
// the temporal kernels' float16 branch with the device's rounding of P (docs/kernels.md §11).
using HostHalf = _Float16;
#endif

// A (N', C, T, V) tensor: its data, element strides (int64 like every offset) and element type.
// The type is a field rather than a template parameter: it matters only where elements are
// loaded and stored, so every kernel compiles once per head split instead of once per dtype.
struct Strided {
  void* data;
  int64_t stride_n, stride_c, stride_t, stride_v;
  Dtype dtype;
};

// Shared-memory row pitches. Rows that each thread reads on its own (a column of the spatial
// backward's weights) take an odd number of elements, so that threads reading consecutive rows at
// the same column hit distinct banks. Rows of q, k, v and dO tiles are read by whole warps at
// once, every lane the same row (or, spatially, the rows of two frames): a multiple of 4
// elements, so that the exact instantiations read them as 16-byte vectors (one LDS.128 per four
// channels), and not of 32, so that two frames' rows fall on different banks.
STTR_HD int odd_pitch(int dims) { return dims | 1; }
STTR_HD int vector_pitch(int dims) {
  const int multiple = (dims + 3) / 4 * 4;
  return multiple % 32 ? multiple : multiple + 4;
}

// Steps a linear index through a box of extents (inner, middle, outer), fastest first, by a fixed
// stride: the mixed-radix digits of the stride are added with carries, so the copy loops need no
// division per element.
struct BoxWalk {
  int inner, middle;        // extents of the two fastest axes
  int step0, step1, step2;  // the stride's digits
  int i0, i1, i2;           // current position

  STTR_HD BoxWalk(int start, int stride, int inner_extent, int middle_extent)
      : inner(inner_extent), middle(middle_extent),
        step0(stride % inner_extent), step1((stride / inner_extent) % middle_extent),
        step2(stride / (inner_extent * middle_extent)),
        i0(start % inner_extent), i1((start / inner_extent) % middle_extent),
        i2(start / (inner_extent * middle_extent)) {}

  STTR_HD void advance() {
    i0 += step0;
    const int carry0 = i0 >= inner;
    i0 -= carry0 * inner;
    i1 += step1 + carry0;
    const int carry1 = i1 >= middle;
    i1 -= carry1 * middle;
    i2 += step2 + carry1;
  }
};

}  // namespace sttr
