// The temporal self-attention core (TSA, docs/network.md §7 and §8) as phase kernels.
//
// A block owns ``block_tokens`` consecutive tokens (frames) of one (sequence, head): 16 per warp,
// queries in the forward and the query kernel of the backward, keys in the key kernel. Its
// products are warp-level 16 x 8 x 16 matrix products on fragments (csrc/warp.cuh): tensor cores
// for float16 and bfloat16, the portable body otherwise. A warp's own rows (q and dO, or k and v)
// are staged once into its shared-memory area in the tensor's type, columns padded with zeros to
// whole 16-deep products. The forward stages the other side of the sequence (keys) in chunks of
// kKeyChunk tokens, each before its tiles; in the backward it streams through shared memory in
// tiles of kKeyTile tokens, double-buffered: the phase that computes on tile τ also copies tile
// τ + 1, and the barrier between phases separates the two. Each token of a tile (and its mask
// value) is read once per block; nothing L × L is ever stored, so memory is O(L) per (sequence,
// head).
#pragma once

#include "spatial.cuh"
#include "warp.cuh"

namespace sttr {

constexpr int kKeyTile = 32;
// Rows of a warp: the products' M.
constexpr int kWarpRows = 16;
// Rows (tokens) per temporal block at most; longer sequences are split into chunks (dispatch.h).
constexpr int kTemporalRows = 160;
constexpr int kTemporalThreads = kTemporalRows / kWarpRows * kWarpSize;
// Keys the forward stages at once (a chunk): as many as a block has queries at most.
constexpr int kKeyChunk = kTemporalRows;

// Key (or query) tiles of a sequence: the tile phases of every temporal kernel.
STTR_HD int temporal_tiles(const Problem& p) {
  return static_cast<int>((static_cast<uint32_t>(p.T) + kKeyTile - 1) / kKeyTile);
}

STTR_HD constexpr int round_up16(int x) { return (x + 15) / 16 * 16; }
// Row pitch of an operand tile of ``columns`` (a multiple of 16): rows start on 16-byte boundaries
// for ldmatrix, and at 2 bytes per element the 8 rows an ldmatrix matrix reads fall on 8
// distinct 16-byte bank groups (the pitch is 16 bytes more than a multiple of 128 bytes for 16,
// 32 and 64 columns).
STTR_HD constexpr int fragment_pitch(int columns) { return columns + 8; }

// Shared memory of a temporal block: two tile buffers, each with kKeyTile rows of the ``a``
// operand (q or k, ``a_columns``) and the ``b`` operand (v or dO, ``b_columns``) and two per-row
// values (the mask and the mask plus 1e-8, or Λ·log2(e) and D); then per warp its own 16 rows of
// both operands, 16 per-row values and the exchange area of the portable product.
struct TemporalLayout {
  int PA, PB;
  size_t buffer_bytes, a, b, scalar0, scalar1;
  size_t warp_bytes, own_a, own_b, own_scalar, exchange;
  size_t bytes;
};

template <typename A>
STTR_HD TemporalLayout temporal_layout(int a_columns, int b_columns, int warps) {
  TemporalLayout l{};
  l.PA = fragment_pitch(a_columns);
  l.PB = fragment_pitch(b_columns);
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
  at = 0;
  l.own_a = at;
  at = align16(at + kWarpRows * l.PA * sizeof(A));
  l.own_b = at;
  at = align16(at + kWarpRows * l.PB * sizeof(A));
  l.own_scalar = at;
  at = align16(at + kWarpRows * sizeof(A));
  l.exchange = at;
  at = align16(at + kWarpSize * kExchangeElements * sizeof(A));
  l.warp_bytes = at;
  l.bytes = 2 * l.buffer_bytes + static_cast<size_t>(warps) * l.warp_bytes;
  return l;
}

template <typename E>
STTR_HD E zero_element() { return E(0.0f); }

#if defined(__CUDA_ARCH__)
STTR_HD uint32_t element_bits(__nv_bfloat16 x) { return __bfloat16_as_ushort(x); }
STTR_HD uint32_t element_bits(__half x) { return __half_as_ushort(x); }
#endif

// ``values``, N elements of a row starting on a 16-byte boundary, into ``row``, or zeros where
// ``keep`` is false: on the device as 16-byte words (one STS.128 each, 16-bit elements packed in
// pairs), on the host element by element.
template <int N, typename E>
STTR_HD void store_row_words(E* row, const E (&values)[N], bool keep) {
#if defined(__CUDA_ARCH__)
  static_assert(N * sizeof(E) % 16 == 0, "whole 16-byte words");
  constexpr int kWords = static_cast<int>(N * sizeof(E) / 4);
  uint32_t words[kWords];
#pragma unroll
  for (int i = 0; i < kWords; ++i) {
    if constexpr (sizeof(E) == 2) {
      words[i] = __byte_perm(element_bits(values[2 * i]), element_bits(values[2 * i + 1]), 0x5410);
    } else {
      words[i] = __float_as_uint(values[i]);
    }
  }
#pragma unroll
  for (int w = 0; w < kWords / 4; ++w) {
    reinterpret_cast<uint4*>(row)[w] = keep ? make_uint4(words[4 * w], words[4 * w + 1], words[4 * w + 2], words[4 * w + 3])
                                            : make_uint4(0, 0, 0, 0);
  }
#else
  for (int i = 0; i < N; ++i) row[i] = keep ? values[i] : zero_element<E>();
#endif
}

template <typename Pointer>
using ElementOf = std::remove_cv_t<std::remove_pointer_t<Pointer>>;

// What every phase of a temporal kernel derives from the block index. Blocks of one (sequence,
// head) are adjacent, so the tiles they stream come from DRAM once and from L2 after.
template <typename A, int DK, int DV, bool EXACT>
struct TemporalBlock {
  // Operand columns: dk (at most 16) padded to one 16-deep product, dv to whole ones.
  static constexpr int KA = 16, KB = round_up16(DV);
  // Depth of the q·k products: the padding columns are zero, so the portable body stops at dk.
  static constexpr int kScoreDepth = EXACT ? DK : KA;

  TemporalLayout l;
  int head, warp, lane, dk, dv;
  int64_t sequence, n, joint, row0, tiles;  // row0: the warp's first query (or key)
  int64_t qkv_base;                         // offset of (n', joint) in qkv

  STTR_HD static TemporalLayout layout(int warps) { return temporal_layout<A>(KA, KB, warps); }

