// The problem description every attention kernel receives, the block context its per-thread code
// sees, and the cooperative copies of (token, channel) tiles between global and shared memory.
//
// A kernel is a struct of phases (see csrc/kernel_runner.cuh): the device runs them with a
// __syncthreads() between consecutive phases, the host build runs each phase for every thread of
// a block before the next. Whatever a thread keeps from one phase to the next lives in its
// ``Registers`` struct, whose arrays are indexed by constants only, so that they stay registers.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common.cuh"

namespace sttr {

struct Problem {
  // (N', C, T, V) tensors through their strides; those a kernel does not use are null.
  Strided qkv, out, grad_out, grad_qkv;
  void* stats;        // Λ per query, accumulator type, contiguous (sequences, H, tokens)
  void* delta;        // temporal backward: D = rowsum(dO ⊙ O) per query, laid out like stats
  const bool* keep;   // the key mask, laid out like stats, or null without DropAttention
  int64_t sequences;  // spatial: N'·T frames; temporal: N'·V joints
  int64_t T, V;
  int H, dkh, dvh;
  double scale;       // 1/sqrt(dkh), computed by the launcher in double, rounded to the accumulator type
  int block_tokens;   // spatial: frames per block; temporal: tokens per block (its thread count)
  int chunks;         // temporal: blocks per (sequence, head)
};

// Block indices, sequence and frame counts fit 31 bits (dispatch.h checks), so index arithmetic
// divides in 32 bits, inline: a 64-bit division is a subroutine call, whose calling convention
// made ptxas spill. Memory offsets are int64 throughout.
struct BlockContext {
  uint32_t block;
  int thread, threads;
  unsigned char* shared;
};

// Whether channel c of a tile with ``dims`` channels exists: always for the exact instantiations,
// checked for the generic one (whose loops run to its capacity).
template <bool EXACT>
STTR_HD bool live(int c, int dims) { return EXACT || c < dims; }

// The element of tensor ``x`` at ``offset`` in the accumulator type, and back. The device build
// takes float16, bfloat16 and float32 tensors, the host build float32 and float64 (their
// launchers admit no other). The kernels never write the tensors they read (outputs are separate
// buffers), so on the device the loads go through the read-only path (__ldg): ptxas may then move
// them past the stores, which spared the float32 kernels a hundred registers and their spills.
template <typename A>
STTR_HD A load_element(const Strided& x, int64_t offset) {
#if defined(__CUDA_ARCH__)
  switch (x.dtype) {
    case Dtype::float16:
      return __half2float(__ldg(static_cast<const __half*>(x.data) + offset));
    case Dtype::bfloat16:
      return __bfloat162float(__ldg(static_cast<const __nv_bfloat16*>(x.data) + offset));
    default:
      return __ldg(static_cast<const float*>(x.data) + offset);
  }
#else
  return x.dtype == Dtype::float64 ? static_cast<A>(static_cast<const double*>(x.data)[offset])
                                   : static_cast<A>(static_cast<const float*>(x.data)[offset]);
#endif
}

template <typename A>
STTR_HD void store_element(const Strided& x, int64_t offset, A value) {
#if defined(__CUDA_ARCH__)
  switch (x.dtype) {
    case Dtype::float16:
      static_cast<__half*>(x.data)[offset] = __float2half_rn(value);
      break;
    case Dtype::bfloat16:
      static_cast<__nv_bfloat16*>(x.data)[offset] = __float2bfloat16_rn(value);
      break;
    default:
      static_cast<float*>(x.data)[offset] = value;
  }
#else
  if (x.dtype == Dtype::float64) {
    static_cast<double*>(x.data)[offset] = static_cast<double>(value);
  } else {
    static_cast<float*>(x.data)[offset] = static_cast<float>(value);
  }
#endif
}

// Calls ``body(i0, i1, i2)`` for every point of the box [0, n0) x [0, n1) x [0, n2), i0 fastest,
// the block's threads taking consecutive points: neighbouring threads get neighbouring i0.
template <typename Body>
STTR_HD void walk_box(int n0, int n1, int n2, const BlockContext& ctx, Body body) {
  const int total = n0 * n1 * n2;
  BoxWalk walk(ctx.thread, ctx.threads, n0, n1);
#pragma unroll 1
  for (int e = ctx.thread; e < total; e += ctx.threads, walk.advance()) body(walk.i0, walk.i1, walk.i2);
}

// How many phases a kernel runs: fixed (Kernel::kPhases > 0) or set by the problem.
template <class Kernel>
STTR_HD int phase_count(const Problem& p) {
  if constexpr (Kernel::kPhases > 0) {
    return Kernel::kPhases;
  } else {
    return Kernel::phases(p);
  }
}

// Bytes of shared memory, each region aligned to 16 bytes.
STTR_HD size_t align16(size_t bytes) { return (bytes + 15) & ~static_cast<size_t>(15); }

}  // namespace sttr
