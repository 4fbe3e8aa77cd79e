// The temporal self-attention core (TSA, docs/network.md §7 and §8) as phase kernels.
//
// A block owns ``block_tokens`` consecutive tokens (frames) of one (sequence, head), one thread
// per token: queries in the forward and the query kernel of the backward, keys in the key kernel.
// It streams the other side of the sequence through shared memory in tiles of kKeyTile tokens,
// double-buffered: the phase that computes on tile τ also copies tile τ + 1, and the barrier
// between phases separates the two. Each token of a tile (and its mask value) is read once per
// block; nothing L × L is ever stored, so memory is O(L) per (sequence, head). A thread's own
// rows (q and dO, or k and v) are read once, straight from global memory: in the modules' layout
// frames are unit-stride, so neighbouring threads read neighbouring addresses.
#pragma once

#include "spatial.cuh"

namespace sttr {

constexpr int kKeyTile = 32;
// Threads (tokens) per temporal block at most; longer sequences are split into chunks (dispatch.h).
constexpr int kTemporalThreads = 256;

// Key (or query) tiles of a sequence: the tile phases of every temporal kernel.
STTR_HD int temporal_tiles(const Problem& p) {
  return static_cast<int>((static_cast<uint32_t>(p.T) + kKeyTile - 1) / kKeyTile);
}

// Shared memory of a temporal block: two buffers of kKeyTile rows of ``a_dims`` and ``b_dims``
// channels and two per-row values (the mask, or Λ and D).
struct TemporalLayout {
  int PA, PB;
  size_t buffer_bytes, a, b, scalar0, scalar1, bytes;
};

template <typename A>
STTR_HD TemporalLayout temporal_layout(int a_dims, int b_dims) {
  TemporalLayout l{};
  l.PA = vector_pitch(a_dims);
  l.PB = vector_pitch(b_dims);
  size_t at = 0;
  l.a = at;
  at = align16(at + kKeyTile * l.PA * sizeof(A));
  l.b = at;
  at = align16(at + kKeyTile * l.PB * sizeof(A));
  l.scalar0 = at;
  at = align16(at + kKeyTile * sizeof(A));
  l.scalar1 = at;
  at = align16(at + kKeyTile * sizeof(A));
  l.buffer_bytes = at;
  l.bytes = 2 * at;
  return l;
}

// What every phase of a temporal kernel derives from the block index. Blocks of one (sequence,
// head) are adjacent, so the tiles they stream come from DRAM once and from L2 after.
template <typename A>
struct TemporalBlock {
  TemporalLayout l;
  int head;
  int64_t sequence, n, joint, token, tiles;  // token: this thread's query or key
  int64_t qkv_base;                          // offset of (n', joint) in qkv

  STTR_HD TemporalBlock(const Problem& p, const BlockContext& ctx, int a_dims, int b_dims)
      : l(temporal_layout<A>(a_dims, b_dims)) {
    const uint32_t chunk = ctx.block % static_cast<uint32_t>(p.chunks);
    const uint32_t sequence_head = ctx.block / static_cast<uint32_t>(p.chunks);
    head = static_cast<int>(sequence_head % static_cast<uint32_t>(p.H));
    const uint32_t sequence32 = sequence_head / static_cast<uint32_t>(p.H);
    sequence = sequence32;
    n = sequence32 / static_cast<uint32_t>(p.V);
    joint = sequence - n * p.V;
    token = chunk * p.block_tokens + ctx.thread;
    tiles = (static_cast<uint32_t>(p.T) + kKeyTile - 1) / kKeyTile;
    qkv_base = n * p.qkv.stride_n + joint * p.qkv.stride_v;
  }

  STTR_HD bool active(const Problem& p) const { return token < p.T; }
  // Flat (sequence, head, token) index: the statistics, D and the key mask.
  STTR_HD int64_t flat_index(const Problem& p, int64_t t) const { return (sequence * p.H + head) * p.T + t; }
  STTR_HD int64_t offset(const Strided& x, int64_t t, int channel) const {
    return n * x.stride_n + joint * x.stride_v + t * x.stride_t + static_cast<int64_t>(channel) * x.stride_c;
  }
  STTR_HD A* buffer(const BlockContext& ctx, int64_t tile, size_t region) const {
    return reinterpret_cast<A*>(ctx.shared + (tile & 1) * l.buffer_bytes + region);
  }
  STTR_HD int tile_rows(const Problem& p, int64_t tile) const {
    const int64_t left = p.T - tile * kKeyTile;
    return left < kKeyTile ? static_cast<int>(left) : kKeyTile;
  }

