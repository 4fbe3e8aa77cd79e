"""Classification metrics from logits: top-k accuracy, confusion matrix, per-class accuracy."""
from __future__ import annotations

import torch


def top_k_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """How many samples have their label among the k largest logits."""
    k = min(k, logits.shape[1])
    return int((logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum())


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(true class, predicted class) counts."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes ** 2).view(num_classes, num_classes)


def summarise(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """top-1 / top-5 in percent, the confusion matrix and per-class accuracy (NaN for absent classes)."""
    num_classes = logits.shape[1]
    matrix = confusion_matrix(logits.argmax(dim=1), labels, num_classes)
    per_class_total = matrix.sum(dim=1)
    per_class = torch.where(per_class_total > 0,
                            matrix.diagonal() / per_class_total.clamp(min=1) * 100.0,
                            torch.full((num_classes,), float("nan")))
    count = max(len(labels), 1)
    return {
        "top1": top_k_correct(logits, labels, 1) / count * 100.0,
        "top5": top_k_correct(logits, labels, 5) / count * 100.0,
        "confusion": matrix,
        "per_class": per_class,
        "samples": len(labels),
    }
