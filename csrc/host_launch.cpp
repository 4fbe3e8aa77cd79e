// The host build's launcher: the kernels' own per-thread code (csrc/spatial.cuh,
// csrc/temporal.cuh) on the CPU, for float32 and float64. Each block runs its phases one after
// another, each phase for every thread of the block before the next, which is what the device's
// barriers guarantee. Shared memory and registers start every block as NaN bytes, so code that
// reads what no thread wrote produces NaN, which the tests catch.
#include <cstring>
#include <stdexcept>
#include <vector>

#include "dispatch.h"

namespace sttr {
namespace {

struct HostRunner {
  template <class Kernel>
  void run(const Problem& p, const Geometry& g) {
    std::vector<double> shared(g.shared_bytes / sizeof(double) + 1);  // 8-byte aligned
    std::vector<typename Kernel::Registers> registers(g.threads);
    const int phases = phase_count<Kernel>(p);
    for (int64_t block = 0; block < g.blocks; ++block) {
      std::memset(shared.data(), 0xFF, shared.size() * sizeof(double));
      std::memset(static_cast<void*>(registers.data()), 0xFF, registers.size() * sizeof(registers[0]));
      for (int step = 0; step < phases; ++step) {
        for (int thread = 0; thread < g.threads; ++thread) {
          const BlockContext ctx{static_cast<uint32_t>(block), thread, g.threads,
                                 reinterpret_cast<unsigned char*>(shared.data())};
          run_phase<Kernel>(step, p, ctx, registers[thread]);
        }
      }
    }
  }
};

}  // namespace

void launch(Op op, Dtype dtype, Problem problem, void*) {
  HostRunner runner;
  if (dtype == Dtype::float32) return launch_op<float>(op, problem, runner);
  if (dtype == Dtype::float64) return launch_op<double>(op, problem, runner);
  throw std::invalid_argument("sttr cuda kernels: the host build takes float32 and float64");
}

void launch_key_mask(const MaskParams& params, void*) {
  for (int64_t index = 0; index < params.numel; ++index) materialize_key_mask(params, index);
}

}  // namespace sttr
