"""Fused spatial self-attention core of ST-TR (spec §4, §6): forward and backward Triton kernels.

Every frame (n', t) and head h is one attention problem over the V joints: S = Q Kᵀ / sqrt(dkh),
softmax over keys, exact DropAttention, O = P V. A program owns ``BLOCK_F`` consecutive frames of
one head and holds each frame's whole V x V score tile in registers (V <= 64), so the softmax needs
no online rescaling and nothing V x V reaches memory. The frames of a program are the batch axis of
3-D ``tl.dot``; joints are padded to ``BLOCK_V`` and per-head dims to ``BLOCK_DK``/``BLOCK_DV``
(at least 16, the smallest ``tl.dot`` operand) by masking.

q, k, v are read straight from the qkv projection's output ``(N', 2*dk + dv, T, V)`` and the output
is written to ``(N', dv, T, V)``, both through their strides, so contiguous and channels_last
tensors need no copies (Triton specialises on the unit stride and vectorises along it). The
forward also writes the per-query statistic Λ = max s + log(K + 1e-8·L) (log(L) without
DropAttention); the backward turns recomputed scores into q = exp(s - Λ) with one exponential,
regenerates the key mask and gets D = rowsum(dO ⊙ O) as rowsum(P' ⊙ dP), so it needs neither O
nor any V x V buffer.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dropattention_rng import keep_keys

# Spec §6: part of DropAttention's function, not a guard.
DROP_ATTENTION_EPS = tl.constexpr(1e-8)
# tl.dot needs every operand dimension >= 16 on NVIDIA GPUs.
MIN_DOT_SIZE = 16
# Joints and per-head dims beyond this would not fit a frame's tiles in registers.
MAX_TILE = 64

_TORCH_TO_ACCUMULATOR = {torch.float16: tl.float32, torch.bfloat16: tl.float32,
                         torch.float32: tl.float32, torch.float64: tl.float64}
# float32 products as three tf32 tensor-core products (about float32's accuracy): plain float32
# products run on the FMA units with 2-4x the registers and spill at useful tile sizes.
# 16-bit operands use the tensor cores whatever this says; float64 exists for the interpreter.
_DOT_PRECISION = {torch.float16: "ieee", torch.bfloat16: "ieee", torch.float32: "tf32x3",
                  torch.float64: "ieee"}


@triton.jit
def _frame_block(block, n_frames, T, stride_n, stride_t, BLOCK_F: tl.constexpr):
    """Indices, validity and memory offsets of the ``BLOCK_F`` frames of frame block ``block``."""
    frames = block.to(tl.int64) * BLOCK_F + tl.arange(0, BLOCK_F).to(tl.int64)
    n = frames // T
    return frames, frames < n_frames, n * stride_n + (frames - n * T) * stride_t


@triton.jit
def _tile(frame_offsets, frame_valid, first_channel, channels, stride_c, stride_v,
          V: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets and mask of a (frames, joints, channels) tile starting at ``first_channel``."""
    joints = tl.arange(0, BLOCK_V).to(tl.int64)
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    offsets = (frame_offsets[:, None, None] + joints[None, :, None] * stride_v
               + (first_channel + dims)[None, None, :] * stride_c)
    mask = frame_valid[:, None, None] & (joints < V)[None, :, None] & (dims < channels)[None, None, :]
    return offsets, mask