  STTR_HD TemporalBlock(const Problem& p, const BlockContext& ctx) : l(layout(ctx.threads / kWarpSize)) {
    dk = head_dims<DK, EXACT>(p.dkh);
    dv = head_dims<DV, EXACT>(p.dvh);
    const uint32_t chunk = ctx.block % static_cast<uint32_t>(p.chunks);
    const uint32_t sequence_head = ctx.block / static_cast<uint32_t>(p.chunks);
    head = static_cast<int>(sequence_head % static_cast<uint32_t>(p.H));
    const uint32_t sequence32 = sequence_head / static_cast<uint32_t>(p.H);
    sequence = sequence32;
    n = sequence32 / static_cast<uint32_t>(p.V);
    joint = sequence - n * p.V;
    warp = ctx.thread / kWarpSize;
    lane = ctx.thread % kWarpSize;
    row0 = static_cast<int64_t>(chunk) * p.block_tokens + warp * kWarpRows;
    tiles = (static_cast<uint32_t>(p.T) + kKeyTile - 1) / kKeyTile;
    qkv_base = n * p.qkv.stride_n + joint * p.qkv.stride_v;
  }

  // Whether the warp has a row (the same for all its lanes, so its exchanges stay converged).
  STTR_HD bool warp_active(const Problem& p) const { return row0 < p.T; }
  // The token of the lane's fragment rows g (half 0) and g + 8 (half 1).
  STTR_HD int64_t fragment_token(int half) const { return row0 + lane / 4 + 8 * half; }
  // Flat (sequence, head, token) index: the statistics, D and the key mask.
  STTR_HD int64_t flat_index(const Problem& p, int64_t t) const { return (sequence * p.H + head) * p.T + t; }
  STTR_HD int64_t offset(const Strided& x, int64_t t, int channel) const {
    return n * x.stride_n + joint * x.stride_v + t * x.stride_t + static_cast<int64_t>(channel) * x.stride_c;
  }
  template <typename T>
  STTR_HD T* buffer(const BlockContext& ctx, int64_t tile, size_t region) const {
    return reinterpret_cast<T*>(ctx.shared + (tile & 1) * l.buffer_bytes + region);
  }
  template <typename T>
  STTR_HD T* own(const BlockContext& ctx, size_t region) const {
    return reinterpret_cast<T*>(ctx.shared + 2 * l.buffer_bytes + warp * l.warp_bytes + region);
  }
  STTR_HD int tile_rows(const Problem& p, int64_t tile) const {
    const int64_t left = p.T - tile * kKeyTile;
    return left < kKeyTile ? static_cast<int>(left) : kKeyTile;
  }

  // Zeroes the padding columns of both buffers' tiles (dk .. 16, dv .. KB) once: the copies
  // never write them.
  template <typename E>
  STTR_HD void zero_padding(const BlockContext& ctx) const {
    const int pad_a = KA - dk, pad_b = KB - dv, per_row = pad_a + pad_b;
    const int total = 2 * kKeyTile * per_row;
#pragma unroll 1
    for (int e = ctx.thread; e < total; e += ctx.threads) {  // cost-model: loop=zero_pad
      const int row = e / per_row, c = e - row * per_row;
      const int tile = row / kKeyTile, tile_row = row - tile * kKeyTile;
      if (c < pad_a) {
        buffer<E>(ctx, tile, l.a)[tile_row * l.PA + dk + c] = zero_element<E>();
      } else {
        buffer<E>(ctx, tile, l.b)[tile_row * l.PB + dv + c - pad_a] = zero_element<E>();
      }
    }
  }

  // The warp's 16 rows of channels [first, first + dims) into ``rows`` (COLUMNS of them, the rest
  // zero), tokens fastest across the lanes; rows past the sequence are zero.
  // kCopyBatch loads in flight per trip (all of them at once held too many registers).
  template <int COLUMNS, typename E>
  STTR_HD void stage_rows(const E* data, const Strided& x, int first, int dims, int pitch, E* rows,
                          const Problem& p) const {
    static_assert(kWarpRows * COLUMNS % (kWarpSize * kCopyBatch) == 0, "whole batches");
#pragma unroll 1
    for (int i0 = 0; i0 < kWarpRows * COLUMNS / kWarpSize; i0 += kCopyBatch) {  // cost-model: loop=stage_rows
      E values[kCopyBatch];
      bool inside[kCopyBatch];
#pragma unroll
      for (int k = 0; k < kCopyBatch; ++k) {
        const int e = lane + kWarpSize * (i0 + k), row = e % kWarpRows, c = e / kWarpRows;
        inside[k] = row0 + row < p.T && c < dims;
        values[k] = load_raw(data, offset(x, inside[k] ? row0 + row : row0, first + (c < dims ? c : 0)));
      }
#pragma unroll
      for (int k = 0; k < kCopyBatch; ++k) {
        const int e = lane + kWarpSize * (i0 + k);
        rows[e % kWarpRows * pitch + e / kWarpRows] = inside[k] ? values[k] : zero_element<E>();
      }
    }
  }

  // Channels [first, first + dims) of the tile's tokens into rows of ``rows``; missing tokens read
  // the last existing one, unconditionally, and are zeroed. Each copy follows the tensor's smaller
  // stride, so that neighbouring threads touch neighbouring addresses.
  template <typename E>
  STTR_HD void load_tile(const E* data, const Strided& x, int64_t tile, int first, int dims, int row_pitch, E* rows,
                         const Problem& p, const BlockContext& ctx) const {
    if (x.stride_t <= x.stride_c) {
      load_tile_along_tokens(data, x, tile, first, dims, row_pitch, rows, p, ctx);  // cost-model: only=tokens_fastest
    } else {
      load_tile_along_channels(data, x, tile, first, dims, row_pitch, rows, p, ctx);  // cost-model: only=channels_fastest
    }
  }

  // Tokens with the smaller stride (the modules' layout, the contiguous one): thread t takes token
  // t % kKeyTile and every (threads / kKeyTile)-th channel from t / kKeyTile on, kCopyBatch loads in
  // flight: a warp reads 32 neighbouring tokens of a channel, a few instructions per element.
  template <typename E>
  STTR_HD void load_tile_along_tokens(const E* data, const Strided& x, int64_t tile, int first, int dims,
                                      int row_pitch, E* rows, const Problem& p, const BlockContext& ctx) const {
    const int valid = tile_rows(p, tile);
    const int64_t t0 = tile * kKeyTile;
    const int row = ctx.thread % kKeyTile, group = ctx.thread / kKeyTile, groups = ctx.threads / kKeyTile;
    const E* token = data + offset(x, t0 + (row < valid ? row : valid - 1), first);
    E* out = rows + row * row_pitch;
    // kCopyBatch loads before any store, channels past the end reloading the batch's first.
#pragma unroll 1
    for (int c0 = group; c0 < dims; c0 += kCopyBatch * groups) {  // cost-model: loop=token_copy
      E values[kCopyBatch];
#pragma unroll
      for (int k = 0; k < kCopyBatch; ++k) {
        const int c = c0 + k * groups;
        values[k] = load_raw(token, static_cast<int64_t>(c < dims ? c : c0) * x.stride_c);
      }
#pragma unroll
      for (int k = 0; k < kCopyBatch; ++k) {
        if (c0 + k * groups < dims) out[c0 + k * groups] = row < valid ? values[k] : zero_element<E>();
      }
    }
  }

