"""Fused temporal self-attention core of ST-TR: flash-style forward and backward kernels.

The function is docs/network.md §7 and §8; the contract these kernels keep is docs/kernels.md.

Every joint trajectory (n', v) and head h is one attention problem over the L frames:
S = Q Kᵀ / sqrt(dkh), softmax over keys, exact DropAttention, O = P V. L runs to hundreds of
frames, so no program holds a whole L x L score matrix: a program owns ``BLOCK_M`` tokens of one
(sequence, head) and streams over the sequence in blocks of ``BLOCK_N`` tokens, and nothing L x L
ever reaches memory. The programs of one (sequence, head) are adjacent in launch order, so the
blocks they stream are read from DRAM by the first of them and found in L2 by the others.

Scores are kept in base-2 units, s·log2(e), so that every weight is one ``exp2`` (a single
MUFU.EX2) of one fused multiply-add. DropAttention is out = acc / (K + 1e-8·L) with L = Σ a over
all keys, K = Σ m·a and acc = Σ m·a·v for a = exp(s − max s): the forward accumulates the
denominator directly as Σ a·(m + 1e-8), one exponential per score. The forward writes
Λ = max s + log(K + 1e-8·L) per query (docs/kernels.md §7, §8).

The backward is two deterministic kernels without atomics, both recomputing the weights as
q = exp(s − Λ): one per block of queries for dQ (it also writes D = rowsum(dO ⊙ O) per query),
one per block of keys for dK and dV, which reads D. The key mask is drawn once per call, one
byte per (sequence, head, frame), by :func:`.dropattention_rng.materialize_key_mask`; the kernels
load it once per block and apply it where it costs least: to the rows of the V tile when
BLOCK_DV <= BLOCK_M (the program's warps share that tile, so a thread holds BLOCK_DV/BLOCK_M as
many of its elements as of the scores), else to the scores.
Products run in float32 (float64 for float64 input) with IEEE precision. A tile's offsets from its
first element are int32 unless a stride makes them too large (``WIDE``); everything else is int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_common import (ACCUMULATOR, DROP_ATTENTION_EPS, MAX_TILE, PIN_CONFIGS, padded_dim,
                               softmax_scale)
from .dropattention_rng import load_keep

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _program(H: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's batch index n', joint and head, the flat index ``(n'*V + joint)*H + head``
    of its (sequence, head) (times L, the flat index of its first token in the mask and statistics
    layout), and its first token. The grid is (token blocks, V·H, N'), so the token block varies
    fastest across programs: the programs of one (sequence, head) run together and read its
    streamed blocks from DRAM once. No index needs a division by a runtime value."""
    joint_head = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    sequence_head = n * tl.num_programs(1) + joint_head
    first_token = tl.program_id(0).to(tl.int64) * BLOCK_M
    return n, (joint_head // H).to(tl.int64), (joint_head % H).to(tl.int64), sequence_head, first_token


@triton.jit
def _tile_offsets(stride_t, stride_c, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, WIDE: tl.constexpr):
    """Offsets of a (tokens, channels) tile from its first element, computed once per program:
    each block only moves a scalar int64 pointer."""
    tokens = tl.arange(0, BLOCK)
    dims = tl.arange(0, BLOCK_D)
    if WIDE:
        tokens = tokens.to(tl.int64)
        dims = dims.to(tl.int64)
    return tokens[:, None] * stride_t + dims[None, :] * stride_c


@triton.jit
def _tile_mask(first_token, L, CHANNELS: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    tokens = first_token + tl.arange(0, BLOCK)
    return (tokens < L)[:, None] & (tl.arange(0, BLOCK_D) < CHANNELS)[None, :]


@triton.jit
def _load_tile(ptr, offsets, first_token, L, CHANNELS: tl.constexpr, BLOCK: tl.constexpr,
               BLOCK_D: tl.constexpr, MASKED: tl.constexpr):
    """A (tokens, channels) tile whose first element is at ``ptr``. Only a ``MASKED`` tile checks
    tokens against L (the last, partial block; every block where the kernel does not peel it);
    channels from CHANNELS on are masked (a per-register constant that the compiler folds away)."""
    if MASKED:
        return tl.load(ptr + offsets, mask=_tile_mask(first_token, L, CHANNELS, BLOCK, BLOCK_D), other=0.0)
    elif CHANNELS < BLOCK_D:
        return tl.load(ptr + offsets, mask=(tl.arange(0, BLOCK_D) < CHANNELS)[None, :], other=0.0)
    else:
        return tl.load(ptr + offsets)


@triton.jit
def _load_rows(ptr, rows, stride_c, CHANNELS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Channels [0, CHANNELS) of the tokens at offsets ``rows`` (a column) from ``ptr``."""
    dims = tl.arange(0, BLOCK_D)
    return tl.load(ptr + rows + (dims.to(tl.int64) * stride_c)[None, :], mask=(dims < CHANNELS)[None, :],
                   other=0.0)


@triton.jit
def _store_tile(ptr, value, offsets, first_token, L, CHANNELS: tl.constexpr, BLOCK: tl.constexpr,
                BLOCK_D: tl.constexpr):
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty),
             mask=_tile_mask(first_token, L, CHANNELS, BLOCK, BLOCK_D))


@triton.jit
def _whole_blocks_end(L, BLOCK_N: tl.constexpr, PEEL: tl.constexpr):
    """Where a kernel's loop over streamed blocks stops. ``PEEL``: before the last, partial block,
    which then runs once after the loop, so that only it checks tokens against L. Otherwise the
    loop covers every block, each checking."""
    if PEEL:
        return L - L % BLOCK_N
    else:
        return L


@triton.jit
def _load_keep_weights(keep_ptr, tokens, L, ACC: tl.constexpr):
    """The key mask m of ``tokens`` as 0 or 1 (keep_ptr points at the (sequence, head)'s first
    token) and the weights m + 1e-8 of their scores in the DropAttention denominator K + 1e-8·L.

    Triton gives a dot operand the register layout (kWidth) of the narrowest load its value
    derives from. Through the 8-bit mask that would be a layout the 16-bit probabilities do not
    have in the accumulator they come from, and converting them would cost shuffles every block.
    A reduction over a unit axis, which compiles to nothing, hides the load from that rule."""
    keep = tl.max(load_keep(keep_ptr, tokens, tokens < L).to(ACC)[:, None], axis=1)
    return keep, keep + DROP_ATTENTION_EPS


@triton.jit
def _key_block(q, keys_ptr, values_ptr, key_offsets, value_offsets, first_key, L, stride_t,
               DKH: tl.constexpr, DVH: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
               BLOCK_DV: tl.constexpr, MASKED: tl.constexpr):
    """The k and v tiles of the keys from ``first_key`` on, the raw scores q·kᵀ (-inf for keys
    past L when MASKED) and the keys' indices."""
    shift = tl.cast(first_key, tl.int64) * stride_t
    k = _load_tile(keys_ptr + shift, key_offsets, first_key, L, DKH, BLOCK_N, BLOCK_DK, MASKED)
    v = _load_tile(values_ptr + shift, value_offsets, first_key, L, DVH, BLOCK_N, BLOCK_DV, MASKED)
    raw = tl.dot(q, tl.trans(k), input_precision="ieee")
    keys = first_key + tl.arange(0, BLOCK_N)
    if MASKED:
        raw = tl.where((keys < L)[None, :], raw, float("-inf"))
    return k, v, raw, keys


@triton.jit
def _forward_step(q, keys_ptr, values_ptr, key_offsets, value_offsets, keep_ptr, first_key, L,
                  stride_t, scale, row_max, denominator, acc,
                  DKH: tl.constexpr, DVH: tl.constexpr, DROP: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
                  BLOCK_DV: tl.constexpr, MASKED: tl.constexpr):
    """One block of keys of the online softmax. ``row_max`` is the running maximum of the raw
    scores q·k (the scale is positive, so it orders them alike), ``denominator`` Σ a relative to
    it (with DropAttention Σ a·(m + 1e-8) = K + 1e-8·L), ``acc`` Σ m·a·v."""
    k, v, raw, keys = _key_block(q, keys_ptr, values_ptr, key_offsets, value_offsets, first_key, L,
                                 stride_t, DKH, DVH, BLOCK_N, BLOCK_DK, BLOCK_DV, MASKED)
    # Every block holds a valid key, so new_max is finite from the first block on and the first
    # rescale is exp2(-inf) = 0.
    new_max = tl.maximum(row_max, tl.max(raw, axis=1))
    a = tl.exp2(raw * scale - (new_max * scale)[:, None])
    rescale = tl.exp2((row_max - new_max) * scale)
    if DROP:
        keep, weight = _load_keep_weights(keep_ptr, keys, L, ACC)
        denominator = denominator * rescale + tl.sum(a * weight[None, :], axis=1)
        if v.dtype == tl.float16:
            # The float16 lesson (docs/kernels.md §8): relative to a dropped maximum the kept
            # weights can lie below float16's smallest number, so each row's kept weights are
            # scaled by the power of two that brings their largest into [1, 2) before the cast,
            # and the product scaled back; powers of two make both exact. A row with no kept
            # key (largest 0) or only weights below 2^-126 (e^-87, far below 1e-8·L) is scaled
            # by 2^126 and back by 2^-126 or 0: finite, so never inf·0.
            kept = a * keep[None, :]
            largest = tl.max(kept, axis=1)
            exponent = tl.maximum(largest.to(tl.int32, bitcast=True) >> 23, 1)
            up = ((254 - exponent) << 23).to(tl.float32, bitcast=True)
            down = (exponent << 23).to(tl.float32, bitcast=True)
            product = tl.dot((kept * up[:, None]).to(v.dtype), v, input_precision="ieee") * down[:, None]
        elif BLOCK_DV <= BLOCK_M:
            # Other operands (bfloat16 has float32's exponent range) represent weights relative
            # to the overall maximum. The mask goes where it costs least (module docstring).
            product = tl.dot(a.to(v.dtype), tl.where(keep[:, None] != 0, v, 0.0),
                             input_precision="ieee")
        else:
            product = tl.dot((a * keep[None, :]).to(v.dtype), v, input_precision="ieee")
    else:
        denominator = denominator * rescale + tl.sum(a, axis=1)
        product = tl.dot(a.to(v.dtype), v, input_precision="ieee")
    return new_max, denominator, acc * rescale[:, None] + product


@triton.jit
def temporal_attention_forward_kernel(
        qkv_ptr, out_ptr, stats_ptr, keep_ptr,
        L, length_bucket,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        out_stride_n, out_stride_c, out_stride_t, out_stride_v,
        H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr, PEEL: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``BLOCK_M`` queries; ``length_bucket`` is only the autotuner's key."""
    n, joint, head, sequence_head, first_query = _program(H, BLOCK_M)
    sequence = qkv_ptr + n * qkv_stride_n + joint * qkv_stride_v
    q = _load_tile(sequence + first_query * qkv_stride_t + head * DKH * qkv_stride_c,
                   _tile_offsets(qkv_stride_t, qkv_stride_c, BLOCK_M, BLOCK_DK, WIDE),
                   first_query, L, DKH, BLOCK_M, BLOCK_DK, True)
    keys_ptr = sequence + (H + head) * DKH * qkv_stride_c
    values_ptr = sequence + (2 * H * DKH + head * DVH) * qkv_stride_c
    key_offsets = _tile_offsets(qkv_stride_t, qkv_stride_c, BLOCK_N, BLOCK_DK, WIDE)
    value_offsets = _tile_offsets(qkv_stride_t, qkv_stride_c, BLOCK_N, BLOCK_DV, WIDE)
    if DROP:
        keep_ptr += sequence_head * L
    scale = tl.reshape(softmax_scale(ACC, DKH), (1,)) * LOG2E

    row_max = tl.full((BLOCK_M,), float("-inf"), ACC)
    denominator = tl.zeros((BLOCK_M,), ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), ACC)
    whole = _whole_blocks_end(L, BLOCK_N, PEEL)
    for first_key in range(0, whole, BLOCK_N):
        row_max, denominator, acc = _forward_step(
            q, keys_ptr, values_ptr, key_offsets, value_offsets, keep_ptr, first_key, L,
            qkv_stride_t, scale, row_max, denominator, acc,
            DKH, DVH, DROP, ACC, BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_DV, not PEEL)
    if PEEL:
        if whole < L:
            row_max, denominator, acc = _forward_step(
                q, keys_ptr, values_ptr, key_offsets, value_offsets, keep_ptr, whole, L,
                qkv_stride_t, scale, row_max, denominator, acc,
                DKH, DVH, DROP, ACC, BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_DV, True)

    # Every key dropped: acc = 0 over 1e-8·L > 0, exactly 0, and Λ = max s + log(1e-8·L).
    out = out_ptr + n * out_stride_n + joint * out_stride_v + first_query * out_stride_t
    _store_tile(out + head * DVH * out_stride_c, acc * (1.0 / denominator)[:, None],
                _tile_offsets(out_stride_t, out_stride_c, BLOCK_M, BLOCK_DV, WIDE),
                first_query, L, DVH, BLOCK_M, BLOCK_DV)
    queries = first_query + tl.arange(0, BLOCK_M)
    tl.store(stats_ptr + sequence_head * L + queries, (row_max * scale + tl.log2(denominator)) * LN2,
             mask=queries < L)


@triton.jit
def _query_step(q, grad_out, stats, delta, keys_ptr, values_ptr, key_offsets, value_offsets,
                keep_ptr, first_key, L, stride_t, scale, grad_q,
                DKH: tl.constexpr, DVH: tl.constexpr, DROP: tl.constexpr, ACC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr,
                BLOCK_DV: tl.constexpr, MASKED: tl.constexpr):
    """dS of a block of keys, added into dQ: dS = q ⊙ (m ⊙ dP − (m + 1e-8)·D) with
    q = exp(s − Λ), ``stats`` = Λ in base-2 units."""
    # Padded keys score -inf: weight 0, so they add no 1e-8·D share.
    k, v, raw, keys = _key_block(q, keys_ptr, values_ptr, key_offsets, value_offsets, first_key, L,
                                 stride_t, DKH, DVH, BLOCK_N, BLOCK_DK, BLOCK_DV, MASKED)
    weights = tl.exp2(raw * scale - stats[:, None])
    if DROP:
        keep, weight = _load_keep_weights(keep_ptr, keys, L, ACC)
        if BLOCK_DV <= BLOCK_M:
            # m ⊙ dP from m ⊙ v: the mask goes where it costs least (module docstring).
            kept_values = tl.where(keep[:, None] != 0, v, 0.0)
            grad_weights = (tl.dot(grad_out, tl.trans(kept_values), input_precision="ieee")
                            - weight[None, :] * delta[:, None])
        else:
            grad_weights = (tl.dot(grad_out, tl.trans(v), input_precision="ieee") * keep[None, :]
                            - weight[None, :] * delta[:, None])
    else:
        grad_weights = tl.dot(grad_out, tl.trans(v), input_precision="ieee") - delta[:, None]
    grad_scores = weights * grad_weights
    return grad_q + tl.dot(grad_scores.to(k.dtype), k, input_precision="ieee")


@triton.jit
def temporal_attention_backward_query_kernel(
        qkv_ptr, out_ptr, grad_out_ptr, stats_ptr, delta_ptr, keep_ptr, grad_qkv_ptr,
        L, length_bucket,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        out_stride_n, out_stride_c, out_stride_t, out_stride_v,
        grad_out_stride_n, grad_out_stride_c, grad_out_stride_t, grad_out_stride_v,
        grad_qkv_stride_n, grad_qkv_stride_c, grad_qkv_stride_t, grad_qkv_stride_v,
        H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr, PEEL: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of ``BLOCK_M`` queries, and D = rowsum(dO ⊙ O) for them (written for the key kernel)."""
    n, joint, head, sequence_head, first_query = _program(H, BLOCK_M)
    sequence = qkv_ptr + n * qkv_stride_n + joint * qkv_stride_v
    q = _load_tile(sequence + first_query * qkv_stride_t + head * DKH * qkv_stride_c,
                   _tile_offsets(qkv_stride_t, qkv_stride_c, BLOCK_M, BLOCK_DK, WIDE),
                   first_query, L, DKH, BLOCK_M, BLOCK_DK, True)
    # Padded query rows read dO = 0, O = 0 and Λ = 0, so their D, dP and dS are 0.
    grad_out = _load_tile(grad_out_ptr + n * grad_out_stride_n + joint * grad_out_stride_v
                          + first_query * grad_out_stride_t + head * DVH * grad_out_stride_c,
                          _tile_offsets(grad_out_stride_t, grad_out_stride_c, BLOCK_M, BLOCK_DV, WIDE),
                          first_query, L, DVH, BLOCK_M, BLOCK_DV, True)
    out = _load_tile(out_ptr + n * out_stride_n + joint * out_stride_v + first_query * out_stride_t
                     + head * DVH * out_stride_c,
                     _tile_offsets(out_stride_t, out_stride_c, BLOCK_M, BLOCK_DV, WIDE),
                     first_query, L, DVH, BLOCK_M, BLOCK_DV, True)
    delta = tl.sum(grad_out.to(ACC) * out.to(ACC), axis=1)
    queries = first_query + tl.arange(0, BLOCK_M)
    tl.store(delta_ptr + sequence_head * L + queries, delta, mask=queries < L)
    stats = tl.load(stats_ptr + sequence_head * L + queries, mask=queries < L, other=0.0) * LOG2E
    keys_ptr = sequence + (H + head) * DKH * qkv_stride_c
    values_ptr = sequence + (2 * H * DKH + head * DVH) * qkv_stride_c
    key_offsets = _tile_offsets(qkv_stride_t, qkv_stride_c, BLOCK_N, BLOCK_DK, WIDE)
    value_offsets = _tile_offsets(qkv_stride_t, qkv_stride_c, BLOCK_N, BLOCK_DV, WIDE)
    if DROP:
        keep_ptr += sequence_head * L
    scale = softmax_scale(ACC, DKH)

    grad_q = tl.zeros((BLOCK_M, BLOCK_DK), ACC)
    whole = _whole_blocks_end(L, BLOCK_N, PEEL)
    for first_key in range(0, whole, BLOCK_N):
        grad_q = _query_step(q, grad_out, stats, delta, keys_ptr, values_ptr, key_offsets,
                             value_offsets, keep_ptr, first_key, L, qkv_stride_t, scale * LOG2E, grad_q,
                             DKH, DVH, DROP, ACC, BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_DV, not PEEL)
    if PEEL:
        if whole < L:
            grad_q = _query_step(q, grad_out, stats, delta, keys_ptr, values_ptr, key_offsets,
                                 value_offsets, keep_ptr, whole, L, qkv_stride_t, scale * LOG2E, grad_q,
                                 DKH, DVH, DROP, ACC, BLOCK_M, BLOCK_N, BLOCK_DK, BLOCK_DV, True)
    grad = grad_qkv_ptr + n * grad_qkv_stride_n + joint * grad_qkv_stride_v + first_query * grad_qkv_stride_t
    _store_tile(grad + head * DKH * grad_qkv_stride_c, grad_q * scale,
                _tile_offsets(grad_qkv_stride_t, grad_qkv_stride_c, BLOCK_M, BLOCK_DK, WIDE),
                first_query, L, DKH, BLOCK_M, BLOCK_DK)


@triton.jit
def _key_step(k, v, keep, weight, queries_ptr, grad_out_ptr, query_offsets, grad_out_offsets, stats_ptr,
              delta_ptr, first_query, L, stride_t, grad_out_stride_t, scale, grad_k, grad_v,
              DKH: tl.constexpr, DVH: tl.constexpr, DROP: tl.constexpr,
              BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
              MASKED: tl.constexpr):
    """A block of queries' share of dK and dV, tiles oriented keys x queries. With DropAttention
    v is already m ⊙ v, so dP comes out as m ⊙ dP, and ``weight`` is m + 1e-8 per key. Padded
    queries read q = dO = 0 and Λ = D = 0: weight 1, dP = 0, so they add nothing."""
    q = _load_tile(queries_ptr + tl.cast(first_query, tl.int64) * stride_t, query_offsets, first_query, L,
                   DKH, BLOCK_N, BLOCK_DK, MASKED)
    grad_out = _load_tile(grad_out_ptr + tl.cast(first_query, tl.int64) * grad_out_stride_t, grad_out_offsets,
                          first_query, L, DVH, BLOCK_N, BLOCK_DV, MASKED)
    queries = first_query + tl.arange(0, BLOCK_N)
    if MASKED:
        stats = tl.load(stats_ptr + queries, mask=queries < L, other=0.0)
        delta = tl.load(delta_ptr + queries, mask=queries < L, other=0.0)
    else:
        stats = tl.load(stats_ptr + queries)
        delta = tl.load(delta_ptr + queries)
    raw = tl.dot(k, tl.trans(q), input_precision="ieee")
    weights = tl.exp2(raw * scale - (stats * LOG2E)[None, :])
    grad_weights = tl.dot(v, tl.trans(grad_out), input_precision="ieee")
    if DROP:
        grad_weights = grad_weights - weight * delta[None, :]
        if grad_out.dtype == tl.float16:
            # A dropped key's weight reaches 1/(1e-8·L), beyond float16: the mask goes on the
            # weights. Kept weights are at most 1.
            kept = weights * keep
        else:
            # Within range, the mask goes on dV's rows, once, after the loop.
            kept = weights
    else:
        grad_weights = grad_weights - delta[None, :]
        kept = weights
    grad_scores = weights * grad_weights
    grad_v += tl.dot(kept.to(grad_out.dtype), grad_out, input_precision="ieee")
    grad_k += tl.dot(grad_scores.to(q.dtype), q, input_precision="ieee")
    return grad_k, grad_v


@triton.jit
def temporal_attention_backward_key_kernel(
        qkv_ptr, grad_out_ptr, stats_ptr, delta_ptr, keep_ptr, grad_qkv_ptr,
        L, length_bucket,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        grad_out_stride_n, grad_out_stride_c, grad_out_stride_t, grad_out_stride_v,
        grad_qkv_stride_n, grad_qkv_stride_c, grad_qkv_stride_t, grad_qkv_stride_v,
        H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr, PEEL: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK and dV of ``BLOCK_M`` keys, streaming ``BLOCK_N`` queries at a time; tiles are
    key-major (keys x queries), so no transposed score tile is formed and the key mask is one
    value per row."""
    n, joint, head, sequence_head, first_key = _program(H, BLOCK_M)
    sequence = qkv_ptr + n * qkv_stride_n + joint * qkv_stride_v
    # Padded keys repeat the last key, so that their weights stay finite (exp(−Λ) of a zero key
    # would overflow for very negative Λ); their rows are dropped and never stored.
    keys = first_key + tl.arange(0, BLOCK_M)
    rows = tl.minimum(keys, L - 1)[:, None] * qkv_stride_t
    k = _load_rows(sequence + (H + head) * DKH * qkv_stride_c, rows, qkv_stride_c, DKH, BLOCK_DK)
    v = _load_rows(sequence + (2 * H * DKH + head * DVH) * qkv_stride_c, rows, qkv_stride_c, DVH, BLOCK_DV)
    keep = None
    weight = None
    if DROP:
        keep, weight = _load_keep_weights(keep_ptr + sequence_head * L, keys, L, ACC)
        keep = keep[:, None]
        weight = weight[:, None]
        v = tl.where(keep != 0, v, 0.0)
    scale = softmax_scale(ACC, DKH)
    queries_ptr = sequence + head * DKH * qkv_stride_c
    grad_out_ptr += n * grad_out_stride_n + joint * grad_out_stride_v + head * DVH * grad_out_stride_c
    query_offsets = _tile_offsets(qkv_stride_t, qkv_stride_c, BLOCK_N, BLOCK_DK, WIDE)
    grad_out_offsets = _tile_offsets(grad_out_stride_t, grad_out_stride_c, BLOCK_N, BLOCK_DV, WIDE)
    stats_ptr += sequence_head * L
    delta_ptr += sequence_head * L

    grad_k = tl.zeros((BLOCK_M, BLOCK_DK), ACC)
    grad_v = tl.zeros((BLOCK_M, BLOCK_DV), ACC)
    whole = _whole_blocks_end(L, BLOCK_N, PEEL)
    for first_query in range(0, whole, BLOCK_N):
        grad_k, grad_v = _key_step(k, v, keep, weight, queries_ptr, grad_out_ptr, query_offsets,
                                   grad_out_offsets, stats_ptr, delta_ptr, first_query, L, qkv_stride_t,
                                   grad_out_stride_t, scale * LOG2E, grad_k, grad_v,
                                   DKH, DVH, DROP, BLOCK_N, BLOCK_DK, BLOCK_DV, not PEEL)
    if PEEL:
        if whole < L:
            grad_k, grad_v = _key_step(k, v, keep, weight, queries_ptr, grad_out_ptr, query_offsets,
                                       grad_out_offsets, stats_ptr, delta_ptr, whole, L, qkv_stride_t,
                                       grad_out_stride_t, scale * LOG2E, grad_k, grad_v,
                                       DKH, DVH, DROP, BLOCK_N, BLOCK_DK, BLOCK_DV, True)
    if DROP:
        if v.dtype != tl.float16:
            grad_v = tl.where(keep != 0, grad_v, 0.0)
    grad = grad_qkv_ptr + n * grad_qkv_stride_n + joint * grad_qkv_stride_v + first_key * grad_qkv_stride_t
    _store_tile(grad + (H + head) * DKH * grad_qkv_stride_c, grad_k * scale,
                _tile_offsets(grad_qkv_stride_t, grad_qkv_stride_c, BLOCK_M, BLOCK_DK, WIDE),
                first_key, L, DKH, BLOCK_M, BLOCK_DK)
    _store_tile(grad + (2 * H * DKH + head * DVH) * grad_qkv_stride_c, grad_v,
                _tile_offsets(grad_qkv_stride_t, grad_qkv_stride_c, BLOCK_M, BLOCK_DV, WIDE),
                first_key, L, DVH, BLOCK_M, BLOCK_DV)


# --- launchers ------------------------------------------------------------------------------------

# Whether these kernels run in Triton's CPU interpreter: fixed when they were decorated (import).
INTERPRETED = bool(triton.knobs.runtime.interpret)


# Tiles (BLOCK_M, BLOCK_N) in the launcher's order of preference: BLOCK_M tokens per program
# (queries in the forward and dQ kernels, keys in the dK/dV kernel), BLOCK_N per loop step. Larger
# tiles spread each block's fixed cost (loads, addresses, per-row statistics) over more scores.
# Under the cost model (sm_90, Triton 3.6) 64 x 32 (one warpgroup: wgmma on sm_90) is within 4 %
# of the fastest tile of every kernel at L = 150; at L = 75, where it pads the scores 1.9-fold,
# 16 x 16 is, and 32 x 16 within 10 %. Left out: 16 x 32, 16 x 64, 64 x 16 and 64 x 64, never
# the fastest; 32 x 64, which spills at 64-wide heads; 32 x 32, at most 4 % faster than
# 64 x 32 and given a stack frame by ptxas (sm_90, 4/16 heads, DropAttention).
TILES = ((64, 32), (16, 16), (32, 16))
# Float32 and float64 dots run on FMA units, which hold a thread's whole rows and columns of both
# operands in registers: only 16 x 16 tiles on two warps stay below 255 registers at 64-wide heads.
FMA_TILES = ((16, 16),)


def warps(block_m: int, element_size: int) -> int:
    """Every dot keeps a program's tokens as its rows, and Triton lays chained dots out with all
    warps along the rows, 16 rows per warp for mma.sync (m16n8k16) and wgmma alike: so 16-bit
    tiles take BLOCK_M // 16 warps, and no warp repeats another's work. FMA dots spread a tile
    over both dimensions and take twice that, to halve each thread's operands."""
    return block_m // 16 * (1 if element_size <= 2 else 2)


def _configs(interpreting: bool) -> list[triton.Config]:
    """The tensor-core configs, then the FMA ones, each with one stage: 16-bit tiles are loaded
    16 bits at a time (Triton cannot prove wider alignment), which cp.async cannot copy, and a
    second stage compiled to the same code. The interpreter runs one config (it cannot benchmark
    several): 16 x 16 tiles give the CPU tests several ragged blocks."""
    if interpreting:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return ([triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps(m, 2), num_stages=1)
             for m, n in TILES]
            + [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps(m, 4), num_stages=1)
               for m, n in FMA_TILES])


# A config may pad the L x L score matrix to at most this many times the least any config of its
# operand width pads it to: at L = 150, 64 x 32 (192 x 160 scores) stays beside the others
# (160 x 160); at L = 75 it would compute 1.9 times the scores of 16 x 16 and 32 x 16 (80 x 80,
# 96 x 80).
PADDING_SLACK = 1.25


def padded_scores(config: triton.Config, length: int) -> int:
    """Scores a config computes for a sequence of ``length`` tokens, padding included."""
    m, n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    return triton.cdiv(length, m) * m * triton.cdiv(length, n) * n


def least_padded_configs(configs: list[triton.Config], length: int) -> list[triton.Config]:
    least = min(padded_scores(c, length) for c in configs)
    return [c for c in configs if padded_scores(c, length) <= PADDING_SLACK * least]


def pick_configs(configs: list[triton.Config], length: int, element_size: int) -> list[triton.Config]:
    """Of ``configs``, those for operands of ``element_size`` bytes (their warp rule) that pad
    sequences of ``length`` tokens least, in order: the first is the one pinned."""
    width = [c for c in configs if c.num_warps == warps(c.kwargs["BLOCK_M"], element_size)]
    return least_padded_configs(width, length)


def launch_configs(length: int, element_size: int) -> list[triton.Config]:
    """The configs the launcher may pick (the interpreter's one config under the interpreter);
    with STTR_PIN_CONFIGS=1 it runs the first."""
    return CONFIGS if INTERPRETED else pick_configs(CONFIGS, length, element_size)


def _prune(configs, named_args, **kwargs):
    return launch_configs(named_args["L"], named_args["qkv_ptr"].element_size())


def length_bucket(length: int) -> int:
    """The autotuner's key for the sequence length: the next power of two, so that another
    length re-tunes only when it crosses one."""
    return triton.next_power_of_2(length)


CONFIGS = _configs(INTERPRETED)
# The frame stride stands for the layout: 1 in the modules' (frames unit-stride, every load
# coalesced along frames), V or V·C in the contiguous and channels_last ones; none depends on L.
_AUTOTUNE_KEY = ["length_bucket", "qkv_stride_t", "H", "DKH", "DVH", "DROP"]
_PRUNING = {"early_config_prune": _prune}
KERNELS = {"forward": temporal_attention_forward_kernel,
           "backward_query": temporal_attention_backward_query_kernel,
           "backward_key": temporal_attention_backward_key_kernel}
_AUTOTUNED = {name: triton.autotune(CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=_PRUNING)(kernel)
              for name, kernel in KERNELS.items()}


def _wide_offsets(*tensors: torch.Tensor) -> bool:
    """Whether a tile's offsets from its first element may exceed int32: tokens and channels
    per tile stay below the largest block and MAX_TILE."""
    tokens = max(max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in CONFIGS)
    return any(tokens * t.stride(2) + MAX_TILE * t.stride(1) >= 2**31 for t in tensors)


def peels_last_block(element_size: int) -> bool:
    """Whether the kernels run the last, partial block of a sequence after their loop (so that the
    loop's blocks skip every check against L): with 16-bit operands, whose tensor-core dots leave
    registers to spare. Float32 and float64 dots run on FMA units, which hold a thread's whole
    operand rows and columns in registers; there a second copy of the step made ptxas spill."""
    return element_size <= 2


def _shape_constants(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                     *tensors: torch.Tensor) -> dict:
    dkh, dvh = dk // num_heads, dv // num_heads
    return {"H": num_heads, "DKH": dkh, "DVH": dvh, "DROP": p > 0, "ACC": ACCUMULATOR[qkv.dtype],
            "WIDE": _wide_offsets(qkv, *tensors), "PEEL": peels_last_block(qkv.element_size()),
            "BLOCK_DK": padded_dim(dkh), "BLOCK_DV": padded_dim(dvh)}


def _lengths(qkv: torch.Tensor) -> list[int]:
    length = qkv.shape[2]
    return [length, length_bucket(length)]


def forward_arguments(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                      keep: torch.Tensor | None, out: torch.Tensor,
                      stats: torch.Tensor) -> tuple[list, dict]:
    """Positional arguments and constexprs of the forward kernel, all but the config's."""
    return ([qkv, out, stats, keep, *_lengths(qkv), *qkv.stride(), *out.stride()],
            _shape_constants(qkv, num_heads, dk, dv, p, out))


def backward_query_arguments(grad_out, qkv, out, stats, delta, num_heads, dk, dv, p, keep,
                             grad_qkv) -> tuple[list, dict]:
    return ([qkv, out, grad_out, stats, delta, keep, grad_qkv, *_lengths(qkv),
             *qkv.stride(), *out.stride(), *grad_out.stride(), *grad_qkv.stride()],
            _shape_constants(qkv, num_heads, dk, dv, p, out, grad_out, grad_qkv))


def backward_key_arguments(grad_out, qkv, stats, delta, num_heads, dk, dv, p, keep,
                           grad_qkv) -> tuple[list, dict]:
    return ([qkv, grad_out, stats, delta, keep, grad_qkv, *_lengths(qkv),
             *qkv.stride(), *grad_out.stride(), *grad_qkv.stride()],
            _shape_constants(qkv, num_heads, dk, dv, p, grad_out, grad_qkv))


# CUDA's limit on the second and third grid dimensions.
_GRID_LIMIT = 65535


def _launch(name: str, qkv: torch.Tensor, num_heads: int, args: list, constants: dict) -> None:
    """One program per ``BLOCK_M`` tokens of every (sequence, head). With STTR_PIN_CONFIGS=1 the
    first of :func:`launch_configs` runs, without autotuning."""
    n, _, length, joints = qkv.shape
    if n > _GRID_LIMIT or joints * num_heads > _GRID_LIMIT:
        raise ValueError(f"the temporal kernels take at most {_GRID_LIMIT} sequences per joint and "
                         f"{_GRID_LIMIT} joint-heads (grid dimensions), got N' = {n}, "
                         f"V·H = {joints * num_heads}")

    def grid(meta):
        return (triton.cdiv(length, meta["BLOCK_M"]), joints * num_heads, n)

    if PIN_CONFIGS:
        config = launch_configs(length, qkv.element_size())[0]
        KERNELS[name][grid(config.kwargs)](*args, **constants, **config.all_kwargs())
    else:
        _AUTOTUNED[name][grid](*args, **constants)


def temporal_attention_forward(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                               keep: torch.Tensor | None, out: torch.Tensor,
                               stats: torch.Tensor) -> None:
    """Fill ``out`` (N', dv, T, V), any strides, and ``stats`` (N'*V, H, T), contiguous.

    ``stats`` is float64 for float64 input, else float32; ``keep`` is the contiguous boolean
    (N'*V, H, T) key mask of :func:`.dropattention_rng.materialize_key_mask`, None when
    ``p == 0``. Arguments are checked by ``sttr_fast.ops``; this only launches.
    """
    if out.numel() == 0:
        return
    _launch("forward", qkv, num_heads, *forward_arguments(qkv, num_heads, dk, dv, p, keep, out, stats))


def temporal_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor,
                                stats: torch.Tensor, delta: torch.Tensor, num_heads: int, dk: int,
                                dv: int, p: float, keep: torch.Tensor | None,
                                grad_qkv: torch.Tensor) -> None:
    """Fill ``grad_qkv`` (the shape of ``qkv``, any strides) from ``grad_out`` (N', dv, T, V).

    ``out``, ``stats`` and ``keep`` are the forward's; ``delta`` is scratch of the shape and
    dtype of ``stats`` that the query kernel fills with D = rowsum(dO ⊙ O) for the key kernel.
    """
    if grad_qkv.numel() == 0:
        return
    _launch("backward_query", qkv, num_heads,
            *backward_query_arguments(grad_out, qkv, out, stats, delta, num_heads, dk, dv, p, keep, grad_qkv))
    _launch("backward_key", qkv, num_heads,
            *backward_key_arguments(grad_out, qkv, stats, delta, num_heads, dk, dv, p, keep, grad_qkv))
