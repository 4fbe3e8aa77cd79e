// The launch interface between the torch binding (csrc/binding.cpp) and the kernels: plain C++,
// no torch and no CUDA types, implemented twice — for the GPU in csrc/cuda_launch.cu, on the CPU
// (emulated blocks and threads) in csrc/host_launch.cpp.
#pragma once

#include "attention.cuh"

namespace sttr {

enum class Op { spatial_forward, spatial_backward, temporal_forward, temporal_backward };

// The inputs the kernels have code for (Python's cuda_backend.unsupported says the same in words):
// per-head dims up to these, and for the spatial core at most kMaxJoints joints per frame.
constexpr int kMaxDkh = 16, kMaxDvh = 64, kMaxJoints = 64;

// Runs ``op`` on ``problem``, whose tensors are all of ``dtype`` (its geometry fields are set
// here), asynchronously on ``stream`` in the device build (a cudaStream_t), at once in the host
// build (``stream`` unused). Throws std::invalid_argument for what it has no code for,
// std::runtime_error for a failed launch.
void launch(Op op, Dtype dtype, Problem problem, void* stream);

// Writes params.numel keep decisions (docs/kernels.md §6).
void launch_key_mask(const MaskParams& params, void* stream);

}  // namespace sttr
