"""The ST-TR network (docs/network.md): one implementation for both streams and every backend."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import (ProjectionShortcut, SpatialSelfAttention, TemporalSelfAttention,
                        head_split_fits)
from .checks import check_input, check_integer, check_probability
from .graph import DEFAULT_GRAPH, Graph, graph_from_config
from .ops.custom_ops import is_channels_last

STREAMS = ("spatial", "temporal")


class GraphConvolution(nn.Module):
    """ST-GCN graph convolution over 3 adjacency subsets with a learnable mask, then BN and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor):
        super().__init__()
        # Fixed by the graph, so not part of the state_dict (the authors' has no such key).
        self.register_buffer("adjacency", adjacency.clone(), persistent=False)
        self.mask = nn.Parameter(torch.ones_like(adjacency))
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1)
                                   for _ in range(adjacency.shape[0]))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        subsets = (self.adjacency * self.mask).to(x.dtype)
        bias = torch.stack([conv.bias for conv in self.convs]).sum(0)
        if x.dim() == 4 and is_channels_last(x):
            mixed = self._channels_last_mix(x, subsets)
            # The bias in the product's dtype: under autocast a float32 bias would promote the
            # sum, and with it the BatchNorm, ReLU and their backward, to float32.
            return F.relu(self.bn(mixed + bias.to(mixed.dtype).view(-1, 1, 1)))
        # sum_k W_k (x A_k) + b_k as one convolution over the K stacked products; the broadcast
        # matmul writes (N, K, C, T, V) directly, so flattening K and C is free.
        mixed = torch.matmul(x.unsqueeze(1), subsets.unsqueeze(1)).flatten(1, 2)
        weight = torch.cat([conv.weight for conv in self.convs], dim=1)
        return F.relu(self.bn(F.conv2d(mixed, weight, bias)))

    def _channels_last_mix(self, x: torch.Tensor, subsets: torch.Tensor) -> torch.Tensor:
        """sum_k (W_k x) A_k, the same linear map in the other order, for channels-last input
        (the CPU): the convolution's channels-last output is, per (n, t), a
        (V, K*C) row-major matrix, i.e. a (V*K, C) one, so one batched product with the (W, V*K)
        matrix [A_k]_{v,w} mixes the joints and sums the subsets without a copy, and writes the
        result channels-last again. Taken in bf16 CPU training too (sttr_fast/train/engine.py
        place_model)."""
        k, v, _ = subsets.shape
        weight = torch.cat([conv.weight for conv in self.convs], dim=0)  # (K*C_out, C_in, 1, 1)
        projected = F.conv2d(x, weight)  # (N, K*C_out, T, V), memory (N, T, V, K, C_out)
        n, _, t, _ = projected.shape
        channels = weight.shape[0] // k
        rows = projected.permute(0, 2, 3, 1).reshape(n * t, v * k, channels)
        mixer = subsets.permute(2, 1, 0).reshape(v, v * k)  # [w, v*K + k] = A_k[v, w]
        return torch.matmul(mixer, rows).view(n, t, v, channels).permute(0, 3, 1, 2)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (keep, scaled by 1 / (1 - p), with probability 1 - p) with a cheaper mask on
    the CPU: torch's CPU ``bernoulli_``, which ``F.dropout`` uses, took a fifth of a bf16 S-TR
    training step there, and ``torch.rand`` still costs ~8 ns an element. Here each element
    takes 15 bits of a 63-bit ``randint`` draw (4 elements a draw, ~2 ns an element; torch.compile
    traces it, unlike ``random_``) and is kept when they are at least round(p * 2^15): the keep
    probability is p rounded to a multiple of 2^-15 (exact for ST-TR's 0.5). On other devices
    ``F.dropout`` itself (fused there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        bits = torch.randint(0, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64).view(torch.int16)[:n]
        keep = (bits & 0x7FFF) >= round(self.p * 2**15)
        # In x's memory layout (channels-last in CPU training): x is dense, so its strides
        # address a buffer of n elements.
        keep = keep.as_strided(x.shape, x.stride()) if _is_dense(x) else keep.view(x.shape)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


def _is_dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


class TemporalConvolution(nn.Module):
    """Dropout, (9, 1) convolution over time with stride, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0,
                 kernel_size: int = 9):
        super().__init__()
        self.dropout = Dropout(dropout)
        self.conv = nn.Conv2d(in_channels, out_channels, (kernel_size, 1),
                              padding=((kernel_size - 1) // 2, 0), stride=(stride, 1))
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(self.dropout(x))))


class Unit(nn.Module):
    """``temporal(spatial(x)) + shortcut(x)``; no activation after the sum, no sum without shortcut."""

    def __init__(self, spatial: nn.Module, temporal: nn.Module, shortcut: nn.Module | None):
        super().__init__()
        self.spatial, self.temporal, self.shortcut = spatial, temporal, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.temporal(self.spatial(x))
        return out if self.shortcut is None else out + self.shortcut(x)


class STTR(nn.Module):
    """ST-TR. ``stream="spatial"`` is S-TR (SSA in units 3-8), ``"temporal"`` is T-TR (TSA there).

    Input (N, C, T, V, M) with T divisible by 4; output raw logits (N, num_classes).
    Joints: ``in_channels=3, base_channels=64``; joints+bones: ``in_channels=6, base_channels=128``.
    ``graph``: a ``Graph``, a preset name (sttr_fast.graph.GRAPH_PRESETS) or a custom graph mapping
    ``{num_joints, edges, center}``; the default is NTU RGB+D's. ``num_point`` follows the graph.
    ``tsa_stride_skips_frames``: the authors' stride-2 TSA for an even joint count (their Kinetics
    checkpoints), see TemporalSelfAttention.
    """

    def __init__(self, num_classes: int = 60, stream: str = "spatial", in_channels: int = 3,
                 base_channels: int = 64, num_point: int | None = None, num_person: int = 2,
                 drop_attention: float = 0.5, dropout: float = 0.5, backend: str = "auto",
                 graph: Graph | str | dict | None = None, num_heads: int = 8,
                 tsa_stride_skips_frames: bool = False):
        super().__init__()
        if stream not in STREAMS:
            raise ValueError(f"STTR: stream must be one of {STREAMS}, got {stream!r}")
        if graph is None and num_point not in (None, 25):
            raise ValueError(f"STTR: num_point={num_point} needs a graph (a preset name, a custom "
                             f"graph mapping or sttr_fast.Graph); the default {DEFAULT_GRAPH} graph "
                             "has 25 joints")
        if not isinstance(graph, Graph):
            try:
                graph = graph_from_config(DEFAULT_GRAPH if graph is None else graph)
            except ValueError as error:
                raise ValueError(f"STTR: graph: {error}") from None
        if num_point is None:
            num_point = graph.num_joints
        elif graph.num_joints != num_point:
            raise ValueError(f"STTR: graph has {graph.num_joints} joints but num_point={num_point}")
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("base_channels", base_channels), ("num_person", num_person),
                            ("num_point", num_point), ("num_heads", num_heads)):
            check_integer("STTR", name, value)
        check_probability("STTR", "drop_attention", drop_attention)
        check_probability("STTR", "dropout", dropout, below_one=True)
        # The attention units get 2 and 4 x base_channels; say so in terms of base_channels
        # rather than let a unit complain about channels the user never wrote.
        if not all(head_split_fits(k * base_channels, num_heads) for k in (2, 4)):
            fitting = [b for b in range(1, 4 * base_channels + 1)
                       if all(head_split_fits(k * b, num_heads) for k in (2, 4))]
            near = sorted(fitting, key=lambda b: abs(b - base_channels))[:2]
            raise ValueError(f"STTR: base_channels={base_channels} does not split into "
                             f"num_heads={num_heads} heads (the attention units have "
                             f"2*base_channels and 4*base_channels channels, a quarter of them "
                             f"keys); choose a multiple of 2*num_heads = {2 * num_heads}, e.g. "
                             + " or ".join(str(b) for b in sorted(near)))
        self.stream, self.in_channels, self.num_classes = stream, in_channels, num_classes
        self.num_point, self.num_person, self.graph = num_point, num_person, graph
        self.tsa_stride_skips_frames = tsa_stride_skips_frames
        adjacency = graph.spatial_adjacency()

        def gcn(cin, cout):
            return GraphConvolution(cin, cout, adjacency)

        def tcn(cin, cout, stride=1):
            return TemporalConvolution(cin, cout, stride, dropout)

        def ssa(cin, cout):
            return SpatialSelfAttention(cin, cout, num_heads, drop_attention, backend, num_point)

        def tsa(channels, stride=1):
            return TemporalSelfAttention(channels, stride, num_heads, drop_attention, backend,
                                         num_point, tsa_stride_skips_frames)

        def attention_unit(cin, cout, stride):
            shortcut = ProjectionShortcut(cin, cout, stride) if cin != cout or stride != 1 else nn.Identity()
            if stream == "spatial":
                return Unit(ssa(cin, cout), tcn(cout, cout, stride), shortcut)
            return Unit(gcn(cin, cout), tsa(cout, stride), shortcut)

        c1, c2, c3 = base_channels, 2 * base_channels, 4 * base_channels
        self.data_bn = nn.BatchNorm1d(num_person * num_point * in_channels)
        self.stem = Unit(gcn(in_channels, c1), TemporalConvolution(c1, c1, 1, 0.0), None)
        # The raw coordinates are concatenated to the features before unit 3 (concat_original).
        self.units = nn.ModuleList(
            [Unit(gcn(c1, c1), tcn(c1, c1), nn.Identity()) for _ in range(3)]
            + [attention_unit(c1 + in_channels, c2, 2), attention_unit(c2, c2, 1),
               attention_unit(c2, c2, 1), attention_unit(c2, c3, 2), attention_unit(c3, c3, 1),
               attention_unit(c3, c3, 1)])
        self.classifier = nn.Linear(c3, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        attention_convs = {id(m) for a in self.modules()
                           if isinstance(a, (SpatialSelfAttention, TemporalSelfAttention))
                           for m in (a.qkv, a.out_proj)}
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and id(module) not in attention_convs:
                fan_out = module.weight.shape[0] * math.prod(module.weight.shape[2:])
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)

    def activation_layout(self) -> torch.memory_format:
        """``torch.channels_last`` once the weights are (``model.to(memory_format=...)``), else
        ``torch.contiguous_format``; read from the stem's (9, 1) temporal kernel, whose two
        layouts differ (a 1x1 kernel is both)."""
        return torch.channels_last if is_channels_last(self.stem.temporal.conv.weight) else torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, "NCTVM", {1: self.in_channels, 3: self.num_point, 4: self.num_person})
        n, c, t, v, m = x.shape
        if t % 4:
            raise ValueError(f"STTR: T={t} frames must be divisible by 4 (two stride-2 units)")
        features = self.data_bn(x.permute(0, 4, 3, 1, 2).reshape(n, m * v * c, t))
        # Channels-last weights (CPU training and fast inference) get channels-last activations
        # from the first unit to the last, so that oneDNN's convolutions neither reorder their
        # inputs nor their outputs; both halves of the concatenation before unit 3 must be
        # channels-last for its result to be.
        layout = self.activation_layout()
        h = features.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).reshape(n * m, c, t, v)
        h = h.contiguous(memory_format=layout)
        original = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v).contiguous(memory_format=layout)
        h = self.stem(h)
        for index, unit in enumerate(self.units):
            if index == 3:
                h = torch.cat([h, original], dim=1)
            h = unit(h)
        # Mean over joints, then persons (absent ones included), then frames.
        pooled = h.mean(dim=3).view(n, m, h.shape[1], h.shape[2]).mean(dim=1).mean(dim=2)
        return self.classifier(pooled)
