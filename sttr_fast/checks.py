"""Input checks shared by the public modules: errors name what was expected and what came."""
from __future__ import annotations

import torch
from torch import nn


def check_input(module: nn.Module, x, shape_doc: str, expected: dict[int, int]) -> None:
    """Check that ``x`` is a floating tensor of rank ``len(shape_doc)`` on ``module``'s device.

    ``expected`` maps axis index to the required size; ``shape_doc`` names the axes, e.g. "NCTVM".
    """
    name = type(module).__name__
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != len(shape_doc):
        raise ValueError(f"{name}: expected a {len(shape_doc)}-D input ({', '.join(shape_doc)}), "
                         f"got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point input, got {x.dtype}")
    for axis, size in expected.items():
        if x.shape[axis] != size:
            raise ValueError(f"{name}: expected {shape_doc[axis]}={size} at axis {axis}, "
                             f"got {x.shape[axis]} (input shape {tuple(x.shape)})")
    param = next(module.parameters(), None)
    if param is not None and param.device != x.device:
        raise ValueError(f"{name}: input is on {x.device} but the module's parameters are on "
                         f"{param.device}; move one of them with .to(device)")
