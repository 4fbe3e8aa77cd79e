// The GPU launcher: every kernel of csrc/spatial.cuh and csrc/temporal.cuh as a __global__
// function, for float16, bfloat16 and float32 tensors with float32 accumulation. Compiled by nvcc without
// any torch header, so tests/test_cuda_backend_nvcc.py compiles this file alone to cubins.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "dispatch.h"

namespace sttr {
namespace {

// The phases of one block with a barrier between consecutive ones; a thread's Registers live
// across them. A fixed phase count (Kernel::kPhases > 0) is unrolled, so that every register's
// lifetime ends with the last phase that uses it; otherwise it is one per key tile and one more.
template <class Kernel>
__global__ void __launch_bounds__(Kernel::kMaxThreads, 1) run_phases(Problem p) {
  extern __shared__ __align__(16) unsigned char shared[];
  const BlockContext ctx{blockIdx.x, static_cast<int>(threadIdx.x),
                         static_cast<int>(blockDim.x), shared};
  typename Kernel::Registers registers;
  if constexpr (Kernel::kPhases > 0) {
#pragma unroll
    for (int step = 0; step < Kernel::kPhases; ++step) {
      if (step) __syncthreads();
      Kernel::phase(step, p, ctx, registers);
    }
  } else {
    const int phases = phase_count<Kernel>(p);
    for (int step = 0; step < phases; ++step) {
      if (step) __syncthreads();
      Kernel::phase(step, p, ctx, registers);
    }
  }
}

__global__ void key_mask_kernel(MaskParams params) {
  materialize_key_mask(params, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x);
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("sttr cuda kernels: ") + what + ": " + cudaGetErrorString(status));
  }
}

struct DeviceRunner {
  cudaStream_t stream;

  template <class Kernel>
  void run(const Problem& p, const Geometry& g) {
    if (g.blocks == 0) return;
    if (g.shared_bytes > 48 * 1024) {
      check(cudaFuncSetAttribute(run_phases<Kernel>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 static_cast<int>(g.shared_bytes)),
            "raising the shared-memory limit");
    }
    run_phases<Kernel><<<static_cast<unsigned>(g.blocks), g.threads, g.shared_bytes, stream>>>(p);
    check(cudaGetLastError(), "launch");
  }
};

}  // namespace

void launch(Op op, Dtype dtype, Problem problem, void* stream) {
  if (dtype == Dtype::float64) throw std::invalid_argument("sttr cuda kernels: the GPU build takes float16, bfloat16 and float32");
  DeviceRunner runner{static_cast<cudaStream_t>(stream)};
  launch_op<float>(op, problem, runner);
}

void launch_key_mask(const MaskParams& params, void* stream) {
  constexpr int threads = 256;
  const int64_t blocks = (params.numel + threads - 1) / threads;
  if (blocks == 0) return;
  if (blocks > kMaxBlocks) throw std::invalid_argument("sttr cuda kernels: the key mask needs more than 2^31 - 1 blocks");
  key_mask_kernel<<<static_cast<unsigned>(blocks), threads, 0, static_cast<cudaStream_t>(stream)>>>(params);
  check(cudaGetLastError(), "key-mask launch");
}

}  // namespace sttr
