// The one torch-facing file: registers the kernels as operators of the library STTR_NS
// (sttr_fast_cuda for the GPU build, sttr_fast_cuda_host for the host build), turning tensors
// into the plain Problem of csrc/launch.h. Buffers are allocated and shapes checked in Python
// (sttr_fast/ops/cuda_backend.py); this checks only what would make the kernels read or write out
// of bounds.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>

#if defined(STTR_DEVICE_BUILD)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "launch.h"

#define STTR_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

namespace {

constexpr c10::DeviceType kDevice =
#if defined(STTR_DEVICE_BUILD)
    c10::DeviceType::CUDA;
#else
    c10::DeviceType::CPU;
#endif

sttr::Dtype dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf:
      return sttr::Dtype::float16;
    case at::kBFloat16:
      return sttr::Dtype::bfloat16;
    case at::kFloat:
      return sttr::Dtype::float32;
    case at::kDouble:
      return sttr::Dtype::float64;
    default:
      TORCH_CHECK(false, "sttr cuda kernels: unsupported dtype ", x.scalar_type());
  }
}

sttr::Strided strided(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "sttr cuda kernels: expected a 4-D (N', C, T, V) tensor, got ", x.dim(), " dims");
  return {x.data_ptr(), x.stride(0), x.stride(1), x.stride(2), x.stride(3), dtype_of(x)};
}

// Every tensor on the build's device; the per-query buffers contiguous in the accumulator type.
void check_tensors(const at::Tensor& qkv, std::initializer_list<const at::Tensor*> tensors,
                   std::initializer_list<const at::Tensor*> per_query, const std::optional<at::Tensor>& keep,
                   int64_t queries) {
  for (const at::Tensor* x : tensors) {
    TORCH_CHECK(x->device().type() == kDevice && x->device() == qkv.device(),
                "sttr cuda kernels: every tensor must be on ", qkv.device(), " of this build's device type, got ",
                x->device());
    TORCH_CHECK(x->scalar_type() == qkv.scalar_type(), "sttr cuda kernels: mixed dtypes");
  }
  const auto accumulator = qkv.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  for (const at::Tensor* x : per_query) {
    TORCH_CHECK(x->device() == qkv.device() && x->is_contiguous() && x->scalar_type() == accumulator &&
                    x->numel() == queries,
                "sttr cuda kernels: a per-query buffer must be contiguous ", accumulator, " with ", queries,
                " elements on ", qkv.device());
  }
  if (keep) {
    TORCH_CHECK(keep->device() == qkv.device() && keep->is_contiguous() && keep->scalar_type() == at::kBool &&
                    keep->numel() == queries,
                "sttr cuda kernels: the key mask must be a contiguous bool tensor of ", queries, " elements");
  }
}

sttr::Problem problem(const at::Tensor& qkv, const std::optional<at::Tensor>& keep, int64_t heads, int64_t dkh,
                      int64_t dvh, bool spatial) {
  TORCH_CHECK(heads >= 1 && qkv.size(1) == heads * (2 * dkh + dvh),
              "sttr cuda kernels: qkv's channels do not match the head split");
  sttr::Problem p{};
  p.qkv = strided(qkv);
  p.keep = keep ? keep->data_ptr<bool>() : nullptr;
  p.T = qkv.size(2);
  p.V = qkv.size(3);
  p.sequences = qkv.size(0) * (spatial ? p.T : p.V);
  p.H = static_cast<int>(heads);
  p.dkh = static_cast<int>(dkh);
  p.dvh = static_cast<int>(dvh);
  return p;
}

void* stream_of(const at::Tensor& x) {
#if defined(STTR_DEVICE_BUILD)
  return c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
#else
  (void)x;
  return nullptr;
#endif
}

void run(sttr::Op op, const at::Tensor& qkv, const sttr::Problem& p) {
  if (qkv.numel() == 0) return;
#if defined(STTR_DEVICE_BUILD)
  const c10::cuda::CUDAGuard guard(qkv.device());
#endif
  try {
    sttr::launch(op, dtype_of(qkv), p, stream_of(qkv));
  } catch (const std::invalid_argument& error) {
    TORCH_CHECK_VALUE(false, error.what());
  }
}

int64_t queries(const at::Tensor& qkv, int64_t heads) { return qkv.size(0) * qkv.size(2) * qkv.size(3) * heads; }

