"""Datasets and batch order for training and evaluation, from the ``data`` config section."""
from __future__ import annotations

import torch

from ..data import AGCNDataset, Augmentation, CTRGCNDataset, PysklDataset, SyntheticActionDataset
from .config import Config, ConfigError


def _required(config: Config, key: str) -> str:
    value = getattr(config.data, key)
    if not value:
        raise ConfigError(f"data.format={config.data.format!r} needs data.{key}")
    return value


def build_dataset(config: Config, split: str, training: bool = False):
    """The ``split`` ("train" or "val") dataset; augmentations only when ``training``."""
    data = config.data
    augment = data.augment
    augmentation = Augmentation(random_shift=augment.random_shift, window=augment.window or None,
                                random_move=augment.random_move,
                                rotation_degrees=augment.rotation_degrees) if training else None
    if data.format == "synthetic":
        dataset = SyntheticActionDataset(
            num_samples=data.synthetic_train if split == "train" else data.synthetic_val,
            frames=data.frames, seed=data.synthetic_seed, split=split,
            num_classes=config.model.num_classes, modality=data.modality, augmentation=augmentation)
    elif data.format == "agcn":
        dataset = AGCNDataset(_required(config, f"{split}_data"), _required(config, f"{split}_label"),
                              modality=data.modality, augmentation=augmentation)
    elif data.format == "pyskl":
        annotation = data.val_data if split == "val" and data.val_data else _required(config, "train_data")
        dataset = PysklDataset(annotation, f"{data.benchmark}_{split}", modality=data.modality,
                               frames=data.frames, num_person=data.num_person,
                               augmentation=augmentation)
    else:
        archive = data.val_data if split == "val" and data.val_data else _required(config, "train_data")
        dataset = CTRGCNDataset(archive, "train" if split == "train" else "test",
                                modality=data.modality, augmentation=augmentation)
    if dataset.num_classes > config.model.num_classes:
        raise ConfigError(f"the {split} data has labels up to {dataset.num_classes - 1} but "
                          f"model.num_classes={config.model.num_classes}")
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
