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
is written to ``(N', dv, T, V)``, both through their strides, so the modules' transposed view,
contiguous and channels_last tensors need no copies. The strides are compile-time constants: a
layer's layout never changes, and constant offsets within a frame fold into the loads' and stores'
address immediates instead of taking two registers per element. The forward also writes the
per-query statistic Λ = max s + log(K + 1e-8·L) (log(L) without DropAttention) and computes one
exponential per score, with or without DropAttention; the backward turns recomputed scores into
q = exp(s - Λ) with one exponential, reads the forward's key mask and gets D = rowsum(dO ⊙ O) as
rowsum(P' ⊙ dP), so it needs neither O nor any V x V buffer. The key mask is drawn once per call,
one byte per (frame, head, joint), by :func:`.dropattention_rng.materialize_key_mask`; the kernels
only load it. Products run in float32 (float64 for float64 input) with IEEE precision.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_common import ACCUMULATOR, DROP_ATTENTION_EPS, PIN_CONFIGS, padded_dim, softmax_scale
from .dropattention_rng import load_keep


# Scores are kept in base-2 units, s·log2(e), so that every exponential is an exp2: one MUFU.EX2
# (tl.exp adds a multiply and a subnormal range check per score); Λ is stored in natural units.
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# How far, in base-2 units, DropAttention's anchor (the kept maximum) may lie below the row's
# maximum (forward kernel): weights up to 2^100 keep K + 1e-8·L finite in float32.
MAX_KEPT_SHIFT = tl.constexpr(100.0)


@triton.jit
def _frame_offset(n, t, stride_n, stride_t):
    """Memory offset of frame (n', t) of a (N', C, T, V) tensor."""
    return n * stride_n + t * stride_t


@triton.jit
def _first_frame(first_frame, T):
    """(n', t) of frame n'*T + t: the one division; the loop then steps with _next_frame."""
    n = first_frame // T
    return n, first_frame - n * T


@triton.jit
def _next_frame(n, t, T):
    """(n', t) of the frame after (n', t)."""
    t += 1
    wrapped = t == T
    return tl.where(wrapped, n + 1, n), tl.where(wrapped, 0, t)


@triton.jit
def _tile(frame_offset, joint_limit, first_channel, channels, stride_c, stride_v,
          BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr, WIDE: tl.constexpr):
    """Offsets and mask of a (joints, channels) tile of one frame starting at ``first_channel``;
    joints from ``joint_limit`` on are masked. The offsets within the frame are int32 unless
    ``WIDE``: per element, int64 takes twice the registers and more address arithmetic (the
    25-joint loops measured 3-9 % longer)."""
    joints = tl.arange(0, BLOCK_V)
    dims = tl.arange(0, BLOCK_D)
    if WIDE:
        joints = joints.to(tl.int64)
        dims = dims.to(tl.int64)
    offsets = frame_offset + (joints[:, None] * stride_v + (first_channel + dims)[None, :] * stride_c)
    mask = (joints < joint_limit)[:, None] & (dims < channels)[None, :]
    return offsets, mask


@triton.jit
def _head_tiles(frame_offset, joint_limit, head, stride_c, stride_v,
                H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
                BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
                WIDE: tl.constexpr):
    """Offsets and masks of one head's q, k and v tiles of one frame of a (N', 2*dk + dv, T, V)
    tensor."""
    q_offsets, qk_mask = _tile(frame_offset, joint_limit, head * DKH, DKH, stride_c, stride_v,
                               BLOCK_V, BLOCK_DK, WIDE)
    k_offsets, _ = _tile(frame_offset, joint_limit, H * DKH + head * DKH, DKH, stride_c, stride_v,
                         BLOCK_V, BLOCK_DK, WIDE)
    v_offsets, v_mask = _tile(frame_offset, joint_limit, 2 * H * DKH + head * DVH, DVH, stride_c,
                              stride_v, BLOCK_V, BLOCK_DV, WIDE)
    return q_offsets, k_offsets, qk_mask, v_offsets, v_mask


@triton.jit
def _load_head(qkv_ptr, frame_offset, joint_limit, head, stride_c, stride_v,
               H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
               BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
               WIDE: tl.constexpr):
    """One head's q, k and v tiles of one frame, zero where masked, and their masks."""
    q_offsets, k_offsets, qk_mask, v_offsets, v_mask = _head_tiles(
        frame_offset, joint_limit, head, stride_c, stride_v, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV,
        WIDE)
    q = tl.load(qkv_ptr + q_offsets, mask=qk_mask, other=0.0)
    k = tl.load(qkv_ptr + k_offsets, mask=qk_mask, other=0.0)
    v = tl.load(qkv_ptr + v_offsets, mask=v_mask, other=0.0)
    return q, k, v, qk_mask, v_mask


@triton.jit
def _load_keep_vector(keep_ptr, rows, valid):
    """load_keep for a row of keys, through a reduction over a size-1 axis that compiles to
    nothing: it hides the 8-bit load from Triton's estimate of a dot operand's original width
    (computeOrigBitWidth follows elementwise ops back to loads), which would otherwise give the
    P·V operand an 8-bit layout (kWidth 4) reached through warp shuffles."""
    return tl.max(load_keep(keep_ptr, rows[None, :], valid[None, :]).to(tl.int32), axis=0) != 0


@triton.jit
def _drop_attention_anchor(s, row_max, keep, scale, dot_dtype: tl.constexpr):
    """The score (scaled, base 2) relative to which the forward takes DropAttention's weights:
    a = 2^(s - anchor) serves K, L and the P·V operand, and acc / (K + 1e-8·L) and Λ do not
    depend on the anchor.

    float16 operands need the largest kept score (the float16 lesson): relative to a dropped
    maximum the kept weights can sit below float16's smallest number and would vanish as dot
    operands although K is still comparable to 1e-8·L. The anchor stays within MAX_KEPT_SHIFT of
    the row's maximum, so that a dropped key's weight stays finite (2^x overflows float32 from
    x = 128 on) and rows where every key is dropped (kept maximum -inf) get a finite anchor: their
    output is exactly 0, and wherever the kept maximum lies lower the output is below
    25·2^-100 / 1e-8 of v's scale (under 1e-20).
    bfloat16, float32 and float64 operands have float32's exponent range or more: a kept weight
    that underflows relative to the row's maximum is below 2^-126 and weighs under 1e-29 against
    1e-8·L, so they take the row's maximum and save the kept maximum's select and max per score.
    """
    if dot_dtype == tl.float16:
        kept_max = tl.max(tl.where(keep, s, float("-inf")), axis=1, keep_dims=True) * scale
        return tl.maximum(kept_max, row_max - MAX_KEPT_SHIFT)
    return row_max


@triton.jit
def _program_frames(H: tl.constexpr, BLOCK_F: tl.constexpr):
    """This program's head and first frame. Heads vary fastest across programs, so programs
    running together read the same frames' channels and share their cache lines."""
    pid = tl.program_id(0)
    return pid % H, (pid // H).to(tl.int64) * BLOCK_F


@triton.jit
def spatial_attention_forward_kernel(
        qkv_ptr, out_ptr, stats_ptr, keep_ptr,
        n_frames, T, frames_bucket,
        qkv_stride_n: tl.constexpr, qkv_stride_c: tl.constexpr, qkv_stride_t: tl.constexpr,
        qkv_stride_v: tl.constexpr,
        out_stride_n: tl.constexpr, out_stride_c: tl.constexpr, out_stride_t: tl.constexpr,
        out_stride_v: tl.constexpr,
        V: tl.constexpr, H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
        BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_F: tl.constexpr):
    head, first_frame = _program_frames(H, BLOCK_F)
    joints = tl.arange(0, BLOCK_V)
    key_valid = (joints < V)[None, :]
    scale = softmax_scale(ACC, DKH) * LOG2E
    n, t = _first_frame(first_frame, T)
    for index in range(BLOCK_F):
        frame = first_frame + index
        # A frame past the end has no joints: every access of it is masked.
        joint_limit = tl.where(frame < n_frames, V, 0)
        q, k, v, qk_mask, v_mask = _load_head(
            qkv_ptr, _frame_offset(n, t, qkv_stride_n, qkv_stride_t), joint_limit, head, qkv_stride_c,
            qkv_stride_v, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV, WIDE)

        # Raw scores q·k; the scale is applied inside the exponent's multiply-add, and the max
        # is taken before it (scale > 0).
        s = tl.where(key_valid, tl.dot(q, tl.trans(k), input_precision="ieee"), float("-inf"))
        row_max = tl.max(s, axis=1, keep_dims=True) * scale
        # Flat index ((n'*T + t)*H + h)*V + joint: the layout of the statistics and the key mask.
        rows = (frame * H + head) * V + joints
        if DROP:
            # Padded and past-the-end keys load as dropped.
            keep = _load_keep_vector(keep_ptr, rows, joints < joint_limit)[None, :]
            anchor = _drop_attention_anchor(s, row_max, keep, scale, v.dtype)
            a = tl.exp2(s * scale - anchor)
            total = tl.sum(a, axis=1, keep_dims=True)
            a = tl.where(keep, a, 0.0)
            denominator = tl.sum(a, axis=1, keep_dims=True) + DROP_ATTENTION_EPS * total
        else:
            anchor = row_max
            a = tl.exp2(s * scale - anchor)
            denominator = tl.sum(a, axis=1, keep_dims=True)
        out = tl.dot(a.to(v.dtype), v, input_precision="ieee") * (1.0 / denominator)

        out_offsets, out_mask = _tile(_frame_offset(n, t, out_stride_n, out_stride_t), joint_limit,
                                      head * DVH, DVH, out_stride_c, out_stride_v, BLOCK_V, BLOCK_DV, WIDE)
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=out_mask)
        statistic = tl.reshape(anchor * LN2 + tl.log(denominator), [BLOCK_V])
        tl.store(stats_ptr + rows, statistic, mask=joints < joint_limit)
        n, t = _next_frame(n, t, T)


@triton.jit
def spatial_attention_backward_kernel(
        qkv_ptr, grad_out_ptr, stats_ptr, keep_ptr, grad_qkv_ptr,
        n_frames, T, frames_bucket,
        qkv_stride_n: tl.constexpr, qkv_stride_c: tl.constexpr, qkv_stride_t: tl.constexpr,
        qkv_stride_v: tl.constexpr,
        grad_out_stride_n: tl.constexpr, grad_out_stride_c: tl.constexpr,
        grad_out_stride_t: tl.constexpr, grad_out_stride_v: tl.constexpr,
        grad_qkv_stride_n: tl.constexpr, grad_qkv_stride_c: tl.constexpr,
        grad_qkv_stride_t: tl.constexpr, grad_qkv_stride_v: tl.constexpr,
        V: tl.constexpr, H: tl.constexpr, DKH: tl.constexpr, DVH: tl.constexpr,
        DROP: tl.constexpr, ACC: tl.constexpr, WIDE: tl.constexpr,
        BLOCK_V: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
        BLOCK_F: tl.constexpr):
    head, first_frame = _program_frames(H, BLOCK_F)
    joints = tl.arange(0, BLOCK_V)
    key_valid = (joints < V)[None, :]
    scale = softmax_scale(ACC, DKH)
    n, t = _first_frame(first_frame, T)
    for index in range(BLOCK_F):
        frame = first_frame + index
        # A frame past the end has no joints: every access of it is masked.
        joint_limit = tl.where(frame < n_frames, V, 0)
        q, k, v, qk_mask, v_mask = _load_head(
            qkv_ptr, _frame_offset(n, t, qkv_stride_n, qkv_stride_t), joint_limit, head, qkv_stride_c,
            qkv_stride_v, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV, WIDE)
        grad_out_offsets, _ = _tile(_frame_offset(n, t, grad_out_stride_n, grad_out_stride_t),
                                    joint_limit, head * DVH, DVH, grad_out_stride_c, grad_out_stride_v,
                                    BLOCK_V, BLOCK_DV, WIDE)
        # Padded query rows read dO = 0, which zeroes their dS and their share of dV and dK.
        grad_out = tl.load(grad_out_ptr + grad_out_offsets, mask=v_mask, other=0.0)
        rows = (frame * H + head) * V + joints
        stats = tl.load(stats_ptr + rows, mask=joints < joint_limit, other=0.0)

        # q = exp(s - Λ) = 2^(s·log2(e) - Λ·log2(e)): the forward's normalised weights before the
        # key mask (docs/kernels.md §7), one exp2 each.
        scores = tl.dot(q, tl.trans(k), input_precision="ieee")
        weights = tl.where(key_valid, tl.exp2(scores * (scale * LOG2E) - (stats * LOG2E)[:, None]), 0.0)
        grad_weights = tl.dot(grad_out, tl.trans(v), input_precision="ieee")
        if DROP:
            keep = _load_keep_vector(keep_ptr, rows, joints < joint_limit)[None, :]
            kept = tl.where(keep, weights, 0.0)
            grad_out_dot_out = tl.sum(kept * grad_weights, axis=1)[:, None]
            # dS = q ⊙ (m ⊙ (dP - D) - 1e-8·D): dropped keys still see the 1e-8·L term.
            grad_scores = (kept * (grad_weights - grad_out_dot_out)
                           - (DROP_ATTENTION_EPS * grad_out_dot_out) * weights)
        else:
            kept = weights
            grad_out_dot_out = tl.sum(kept * grad_weights, axis=1)[:, None]
            grad_scores = weights * (grad_weights - grad_out_dot_out)

        grad_scores = (grad_scores * scale).to(q.dtype)
        grad_q = tl.dot(grad_scores, k, input_precision="ieee")
        grad_k = tl.dot(tl.trans(grad_scores), q, input_precision="ieee")
        grad_v = tl.dot(tl.trans(kept.to(v.dtype)), grad_out, input_precision="ieee")

        dq_offsets, dk_offsets, _, dv_offsets, _ = _head_tiles(
            _frame_offset(n, t, grad_qkv_stride_n, grad_qkv_stride_t), joint_limit, head,
            grad_qkv_stride_c, grad_qkv_stride_v, H, DKH, DVH, BLOCK_V, BLOCK_DK, BLOCK_DV, WIDE)
        grad_dtype = grad_qkv_ptr.dtype.element_ty
        tl.store(grad_qkv_ptr + dq_offsets, grad_q.to(grad_dtype), mask=qk_mask)
        tl.store(grad_qkv_ptr + dk_offsets, grad_k.to(grad_dtype), mask=qk_mask)
        tl.store(grad_qkv_ptr + dv_offsets, grad_v.to(grad_dtype), mask=v_mask)
        n, t = _next_frame(n, t, T)


# --- launchers ------------------------------------------------------------------------------------

def _configs(interpreting: bool) -> list[triton.Config]:
    """(frames per program, warps) candidates, in the launcher's order of preference, with two
    pipeline stages (Triton stages the float32 loads through shared memory; the 16-bit ones
    compile the same at any depth). Sixteen frames per program amortise the code outside the
    frame loop (4 frames issued 1-7 % more per frame and spilled in the bfloat16 backward at
    16/64 under Triton 3.9 for sm_80). Two warps suit 25 joints: the 16-bit dots then cover the
    32 padded rows once (covers_rows_once), and the float32 ones issue the fewest instructions
    per frame; one, four and eight warps serve other joint counts and the register budget.

    The interpreter runs one config (it cannot benchmark several); four frames with a ragged last
    block is what the CPU tests cover there.
    """
    if interpreting:
        return [triton.Config({"BLOCK_F": 4}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_F": frames}, num_warps=warps, num_stages=2)
            for frames, warps in ((16, 2), (16, 1), (16, 4), (16, 8))]


def covers_rows_once(config: triton.Config, element_size: int, block_v: int) -> bool:
    """Whether the warps split a frame's rows without computing any twice. 16-bit dots run on
    mma.sync, 16 rows per warp with every warp along the rows (docs/cost-model.md §4): more warps
    than BLOCK_V/16 repeat the same rows, and fewer were measured with dropout loops 1.33x the
    plain ones (one warp on 32 joints converts the key mask through warp shuffles). float32 and
    float64 dots run on FMA in blocked layouts that spread the tile over all threads."""
    return element_size >= 4 or config.num_warps * 16 == block_v


# Per-thread share of a frame's tiles (tile_elements_per_thread) up to which a kernel compiled
# without spills for sm_80 and sm_90 under Triton 3.6 and 3.9, in the contiguous and the modules'
# layouts, by kernel and whether its operands are 32-bit; read off ptxas. Float32 dots run on FMA
# and hold whole rows of their operands per thread, so fewer warps cost more than their share
# suggests: the float32 backward spilled from 28 on (4 warps at 8/32 and 2 warps at 4/16 in the
# modules' layout under Triton 3.9; Triton 3.6 fits both), the float32 forward at 128 (4 warps at
# 64/64/64, Triton 3.9). Beyond ST-TR's shapes nothing may fit (the float32 backward at
# 64/64/64): the launcher then takes the config with the smallest share, and the compile report
# marks it.
TILE_BUDGET = {("forward", False): 128, ("forward", True): 112,
               ("backward", False): 128, ("backward", True): 24}


def tile_elements_per_thread(config: triton.Config, block_v: int, block_dk: int, block_dv: int) -> int:
    """Elements of one frame's score tile, one q/k tile and two v-sized tiles (v and the output
    accumulator, or dO and dV), per thread."""
    return block_v * (block_v + block_dk + 2 * block_dv) // (32 * config.num_warps)


def within_budget(config: triton.Config, kernel: str, element_size: int, block_v: int, block_dk: int,
                  block_dv: int) -> bool:
    return (tile_elements_per_thread(config, block_v, block_dk, block_dv)
            <= TILE_BUDGET[kernel, element_size >= 4])


def fitting_configs(configs: list[triton.Config], kernel: str, element_size: int, block_v: int,
                    block_dk: int, block_dv: int) -> list[triton.Config]:
    """The configs the launcher may pick for ``kernel`` at these tile sizes and operand width,
    in its order: those whose warps cover the rows once, and of them those within the register
    budget, or else those with the smallest per-thread share."""
    shape = (element_size, block_v, block_dk, block_dv)
    candidates = [c for c in configs if covers_rows_once(c, element_size, block_v)] or configs
    fitting = [c for c in candidates if within_budget(c, kernel, *shape)]
    if fitting:
        return fitting
    smallest = min(tile_elements_per_thread(c, *shape[1:]) for c in candidates)
    return [c for c in candidates if tile_elements_per_thread(c, *shape[1:]) == smallest]


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
# Re-tuned per layout (the strides), shape and power-of-two bucket of the frame count; dtypes are
# part of every autotuner key.
_AUTOTUNE_KEY = ["frames_bucket", "qkv_stride_n", "qkv_stride_c", "qkv_stride_t", "qkv_stride_v",
                 "V", "H", "DKH", "DVH", "DROP"]
_forward = triton.autotune(CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=_pruner("forward"))(
    spatial_attention_forward_kernel)
_backward = triton.autotune(CONFIGS, key=_AUTOTUNE_KEY, prune_configs_by=_pruner("backward"))(
    spatial_attention_backward_kernel)


def frames_bucket(n_frames: int) -> int:
    """The autotuner's key for the frame count: the next power of two, so that a batch of another
    size re-tunes only when it crosses one."""
    return triton.next_power_of_2(n_frames)


def block_sizes(num_joints: int, dkh: int, dvh: int) -> dict[str, int]:
    """Padded tile sizes for V joints and per-head dims dkh, dvh (each <= 64)."""
    return {"BLOCK_V": padded_dim(num_joints), "BLOCK_DK": padded_dim(dkh), "BLOCK_DV": padded_dim(dvh)}


def _needs_wide_offsets(*tensors: torch.Tensor) -> bool:
    """Whether an offset within one frame, over channels and joints, can reach 2^31 elements in
    any of these (N', C, T, V) tensors."""
    return any((x.shape[1] - 1) * x.stride(1) + (x.shape[3] - 1) * x.stride(3) >= 2**31 for x in tensors)


def _shape_constants(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                     *others: torch.Tensor) -> dict:
    v = qkv.shape[3]
    dkh, dvh = dk // num_heads, dv // num_heads
    return {"V": v, "H": num_heads, "DKH": dkh, "DVH": dvh, "DROP": p > 0,
            "ACC": ACCUMULATOR[qkv.dtype], "WIDE": _needs_wide_offsets(qkv, *others),
            **block_sizes(v, dkh, dvh)}


def _strides(**tensors: torch.Tensor) -> dict[str, int]:
    return {f"{name}_stride_{axis}": stride for name, x in tensors.items()
            for axis, stride in zip("nctv", x.stride())}


def forward_arguments(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                      keep: torch.Tensor | None, out: torch.Tensor,
                      stats: torch.Tensor) -> tuple[list, dict]:
    """Positional arguments and constexprs of the forward kernel, all but the config's."""
    n, _, t, _ = qkv.shape
    return ([qkv, out, stats, keep, n * t, t, frames_bucket(n * t)],
            {**_shape_constants(qkv, num_heads, dk, dv, p, out), **_strides(qkv=qkv, out=out)})


def backward_arguments(grad_out: torch.Tensor, qkv: torch.Tensor, stats: torch.Tensor,
                       num_heads: int, dk: int, dv: int, p: float,
                       keep: torch.Tensor | None, grad_qkv: torch.Tensor) -> tuple[list, dict]:
    """Positional arguments and constexprs of the backward kernel, all but the config's."""
    n, _, t, _ = qkv.shape
    return ([qkv, grad_out, stats, keep, grad_qkv, n * t, t, frames_bucket(n * t)],
            {**_shape_constants(qkv, num_heads, dk, dv, p, grad_out, grad_qkv),
             **_strides(qkv=qkv, grad_out=grad_out, grad_qkv=grad_qkv)})


def _grid(qkv: torch.Tensor, num_heads: int):
    n_frames = qkv.shape[0] * qkv.shape[2]
    return lambda meta: (triton.cdiv(n_frames, meta["BLOCK_F"]) * num_heads,)


def _launch(tuned: triton.runtime.Autotuner, kernel: str, grid, args: list, constants: dict) -> None:
    """Autotuned launch, or with STTR_PIN_CONFIGS=1 the launcher's first config for this shape."""
    if not PIN_CONFIGS:
        tuned[grid](*args, **constants)
        return
    config = fitting_configs(CONFIGS, kernel, args[0].element_size(), constants["BLOCK_V"],
                             constants["BLOCK_DK"], constants["BLOCK_DV"])[0]
    tuned.fn[grid](*args, **constants, **config.all_kwargs())


def spatial_attention_forward(qkv: torch.Tensor, num_heads: int, dk: int, dv: int, p: float,
                              keep: torch.Tensor | None, out: torch.Tensor,
                              stats: torch.Tensor) -> None:
    """Fill ``out`` (N', dv, T, V), any strides, and ``stats`` (N'*T, H, V), contiguous.

    ``stats`` is float64 for float64 input, else float32; ``keep`` is the contiguous boolean
    (N'*T, H, V) key mask of :func:`.dropattention_rng.materialize_key_mask`, None when
    ``p == 0``. Arguments are checked by ``sttr_fast.ops``; this only launches.
    """
    if out.numel() == 0:
        return
    args, constants = forward_arguments(qkv, num_heads, dk, dv, p, keep, out, stats)
    _launch(_forward, "forward", _grid(qkv, num_heads), args, constants)


def spatial_attention_backward(grad_out: torch.Tensor, qkv: torch.Tensor, stats: torch.Tensor,
                               num_heads: int, dk: int, dv: int, p: float,
                               keep: torch.Tensor | None, grad_qkv: torch.Tensor) -> None:
    """Fill ``grad_qkv`` (the shape of ``qkv``, any strides) from ``grad_out`` (N', dv, T, V).

    ``stats`` and ``keep`` are the forward's.
    """
    if grad_qkv.numel() == 0:
        return
    args, constants = backward_arguments(grad_out, qkv, stats, num_heads, dk, dv, p, keep, grad_qkv)
    _launch(_backward, "backward", _grid(qkv, num_heads), args, constants)