  // Channels [first, first + dims) of the tile's tokens into rows of ``tile``; missing tokens read
  // the last existing one, unconditionally, and are zeroed. Each copy follows the tensor's smaller
  // stride, so that neighbouring threads touch neighbouring addresses.
  STTR_HD void load_tile(const Strided& x, int64_t tile, int first, int dims, int row_pitch, A* rows,
                         const Problem& p, const BlockContext& ctx) const {
    if (x.stride_t <= x.stride_c) {
      load_tile_along_tokens(x, tile, first, dims, row_pitch, rows, p, ctx);  // cost-model: only=tokens_fastest
    } else {
      load_tile_along_channels(x, tile, first, dims, row_pitch, rows, p, ctx);  // cost-model: only=channels_fastest
    }
  }

  // Tokens with the smaller stride (the modules' layout, the contiguous one): thread t takes token
  // t % kKeyTile and every (threads / kKeyTile)-th channel from t / kKeyTile on, kCopyBatch loads in
  // flight: a warp reads 32 neighbouring tokens of a channel, a few instructions per element.
  STTR_HD void load_tile_along_tokens(const Strided& x, int64_t tile, int first, int dims, int row_pitch, A* rows,
                                      const Problem& p, const BlockContext& ctx) const {
    const int valid = tile_rows(p, tile);
    const int64_t t0 = tile * kKeyTile;
    with_typed_data(x, [&](const auto* data) {
      const int row = ctx.thread % kKeyTile, group = ctx.thread / kKeyTile, groups = ctx.threads / kKeyTile;
      const auto* token = data + offset(x, t0 + (row < valid ? row : valid - 1), first);
      A* out = rows + row * row_pitch;
      // kCopyBatch loads before any store, channels past the end reloading the batch's first.
#pragma unroll 1
      for (int c0 = group; c0 < dims; c0 += kCopyBatch * groups) {  // cost-model: loop=token_copy
        A values[kCopyBatch];
#pragma unroll
        for (int k = 0; k < kCopyBatch; ++k) {
          const int c = c0 + k * groups;
          values[k] = load_typed<A>(token, static_cast<int64_t>(c < dims ? c : c0) * x.stride_c);
        }
#pragma unroll
        for (int k = 0; k < kCopyBatch; ++k) {
          if (c0 + k * groups < dims) out[c0 + k * groups] = row < valid ? values[k] : A(0);
        }
      }
    });
  }

  // Channels with the smaller stride (channels_last): copy_box puts neighbouring threads on
  // neighbouring channels.
  STTR_HD void load_tile_along_channels(const Strided& x, int64_t tile, int first, int dims, int row_pitch,
                                        A* rows, const Problem& p, const BlockContext& ctx) const {
    const int valid = tile_rows(p, tile);
    const int64_t t0 = tile * kKeyTile;
    with_typed_data(x, [&](const auto* data) {
      copy_box<A>(
          dims, kKeyTile, 1, ctx,
          [&](int c, int row, int) {
            const A value = load_typed<A>(data, offset(x, t0 + (row < valid ? row : valid - 1), first + c));
            return row < valid ? value : A(0);
          },
          [&](int c, int row, int, A value) { rows[row * row_pitch + c] = value; });
    });
  }
};

template <typename A, int D, bool EXACT>
STTR_HD void load_global_row(A (&x)[D], const Strided& tensor, int64_t base, int first, int dims) {
  with_typed_data(tensor, [&](const auto* data) {
#pragma unroll
    for (int c = 0; c < D; ++c) {
      x[c] = live<EXACT>(c, dims) ? load_typed<A>(data, base + static_cast<int64_t>(first + c) * tensor.stride_c)
                                  : A(0);
    }
  });
}

template <typename A, int D, bool EXACT>
STTR_HD void store_global_row(const A (&x)[D], A scale, const Strided& tensor, int64_t base, int first, int dims) {
  with_typed_data(tensor, [&](auto* data) {
#pragma unroll
    for (int c = 0; c < D; ++c) {
      if (live<EXACT>(c, dims)) store_typed(data, base + static_cast<int64_t>(first + c) * tensor.stride_c, x[c] * scale);
    }
  });
}

// Forward: an online softmax over key tiles. Per tile a thread finds its scores' maximum, moves
// its running maximum once (one exponential per tile to rescale), then takes one exponential per
// score; the denominator accumulates Σ a·(m + 1e-8) = K + 1e-8·L and the output
// Σ m·a·v, relative to the running maximum over all keys (docs/kernels.md §8: accumulated in
// float32, kept weights relative to a dropped maximum are lost only below 2^-126).
template <typename A, int DK, int DV, bool EXACT>
struct TemporalForward {
  static constexpr const char* kName = "TemporalForward";
  STTR_HD static int dk(const Problem& p) { return head_dims<DK, EXACT>(p.dkh); }
  STTR_HD static int dv(const Problem& p) { return head_dims<DV, EXACT>(p.dvh); }
  struct Registers {
    A q[DK], acc[DV];
    A row_max, denominator;
  };
  static constexpr int kMaxThreads = kTemporalThreads;
  static constexpr int kPhases = 0;  // start, one per key tile, finish
  STTR_HD static int tiles(const Problem& p) { return temporal_tiles(p); }

