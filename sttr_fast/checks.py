"""Input checks shared by the public modules: errors name what was expected and what came."""
from __future__ import annotations

import numbers

import torch
from torch import nn


def check_integer(module: str, name: str, value, least: int = 1) -> None:
    """A constructor argument that must be an int (not a bool or a float) of at least ``least``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{module}: {name} must be an integer >= {least}, got {value!r}")


def check_probability(module: str, name: str, value, below_one: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (
            0 <= value < 1 if below_one else 0 <= value <= 1):
        raise ValueError(f"{module}: {name} must be a number in [0, {'1)' if below_one else '1]'}, "
                         f"got {value!r}")


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
    empty = [f"{shape_doc[axis]}=0" for axis, size in enumerate(x.shape) if size == 0]
    if empty:
        raise ValueError(f"{name}: the input has an empty axis ({', '.join(empty)}; shape "
                         f"{tuple(x.shape)}); every axis needs at least one element")
    param = next(module.parameters(), None)
    if param is not None and param.device != x.device:
        raise ValueError(f"{name}: input is on {x.device} but the module's parameters are on "
                         f"{param.device}; move one of them with .to(device)")
    # Under autocast the layers cast for themselves, so a float32 model takes half inputs there.
    if (param is not None and x.dtype != param.dtype
            and not torch.is_autocast_enabled(x.device.type)):
        raise ValueError(f"{name}: input is {x.dtype} but the module's parameters are "
                         f"{param.dtype}; convert one of them (x.to({param.dtype}) or "
                         f"module.to({x.dtype}))")