void spatial_forward(const at::Tensor& qkv, const at::Tensor& out, const at::Tensor& stats,
                     const std::optional<at::Tensor>& keep, int64_t heads, int64_t dkh, int64_t dvh) {
  check_tensors(qkv, {&qkv, &out}, {&stats}, keep, queries(qkv, heads));
  sttr::Problem p = problem(qkv, keep, heads, dkh, dvh, true);
  p.out = strided(out);
  p.stats = stats.data_ptr();
  run(sttr::Op::spatial_forward, qkv, p);
}

void spatial_backward(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& stats,
                      const std::optional<at::Tensor>& keep, const at::Tensor& grad_qkv, int64_t heads, int64_t dkh,
                      int64_t dvh) {
  check_tensors(qkv, {&qkv, &grad_out, &grad_qkv}, {&stats}, keep, queries(qkv, heads));
  sttr::Problem p = problem(qkv, keep, heads, dkh, dvh, true);
  p.grad_out = strided(grad_out);
  p.grad_qkv = strided(grad_qkv);
  p.stats = stats.data_ptr();
  run(sttr::Op::spatial_backward, qkv, p);
}

void temporal_forward(const at::Tensor& qkv, const at::Tensor& out, const at::Tensor& stats,
                      const std::optional<at::Tensor>& keep, int64_t heads, int64_t dkh, int64_t dvh) {
  check_tensors(qkv, {&qkv, &out}, {&stats}, keep, queries(qkv, heads));
  sttr::Problem p = problem(qkv, keep, heads, dkh, dvh, false);
  p.out = strided(out);
  p.stats = stats.data_ptr();
  run(sttr::Op::temporal_forward, qkv, p);
}

void temporal_backward(const at::Tensor& grad_out, const at::Tensor& qkv, const at::Tensor& out,
                       const at::Tensor& stats, const at::Tensor& delta, const std::optional<at::Tensor>& keep,
                       const at::Tensor& grad_qkv, int64_t heads, int64_t dkh, int64_t dvh) {
  check_tensors(qkv, {&qkv, &grad_out, &out, &grad_qkv}, {&stats, &delta}, keep, queries(qkv, heads));
  sttr::Problem p = problem(qkv, keep, heads, dkh, dvh, false);
  p.out = strided(out);
  p.grad_out = strided(grad_out);
  p.grad_qkv = strided(grad_qkv);
  p.stats = stats.data_ptr();
  p.delta = delta.data_ptr();
  run(sttr::Op::temporal_backward, qkv, p);
}

void key_mask(const at::Tensor& rng_state, const at::Tensor& mask, double p) {
  TORCH_CHECK(rng_state.device().type() == kDevice && rng_state.scalar_type() == at::kLong &&
                  rng_state.numel() == 2 && rng_state.is_contiguous(),
              "sttr cuda kernels: rng_state must be a contiguous int64 tensor of 2 elements on this build's device");
  TORCH_CHECK(mask.device() == rng_state.device() && mask.scalar_type() == at::kBool && mask.is_contiguous(),
              "sttr cuda kernels: the key mask must be a contiguous bool tensor beside rng_state");
  if (mask.numel() == 0) return;
#if defined(STTR_DEVICE_BUILD)
  const c10::cuda::CUDAGuard guard(mask.device());
#endif
  sttr::launch_key_mask({rng_state.data_ptr<int64_t>(), mask.data_ptr<bool>(), mask.numel(), static_cast<float>(p)},
                        stream_of(mask));
}

}  // namespace

STTR_LIBRARY(STTR_NS, m) {
  m.def("key_mask(Tensor rng_state, Tensor(a!) mask, float p) -> ()", &key_mask);
  m.def("spatial_forward(Tensor qkv, Tensor(a!) out, Tensor(b!) stats, Tensor? keep, int heads, int dkh, "
        "int dvh) -> ()",
        &spatial_forward);
  m.def("spatial_backward(Tensor grad_out, Tensor qkv, Tensor stats, Tensor? keep, Tensor(a!) grad_qkv, "
        "int heads, int dkh, int dvh) -> ()",
        &spatial_backward);
  m.def("temporal_forward(Tensor qkv, Tensor(a!) out, Tensor(b!) stats, Tensor? keep, int heads, int dkh, "
        "int dvh) -> ()",
        &temporal_forward);
  m.def("temporal_backward(Tensor grad_out, Tensor qkv, Tensor out, Tensor stats, Tensor(a!) delta, "
        "Tensor? keep, Tensor(b!) grad_qkv, int heads, int dkh, int dvh) -> ()",
        &temporal_backward);
}