@triton.jit
def _head_tiles(frame_offsets, frame_valid, head, stride_c, stride_v,
                V: tl.constexpr, H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
                BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Offsets and masks of one head's q, k and v tiles in a (N', 2*dk + dv, T, V) tensor."""
    head = head.to(tl.int64)
    q_offsets, qk_mask = _tile(frame_offsets, frame_valid, head * DKH, DKH, stride_c, stride_v,
                               V, BLOCK_V, BLOCK_DK)
    k_offsets, _ = _tile(frame_offsets, frame_valid, H * DKH + head * DKH, DKH, stride_c, stride_v,
                         V, BLOCK_V, BLOCK_DK)
    v_offsets, v_mask = _tile(frame_offsets, frame_valid, 2 * H * DKH + head * DVH, DVH, stride_c,
                              stride_v, V, BLOCK_V, BLOCK_DV)
    return q_offsets, k_offsets, qk_mask, v_offsets, v_mask


@triton.jit
def _row_offsets(frames, head, H: tl.constexpr, V: tl.constexpr, BLOCK_V: tl.constexpr):
    """Flat index ((n'*T + t)*H + h)*V + joint of every (frame, joint): the layout of the
    statistics and of the key mask, whose RNG counters it also gives."""
    joints = tl.arange(0, BLOCK_V).to(tl.int64)
    return (frames[:, None] * H + head) * V + joints[None, :]


@triton.jit
def _scores(q, k, ACC: tl.constexpr, DKH: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """Scaled logits s = q kᵀ / sqrt(dkh) of every frame, in the accumulator dtype."""
    scale = 1.0 / tl.sqrt(tl.full((1, 1, 1), DKH, ACC))
    return tl.dot(q, tl.trans(k, 0, 2, 1), input_precision=DOT_PRECISION) * scale


@triton.jit
def spatial_attention_forward_kernel(
        qkv_ptr, out_ptr, stats_ptr, rng_ptr,
        n_frames, T, p,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        out_stride_n, out_stride_c, out_stride_t, out_stride_v,
        V: tl.constexpr, H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_F: tl.constexpr):
    # Heads vary fastest across programs, so programs running together read the same frames'
    # channels and share their cache lines.
    pid = tl.program_id(0)
    head = pid % H
    frames, frame_valid, qkv_frames = _frame_block(pid // H, n_frames, T, qkv_stride_n,
                                                   qkv_stride_t, BLOCK_F)
    q_offsets, k_offsets, qk_mask, v_offsets, v_mask = _head_tiles(
        qkv_frames, frame_valid, head, qkv_stride_c, qkv_stride_v,
        V, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV)
    q = tl.load(qkv_ptr + q_offsets, mask=qk_mask, other=0.0)
    k = tl.load(qkv_ptr + k_offsets, mask=qk_mask, other=0.0)
    v = tl.load(qkv_ptr + v_offsets, mask=v_mask, other=0.0)

    key_valid = (tl.arange(0, BLOCK_V) < V)[None, None, :]
    s = tl.where(key_valid, _scores(q, k, ACC, DKH, DOT_PRECISION), float("-inf"))
    row_max = tl.max(s, axis=2)
    a = tl.exp(s - row_max[:, :, None])
    total = tl.sum(a, axis=2)
    rows = _row_offsets(frames, head, H, V, BLOCK_V)
    if DROP:
        a = tl.where(keep_keys(rng_ptr, rows, p)[:, None, :], a, 0.0)
        # K + 1e-8·L > 0 even when every key is dropped, so such rows come out exactly 0.
        denominator = tl.sum(a, axis=2) + DROP_ATTENTION_EPS * total
    else:
        denominator = total
    out = tl.dot(a.to(v.dtype), v, input_precision=DOT_PRECISION) / denominator[:, :, None]

    _, _, out_frames = _frame_block(pid // H, n_frames, T, out_stride_n, out_stride_t, BLOCK_F)
    out_offsets, out_mask = _tile(out_frames, frame_valid, head.to(tl.int64) * DVH, DVH,
                                  out_stride_c, out_stride_v, V, BLOCK_V, BLOCK_DV)
    tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    row_mask = frame_valid[:, None] & (tl.arange(0, BLOCK_V) < V)[None, :]
    tl.store(stats_ptr + rows, row_max + tl.log(denominator), mask=row_mask)


@triton.jit
def spatial_attention_backward_kernel(
        qkv_ptr, grad_out_ptr, stats_ptr, rng_ptr, grad_qkv_ptr,
        n_frames, T, p,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        grad_out_stride_n, grad_out_stride_c, grad_out_stride_t, grad_out_stride_v,
        grad_qkv_stride_n, grad_qkv_stride_c, grad_qkv_stride_t, grad_qkv_stride_v,
        V: tl.constexpr, H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr, DOT_PRECISION: tl.constexpr,
        BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_F: tl.constexpr):
    pid = tl.program_id(0)
    head = pid % H
    frames, frame_valid, qkv_frames = _frame_block(pid // H, n_frames, T, qkv_stride_n,
                                                   qkv_stride_t, BLOCK_F)
    q_offsets, k_offsets, qk_mask, v_offsets, v_mask = _head_tiles(
        qkv_frames, frame_valid, head, qkv_stride_c, qkv_stride_v,
        V, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV)
    q = tl.load(qkv_ptr + q_offsets, mask=qk_mask, other=0.0)
    k = tl.load(qkv_ptr + k_offsets, mask=qk_mask, other=0.0)
    v = tl.load(qkv_ptr + v_offsets, mask=v_mask, other=0.0)
    _, _, grad_out_frames = _frame_block(pid // H, n_frames, T, grad_out_stride_n,
                                         grad_out_stride_t, BLOCK_F)
    grad_out_offsets, _ = _tile(grad_out_frames, frame_valid, head.to(tl.int64) * DVH, DVH,
                                grad_out_stride_c, grad_out_stride_v, V, BLOCK_V, BLOCK_DV)
    # Padded query rows read dO = 0, which zeroes their dS and their share of dV and dK.
    grad_out = tl.load(grad_out_ptr + grad_out_offsets, mask=v_mask, other=0.0)
    rows = _row_offsets(frames, head, H, V, BLOCK_V)
    row_mask = frame_valid[:, None] & (tl.arange(0, BLOCK_V) < V)[None, :]
    stats = tl.load(stats_ptr + rows, mask=row_mask, other=0.0)

    # q = exp(s - Λ): the forward's normalised weights before the key mask (spec §6).
    key_valid = (tl.arange(0, BLOCK_V) < V)[None, None, :]
    weights = tl.where(key_valid, tl.exp(_scores(q, k, ACC, DKH, DOT_PRECISION) - stats[:, :, None]), 0.0)
    grad_weights = tl.dot(grad_out, tl.trans(v, 0, 2, 1), input_precision=DOT_PRECISION)
    if DROP:
        keep = keep_keys(rng_ptr, rows, p)[:, None, :]
        kept = tl.where(keep, weights, 0.0)
        grad_out_dot_out = tl.sum(kept * grad_weights, axis=2)[:, :, None]
        # dS = q ⊙ (m ⊙ (dP - D) - 1e-8·D): dropped keys still see the 1e-8·L term.
        grad_scores = (tl.where(keep, weights * (grad_weights - grad_out_dot_out), 0.0)
                       - DROP_ATTENTION_EPS * grad_out_dot_out * weights)
    else:
        kept = weights
        grad_out_dot_out = tl.sum(kept * grad_weights, axis=2)[:, :, None]
        grad_scores = weights * (grad_weights - grad_out_dot_out)

    scale = 1.0 / tl.sqrt(tl.full((1, 1, 1), DKH, ACC))
    grad_scores = (grad_scores * scale).to(q.dtype)
    grad_q = tl.dot(grad_scores, k, input_precision=DOT_PRECISION)
    grad_k = tl.dot(tl.trans(grad_scores, 0, 2, 1), q, input_precision=DOT_PRECISION)
    grad_v = tl.dot(tl.trans(kept.to(v.dtype), 0, 2, 1), grad_out, input_precision=DOT_PRECISION)

    _, _, grad_qkv_frames = _frame_block(pid // H, n_frames, T, grad_qkv_stride_n,
                                         grad_qkv_stride_t, BLOCK_F)
    dq_offsets, dk_offsets, _, dv_offsets, _ = _head_tiles(
        grad_qkv_frames, frame_valid, head, grad_qkv_stride_c, grad_qkv_stride_v,
        V, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV)
    grad_dtype = grad_qkv_ptr.dtype.element_ty
    tl.store(grad_qkv_ptr + dq_offsets, grad_q.to(grad_dtype), mask=qk_mask)
    tl.store(grad_qkv_ptr + dk_offsets, grad_k.to(grad_dtype), mask=qk_mask)
    tl.store(grad_qkv_ptr + dv_offsets, grad_v.to(grad_dtype), mask=v_mask)


# --- launchers ------------------------------------------------------------------------------------

def _configs(interpreting: bool) -> list[triton.Config]:
    """(frames per program, warps) candidates. No kernel has a loop, so one pipeline stage.

    The interpreter runs one config (it cannot benchmark several); four frames with a ragged last
    block is what the CPU tests cover there.
    """
    if interpreting:
        return [triton.Config({"BLOCK_F": 4}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_F": frames}, num_warps=warps, num_stages=1)
            for frames, warps in ((1, 8), (2, 4), (4, 4), (8, 4))]


# Per-thread share of a program's tiles (see tile_elements_per_thread) above which a kernel spills
# on sm_80 or sm_90, by kernel and whether its operands are 32-bit, read off ptxas with margin;
# tests/test_spatial_attention_triton.py compiles every config the launcher may pick.
TILE_BUDGET = {("forward", False): 128, ("forward", True): 96,
               ("backward", False): 96, ("backward", True): 64}


def tile_elements_per_thread(config: triton.Config, block_v: int, block_dk: int, block_dv: int) -> int:
    """Elements of one score tile plus one q/k and one v tile per frame, per thread."""
    frames, threads = config.kwargs["BLOCK_F"], 32 * config.num_warps
    return frames * block_v * (block_v + block_dk + block_dv) // threads


def fitting_configs(configs: list[triton.Config], kernel: str, element_size: int, block_v: int,
                    block_dk: int, block_dv: int) -> list[triton.Config]:
    """The configs the launcher may pick for ``kernel`` at these tile sizes and operand width:
    those within its register budget, or the one with the smallest tiles when none is."""
    budget = TILE_BUDGET[kernel, element_size >= 4]

    def size(config):
        return tile_elements_per_thread(config, block_v, block_dk, block_dv)
    return [c for c in configs if size(c) <= budget] or [min(configs, key=size)]


def _pruner(kernel: str):
    # The autotuner passes positional kernel arguments as named_args and the constexpr block
    # sizes, which the launchers give by keyword, as keywords.
    def prune(configs, named_args, **kwargs):
        return fitting_configs(configs, kernel, named_args["qkv_ptr"].element_size(),
                               kwargs["BLOCK_V"], kwargs["BLOCK_DK"], kwargs["BLOCK_DV"])
    return {"early_config_prune": prune}


# Whether these kernels run in Triton's CPU interpreter: fixed when they were decorated (import).
INTERPRETED = bool(triton.knobs.runtime.interpret)
CONFIGS = _configs(INTERPRETED)
_AUTOTUNE_KEY = ["n_frames", "qkv_stride_c", "V", "H", "DKH", "DVH", "DROP"]
_forward = triton.autotune(CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=_pruner("forward"))(
    spatial_attention_forward_kernel)
_backward = triton.autotune(CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=_pruner("backward"))(
    spatial_attention_backward_kernel)


def block_sizes(num_joints: int, dkh: int, dvh: int) -> dict[str, int]:
    """Padded tile sizes for V joints and per-head dims dkh, dvh (each <= 64)."""
    return {"BLOCK_V": max(MIN_DOT_SIZE, triton.next_power_of_2(num_joints)),
            "BLOCK_DK": max(MIN_DOT_SIZE, triton.next_power_of_2(dkh)),
            "BLOCK_DV": max(MIN_DOT_SIZE, triton.next_power_of_2(dvh))}


def _shape_constants(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> dict:
    n, _, t, v = qkv.shape
    dkh, dvh = dk // num_heads, dv // num_heads
    return {"V": v, "H": num_heads, "DKH": dkh, "DVH": dvh, "DROP": p > 0,
            "ACC": _TORCH_TO_ACCUMULATOR[qkv.dtype],
            "DOT_PRECISION": _DOT_PRECISION[qkv.dtype], **block_sizes(v, dkh, dvh)}


def forward_arguments(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                      rng_state: torch.Tensor | None, out: torch.Tensor,
                      stats: torch.Tensor) -> tuple[list, dict]:
    """Positional arguments and constexprs of the forward kernel, all but the config's."""
    n, _, t, _ = qkv.shape
    return ([qkv, out, stats, rng_state, n * t, t, p, *qkv.stride(), *out.stride()],
            _shape_constants(qkv, num_heads, dk, dv, p))


def backward_arguments(grad_out: torch.Tensor, qkv: torch.Tensor, stats: torch.Tensor,
                       num_heads: int, dk: int, dv: int, p: float,
                       rng_state: torch.Tensor | None, grad_qkv: torch.Tensor) -> tuple[list, dict]:
    """Positional arguments and constexprs of the backward kernel, all but the config's."""
    n, _, t, _ = qkv.shape
    return ([qkv, grad_out, stats, rng_state, grad_qkv, n * t, t, p,
             *qkv.stride(), *grad_out.stride(), *grad_qkv.stride()],
            _shape_constants(qkv, num_heads, dk, dv, p))


def _grid(qkv: torch.Tensor, num_heads: int):
    n_frames = qkv.shape[0] * qkv.shape[2]
    return lambda meta: (triton.cdiv(n_frames, meta["BLOCK_F"]) * num_heads,)


def spatial_attention_forward(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                              rng_state: torch.Tensor | None, out: torch.Tensor,
                              stats: torch.Tensor) -> None:
    """Fill ``out`` (N', dv, T, V), any strides, and ``stats`` (N'*T, H, V), contiguous.

    ``stats`` is float64 for float64 input, else float32; ``rng_state`` is the (seed, offset)
    pair of :mod:`.dropattention_rng`, unused when ``p == 0``. Arguments are checked by
    ``sttr_fast.ops``; this only launches.
    """
    if out.numel() == 0:
        return
    args, constants = forward_arguments(qkv, num_heads, dk, dv, p, rng_state, out, stats)
    _forward[_grid(qkv, num_heads)](*args, **constants)


def spatial_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, stats: torch.Tensor,
                               num_heads: int, dk: int, dv: int, p: float,
                               rng_state: torch.Tensor | None, grad_qkv: torch.Tensor) -> None:
    """Fill ``grad_qkv`` (the shape of ``qkv``, any strides) from ``grad_out`` (N', dv, T, V).

    ``stats`` and ``rng_state`` are the forward's; the key mask is regenerated from the latter.
    """
    if grad_qkv.numel() == 0:
        return
    args, constants = backward_arguments(grad_out, qkv, stats, num_heads, dk, dv, p, rng_state,
                                         grad_qkv)
    _backward[_grid(qkv, num_heads)](*args, **constants)
