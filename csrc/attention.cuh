// The problem description every attention kernel receives, the block context its per-thread code
// sees, and the cooperative copies of (token, channel) tiles between global and shared memory.
//
// A kernel is a struct of phases (run_phase below): the device runs them with a
// __syncthreads() between consecutive phases, the host build runs each phase for every thread of
// a block before the next. Whatever a thread keeps from one phase to the next lives in its
// ``Registers`` struct, whose arrays are indexed by constants only, so that they stay registers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

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

// Calls ``body(data)`` with the tensor's data pointer typed by its element type: the device build
// takes float16, bfloat16 and float32 tensors, the host build float16, float32 and float64 (their
// launchers admit no other). Loops over elements go inside ``body``, so that the type's switch
// stays outside them and their loads carry no branches and can be in flight together.
template <typename Body>
STTR_HD void with_typed_data(const Strided& x, Body body) {
#if defined(__CUDA_ARCH__)
  switch (x.dtype) {
    case Dtype::float16:
      body(static_cast<__half*>(x.data));  // cost-model: only=fp16
      break;
    case Dtype::bfloat16:
      body(static_cast<__nv_bfloat16*>(x.data));  // cost-model: only=bf16
      break;
    default:
      body(static_cast<float*>(x.data));  // cost-model: only=fp32
  }
#else
  if (x.dtype == Dtype::float64) {
    body(static_cast<double*>(x.data));
  } else if (x.dtype == Dtype::float16) {
    body(static_cast<HostHalf*>(x.data));
  } else {
    body(static_cast<float*>(x.data));
  }
#endif
}

// An element in the accumulator type, and back. The kernels never write the tensors they read
// (outputs are separate buffers), so on the device the loads go through the read-only path
// (__ldg): ptxas may then move them past the stores, which spared the float32 kernels a hundred
// registers and their spills.
template <typename A, typename T>
STTR_HD A load_typed(const T* data, int64_t offset) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(__ldg(data + offset));
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(__ldg(data + offset));
  } else {
    return __ldg(data + offset);
  }
#else
  return static_cast<A>(data[offset]);
#endif
}

// An element as it is, for the tiles that keep the tensor's type (the temporal kernels' operands).
template <typename T>
STTR_HD T load_raw(const T* data, int64_t offset) {
#if defined(__CUDA_ARCH__)
  return __ldg(data + offset);
#else
  return data[offset];
#endif
}

template <typename A, typename T>
STTR_HD void store_typed(T* data, int64_t offset, A value) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, __half>) {
    data[offset] = __float2half_rn(value);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    data[offset] = __float2bfloat16_rn(value);
  } else {
    data[offset] = value;
  }
#else
  data[offset] = static_cast<T>(value);
#endif
}

// Copies every point of the box [0, n0) x [0, n1) x [0, n2): ``write(i0, i1, i2, read(i0, i1,
// i2))``, the block's threads taking consecutive points, i0 fastest, so that neighbouring threads
// touch neighbouring addresses along the axis the caller puts first. Each thread reads kCopyBatch
// points before it writes any, so that as many loads are in flight at once (a loop of single
// load-then-store steps waits out the memory latency for every element). A batch's points past
// the end read the batch's first point again instead, and ``read`` is meant to load
// unconditionally (clamping what it addresses), so that no branch separates the loads.
constexpr int kCopyBatch = 4;

template <typename A, typename Read, typename Write>
STTR_HD void copy_box(int n0, int n1, int n2, const BlockContext& ctx, Read read, Write write) {
  const int total = n0 * n1 * n2;
  BoxWalk walk(ctx.thread, ctx.threads, n0, n1);
#pragma unroll 1
  for (int e = ctx.thread; e < total; e += kCopyBatch * ctx.threads) {  // cost-model: loop=copy_box
    A values[kCopyBatch];
    int points[kCopyBatch][3];
#pragma unroll
    for (int k = 0; k < kCopyBatch; ++k, walk.advance()) {
      const bool inside = e + k * ctx.threads < total;
      points[k][0] = inside ? walk.i0 : points[0][0];
      points[k][1] = inside ? walk.i1 : points[0][1];
      points[k][2] = inside ? walk.i2 : points[0][2];
      values[k] = read(points[k][0], points[k][1], points[k][2]);
    }
#pragma unroll
    for (int k = 0; k < kCopyBatch; ++k) {
      if (e + k * ctx.threads < total) write(points[k][0], points[k][1], points[k][2], values[k]);
    }
  }
}

// A kernel's phases: either a fixed count (Kernel::kPhases > 0) of phase(step, ...), or, for one
// that streams key tiles (kPhases == 0), start, tile(t, ...) for each of Kernel::tiles(p) tiles, and
// finish. A kernel that stages its keys in chunks of Kernel::kChunkTiles tiles (> 0) has a phase
// chunk(c, ...) before the tiles of every chunk c but the first, which start stages, and its
// phases take qkv typed (the element type's switch stays outside them). The device
// build runs them with a barrier before every phase but finish, which reads only the thread's own
// registers (csrc/cuda_launch.cu); the host build runs every phase for all threads of a block
// before the next (csrc/host_launch.cpp).
template <class Kernel>
STTR_HD int key_chunks(const Problem& p) {
  if constexpr (Kernel::kChunkTiles > 0) {
    return (Kernel::tiles(p) + Kernel::kChunkTiles - 1) / Kernel::kChunkTiles;
  } else {
    return 1;
  }
}

template <class Kernel>
STTR_HD int phase_count(const Problem& p) {
  if constexpr (Kernel::kPhases > 0) {
    return Kernel::kPhases;
  } else {
    return Kernel::tiles(p) + key_chunks<Kernel>(p) - 1 + 2;
  }
}

// A phase of a kernel that stages its keys in chunks, whose phases take qkv typed.
template <class Kernel, typename E>
STTR_HD void run_chunked_phase(int step, const Problem& p, const BlockContext& ctx, typename Kernel::Registers& r,
                               const E* qkv) {
  // Start, chunk 0's tiles, then per later chunk its chunk phase and its tiles, finish.
  const int K = Kernel::kChunkTiles, s = step - 1;
  if (step == 0) {
    Kernel::start(p, ctx, r, qkv);
  } else if (step == phase_count<Kernel>(p) - 1) {
    Kernel::finish(p, ctx, r, qkv);
  } else if (s < K) {
    Kernel::tile(s, p, ctx, r, qkv);
  } else if ((s - K) % (K + 1) == 0) {
    Kernel::chunk(1 + (s - K) / (K + 1), p, ctx, r, qkv);
  } else {
    Kernel::tile(s - 1 - (s - K) / (K + 1), p, ctx, r, qkv);
  }
}

template <class Kernel>
STTR_HD void run_phase(int step, const Problem& p, const BlockContext& ctx, typename Kernel::Registers& r) {
  if constexpr (Kernel::kPhases > 0) {
    Kernel::phase(step, p, ctx, r);
  } else if constexpr (Kernel::kChunkTiles > 0) {
    with_typed_data(p.qkv, [&](const auto* qkv) { run_chunked_phase<Kernel>(step, p, ctx, r, qkv); });
  } else if (step == 0) {
    Kernel::start(p, ctx, r);
  } else if (step <= Kernel::tiles(p)) {
    Kernel::tile(step - 1, p, ctx, r);
  } else {
    Kernel::finish(p, ctx, r);
  }
}

// Bytes of shared memory, each region aligned to 16 bytes.
STTR_HD constexpr size_t align16(size_t bytes) { return (bytes + 15) & ~static_cast<size_t>(15); }

}  // namespace sttr
