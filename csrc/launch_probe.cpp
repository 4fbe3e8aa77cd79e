// The launches csrc/dispatch.h makes, printed instead of run: for the cost model
// (kernels/cuda_cost_model.py), which so takes every kernel's instantiation and geometry from the
// launcher itself. Compiled by the host C++ compiler alone (no torch, no CUDA).
//
//   launch_probe OP N T V H DKH DVH      OP: spatial_forward spatial_backward temporal_forward
//                                         temporal_backward key_mask
//
// prints one JSON object per kernel launch, in launch order.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "dispatch.h"

namespace {

template <class Kernel>
struct Instantiation;

template <template <typename, int, int, bool> class Kernel, typename A, int DK, int DV, bool EXACT>
struct Instantiation<Kernel<A, DK, DV, EXACT>> {
  static constexpr int dk = DK, dv = DV;
  static constexpr bool exact = EXACT;
};

// Key tiles a block streams (its tile phases); 0 for a kernel of fixed phases.
template <class Kernel>
int tiles(const sttr::Problem& p) {
  if constexpr (Kernel::kPhases > 0) {
    return 0;
  } else {
    return Kernel::tiles(p);
  }
}

// Tiles per key chunk of a kernel that stages its keys in chunks (attention.cuh), else 0.
template <class Kernel>
int chunk_tiles() {
  if constexpr (Kernel::kPhases > 0) {
    return 0;
  } else {
    return Kernel::kChunkTiles;
  }
}

struct PrintingRunner {
  template <class Kernel>
  void run(const sttr::Problem& p, const sttr::Geometry& g) {
    using I = Instantiation<Kernel>;
    std::printf(
        "{\"kernel\": \"%s\", \"dk\": %d, \"dv\": %d, \"exact\": %s, \"blocks\": %lld, \"threads\": %d, "
        "\"shared_bytes\": %zu, \"tiles\": %d, \"block_tokens\": %d, \"chunks\": %d, \"key_tile\": %d, "
        "\"copy_batch\": %d, \"chunk_tiles\": %d}\n",
        Kernel::kName, I::dk, I::dv, I::exact ? "true" : "false", static_cast<long long>(g.blocks), g.threads,
        g.shared_bytes, tiles<Kernel>(p), p.block_tokens, p.chunks, sttr::kKeyTile, sttr::kCopyBatch,
        chunk_tiles<Kernel>());
  }
};

sttr::Op parse_op(const char* name) {
  if (!std::strcmp(name, "spatial_forward")) return sttr::Op::spatial_forward;
  if (!std::strcmp(name, "spatial_backward")) return sttr::Op::spatial_backward;
  if (!std::strcmp(name, "temporal_forward")) return sttr::Op::temporal_forward;
  if (!std::strcmp(name, "temporal_backward")) return sttr::Op::temporal_backward;
  throw std::invalid_argument(std::string("unknown op ") + name);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 8) {
    std::fprintf(stderr, "usage: %s OP N T V H DKH DVH\n", argv[0]);
    return 2;
  }
  const long long n = std::atoll(argv[2]), t = std::atoll(argv[3]), v = std::atoll(argv[4]);
  sttr::Problem p{};
  p.T = t;
  p.V = v;
  p.H = std::atoi(argv[5]);
  p.dkh = std::atoi(argv[6]);
  p.dvh = std::atoi(argv[7]);
  try {
    if (!std::strcmp(argv[1], "key_mask")) {
      const long long keys = n * t * v * p.H;
      std::printf("{\"kernel\": \"key_mask\", \"blocks\": %lld, \"threads\": %d, \"shared_bytes\": 0, \"tiles\": 0}\n",
                  (keys + sttr::kKeyMaskThreads - 1) / sttr::kKeyMaskThreads, sttr::kKeyMaskThreads);
      return 0;
    }
    const sttr::Op op = parse_op(argv[1]);
    const bool spatial = op == sttr::Op::spatial_forward || op == sttr::Op::spatial_backward;
    p.sequences = n * (spatial ? t : v);
    PrintingRunner runner;
    sttr::launch_op<float>(op, p, runner);
  } catch (const std::invalid_argument& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
  return 0;
}
