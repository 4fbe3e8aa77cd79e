"""Eager PyTorch attention cores: the ground truth every fused backend is tested against.

Both cores read q, k, v as strided views of the qkv projection output ``(N', 2*dk + dv, T, V)``
(heads are contiguous channel chunks, docs/network.md §5) and return the head-concatenated output
``(N', dv, T, V)``. Only the two transposes that batched matmul needs are materialised.

``record_attention()`` makes every core call while it is active keep its attention probabilities
(what ``sttr visualize`` draws).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .custom_ops import empty, is_channels_last, layout_like

# The renormalisation epsilon of ST-TR's DropAttention (docs/network.md §8); part of the function,
# not a guard.
DROP_ATTENTION_EPS = 1e-8

# Axis orders that turn a (N', H, d, T, V) head view into (N', sequence, H, L, d).
_SPATIAL_ORDER = (0, 3, 1, 4, 2)   # sequences are frames, tokens are joints
_TEMPORAL_ORDER = (0, 4, 1, 3, 2)  # sequences are joints, tokens are frames


class AttentionRecord(NamedTuple):
    """The attention probabilities of one core call. ``kind`` "spatial": (N', T, H, V, V), every
    frame's joints (query, key); "temporal": (N', V, H, T, T), every joint's frames (query, key)."""
    kind: str
    probabilities: torch.Tensor


# The list that core calls append to while record_attention() is active; None otherwise, so the
# default path costs one comparison.
_records: list[AttentionRecord] | None = None


@contextlib.contextmanager
def record_attention():
    """While active, every ``ops.spatial_attention`` / ``ops.temporal_attention`` call runs on this
    reference path, whichever backend it asks for, and appends an ``AttentionRecord`` of the
    probabilities it applied (softmax(QK^T / sqrt(d)), after DropAttention if a key mask is used;
    in eval mode there is none) to the list it yields, in call order. Not thread-safe: one
    recording per process at a time."""
    global _records
    previous, _records = _records, []
    try:
        yield _records
    finally:
        _records = previous


def recording() -> bool:
    return _records is not None