  // Channels with the smaller stride (channels_last): copy_box puts neighbouring threads on
  // neighbouring channels.
  template <typename E>
  STTR_HD void load_tile_along_channels(const E* data, const Strided& x, int64_t tile, int first, int dims,
                                        int row_pitch, E* rows, const Problem& p, const BlockContext& ctx) const {
    const int valid = tile_rows(p, tile);
    const int64_t t0 = tile * kKeyTile;
    copy_box<E>(
        dims, kKeyTile, 1, ctx,
        [&](int c, int row, int) {
          const E value = load_raw(data, offset(x, t0 + (row < valid ? row : valid - 1), first + c));
          return row < valid ? value : zero_element<E>();
        },
        [&](int c, int row, int, E value) { rows[row * row_pitch + c] = value; });
  }

  // The lane's outputs of the fragments ``x`` (8-column blocks of the warp's rows), times
  // ``scale``, into channels [first, first + dims) of ``tensor``, for the rows that exist.
  template <int BLOCKS, typename E>
  STTR_HD void store_fragments(const FragC<A> (&x)[BLOCKS], const A (&scale)[2], E* data, const Strided& tensor,
                               int first, int dims, const Problem& p) const {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t token = fragment_token(half);
      if (token >= p.T) continue;
#pragma unroll
      for (int j = 0; j < BLOCKS; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * j + 2 * (lane % 4) + e;
          if (c < dims) store_typed(data, offset(tensor, token, first + c), x[j].x[2 * half + e] * scale[half]);
        }
      }
    }
  }
};

template <typename A, int BLOCKS>
STTR_HD void zero_fragments(FragC<A> (&x)[BLOCKS]) {
#pragma unroll
  for (int j = 0; j < BLOCKS; ++j) x[j] = {{A(0), A(0), A(0), A(0)}};
}

// Forward: an online softmax over key tiles. The keys of a sequence are staged in shared memory
// in chunks of kKeyChunk (one chunk at ST-TR's lengths, L <= 160): the start phase stages the
// warps' query rows and the first chunk, a phase of its own each later chunk (after the barrier
// that ends the previous chunk's tiles), so the tile phases only compute. A chunk is copied a
// warp per channel at a time, its lanes on 32 neighbouring tokens of each of the chunk's tiles,
// whose loads are in flight together. Per tile a warp's scores S = Q·Kᵀ (16 rows × 32 keys) stay
// in registers; each row's tile maximum (a quad's lanes share a row) moves its running maximum
// once (one exponential per row and tile to rescale), then one exponential per score; the
// denominator accumulates Σ a·(m + 1e-8) = K + 1e-8·L and the output Σ (m·a rounded to the input
// type)·v, relative to the running maximum over all keys (docs/kernels.md §8 and §11).
template <typename A, int DK, int DV, bool EXACT>
struct TemporalForward {
  static constexpr const char* kName = "TemporalForward";
  using Block = TemporalBlock<A, DK, DV, EXACT>;
  static constexpr int KA = Block::KA, KB = Block::KB;
  static constexpr int NV = KB / 8;  // 8-column blocks of the output
  static constexpr int PA = fragment_pitch(KA), PB = fragment_pitch(KB);
  static constexpr int kChunkTiles = kKeyChunk / kKeyTile;
  static_assert(kKeyChunk % kKeyTile == 0, "whole tiles per chunk");
  // Shared memory: per warp its own query rows and the exchange area of the portable product,
  // then the chunk: k, v, the mask and the mask plus 1e-8 of kKeyChunk keys. Elements take
  // sizeof(A) bytes, enough for every E.
  static constexpr size_t kOwnQ = 0, kExchange = align16(kWarpRows * PA * sizeof(A));
  static constexpr size_t kWarpBytes = kExchange + align16(kWarpSize * kExchangeElements * sizeof(A));
  static constexpr size_t kKeys = 0, kValues = align16(kKeyChunk * PA * sizeof(A));
  static constexpr size_t kMask = kValues + align16(kKeyChunk * PB * sizeof(A));
  static constexpr size_t kMaskEps = kMask + align16(kKeyChunk * sizeof(A));
  static constexpr size_t kChunkBytes = kMaskEps + align16(kKeyChunk * sizeof(A));

  struct Registers {
    FragC<A> acc[NV];
    A row_max[2], denominator[2];  // rows g and g + 8
    // The block's sequence (n'·V + joint), its n' and joint, and head, derived from the block
    // index (divisions) in the start phase, so that the finish phase divides nothing; offsets are
    // derived from them where needed (64-bit offsets held across the tiles spilled at 16/64).
    uint32_t sequence, n, joint;
    int head, row0;  // row0: the warp's first query
  };
  struct Place {
    int64_t n, joint, flat_base;  // flat_base: flat index of (sequence, head, token 0)
    STTR_HD int64_t offset(const Strided& x) const { return n * x.stride_n + joint * x.stride_v; }
  };
  STTR_HD static Place place(const Problem& p, const Registers& r) {
    return {r.n, r.joint, (static_cast<int64_t>(r.sequence) * p.H + r.head) * p.T};
  }
  static constexpr int kMaxThreads = kTemporalThreads;
  static constexpr int kPhases = 0;  // start, one per key tile (and per later key chunk), finish
  STTR_HD static int tiles(const Problem& p) { return temporal_tiles(p); }
  STTR_HD static size_t shared_bytes(const Problem& p) {
    return static_cast<size_t>(p.block_tokens / kWarpRows) * kWarpBytes + kChunkBytes;
  }
  STTR_HD static unsigned char* chunk_buffer(const BlockContext& ctx) {
    return ctx.shared + static_cast<size_t>(ctx.threads / kWarpSize) * kWarpBytes;
  }
  STTR_HD static unsigned char* own(const BlockContext& ctx) { return ctx.shared + ctx.thread / kWarpSize * kWarpBytes; }

