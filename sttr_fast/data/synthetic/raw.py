"""Raw NTU ``.skeleton`` folders made of synthetic actions, for testing and timing ``prepare``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..ntu_samples import parse_sample_name
from ..skeleton_file import write_skeleton
from .generate import NUM_CLASSES, action_in_world, sample_rng

RAW_STREAM = 2  # generator stream of raw files, apart from the dataset's train and val


def ntu_names(count: int, seed: int = 0, last_setup: int = 17, last_action: int = 60) -> list[str]:
    """``count`` distinct NTU sample names drawn over setups, cameras, performers and actions."""
    rng = np.random.default_rng([seed, RAW_STREAM])
    names: set[str] = set()
    while len(names) < count:
        setup, camera, performer = rng.integers(1, last_setup + 1), rng.integers(1, 4), \
            rng.integers(1, 41)
        replication, action = rng.integers(1, 3), rng.integers(1, last_action + 1)
        names.add(f"S{setup:03d}C{camera:03d}P{performer:03d}R{replication:03d}A{action:03d}")
    return sorted(names)


def camera_space(world: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kinect camera coordinates of world positions: the sensor about 1 m above the floor and
    about 3 m in front of the persons, looking along +z, y up."""
    height, distance = rng.uniform(0.8, 1.2), rng.uniform(2.5, 3.5)
    return world + np.array([0.0, -height, distance])


def write_raw_dataset(directory, names, seed: int = 0, frames=(60, 120),
                      line_ending: str = "\n", significant_digits: int | None = 7) -> list[Path]:
    """Write ``<name>.skeleton`` for each NTU name: the synthetic action (A - 1) mod 12 with a
    length drawn from ``frames`` (inclusive range), one or two bodies per frame, numbers with the
    dataset's 7 significant digits (None: exact). Returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, name in enumerate(names):
        sample = parse_sample_name(name)
        if sample is None:
            raise ValueError(f"{name!r} is not an NTU sample name SsssCcccPpppRrrrAaaa")
        rng = sample_rng(seed, RAW_STREAM, index)
        length = int(rng.integers(frames[0], frames[1] + 1))
        world = action_in_world(sample.label % NUM_CLASSES, length, rng)
        bodies = camera_space(world, rng).transpose(1, 0, 2, 3)  # (frames, persons, 25, 3)
        path = directory / sample.file_name
        write_skeleton(path, list(bodies), line_ending=line_ending,
                       significant_digits=significant_digits)
        paths.append(path)
    return paths
