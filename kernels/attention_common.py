"""Constants and helpers the spatial and temporal attention kernels share."""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Part of DropAttention's function, not a guard (docs/network.md §8).
DROP_ATTENTION_EPS = tl.constexpr(1e-8)
# tl.dot needs every operand dimension >= 16 on NVIDIA GPUs.
MIN_DOT_SIZE = 16
# Per-head dims (and the spatial kernel's joints) beyond this would not fit a tile in registers.
MAX_TILE = 64

# STTR_PIN_CONFIGS=1 makes every launcher use its first config instead of autotuning: the GPU
# check script and reproducible timings use it.
PIN_CONFIGS = os.environ.get("STTR_PIN_CONFIGS") == "1"

ACCUMULATOR = {torch.float16: tl.float32, torch.bfloat16: tl.float32,
               torch.float32: tl.float32, torch.float64: tl.float64}


@triton.jit
def softmax_scale(ACC: tl.constexpr, DKH: tl.constexpr):
    """1/sqrt(dkh), computed in the accumulator dtype (a float32 argument would round it)."""
    return 1.0 / tl.sqrt(tl.full((1, 1), DKH, ACC))


def padded_dim(size: int) -> int:
    """The tile size for a per-head dim or a joint count: a power of two, at least MIN_DOT_SIZE."""
    return max(MIN_DOT_SIZE, triton.next_power_of_2(size))