  STTR_HD static void load_keys(const Problem& p, const TemporalBlock<A>& b, int64_t tile, const BlockContext& ctx) {
    const int k_channel = (p.H + b.head) * dk(p), v_channel = 2 * p.H * dk(p) + b.head * dv(p);
    b.load_tile(p.qkv, tile, k_channel, dk(p), b.l.PA, b.buffer(ctx, tile, b.l.a), p, ctx);  // cost-model: dims=dk
    b.load_tile(p.qkv, tile, v_channel, dv(p), b.l.PB, b.buffer(ctx, tile, b.l.b), p, ctx);  // cost-model: dims=dv
    A* mask = b.buffer(ctx, tile, b.l.scalar0);
    const int valid = b.tile_rows(p, tile);
#pragma unroll 1
    for (int row = ctx.thread; row < kKeyTile; row += ctx.threads) {  // cost-model: loop=tile_rows
      mask[row] = row >= valid ? A(0) : p.keep ? A(p.keep[b.flat_index(p, tile * kKeyTile + row)] ? 1 : 0) : A(1);
    }
  }

  STTR_HD static void start(const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (b.active(p)) {
      load_global_row<A, DK, EXACT>(r.q, p.qkv, b.qkv_base + b.token * p.qkv.stride_t, b.head * dk(p), dk(p));
      fill(r.acc, A(0));
      r.row_max = neg_inf<A>();
      r.denominator = 0;
    }
    load_keys(p, b, 0, ctx);
  }

  STTR_HD static void tile(int tile, const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (tile + 1 < b.tiles) load_keys(p, b, tile + 1, ctx);
    if (b.active(p)) attend_tile(p, b, tile, ctx, r);
  }

  STTR_HD static void finish(const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (!b.active(p)) return;
    const A inverse = reciprocal(r.denominator);
    store_global_row<A, DV, EXACT>(r.acc, inverse, p.out, b.offset(p.out, b.token, 0), b.head * dv(p), dv(p));
    static_cast<A*>(p.stats)[b.flat_index(p, b.token)] = r.row_max * A(p.scale) + log_acc(r.denominator);
  }

  STTR_HD static void attend_tile(const Problem& p, const TemporalBlock<A>& b, int64_t tile,
                                  const BlockContext& ctx, Registers& r) {
    const A* keys = b.buffer(ctx, tile, b.l.a);
    const A* values = b.buffer(ctx, tile, b.l.b);
    const A* mask = b.buffer(ctx, tile, b.l.scalar0);
    const int valid = b.tile_rows(p, tile);
    const A scale_log2 = A(p.scale) * A(kLog2e), eps = drop_eps<A>(p);
    // Two passes over the tile: its maximum first (moving the running maximum once per tile, one
    // exponential to rescale), then one exponential per score. Recomputing the dkh-term dot costs
    // less than holding kKeyTile scores in registers, which made ptxas spill.
    A tile_max = neg_inf<A>();
#pragma unroll 1
    for (int j = 0; j < valid; ++j) {  // cost-model: loop=tile_keys
      tile_max = max_acc(tile_max, dot_row<A, DK, EXACT>(r.q, keys + j * b.l.PA, dk(p)));
    }
    // Every tile holds a valid key, so the new maximum is finite; the first rescale is exp(−inf) = 0.
    const A row_max = max_acc(r.row_max, tile_max);
    const A rescale = exp2_acc((r.row_max - row_max) * scale_log2);
    r.row_max = row_max;
    r.denominator *= rescale;
#pragma unroll
    for (int c = 0; c < DV; ++c) r.acc[c] *= rescale;
#pragma unroll 1
    for (int j = 0; j < valid; ++j) {  // cost-model: loop=tile_keys
      const A a = exp2_acc((dot_row<A, DK, EXACT>(r.q, keys + j * b.l.PA, dk(p)) - row_max) * scale_log2);
      r.denominator += a * (mask[j] + eps);
      add_scaled_row<A, DV, EXACT>(r.acc, a * mask[j], values + j * b.l.PB, dv(p));
    }
  }
};

// Backward, query kernel: one thread per query. D = rowsum(dO ⊙ O) from the saved output (stored
// in ``delta`` for the key kernel), then over key tiles q = exp(s − Λ), dP = dO·v,
// dS = q ⊙ (m ⊙ (dP − D) − 1e-8·D) and dQ = dS·K (docs/kernels.md §7).
template <typename A, int DK, int DV, bool EXACT>
struct TemporalBackwardQuery {
  static constexpr const char* kName = "TemporalBackwardQuery";
  STTR_HD static int dk(const Problem& p) { return head_dims<DK, EXACT>(p.dkh); }
  STTR_HD static int dv(const Problem& p) { return head_dims<DV, EXACT>(p.dvh); }
  struct Registers {
    A q[DK], dout[DV], dq[DK];
    A statistic_log2, d;
  };
  static constexpr int kMaxThreads = kTemporalThreads;
  static constexpr int kPhases = 0;  // start, one per key tile, finish
  STTR_HD static int tiles(const Problem& p) { return temporal_tiles(p); }

