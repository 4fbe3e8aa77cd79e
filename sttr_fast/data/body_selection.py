"""From a parsed ``.skeleton`` file to the (C, T, V, M) joint array of 2s-AGCN (docs/data.md §3)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .skeleton_file import NUM_JOINTS, RawSkeleton

MAX_SLOTS = 4  # bodies kept per frame before the energy ranking, as in 2s-AGCN
NUM_PERSON = 2


@dataclass(frozen=True)
class SelectedBodies:
    """``joints`` float32 (3, max_frames, 25, num_person); ``frames_in_file`` before any cut."""

    joints: np.ndarray
    frames_in_file: int

    @property
    def was_cut(self) -> bool:
        return self.frames_in_file > self.joints.shape[1]


def select_bodies(raw: RawSkeleton, max_frames: int = 300,
                  num_person: int = NUM_PERSON) -> SelectedBodies:
    """Slot each frame's bodies by their order in the frame (up to 4 slots; bodyID is ignored),
    keep the ``num_person`` slots of highest energy, most active first, as float32 zero-padded to
    ``max_frames`` (longer sequences are cut to their first ``max_frames`` frames)."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    frames = min(raw.num_frames, max_frames)
    slots = np.zeros((MAX_SLOTS, frames, NUM_JOINTS, 3), dtype=np.float64)
    body_frames, body_slots = raw.body_frames(), raw.body_slots()
    kept = (body_slots < MAX_SLOTS) & (body_frames < frames)
    slots[body_slots[kept], body_frames[kept]] = raw.joints[kept, :, :3]
    energy = np.array([slot_energy(slot) for slot in slots])
    # 2s-AGCN ranks with argsort()[::-1]: among equal energies the later slot comes first.
    ranked = np.argsort(energy, kind="stable")[::-1][:num_person]
    joints = np.zeros((3, max_frames, NUM_JOINTS, num_person), dtype=np.float32)
    joints[:, :frames, :, :len(ranked)] = slots[ranked].transpose(3, 1, 2, 0)
    return SelectedBodies(joints, raw.num_frames)


def slot_energy(slot: np.ndarray) -> float:
    """Sum over x, y, z of the standard deviation over the slot's valid frames and all joints
    pooled; a frame is valid when its coordinates do not sum to 0. ``slot`` is (T, 25, 3)."""
    valid = slot[slot.sum(axis=(1, 2)) != 0]
    if len(valid) == 0:
        return 0.0
    return float(valid.reshape(-1, 3).std(axis=0).sum())
