"""Actions of new recordings from trained checkpoints: what ``sttr predict`` runs.

A checkpoint says how its training data were made (its stored config), and every input goes through
exactly that before the network sees it:

- raw NTU ``.skeleton`` files, for a model trained on NTU data (``data.format`` agcn, pyskl or
  ctrgcn, ``model.graph`` an NTU preset): ``sttr prepare``'s body selection and 2s-AGCN
  pre-normalisation, cut or padded to the model's frames (docs/data.md §3-§4); a model of another
  skeleton refuses them;
- raw ``.skeleton`` files for a model trained on the built-in synthetic actions: the synthetic
  dataset's own preparation (bodies in file order, the origin at the first body's spine mid in
  frame 0, no rotation), the recording resampled to the model's frames, since a synthetic action
  spans its whole window;
- 2s-AGCN arrays (``*_data_<kind>.npy``, already prepared, as ``sttr prepare`` and ``sttr
  convert`` write them; names and labels from ``--labels``), pyskl annotation pickles (one split)
  and CTR-GCN ``.npz`` archives (the test split), read as training read them, with no
  pre-normalisation; their joints must be the model's;

then the checkpoint's modality (joint, bone, ...). Several checkpoints fuse by adding their logits
(or, with ``softmax=True``, their probabilities), as ``sttr ensemble`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_strictly
from .data import AGCNDataset, CTRGCNDataset, PysklDataset, SkeletonDataset
from .data.body_selection import select_bodies
from .data.datasets import _open_npy, _stored_kind
from .data.modalities import derive
from .data.normalisation import pre_normalise
from .data.ntu_samples import parse_sample_name
from .data.skeleton_file import SkeletonParseError, read_skeleton
from .data.synthetic.actions import ACTION_NAMES
from .data.synthetic.generate import NUM_CLASSES as SYNTHETIC_CLASSES
from .data.synthetic.generate import centred_sample
from .graph import graph_config_label
from .inference import InferenceModel
from .train.checkpoints import read_checkpoint
from .train.config import Config, load_config
from .train.data import bone_parents, model_graph
from .train.engine import build_model

NTU_ACTION_NAMES = Path(__file__).parent / "data" / "resources" / "ntu_action_names.txt"
NTU_GRAPHS = ("ntu-rgbd", "ntu-rgbd-pyskl")  # the presets raw .skeleton recordings fit
BATCH = 16


class InputError(ValueError):
    """An input that cannot be predicted; the message names the file and the reason."""


@dataclass
class Predictor:
    """One checkpoint, ready to predict: its config says how inputs are prepared."""
    path: Path
    config: Config
    model: InferenceModel

    @property
    def synthetic(self) -> bool:
        return self.config.data.format == "synthetic"


def _config_of(checkpoint) -> Config:
    """The checkpoint's training config, or for an imported checkpoint (which stores only the
    model's shape) an NTU config with that shape."""
    if checkpoint.config is not None:
        return load_config(None, values=checkpoint.config,
                           values_source=f"the config stored in {checkpoint.path}")
    settings = checkpoint.settings
    if not settings:
        raise InputError(f"{checkpoint.path} stores neither a training config nor the model's "
                         "shape; predict needs a checkpoint of sttr train or sttr import-checkpoint")
    modality = {3: "joint", 6: "joint_bone"}[settings["in_channels"]]
    values = {"model": {"stream": settings["model.stream"], "num_classes": settings["model.num_classes"],
                        "base_channels": settings["model.base_channels"], "graph": settings["model.graph"],
                        "tsa_stride_skips_frames": settings["model.tsa_stride_skips_frames"]},
              "data": {"format": "agcn", "modality": modality, "num_person": settings["data.num_person"]}}
    return load_config(None, values=values, values_source=f"the model settings in {checkpoint.path}")


def load_predictor(path, device="cpu", precision: str = "auto", compile: bool = False) -> Predictor:
    checkpoint = read_checkpoint(path)
    config = _config_of(checkpoint)
    config.model.backend = "auto"
    model = build_model(config)
    load_strictly(model, checkpoint.state, f"checkpoint {checkpoint.path}")
    return Predictor(Path(path), config, InferenceModel(model.eval(), device, precision, compile))


def class_names(predictors: list[Predictor], names_file=None) -> list[str]:
    """The action names of the predictors' classes: from ``names_file`` (one per line), the
    synthetic actions, NTU-60 or NTU-120, or ``class <i>``."""
    counts = {p.config.model.num_classes for p in predictors}
    if len(counts) != 1:
        raise InputError("the checkpoints predict different numbers of classes "
                         f"({', '.join(f'{p.path}: {p.config.model.num_classes}' for p in predictors)}); "
                         "only models of the same classes can be fused")
    count = counts.pop()
    if names_file is not None:
        try:
            names = [line.strip() for line in Path(names_file).read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"--class-names {names_file}: cannot read it ({error})") from None
        if len(names) != count:
            raise InputError(f"--class-names {names_file} has {len(names)} names but the model "
                             f"predicts {count} classes")
        return names
    if all(p.synthetic for p in predictors) and count <= SYNTHETIC_CLASSES:
        return list(ACTION_NAMES[:count])
    if count in (60, 120):
        return NTU_ACTION_NAMES.read_text(encoding="utf-8").splitlines()[:count]
    return [f"class {index}" for index in range(count)]


