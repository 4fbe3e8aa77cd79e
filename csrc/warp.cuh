// Warp-level pieces of the temporal kernels: lane exchanges and the m16n8k16 matrix product on
// fragments, in the PTX ISA's layouts (mma.sync.aligned.m16n8k16.row.col, ldmatrix.m8n8.x4).
//
// A warp owns a 16-row tile. With g = lane / 4 and q = lane % 4, a lane holds:
//   A operand (16 x 16, FragA): pairs (row g, k 2q..2q+1), (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..)
//   B operand (16 x 8,  FragB): pairs (k 2q..2q+1, col g), (k 2q+8..2q+9, col g)
//   C/D       (16 x 8,  FragC): (row g, cols 2q, 2q+1), (row g+8, cols 2q, 2q+1)
// so the C fragments of two neighbouring 8-column blocks are, pair for pair, the A fragment of
// one 16-deep product (how a score tile becomes the P of P·V without leaving registers).
//
// Float16 and bfloat16 fragments on the device use ldmatrix and mma.sync (fp32 accumulation).
// Every other element type (float32 on the device; every type in the host build) runs
// the same functions through their portable bodies: each lane reads the very elements ldmatrix
// would hand it, by the same row-address formula, and the product is computed lane by lane from
// the warp's fragments exchanged through shared memory, each lane owning the outputs the mma
// would give it. So the host build checks every fragment index of the kernels; the two 16-bit
// instructions alone are GPU-only (docs/kernels.md §11).
#pragma once

#include <type_traits>

#include "attention.cuh"

