"""2s-AGCN's pre-normalisation of one sample (docs/data.md §4, steps 1-4), vectorised.

Empty means all coordinates zero (2s-AGCN tests that they sum to zero; the two differ only on
coordinates that cancel exactly). Rotating an empty frame or joint leaves it zero, so the rotations
apply to everything at once.
"""
from __future__ import annotations

import numpy as np

SPINE_BASE, SPINE_MID, LEFT_SHOULDER, RIGHT_SHOULDER = 0, 1, 4, 8
Z_AXIS = np.array([0.0, 0.0, 1.0])
X_AXIS = np.array([1.0, 0.0, 0.0])
_NEGLIGIBLE = 1e-6


def pre_normalise(sample: np.ndarray) -> np.ndarray:
    """A new float32 (C=3, T, V, M) array: loop-padded, centred on person 0's spine mid, rotated so
    person 0's frame-0 spine (joint 1 - joint 0) points along +z, then its shoulders (joint 8 -
    joint 4) along +x. All-zero persons and samples stay zero."""
    sample = np.asarray(sample)
    if sample.ndim != 4 or sample.shape[0] != 3 or sample.shape[2] <= RIGHT_SHOULDER:
        raise ValueError(f"pre_normalise expects one sample (3, T, V>{RIGHT_SHOULDER}, M), "
                         f"got shape {sample.shape}")
    persons = np.ascontiguousarray(sample.transpose(3, 1, 2, 0), dtype=np.float32)  # (M, T, V, 3)
    if not persons.any():
        return sample.astype(np.float32, copy=True)
    for person in persons:
        loop_pad(person)
    centre_on_spine(persons)
    spine = persons[0, 0, SPINE_MID] - persons[0, 0, SPINE_BASE]
    persons = rotate(persons, rotation_onto(spine, Z_AXIS))
    shoulders = persons[0, 0, RIGHT_SHOULDER] - persons[0, 0, LEFT_SHOULDER]
    persons = rotate(persons, rotation_onto(shoulders, X_AXIS))
    return np.ascontiguousarray(persons.transpose(3, 1, 2, 0))


def loop_pad(person: np.ndarray) -> None:
    """In place on one person (T, V, 3): if frame 0 is empty, move the non-empty frames to the
    front in order; then repeat frames 0..f-1 over the empty tail that starts at f."""
    non_empty = person.any(axis=(1, 2))
    if not non_empty.any():
        return
    if not non_empty[0]:
        kept = person[non_empty]
        person[:] = 0
        person[:len(kept)] = kept
        non_empty = np.zeros_like(non_empty)
        non_empty[:len(kept)] = True
    tail_start = len(non_empty) - int(np.argmax(non_empty[::-1]))
    if tail_start < len(person):
        person[tail_start:] = person[np.arange(len(person) - tail_start) % tail_start]


def centre_on_spine(persons: np.ndarray) -> None:
    """In place on (M, T, V, 3): subtract person 0's spine mid frame by frame from every joint that
    is not all zero."""
    centre = persons[0, :, SPINE_MID:SPINE_MID + 1].copy()  # (T, 1, 3)
    present = persons.any(axis=-1, keepdims=True)
    np.subtract(persons, centre, out=persons, where=present)


def rotation_onto(vector: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The float64 right-handed rotation about ``vector x target`` by the angle between them;
    identity when the axis or the angle is negligible (so an antiparallel vector is not flipped)."""
    vector = np.asarray(vector, dtype=np.float64)
    if np.abs(vector).sum() < _NEGLIGIBLE:
        return np.eye(3)
    axis = np.cross(vector, target)
    cosine = np.dot(vector / np.linalg.norm(vector), target / np.linalg.norm(target))
    angle = np.arccos(np.clip(cosine, -1.0, 1.0))
    if np.abs(axis).sum() < _NEGLIGIBLE or abs(angle) < _NEGLIGIBLE:
        return np.eye(3)
    axis = axis / np.linalg.norm(axis)
    cross = np.array([[0.0, -axis[2], axis[1]],
                      [axis[2], 0.0, -axis[0]],
                      [-axis[1], axis[0], 0.0]])
    # Rodrigues' formula.
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * (cross @ cross)


def rotate(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """float32 ``matrix @ p`` for every point p on the last axis, computed in float64."""
    return (points.astype(np.float64) @ matrix.T).astype(np.float32)