  // Columns of a row one item of the chunk copy writes: all KA of a key row (dk loaded, the rest
  // zero), kValueGroup of a value row.
  static constexpr int kValueGroup = 8;
  static_assert(KB % kValueGroup == 0, "whole value groups");

  // One operand of the chunk's tiles into ``rows`` (pitch PITCH): items of (tile, group of
  // COLUMNS columns), a warp per item, its lanes on the tile's 32 tokens; each lane loads the
  // group's channels of its token (those below CAP and dims; the others are zero) and writes its
  // row's COLUMNS as 16-byte words. ``data`` points at the operand's first channel of (n', joint).
  // A token past the sequence reads the last one and keeps it when REPEAT, else is zero. Every
  // column of the tiles' rows is written, padding included, so nothing is zeroed apart.
  template <int COLUMNS, int GROUPS, int PITCH, int CAP, bool REPEAT, typename E>
  STTR_HD static void copy_rows(const E* data, const Strided& x, int dims, int first, int tiles, E* rows,
                                const Problem& p, const BlockContext& ctx) {
    const int lane = ctx.thread % kWarpSize, warps = ctx.threads / kWarpSize;
#pragma unroll 1
    for (int item = ctx.thread / kWarpSize; item < tiles * GROUPS; item += warps) {  // cost-model: loop=chunk_items
      const int j = item / GROUPS, g = item - j * GROUPS;
      const int row = kKeyTile * j + lane, t = first + row;
      const bool exists = t < p.T;
      // The channels through a pointer stepped by the channel stride in bytes: two additions per
      // load rather than a 64-bit product.
      const unsigned char* channel = reinterpret_cast<const unsigned char*>(
          data + static_cast<int64_t>(exists ? t : p.T - 1) * x.stride_t + static_cast<int64_t>(g * COLUMNS) * x.stride_c);
      const int64_t step = x.stride_c * static_cast<int64_t>(sizeof(E));
      E values[COLUMNS];
#pragma unroll
      for (int c = 0; c < COLUMNS; ++c) {
        values[c] = zero_element<E>();
        if (c < CAP && (GROUPS == 1 || g * COLUMNS + c < CAP) && live<EXACT>(g * COLUMNS + c, dims)) {
          values[c] = load_raw(reinterpret_cast<const E*>(channel), 0);
        }
        channel += step;
      }
      store_row_words<COLUMNS>(rows + row * PITCH + g * COLUMNS, values, REPEAT || exists);
    }
  }

  // Keys [kKeyChunk·chunk, kKeyChunk·(chunk + 1)) of the sequence into the chunk buffer (the tiles
  // that exist), and their mask values. Keys past the sequence repeat the last key's k (their v,
  // mask and mask plus 1e-8 are zero), so that a tile's maximum score is that of its keys in the
  // sequence without a select per score.
  template <typename E>
  STTR_HD static void load_chunk(const Problem& p, const Registers& r, const Place& at, int chunk,
                                 const BlockContext& ctx, const E* qkv) {
    const int dk = head_dims<DK, EXACT>(p.dkh), dv = head_dims<DV, EXACT>(p.dvh);
    const int first = chunk * kKeyChunk;
    const int left = temporal_tiles(p) - chunk * kChunkTiles, tiles = left < kChunkTiles ? left : kChunkTiles;
    unsigned char* buffer = chunk_buffer(ctx);
    const E* sequence = qkv + at.offset(p.qkv);
    copy_rows<KA, 1, PA, DK, true>(sequence + static_cast<int64_t>((p.H + r.head) * dk) * p.qkv.stride_c,  // cost-model: dims=dk
                                   p.qkv, dk, first, tiles, reinterpret_cast<E*>(buffer + kKeys), p, ctx);
    copy_rows<kValueGroup, KB / kValueGroup, PB, DV, false>(  // cost-model: dims=dv
        sequence + static_cast<int64_t>(2 * p.H * dk + r.head * dv) * p.qkv.stride_c, p.qkv, dv, first, tiles,
        reinterpret_cast<E*>(buffer + kValues), p, ctx);
    A* mask = reinterpret_cast<A*>(buffer + kMask);
    A* mask_eps = reinterpret_cast<A*>(buffer + kMaskEps);
    const A eps = drop_eps<A>(p);
#pragma unroll 1
    for (int row = ctx.thread; row < tiles * kKeyTile; row += ctx.threads) {  // cost-model: loop=chunk_rows
      const bool in_sequence = first + row < p.T;
      const A m = !in_sequence ? A(0) : p.keep ? A(p.keep[at.flat_base + first + row] ? 1 : 0) : A(1);
      mask[row] = m;
      mask_eps[row] = in_sequence ? m + eps : A(0);
    }
  }

