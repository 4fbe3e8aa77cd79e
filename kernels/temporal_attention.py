"""Fused temporal self-attention core of ST-TR: flash-style forward and backward kernels.

The function is docs/network.md §7 and §8; the contract these kernels keep is docs/kernels.md.

Every joint trajectory (n', v) and head h is one attention problem over the L frames:
S = Q Kᵀ / sqrt(dkh), softmax over keys, exact DropAttention, O = P V. L runs to hundreds of
frames, so no program holds a whole L x L score matrix: the forward owns ``BLOCK_M`` queries of one
(sequence, head) and streams over blocks of ``BLOCK_N`` keys with an online softmax, and nothing
L x L ever reaches memory. Programs of neighbouring joints are launched together (the joint varies
fastest across programs) so that, in the contiguous ``(N', C, T, V)`` layout where a sequence is
strided by V, their loads fall into the same cache lines; in TSA's own layout (the qkv
convolution's output transposed, frames unit-stride) every load is coalesced by itself.

DropAttention is out = acc / (K + 1e-8·L) with L = Σ a over all keys, K = Σ m·a and
acc = Σ m·a·v for a = exp(s − max s). The forward keeps two running maxima: L relative to the
maximum over all keys, K and acc relative to the maximum over kept keys, because weights
relative to a dropped maximum can fall below float16's smallest number and would vanish as
16-bit dot operands while K is still comparable to 1e-8·L. The two are joined at the end by
shift = exp(max − kept max). The forward writes Λ = max s + log(K + 1e-8·L) per query.

The backward is two deterministic kernels without atomics, both recomputing the weights as
q = exp(s − Λ): one per block of queries for dQ (it also writes D = rowsum(dO ⊙ O) per query),
one per block of keys for dK and dV, which reads D. The key mask is regenerated from the RNG.
Products run in float32 (float64 for float64 input) with IEEE precision; offsets are int64.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_common import ACCUMULATOR, DROP_ATTENTION_EPS, padded_dim, softmax_scale
from .dropattention_rng import keep_keys, load_rng_state

@triton.jit
def _sequence_and_head(V, H: tl.constexpr):
    """This program's batch index n', joint, head, and the flat index of its (sequence, head):
    ``(n'*V + joint)*H + head``, times L the first flat index of its keys (mask and statistics
    layout). The joint varies fastest across programs."""
    pid = tl.program_id(0).to(tl.int64)
    joint = pid % V
    head = (pid // V) % H
    n = pid // (V * H)
    return n, joint, head, (n * V + joint) * H + head


@triton.jit
def _token_tile(base, first_token, L, first_channel, channels, stride_c, stride_t,
                BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets and mask of a (tokens, channels) tile of one sequence; tokens from L on and
    channels from ``channels`` on are masked."""
    tokens = first_token + tl.arange(0, BLOCK).to(tl.int64)
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    offsets = base + tokens[:, None] * stride_t + (first_channel + dims)[None, :] * stride_c
    mask = (tokens < L)[:, None] & (dims < channels)[None, :]
    return offsets, mask


