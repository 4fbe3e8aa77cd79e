// The spatial self-attention core (SSA, docs/network.md §6 and §8) as phase kernels.
//
// A block owns one head of F consecutive frames (Problem::block_tokens) and one thread per
// (frame, query joint), frame-major, so that the threads of a warp mostly share a frame and read
// the same key rows of shared memory (broadcasts). The frames' q, k and v tiles are copied into
// shared memory once, converted to the accumulator type, with the key mask (one value per key,
// read once); no tile is duplicated across warps. Every thread holds its query row in registers
// and computes its whole softmax row: scores are cheap at these head dims (4-16), so a first pass
// finds the row's maximum and a second takes one exponential per score, with no rescaling. The
// output rows are staged in shared memory and written back cooperatively, so that the global
// accesses follow the tensor's unit-stride axis whatever its layout (docs/kernels.md §11).
#pragma once

#include "attention.cuh"

namespace sttr {

// Threads per spatial block to aim for (and at most): 5 frames of 25 joints fill 125 of 128 lanes.
constexpr int kSpatialThreads = 128;

// Where a spatial block keeps its tiles in shared memory: F frames of V joints, rows (f·V + joint)
// with odd pitches. ``bases`` holds, per tensor slot and frame, the offset of frame (n', t).
struct SpatialLayout {
  int F, V, PK, PV, PS;
  size_t bases, q, k, v, mask, dout, weights, grads, bytes;
};

template <typename A>
STTR_HD SpatialLayout spatial_layout(int frames, int V, int dkh, int dvh, bool backward) {
  SpatialLayout l{};
  l.F = frames;
  l.V = V;
  l.PK = vector_pitch(dkh);
  l.PV = vector_pitch(dvh);
  l.PS = odd_pitch(V);
  const size_t rows = static_cast<size_t>(frames) * V;
  size_t at = 0;
  l.bases = at;
  at = align16(at + 3 * static_cast<size_t>(frames) * sizeof(int64_t));
  l.q = at;
  at = align16(at + rows * l.PK * sizeof(A));
  l.k = at;
  at = align16(at + rows * l.PK * sizeof(A));
  l.v = at;
  at = align16(at + rows * l.PV * sizeof(A));
  l.mask = at;
  at = align16(at + rows * sizeof(A));
  if (backward) {
    l.dout = at;
    at = align16(at + rows * l.PV * sizeof(A));
    l.weights = at;
    at = align16(at + rows * l.PS * sizeof(A));
    l.grads = at;
    at = align16(at + rows * l.PS * sizeof(A));
  }
  l.bytes = at;
  return l;
}

// What every phase of a spatial kernel derives from the block index: the head, the frames and the
// shared-memory tiles. Slots of ``bases``: 0 qkv, 1 out (forward) or grad_out, 2 grad_qkv.
template <typename A>
struct SpatialBlock {
  SpatialLayout l;
  int head, valid_frames, f, i;  // f, i: this thread's frame and query (or key) joint
  int64_t frame0;
  int64_t* bases;
  A *q, *k, *v, *mask, *dout, *weights, *grads;

  STTR_HD SpatialBlock(const Problem& p, const BlockContext& ctx, int dkh, int dvh, bool backward)
      : l(spatial_layout<A>(p.block_tokens, static_cast<int>(p.V), dkh, dvh, backward)) {
    head = static_cast<int>(ctx.block % static_cast<uint32_t>(p.H));
    frame0 = static_cast<int64_t>(ctx.block / static_cast<uint32_t>(p.H)) * p.block_tokens;
    const int64_t left = p.sequences - frame0;
    valid_frames = left < p.block_tokens ? static_cast<int>(left) : p.block_tokens;
    f = ctx.thread / l.V;
    i = ctx.thread - f * l.V;
    bases = reinterpret_cast<int64_t*>(ctx.shared + l.bases);
    q = reinterpret_cast<A*>(ctx.shared + l.q);
    k = reinterpret_cast<A*>(ctx.shared + l.k);
    v = reinterpret_cast<A*>(ctx.shared + l.v);
    mask = reinterpret_cast<A*>(ctx.shared + l.mask);
    dout = reinterpret_cast<A*>(ctx.shared + l.dout);
    weights = reinterpret_cast<A*>(ctx.shared + l.weights);
    grads = reinterpret_cast<A*>(ctx.shared + l.grads);
  }

