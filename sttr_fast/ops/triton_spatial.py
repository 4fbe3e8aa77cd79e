"""The Triton backend of ``sttr_fast.ops.spatial_attention``: torch custom ops around the fused kernels.

``sttr_fast::spatial_attention_triton`` (output and per-query statistics) and
``sttr_fast::spatial_attention_triton_backward`` are registered with fake implementations and an
autograd formula, so ``torch.compile`` traces a model through them without a graph break and
autocast hands them its dtype unchanged. The DropAttention seed is an input tensor drawn outside
the op, so the op itself is a pure function that the compiler may treat like any other.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..kernels import spatial_attention as kernels
from ..kernels.dropattention_rng import new_rng_state

# Whether the kernels run in Triton's CPU interpreter; fixed when triton compiled them (import).
INTERPRETED = kernels.INTERPRETED
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
    limit = kernels.MAX_TILE
    sizes = {"V (joints)": qkv.shape[3], "dk per head": dk // num_heads, "dv per head": dv // num_heads}
    too_large = {name: size for name, size in sizes.items() if size > limit}
    if too_large:
        return (f"{op}: backend='triton' handles at most {limit} joints and {limit} channels "
                f"per head, got {too_large}; use backend='reference'")
    return None


def _memory_format(qkv: torch.Tensor) -> torch.memory_format:
    """Buffers follow qkv's layout, so the 1x1 convolutions around the core keep theirs."""
    if qkv.is_contiguous(memory_format=torch.channels_last) and not qkv.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
           memory_format: torch.memory_format) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)


# Every buffer the kernels fill comes from here; the tests swap in one that fills it with NaN.
_allocate = _empty


def _output_buffers(qkv, num_heads, dv, allocate):
    n, _, t, v = qkv.shape
    out = allocate((n, dv, t, v), qkv.dtype, qkv.device, _memory_format(qkv))
    stats = allocate((n * t, num_heads, v), _stats_dtype(qkv.dtype), qkv.device, torch.contiguous_format)
    return out, stats


def _gradient_buffer(qkv, allocate):
    return allocate(qkv.shape, qkv.dtype, qkv.device, _memory_format(qkv))


@torch.library.custom_op("sttr_fast::spatial_attention_triton", mutates_args=())
def _forward(qkv: torch.Tensor, rng_state: Optional[torch.Tensor], num_heads: int, dk: int, dv: int,
             p: float) -> tuple[torch.Tensor, torch.Tensor]:
    out, stats = _output_buffers(qkv, num_heads, dv, _allocate)
    kernels.spatial_attention_forward(qkv, num_heads, dk, dv, p, rng_state, out, stats)
    return out, stats


@_forward.register_fake
def _forward_fake(qkv, rng_state, num_heads, dk, dv, p):
    return _output_buffers(qkv, num_heads, dv, _empty)


@torch.library.custom_op("sttr_fast::spatial_attention_triton_backward", mutates_args=())
def _backward(grad_out: torch.Tensor, qkv: torch.Tensor, stats: torch.Tensor,
              rng_state: Optional[torch.Tensor], num_heads: int, dk: int, dv: int,
              p: float) -> torch.Tensor:
    grad_qkv = _gradient_buffer(qkv, _allocate)
    kernels.spatial_attention_backward(grad_out, qkv, stats, num_heads, dk, dv, p, rng_state, grad_qkv)
    return grad_qkv


@_backward.register_fake
def _backward_fake(grad_out, qkv, stats, rng_state, num_heads, dk, dv, p):
    return _gradient_buffer(qkv, _empty)


def _setup_context(ctx, inputs, output):
    qkv, rng_state, num_heads, dk, dv, p = inputs
    _, stats = output
    ctx.save_for_backward(qkv, stats, rng_state)
    ctx.head_split = (num_heads, dk, dv, p)
    ctx.mark_non_differentiable(stats)


def _differentiate(ctx, grad_out, grad_stats):
    qkv, stats, rng_state = ctx.saved_tensors
    grad_qkv = _backward(grad_out, qkv, stats, rng_state, *ctx.head_split)
    return grad_qkv, None, None, None, None, None


_forward.register_autograd(_differentiate, setup_context=_setup_context)


def spatial_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
    """The fused core; input already validated. DropAttention's seed comes from qkv's device's
    default generator, so ``torch.manual_seed`` reproduces the mask."""
    rng_state = new_rng_state(qkv.device) if p > 0 else None
    out, _ = _forward(qkv, rng_state, num_heads, dk, dv, p)
    return out