  // The warp's 16 query rows, padded with zero columns (and zero rows past the sequence): lane l
  // takes row l / 2 and its 8 columns from 8·(l % 2), loaded through a pointer stepped by the
  // channel stride and written as 16-byte words.
  template <typename E>
  STTR_HD static void stage_queries(const Problem& p, const Registers& r, const Place& at, const BlockContext& ctx,
                                    const E* qkv) {
    constexpr int kColumns = KA / 2;
    const int lane = ctx.thread % kWarpSize, row = lane / 2, group = lane % 2;
    const int dk = head_dims<DK, EXACT>(p.dkh);
    const bool exists = r.row0 + row < p.T;
    const unsigned char* channel = reinterpret_cast<const unsigned char*>(
        qkv + at.offset(p.qkv) + static_cast<int64_t>(exists ? r.row0 + row : r.row0) * p.qkv.stride_t +
        static_cast<int64_t>(r.head * dk + kColumns * group) * p.qkv.stride_c);
    const int64_t step = p.qkv.stride_c * static_cast<int64_t>(sizeof(E));
    E values[kColumns];
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
      values[c] = zero_element<E>();
      if (c < DK && kColumns * group + c < dk) values[c] = load_raw(reinterpret_cast<const E*>(channel), 0);
      channel += step;
    }
    store_row_words<kColumns>(reinterpret_cast<E*>(own(ctx) + kOwnQ) + row * PA + kColumns * group, values, exists);
  }

  // The phases take qkv typed: the launcher switches on the element type once, outside the
  // phases (csrc/cuda_launch.cu, attention.cuh run_chunked_phase).
  template <typename E>
  STTR_HD static void start(const Problem& p, const BlockContext& ctx, Registers& r, const E* qkv) {
    const Block b(p, ctx);
    r.sequence = static_cast<uint32_t>(b.sequence);
    r.n = static_cast<uint32_t>(b.n);
    r.joint = static_cast<uint32_t>(b.joint);
    r.head = b.head;
    r.row0 = static_cast<int>(b.row0);
    const Place at{b.n, b.joint, b.flat_index(p, 0)};
    if (r.row0 < p.T) stage_queries(p, r, at, ctx, qkv);
    load_chunk(p, r, at, 0, ctx, qkv);
    zero_fragments(r.acc);
    r.row_max[0] = r.row_max[1] = neg_inf<A>();
    r.denominator[0] = r.denominator[1] = A(0);
  }

  template <typename E>
  STTR_HD static void chunk(int chunk, const Problem& p, const BlockContext& ctx, Registers& r, const E* qkv) {
    load_chunk(p, r, place(p, r), chunk, ctx, qkv);
  }

  template <typename E>
  STTR_HD static void tile(int tile, const Problem& p, const BlockContext& ctx, Registers& r, const E*) {
    if (r.row0 < p.T) attend<E>(p, tile % kChunkTiles, ctx, r);
  }

  // ``tile``: the tile's place in the chunk.
  template <typename E>
  STTR_HD static void attend(const Problem& p, int tile, const BlockContext& ctx, Registers& r) {
    const unsigned char* buffer = chunk_buffer(ctx);
    const int first = tile * kKeyTile;
    const E* keys = reinterpret_cast<const E*>(buffer + kKeys) + first * PA;
    const E* values = reinterpret_cast<const E*>(buffer + kValues) + first * PB;
    const A* mask = reinterpret_cast<const A*>(buffer + kMask) + first;
    const A* mask_eps = reinterpret_cast<const A*>(buffer + kMaskEps) + first;
    E* exchange = reinterpret_cast<E*>(own(ctx) + kExchange);
    const int lane = ctx.thread % kWarpSize, q = lane % 4;
    const A scale_log2 = A(p.scale) * A(kLog2e);
    const FragA<E> query = load_a(reinterpret_cast<const E*>(own(ctx) + kOwnQ), PA, 0, lane);
    FragC<A> s[kKeyTile / 8];
#pragma unroll
    for (int h = 0; h < kKeyTile / 16; ++h) {
      FragB<E> key[2];
      load_b_from_columns(key, keys, PA, 16 * h, 0, lane);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        s[2 * h + j] = {{A(0), A(0), A(0), A(0)}};
        mma<Block::kScoreDepth>(s[2 * h + j], query, key[j], exchange, lane);  // cost-model: dims=dk
      }
    }
    // Keys past the sequence repeat the last key (load_chunk): each row's tile maximum is that of
    // keys in the sequence, so finite, and the first rescale is exp(−inf) = 0.
    A tile_max[2] = {neg_inf<A>(), neg_inf<A>()};
#pragma unroll
    for (int j = 0; j < kKeyTile / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) tile_max[e / 2] = max_acc(tile_max[e / 2], s[j].x[e]);
    }
    A shift[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const A row_max = max_acc(r.row_max[half], quad_max(tile_max[half]));
      const A rescale = exp2_acc((r.row_max[half] - row_max) * scale_log2);
      r.row_max[half] = row_max;
      shift[half] = row_max * scale_log2;
      r.denominator[half] *= rescale;
#pragma unroll
      for (int j = 0; j < NV; ++j) r.acc[j].x[2 * half] *= rescale, r.acc[j].x[2 * half + 1] *= rescale;
    }
    // a = exp(s − max): the denominator takes a·(m + 1e-8), the P·V operand m·a.
#pragma unroll
    for (int j = 0; j < kKeyTile / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = 8 * j + 2 * q + e % 2;
        const A a = exp2_acc(s[j].x[e] * scale_log2 - shift[e / 2]);
        r.denominator[e / 2] += a * mask_eps[key];
        s[j].x[e] = a * mask[key];
      }
    }
    if constexpr (kFloat16<E>) {
      scaled_product(s, values, exchange, lane, r);
    } else {
#pragma unroll
      for (int h = 0; h < kKeyTile / 16; ++h) {
        const FragA<E> weights = fragment_from<E>(s[2 * h], s[2 * h + 1]);
#pragma unroll
        for (int c = 0; c < NV / 2; ++c) {
          FragB<E> value[2];
          load_b_from_rows(value, values, PB, 16 * c, 16 * h, lane);
          mma<16>(r.acc[2 * c], weights, value[0], exchange, lane);
          mma<16>(r.acc[2 * c + 1], weights, value[1], exchange, lane);
        }
      }
    }
  }

  // O += P·V for float16 (docs/kernels.md §8): relative to a dropped running maximum the kept
  // weights m·a can lie below float16's smallest number (from e^-17 on), so each row's weights
  // of the tile are scaled by the power of two that brings the largest of them (over the quad,
  // which shares the row) into [1, 2) before the rounding, and the product by the inverse power
  // after it, both exactly; a row without a kept key in the tile gets 2^126 and 2^-126, finite.
  // The product of each 8-column block is formed apart from acc, whose scale it must not take.
  template <typename E>
  STTR_HD static void scaled_product(FragC<A> (&s)[kKeyTile / 8], const E* values, E* exchange, int lane,
                                     Registers& r) {
    float up[2], down[2];  // float16 runs with float32 accumulators (A is float)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      A largest = A(0);
#pragma unroll
      for (int j = 0; j < kKeyTile / 8; ++j) largest = max_acc(largest, max_acc(s[j].x[2 * half], s[j].x[2 * half + 1]));
      power_of_two_scales(static_cast<float>(quad_max(largest)), up[half], down[half]);
    }
    FragA<E> weights[kKeyTile / 16];
#pragma unroll
    for (int h = 0; h < kKeyTile / 16; ++h) {
#pragma unroll
      for (int j = 2 * h; j < 2 * h + 2; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j].x[e] *= up[e / 2];
      }
      weights[h] = fragment_from<E>(s[2 * h], s[2 * h + 1]);
    }
