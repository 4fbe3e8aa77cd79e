"""The custom-op scaffold the fused backends share (``triton_backend``, ``cuda_backend``).

Each fused core is a pair of custom ops, ``sttr_fast::<op>_<backend>`` (output, per-query
statistics, key mask) and ``sttr_fast::<op>_<backend>_backward``, registered with fake
implementations and an autograd formula, so ``torch.compile`` traces a model through them without
a graph break and autocast hands them its dtype unchanged. The DropAttention seed is an input
tensor drawn outside the op, so the op itself is a pure function that the compiler may treat like
any other; the forward op turns the seed into the key mask once and returns it for the backward
(docs/kernels.md §6). A backend brings only its launches (:class:`FusedCore`) and its mask kernel.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

# Under torch.compile, qkv must reach the kernels in the stride order it was traced with (layout_like).
_TAGS = (torch.Tag.needs_fixed_stride_order,)


def new_rng_state(device: torch.device) -> torch.Tensor:
    """A fresh (seed, call offset) pair from ``device``'s default generator, so that
    ``torch.manual_seed`` reproduces the mask; both fused backends draw it the same way, so one
    seed gives them the same mask."""
    return torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, device=device)


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a 4-D tensor is laid out channels-last (and not also contiguous, as size-1 dims
    can make it): the CPU's bf16 training and fast inference run the network so."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def layout_like(qkv: torch.Tensor, channels: int, dtype: torch.dtype, allocate) -> torch.Tensor:
    """A (N', channels, T, V) buffer in qkv's stride order, so that the 1x1 convolutions around the
    core receive the output and return qkv's gradient in the layout they work in, without a copy
    (the modules hand over their convolution's (N', C, V, T) output transposed, frames unit-stride).
    The ops are tagged needs_fixed_stride_order: under torch.compile qkv reaches them in the
    stride order they were traced with, so the real and the fake output agree."""
    n, _, t, v = qkv.shape
    shape = (n, channels, t, v)
    outermost_first = sorted(range(4), key=lambda axis: (-qkv.stride(axis), axis))
    buffer = allocate(tuple(shape[axis] for axis in outermost_first), dtype, qkv.device)
    return buffer.permute([outermost_first.index(axis) for axis in range(4)])


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


def spatial_sequences(qkv: torch.Tensor, num_heads: int) -> tuple[int, int, int]:
    """(sequences, heads, tokens) of the spatial core: every (n', t) frame is a sequence of joints."""
    return (qkv.shape[0] * qkv.shape[2], num_heads, qkv.shape[3])


def temporal_sequences(qkv: torch.Tensor, num_heads: int) -> tuple[int, int, int]:
    """(sequences, heads, tokens) of the temporal core: every (n', v) joint is a sequence of frames."""
    return (qkv.shape[0] * qkv.shape[3], num_heads, qkv.shape[2])


@dataclasses.dataclass(frozen=True)
class FusedCore:
    """How one backend launches one op's kernels.

    ``forward(qkv, out, stats, keep, num_heads, dk, dv, p)`` fills out and stats;
    ``backward(grad_out, qkv, out, stats, keep, grad_qkv, num_heads, dk, dv, p, allocate)`` fills
    grad_qkv (allocate gives scratch buffers); keep is None without DropAttention.
    ``sequences(qkv, num_heads)`` is the shape of the statistics and of the key mask.
    """
    forward: Callable
    backward: Callable
    sequences: Callable[[torch.Tensor, int], tuple[int, int, int]]


def register(op: str, backend: str, core: FusedCore,
             key_mask: Callable[[torch.Tensor, tuple[int, ...], float], torch.Tensor],
             allocate: Callable) -> Callable:
    """Register ``op``'s custom ops for ``backend`` and their autograd formula; returns the fused
    core ``(qkv, num_heads, dk, dv, p) -> out``. ``key_mask(rng_state, shape, p)`` is the backend's
    mask kernel; ``allocate(shape, dtype, device)`` makes every buffer the kernels fill (looked up
    at each call, so the tests can swap in one that fills it with NaN)."""

    def output_buffers(qkv, num_heads, dv, allocate):
        out = layout_like(qkv, dv, qkv.dtype, allocate)
        stats = allocate(core.sequences(qkv, num_heads), stats_dtype(qkv.dtype), qkv.device)
        return out, stats

    def key_mask_shape(qkv, num_heads, p):
        # Without DropAttention there is no mask; an empty tensor stands for it.
        return core.sequences(qkv, num_heads) if p > 0 else (0,)

    @torch.library.custom_op(f"sttr_fast::{op}_{backend}", mutates_args=(), tags=_TAGS)
    def forward(qkv: torch.Tensor, rng_state: Optional[torch.Tensor], num_heads: int, dk: int, dv: int,
                p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, stats = output_buffers(qkv, num_heads, dv, allocate)
        # One keep decision per (sequence, head, key), drawn once here and read by the forward and
        # backward kernels.
        keep = (key_mask(rng_state, key_mask_shape(qkv, num_heads, p), p) if p > 0
                else torch.empty(0, dtype=torch.bool, device=qkv.device))
        core.forward(qkv, out, stats, keep if p > 0 else None, num_heads, dk, dv, p)
        return out, stats, keep

    @forward.register_fake
    def _(qkv, rng_state, num_heads, dk, dv, p):
        out, stats = output_buffers(qkv, num_heads, dv, empty)
        return out, stats, empty(key_mask_shape(qkv, num_heads, p), torch.bool, qkv.device)

    @torch.library.custom_op(f"sttr_fast::{op}_{backend}_backward", mutates_args=(), tags=_TAGS)
    def backward(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, stats: torch.Tensor,
                 keep: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
        grad_qkv = layout_like(qkv, qkv.shape[1], qkv.dtype, allocate)
        core.backward(grad_out, qkv, out, stats, keep if p > 0 else None, grad_qkv, num_heads, dk, dv, p,
                      allocate)
        return grad_qkv

    @backward.register_fake
    def _(grad_out, qkv, out, stats, keep, num_heads, dk, dv, p):
        return layout_like(qkv, qkv.shape[1], qkv.dtype, empty)

    def setup_context(ctx, inputs, output):
        qkv, rng_state, num_heads, dk, dv, p = inputs
        out, stats, keep = output
        # out is kept alive by the output projection's own autograd anyway.
        ctx.save_for_backward(qkv, out, stats, keep)
        ctx.head_split = (num_heads, dk, dv, p)
        ctx.mark_non_differentiable(stats, keep)

    def differentiate(ctx, grad_out, grad_stats, grad_keep):
        qkv, out, stats, keep = ctx.saved_tensors
        grad_qkv = backward(grad_out, qkv, out, stats, keep, *ctx.head_split)
        return grad_qkv, None, None, None, None, None

    forward.register_autograd(differentiate, setup_context=setup_context)

    def fused(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
        rng_state = new_rng_state(qkv.device) if p > 0 else None
        out, _, _ = forward(qkv, rng_state, num_heads, dk, dv, p)
        return out

    return fused
