"""Score files (sample name -> logits, the 2s-AGCN / ST-TR pickle layout) and their fusion."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..data.pickles import load_data_pickle, summary
from .metrics import summarise

# Stream weights of the usual ensembles: ST-TR adds its two streams' logits; the joint/bone
# "4s" ensemble of the MS-G3D / CTR-GCN family weights joint, bone, joint motion, bone motion.
PRESET_WEIGHTS = {"st-tr": (1.0, 1.0), "2s": (1.0, 1.0), "4s": (0.6, 0.6, 0.4, 0.4)}


def write_scores(path: Path, names: list[str], logits: torch.Tensor) -> None:
    scores = {name: row for name, row in zip(names, logits.float().numpy())}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        pickle.dump(scores, file)
    temporary.replace(path)


def _is_label_pair(content) -> bool:
    """(names, integer labels): what a label file holds."""
    try:
        labels = np.asarray(content[1])
    except (TypeError, ValueError):
        return False
    return labels.ndim == 1 and len(labels) > 0 and np.issubdtype(labels.dtype, np.integer)


def read_scores(path) -> dict[str, np.ndarray]:
    """A score file: the 2s-AGCN / ST-TR dict ``{sample name: class scores}`` or a pair
    ``(names, scores (N, classes))``. Every sample must have a vector of the same length."""
    path = Path(path)
    content = load_data_pickle(path, "score file")
    expected = ("expected a dict of sample name -> class scores (as sttr test writes) or a pair "
                "(names, scores)")
    if isinstance(content, (list, tuple)) and len(content) == 2 and not isinstance(content[0], str):
        if _is_label_pair(content):
            raise ValueError(f"{path} holds sample names and integer labels: a label file, not "
                             "scores; pass it with --labels")
        names, rows = content
        try:
            rows = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: the scores of its (names, scores) pair are not numbers of "
                             f"one shape ({error}); {expected}") from error
        if rows.ndim != 2 or len(rows) != len(names):
            raise ValueError(f"{path}: (names, scores) must pair {len(names)} names with a "
                             f"({len(names)}, classes) array; the scores have shape {rows.shape}")
        content = dict(zip(names, rows))
    if not isinstance(content, dict):
        raise ValueError(f"{path} is not a score file: {expected}; it holds {summary(content)}")
    if not content:
        raise ValueError(f"{path} is an empty score file: {expected}")
    scores, first = {}, None
    for name, value in content.items():
        try:
            row = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: the scores of sample {name!r} are not numbers "
                             f"({error})") from error
        if row.ndim != 1 or row.size < 2:
            raise ValueError(f"{path}: sample {name!r} has scores of shape {row.shape}; {expected} "
                             "with one score per class")
        if first is None:
            first = (name, row.size)
        elif row.size != first[1]:
            raise ValueError(f"{path}: sample {name!r} has {row.size} class scores but "
                             f"{first[0]!r} has {first[1]}")
        if not np.isfinite(row).all():
            raise ValueError(f"{path}: sample {name!r} has non-finite scores {row.tolist()}")
        scores[str(name)] = row
    return scores


def read_labels(path) -> tuple[list[str], list[int]]:
    path = Path(path)
    content = load_data_pickle(path, "label file")
    expected = "expected a pair (sample names, integer labels) of equal length"
    if isinstance(content, dict):
        raise ValueError(f"{path} is not a label file: {expected}; it holds {summary(content)} "
                         "(a score file? pass it before --labels)")
    if not (isinstance(content, (list, tuple)) and len(content) == 2
            and all(hasattr(part, "__len__") for part in content)
            and len(content[0]) == len(content[1])):
        raise ValueError(f"{path} is not a label file: {expected}; it holds {summary(content)}")
    if not _is_label_pair(content):
        raise ValueError(f"{path} is not a label file: its second item holds "
                         f"{np.asarray(content[1]).dtype} values of shape "
                         f"{np.asarray(content[1]).shape}, not integer labels")
    labels = [int(label) for label in content[1]]
    if min(labels) < 0:
        raise ValueError(f"{path}: labels must be 0-based class indices, found {min(labels)}")
    return [str(name) for name in content[0]], labels


def fuse(score_paths, label_path, weights=None, softmax: bool = False) -> dict:
    """Weighted sum of the streams' scores per labelled sample; top-1/top-5 of the fusion."""
    weights = list(weights) if weights is not None else [1.0] * len(score_paths)
    if len(weights) != len(score_paths):
        raise ValueError(f"{len(score_paths)} score files but {len(weights)} weights")
    names, labels = read_labels(label_path)
    fused = None
    for path, weight in zip(score_paths, weights):
        scores = read_scores(path)
        missing = [name for name in names if name not in scores]
        if missing:
            raise ValueError(f"{path} has no scores for {len(missing)} of the {len(names)} "
                             f"samples in {label_path}, e.g. {missing[:3]}")
        stream = torch.from_numpy(np.stack([scores[name] for name in names]))
        if fused is not None and stream.shape != fused.shape:
            raise ValueError(f"{path} has {stream.shape[1]} classes, {score_paths[0]} has "
                             f"{fused.shape[1]}")
        if max(labels) >= stream.shape[1]:
            raise ValueError(f"{label_path} has label {max(labels)} but {path} scores only "
                             f"{stream.shape[1]} classes (0 to {stream.shape[1] - 1})")
        if softmax:
            stream = stream.softmax(dim=1)
        fused = weight * stream if fused is None else fused + weight * stream
    result = summarise(fused, torch.tensor(labels))
    result.update(names=names, logits=fused)
    return result
