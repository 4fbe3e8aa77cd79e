// What both launchers share: the launch geometry of every kernel and the choice of its
// instantiation (accumulator type, head dims; the element type is a field of each tensor). Each launcher supplies a Runner whose run<Kernel>(problem,
// geometry) starts the blocks: on the GPU (csrc/cuda_launch.cu) or emulated (csrc/host_launch.cpp).
#pragma once

#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "launch.h"
#include "temporal.cuh"

namespace sttr {

// The most blocks a 1-D grid may have; sequences, frames and blocks stay below it (attention.cuh).
constexpr int64_t kMaxBlocks = 2147483647;
// Threads per block of the key-mask kernel, one keep decision each.
constexpr int kKeyMaskThreads = 256;

struct Geometry {
  int64_t blocks;
  int threads;
  size_t shared_bytes;
};

inline int round_up_to_warp(int threads) { return (threads + 31) / 32 * 32; }

// Shared memory a spatial block may use: enough for the backward's five tiles of two 25-joint
// frames at 16/64 (the largest ST-TR head split), and three blocks per SM on sm_90.
constexpr size_t kSpatialSharedBudget = 64 * 1024;

// Spatial: as many whole frames as fill kSpatialThreads lanes, fewer where their tiles would
// exceed the shared-memory budget; blocks = frame groups × heads, heads fastest.
template <typename A>
Geometry spatial_geometry(Problem& p, bool backward) {
  const int V = static_cast<int>(p.V);
  int frames = V < kSpatialThreads ? kSpatialThreads / V : 1;
  while (frames > 1 && spatial_layout<A>(frames, V, p.dkh, p.dvh, backward).bytes > kSpatialSharedBudget) --frames;
  p.block_tokens = frames;
  const int64_t groups = (p.sequences + frames - 1) / frames;
  return {groups * p.H, round_up_to_warp(frames * V), spatial_layout<A>(frames, V, p.dkh, p.dvh, backward).bytes};
}

// Temporal: a warp per 16 tokens of a chunk; a sequence of L tokens takes cdiv(L, 160) chunks of
// equal size rounded up to whole warps (L = 150: 160 tokens, 10 warps; 300: two chunks of 160;
// 75: 80 tokens, 5 warps). The shared memory depends on the instantiation (kernel_shared_bytes).
inline Geometry temporal_geometry(Problem& p) {
  const int64_t chunks = (p.T + kTemporalRows - 1) / kTemporalRows;
  p.chunks = static_cast<int>(chunks);
  p.block_tokens = static_cast<int>((p.T + chunks - 1) / chunks + kWarpRows - 1) / kWarpRows * kWarpRows;
  return {p.sequences * p.H * chunks, p.block_tokens / kWarpRows * kWarpSize, 0};
}

// A kernel that sizes its own shared memory (the temporal ones: their operand tiles are padded
// to the instantiation's products) says so with shared_bytes(problem).
template <class Kernel, class = void>
struct SizesItsSharedMemory : std::false_type {};
template <class Kernel>
struct SizesItsSharedMemory<Kernel, std::void_t<decltype(Kernel::shared_bytes(std::declval<const Problem&>()))>>
    : std::true_type {};

template <class Kernel>
Geometry kernel_geometry(const Problem& p, Geometry g) {
  if constexpr (SizesItsSharedMemory<Kernel>::value) g.shared_bytes = Kernel::shared_bytes(p);
  return g;
}

inline void check_supported(const Problem& p, bool spatial) {
  if (p.sequences >= kMaxBlocks || p.sequences * p.H >= kMaxBlocks || p.T >= kMaxBlocks) {
    throw std::invalid_argument("sttr cuda kernels: sequences x heads and frames must stay below 2^31");
  }
  if (p.dkh < 1 || p.dkh > kMaxDkh || p.dvh < 1 || p.dvh > kMaxDvh) {
    throw std::invalid_argument("sttr cuda kernels: per-head dims must be 1.." + std::to_string(kMaxDkh) + " (dk) and 1.." +
                                std::to_string(kMaxDvh) + " (dv), got " + std::to_string(p.dkh) + " and " +
                                std::to_string(p.dvh));
  }
  if (spatial && (p.V < 1 || p.V > kMaxJoints)) {
    throw std::invalid_argument("sttr cuda kernels: the spatial core takes 1.." + std::to_string(kMaxJoints) +
                                " joints, got " + std::to_string(p.V));
  }
}

// The instantiation for the head dims: ST-TR's splits 4/16, 8/32 and 16/64 exactly, anything else
// within the limits through the generic one, whose loops run to 16/64 and skip missing channels.
template <template <typename, int, int, bool> class Kernel, typename A, typename Runner>
void dispatch_dims(const Problem& p, const Geometry& g, Runner& runner) {
  if (g.blocks > kMaxBlocks) throw std::invalid_argument("sttr cuda kernels: the problem needs more than 2^31 - 1 blocks");
  if (p.dkh == 4 && p.dvh == 16) {
    runner.template run<Kernel<A, 4, 16, true>>(p, kernel_geometry<Kernel<A, 4, 16, true>>(p, g));
  } else if (p.dkh == 8 && p.dvh == 32) {
    runner.template run<Kernel<A, 8, 32, true>>(p, kernel_geometry<Kernel<A, 8, 32, true>>(p, g));
  } else if (p.dkh == 16 && p.dvh == 64) {
    runner.template run<Kernel<A, 16, 64, true>>(p, kernel_geometry<Kernel<A, 16, 64, true>>(p, g));
  } else {
    using Generic = Kernel<A, kMaxDkh, kMaxDvh, false>;
    runner.template run<Generic>(p, kernel_geometry<Generic>(p, g));
  }
}

template <typename A, typename Runner>
void launch_op(Op op, Problem p, Runner& runner) {
  p.scale = 1.0 / std::sqrt(static_cast<double>(p.dkh));
  const bool spatial = op == Op::spatial_forward || op == Op::spatial_backward;
  check_supported(p, spatial);
  switch (op) {
    case Op::spatial_forward: {
      const Geometry g = spatial_geometry<A>(p, false);
      dispatch_dims<SpatialForward, A>(p, g, runner);
      break;
    }
    case Op::spatial_backward: {
      const Geometry g = spatial_geometry<A>(p, true);
      dispatch_dims<SpatialBackward, A>(p, g, runner);
      break;
    }
    case Op::temporal_forward: {
      const Geometry g = temporal_geometry(p);
      dispatch_dims<TemporalForward, A>(p, g, runner);
      break;
    }
    case Op::temporal_backward: {
      // The key kernel reads the D the query kernel writes: the runner runs them in order.
      const Geometry g = temporal_geometry(p);
      dispatch_dims<TemporalBackwardQuery, A>(p, g, runner);
      dispatch_dims<TemporalBackwardKey, A>(p, g, runner);
      break;
    }
  }
}

}  // namespace sttr
