"""The Triton backend of ``sttr_fast.ops``: torch custom ops around the fused kernels.

Each core is a pair of custom ops, ``sttr_fast::<op>_triton`` (output and per-query statistics)
and ``sttr_fast::<op>_triton_backward``, registered with fake implementations and an autograd
formula, so ``torch.compile`` traces a model through them without a graph break and autocast
hands them its dtype unchanged. The DropAttention seed is an input tensor drawn outside the op,
so the op itself is a pure function that the compiler may treat like any other; the forward op
turns the seed into the key mask once and returns it for the backward.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch

from ..kernels import spatial_attention as spatial_kernels
from ..kernels import temporal_attention as temporal_kernels
from ..kernels.attention_common import MAX_TILE
from ..kernels.dropattention_rng import materialize_key_mask, new_rng_state

# Whether the kernels run in Triton's CPU interpreter; fixed when triton compiled them (import).
INTERPRETED = spatial_kernels.INTERPRETED
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def usable() -> bool:
    """Whether the kernels can run on this machine at all."""
    return INTERPRETED or torch.cuda.is_available()


def unsupported(op: str, qkv: torch.Tensor, num_heads: int, dk: int, dv: int) -> str | None:
    """Why the kernels cannot take this input (beyond the checks every backend shares in
    ``ops._check_qkv``), or None when they can."""
    if qkv.device.type != "cuda" and not INTERPRETED:
        return (f"{op}: backend='triton' needs a CUDA tensor, got one on {qkv.device} (to run the "
                "kernels on the CPU, set TRITON_INTERPRET=1 before triton is imported)")
    dtypes = _DTYPES + ((torch.float64,) if INTERPRETED else ())
    if qkv.dtype not in dtypes:
        return (f"{op}: backend='triton' takes {', '.join(str(d) for d in dtypes)} input, "
                f"got {qkv.dtype}; use backend='reference'")
    sizes = {"dk per head": dk // num_heads, "dv per head": dv // num_heads}
    if op == "spatial_attention":  # the spatial kernel holds a frame's joints in one tile
        sizes = {"V (joints)": qkv.shape[3], **sizes}
    too_large = {name: size for name, size in sizes.items() if size > MAX_TILE}
    if too_large:
        limited = " and ".join(["joints"] * (op == "spatial_attention") + ["channels per head"])
        return (f"{op}: backend='triton' handles at most {MAX_TILE} {limited}, got {too_large}; "
                "use backend='reference'")
    return None


def _layout_like(qkv: torch.Tensor, channels: int, dtype: torch.dtype, allocate) -> torch.Tensor:
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


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)


# Every buffer the kernels fill comes from here; the tests swap in one that fills it with NaN.
_allocate = _empty


@dataclasses.dataclass(frozen=True)
class _Core:
    """How one op's kernels are launched: ``forward(qkv, heads, dk, dv, p, keep, out, stats)``,
    ``backward(grad_out, qkv, out, stats, heads, dk, dv, p, keep, grad_qkv, allocate)``, and the
    shape of the per-query statistics and of the key mask, (sequences, heads, tokens)."""
    forward: Callable
    backward: Callable
    stats_shape: Callable[[torch.Tensor, int], tuple[int, int, int]]


def _spatial_backward(grad_out, qkv, out, stats, num_heads, dk, dv, p, keep, grad_qkv, allocate):
    # D = rowsum(dO ⊙ O) comes from the whole row the kernel holds; out is not read.
    spatial_kernels.spatial_attention_backward(grad_out, qkv, stats, num_heads, dk, dv, p, keep, grad_qkv)


def _temporal_backward(grad_out, qkv, out, stats, num_heads, dk, dv, p, keep, grad_qkv, allocate):
    delta = allocate(stats.shape, stats.dtype, stats.device)
    temporal_kernels.temporal_attention_backward(grad_out, qkv, out, stats, delta, num_heads, dk, dv, p,
                                                 keep, grad_qkv)


_CORES = {
    "spatial_attention": _Core(spatial_kernels.spatial_attention_forward, _spatial_backward,
                               lambda qkv, heads: (qkv.shape[0] * qkv.shape[2], heads, qkv.shape[3])),
    "temporal_attention": _Core(temporal_kernels.temporal_attention_forward, _temporal_backward,
                                lambda qkv, heads: (qkv.shape[0] * qkv.shape[3], heads, qkv.shape[2])),
}
# Under torch.compile, qkv must reach the kernels in the stride order it was traced with (_layout_like).
_TAGS = (torch.Tag.needs_fixed_stride_order,)


def _register(op: str) -> Callable:
    """Register ``op``'s custom ops and autograd formula; returns the forward op."""
    core = _CORES[op]

    def output_buffers(qkv, num_heads, dv, allocate):
        out = _layout_like(qkv, dv, qkv.dtype, allocate)
        stats = allocate(core.stats_shape(qkv, num_heads), _stats_dtype(qkv.dtype), qkv.device)
        return out, stats

    def key_mask_shape(qkv, num_heads, p):
        # Without DropAttention there is no mask; an empty tensor stands for it.
        return core.stats_shape(qkv, num_heads) if p > 0 else (0,)

    @torch.library.custom_op(f"sttr_fast::{op}_triton", mutates_args=(), tags=_TAGS)
    def forward(qkv: torch.Tensor, rng_state: Optional[torch.Tensor], num_heads: int, dk: int, dv: int,
                p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, stats = output_buffers(qkv, num_heads, dv, _allocate)
        # One keep decision per (sequence, head, key), drawn once here and read by the forward and
        # backward kernels.
        keep = (materialize_key_mask(rng_state, key_mask_shape(qkv, num_heads, p), p) if p > 0
                else torch.empty(0, dtype=torch.bool, device=qkv.device))
        core.forward(qkv, num_heads, dk, dv, p, keep if p > 0 else None, out, stats)
        return out, stats, keep

    @forward.register_fake
    def _(qkv, rng_state, num_heads, dk, dv, p):
        out, stats = output_buffers(qkv, num_heads, dv, _empty)
        return out, stats, _empty(key_mask_shape(qkv, num_heads, p), torch.bool, qkv.device)

    @torch.library.custom_op(f"sttr_fast::{op}_triton_backward", mutates_args=(), tags=_TAGS)
    def backward(grad_out: torch.Tensor, qkv: torch.Tensor, out: torch.Tensor, stats: torch.Tensor,
                 keep: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
        grad_qkv = _layout_like(qkv, qkv.shape[1], qkv.dtype, _allocate)
        core.backward(grad_out, qkv, out, stats, num_heads, dk, dv, p, keep if p > 0 else None, grad_qkv,
                      _allocate)
        return grad_qkv

    @backward.register_fake
    def _(grad_out, qkv, out, stats, keep, num_heads, dk, dv, p):
        return _layout_like(qkv, qkv.shape[1], qkv.dtype, _empty)

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
    return forward


_FORWARD_OPS = {op: _register(op) for op in _CORES}


def _fused(op: str, qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
    # DropAttention's seed comes from qkv's device's default generator, so torch.manual_seed
    # reproduces the mask.
    rng_state = new_rng_state(qkv.device) if p > 0 else None
    out, _, _ = _FORWARD_OPS[op](qkv, rng_state, num_heads, dk, dv, p)
    return out


def spatial_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
    """The fused SSA core; input already validated by ``sttr_fast.ops``."""
    return _fused("spatial_attention", qkv, num_heads, dk, dv, p)


def temporal_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
    """The fused TSA core; input already validated by ``sttr_fast.ops``."""
    return _fused("temporal_attention", qkv, num_heads, dk, dv, p)