@triton.jit
def _load_tokens(ptr, base, first_token, L, first_channel, channels, stride_c, stride_t,
                 BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    offsets, mask = _token_tile(base, first_token, L, first_channel, channels, stride_c, stride_t,
                                BLOCK, BLOCK_D)
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _store_tokens(ptr, value, base, first_token, L, first_channel, channels, stride_c, stride_t,
                  BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    offsets, mask = _token_tile(base, first_token, L, first_channel, channels, stride_c, stride_t,
                                BLOCK, BLOCK_D)
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def temporal_attention_forward_kernel(
        qkv_ptr, out_ptr, stats_ptr, rng_ptr,
        V, L, p,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        out_stride_n, out_stride_c, out_stride_t, out_stride_v,
        H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    n, joint, head, sequence_head = _sequence_and_head(V, H)
    first_query = tl.program_id(1).to(tl.int64) * BLOCK_M
    base = n * qkv_stride_n + joint * qkv_stride_v
    q = _load_tokens(qkv_ptr, base, first_query, L, head * DKH, DKH, qkv_stride_c, qkv_stride_t,
                     BLOCK_M, BLOCK_DK)
    scale = softmax_scale(ACC, DKH)
    first_key_index = sequence_head * L
    if DROP:
        seed, call_offset = load_rng_state(rng_ptr)

    row_max = tl.full((BLOCK_M,), float("-inf"), ACC)
    total = tl.zeros((BLOCK_M,), ACC)          # L: Σ exp(s - row_max) over all keys
    kept_max = tl.full((BLOCK_M,), float("-inf"), ACC)
    kept_total = tl.zeros((BLOCK_M,), ACC)     # K, relative to kept_max
    acc = tl.zeros((BLOCK_M, BLOCK_DV), ACC)   # Σ m·a·v, relative to kept_max (row_max without drop)
    for first_key in range(0, L, BLOCK_N):
        k = _load_tokens(qkv_ptr, base, first_key, L, H * DKH + head * DKH, DKH, qkv_stride_c,
                         qkv_stride_t, BLOCK_N, BLOCK_DK)
        v = _load_tokens(qkv_ptr, base, first_key, L, 2 * H * DKH + head * DVH, DVH, qkv_stride_c,
                         qkv_stride_t, BLOCK_N, BLOCK_DV)
        keys = first_key + tl.arange(0, BLOCK_N)
        key_valid = (keys < L)[None, :]
        s = tl.where(key_valid, tl.dot(q, tl.trans(k), input_precision="ieee") * scale, float("-inf"))
        # Every key block holds a valid key, so row_max is finite from the first block on.
        new_max = tl.maximum(row_max, tl.max(s, axis=1))
        rescale = tl.exp(row_max - new_max)
        a = tl.exp(s - new_max[:, None])
        total = total * rescale + tl.sum(a, axis=1)
        row_max = new_max
        if DROP:
            keep = keep_keys(seed, call_offset, first_key_index + keys, p)[None, :] & key_valid
            new_kept_max = tl.maximum(kept_max, tl.max(tl.where(keep, s, float("-inf")), axis=1))
            # Any finite anchor serves rows with no kept key yet; it keeps -inf - -inf out of exp.
            anchor = tl.where(new_kept_max > float("-inf"), new_kept_max, row_max)
            rescale = tl.exp(kept_max - anchor)
            a = tl.where(keep, tl.exp(s - anchor[:, None]), 0.0)
            kept_max = new_kept_max
            kept_total = kept_total * rescale + tl.sum(a, axis=1)
        acc = acc * rescale[:, None] + tl.dot(a.to(v.dtype), v, input_precision="ieee")

    if DROP:
        # inf when every key is dropped (kept_max = -inf): such rows come out exactly 0.
        shift = tl.exp(row_max - kept_max)
        denominator = kept_total + DROP_ATTENTION_EPS * total * shift
        log_denominator = tl.log(kept_total / shift + DROP_ATTENTION_EPS * total)
    else:
        denominator = total
        log_denominator = tl.log(total)
    out_base = n * out_stride_n + joint * out_stride_v
    _store_tokens(out_ptr, acc / denominator[:, None], out_base, first_query, L, head * DVH, DVH,
                  out_stride_c, out_stride_t, BLOCK_M, BLOCK_DV)
    queries = first_query + tl.arange(0, BLOCK_M)
    tl.store(stats_ptr + first_key_index + queries, row_max + log_denominator, mask=queries < L)


@triton.jit
def _score_gradient(s, stats, grad_weights, delta, keep, DROP: tl.constexpr):
    """dS from scores s, the forward's Λ, dP = dO·vᵀ and D = rowsum(dO ⊙ O), all oriented alike
    (statistics broadcast along keys): dS = q ⊙ (m ⊙ (dP − D) − 1e-8·D) with q = exp(s − Λ), and
    the weights m ⊙ q that dV needs."""
    weights = tl.exp(s - stats)
    if DROP:
        kept = tl.where(keep, weights, 0.0)
        grad_scores = (tl.where(keep, weights * (grad_weights - delta), 0.0)
                       - DROP_ATTENTION_EPS * delta * weights)
    else:
        kept = weights
        grad_scores = weights * (grad_weights - delta)
    return grad_scores, kept


@triton.jit
def temporal_attention_backward_query_kernel(
        qkv_ptr, out_ptr, grad_out_ptr, stats_ptr, delta_ptr, rng_ptr, grad_qkv_ptr,
        V, L, p,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        out_stride_n, out_stride_c, out_stride_t, out_stride_v,
        grad_out_stride_n, grad_out_stride_c, grad_out_stride_t, grad_out_stride_v,
        grad_qkv_stride_n, grad_qkv_stride_c, grad_qkv_stride_t, grad_qkv_stride_v,
        H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of ``BLOCK_M`` queries, and D = rowsum(dO ⊙ O) for them (written for the key kernel)."""
    n, joint, head, sequence_head = _sequence_and_head(V, H)
    first_query = tl.program_id(1).to(tl.int64) * BLOCK_M
    base = n * qkv_stride_n + joint * qkv_stride_v
    q = _load_tokens(qkv_ptr, base, first_query, L, head * DKH, DKH, qkv_stride_c, qkv_stride_t,
                     BLOCK_M, BLOCK_DK)
    # Padded query rows read dO = 0 and O = 0, so their D, dP and dS are 0.
    grad_out = _load_tokens(grad_out_ptr, n * grad_out_stride_n + joint * grad_out_stride_v,
                            first_query, L, head * DVH, DVH, grad_out_stride_c, grad_out_stride_t,
                            BLOCK_M, BLOCK_DV)
    out = _load_tokens(out_ptr, n * out_stride_n + joint * out_stride_v, first_query, L, head * DVH,
                       DVH, out_stride_c, out_stride_t, BLOCK_M, BLOCK_DV)
    delta = tl.sum(grad_out.to(ACC) * out.to(ACC), axis=1)
    first_key_index = sequence_head * L
    queries = first_query + tl.arange(0, BLOCK_M)
    tl.store(delta_ptr + first_key_index + queries, delta, mask=queries < L)
    stats = tl.load(stats_ptr + first_key_index + queries, mask=queries < L, other=0.0)
    scale = softmax_scale(ACC, DKH)
    if DROP:
        seed, call_offset = load_rng_state(rng_ptr)

    grad_q = tl.zeros((BLOCK_M, BLOCK_DK), ACC)
    for first_key in range(0, L, BLOCK_N):
        k = _load_tokens(qkv_ptr, base, first_key, L, H * DKH + head * DKH, DKH, qkv_stride_c,
                         qkv_stride_t, BLOCK_N, BLOCK_DK)
        v = _load_tokens(qkv_ptr, base, first_key, L, 2 * H * DKH + head * DVH, DVH, qkv_stride_c,
                         qkv_stride_t, BLOCK_N, BLOCK_DV)
        keys = first_key + tl.arange(0, BLOCK_N)
        key_valid = (keys < L)[None, :]
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        grad_weights = tl.dot(grad_out, tl.trans(v), input_precision="ieee")
        keep = key_valid
        if DROP:
            keep = keep_keys(seed, call_offset, first_key_index + keys, p)[None, :] & key_valid
        grad_scores, _ = _score_gradient(s, stats[:, None], grad_weights, delta[:, None], keep, DROP)
        # Padded keys (k = v = 0) would otherwise add their 1e-8·D share.
        grad_scores = tl.where(key_valid, grad_scores, 0.0)
        grad_q += tl.dot(grad_scores.to(k.dtype), k, input_precision="ieee")
    _store_tokens(grad_qkv_ptr, grad_q * scale, n * grad_qkv_stride_n + joint * grad_qkv_stride_v,
                  first_query, L, head * DKH, DKH, grad_qkv_stride_c, grad_qkv_stride_t,
                  BLOCK_M, BLOCK_DK)


@triton.jit
def temporal_attention_backward_key_kernel(
        qkv_ptr, grad_out_ptr, stats_ptr, delta_ptr, rng_ptr, grad_qkv_ptr,
        V, L, p,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        grad_out_stride_n, grad_out_stride_c, grad_out_stride_t, grad_out_stride_v,
        grad_qkv_stride_n, grad_qkv_stride_c, grad_qkv_stride_t, grad_qkv_stride_v,
        H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr,
        BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK and dV of ``BLOCK_N`` keys; tiles are key-major (keys x queries), so no transposed
    score tile is formed."""
    n, joint, head, sequence_head = _sequence_and_head(V, H)
    first_key = tl.program_id(1).to(tl.int64) * BLOCK_N
    base = n * qkv_stride_n + joint * qkv_stride_v
    grad_out_base = n * grad_out_stride_n + joint * grad_out_stride_v
    k = _load_tokens(qkv_ptr, base, first_key, L, H * DKH + head * DKH, DKH, qkv_stride_c,
                     qkv_stride_t, BLOCK_N, BLOCK_DK)
    v = _load_tokens(qkv_ptr, base, first_key, L, 2 * H * DKH + head * DVH, DVH, qkv_stride_c,
                     qkv_stride_t, BLOCK_N, BLOCK_DV)
    first_key_index = sequence_head * L
    keys = first_key + tl.arange(0, BLOCK_N)
    keep = (keys < L)[:, None]
    if DROP:
        seed, call_offset = load_rng_state(rng_ptr)
        keep = keep_keys(seed, call_offset, first_key_index + keys, p)[:, None] & keep
    scale = softmax_scale(ACC, DKH)

    grad_k = tl.zeros((BLOCK_N, BLOCK_DK), ACC)
    grad_v = tl.zeros((BLOCK_N, BLOCK_DV), ACC)
    for first_query in range(0, L, BLOCK_M):
        q = _load_tokens(qkv_ptr, base, first_query, L, head * DKH, DKH, qkv_stride_c, qkv_stride_t,
                         BLOCK_M, BLOCK_DK)
        # Padded query rows read dO = 0 and D = 0, so they add nothing to dK and dV.
        grad_out = _load_tokens(grad_out_ptr, grad_out_base, first_query, L, head * DVH, DVH,
                                grad_out_stride_c, grad_out_stride_t, BLOCK_M, BLOCK_DV)
        queries = first_query + tl.arange(0, BLOCK_M)
        query_valid = queries < L
        stats = tl.load(stats_ptr + first_key_index + queries, mask=query_valid, other=0.0)
        delta = tl.load(delta_ptr + first_key_index + queries, mask=query_valid, other=0.0)
        s = tl.dot(k, tl.trans(q), input_precision="ieee") * scale
        grad_weights = tl.dot(v, tl.trans(grad_out), input_precision="ieee")
        grad_scores, kept = _score_gradient(s, stats[None, :], grad_weights, delta[None, :], keep, DROP)
        grad_v += tl.dot(kept.to(grad_out.dtype), grad_out, input_precision="ieee")
        grad_k += tl.dot(grad_scores.to(q.dtype), q, input_precision="ieee")
    grad_base = n * grad_qkv_stride_n + joint * grad_qkv_stride_v
    _store_tokens(grad_qkv_ptr, grad_k * scale, grad_base, first_key, L, H * DKH + head * DKH, DKH,
                  grad_qkv_stride_c, grad_qkv_stride_t, BLOCK_N, BLOCK_DK)
    _store_tokens(grad_qkv_ptr, grad_v, grad_base, first_key, L, 2 * H * DKH + head * DVH, DVH,
                  grad_qkv_stride_c, grad_qkv_stride_t, BLOCK_N, BLOCK_DV)


# --- launchers ------------------------------------------------------------------------------------

def _configs(interpreting: bool) -> list[triton.Config]:
    """(queries, keys) per tile with warps to match, and two pipeline stages so the next key
    block's loads are in flight during the current one. 32 x 32 tiles take 8 warps and one stage:
    with 4 warps or two stages ptxas gave their float32 backward an 8-16 byte stack frame on
    sm_80 (compile_report). Nothing larger: at 64 x 64 with 64-wide heads the float32 backward
    spilled kilobytes. The interpreter runs one config (it cannot benchmark several): 16 x 16
    tiles give the CPU tests several ragged key and query blocks."""
    if interpreting:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)
            for m, n, warps, stages in ((16, 16, 2, 2), (16, 32, 4, 2), (32, 16, 4, 2), (32, 32, 8, 1))]


# A config may pad the L x L score matrix to at most this many times the least any config pads it
# to: at L = 75 only 16 x 16 tiles remain (80² scores; 32-wide tiles compute 96 x 80 or more),
# at L = 150 and 300 all of them (160², and 304² to 320²).
PADDING_SLACK = 1.15


def padded_scores(config: triton.Config, length: int) -> int:
    """Scores a config computes for a sequence of ``length`` tokens, padding included."""
    m, n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
    return triton.cdiv(length, m) * m * triton.cdiv(length, n) * n


def least_padded_configs(configs: list[triton.Config], length: int) -> list[triton.Config]:
    least = min(padded_scores(c, length) for c in configs)
    return [c for c in configs if padded_scores(c, length) <= PADDING_SLACK * least]


def _prune(configs, named_args, **kwargs):
    return least_padded_configs(configs, named_args["L"])


INTERPRETED = bool(triton.knobs.runtime.interpret)
CONFIGS = _configs(INTERPRETED)
# Strides in the key: the layout decides which tiles load coalesced.
_AUTOTUNE_KEY = ["L", "qkv_stride_t", "qkv_stride_v", "H", "DKH", "DVH", "DROP"]
_PRUNING = {"early_config_prune": _prune}
_forward = triton.autotune(CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=_PRUNING)(
    temporal_attention_forward_kernel)
_backward_query = triton.autotune(CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=_PRUNING)(
    temporal_attention_backward_query_kernel)
_backward_key = triton.autotune(CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=_PRUNING)(
    temporal_attention_backward_key_kernel)


def _shape_constants(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> dict:
    dkh, dvh = dk // num_heads, dv // num_heads
    return {"H": num_heads, "DKH": dkh, "DVH": dvh, "DROP": p > 0, "ACC": ACCUMULATOR[qkv.dtype],
            "BLOCK_DK": padded_dim(dkh), "BLOCK_DV": padded_dim(dvh)}


def forward_arguments(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                      rng_state: torch.Tensor | None, out: torch.Tensor,
                      stats: torch.Tensor) -> tuple[list, dict]:
    """Positional arguments and constexprs of the forward kernel, all but the config's."""
    _, _, length, joints = qkv.shape
    return ([qkv, out, stats, rng_state, joints, length, p, *qkv.stride(), *out.stride()],
            _shape_constants(qkv, num_heads, dk, dv, p))


def backward_query_arguments(grad_out, qkv, out, stats, delta, num_heads, dk, dv, p, rng_state,
                             grad_qkv) -> tuple[list, dict]:
    _, _, length, joints = qkv.shape
    return ([qkv, out, grad_out, stats, delta, rng_state, grad_qkv, joints, length, p,
             *qkv.stride(), *out.stride(), *grad_out.stride(), *grad_qkv.stride()],
            _shape_constants(qkv, num_heads, dk, dv, p))


def backward_key_arguments(grad_out, qkv, stats, delta, num_heads, dk, dv, p, rng_state,
                           grad_qkv) -> tuple[list, dict]:
    _, _, length, joints = qkv.shape
    return ([qkv, grad_out, stats, delta, rng_state, grad_qkv, joints, length, p,
             *qkv.stride(), *grad_out.stride(), *grad_qkv.stride()],
            _shape_constants(qkv, num_heads, dk, dv, p))


def _grid(qkv: torch.Tensor, num_heads: int, block: str):
    n, _, length, joints = qkv.shape
    return lambda meta: (n * joints * num_heads, triton.cdiv(length, meta[block]))


def temporal_attention_forward(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                               rng_state: torch.Tensor | None, out: torch.Tensor,
                               stats: torch.Tensor) -> None:
    """Fill ``out`` (N', dv, T, V), any strides, and ``stats`` (N'*V, H, T), contiguous.

    ``stats`` is float64 for float64 input, else float32; ``rng_state`` is the (seed, offset)
    pair of :mod:`.dropattention_rng`, unused when ``p == 0``. Arguments are checked by
    ``sttr_fast.ops``; this only launches.
    """
    if out.numel() == 0:
        return
    args, constants = forward_arguments(qkv, num_heads, dk, dv, p, rng_state, out, stats)
    _forward[_grid(qkv, num_heads, "BLOCK_M")](*args, **constants)


def temporal_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor,
                                stats: torch.Tensor, delta: torch.Tensor, num_heads: int, dk: int,
                                dv: int, p: float, rng_state: torch.Tensor | None,
                                grad_qkv: torch.Tensor) -> None:
    """Fill ``grad_qkv`` (the shape of ``qkv``, any strides) from ``grad_out`` (N', dv, T, V).

    ``out``, ``stats`` and ``rng_state`` are the forward's; ``delta`` is scratch of the shape and
    dtype of ``stats`` that the query kernel fills with D = rowsum(dO ⊙ O) for the key kernel.
    """
    if grad_qkv.numel() == 0:
        return
    args, constants = backward_query_arguments(grad_out, qkv, out, stats, delta, num_heads, dk, dv, p,
                                               rng_state, grad_qkv)
    _backward_query[_grid(qkv, num_heads, "BLOCK_M")](*args, **constants)
    args, constants = backward_key_arguments(grad_out, qkv, stats, delta, num_heads, dk, dv, p,
                                             rng_state, grad_qkv)
    _backward_key[_grid(qkv, num_heads, "BLOCK_N")](*args, **constants)