  // Whether this thread owns a (frame, joint) row of a frame that exists.
  STTR_HD bool active() const { return f < valid_frames; }
  STTR_HD int row() const { return f * l.V + i; }
  // Flat (frame, head, joint) index of this thread's row: the statistics and the key mask.
  STTR_HD int64_t flat_index(const Problem& p) const { return ((frame0 + f) * p.H + head) * p.V + i; }

  // Phase 0: the offset of every frame (n', t) in each tensor (null: unused), one division per frame.
  STTR_HD void frame_bases(const Strided* slot0, const Strided* slot1, const Strided* slot2, const Problem& p,
                           const BlockContext& ctx) const {
    if (ctx.thread < l.F) {
      const uint32_t frame = static_cast<uint32_t>(frame0 + ctx.thread);
      const int64_t n = frame / static_cast<uint32_t>(p.T), t = frame - n * p.T;
      bases[ctx.thread] = n * slot0->stride_n + t * slot0->stride_t;
      bases[l.F + ctx.thread] = n * slot1->stride_n + t * slot1->stride_t;
      bases[2 * l.F + ctx.thread] = slot2 ? n * slot2->stride_n + t * slot2->stride_t : 0;
    }
  }

  // The copies give each thread one (frame, joint) row of the block, as the computing phases do,
  // but numbered with the frame or the joint fastest, whichever has the smaller stride in ``x``,
  // so that neighbouring threads touch neighbouring addresses. A thread then walks its row's
  // channels with one pointer: a few instructions per element, its loads all in flight together
  // (the channel loop is unrolled in the exact instantiations). Rows of missing frames read the
  // last existing frame, unconditionally, and are zeroed (loads) or skipped (stores).
  STTR_HD bool copy_row(const Strided& x, const BlockContext& ctx, int& frame, int& joint) const {
    if (x.stride_t <= x.stride_v) {
      frame = ctx.thread % l.F;
      joint = ctx.thread / l.F;
    } else {
      joint = ctx.thread % l.V;
      frame = ctx.thread / l.V;
    }
    return ctx.thread < l.F * l.V;
  }

  // Channels [first, first + dims) of the block's frames into ``tile`` (rows f·V + joint).
  STTR_HD void load_tile(const Strided& x, int slot, int first, int dims, int row_pitch, A* tile,
                         const BlockContext& ctx) const {
    int frame, joint;
    if (!copy_row(x, ctx, frame, joint)) return;
    const int existing = frame < valid_frames ? frame : valid_frames - 1;
    const int64_t offset = bases[slot * l.F + existing] + joint * x.stride_v + first * x.stride_c;
    A* row = tile + (frame * l.V + joint) * row_pitch;
    with_typed_data(x, [&](const auto* data) {
      const auto* element = data + offset;
#pragma unroll
      for (int c = 0; c < dims; ++c, element += x.stride_c) {
        const A value = load_typed<A>(element, 0);
        row[c] = frame < valid_frames ? value : A(0);
      }
    });
  }

  STTR_HD void store_tile(const Strided& x, int slot, int first, int dims, int row_pitch, const A* tile,
                          const BlockContext& ctx) const {
    int frame, joint;
    if (!copy_row(x, ctx, frame, joint) || frame >= valid_frames) return;
    const A* row = tile + (frame * l.V + joint) * row_pitch;
    with_typed_data(x, [&](auto* data) {
      auto* element = data + bases[slot * l.F + frame] + joint * x.stride_v + first * x.stride_c;
#pragma unroll
      for (int c = 0; c < dims; ++c, element += x.stride_c) store_typed(element, 0, row[c]);
    });
  }