# --- inputs ---------------------------------------------------------------------------------------

@dataclass
class Source:
    """One input file; ``samples(predictor)`` yields (name, x (C, T, V, M) float32, label or None)
    prepared for that predictor."""
    path: Path
    kind: str          # skeleton, agcn, pyskl, ctrgcn
    labels: Path | None = None
    split: str | None = None

    def samples(self, predictor: Predictor):
        if self.kind == "skeleton":
            yield self._skeleton(predictor)
            return
        dataset = self._dataset(predictor)
        if len(dataset):
            _check_joints(self.path, np.asarray(dataset.data[0]).shape[2], predictor)
        for index in range(len(dataset)):
            x, label = dataset[index]
            has_label = self.kind != "agcn" or self.labels is not None
            yield dataset.sample_name(index), _fit_frames(x.numpy(), predictor), label if has_label else None

    def _skeleton(self, predictor: Predictor):
        config = predictor.config
        if not predictor.synthetic and config.model.graph not in NTU_GRAPHS:
            # 2s-AGCN's pre-normalisation is defined on NTU's joints (spine, shoulders).
            raise InputError(f"{self.path} is a raw NTU RGB+D recording but the checkpoint's model "
                             f"is built for model.graph {graph_config_label(config.model.graph)}; "
                             "give it arrays of its own skeleton (sttr convert writes them)")
        try:
            raw = read_skeleton(self.path)
        except SkeletonParseError as error:
            raise InputError(str(error)) from None
        if raw.num_frames == 0:
            raise InputError(f"{self.path}: the file holds no frames")
        if predictor.synthetic:
            joints = _synthetic_preparation(raw, config.data.frames, config.data.num_person)
        else:
            selected = select_bodies(raw, max_frames=config.data.frames, num_person=config.data.num_person)
            joints = pre_normalise(selected.joints)
        x = derive(joints, "joint", config.data.modality, bone_parents(config))
        sample = parse_sample_name(self.path.name)
        label = None
        if sample is not None:
            # The synthetic writer draws action (A - 1) mod 12 for an NTU name (data/synthetic/raw.py).
            label = sample.label % SYNTHETIC_CLASSES if predictor.synthetic else sample.label
            if label >= config.model.num_classes:  # an action the model was not trained on
                label = None
        return self.path.name, np.ascontiguousarray(x, dtype=np.float32), label

    def _dataset(self, predictor: Predictor) -> SkeletonDataset:
        data = predictor.config.data
        parents = bone_parents(predictor.config)
        if self.kind == "agcn":
            if self.labels is not None:
                return AGCNDataset(self.path, self.labels, modality=data.modality, bone_parents=parents)
            array = _open_npy(self.path, mmap=True)
            if array.ndim != 5:
                raise InputError(f"{self.path} holds an array of shape {array.shape}; expected "
                                 "(N, C, T, V, M)")
            names = [f"{self.path.name}[{index}]" for index in range(len(array))]
            return SkeletonDataset(array, [0] * len(array), names, stored=_stored_kind(self.path),
                                   modality=data.modality, source=str(self.path), bone_parents=parents)
        if self.kind == "pyskl":
            return PysklDataset(self.path, self.split or f"{data.benchmark}_val", modality=data.modality,
                                frames=data.frames, num_person=data.num_person, bone_parents=parents)
        return CTRGCNDataset(self.path, "test", modality=data.modality, bone_parents=parents)


def _check_joints(path: Path, joints: int, predictor: Predictor) -> None:
    expected = model_graph(predictor.config).num_joints
    if joints != expected:
        raise InputError(f"{path} holds {joints} joints per body but the checkpoint's model.graph "
                         f"{graph_config_label(predictor.config.model.graph)} has {expected}")


def _synthetic_preparation(raw, frames: int, num_person: int) -> np.ndarray:
    """What SyntheticActionDataset does to a generated action, applied to a recording: bodies in
    file order, resampled to ``frames`` over the recording's length, centred."""
    slots = np.zeros((num_person, raw.num_frames, 25, 3))
    body_frames, body_slots = raw.body_frames(), raw.body_slots()
    kept = body_slots < num_person
    slots[body_slots[kept], body_frames[kept]] = raw.joints[kept, :, :3]
    persons = int(body_slots.max(initial=-1)) + 1
    position = np.linspace(0.0, raw.num_frames - 1, frames)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, raw.num_frames - 1)
    weight = (position - low)[None, :, None, None]
    world = slots[:, low] * (1 - weight) + slots[:, high] * weight
    return centred_sample(world[:max(1, min(persons, num_person))], num_person)


