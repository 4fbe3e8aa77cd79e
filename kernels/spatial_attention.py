"""Fused spatial self-attention core of ST-TR: forward and backward Triton kernels.

The function is docs/network.md §6 and §8; the contract these kernels keep is docs/kernels.md.

Every frame (n', t) and head h is one attention problem over the V joints: S = Q Kᵀ / sqrt(dkh),
softmax over keys, exact DropAttention, O = P V. A program owns one head of ``BLOCK_F`` consecutive
frames and loops over them; each iteration holds its frame's whole V x V score tile in registers
(V <= 64), so the softmax needs no online rescaling and nothing V x V reaches memory, while the
loop's software pipelining (``num_stages``) loads the next frames during the current one. Joints
are padded to ``BLOCK_V`` and per-head dims to ``BLOCK_DK``/``BLOCK_DV`` (at least 16, the smallest
``tl.dot`` operand) by masking. Frames are not a batch axis of 3-D ``tl.dot``: Triton 3.6 puts the
warps along that axis, which replicates a frame's tiles in every warp.

q, k, v are read straight from the qkv projection's output ``(N', 2*dk + dv, T, V)`` and the output
is written to ``(N', dv, T, V)``, both through their strides, so contiguous and channels_last
tensors need no copies (Triton specialises on the unit stride and vectorises along it). The
forward also writes the per-query statistic Λ = max s + log(K + 1e-8·L) (log(L) without
DropAttention); the backward turns recomputed scores into q = exp(s - Λ) with one exponential,
regenerates the key mask and gets D = rowsum(dO ⊙ O) as rowsum(P' ⊙ dP), so it needs neither O
nor any V x V buffer. Products run in float32 (float64 for float64 input) with IEEE precision.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_common import ACCUMULATOR, DROP_ATTENTION_EPS, padded_dim, softmax_scale
from .dropattention_rng import keep_keys, load_rng_state


@triton.jit
def _frame_offset(frame, T, stride_n, stride_t):
    """Memory offset of frame ``frame`` = n'*T + t of a (N', C, T, V) tensor."""
    n = frame // T
    return n * stride_n + (frame - n * T) * stride_t


@triton.jit
def _tile(frame_offset, joint_limit, first_channel, channels, stride_c, stride_v,
          BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets and mask of a (joints, channels) tile of one frame starting at ``first_channel``;
    joints from ``joint_limit`` on are masked."""
    joints = tl.arange(0, BLOCK_V).to(tl.int64)
    dims = tl.arange(0, BLOCK_D).to(tl.int64)
    offsets = frame_offset + joints[:, None] * stride_v + (first_channel + dims)[None, :] * stride_c
    mask = (joints < joint_limit)[:, None] & (dims < channels)[None, :]
    return offsets, mask


@triton.jit
def _head_tiles(frame_offset, joint_limit, head, stride_c, stride_v,
                H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
                BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Offsets and masks of one head's q, k and v tiles of one frame of a (N', 2*dk + dv, T, V)
    tensor."""
    q_offsets, qk_mask = _tile(frame_offset, joint_limit, head * DKH, DKH, stride_c, stride_v,
                               BLOCK_V, BLOCK_DK)
    k_offsets, _ = _tile(frame_offset, joint_limit, H * DKH + head * DKH, DKH, stride_c, stride_v,
                         BLOCK_V, BLOCK_DK)
    v_offsets, v_mask = _tile(frame_offset, joint_limit, 2 * H * DKH + head * DVH, DVH, stride_c,
                              stride_v, BLOCK_V, BLOCK_DV)
    return q_offsets, k_offsets, qk_mask, v_offsets, v_mask


@triton.jit
def _load_head(qkv_ptr, frame, joint_limit, head, T, stride_n, stride_c, stride_t, stride_v,
               H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
               BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr):
    """One head's q, k and v tiles of one frame, zero where masked, and their masks."""
    q_offsets, k_offsets, qk_mask, v_offsets, v_mask = _head_tiles(
        _frame_offset(frame, T, stride_n, stride_t), joint_limit, head, stride_c, stride_v,
        H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV)
    q = tl.load(qkv_ptr + q_offsets, mask=qk_mask, other=0.0)
    k = tl.load(qkv_ptr + k_offsets, mask=qk_mask, other=0.0)
    v = tl.load(qkv_ptr + v_offsets, mask=v_mask, other=0.0)
    return q, k, v, qk_mask, v_mask