  // The key mask of the block's frames as 0/1 (all 1 without DropAttention), read once per key.
  STTR_HD void load_mask(const Problem& p, const BlockContext& ctx) const {
    if (ctx.thread >= l.F * l.V) return;
    const int frame = ctx.thread / l.V, joint = ctx.thread - frame * l.V;
    const int64_t key = ((frame0 + frame) * p.H + head) * p.V + joint;
    mask[ctx.thread] = frame >= valid_frames ? A(0) : p.keep ? A(p.keep[key] ? 1 : 0) : A(1);
  }
};

template <typename A, int D>
STTR_HD void fill(A (&x)[D], A value) {
#pragma unroll
  for (int c = 0; c < D; ++c) x[c] = value;
}

// Whether a shared-memory row is read as 16-byte vectors: on the device (A is float there), by
// the exact instantiations, whose rows are 16-byte aligned (vector_pitch, align16).
template <typename A, int D, bool EXACT>
constexpr bool kVectorRows =
#if defined(__CUDA_ARCH__)
    EXACT && D % 4 == 0;
#else
    false;
#endif

// Channels c .. c + 3 of a row, as one load where kVectorRows holds.
template <typename A, int D, bool EXACT>
STTR_HD void load4(const A* row, int c, A (&out)[4]) {
#if defined(__CUDA_ARCH__)
  if constexpr (kVectorRows<A, D, EXACT>) {
    const float4 v = *reinterpret_cast<const float4*>(row + c);
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
    return;
  }
#endif
#pragma unroll
  for (int i = 0; i < 4; ++i) out[i] = row[c + i];
}

// The row's channels, four at a time where they are read as vectors; the sums run in channel
// order either way.
template <typename A, int D, bool EXACT, typename Body>
STTR_HD void for_each_channel(const A* row, int dims, Body body) {
  if constexpr (kVectorRows<A, D, EXACT>) {
#pragma unroll
    for (int c = 0; c < D; c += 4) {
      A four[4];
      load4<A, D, EXACT>(row, c, four);
#pragma unroll
      for (int i = 0; i < 4; ++i) body(c + i, four[i]);
    }
  } else {
#pragma unroll
    for (int c = 0; c < D; ++c) {
      if (live<EXACT>(c, dims)) body(c, row[c]);
    }
  }
}

// q·k over a tile row's channels.
template <typename A, int D, bool EXACT>
STTR_HD A dot_row(const A (&x)[D], const A* row, int dims) {
  A sum = 0;
  for_each_channel<A, D, EXACT>(row, dims, [&](int c, A value) { sum += x[c] * value; });
  return sum;
}

template <typename A, int D, bool EXACT>
STTR_HD void load_row(A (&x)[D], const A* row, int dims) {
  fill(x, A(0));
  for_each_channel<A, D, EXACT>(row, dims, [&](int c, A value) { x[c] = value; });
}

template <typename A, int D, bool EXACT>
STTR_HD void store_row(const A (&x)[D], A* row, int dims) {
#pragma unroll
  for (int c = 0; c < D; ++c) {
    if (live<EXACT>(c, dims)) row[c] = x[c];
  }
}

// x += w · row
template <typename A, int D, bool EXACT>
STTR_HD void add_scaled_row(A (&x)[D], A w, const A* row, int dims) {
  for_each_channel<A, D, EXACT>(row, dims, [&](int c, A value) { x[c] += w * value; });
}

// The per-head dims of an instantiation: compile-time constants for the exact ones, so that tile
// pitches, copy loops and their index arithmetic fold; the problem's for the generic one.
template <int D, bool EXACT>
STTR_HD int head_dims(int dims) { return EXACT ? D : dims; }

// DropAttention's renormalisation term: 1e-8 with a mask, 0 without (then the mask is all 1 and
// the formulas reduce to the plain softmax's).
template <typename A>
STTR_HD A drop_eps(const Problem& p) { return p.keep ? A(kDropAttentionEps) : A(0); }

// Forward: out and Λ = max s + log(K + 1e-8·L) (docs/kernels.md §7), one exponential per score:
// a = exp(s − max s) gives L, K and the P·V weight at once, and the denominator accumulates
// Σ a·(m + 1e-8) = K + 1e-8·L.
template <typename A, int DK, int DV, bool EXACT>
struct SpatialForward {
  static constexpr const char* kName = "SpatialForward";
  STTR_HD static int dk(const Problem& p) { return head_dims<DK, EXACT>(p.dkh); }
  STTR_HD static int dv(const Problem& p) { return head_dims<DV, EXACT>(p.dvh); }
  struct Registers {
    A out[DV];
  };
  static constexpr int kMaxThreads = kSpatialThreads;
  static constexpr int kPhases = 5;