def drop_attention(probs: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """ST-TR's DropAttention on softmax probabilities ``(..., L_q, L_k)`` with a key mask ``(..., L_k)``.

    ``P' = (P * m) / (rowsum(P * m) + 1e-8)``: no 1/(1-p) rescaling, and a row whose keys are all
    dropped becomes exactly zero.
    """
    kept = probs * key_mask.unsqueeze(-2).to(probs.dtype)
    accumulate = torch.promote_types(kept.dtype, torch.float32)
    return (kept / _renormaliser(kept.sum(dim=-1, keepdim=True, dtype=accumulate))).to(probs.dtype)


def _renormaliser(row_sums: torch.Tensor) -> torch.Tensor:
    """The kept probabilities' row sums + 1e-8, in their dtype where that holds 1e-8 (bfloat16,
    float32, float64: dividing in bfloat16 spares casting the L x d numerator to float32 and
    back), else in float32: in float16 the 1e-8 would round to 0 and turn a row whose keys are
    all dropped into 0 / 0."""
    holds_eps = torch.finfo(row_sums.dtype).tiny < DROP_ATTENTION_EPS
    return row_sums.to(row_sums.dtype if holds_eps else torch.float32) + DROP_ATTENTION_EPS


def sample_key_mask(shape: tuple[int, ...], p: float, device: torch.device,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean keep-mask: each (sequence, head, key) is kept with probability 1 - p."""
    return torch.rand(shape, device=device, generator=generator) >= p


def _head_views(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, order: tuple[int, ...]):
    """q, k, v as (N', sequence, H, L, d) views of qkv. In eager autograd through
    ``_HeadViewsGradient``: autograd's own backward of three slices would fill a zero tensor of
    qkv's size per slice, copy each gradient into it (after a reshaping copy), add the three and
    leave the sum in the contiguous layout, which a channels-last projection then copies again."""
    if qkv.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _HeadViewsGradient.apply(qkv, num_heads, dk, dv, order)
    return _slices(qkv, num_heads, dk, dv, order)


def _slices(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, order: tuple[int, ...]):
    n, _, t, v = qkv.shape
    q = qkv[:, :dk].view(n, num_heads, dk // num_heads, t, v).permute(order)
    k = qkv[:, dk:2 * dk].view(n, num_heads, dk // num_heads, t, v).permute(order)
    val = qkv[:, 2 * dk:].view(n, num_heads, dv // num_heads, t, v).permute(order)
    return q, k, val


class _HeadViewsGradient(torch.autograd.Function):
    """``_slices`` whose backward writes the three gradients, each once, into one tensor laid
    out as qkv (custom_ops.layout_like), which is what the projection's backward reads."""

    @staticmethod
    def forward(ctx, qkv, num_heads, dk, dv, order):
        ctx.split = (num_heads, dk, dv, order)
        # qkv's shape and strides, without keeping qkv.
        ctx.like = torch.empty_strided(qkv.shape, qkv.stride(), dtype=qkv.dtype, device="meta")
        ctx.device = qkv.device
        return _slices(qkv, num_heads, dk, dv, order)

    @staticmethod
    def backward(ctx, *grads):
        grad = layout_like(ctx.like, ctx.like.shape[1], ctx.like.dtype,
                           lambda shape, dtype, _: torch.empty(shape, dtype=dtype, device=ctx.device))
        for part, part_grad in zip(_slices(grad, *ctx.split), grads):
            if part_grad is None:
                part.zero_()
            else:
                part.copy_(part_grad)
        return grad, None, None, None, None


# How a core call computes: "explicit" (softmax(QK^T / sqrt(d)) V as written, the authors' way),
# "sdpa" (torch's scaled_dot_product_attention; no key mask), "blocked" (the CPU without
# autograd and key mask: blocks of sequences whose scores stay in cache, see _attend_blocked).
PATHS = ("explicit", "sdpa", "blocked")
# The CPU's shortcuts (SDPA and blocks); bench/bench_inference.py turns them off to time the
# authors' explicit path.
CPU_SHORTCUTS = True
# On the CPU without autograd, sequences at least this long take SDPA, those shorter than
# CPU_BLOCKED_MAX_LENGTH blocks, those between the explicit path.
CPU_SDPA_MIN_LENGTH = 128
CPU_BLOCKED_MAX_LENGTH = 64
# Half-precision CPU softmax rows shorter than this run in float32 (see _probabilities).
CPU_FLOAT32_SOFTMAX_MAX_LENGTH = 64
# Float32 scores per block of the blocked path: a few MB, so that each block's scores,
# probabilities and products stay in the core's cache.
CPU_BLOCK_BYTES = 4 << 20


def default_path(device: torch.device, length: int, masked: bool, needs_grad: bool) -> str:
    """The path a core call takes when none is asked for. Without DropAttention the core is plain
    softmax attention: on CUDA SDPA computes it without materialising the L x L probabilities; on
    the CPU SDPA's flash kernel wins on long sequences (T-TR's L = 150 and 300) and, for short ones
    (L <= 75 and the 25-joint SSA), blocks of sequences with a float32 softmax (torch's bfloat16
    softmax over rows of 25 is several times slower than its float32 one) win in inference up to
    CPU_BLOCKED_MAX_LENGTH (the 25-joint SSA: 1.5-3.2x the explicit path in both dtypes and
    layouts), while at L = 75 blocks lose in bfloat16 (0.7x; 1.2x in float32), so the explicit
    path keeps those (bench/bench_reference_core.py)."""
    if masked:
        return "explicit"
    if device.type == "cuda":
        return "sdpa"
    if not CPU_SHORTCUTS:
        return "explicit"
    if length >= CPU_SDPA_MIN_LENGTH:
        return "sdpa"
    # The blocks are a Python loop over the batch: torch.compile and torch.export get the
    # explicit path, which they fuse themselves and which keeps the batch size free.
    if needs_grad or length >= CPU_BLOCKED_MAX_LENGTH or torch.compiler.is_compiling():
        return "explicit"
    return "blocked"


def _attend(q, k, v, key_mask, use_sdpa: bool):
    """Attention over the last-but-one axis of (..., L, d) views, with optional DropAttention;
    SDPA is only ever used without a key mask."""
    scale = q.shape[-1] ** -0.5
    if key_mask is None and use_sdpa:
        # The CPU flash kernel takes 4-D inputs only (a 5-D call falls back to the L x L math
        # path) and equal head dims for q, k and v: zero-padding q and k to v's leaves QKᵀ as is.
        flat = [x.reshape(-1, *x.shape[-3:]) for x in (q, k, v)]
        if q.device.type == "cpu" and q.shape[-1] < v.shape[-1]:
            flat[:2] = [F.pad(x, (0, v.shape[-1] - q.shape[-1])) for x in flat[:2]]
        return F.scaled_dot_product_attention(*flat, scale=scale).view(*q.shape[:-1], v.shape[-1])
    probs = _probabilities(q, k)
    if key_mask is None:
        return torch.matmul(probs, v)
    # drop_attention(probs, key_mask) @ v without an L x L masked copy: the mask m is one per key,
    # so (P * m) V = P (m v) and rowsum(P * m) = P m, and one product with [m v | m] gives the
    # numerator and the renormaliser, which then divides L x d values. (Under autocast the
    # renormaliser comes out of that product in the autocast dtype.)
    mask = key_mask.unsqueeze(-1).to(v.dtype)
    weighted = torch.matmul(probs, torch.cat((v * mask, mask), dim=-1))
    return (weighted[..., :-1] / _renormaliser(weighted[..., -1:])).to(v.dtype)


def _attend_blocked(q, k, v, out) -> None:
    """``out = softmax(QK^T / sqrt(d)) V`` for (N', S, H, L, d) views, written into ``out``'s view
    block by block: a block is a run of the S sequences of one n', small enough that its scores
    stay in cache, so the L x L scores never travel through memory; the softmax runs in at least
    float32."""
    n, sequences, heads, length, _ = q.shape
    scale = q.shape[-1] ** -0.5
    softmax_dtype = torch.promote_types(q.dtype, torch.float32)
    block = max(1, CPU_BLOCK_BYTES // (heads * length * length * 4))
    for i in range(n):
        for start in range(0, sequences, block):
            rows = (i, slice(start, start + block))
            scores = torch.matmul(q[rows], k[rows].transpose(-1, -2))
            probs = torch.softmax(scores.to(softmax_dtype).mul_(scale), dim=-1).to(v.dtype)
            out[rows] = torch.matmul(probs, v[rows])


def _probabilities(q, k):
    """softmax(QK^T / sqrt(d)), in q's dtype. On the CPU, half-precision rows shorter than
    CPU_FLOAT32_SOFTMAX_MAX_LENGTH (the 25-joint SSA) take the softmax in float32, as CUDA's
    autocast always does: torch's CPU bfloat16 softmax and its backward over rows of 25 took
    2.7-3.3x as long as the float32 ones with their casts (a tenth of a bf16 S-TR training step),
    while over rows of 75 and 150 they were as fast or faster."""
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))
    if (scores.device.type == "cpu" and scores.dtype in (torch.bfloat16, torch.float16)
            and scores.shape[-1] < CPU_FLOAT32_SOFTMAX_MAX_LENGTH):
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


def _attend_recorded(q, k, v, key_mask, kind: str):
    """``_attend`` with the probabilities materialised and appended to the active recording."""
    probs = _probabilities(q, k)
    if key_mask is not None:
        probs = drop_attention(probs, key_mask)
    _records.append(AttentionRecord(kind, probs.detach()))
    return torch.matmul(probs, v)


def _split_heads(out: torch.Tensor, num_heads: int, order: tuple[int, ...]) -> torch.Tensor:
    """A (N', H*dvh, T, V) tensor as the (N', sequence, H, L, dvh) view the paths compute in."""
    n, channels, t, v = out.shape
    return out.view(n, num_heads, channels // num_heads, t, v).permute(order)


def _merge_heads(out: torch.Tensor, order: tuple[int, ...], channels_last: bool) -> torch.Tensor:
    """(N', sequence, H, L, dvh) back to the head-concatenated (N', H*dvh, T, V), channels-last
    if asked (the layout of a channels-last qkv, so that the output projection, the residual and
    the BatchNorm after the core stay in it)."""
    inverse = tuple(order.index(axis) for axis in range(5))
    merged = out.permute(inverse)  # (N', H, dvh, T, V)
    n, h, d, t, v = merged.shape
    if channels_last:
        return merged.permute(0, 3, 4, 1, 2).reshape(n, t, v, h * d).permute(0, 3, 1, 2)
    return merged.reshape(n, h * d, t, v)


def _core(qkv, num_heads, dk, dv, key_mask, path, order):
    q, k, v = _head_views(qkv, num_heads, dk, dv, order)
    if _records is not None:
        kind = "spatial" if order == _SPATIAL_ORDER else "temporal"
        return _merge_heads(_attend_recorded(q, k, v, key_mask, kind), order, is_channels_last(qkv))
    if path is None:
        path = default_path(qkv.device, q.shape[-2], key_mask is not None,
                            torch.is_grad_enabled() and qkv.requires_grad)
    if path not in PATHS or (path != "explicit" and key_mask is not None):
        raise ValueError(f"reference core: path must be one of {PATHS} ('explicit' with a key mask), "
                         f"got {path!r}")
    if path == "blocked":
        # Written in qkv's stride order, as the fused backends write it, so the output projection
        # takes it without a copy.
        out = layout_like(qkv, dv, qkv.dtype, empty)
        _attend_blocked(q, k, v, _split_heads(out, num_heads, order))
        return out
    return _merge_heads(_attend(q, k, v, key_mask, path == "sdpa"), order, is_channels_last(qkv))


def spatial_attention(qkv, num_heads, dk, dv, key_mask=None, path=None):
    """Attention among the V joints of every frame; key_mask is (N', T, H, V) or None; ``path``
    one of ``PATHS`` (None: ``default_path``)."""
    return _core(qkv, num_heads, dk, dv, key_mask, path, _SPATIAL_ORDER)


def temporal_attention(qkv, num_heads, dk, dv, key_mask=None, path=None):
    """Attention along the T frames of every joint; key_mask is (N', V, H, T) or None; ``path``
    one of ``PATHS`` (None: ``default_path``)."""
    return _core(qkv, num_heads, dk, dv, key_mask, path, _TEMPORAL_ORDER)
