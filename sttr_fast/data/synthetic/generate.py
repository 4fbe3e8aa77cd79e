"""Sampling one synthetic action: timing, amplitude, body size, placement, view and sensor noise.

Every sample draws from its own generator seeded by (seed, stream, index), so a sample is the same
whichever order or process builds it.
"""
from __future__ import annotations

import math

import numpy as np

from .actions import ACTIONS
from .body import (NUM_JOINTS, SPINE_MID, forward_kinematics, mirrored, rotation_x, rotation_y,
                   rotation_z, stand_on_floor)

NUM_CLASSES = len(ACTIONS)
LEFT_HANDED = 0.3  # share of one-person samples done with the other side of the body


def sample_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def action_in_world(label: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """(persons, frames, 25, 3) positions in metres of action ``label``: floor at y = 0, the
    first person near the origin facing about -z, with per-sample variation and noise."""
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"synthetic action label must be in [0, {NUM_CLASSES}), got {label}")
    if frames < 2:
        raise ValueError(f"a synthetic action needs at least 2 frames, got {frames}")
    time = np.linspace(0.0, 1.0, frames)
    start = rng.uniform(0.0, 0.25)
    duration = rng.uniform(0.65, 1.0 - start)  # slower or faster, earlier or later
    progress = np.clip((time - start) / duration, 0.0, 1.0)
    amplitude = rng.uniform(0.8, 1.2)
    persons = ACTIONS[label][1](rng, progress, amplitude)
    view = rotation_y(rng.uniform(-0.5, 0.5))
    shift = np.array([rng.uniform(-0.3, 0.3), 0.0, rng.uniform(-0.3, 0.3)])
    noise = rng.uniform(0.004, 0.015)
    left_handed = len(persons) == 1 and rng.random() < LEFT_HANDED
    positions = []
    for person in persons:
        _add_idle_sway(person, time, rng)
        bone_scale = rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, NUM_JOINTS)
        body = forward_kinematics(person.rotations, frames, bone_scale)
        if left_handed:
            body = mirrored(body)
        body = stand_on_floor(body, np.broadcast_to(person.lift, (frames,)))
        floor = np.broadcast_to(np.asarray(person.floor_position, dtype=np.float64), (frames, 2))
        placed = body @ rotation_y(person.facing).T + np.stack(
            [floor[:, 0], np.zeros(frames), floor[:, 1]], axis=-1)[:, None, :]
        positions.append((placed @ view.T + shift)
                         + rng.normal(0.0, noise, placed.shape))
    return np.stack(positions)


def _add_idle_sway(person, time: np.ndarray, rng: np.random.Generator) -> None:
    """Nobody stands still: a slow sway of the trunk at a random rate."""
    rate, phase = rng.uniform(0.3, 1.0), rng.uniform(0, 2 * math.pi)
    sway = 0.04 * np.sin(2 * math.pi * rate * time + phase)
    person.turn(SPINE_MID, rotation_z(sway) @ rotation_x(0.5 * sway))


def centred_sample(world: np.ndarray, num_person: int = 2) -> np.ndarray:
    """float32 (3, T, 25, num_person), the origin at the first person's spine mid in frame 0."""
    persons, frames = world.shape[:2]
    sample = np.zeros((3, frames, NUM_JOINTS, num_person), dtype=np.float32)
    kept = world[:num_person] - world[0, 0, SPINE_MID]
    sample[..., :len(kept)] = kept.transpose(3, 1, 2, 0)
    return sample
