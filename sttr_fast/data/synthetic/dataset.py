"""The built-in synthetic action dataset, as arrays and as a torch Dataset."""
from __future__ import annotations

import numpy as np

from ..augmentation import Augmentation
from ..datasets import SkeletonDataset
from .actions import ACTION_NAMES
from .generate import NUM_CLASSES, action_in_world, centred_sample, sample_rng

SPLIT_STREAMS = {"train": 0, "val": 1}


def generate_actions(num_samples: int, frames: int = 64, seed: int = 0, split: str = "train",
                     num_classes: int = NUM_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """``(data float32 (N, 3, frames, 25, 2), labels int64 (N,))``: sample i shows action
    ``i % num_classes`` (so classes are balanced), centred on its first person's spine mid in
    frame 0. Deterministic in (seed, split, i); train and val never share a sample."""
    if split not in SPLIT_STREAMS:
        raise ValueError(f"synthetic split must be one of {sorted(SPLIT_STREAMS)}, got {split!r}")
    if not 1 <= num_classes <= NUM_CLASSES:
        raise ValueError(f"num_classes must be in [1, {NUM_CLASSES}], got {num_classes}")
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    labels = np.arange(num_samples, dtype=np.int64) % num_classes
    data = np.zeros((num_samples, 3, frames, 25, 2), dtype=np.float32)
    for index, label in enumerate(labels):
        world = action_in_world(int(label), frames, sample_rng(seed, SPLIT_STREAMS[split], index))
        data[index] = centred_sample(world)
    return data, labels


class SyntheticActionDataset(SkeletonDataset):
    """``num_samples`` procedurally generated actions (``ACTION_NAMES``: wave, clap, kick, bow,
    jump, sit down, stand up, punch, march, drink, hug, handshake), generated once in memory.
    Items are ``(x (C, frames, 25, 2), label)`` in the chosen modality."""

    def __init__(self, num_samples: int = 1200, frames: int = 64, seed: int = 0,
                 split: str = "train", num_classes: int = NUM_CLASSES, modality: str = "joint",
                 augmentation: Augmentation | None = None, bone_parents=None):
        data, labels = generate_actions(num_samples, frames, seed, split, num_classes)
        names = [f"synthetic_{split}_{index:06d}_{ACTION_NAMES[label].replace(' ', '_')}"
                 for index, label in enumerate(labels)]
        super().__init__(data, labels, names, stored="joint", modality=modality,
                         augmentation=augmentation, source=f"synthetic[{split}]",
                         bone_parents=bone_parents)
        self.class_names = ACTION_NAMES[:num_classes]