  STTR_HD static void start(const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (b.active(p)) load_rows(p, b, r);
    TemporalForward<A, DK, DV, EXACT>::load_keys(p, b, 0, ctx);
  }

  STTR_HD static void tile(int tile, const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (tile + 1 < b.tiles) TemporalForward<A, DK, DV, EXACT>::load_keys(p, b, tile + 1, ctx);
    if (!b.active(p)) return;
    const A* keys = b.buffer(ctx, tile, b.l.a);
    const A* values = b.buffer(ctx, tile, b.l.b);
    const A* mask = b.buffer(ctx, tile, b.l.scalar0);
    const int valid = b.tile_rows(p, tile);
    const A scale_log2 = A(p.scale) * A(kLog2e), eps = drop_eps<A>(p);
#pragma unroll 1
    for (int j = 0; j < valid; ++j) {  // cost-model: loop=tile_keys
      const A w = exp2_acc(dot_row<A, DK, EXACT>(r.q, keys + j * b.l.PA, dk(p)) * scale_log2 - r.statistic_log2);
      const A grad_weight = dot_row<A, DV, EXACT>(r.dout, values + j * b.l.PB, dv(p));
      add_scaled_row<A, DK, EXACT>(r.dq, w * (mask[j] * (grad_weight - r.d) - eps * r.d), keys + j * b.l.PA, dk(p));
    }
  }

  STTR_HD static void finish(const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (!b.active(p)) return;
    store_global_row<A, DK, EXACT>(r.dq, A(p.scale), p.grad_qkv, b.offset(p.grad_qkv, b.token, 0), b.head * dk(p),
                                   dk(p));
  }

  // This thread's q and dO rows, and D = rowsum(dO ⊙ O) from the saved output.
  STTR_HD static void load_rows(const Problem& p, const TemporalBlock<A>& b, Registers& r) {
    load_global_row<A, DK, EXACT>(r.q, p.qkv, b.qkv_base + b.token * p.qkv.stride_t, b.head * dk(p), dk(p));
    load_global_row<A, DV, EXACT>(r.dout, p.grad_out, b.offset(p.grad_out, b.token, 0), b.head * dv(p), dv(p));
    A out[DV];
    load_global_row<A, DV, EXACT>(out, p.out, b.offset(p.out, b.token, 0), b.head * dv(p), dv(p));
    A d = 0;
#pragma unroll
    for (int c = 0; c < DV; ++c) d += r.dout[c] * out[c];
    r.d = d;
    static_cast<A*>(p.delta)[b.flat_index(p, b.token)] = d;
    r.statistic_log2 = static_cast<const A*>(p.stats)[b.flat_index(p, b.token)] * A(kLog2e);
    fill(r.dq, A(0));
  }
};

// Backward, key kernel: one thread per key, streaming query tiles (q, dO, Λ and D). For each
// query: q = exp(s − Λ), dP = dO·v, dS as above, dK += dS·q and dV += m·q·dO. It runs after the
// query kernel (same stream), which wrote D.
template <typename A, int DK, int DV, bool EXACT>
struct TemporalBackwardKey {
  static constexpr const char* kName = "TemporalBackwardKey";
  STTR_HD static int dk(const Problem& p) { return head_dims<DK, EXACT>(p.dkh); }
  STTR_HD static int dv(const Problem& p) { return head_dims<DV, EXACT>(p.dvh); }
  struct Registers {
    A k[DK], v[DV], dk[DK], dv[DV];
    A keep;
  };
  static constexpr int kMaxThreads = kTemporalThreads;
  static constexpr int kPhases = 0;  // start, one per key tile, finish
  STTR_HD static int tiles(const Problem& p) { return temporal_tiles(p); }