namespace sttr {

#if !defined(__CUDACC__)
// The host build's warp (csrc/host_launch.cpp): the lanes of a warp run as fibers, and these
// switch to the next lane until every lane of the warp has arrived.
void host_warp_sync();
double host_shuffle_xor(double value, int lane_mask);
#endif

constexpr int kWarpSize = 32;

// __syncwarp: lanes' shared-memory writes before it are seen by the warp's lanes after it.
STTR_HD void warp_sync() {
#if defined(__CUDA_ARCH__)
  __syncwarp();
#elif !defined(__CUDACC__)
  host_warp_sync();
#endif
}

// The value of lane (lane ^ lane_mask): the quad reductions of row maxima and sums.
template <typename A>
STTR_HD A shuffle_xor(A value, int lane_mask) {
#if defined(__CUDA_ARCH__)
  return __shfl_xor_sync(0xffffffffu, value, lane_mask);
#elif !defined(__CUDACC__)
  return static_cast<A>(host_shuffle_xor(static_cast<double>(value), lane_mask));
#else
  return value;  // nvcc's host pass: never runs
#endif
}

template <typename A>
STTR_HD A quad_max(A value) {
  value = max_acc(value, shuffle_xor(value, 1));
  return max_acc(value, shuffle_xor(value, 2));
}
template <typename A>
STTR_HD A quad_sum(A value) {
  value += shuffle_xor(value, 1);
  return value + shuffle_xor(value, 2);
}

// --- fragments ---------------------------------------------------------------------------------

// Whether E's products run on tensor cores (device float16 and bfloat16).
template <typename E>
constexpr bool kTensorCore =
#if defined(__CUDACC__)
    std::is_same_v<E, __half> || std::is_same_v<E, __nv_bfloat16>;
#else
    false;
#endif

// Whether E is float16 (__half on the device, HostHalf in the host build): the temporal forward
// scales its weights before rounding them to E (docs/kernels.md §8).
template <typename E>
constexpr bool kFloat16 =
#if defined(__CUDACC__)
    std::is_same_v<E, __half>;
#else
    std::is_same_v<E, HostHalf>;
#endif

// Two neighbouring elements of a fragment: one 32-bit register for the 16-bit types.
template <typename E>
struct Pair {
  E lo, hi;
};
template <typename E>
struct PairOf {
  using type = Pair<E>;
};
#if defined(__CUDACC__)
template <>
struct PairOf<__half> {
  using type = __half2;
};
template <>
struct PairOf<__nv_bfloat16> {
  using type = __nv_bfloat162;
};
#endif
template <typename E>
using PairT = typename PairOf<E>::type;

template <typename E>
struct FragA {
  PairT<E> pair[4];
};
template <typename E>
struct FragB {
  PairT<E> pair[2];
};
template <typename A>
struct FragC {
  A x[4];
};

// Two accumulator values rounded to E (round to nearest even): the weights of P·V and dS before
// their products, as the Triton kernels round them (docs/kernels.md §8).
template <typename E, typename A>
STTR_HD PairT<E> round_pair(A lo, A hi) {
#if defined(__CUDACC__)
  if constexpr (std::is_same_v<E, __nv_bfloat16>) {
    return __floats2bfloat162_rn(lo, hi);
  } else if constexpr (std::is_same_v<E, __half>) {
    return __floats2half2_rn(lo, hi);
  } else
#endif
  {
    return {static_cast<E>(lo), static_cast<E>(hi)};
  }
}

// The A fragment of a 16-deep product whose A is two C fragments side by side (columns 0-7, 8-15).
template <typename E, typename A>
STTR_HD FragA<E> fragment_from(const FragC<A>& left, const FragC<A>& right) {
  return {{round_pair<E>(left.x[0], left.x[1]), round_pair<E>(left.x[2], left.x[3]),
           round_pair<E>(right.x[0], right.x[1]), round_pair<E>(right.x[2], right.x[3])}};
}

// ldmatrix.x4: lane l gives the address of row l % 8 of 8 x 8 matrix l / 8 (``row_of(l)``, eight
// contiguous elements); lane t receives, of matrix i, the pair (row t / 4, columns 2(t % 4), +1),
// or with TRANS the pair (rows 2(t % 4), +1; column t / 4).
template <bool TRANS, typename E, typename RowOf>
STTR_HD void load_matrices(PairT<E> (&out)[4], int lane, RowOf row_of) {
  if constexpr (kTensorCore<E>) {
#if defined(__CUDA_ARCH__)
    const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(row_of(lane)));
    uint32_t* r = reinterpret_cast<uint32_t*>(out);
    if constexpr (TRANS) {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
    } else {
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
    }
#endif
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      if constexpr (TRANS) {
        out[i] = {row_of(8 * i + 2 * (lane % 4))[lane / 4], row_of(8 * i + 2 * (lane % 4) + 1)[lane / 4]};
      } else {
        const E* row = row_of(8 * i + lane / 4);
        out[i] = {row[2 * (lane % 4)], row[2 * (lane % 4) + 1]};
      }
    }
  }
}

// A operand of rows [0, 16) and columns [k0, k0 + 16) of a row-major tile (row m, column k).
template <typename E>
STTR_HD FragA<E> load_a(const E* tile, int pitch, int k0, int lane) {
  FragA<E> a;
  load_matrices<false, E>(a.pair, lane, [&](int l) { return tile + ((l / 8) % 2 * 8 + l % 8) * pitch + k0 + l / 16 * 8; });
  return a;
}

// B operands of two 8-column blocks (columns n0 .. n0 + 15), depth k0 .. k0 + 15, from a tile whose
// rows are B's columns (B(k, n) = tile[n][k]: keys of QKᵀ).
template <typename E>
STTR_HD void load_b_from_columns(FragB<E> (&b)[2], const E* tile, int pitch, int n0, int k0, int lane) {
  PairT<E> r[4];
  load_matrices<false, E>(r, lane, [&](int l) { return tile + (n0 + l / 16 * 8 + l % 8) * pitch + k0 + (l / 8) % 2 * 8; });
  b[0] = {{r[0], r[1]}};
  b[1] = {{r[2], r[3]}};
}

