"""Training-time augmentations of the ST-GCN family and a random 3-D rotation, on (C, T, V, M).

Random numbers come from torch's generator (or the one passed in): DataLoader seeds every worker
differently and ``torch.manual_seed`` reproduces a run, which numpy's global state would not.
Geometric transforms act on every group of 3 channels (x, y, z) alike and keep absent (all-zero)
joints at zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MOVE_ANGLES_DEGREES = (-10.0, -5.0, 0.0, 5.0, 10.0)
MOVE_SCALES = (0.9, 1.0, 1.1)
MOVE_TRANSLATIONS = (-0.2, -0.1, 0.0, 0.1, 0.2)


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations to apply, in ST-GCN's order: shift, choose (crop/pad to ``window``
    frames), move, then rotation. The default applies none (as ST-TR's NTU configs)."""

    random_shift: bool = False
    window: int | None = None
    random_move: bool = False
    rotation_degrees: float = 0.0

    def __post_init__(self):
        if self.window is not None and self.window < 1:
            raise ValueError(f"Augmentation window must be a positive frame count, got {self.window}")
        if not 0.0 <= self.rotation_degrees <= 180.0:
            raise ValueError("Augmentation rotation_degrees must be within [0, 180], got "
                             f"{self.rotation_degrees}")

    @property
    def is_identity(self) -> bool:
        return not (self.random_shift or self.window or self.random_move or self.rotation_degrees)

    def __call__(self, x: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        _check_sample(x)
        if self.random_shift:
            x = random_shift(x, generator)
        if self.window:
            x = random_choose(x, self.window, generator)
        if self.random_move:
            x = random_move(x, generator)
        if self.rotation_degrees:
            x = random_rotation(x, self.rotation_degrees, generator)
        return x


def random_shift(x: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
    """Move the span of non-empty frames to a random start, zeros around it."""
    non_empty = np.flatnonzero(x.any(axis=(0, 2, 3)))
    if len(non_empty) == 0:
        return x.copy()
    begin, end = non_empty[0], non_empty[-1] + 1
    start = _randint(x.shape[1] - (end - begin) + 1, generator)
    shifted = np.zeros_like(x)
    shifted[:, start:start + end - begin] = x[:, begin:end]
    return shifted


def random_choose(x: np.ndarray, window: int, generator: torch.Generator | None = None
                  ) -> np.ndarray:
    """A random window of ``window`` frames; a shorter sample is placed at a random offset in
    zeros."""
    frames = x.shape[1]
    if frames == window:
        return x.copy()
    if frames > window:
        start = _randint(frames - window + 1, generator)
        return x[:, start:start + window].copy()
    start = _randint(window - frames + 1, generator)
    padded = np.zeros((x.shape[0], window) + x.shape[2:], dtype=x.dtype)
    padded[:, start:start + frames] = x
    return padded


def random_move(x: np.ndarray, generator: torch.Generator | None = None, move_times: int = 1
                ) -> np.ndarray:
    """ST-GCN's random move: an in-plane rotation, scale and x/y translation, each drawn from
    ST-GCN's candidates at ``move_times + 1`` nodes spread over time and interpolated linearly."""
    frames = x.shape[1]
    nodes = np.append(np.round(np.arange(move_times) * frames / move_times).astype(int), frames)
    angle = np.deg2rad(_interpolated(MOVE_ANGLES_DEGREES, nodes, generator))
    scale = _interpolated(MOVE_SCALES, nodes, generator)
    shift_x = _interpolated(MOVE_TRANSLATIONS, nodes, generator)
    shift_y = _interpolated(MOVE_TRANSLATIONS, nodes, generator)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    moved = x.copy()
    present = x.reshape(-1, 3, *x.shape[1:]).any(axis=1)  # (groups, T, V, M)
    for group, group_present in enumerate(present):
        x_axis, y_axis = 3 * group, 3 * group + 1
        xs, ys = x[x_axis], x[y_axis]
        new_x = cos[:, None, None] * xs - sin[:, None, None] * ys + shift_x[:, None, None]
        new_y = sin[:, None, None] * xs + cos[:, None, None] * ys + shift_y[:, None, None]
        moved[x_axis] = np.where(group_present, new_x, 0)
        moved[y_axis] = np.where(group_present, new_y, 0)
    return moved


def random_rotation(x: np.ndarray, max_degrees: float, generator: torch.Generator | None = None
                    ) -> np.ndarray:
    """Rotate about the x, y and z axes by angles drawn uniformly from ±``max_degrees``."""
    angles = (torch.rand(3, generator=generator, dtype=torch.float64).numpy() * 2 - 1)
    rx, ry, rz = np.deg2rad(angles * max_degrees)
    about_x = np.array([[1, 0, 0], [0, math.cos(rx), -math.sin(rx)], [0, math.sin(rx), math.cos(rx)]])
    about_y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    about_z = np.array([[math.cos(rz), -math.sin(rz), 0], [math.sin(rz), math.cos(rz), 0], [0, 0, 1]])
    matrix = about_z @ about_y @ about_x
    groups = x.reshape(-1, 3, *x.shape[1:]).astype(np.float64)
    rotated = np.einsum("ij,gj...->gi...", matrix, groups)
    return rotated.reshape(x.shape).astype(x.dtype)


def _check_sample(x: np.ndarray) -> None:
    if x.ndim != 4 or x.shape[0] % 3:
        raise ValueError(f"augmentation expects one sample (C, T, V, M) with C a multiple of 3 "
                         f"(x, y, z per group), got shape {x.shape}")


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def _interpolated(candidates, nodes: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
    """Values drawn from ``candidates`` at each node, linearly interpolated between nodes."""
    picks = torch.randint(len(candidates), (len(nodes),), generator=generator).numpy()
    values = np.asarray(candidates, dtype=np.float64)[picks]
    series = np.zeros(nodes[-1])
    for i in range(len(nodes) - 1):
        series[nodes[i]:nodes[i + 1]] = np.linspace(values[i], values[i + 1], nodes[i + 1] - nodes[i])
    return series