  STTR_HD static void load_queries(const Problem& p, const TemporalBlock<A>& b, int64_t tile, const BlockContext& ctx) {
    const int q_channel = b.head * dk(p), dout_channel = b.head * dv(p);
    b.load_tile(p.qkv, tile, q_channel, dk(p), b.l.PA, b.buffer(ctx, tile, b.l.a), p, ctx);  // cost-model: dims=dk
    b.load_tile(p.grad_out, tile, dout_channel, dv(p), b.l.PB, b.buffer(ctx, tile, b.l.b), p,  // cost-model: dims=dv
                ctx);
    A* statistics_log2 = b.buffer(ctx, tile, b.l.scalar0);
    A* d = b.buffer(ctx, tile, b.l.scalar1);
    const int valid = b.tile_rows(p, tile);
#pragma unroll 1
    for (int row = ctx.thread; row < kKeyTile; row += ctx.threads) {  // cost-model: loop=tile_rows
      const int64_t index = b.flat_index(p, tile * kKeyTile + row);
      statistics_log2[row] = row < valid ? static_cast<const A*>(p.stats)[index] * A(kLog2e) : A(0);
      d[row] = row < valid ? static_cast<const A*>(p.delta)[index] : A(0);
    }
  }

  STTR_HD static void start(const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (b.active(p)) {
      load_global_row<A, DK, EXACT>(r.k, p.qkv, b.qkv_base + b.token * p.qkv.stride_t, (p.H + b.head) * dk(p),
                                    dk(p));
      load_global_row<A, DV, EXACT>(r.v, p.qkv, b.qkv_base + b.token * p.qkv.stride_t,
                                    2 * p.H * dk(p) + b.head * dv(p), dv(p));
      r.keep = p.keep ? A(p.keep[b.flat_index(p, b.token)] ? 1 : 0) : A(1);
      fill(r.dk, A(0));
      fill(r.dv, A(0));
    }
    load_queries(p, b, 0, ctx);
  }

  STTR_HD static void tile(int tile, const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (tile + 1 < b.tiles) load_queries(p, b, tile + 1, ctx);
    if (!b.active(p)) return;
    const A* queries = b.buffer(ctx, tile, b.l.a);
    const A* douts = b.buffer(ctx, tile, b.l.b);
    const A* statistics_log2 = b.buffer(ctx, tile, b.l.scalar0);
    const A* d = b.buffer(ctx, tile, b.l.scalar1);
    const int valid = b.tile_rows(p, tile);
    const A scale_log2 = A(p.scale) * A(kLog2e), eps = drop_eps<A>(p);
#pragma unroll 1
    for (int i = 0; i < valid; ++i) {  // cost-model: loop=tile_keys
      const A* query = queries + i * b.l.PA;
      const A* dout = douts + i * b.l.PB;
      const A w = exp2_acc(dot_row<A, DK, EXACT>(r.k, query, dk(p)) * scale_log2 - statistics_log2[i]);
      // dP and dV's update read each dO element once.
      const A kept = r.keep * w;
      A grad_weight = 0;
      for_each_channel<A, DV, EXACT>(dout, dv(p), [&](int c, A value) {
        grad_weight += r.v[c] * value;
        r.dv[c] += kept * value;
      });
      add_scaled_row<A, DK, EXACT>(r.dk, w * (r.keep * (grad_weight - d[i]) - eps * d[i]), query, dk(p));
    }
  }

  STTR_HD static void finish(const Problem& p, const BlockContext& ctx, Registers& r) {
    const TemporalBlock<A> b(p, ctx, dk(p), dv(p));
    if (!b.active(p)) return;
    const int64_t base = b.offset(p.grad_qkv, b.token, 0);
    store_global_row<A, DK, EXACT>(r.dk, A(p.scale), p.grad_qkv, base, (p.H + b.head) * dk(p), dk(p));
    store_global_row<A, DV, EXACT>(r.dv, A(1), p.grad_qkv, base, 2 * p.H * dk(p) + b.head * dv(p), dv(p));
  }
};

}  // namespace sttr
