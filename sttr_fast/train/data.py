"""Datasets and batch order for training and evaluation, from the ``data`` config section."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import AGCNDataset, Augmentation, CTRGCNDataset, PysklDataset, SyntheticActionDataset
from ..data.synthetic.body import NUM_JOINTS as SYNTHETIC_JOINTS
from ..graph import Graph, graph_config_label, graph_from_config
from .config import Config, ConfigError

PREPARE_HINT = ("`sttr prepare` writes the 2s-AGCN arrays and labels from the raw NTU skeletons, "
                "e.g. sttr prepare --dataset ntu60 --raw-dir nturgb+d_skeletons --out-dir data/ntu60")


def _required(config: Config, key: str) -> str:
    """The file named by ``data.<key>``, which must exist."""
    value = getattr(config.data, key)
    if not value:
        raise ConfigError(f"data.format={config.data.format!r} needs data.{key}")
    path = Path(value)
    if not path.exists():
        hint = f"; {PREPARE_HINT}" if config.data.format == "agcn" else ""
        raise ConfigError(f"data.{key}: {path.resolve()} does not exist{hint}")
    if not path.is_file():
        raise ConfigError(f"data.{key}: {path.resolve()} is a directory, expected a file")
    return value


def model_graph(config: Config) -> Graph:
    """The skeleton graph of ``model.graph`` (load_config has checked it)."""
    return graph_from_config(config.model.graph)


def bone_parents(config: Config) -> tuple[int, ...] | None:
    """The parents bones are computed with, if ``data.modality`` computes bones from joints."""
    if config.data.modality not in ("bone", "joint_bone", "bone_motion"):
        return None
    try:
        return model_graph(config).bone_parents()
    except ValueError as error:
        raise ConfigError(f"model.graph: {error} (data.modality={config.data.modality!r})") from None


def _check_samples(dataset, config: Config, split: str, training: bool) -> None:
    """Samples the network can take: the graph's joints, data.num_person bodies, frames a multiple
    of 4."""
    if len(dataset) == 0:
        raise ConfigError(f"the {split} data {dataset.source} holds no samples")
    _, frames, joints, bodies = np.asarray(dataset.data[0]).shape
    if training and config.data.augment.window:
        frames = config.data.augment.window
    problems = []
    graph_joints = model_graph(config).num_joints
    if joints != graph_joints:
        problems.append(f"{joints} joints per body where model.graph "
                        f"{graph_config_label(config.model.graph)} has {graph_joints}")
    if bodies != config.data.num_person:
        problems.append(f"{bodies} bodies per sample where data.num_person={config.data.num_person}")
    if frames == 0 or frames % 4:
        problems.append(f"{frames} frames per sample (the network needs a positive multiple of 4; "
                        "set data.augment.window to crop or pad)")
    if problems:
        raise ConfigError(f"the {split} data {dataset.source} has " + " and ".join(problems))


def build_dataset(config: Config, split: str, training: bool = False):
    """The ``split`` ("train" or "val") dataset; augmentations only when ``training``."""
    data = config.data
    augment = data.augment
    augmentation = Augmentation(random_shift=augment.random_shift, window=augment.window or None,
                                random_move=augment.random_move,
                                rotation_degrees=augment.rotation_degrees) if training else None
    parents = bone_parents(config)
    if data.format == "synthetic":
        if model_graph(config).num_joints != SYNTHETIC_JOINTS:
            raise ConfigError(f"data.format='synthetic' makes {SYNTHETIC_JOINTS}-joint NTU RGB+D "
                              f"skeletons, but model.graph {graph_config_label(config.model.graph)} "
                              f"has {model_graph(config).num_joints} joints")
        dataset = SyntheticActionDataset(
            num_samples=data.synthetic_train if split == "train" else data.synthetic_val,
            frames=data.frames, seed=data.synthetic_seed, split=split,
            num_classes=config.model.num_classes, modality=data.modality, augmentation=augmentation,
            bone_parents=parents)
    elif data.format == "agcn":
        dataset = AGCNDataset(_required(config, f"{split}_data"), _required(config, f"{split}_label"),
                              modality=data.modality, augmentation=augmentation,
                              bone_parents=parents)
    elif data.format == "pyskl":
        annotation = data.val_data if split == "val" and data.val_data else _required(config, "train_data")
        dataset = PysklDataset(annotation, f"{data.benchmark}_{split}", modality=data.modality,
                               frames=data.frames, num_person=data.num_person,
                               augmentation=augmentation, bone_parents=parents)
    else:
        archive = data.val_data if split == "val" and data.val_data else _required(config, "train_data")
        dataset = CTRGCNDataset(archive, "train" if split == "train" else "test",
                                modality=data.modality, augmentation=augmentation,
                                bone_parents=parents)
    if dataset.num_classes > config.model.num_classes:
        raise ConfigError(f"the {split} data {dataset.source} has labels up to "
                          f"{dataset.num_classes - 1} but model.num_classes="
                          f"{config.model.num_classes}")
    _check_samples(dataset, config, split, training)
    return dataset


class StepBatches(torch.utils.data.Sampler):
    """This process's micro-batches for one epoch.

    Each epoch draws a permutation from ``seed + epoch`` and cuts it into global steps of
    ``batch_size * world_size * accumulate`` samples (an incomplete last step is dropped). Within a
    step, process ``rank``'s micro-batch ``a`` is the slice number ``rank * accumulate + a``, so
    2 processes x 1 micro-batch see exactly the samples of 1 process x 2 accumulated micro-batches.
    """

    def __init__(self, size: int, batch_size: int, world_size: int = 1, rank: int = 0,
                 accumulate: int = 1, seed: int = 0):
        self.size, self.batch_size, self.world_size, self.rank = size, batch_size, world_size, rank
        self.accumulate, self.seed, self.epoch = accumulate, seed, 0
        self.steps = size // (batch_size * world_size * accumulate)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.accumulate

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        step_size = self.batch_size * self.world_size * self.accumulate
        for step in range(self.steps):
            chunk = order[step * step_size:(step + 1) * step_size]
            for micro in range(self.accumulate):
                start = (self.rank * self.accumulate + micro) * self.batch_size
                yield chunk[start:start + self.batch_size].tolist()
