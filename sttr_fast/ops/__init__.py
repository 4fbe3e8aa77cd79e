"""The attention cores of ST-TR's two self-attention units, one function each, backend chosen per call.

``qkv`` is the output of the unit's qkv projection, ``(N', 2*dk + dv, T, V)``, channels
``[q | k | v]`` with heads as contiguous channel chunks. The result is ``(N', dv, T, V)``, heads
concatenated head-major. ``p`` is DropAttention's drop probability (pass 0 in eval mode);
``key_mask`` (reference backend only) replaces the random mask with a given boolean keep-mask.

Backends: ``"reference"`` (eager PyTorch, the ground truth), ``"triton"`` (fused kernels from
``sttr_fast.kernels``; CUDA tensors, or any under ``TRITON_INTERPRET=1``), ``"cuda"`` (the kernels
of ``csrc/``; CUDA tensors, or CPU tensors through their host build under
``STTR_CUDA_HOST_BUILD=1``) and ``"auto"`` (Triton for CUDA tensors it can take, else the
reference; it never picks ``"cuda"``, which has not yet been run on a GPU). Under
``record_attention()`` every call runs on the reference backend and keeps its probabilities.
"""
from __future__ import annotations

import torch

from . import cuda_backend, reference
from .reference import drop_attention, record_attention, sample_key_mask

try:
    from . import triton_backend
except ImportError:  # no triton on this platform: the reference backend alone
    triton_backend = None