// The same from a tile whose rows are B's depth (B(k, n) = tile[k][n]: values of P·V).
template <typename E>
STTR_HD void load_b_from_rows(FragB<E> (&b)[2], const E* tile, int pitch, int n0, int k0, int lane) {
  PairT<E> r[4];
  load_matrices<true, E>(r, lane, [&](int l) { return tile + (k0 + (l / 8) % 2 * 8 + l % 8) * pitch + n0 + l / 16 * 8; });
  b[0] = {{r[0], r[1]}};
  b[1] = {{r[2], r[3]}};
}

// Elements per lane in a warp's exchange area of the portable product: its A and B fragments.
constexpr int kExchangeElements = 12;

// c += A · B over depth [0, DEPTH) (the rest of A or B is zero). ``exchange`` is the warp's area
// of kWarpSize · kExchangeElements elements in shared memory, used by the portable body only.
template <int DEPTH, typename E, typename A>
STTR_HD void mma(FragC<A>& c, const FragA<E>& a, const FragB<E>& b, E* exchange, int lane) {
  if constexpr (kTensorCore<E>) {
#if defined(__CUDA_ARCH__)
    const uint32_t* ar = reinterpret_cast<const uint32_t*>(a.pair);
    const uint32_t* br = reinterpret_cast<const uint32_t*>(b.pair);
    if constexpr (std::is_same_v<E, __nv_bfloat16>) {
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                   "{%8, %9}, {%0, %1, %2, %3};\n"
                   : "+f"(c.x[0]), "+f"(c.x[1]), "+f"(c.x[2]), "+f"(c.x[3])
                   : "r"(ar[0]), "r"(ar[1]), "r"(ar[2]), "r"(ar[3]), "r"(br[0]), "r"(br[1]));
    } else {
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                   "{%8, %9}, {%0, %1, %2, %3};\n"
                   : "+f"(c.x[0]), "+f"(c.x[1]), "+f"(c.x[2]), "+f"(c.x[3])
                   : "r"(ar[0]), "r"(ar[1]), "r"(ar[2]), "r"(ar[3]), "r"(br[0]), "r"(br[1]));
    }
#endif
  } else {
    E* mine = exchange + lane * kExchangeElements;
#pragma unroll
    for (int i = 0; i < 4; ++i) mine[2 * i] = a.pair[i].lo, mine[2 * i + 1] = a.pair[i].hi;
#pragma unroll
    for (int i = 0; i < 2; ++i) mine[8 + 2 * i] = b.pair[i].lo, mine[8 + 2 * i + 1] = b.pair[i].hi;
    warp_sync();
    // A(r, k) is element (k % 2) + 2·(r / 8) + 4·(k / 8) of lane (r % 8)·4 + (k % 8) / 2;
    // B(k, n) element 8 + (k % 2) + 2·(k / 8) of lane n·4 + (k % 8) / 2.
    // The four outputs together over a rolled depth loop: unrolled, ptxas held every operand of
    // the product in registers at once.
    const int g = lane / 4, q = lane % 4;
    A sum[4] = {c.x[0], c.x[1], c.x[2], c.x[3]};
#pragma unroll 1
    for (int k = 0; k < DEPTH; ++k) {  // cost-model: loop=fragment_depth
      const int a_at = (k % 8) / 2 * kExchangeElements + k % 2 + 4 * (k / 8);
      const int b_at = (k % 8) / 2 * kExchangeElements + 8 + k % 2 + 2 * (k / 8);
      const A upper = exchange[g * 4 * kExchangeElements + a_at];      // A(g, k)
      const A lower = exchange[g * 4 * kExchangeElements + a_at + 2];  // A(g + 8, k)
      const A left = exchange[2 * q * 4 * kExchangeElements + b_at];         // B(k, 2q)
      const A right = exchange[(2 * q + 1) * 4 * kExchangeElements + b_at];  // B(k, 2q + 1)
      sum[0] += upper * left;
      sum[1] += upper * right;
      sum[2] += lower * left;
      sum[3] += lower * right;
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) c.x[j] = sum[j];
    warp_sync();
  }
}

}  // namespace sttr
