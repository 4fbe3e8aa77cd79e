// The host build's launcher: the kernels' own per-thread code (csrc/spatial.cuh,
// csrc/temporal.cuh) on the CPU, for float32 and float64, and float16 with float32 arithmetic (its
// elements HostHalf, csrc/common.cuh, so that the float16 branch's rounding is tested). Each block runs its phases one after
// another, each phase for every thread of the block before the next, which is what the device's
// barriers guarantee. Within a phase the 32 lanes of a warp run as fibers (ucontext), one after
// another until each reaches the next warp exchange (csrc/warp.cuh: warp_sync, shuffle_xor) or
// its end, so that warp-synchronous code runs as it does on the device; a lane that ends while
// others wait at an exchange is an error (a divergent exchange). Shared memory and registers
// start every block as NaN bytes, so code that reads what no thread wrote produces NaN, which the
// tests catch.
#include <ucontext.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "dispatch.h"

namespace sttr {
namespace {

// The lanes of one warp as fibers and the scheduler that runs them in rounds.
class WarpFibers {
 public:
  static constexpr size_t kStackBytes = 256 * 1024;

  WarpFibers() : stacks_(kWarpSize * kStackBytes) {}

  // Runs lane(l) for l = 0 .. 31, interleaved at each warp exchange.
  template <typename Lane>
  void run(Lane lane) {
    body_ = [](void* context, int l) { (*static_cast<Lane*>(context))(l); };
    context_ = &lane;
    for (int l = 0; l < kWarpSize; ++l) {
      getcontext(&lanes_[l]);
      lanes_[l].uc_stack.ss_sp = stacks_.data() + l * kStackBytes;
      lanes_[l].uc_stack.ss_size = kStackBytes;
      lanes_[l].uc_link = &scheduler_;
      makecontext(&lanes_[l], &WarpFibers::entry, 0);
      done_[l] = false;
    }
    WarpFibers* outer = current_;
    current_ = this;
    for (;;) {
      int ended = 0, waiting = 0;
      for (int l = 0; l < kWarpSize; ++l) {
        if (done_[l]) continue;
        lane_ = l;
        swapcontext(&scheduler_, &lanes_[l]);
        done_[l] ? ++ended : ++waiting;
      }
      if (waiting == 0) break;
      if (ended != 0) {
        current_ = outer;
        throw std::logic_error("sttr host build: a warp exchange that not every lane of the warp reached");
      }
    }
    current_ = outer;
  }

  // The running lane waits at an exchange: the scheduler resumes it after every other lane.
  static void yield() { swapcontext(&current_->lanes_[current_->lane_], &current_->scheduler_); }

  static double shuffle_xor(double value, int lane_mask) {
    WarpFibers* warp = current_;
    const int lane = warp->lane_;
    warp->slots_[lane] = value;
    yield();
    const double result = warp->slots_[lane ^ lane_mask];
    yield();
    return result;
  }

 private:
  static void entry() {
    WarpFibers* warp = current_;
    const int lane = warp->lane_;
    warp->body_(warp->context_, lane);
    warp->done_[lane] = true;  // returning resumes the scheduler (uc_link)
  }

  static thread_local WarpFibers* current_;
  std::vector<char> stacks_;
  ucontext_t scheduler_{}, lanes_[kWarpSize]{};
  bool done_[kWarpSize]{};
  double slots_[kWarpSize]{};
  int lane_ = 0;
  void (*body_)(void*, int) = nullptr;
  void* context_ = nullptr;
};

thread_local WarpFibers* WarpFibers::current_ = nullptr;

struct HostRunner {
  WarpFibers warp;

  template <class Kernel>
  void run(const Problem& p, const Geometry& g) {
    std::vector<double> shared(g.shared_bytes / sizeof(double) + 1);  // 8-byte aligned
    std::vector<typename Kernel::Registers> registers(g.threads);
    const int phases = phase_count<Kernel>(p);
    for (int64_t block = 0; block < g.blocks; ++block) {
      std::memset(shared.data(), 0xFF, shared.size() * sizeof(double));
      std::memset(static_cast<void*>(registers.data()), 0xFF, registers.size() * sizeof(registers[0]));
      for (int step = 0; step < phases; ++step) {
        for (int first = 0; first < g.threads; first += kWarpSize) {
          warp.run([&](int lane) {
            const int thread = first + lane;
            const BlockContext ctx{static_cast<uint32_t>(block), thread, g.threads,
                                   reinterpret_cast<unsigned char*>(shared.data())};
            run_phase<Kernel>(step, p, ctx, registers[thread]);
          });
        }
      }
    }
  }
};

}  // namespace

void host_warp_sync() { WarpFibers::yield(); }
double host_shuffle_xor(double value, int lane_mask) { return WarpFibers::shuffle_xor(value, lane_mask); }

void launch(Op op, Dtype dtype, Problem problem, void*) {
  HostRunner runner;
  if (dtype == Dtype::float32 || dtype == Dtype::float16) return launch_op<float>(op, problem, runner);
  if (dtype == Dtype::float64) return launch_op<double>(op, problem, runner);
  throw std::invalid_argument("sttr cuda kernels: the host build takes float16, float32 and float64");
}

void launch_key_mask(const MaskParams& params, void*) {
  for (int64_t index = 0; index < params.numel; ++index) materialize_key_mask(params, index);
}

}  // namespace sttr