  STTR_HD static void phase(int step, const Problem& p, const BlockContext& ctx, Registers& r) {
    const SpatialBlock<A> b(p, ctx, dk(p), dv(p), false);
    switch (step) {
      case 0:
        b.frame_bases(&p.qkv, &p.out, nullptr, p, ctx);
        break;
      case 1:
        b.load_tile(p.qkv, 0, b.head * dk(p), dk(p), b.l.PK, b.q, ctx);
        b.load_tile(p.qkv, 0, (p.H + b.head) * dk(p), dk(p), b.l.PK, b.k, ctx);
        b.load_tile(p.qkv, 0, 2 * p.H * dk(p) + b.head * dv(p), dv(p), b.l.PV, b.v, ctx);
        b.load_mask(p, ctx);
        break;
      case 2:
        if (b.active()) attend(p, b, r);
        break;
      case 3:  // every thread is past its reads of v: stage the output rows there
        if (b.active()) store_row<A, DV, EXACT>(r.out, b.v + b.row() * b.l.PV, dv(p));
        break;
      case 4:
        b.store_tile(p.out, 1, b.head * dv(p), dv(p), b.l.PV, b.v, ctx);
        break;
    }
  }

  STTR_HD static void attend(const Problem& p, const SpatialBlock<A>& b, Registers& r) {
    const int V = b.l.V;
    A q[DK];
    load_row<A, DK, EXACT>(q, b.q + b.row() * b.l.PK, dk(p));
    const A* keys = b.k + b.f * V * b.l.PK;
    const A* values = b.v + b.f * V * b.l.PV;
    const A* mask = b.mask + b.f * V;
    // Raw scores; the scale goes into the exponent's multiply-add (scale > 0 keeps the maximum).
    A row_max = neg_inf<A>();
#pragma unroll 1
    for (int j = 0; j < V; ++j) {  // cost-model: loop=joints
      row_max = max_acc(row_max, dot_row<A, DK, EXACT>(q, keys + j * b.l.PK, dk(p)));
    }
    const A scale = A(p.scale), scale_log2 = scale * A(kLog2e), eps = drop_eps<A>(p);
    A denominator = 0;
    fill(r.out, A(0));
#pragma unroll 1
    for (int j = 0; j < V; ++j) {  // cost-model: loop=joints
      const A a = exp2_acc((dot_row<A, DK, EXACT>(q, keys + j * b.l.PK, dk(p)) - row_max) * scale_log2);
      denominator += a * (mask[j] + eps);
      add_scaled_row<A, DV, EXACT>(r.out, a * mask[j], values + j * b.l.PV, dv(p));
    }
    const A inverse = reciprocal(denominator);
#pragma unroll
    for (int c = 0; c < DV; ++c) r.out[c] *= inverse;
    static_cast<A*>(p.stats)[b.flat_index(p)] = row_max * scale + log_acc(denominator);
  }
};

// Backward: dQ, dK and dV of the block's head and frames into grad_qkv (docs/kernels.md §7).
// First each thread takes a query row: q = exp(s − Λ) (one exponential per score) and dP = dO·v,
// kept in shared memory, D = rowsum(m ⊙ q ⊙ dP) = rowsum(dO ⊙ O), then dS = q ⊙ (m ⊙ (dP − D) −
// 1e-8·D) and dQ = dS·K. Then each thread takes a key column of its frame: dK = dSᵀ Q and
// dV = (m ⊙ q)ᵀ dO. No two blocks write the same element: no atomics.
template <typename A, int DK, int DV, bool EXACT>
struct SpatialBackward {
  static constexpr const char* kName = "SpatialBackward";
  STTR_HD static int dk(const Problem& p) { return head_dims<DK, EXACT>(p.dkh); }
  STTR_HD static int dv(const Problem& p) { return head_dims<DV, EXACT>(p.dvh); }
  struct Registers {
    A dq[DK], dk[DK], dv[DV];
  };
  static constexpr int kMaxThreads = kSpatialThreads;
  static constexpr int kPhases = 6;

