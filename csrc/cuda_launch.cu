// The GPU launcher: every kernel of csrc/spatial.cuh and csrc/temporal.cuh as a __global__
// function, for float16, bfloat16 and float32 tensors with float32 accumulation. Compiled by nvcc without
// any torch header, so tests/test_cuda_backend_nvcc.py compiles this file alone to cubins.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "dispatch.h"

namespace sttr {
namespace {

// A fixed phase count, one phase per step of a fold with the step a compile-time constant: each
// phase's code appears once, in order (a `#pragma unroll` loop was left rolled by nvcc for the
// largest kernel, running every phase's switch in one loop).
template <class Kernel, int... Steps>
__device__ __forceinline__ void run_fixed_phases(const Problem& p, const BlockContext& ctx,
                                                 typename Kernel::Registers& registers,
                                                 std::integer_sequence<int, Steps...>) {
  ((Steps ? __syncthreads() : void(), Kernel::phase(Steps, p, ctx, registers)), ...);
}

// Keys staged in chunks (attention.cuh, run_phase): the first chunk's tiles, then per later chunk
// its phase and its tiles, in a loop of their own, so that a one-chunk sequence (ST-TR's lengths)
// runs none of the later chunks' code.
template <class Kernel, typename E>
__device__ __forceinline__ void run_chunked_phases(const Problem& p, const BlockContext& ctx,
                                                   typename Kernel::Registers& registers, const E* qkv) {
  Kernel::start(p, ctx, registers, qkv);
  const int tiles = Kernel::tiles(p), first = min(tiles, Kernel::kChunkTiles);
#pragma unroll 1
  for (int tile = 0; tile < first; ++tile) {  // cost-model: loop=tiles
    __syncthreads();
    Kernel::tile(tile, p, ctx, registers, qkv);
  }
  const int chunks = key_chunks<Kernel>(p);
#pragma unroll 1
  for (int chunk = 1; chunk < chunks; ++chunk) {  // cost-model: loop=key_chunks
    __syncthreads();
    Kernel::chunk(chunk, p, ctx, registers, qkv);
    const int end = min(tiles, (chunk + 1) * Kernel::kChunkTiles);
#pragma unroll 1
    for (int tile = chunk * Kernel::kChunkTiles; tile < end; ++tile) {  // cost-model: loop=chunk_tiles
      __syncthreads();
      Kernel::tile(tile, p, ctx, registers, qkv);
    }
  }
  Kernel::finish(p, ctx, registers, qkv);
}

// The phases of one block with a barrier between consecutive ones; a thread's Registers live
// across them. A fixed phase count (Kernel::kPhases > 0) runs unrolled, so that every register's
// lifetime ends with the last phase that uses it; a kernel that streams key tiles runs start, one
// tile phase per tile and finish (attention.cuh, run_phase), the tile loop alone being a loop, so
// that the start and finish code stays out of it.
template <class Kernel>
__global__ void __launch_bounds__(Kernel::kMaxThreads, 1) run_phases(Problem p) {
  extern __shared__ __align__(16) unsigned char shared[];
  const BlockContext ctx{blockIdx.x, static_cast<int>(threadIdx.x),
                         static_cast<int>(blockDim.x), shared};
  typename Kernel::Registers registers;
  if constexpr (Kernel::kPhases > 0) {
    run_fixed_phases<Kernel>(p, ctx, registers, std::make_integer_sequence<int, Kernel::kPhases>{});
  } else {
    Kernel::start(p, ctx, registers);
    const int tiles = Kernel::tiles(p);
#pragma unroll 1
    for (int tile = 0; tile < tiles; ++tile) {  // cost-model: loop=tiles
      __syncthreads();
      Kernel::tile(tile, p, ctx, registers);
    }
    Kernel::finish(p, ctx, registers);
  }
}

// A kernel that stages its keys in chunks (Kernel::kChunkTiles > 0) takes its phases' element
// type as a template parameter: one kernel per type (the launcher picks it from qkv's dtype), so
// that a kernel holds no other type's code and runs no type switch.
template <class Kernel, typename E>
__global__ void __launch_bounds__(Kernel::kMaxThreads, 1) run_typed_phases(Problem p) {
  extern __shared__ __align__(16) unsigned char shared[];
  const BlockContext ctx{blockIdx.x, static_cast<int>(threadIdx.x),
                         static_cast<int>(blockDim.x), shared};
  typename Kernel::Registers registers;
  run_chunked_phases<Kernel>(p, ctx, registers, static_cast<const E*>(p.qkv.data));
}

__global__ void key_mask_kernel(MaskParams params) {
  materialize_key_mask(params, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x);
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("sttr cuda kernels: ") + what + ": " + cudaGetErrorString(status));
  }
}

// Whether a kernel stages its keys in chunks (attention.cuh): one kernel per element type.
template <class Kernel>
constexpr bool chunked() {
  if constexpr (Kernel::kPhases > 0) {
    return false;
  } else {
    return Kernel::kChunkTiles > 0;
  }
}

struct DeviceRunner {
  cudaStream_t stream;

  template <class Function>
  void start(Function* kernel, const Problem& p, const Geometry& g) {
    if (g.shared_bytes > 48 * 1024) {
      check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(g.shared_bytes)),
            "raising the shared-memory limit");
    }
    kernel<<<static_cast<unsigned>(g.blocks), g.threads, g.shared_bytes, stream>>>(p);
    check(cudaGetLastError(), "launch");
  }

  template <class Kernel>
  void run(const Problem& p, const Geometry& g) {
    if (g.blocks == 0) return;
    if constexpr (chunked<Kernel>()) {
      switch (p.qkv.dtype) {
        case Dtype::float16:
          start(run_typed_phases<Kernel, __half>, p, g);
          break;
        case Dtype::bfloat16:
          start(run_typed_phases<Kernel, __nv_bfloat16>, p, g);
          break;
        default:
          start(run_typed_phases<Kernel, float>, p, g);
      }
    } else {
      start(run_phases<Kernel>, p, g);
    }
  }
};

}  // namespace

void launch(Op op, Dtype dtype, Problem problem, void* stream) {
  if (dtype == Dtype::float64) throw std::invalid_argument("sttr cuda kernels: the GPU build takes float16, bfloat16 and float32");
  DeviceRunner runner{static_cast<cudaStream_t>(stream)};
  launch_op<float>(op, problem, runner);
}

void launch_key_mask(const MaskParams& params, void* stream) {
  const int64_t blocks = (params.numel + kKeyMaskThreads - 1) / kKeyMaskThreads;
  if (blocks == 0) return;
  if (blocks > kMaxBlocks) throw std::invalid_argument("sttr cuda kernels: the key mask needs more than 2^31 - 1 blocks");
  key_mask_kernel<<<static_cast<unsigned>(blocks), kKeyMaskThreads, 0, static_cast<cudaStream_t>(stream)>>>(params);
  check(cudaGetLastError(), "key-mask launch");
}

}  // namespace sttr