@triton.jit
def _program_frames(H: tl.constexpr, BLOCK_F: tl.constexpr):
    """This program's head and first frame. Heads vary fastest across programs, so programs
    running together read the same frames' channels and share their cache lines."""
    pid = tl.program_id(0)
    return (pid % H).to(tl.int64), (pid // H).to(tl.int64) * BLOCK_F


@triton.jit
def spatial_attention_forward_kernel(
        qkv_ptr, out_ptr, stats_ptr, rng_ptr,
        n_frames, T, p,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        out_stride_n, out_stride_c, out_stride_t, out_stride_v,
        V: tl.constexpr, H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr,
        BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_F: tl.constexpr):
    head, first_frame = _program_frames(H, BLOCK_F)
    joints = tl.arange(0, BLOCK_V)
    key_valid = (joints < V)[None, :]
    scale = softmax_scale(ACC, DKH)
    if DROP:
        seed, call_offset = load_rng_state(rng_ptr)
    for index in range(BLOCK_F):
        frame = first_frame + index
        # A frame past the end has no joints: every access of it is masked.
        joint_limit = tl.where(frame < n_frames, V, 0)
        q, k, v, qk_mask, v_mask = _load_head(
            qkv_ptr, frame, joint_limit, head, T, qkv_stride_n, qkv_stride_c, qkv_stride_t,
            qkv_stride_v, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV)

        s = tl.where(key_valid, tl.dot(q, tl.trans(k), input_precision="ieee") * scale, float("-inf"))
        row_max = tl.max(s, axis=1)
        a = tl.exp(s - row_max[:, None])
        total = tl.sum(a, axis=1)
        # Flat index ((n'*T + t)*H + h)*V + joint: the statistics' layout and the key mask's
        # RNG counters.
        rows = (frame * H + head) * V + joints
        if DROP:
            keep = keep_keys(seed, call_offset, rows, p)[None, :] & key_valid
            # Kept weights are taken relative to the largest kept score, not the row's: relative
            # to a dropped maximum they can sit below float16's smallest number and would vanish
            # as 16-bit dot operands although K is still comparable to 1e-8·L. acc / (K + 1e-8·L)
            # is unchanged when both are multiplied by shift = e^(max s - max kept s).
            kept_max = tl.max(tl.where(keep, s, float("-inf")), axis=1)
            # Any finite anchor serves rows without kept keys; it keeps -inf - -inf out of exp.
            anchor = tl.where(kept_max > float("-inf"), kept_max, row_max)
            a = tl.where(keep, tl.exp(s - anchor[:, None]), 0.0)
            # inf when every key is dropped (kept_max = -inf): such rows come out exactly 0.
            shift = tl.exp(row_max - kept_max)
            kept_total = tl.sum(a, axis=1)
            denominator = kept_total + DROP_ATTENTION_EPS * total * shift
            log_denominator = tl.log(kept_total / shift + DROP_ATTENTION_EPS * total)
        else:
            denominator = total
            log_denominator = tl.log(total)
        out = tl.dot(a.to(v.dtype), v, input_precision="ieee") / denominator[:, None]

        out_offsets, out_mask = _tile(_frame_offset(frame, T, out_stride_n, out_stride_t), joint_limit,
                                      head * DVH, DVH, out_stride_c, out_stride_v, BLOCK_V, BLOCK_DV)
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=out_mask)
        tl.store(stats_ptr + rows, row_max + log_denominator, mask=joints < joint_limit)


@triton.jit
def spatial_attention_backward_kernel(
        qkv_ptr, grad_out_ptr, stats_ptr, rng_ptr, grad_qkv_ptr,
        n_frames, T, p,
        qkv_stride_n, qkv_stride_c, qkv_stride_t, qkv_stride_v,
        grad_out_stride_n, grad_out_stride_c, grad_out_stride_t, grad_out_stride_v,
        grad_qkv_stride_n, grad_qkv_stride_c, grad_qkv_stride_t, grad_qkv_stride_v,
        V: tl.constexpr, H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr,
        BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_F: tl.constexpr):
    head, first_frame = _program_frames(H, BLOCK_F)
    joints = tl.arange(0, BLOCK_V)
    key_valid = (joints < V)[None, :]
    scale = softmax_scale(ACC, DKH)
    if DROP:
        seed, call_offset = load_rng_state(rng_ptr)
    for index in range(BLOCK_F):
        frame = first_frame + index
        # A frame past the end has no joints: every access of it is masked.
        joint_limit = tl.where(frame < n_frames, V, 0)
        q, k, v, qk_mask, v_mask = _load_head(
            qkv_ptr, frame, joint_limit, head, T, qkv_stride_n, qkv_stride_c, qkv_stride_t,
            qkv_stride_v, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV)
        grad_out_offsets, _ = _tile(_frame_offset(frame, T, grad_out_stride_n, grad_out_stride_t),
                                    joint_limit, head * DVH, DVH, grad_out_stride_c, grad_out_stride_v,
                                    BLOCK_V, BLOCK_DV)
        # Padded query rows read dO = 0, which zeroes their dS and their share of dV and dK.
        grad_out = tl.load(grad_out_ptr + grad_out_offsets, mask=v_mask, other=0.0)
        rows = (frame * H + head) * V + joints
        stats = tl.load(stats_ptr + rows, mask=joints < joint_limit, other=0.0)

        # q = exp(s - Λ): the forward's normalised weights before the key mask (docs/kernels.md §7).
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * scale
        weights = tl.where(key_valid, tl.exp(scores - stats[:, None]), 0.0)
        grad_weights = tl.dot(grad_out, tl.trans(v), input_precision="ieee")
        if DROP:
            keep = keep_keys(seed, call_offset, rows, p)[None, :]
            kept = tl.where(keep, weights, 0.0)
            grad_out_dot_out = tl.sum(kept * grad_weights, axis=1)[:, None]
            # dS = q ⊙ (m ⊙ (dP - D) - 1e-8·D): dropped keys still see the 1e-8·L term.
            grad_scores = (tl.where(keep, weights * (grad_weights - grad_out_dot_out), 0.0)
                           - DROP_ATTENTION_EPS * grad_out_dot_out * weights)
        else:
            kept = weights
            grad_out_dot_out = tl.sum(kept * grad_weights, axis=1)[:, None]
            grad_scores = weights * (grad_weights - grad_out_dot_out)

        grad_scores = (grad_scores * scale).to(q.dtype)
        grad_q = tl.dot(grad_scores, k, input_precision="ieee")
        grad_k = tl.dot(tl.trans(grad_scores), q, input_precision="ieee")
        grad_v = tl.dot(tl.trans(kept.to(v.dtype)), grad_out, input_precision="ieee")

        dq_offsets, dk_offsets, _, dv_offsets, _ = _head_tiles(
            _frame_offset(frame, T, grad_qkv_stride_n, grad_qkv_stride_t), joint_limit, head,
            grad_qkv_stride_c, grad_qkv_stride_v, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV)
        grad_dtype = grad_qkv_ptr.dtype.element_ty
        tl.store(grad_qkv_ptr + dq_offsets, grad_q.to(grad_dtype), mask=qk_mask)
        tl.store(grad_qkv_ptr + dk_offsets, grad_k.to(grad_dtype), mask=qk_mask)
        tl.store(grad_qkv_ptr + dv_offsets, grad_v.to(grad_dtype), mask=v_mask)


