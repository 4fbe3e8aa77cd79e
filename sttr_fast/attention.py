"""ST-TR's two self-attention units (docs/network.md §5-§7); the attention core runs on a chosen
backend."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .checks import check_input, check_integer, check_probability
from .ops.custom_ops import is_channels_last


def joint_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over (N', C*V, T) with feature index c*V + v: x (N', C, T, V) -> (N', C, V, T).

    The result stays in the (N', C, V, T) layout the normalisation needs; the qkv projections run
    on it and hand the attention core a transposed view instead of copying it back.
    """
    n, c, t, v = x.shape
    return bn(x.transpose(2, 3).reshape(n, c * v, t)).view(n, c, v, t)


def _channels_last_joint_batch_norm(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """``joint_batch_norm`` for channels-last x, without a copy and in x's layout: its memory,
    (N', T, V, C), is a channels-last (N', V*C, T, 1) tensor whose features are the (v, c) pairs,
    so a BatchNorm over that view with the parameters and running statistics reordered from
    c*V + v to v*C + c normalises the same groups. nn.BatchNorm's own rules (momentum or the
    cumulative average, running statistics or batch statistics) decide as in ``bn(...)``; the
    reordered running statistics are written back after the update."""
    n, c, t, v = x.shape
    features = x.permute(0, 3, 1, 2).reshape(n, v * c, t, 1)  # a view: x is channels-last

    def by_joint(parameter):
        return None if parameter is None else parameter.view(c, v).t().reshape(-1)

    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    batch_statistics = bn.training or bn.running_mean is None
    tracked = bn.running_mean is not None and (not bn.training or bn.track_running_stats)
    running_mean, running_var = (by_joint(bn.running_mean), by_joint(bn.running_var)) if tracked else (None, None)
    normalised = F.batch_norm(features, running_mean, running_var, by_joint(bn.weight),
                              by_joint(bn.bias), batch_statistics, factor, bn.eps)
    if tracked and batch_statistics:
        with torch.no_grad():
            bn.running_mean.view(c, v).copy_(running_mean.view(v, c).t())
            bn.running_var.view(c, v).copy_(running_var.view(v, c).t())
    return normalised.view(n, v, c, t).permute(0, 2, 3, 1)


def project_qkv(bn: nn.BatchNorm1d, qkv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The qkv projection of the joint-normalised input, as the attention core takes it:
    (N', C, T, V) -> (N', 2*dk + dv, T / stride, V).

    Channels-last input (CPU bf16 training and fast CPU inference: sttr_fast/train/engine.py
    place_model, sttr_fast/inference.py) stays channels-last throughout: the BatchNorm runs over
    a view of it (``_channels_last_joint_batch_norm``) and the projection over (T, V) with its
    kernel and stride transposed, writing the channels-last (N', C, T, V) output the core reads.
    Elsewhere the (N', C, V, T) layout of ``joint_batch_norm``, whose transposed projection output
    has frames unit-stride (what the fused temporal kernels read best)."""
    if not is_channels_last(x):
        return qkv(joint_batch_norm(bn, x)).transpose(2, 3)
    normalised = _channels_last_joint_batch_norm(bn, x)
    # A contiguous copy of the small transposed kernel: torch's float64 convolution takes no other
    # for its weight gradient, oneDNN's reorders it anyway.
    weight = qkv.weight.transpose(2, 3).contiguous()
    return F.conv2d(normalised, weight, qkv.bias, stride=qkv.stride[::-1])


class ProjectionShortcut(nn.Module):
    """1x1 convolution with temporal stride, BatchNorm, ReLU (the authors' ``down``/``down1``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=(stride, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def head_split_fits(channels: int, num_heads: int) -> bool:
    """Whether ``num_heads`` divides both the key width ``int(channels / 4)`` and ``channels``."""
    dk = int(0.25 * channels)
    return dk >= num_heads and dk % num_heads == 0 and channels % num_heads == 0


def _head_split(module: str, argument: str, channels: int, num_heads: int) -> tuple[int, int]:
    check_integer(module, "num_heads", num_heads)
    check_integer(module, argument, channels)
    if not head_split_fits(channels, num_heads):
        raise ValueError(f"{module}: {argument}={channels} gives keys of {int(0.25 * channels)} "
                         f"and values of {channels} channels, which num_heads={num_heads} must "
                         f"both divide; choose {argument} a multiple of 4*num_heads = "
                         f"{4 * num_heads}")
    return int(0.25 * channels), channels


class SpatialSelfAttention(nn.Module):
    """SSA: every frame's joints attend to each other. Input/output (N', C, T, V)."""

    def __init__(self, in_channels: int, out_channels: int, num_heads: int = 8,
                 drop_attention: float = 0.5, backend: str = "auto", num_joints: int = 25):
        super().__init__()
        name = "SpatialSelfAttention"
        check_integer(name, "in_channels", in_channels)
        check_integer(name, "num_joints", num_joints)
        check_probability(name, "drop_attention", drop_attention)
        self.dk, self.dv = _head_split(name, "out_channels", out_channels, num_heads)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads, self.num_joints = num_heads, num_joints
        self.drop_attention, self.backend = drop_attention, backend
        self.input_bn = nn.BatchNorm1d(in_channels * num_joints)
        self.qkv = nn.Conv2d(in_channels, 2 * self.dk + self.dv, 1)
        self.out_proj = nn.Conv2d(self.dv, self.dv, 1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, "NCTV", {1: self.in_channels, 3: self.num_joints})
        qkv = project_qkv(self.input_bn, self.qkv, x)
        attended = ops.spatial_attention(qkv, self.num_heads, self.dk, self.dv,
                                         p=self.drop_attention if self.training else 0.0,
                                         backend=self.backend)
        out = self.out_proj(attended)
        if self.in_channels == self.out_channels:
            out = out + x
        return F.relu(self.bn(out))


class TemporalSelfAttention(nn.Module):
    """TSA: every joint's frames attend to each other; stride 2 pairs consecutive frames.

    Input (N', C, T, V), output (N', C, T / stride, V). ``stride_skips_frames`` reproduces the
    authors' code for an even joint count (their Kinetics models): at stride 2 each token is a map
    of every other frame alone, the frames between are never seen by the attention.
    """

    def __init__(self, channels: int, stride: int = 1, num_heads: int = 8,
                 drop_attention: float = 0.5, backend: str = "auto", num_joints: int = 25,
                 stride_skips_frames: bool = False):
        super().__init__()
        name = "TemporalSelfAttention"
        check_integer(name, "stride", stride)
        check_integer(name, "num_joints", num_joints)
        check_probability(name, "drop_attention", drop_attention)
        self.dk, self.dv = _head_split(name, "channels", channels, num_heads)
        self.channels, self.stride = channels, stride
        self.num_heads, self.num_joints = num_heads, num_joints
        self.drop_attention, self.backend = drop_attention, backend
        self.input_bn = nn.BatchNorm1d(channels * num_joints)
        # A (1, stride) kernel over time: at stride 2 each token is a learned map of two consecutive
        # frames. Applied to the (N', C, V, T) layout it equals the authors' (N'*V, C, 1, T) tokens.
        # Their code picks a (1, 1) kernel instead when the joint count is even; their Kinetics
        # checkpoints hold such weights, so that choice is kept, but only on request.
        self.stride_skips_frames = stride_skips_frames
        kernel = (1, 1) if stride_skips_frames else (1, stride)
        self.qkv = nn.Conv2d(channels, 2 * self.dk + self.dv, kernel, stride=(1, stride))
        self.out_proj = nn.Conv2d(self.dv, self.dv, 1)
        self.down = ProjectionShortcut(channels, channels, stride) if stride != 1 else None
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, "NCTV", {1: self.channels, 3: self.num_joints})
        if x.shape[2] % self.stride:
            raise ValueError(f"TemporalSelfAttention: T={x.shape[2]} frames must be divisible by "
                             f"stride={self.stride}")
        qkv = project_qkv(self.input_bn, self.qkv, x)
        attended = ops.temporal_attention(qkv, self.num_heads, self.dk, self.dv,
                                          p=self.drop_attention if self.training else 0.0,
                                          backend=self.backend)
        out = self.out_proj(attended) + (x if self.down is None else self.down(x))
        return F.relu(self.bn(out))