  STTR_HD static void phase(int step, const Problem& p, const BlockContext& ctx, Registers& r) {
    const SpatialBlock<A> b(p, ctx, dk(p), dv(p), true);
    const int q_channel = b.head * dk(p), k_channel = (p.H + b.head) * dk(p),
              v_channel = 2 * p.H * dk(p) + b.head * dv(p);
    switch (step) {
      case 0:
        b.frame_bases(&p.qkv, &p.grad_out, &p.grad_qkv, p, ctx);
        break;
      case 1:
        b.load_tile(p.qkv, 0, q_channel, dk(p), b.l.PK, b.q, ctx);
        b.load_tile(p.qkv, 0, k_channel, dk(p), b.l.PK, b.k, ctx);
        b.load_tile(p.qkv, 0, v_channel, dv(p), b.l.PV, b.v, ctx);
        b.load_tile(p.grad_out, 1, b.head * dv(p), dv(p), b.l.PV, b.dout, ctx);
        b.load_mask(p, ctx);
        break;
      case 2:
        if (b.active()) query_rows(p, b, r);
        break;
      case 3:  // k is read no more: dQ goes there
        if (b.active()) {
          store_row<A, DK, EXACT>(r.dq, b.k + b.row() * b.l.PK, dk(p));
          key_columns(p, b, r);
        }
        break;
      case 4:  // q and v are read no more: dK and dV go there
        if (b.active()) {
          store_row<A, DK, EXACT>(r.dk, b.q + b.row() * b.l.PK, dk(p));
          store_row<A, DV, EXACT>(r.dv, b.v + b.row() * b.l.PV, dv(p));
        }
        break;
      case 5:
        b.store_tile(p.grad_qkv, 2, q_channel, dk(p), b.l.PK, b.k, ctx);
        b.store_tile(p.grad_qkv, 2, k_channel, dk(p), b.l.PK, b.q, ctx);
        b.store_tile(p.grad_qkv, 2, v_channel, dv(p), b.l.PV, b.v, ctx);
        break;
    }
  }

  // This thread's query row i: the weights q (in ``weights``), then dS (in ``grads``) and dQ.
  STTR_HD static void query_rows(const Problem& p, const SpatialBlock<A>& b, Registers& r) {
    const int V = b.l.V;
    A q[DK], dout[DV];
    load_row<A, DK, EXACT>(q, b.q + b.row() * b.l.PK, dk(p));
    load_row<A, DV, EXACT>(dout, b.dout + b.row() * b.l.PV, dv(p));
    const A* keys = b.k + b.f * V * b.l.PK;
    const A* values = b.v + b.f * V * b.l.PV;
    const A* mask = b.mask + b.f * V;
    A* weights = b.weights + b.row() * b.l.PS;
    A* grads = b.grads + b.row() * b.l.PS;
    const A scale = A(p.scale), scale_log2 = scale * A(kLog2e), eps = drop_eps<A>(p);
    const A statistic_log2 = static_cast<const A*>(p.stats)[b.flat_index(p)] * A(kLog2e);
    A d = 0;  // D = rowsum(P' ⊙ dP) = rowsum(dO ⊙ O)
#pragma unroll 1
    for (int j = 0; j < V; ++j) {  // cost-model: loop=joints
      const A w = exp2_acc(dot_row<A, DK, EXACT>(q, keys + j * b.l.PK, dk(p)) * scale_log2 - statistic_log2);
      const A grad_weight = dot_row<A, DV, EXACT>(dout, values + j * b.l.PV, dv(p));
      weights[j] = w;
      grads[j] = grad_weight;
      d += mask[j] * w * grad_weight;
    }
    fill(r.dq, A(0));
#pragma unroll 1
    for (int j = 0; j < V; ++j) {  // cost-model: loop=joints
      // dS = q ⊙ (m ⊙ (dP − D) − 1e-8·D): dropped keys still see the 1e-8·L term.
      const A grad_score = weights[j] * (mask[j] * (grads[j] - d) - eps * d) * scale;
      grads[j] = grad_score;
      add_scaled_row<A, DK, EXACT>(r.dq, grad_score, keys + j * b.l.PK, dk(p));
    }
  }

  // This thread's key column j = i: dK_j = Σ_i dS_ij q_i, dV_j = Σ_i m_j q_ij dO_i.
  STTR_HD static void key_columns(const Problem& p, const SpatialBlock<A>& b, Registers& r) {
    const int V = b.l.V, j = b.i;
    const A keep = b.mask[b.row()];
    const A* queries = b.q + b.f * V * b.l.PK;
    const A* douts = b.dout + b.f * V * b.l.PV;
    const A* weights = b.weights + b.f * V * b.l.PS + j;
    const A* grads = b.grads + b.f * V * b.l.PS + j;
    fill(r.dk, A(0));
    fill(r.dv, A(0));
#pragma unroll 1
    for (int i = 0; i < V; ++i) {  // cost-model: loop=joints
      add_scaled_row<A, DK, EXACT>(r.dk, grads[i * b.l.PS], queries + i * b.l.PK, dk(p));
      add_scaled_row<A, DV, EXACT>(r.dv, keep * weights[i * b.l.PS], douts + i * b.l.PV, dv(p));
    }
  }
};

}  // namespace sttr