#pragma unroll
    for (int c = 0; c < NV / 2; ++c) {
      FragC<A> product[2];
      zero_fragments(product);
#pragma unroll
      for (int h = 0; h < kKeyTile / 16; ++h) {
        FragB<E> value[2];
        load_b_from_rows(value, values, PB, 16 * c, 16 * h, lane);
        mma<16>(product[0], weights[h], value[0], exchange, lane);
        mma<16>(product[1], weights[h], value[1], exchange, lane);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i) {
#pragma unroll
        for (int e = 0; e < 4; ++e) r.acc[2 * c + i].x[e] += product[i].x[e] * down[e / 2];
      }
    }
  }

  // The row sums of the quad's partial denominators, out = acc / denominator and Λ.
  template <typename E>
  STTR_HD static void finish(const Problem& p, const BlockContext& ctx, Registers& r, const E*) {
    if (r.row0 >= p.T) return;
    const Place at = place(p, r);
    {
      E* out = static_cast<E*>(p.out.data) + at.offset(p.out);
      const int lane = ctx.thread % kWarpSize, dv = head_dims<DV, EXACT>(p.dvh);
      A denominator[2];  // the whole warp exchanges, before any lane leaves
#pragma unroll
      for (int half = 0; half < 2; ++half) denominator[half] = quad_sum(r.denominator[half]);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int token = r.row0 + lane / 4 + 8 * half;
        if (token >= p.T) continue;
        const A inverse = reciprocal(denominator[half]);
        if (lane % 4 == 0) {
          static_cast<A*>(p.stats)[at.flat_base + token] = r.row_max[half] * A(p.scale) + log_acc(denominator[half]);
        }
        // The lane's channels 8·j + 2·(lane % 4) + e: a pointer stepped by the channel stride in
        // bytes, two additions per store rather than a 64-bit product.
        const int first = 2 * (lane % 4);
        const int64_t step = p.out.stride_c * static_cast<int64_t>(sizeof(E));
        unsigned char* channel = reinterpret_cast<unsigned char*>(
            out + static_cast<int64_t>(token) * p.out.stride_t + static_cast<int64_t>(r.head * dv + first) * p.out.stride_c);
#pragma unroll
        for (int j = 0; j < NV; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if (8 * j + first + e < dv) store_typed(reinterpret_cast<E*>(channel), 0, r.acc[j].x[2 * half + e] * inverse);
            channel += e == 0 ? step : 7 * step;
          }
        }
      }
    }
  }
};

// Backward, query kernel: a warp per 16 queries. D = rowsum(dO ⊙ O) from the saved output
// (stored in ``delta`` for the key kernel), then over key tiles q = exp(s − Λ), dP = dO·Vᵀ,
// dS = q ⊙ (m ⊙ (dP − D) − 1e-8·D) and dQ += dS·K, dS rounded to the input type
// (docs/kernels.md §7).
template <typename A, int DK, int DV, bool EXACT>
struct TemporalBackwardQuery {
  static constexpr const char* kName = "TemporalBackwardQuery";
  using Block = TemporalBlock<A, DK, DV, EXACT>;
  static constexpr int NK = DK > 8 ? 2 : 1;  // 8-column blocks of dQ
  struct Registers {
    FragC<A> dq[NK];
    A statistic_log2[2], d[2];
  };
  static constexpr int kMaxThreads = kTemporalThreads;
  static constexpr int kPhases = 0;  // start, one per key tile, finish
  static constexpr int kChunkTiles = 0;  // the key tiles stream double-buffered
  STTR_HD static int tiles(const Problem& p) { return temporal_tiles(p); }
  STTR_HD static size_t shared_bytes(const Problem& p) { return Block::layout(p.block_tokens / kWarpRows).bytes; }

  // The tile's k and v rows and per-key mask values (m and m + 1e-8) into buffer tile & 1.
  template <typename E>
  STTR_HD static void load_keys(const Problem& p, const Block& b, int64_t tile, const BlockContext& ctx, const E* qkv) {
    const int k_channel = (p.H + b.head) * b.dk, v_channel = 2 * p.H * b.dk + b.head * b.dv;
    b.load_tile(qkv, p.qkv, tile, k_channel, b.dk, b.l.PA, b.template buffer<E>(ctx, tile, b.l.a), p, ctx);  // cost-model: dims=dk
    b.load_tile(qkv, p.qkv, tile, v_channel, b.dv, b.l.PB, b.template buffer<E>(ctx, tile, b.l.b), p, ctx);  // cost-model: dims=dv
    A* mask = b.template buffer<A>(ctx, tile, b.l.scalar0);
    A* mask_eps = b.template buffer<A>(ctx, tile, b.l.scalar1);
    const int valid = b.tile_rows(p, tile);
    const A eps = drop_eps<A>(p);
#pragma unroll 1
    for (int row = ctx.thread; row < kKeyTile; row += ctx.threads) {  // cost-model: loop=tile_rows
      const A m = row >= valid ? A(0) : p.keep ? A(p.keep[b.flat_index(p, tile * kKeyTile + row)] ? 1 : 0) : A(1);
      mask[row] = m;
      mask_eps[row] = row < valid ? m + eps : A(0);
    }
  }

  STTR_HD static void start(const Problem& p, const BlockContext& ctx, Registers& r) {
    with_typed_data(p.qkv, [&](const auto* qkv) {
      using E = ElementOf<decltype(qkv)>;
      const Block b(p, ctx);
      b.template zero_padding<E>(ctx);
      if (b.warp_active(p)) load_rows(p, b, ctx, r, qkv);
      load_keys(p, b, 0, ctx, qkv);
    });
    zero_fragments(r.dq);
  }

