"""Fast inference with a trained ST-TR (``sttr predict``, ``sttr test --fast``).

``InferenceModel(model)`` is a frozen copy of a model for evaluation:

- every BatchNorm that directly follows a convolution is folded into it (exact in eval mode, where
  BatchNorm is a fixed per-channel affine map): the graph convolutions', the temporal
  convolutions', the projection shortcuts' and, where the unit has no residual, the SSA output
  projection's. The BatchNorms that follow a residual sum, and the units' per-joint input
  BatchNorms, cannot be folded into one convolution and stay;
- it computes in bf16 (weights and activations; logits returned in float32) where that is fast:
  on CUDA, and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX); elsewhere in float32.
  Whole-model bf16 avoids the casts autocast makes around every layer;
- on the CPU in bf16 its convolution weights are channels-last, which oneDNN runs faster there
  (in float32 it did not pay), and so are the activations: the graph convolutions then project
  before they mix the joints, and the reference attention core, in inference on the CPU, takes
  cache-sized blocks of sequences and writes its output in the same order, so no layer copies
  its input into another layout (sttr_fast/model.py, sttr_fast/ops/reference.py);
- ``compile=True`` adds ``torch.compile`` (a one-time cost of tens of seconds on a small CPU).

Speed: ``bench/bench_inference.py``. Accuracy contract (tests/test_predict.py): against the float32
eager model, logits relative error <= 2e-2 and top-1 agreement >= 99 % on the demo's validation
set (bf16 measured about 4e-3).
"""
from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from .attention import ProjectionShortcut, SpatialSelfAttention
from .model import STTR, GraphConvolution, TemporalConvolution

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN then runs bf16 convolutions and matrix
    products about twice as fast as float32; without it bf16 is emulated and slower)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _fold(conv_weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of ``bn`` in eval mode, shaped to scale conv weights and biases."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    return scale.view(-1, *[1] * (conv_weight.dim() - 1)), shift


@torch.no_grad()
def _fold_into_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale, shift = _fold(conv.weight, bn)
    conv.weight.mul_(scale)
    conv.bias.copy_(conv.bias * scale.flatten() + shift)


@torch.no_grad()
def fold_batch_norms(model: STTR) -> int:
    """Fold, in place, every BatchNorm that follows a convolution directly into it and replace it
    with an identity; ``model`` must be in eval mode. Returns how many were folded."""
    if model.training:
        raise ValueError("fold_batch_norms needs a model in eval mode (training BatchNorm "
                         "normalises by batch statistics, which no weight can hold)")
    folded = 0
    for module in model.modules():
        if isinstance(module, GraphConvolution) and isinstance(module.bn, nn.BatchNorm2d):
            # The convolutions' outputs are summed before the BatchNorm: scale every weight and
            # every bias, and add the shift once.
            scale, shift = _fold(module.convs[0].weight, module.bn)
            for index, conv in enumerate(module.convs):
                conv.weight.mul_(scale)
                conv.bias.copy_(conv.bias * scale.flatten() + (shift if index == 0 else 0))
        elif isinstance(module, (TemporalConvolution, ProjectionShortcut)) and isinstance(module.bn, nn.BatchNorm2d):
            _fold_into_conv(module.conv, module.bn)
        elif (isinstance(module, SpatialSelfAttention) and module.in_channels != module.out_channels
              and isinstance(module.bn, nn.BatchNorm2d)):
            _fold_into_conv(module.out_proj, module.bn)  # no residual between them
        else:
            continue
        module.bn = nn.Identity()
        folded += 1
    return folded


class InferenceModel(nn.Module):
    """A frozen, folded copy of ``model`` that maps (N, C, T, V, M) inputs to float32 logits;
    always in eval mode (``train()`` does not change that)."""

    def __init__(self, model: STTR, device: torch.device | str = "cpu", precision: str = "auto",
                 compile: bool = False, fold: bool = True):
        super().__init__()
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        model = copy.deepcopy(model).eval().to(self.device)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.folded = fold_batch_norms(model) if fold else 0
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        model = model.to(self.dtype)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        # Kept out of the module tree, so the compiled wrapper does not list the weights twice.
        self.__dict__["_run"] = torch.compile(model) if compile else model

    def train(self, mode: bool = True) -> InferenceModel:
        return super().train(False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x.to(self.device, self.dtype)).float()
