"""Score files (sample name -> logits, the 2s-AGCN / ST-TR pickle layout) and their fusion."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ..data.pickles import load_data_pickle
from .metrics import summarise

# Stream weights of the usual ensembles: ST-TR adds its two streams' logits; the joint/bone
# "4s" ensemble of the MS-G3D / CTR-GCN family weights joint, bone, joint motion, bone motion.
PRESET_WEIGHTS = {"st-tr": (1.0, 1.0), "2s": (1.0, 1.0), "4s": (0.6, 0.6, 0.4, 0.4)}


def write_scores(path: Path, names: list[str], logits: torch.Tensor) -> None:
    scores = {name: row for name, row in zip(names, logits.float().numpy())}
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        pickle.dump(scores, file)
    temporary.replace(path)


def read_scores(path) -> dict[str, np.ndarray]:
    scores = load_data_pickle(Path(path), "score file")
    if isinstance(scores, (list, tuple)) and len(scores) == 2:  # some forks store (names, scores)
        scores = dict(zip(scores[0], scores[1]))
    if not isinstance(scores, dict) or not scores:
        raise ValueError(f"{path} is not a score file: expected a non-empty dict of "
                         "sample name -> scores")
    return {str(name): np.asarray(value, dtype=np.float64) for name, value in scores.items()}


def read_labels(path) -> tuple[list[str], list[int]]:
    content = load_data_pickle(Path(path), "label file")
    if not (isinstance(content, (list, tuple)) and len(content) == 2
            and len(content[0]) == len(content[1])):
        raise ValueError(f"{path} is not a label file: expected (sample names, labels)")
    return [str(name) for name in content[0]], [int(label) for label in content[1]]


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
            raise ValueError(f"{path} has no scores for {len(missing)} labelled samples, "
                             f"e.g. {missing[:3]}")
        stream = torch.from_numpy(np.stack([scores[name] for name in names]))
        if fused is not None and stream.shape != fused.shape:
            raise ValueError(f"{path} has {stream.shape[1]} classes, the files before it "
                             f"{fused.shape[1]}")
        if softmax:
            stream = stream.softmax(dim=1)
        fused = weight * stream if fused is None else fused + weight * stream
    result = summarise(fused, torch.tensor(labels))
    result.update(names=names, logits=fused)
    return result