  // The warp's q and dO rows; D per row by the first 16 lanes, which share it through the warp's
  // per-row values.
  template <typename E>
  STTR_HD static void load_rows(const Problem& p, const Block& b, const BlockContext& ctx, Registers& r,
                                const E* qkv) {
    E* own_dout = b.template own<E>(ctx, b.l.own_b);
    A* own_d = b.template own<A>(ctx, b.l.own_scalar);
    b.template stage_rows<Block::KA>(qkv, p.qkv, b.head * b.dk, b.dk, b.l.PA, b.template own<E>(ctx, b.l.own_a),  // cost-model: dims=dk
                                     p);
    b.template stage_rows<Block::KB>(static_cast<const E*>(p.grad_out.data), p.grad_out, b.head * b.dv, b.dv,  // cost-model: dims=dv
                                     b.l.PB, own_dout, p);
    warp_sync();
    if (b.lane < kWarpRows) {
      const int64_t token = b.row0 + b.lane;
      const E* out = static_cast<const E*>(p.out.data);
      A d = 0;
      if (token < p.T) {
        const E* out_row = out + b.offset(p.out, token, b.head * b.dv);
#pragma unroll 1
        for (int c = 0; c < b.dv; ++c) {  // cost-model: loop=delta_channels
          d += static_cast<A>(own_dout[b.lane * b.l.PB + c]) * load_typed<A>(out_row, c * p.out.stride_c);
        }
        static_cast<A*>(p.delta)[b.flat_index(p, token)] = d;
      }
      own_d[b.lane] = d;
    }
    warp_sync();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int64_t token = b.fragment_token(half);
      r.d[half] = own_d[token - b.row0];
      r.statistic_log2[half] = token < p.T ? static_cast<const A*>(p.stats)[b.flat_index(p, token)] * A(kLog2e) : A(0);
    }
  }

  STTR_HD static void tile(int tile, const Problem& p, const BlockContext& ctx, Registers& r) {
    with_typed_data(p.qkv, [&](const auto* qkv) {
      const Block b(p, ctx);
      if (tile + 1 < b.tiles) load_keys(p, b, tile + 1, ctx, qkv);
      if (b.warp_active(p)) attend<ElementOf<decltype(qkv)>>(p, b, tile, ctx, r);
    });
  }

  template <typename E>
  STTR_HD static void attend(const Problem& p, const Block& b, int64_t tile, const BlockContext& ctx, Registers& r) {
    const E* keys = b.template buffer<E>(ctx, tile, b.l.a);
    const E* values = b.template buffer<E>(ctx, tile, b.l.b);
    const A* mask = b.template buffer<A>(ctx, tile, b.l.scalar0);
    const A* mask_eps = b.template buffer<A>(ctx, tile, b.l.scalar1);
    const E* own_dout = b.template own<E>(ctx, b.l.own_b);
    E* exchange = b.template own<E>(ctx, b.l.exchange);
    const int valid = b.tile_rows(p, tile), lane = b.lane, q = lane % 4;
    const A scale_log2 = A(p.scale) * A(kLog2e);
    const FragA<E> query = load_a(b.template own<E>(ctx, b.l.own_a), b.l.PA, 0, lane);
#pragma unroll
    for (int h = 0; h < kKeyTile / 16; ++h) {
      FragC<A> s[2], grad_weight[2];
      FragB<E> key[2];
      load_b_from_columns(key, keys, b.l.PA, 16 * h, 0, lane);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        s[j] = grad_weight[j] = {{A(0), A(0), A(0), A(0)}};
        mma<Block::kScoreDepth>(s[j], query, key[j], exchange, lane);  // cost-model: dims=dk
      }
#pragma unroll
      for (int c = 0; c < Block::KB / 16; ++c) {
        const FragA<E> dout = load_a(own_dout, b.l.PB, 16 * c, lane);
        FragB<E> value[2];
        load_b_from_columns(value, values, b.l.PB, 16 * h, 16 * c, lane);
        mma<16>(grad_weight[0], dout, value[0], exchange, lane);
        mma<16>(grad_weight[1], dout, value[1], exchange, lane);
      }
      // dS in place of s; keys past the sequence weigh 0.
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = 16 * h + 8 * j + 2 * q + e % 2;
          const A w = key < valid ? exp2_acc(s[j].x[e] * scale_log2 - r.statistic_log2[e / 2]) : A(0);
          s[j].x[e] = w * (mask[key] * grad_weight[j].x[e] - mask_eps[key] * r.d[e / 2]);
        }
      }
      const FragA<E> grad_scores = fragment_from<E>(s[0], s[1]);
      FragB<E> key_rows[2];
      load_b_from_rows(key_rows, keys, b.l.PA, 0, 16 * h, lane);
#pragma unroll
      for (int j = 0; j < NK; ++j) mma<16>(r.dq[j], grad_scores, key_rows[j], exchange, lane);
    }
  }

  STTR_HD static void finish(const Problem& p, const BlockContext& ctx, Registers& r) {
    with_typed_data(p.qkv, [&](const auto* qkv) {
      using E = ElementOf<decltype(qkv)>;
      const Block b(p, ctx);
      if (!b.warp_active(p)) return;
      const A scale[2] = {A(p.scale), A(p.scale)};
      b.store_fragments(r.dq, scale, static_cast<E*>(p.grad_qkv.data), p.grad_qkv, b.head * b.dk, b.dk, p);
    });
  }
};

// Backward, key kernel: a warp per 16 keys, streaming query tiles (q, dO, Λ and D), computing
// the transposed products: Sᵀ = K·Qᵀ, q = exp(s − Λ), dPᵀ = V·dOᵀ, dS as above, dK += dSᵀ·Q and
// dV += (m ⊙ q)ᵀ·dO, both weights rounded to the input type. It runs after the query kernel (same
// stream), which wrote D.
template <typename A, int DK, int DV, bool EXACT>
struct TemporalBackwardKey {
  static constexpr const char* kName = "TemporalBackwardKey";
  using Block = TemporalBlock<A, DK, DV, EXACT>;
  static constexpr int NK = DK > 8 ? 2 : 1, NV = Block::KB / 8;
  struct Registers {
    FragC<A> dk[NK], dv[NV];
    A keep[2], keep_eps[2];  // the mask of keys g and g + 8, and plus 1e-8
  };
  static constexpr int kMaxThreads = kTemporalThreads;
  static constexpr int kPhases = 0;  // start, one per query tile, finish
  static constexpr int kChunkTiles = 0;  // the query tiles stream double-buffered
  STTR_HD static int tiles(const Problem& p) { return temporal_tiles(p); }
  STTR_HD static size_t shared_bytes(const Problem& p) { return Block::layout(p.block_tokens / kWarpRows).bytes; }

  // m ⊙ q of a fragment, the mask by row (key).
  STTR_HD static FragC<A> kept_weights(const FragC<A>& w, const A (&keep)[2]) {
    return {{keep[0] * w.x[0], keep[0] * w.x[1], keep[1] * w.x[2], keep[1] * w.x[3]}};
  }

  template <typename E>
  STTR_HD static void load_queries(const Problem& p, const Block& b, int64_t tile, const BlockContext& ctx,
                                   const E* qkv) {
    const int q_channel = b.head * b.dk, dout_channel = b.head * b.dv;
    b.load_tile(qkv, p.qkv, tile, q_channel, b.dk, b.l.PA, b.template buffer<E>(ctx, tile, b.l.a), p, ctx);  // cost-model: dims=dk
    b.load_tile(static_cast<const E*>(p.grad_out.data), p.grad_out, tile, dout_channel, b.dv, b.l.PB,  // cost-model: dims=dv
                b.template buffer<E>(ctx, tile, b.l.b), p, ctx);
    A* statistics_log2 = b.template buffer<A>(ctx, tile, b.l.scalar0);
    A* d = b.template buffer<A>(ctx, tile, b.l.scalar1);
    const int valid = b.tile_rows(p, tile);
#pragma unroll 1
    for (int row = ctx.thread; row < kKeyTile; row += ctx.threads) {  // cost-model: loop=tile_rows
      const int64_t index = b.flat_index(p, tile * kKeyTile + row);
      statistics_log2[row] = row < valid ? static_cast<const A*>(p.stats)[index] * A(kLog2e) : A(0);
      d[row] = row < valid ? static_cast<const A*>(p.delta)[index] : A(0);
    }
  }

