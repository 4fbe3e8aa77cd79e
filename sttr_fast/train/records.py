"""What a run leaves in its work dir: text log, per-epoch CSV, TensorBoard scalars, PNG plots."""
from __future__ import annotations

import csv
import logging
import math
import sys
from pathlib import Path

import torch

EPOCH_COLUMNS = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                 "epoch_seconds", "samples_per_second")


def make_logger(work_dir: Path | None, name: str = "sttr") -> logging.Logger:
    """Console logger, plus ``work_dir/log.txt`` when given (appended to on resume)."""
    logger = logging.getLogger(f"{name}.{id(work_dir)}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if work_dir is not None:
        file = logging.FileHandler(work_dir / "log.txt", encoding="utf-8")
        file.setFormatter(formatter)
        logger.addHandler(file)
    return logger


class EpochRecords:
    """Per-epoch metrics: kept in memory (and in checkpoints), mirrored to CSV, TensorBoard, plots."""

    def __init__(self, work_dir: Path, rows: list[dict] | None = None):
        self.work_dir = work_dir
        self.rows = list(rows or [])
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(work_dir / "tensorboard"),
                                    purge_step=len(self.rows) + 1 if self.rows else None)

    def add(self, row: dict) -> None:
        self.rows.append({column: row.get(column, math.nan) for column in EPOCH_COLUMNS})
        epoch = row["epoch"]
        for key, value in row.items():
            if key != "epoch" and value is not None and not math.isnan(value):
                self.writer.add_scalar(key.replace("_", "/", 1), value, epoch)
        self.writer.flush()
        self._write_csv()
        self.plot()

    def _write_csv(self) -> None:
        temporary = self.work_dir / "metrics.csv.tmp"
        with open(temporary, "w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=EPOCH_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        temporary.replace(self.work_dir / "metrics.csv")

    def plot(self) -> None:
        """loss.png, accuracy.png and lr.png over epochs."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        epochs = [row["epoch"] for row in self.rows]
        panels = {
            "loss": (("train_loss", "train"), ("val_loss", "validation")),
            "accuracy": (("train_top1", "train top-1"), ("val_top1", "validation top-1"),
                         ("val_top5", "validation top-5")),
            "lr": (("lr", "learning rate"),),
        }
        for name, series in panels.items():
            figure, axis = plt.subplots(figsize=(6, 4))
            for column, label in series:
                points = [(e, row[column]) for e, row in zip(epochs, self.rows)
                          if not math.isnan(row[column])]
                if points:
                    axis.plot(*zip(*points), marker="o", markersize=3, label=label)
            axis.set_xlabel("epoch")
            axis.set_ylabel({"loss": "cross-entropy", "accuracy": "%", "lr": "lr"}[name])
            if name == "lr":
                axis.set_yscale("log")
            axis.grid(alpha=0.3)
            axis.legend()
            figure.tight_layout()
            figure.savefig(self.work_dir / f"{name}.png", dpi=100)
            plt.close(figure)

    def close(self) -> None:
        self.writer.close()


def plot_confusion(matrix: torch.Tensor, path: Path, class_names: list[str] | None = None) -> None:
    """Row-normalised confusion matrix (true class down, predicted class across) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    counts = matrix.double()
    normalised = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, min(0.18 * matrix.shape[0] + 2, 24.0))
    figure, axis = plt.subplots(figsize=(size, size))
    image = axis.imshow(normalised.numpy(), cmap="Blues", vmin=0, vmax=1)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if class_names is not None and len(class_names) <= 30:
        axis.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
        axis.set_yticks(range(len(class_names)), class_names, fontsize=7)
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
