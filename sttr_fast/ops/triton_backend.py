"""The Triton backend of ``sttr_fast.ops``: the fused kernels of ``kernels/`` as custom ops
``sttr_fast::<op>_triton`` (the scaffold, shared with the CUDA backend, is ``custom_ops``).
"""
from __future__ import annotations

import torch

from ..kernels import spatial_attention as spatial_kernels
from ..kernels import temporal_attention as temporal_kernels
from ..kernels.attention_common import MAX_TILE
from ..kernels.dropattention_rng import materialize_key_mask
from . import custom_ops

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


# Every buffer the kernels fill comes from here; the tests swap in one that fills it with NaN.
_allocate = custom_ops.empty


def _buffer(shape, dtype, device):
    return _allocate(shape, dtype, device)


def _spatial_forward(qkv, out, stats, keep, num_heads, dk, dv, p):
    spatial_kernels.spatial_attention_forward(qkv, num_heads, dk, dv, p, keep, out, stats)


def _spatial_backward(grad_out, qkv, out, stats, keep, grad_qkv, num_heads, dk, dv, p, allocate):
    # D = rowsum(dO ⊙ O) comes from the whole row the kernel holds; out is not read.
    spatial_kernels.spatial_attention_backward(grad_out, qkv, stats, num_heads, dk, dv, p, keep, grad_qkv)


def _temporal_forward(qkv, out, stats, keep, num_heads, dk, dv, p):
    temporal_kernels.temporal_attention_forward(qkv, num_heads, dk, dv, p, keep, out, stats)


def _temporal_backward(grad_out, qkv, out, stats, keep, grad_qkv, num_heads, dk, dv, p, allocate):
    delta = allocate(stats.shape, stats.dtype, stats.device)
    temporal_kernels.temporal_attention_backward(grad_out, qkv, out, stats, delta, num_heads, dk, dv, p,
                                                 keep, grad_qkv)


_spatial_fused = custom_ops.register(
    "spatial_attention", "triton", custom_ops.FusedCore(_spatial_forward, _spatial_backward,
                                                        custom_ops.spatial_sequences),
    materialize_key_mask, _buffer)
_temporal_fused = custom_ops.register(
    "temporal_attention", "triton", custom_ops.FusedCore(_temporal_forward, _temporal_backward,
                                                         custom_ops.temporal_sequences),
    materialize_key_mask, _buffer)


def spatial_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
    """The fused SSA core; input already validated by ``sttr_fast.ops``."""
    return _spatial_fused(qkv, num_heads, dk, dv, p)


def temporal_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> torch.Tensor:
    """The fused TSA core; input already validated by ``sttr_fast.ops``."""
    return _temporal_fused(qkv, num_heads, dk, dv, p)