  STTR_HD static void start(const Problem& p, const BlockContext& ctx, Registers& r) {
    with_typed_data(p.qkv, [&](const auto* qkv) {
      using E = ElementOf<decltype(qkv)>;
      const Block b(p, ctx);
      b.template zero_padding<E>(ctx);
      if (b.warp_active(p)) {
        b.template stage_rows<Block::KA>(qkv, p.qkv, (p.H + b.head) * b.dk, b.dk, b.l.PA,  // cost-model: dims=dk
                                         b.template own<E>(ctx, b.l.own_a), p);
        b.template stage_rows<Block::KB>(qkv, p.qkv, 2 * p.H * b.dk + b.head * b.dv, b.dv, b.l.PB,  // cost-model: dims=dv
                                         b.template own<E>(ctx, b.l.own_b), p);
        const A eps = drop_eps<A>(p);
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int64_t token = b.fragment_token(half);
          const A m = token >= p.T ? A(0) : p.keep ? A(p.keep[b.flat_index(p, token)] ? 1 : 0) : A(1);
          r.keep[half] = m;
          r.keep_eps[half] = token < p.T ? m + eps : A(0);
        }
      }
      load_queries(p, b, 0, ctx, qkv);
    });
    zero_fragments(r.dk);
    zero_fragments(r.dv);
  }

  STTR_HD static void tile(int tile, const Problem& p, const BlockContext& ctx, Registers& r) {
    with_typed_data(p.qkv, [&](const auto* qkv) {
      const Block b(p, ctx);
      if (tile + 1 < b.tiles) load_queries(p, b, tile + 1, ctx, qkv);
      if (b.warp_active(p)) attend<ElementOf<decltype(qkv)>>(p, b, tile, ctx, r);
    });
  }

  template <typename E>
  STTR_HD static void attend(const Problem& p, const Block& b, int64_t tile, const BlockContext& ctx, Registers& r) {
    const E* queries = b.template buffer<E>(ctx, tile, b.l.a);
    const E* douts = b.template buffer<E>(ctx, tile, b.l.b);
    const A* statistics_log2 = b.template buffer<A>(ctx, tile, b.l.scalar0);
    const A* d = b.template buffer<A>(ctx, tile, b.l.scalar1);
    const E* own_values = b.template own<E>(ctx, b.l.own_b);
    E* exchange = b.template own<E>(ctx, b.l.exchange);
    const int valid = b.tile_rows(p, tile), lane = b.lane, q = lane % 4;
    const A scale_log2 = A(p.scale) * A(kLog2e);
    const FragA<E> key = load_a(b.template own<E>(ctx, b.l.own_a), b.l.PA, 0, lane);
    // The tile's two halves one after the other (not unrolled): interleaved, ptxas spilled at 16/64.
#pragma unroll 1
    for (int h = 0; h < kKeyTile / 16; ++h) {  // cost-model: loop=tile_halves
      FragC<A> s[2], grad_weight[2];
      FragB<E> query[2];
      load_b_from_columns(query, queries, b.l.PA, 16 * h, 0, lane);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        s[j] = grad_weight[j] = {{A(0), A(0), A(0), A(0)}};
        mma<Block::kScoreDepth>(s[j], key, query[j], exchange, lane);  // cost-model: dims=dk
      }
#pragma unroll
      for (int c = 0; c < Block::KB / 16; ++c) {
        const FragA<E> value = load_a(own_values, b.l.PB, 16 * c, lane);
        FragB<E> dout[2];
        load_b_from_columns(dout, douts, b.l.PB, 16 * h, 16 * c, lane);
        mma<16>(grad_weight[0], value, dout[0], exchange, lane);
        mma<16>(grad_weight[1], value, dout[1], exchange, lane);
      }
      // q in place of s (queries past the sequence weigh 0); dV takes m ⊙ q first, so that only
      // its rounded fragment lives on while dSᵀ is formed.
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int query_row = 16 * h + 8 * j + 2 * q + e % 2;
          s[j].x[e] = query_row < valid ? exp2_acc(s[j].x[e] * scale_log2 - statistics_log2[query_row]) : A(0);
        }
      }
      const FragA<E> weights = fragment_from<E>(kept_weights(s[0], r.keep), kept_weights(s[1], r.keep));
#pragma unroll
      for (int c = 0; c < NV / 2; ++c) {
        FragB<E> dout[2];
        load_b_from_rows(dout, douts, b.l.PB, 16 * c, 16 * h, lane);
        mma<16>(r.dv[2 * c], weights, dout[0], exchange, lane);
        mma<16>(r.dv[2 * c + 1], weights, dout[1], exchange, lane);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int query_row = 16 * h + 8 * j + 2 * q + e % 2;
          s[j].x[e] *= r.keep[e / 2] * grad_weight[j].x[e] - r.keep_eps[e / 2] * d[query_row];
        }
      }
      const FragA<E> grad_scores = fragment_from<E>(s[0], s[1]);
      FragB<E> query_rows[2];
      load_b_from_rows(query_rows, queries, b.l.PA, 0, 16 * h, lane);
#pragma unroll
      for (int j = 0; j < NK; ++j) mma<16>(r.dk[j], grad_scores, query_rows[j], exchange, lane);
    }
  }

  STTR_HD static void finish(const Problem& p, const BlockContext& ctx, Registers& r) {
    with_typed_data(p.qkv, [&](const auto* qkv) {
      using E = ElementOf<decltype(qkv)>;
      const Block b(p, ctx);
      if (!b.warp_active(p)) return;
      E* grad = static_cast<E*>(p.grad_qkv.data);
      const A scale[2] = {A(p.scale), A(p.scale)}, one[2] = {A(1), A(1)};
      b.store_fragments(r.dk, scale, grad, p.grad_qkv, (p.H + b.head) * b.dk, b.dk, p);
      b.store_fragments(r.dv, one, grad, p.grad_qkv, 2 * p.H * b.dk + b.head * b.dv, b.dv, p);
    });
  }
};

}  // namespace sttr
