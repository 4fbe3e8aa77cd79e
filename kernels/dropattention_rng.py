"""DropAttention key masks from a counter-based RNG, shared by the spatial and temporal kernels.

One Bernoulli(1 - p) keep decision per (sequence, head, key) (docs/network.md §8; this contract is
docs/kernels.md §6). A kernel never stores the mask; it recomputes each decision from Philox-4x32
keyed by a per-call 64-bit seed, with the 128-bit counter
``(flat index lo, flat index hi, call offset lo, call offset hi)``. The flat index is the key's
linear index in the contiguous ``(sequences..., heads, keys)`` mask tensor — for the spatial core
``((n'*T + t)*H + h)*V + v``, for the temporal core ``((n'*V + v)*H + h)*T + t`` — so
the forward, the backward and :func:`materialize_key_mask` draw the same decision for the same key.

The seed and the offset live in a 2-element int64 tensor on the kernels' device, drawn from torch's
default generator of that device by the op that launches the kernels (``sttr_fast/ops/custom_ops.py``): ``torch.manual_seed`` reproduces a run, nothing has to be copied
to the host, and ``torch.compile`` and CUDA graphs see an ordinary random op.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Enough keep decisions per program of the materialising kernel to amortise its launch.
_MASK_BLOCK = 1024


@triton.jit
def load_rng_state(rng_ptr):
    """The (seed, call offset) pair of a call, as int64 scalars."""
    return tl.load(rng_ptr), tl.load(rng_ptr + 1)


@triton.jit
def keep_keys(seed, call_offset, flat_index, p):
    """Keep decisions (u >= p, u uniform in [0, 1)) for the keys at ``flat_index`` (int64 tensor)."""
    index_lo = flat_index.to(tl.uint32)
    index_hi = (flat_index >> 32).to(tl.uint32)
    # philox wants four counter words of one shape.
    zero = index_lo * 0
    offset_lo = zero + call_offset.to(tl.uint32)
    offset_hi = zero + (call_offset >> 32).to(tl.uint32)
    bits, _, _, _ = tl.philox(seed, index_lo, index_hi, offset_lo, offset_hi)
    return tl.uint_to_uniform_float(bits) >= p


@triton.jit
def load_keep(keep_ptr, flat_index, valid):
    """Keep decisions of the keys at ``flat_index`` from a mask :func:`materialize_key_mask`
    wrote; False where not ``valid``."""
    return tl.load(keep_ptr + flat_index, mask=valid, other=0) != 0


@triton.jit
def _materialize_key_mask_kernel(rng_ptr, mask_ptr, numel, p, BLOCK: tl.constexpr):
    index = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    seed, call_offset = load_rng_state(rng_ptr)
    tl.store(mask_ptr + index, keep_keys(seed, call_offset, index, p), mask=index < numel)


def check_rng_state(rng_state: torch.Tensor) -> None:
    if not isinstance(rng_state, torch.Tensor) or rng_state.dtype != torch.int64 \
            or tuple(rng_state.shape) != (2,):
        got = (f"{rng_state.dtype} tensor of shape {tuple(rng_state.shape)}"
               if isinstance(rng_state, torch.Tensor) else type(rng_state).__name__)
        raise ValueError(f"rng_state must be an int64 tensor of shape (2,) (seed, call offset), got {got}")


def materialize_key_mask(rng_state: torch.Tensor, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """The boolean keep-mask of ``shape`` (sequences..., heads, keys) that kernels given
    ``rng_state`` and ``p`` apply; same RNG code path, so it is bit-identical to what they used."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"DropAttention probability p must be in [0, 1], got {p}")
    check_rng_state(rng_state)
    mask = torch.empty(shape, dtype=torch.bool, device=rng_state.device)
    if mask.numel():
        grid = (triton.cdiv(mask.numel(), _MASK_BLOCK),)
        _materialize_key_mask_kernel[grid](rng_state, mask, mask.numel(), p, BLOCK=_MASK_BLOCK)
    return mask