def _fit_frames(x: np.ndarray, predictor: Predictor) -> np.ndarray:
    """A prepared array cut or zero-padded to the model's frames where its own are not usable
    (the network needs a multiple of 4)."""
    frames = x.shape[1]
    if frames % 4 == 0 and frames > 0:
        return x
    target = predictor.config.data.frames
    fitted = np.zeros((x.shape[0], target, *x.shape[2:]), dtype=np.float32)
    fitted[:, :min(frames, target)] = x[:, :target]
    return fitted


def find_sources(inputs, labels=None, split=None) -> tuple[list[Source], list[str]]:
    """The input files named (folders: their ``.skeleton`` files) and a problem line for every
    argument that is none of the formats."""
    sources, problems = [], []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(path.glob("*.skeleton"))
            if not found:
                problems.append(f"{path}: the folder holds no .skeleton files")
            sources += [Source(p, "skeleton") for p in found]
        elif not path.exists():
            problems.append(f"{path.resolve()}: no such file or folder")
        elif path.suffix == ".skeleton":
            sources.append(Source(path, "skeleton"))
        elif path.suffix == ".npy":
            sources.append(Source(path, "agcn", labels=Path(labels) if labels else None))
        elif path.suffix == ".pkl":
            sources.append(Source(path, "pyskl", split=split))
        elif path.suffix == ".npz":
            sources.append(Source(path, "ctrgcn"))
        else:
            problems.append(f"{path}: not an input predict reads (.skeleton files or folders of "
                            "them, 2s-AGCN .npy arrays, pyskl .pkl annotations, CTR-GCN .npz)")
    return sources, problems


# --- prediction -----------------------------------------------------------------------------------

@dataclass
class Prediction:
    name: str
    probabilities: torch.Tensor   # (classes,)
    label: int | None

    def top(self, k: int) -> list[tuple[int, float]]:
        values, indices = self.probabilities.topk(min(k, len(self.probabilities)))
        return list(zip(indices.tolist(), values.tolist()))


def _batched_logits(predictor: Predictor, arrays: list[np.ndarray]) -> torch.Tensor:
    outputs = []
    for start in range(0, len(arrays), BATCH):
        chunk = arrays[start:start + BATCH]
        shapes = {a.shape for a in chunk}
        if len(shapes) == 1:
            outputs.append(predictor.model(torch.from_numpy(np.stack(chunk))))
        else:  # samples of different lengths run one by one
            outputs += [predictor.model(torch.from_numpy(a[None])) for a in chunk]
    return torch.cat(outputs)


def predict(predictors: list[Predictor], sources: list[Source], softmax: bool = False,
            on_problem=print) -> list[Prediction]:
    """Every sample of ``sources`` through every predictor, fused. A source that cannot be read or
    prepared for any of the predictors is reported through ``on_problem`` and left out whole."""
    fused: dict[tuple[int, str], torch.Tensor] = {}
    labels: dict[tuple[int, str], int | None] = {}
    failed: set[int] = set()
    for predictor in predictors:
        for index, source in enumerate(sources):
            if index in failed:
                continue
            try:
                samples = list(source.samples(predictor))
                if not samples:
                    raise InputError("it holds no samples")
            except (ValueError, OSError) as error:
                on_problem(f"skipped {source.path}: {error}")
                failed.add(index)
                continue
            logits = _batched_logits(predictor, [x for _, x, _ in samples])
            scores = logits.softmax(dim=1) if softmax else logits
            for (name, _, label), score in zip(samples, scores):
                key = (index, name)
                fused[key] = fused[key] + score if key in fused else score
                labels[key] = label
    return [Prediction(name, total / len(predictors) if softmax else total.softmax(dim=0),
                       labels[(index, name)])
            for (index, name), total in fused.items() if index not in failed]


def accuracy(predictions: list[Prediction]) -> tuple[float, int] | None:
    """Top-1 against the labels the inputs carry (file names, label files), if any."""
    labelled = [p for p in predictions if p.label is not None]
    if not labelled:
        return None
    correct = sum(int(p.probabilities.argmax()) == p.label for p in labelled)
    return 100.0 * correct / len(labelled), len(labelled)


def _rows(predictions: list[Prediction], names: list[str], k: int):
    for prediction in predictions:
        yield prediction.name, [(names[index], probability) for index, probability in prediction.top(k)]


def write_csv(path: Path, predictions, names, k: int) -> None:
    import csv

    header = ["sample"] + [f"{field}_{rank}" for rank in range(1, k + 1) for field in ("action", "probability")]
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        for name, top in _rows(predictions, names, k):
            writer.writerow([name] + [value for action, probability in top
                                      for value in (action, f"{probability:.6f}")])


def write_json(path: Path, predictions, names, k: int) -> None:
    import json

    rows = [{"sample": name, "top": [{"action": action, "probability": round(probability, 6)}
                                     for action, probability in top]}
            for name, top in _rows(predictions, names, k)]
    path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