__all__ = ["spatial_attention", "temporal_attention", "available_backends", "drop_attention",
           "record_attention", "sample_key_mask"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def available_backends() -> list[str]:
    """Backends that can run on this machine; ``"auto"`` picks the best of them per call."""
    return [backend for backend in ("reference", "triton", "cuda") if _usable(backend)]


def _usable(backend: str) -> bool:
    """Whether one backend runs here, without loading the others (the cuda backend's first check
    may build its kernels)."""
    if backend == "triton":
        return triton_backend is not None and triton_backend.usable()
    if backend == "cuda":
        return cuda_backend.usable()
    return backend == "reference"


def _resolve_backend(op: str, backend: str, cores: dict, qkv: torch.Tensor, num_heads: int, dk: int,
                     dv: int, key_mask) -> str:
    """``"auto"``: the op's Triton core for CUDA tensors it can take, unless an explicit key mask
    asks for the reference; otherwise the reference."""
    if backend == "auto":
        fused = ("triton" in cores and qkv.device.type == "cuda" and key_mask is None
                 and triton_backend.unsupported(op, qkv, num_heads, dk, dv) is None)
        return "triton" if fused else "reference"
    if not _usable(backend):
        hint = ""
        if backend == "triton" and triton_backend is not None:
            hint = (" (the triton backend needs a CUDA GPU, or TRITON_INTERPRET=1 set before triton "
                    "is imported to run it on the CPU)")
        if backend == "cuda":
            hint = f" (the cuda backend cannot run here: {cuda_backend.why_unusable()})"
        raise ValueError(f"{op}: unknown or unavailable attention backend {backend!r}; "
                         f"expected 'auto' or one of {available_backends()}{hint}")
    if key_mask is not None and backend != "reference":
        raise ValueError(f"{op}: an explicit key_mask needs backend='reference' (or 'auto'); the "
                         f"{backend} backend draws its DropAttention mask in-kernel from p, got "
                         f"backend={backend!r}")
    fused_backends = {"triton": triton_backend, "cuda": cuda_backend}
    if backend in fused_backends:
        reason = fused_backends[backend].unsupported(op, qkv, num_heads, dk, dv)
        if reason is not None:
            raise ValueError(reason)
    return backend


def _check_qkv(op: str, qkv, num_heads: int, dk: int, dv: int, p: float) -> None:
    if not isinstance(qkv, torch.Tensor):
        raise ValueError(f"{op}: qkv must be a torch.Tensor, got {type(qkv).__name__}")
    if qkv.dim() != 4:
        raise ValueError(f"{op}: qkv must be 4-D (N', 2*dk + dv, T, V), got shape {tuple(qkv.shape)}")
    if qkv.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{op}: qkv must be float16, bfloat16, float32 or float64, got {qkv.dtype}")
    if num_heads < 1 or dk < 1 or dv < 1:
        raise ValueError(f"{op}: num_heads, dk and dv must be positive, got {num_heads}, {dk}, {dv}")
    if dk % num_heads or dv % num_heads:
        raise ValueError(f"{op}: dk={dk} and dv={dv} must both be divisible by num_heads={num_heads}")
    if qkv.shape[1] != 2 * dk + dv:
        raise ValueError(f"{op}: qkv must have 2*dk + dv = {2 * dk + dv} channels "
                         f"(dk={dk}, dv={dv}), got {qkv.shape[1]}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: DropAttention probability p must be in [0, 1], got {p}")


def _check_key_mask(op: str, key_mask, expected_shape: tuple[int, ...], qkv: torch.Tensor) -> None:
    if not isinstance(key_mask, torch.Tensor):
        raise ValueError(f"{op}: key_mask must be a torch.Tensor, got {type(key_mask).__name__}")
    if tuple(key_mask.shape) != expected_shape:
        raise ValueError(f"{op}: key_mask must have shape {expected_shape}, got {tuple(key_mask.shape)}")
    if key_mask.dtype != torch.bool:
        raise ValueError(f"{op}: key_mask must be a bool tensor, got {key_mask.dtype}")
    if key_mask.device != qkv.device:
        raise ValueError(f"{op}: key_mask is on {key_mask.device} but qkv is on {qkv.device}")


def _spatial_mask_shape(qkv: torch.Tensor, num_heads: int) -> tuple[int, ...]:
    n, _, t, v = qkv.shape
    return (n, t, num_heads, v)


def _temporal_mask_shape(qkv: torch.Tensor, num_heads: int) -> tuple[int, ...]:
    n, _, t, v = qkv.shape
    return (n, v, num_heads, t)


def _attention(op, cores, mask_shape_of, qkv, num_heads, dk, dv, p, key_mask, backend):
    _check_qkv(op, qkv, num_heads, dk, dv, p)
    mask_shape = mask_shape_of(qkv, num_heads)
    if key_mask is not None:
        _check_key_mask(op, key_mask, mask_shape, qkv)
    # reference.record_attention() needs the probabilities, which only the reference core keeps.
    chosen = "reference" if reference.recording() else _resolve_backend(
        op, backend, cores, qkv, num_heads, dk, dv, key_mask)
    if chosen in ("triton", "cuda"):
        return cores[chosen](qkv, num_heads, dk, dv, p)
    if key_mask is None and p > 0:
        key_mask = sample_key_mask(mask_shape, p, qkv.device)
    return cores[chosen](qkv, num_heads, dk, dv, key_mask)


# The reference cores take a key mask (sampled here when p > 0); fused cores take p and draw it.
_SPATIAL_CORES = {"reference": reference.spatial_attention, "cuda": cuda_backend.spatial_attention}
_TEMPORAL_CORES = {"reference": reference.temporal_attention, "cuda": cuda_backend.temporal_attention}
if triton_backend is not None:
    _SPATIAL_CORES["triton"] = triton_backend.spatial_attention
    _TEMPORAL_CORES["triton"] = triton_backend.temporal_attention


def spatial_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, *, p: float = 0.0,
                      key_mask: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Self-attention among the V joints of every frame (SSA core).

    Sequences are the (n', t) frames; ``key_mask`` has shape ``(N', T, num_heads, V)``.
    """
    return _attention("spatial_attention", _SPATIAL_CORES, _spatial_mask_shape,
                      qkv, num_heads, dk, dv, p, key_mask, backend)


def temporal_attention(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, *, p: float = 0.0,
                       key_mask: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Self-attention along the T frames of every joint (TSA core).

    Sequences are the (n', v) joint trajectories; ``key_mask`` has shape ``(N', V, num_heads, T)``.
    """
    return _attention("temporal_attention", _TEMPORAL_CORES, _temporal_mask_shape,
                      qkv, num_heads, dk, dv, p, key_mask, backend)