# --- launchers ------------------------------------------------------------------------------------

def _configs(interpreting: bool) -> list[triton.Config]:
    """(frames per program, warps) candidates with two pipeline stages, so the next frame's loads
    are in flight while the current one computes (the compile report shows Triton staging the
    float32 loads through shared memory; the 16-bit ones compile the same at any depth).

    The interpreter runs one config (it cannot benchmark several); four frames with a ragged last
    block is what the CPU tests cover there.
    """
    if interpreting:
        return [triton.Config({"BLOCK_F": 4}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_F": frames}, num_warps=warps, num_stages=2)
            for frames, warps in ((4, 4), (16, 4), (4, 8))]


# Per-thread share of a frame's tiles (tile_elements_per_thread) up to which a kernel compiled
# without spills for sm_80 and sm_90 under Triton 3.6 and 3.9, by kernel and whether its operands
# are 32-bit; read off ptxas. Beyond ST-TR's shapes nothing may fit (64 joints with 64 channels
# per head): the launcher then takes the config with the most warps, and the compile report
# marks it.
TILE_BUDGET = {("forward", False): 96, ("forward", True): 40,
               ("backward", False): 24, ("backward", True): 24}


def tile_elements_per_thread(config: triton.Config, block_v: int, block_dk: int, block_dv: int) -> int:
    """Elements of one frame's score tile plus one q/k and one v tile, per thread."""
    return block_v * (block_v + block_dk + block_dv) // (32 * config.num_warps)


def within_budget(config: triton.Config, kernel: str, element_size: int, block_v: int, block_dk: int,
                  block_dv: int) -> bool:
    return (tile_elements_per_thread(config, block_v, block_dk, block_dv)
            <= TILE_BUDGET[kernel, element_size >= 4])


def fitting_configs(configs: list[triton.Config], kernel: str, element_size: int, block_v: int,
                    block_dk: int, block_dv: int) -> list[triton.Config]:
    """The configs the launcher may pick for ``kernel`` at these tile sizes and operand width:
    those within its register budget, or else those with the smallest per-thread share."""
    shape = (element_size, block_v, block_dk, block_dv)
    fitting = [c for c in configs if within_budget(c, kernel, *shape)]
    if fitting:
        return fitting
    smallest = min(tile_elements_per_thread(c, *shape[1:]) for c in configs)
    return [c for c in configs if tile_elements_per_thread(c, *shape[1:]) == smallest]


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
    return {"BLOCK_V": padded_dim(num_joints), "BLOCK_DK": padded_dim(dkh), "BLOCK_DV": padded_dim(dvh)}


def _shape_constants(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float) -> dict:
    v = qkv.shape[3]
    dkh, dvh = dk // num_heads, dv // num_heads
    return {"V": v, "H": num_heads, "DKH": dkh, "DVH": dvh, "DROP": p > 0,
            "ACC": ACCUMULATOR[qkv.dtype], **block_sizes(v, dkh, dvh)}


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
