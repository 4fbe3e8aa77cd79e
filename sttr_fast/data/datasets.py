"""torch Datasets over the skeleton formats users have: 2s-AGCN / ST-TR arrays, pyskl annotation
pickles, CTR-GCN archives. Every item is ``(x, label)``: x a float32 tensor (C, T, V, M), label an
int; the modality is computed from what the file stores (see ``modalities``)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from .augmentation import Augmentation
from .modalities import CHANNELS, MODALITIES, check_derivable, check_modality, derive
from .normalisation import pre_normalise as pre_normalise_sample
from .file_kinds import NPY_MAGIC, describe
from .npy_files import npz_member, read_npy_header
from .pickles import load_data_pickle, summary

# How 2s-AGCN / MS-G3D / ST-TR name their arrays, by what they hold.
AGCN_FILE_SUFFIXES = {
    "joint": "_data_joint.npy",
    "bone": "_data_bone.npy",
    "joint_motion": "_data_joint_motion.npy",
    "bone_motion": "_data_bone_motion.npy",
    "joint_bone": "_data_joint_bones.npy",
}
# What a file holds, by the end of its name; longer endings first, so "_bone_motion" is not "_bone".
_KIND_BY_ENDING = (("_joint_bones.npy", "joint_bone"), ("_joint_bone.npy", "joint_bone"),
                   ("_bone_motion.npy", "bone_motion"), ("_joint_motion.npy", "joint_motion"),
                   ("_bone.npy", "bone"), ("_joint.npy", "joint"))


class SkeletonDataset(torch.utils.data.Dataset):
    """Items ``(x (C, T, V, M) float32 tensor, label int)`` from any indexable source of samples.

    ``data[i]`` is one sample (C, T, V, M) holding the ``stored`` modality; ``modality`` (default:
    the stored one) is computed from it after the optional ``augmentation``; ``pre_normalise``
    applies 2s-AGCN's pre-normalisation to stored joints first. Bones computed from joints follow
    ``bone_parents`` (``Graph.bone_parents()``; default: NTU RGB+D's).
    """

    def __init__(self, data, labels, names=None, stored: str = "joint", modality: str | None = None,
                 augmentation: Augmentation | None = None, pre_normalise: bool = False,
                 source: str = "dataset", bone_parents=None):
        modality = stored if modality is None else modality
        check_derivable(stored, modality)
        if pre_normalise and stored != "joint":
            raise ValueError(f"{source}: pre_normalise needs stored joints, this holds {stored!r}")
        if len(labels) != len(data):
            raise ValueError(f"{source}: {len(data)} samples but {len(labels)} labels")
        if names is not None and len(names) != len(data):
            raise ValueError(f"{source}: {len(data)} samples but {len(names)} names")
        labels = [int(label) for label in labels]
        if labels and min(labels) < 0:
            raise ValueError(f"{source}: labels must be 0-based class indices, found {min(labels)}")
        self.data, self.labels, self.names = data, labels, names
        self.stored, self.modality, self.source = stored, modality, source
        self.augmentation = augmentation if augmentation and not augmentation.is_identity else None
        self.pre_normalise = pre_normalise
        self.bone_parents = None if bone_parents is None else tuple(bone_parents)
        if len(data):
            self._check_sample(np.asarray(data[0]), 0)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        x = np.array(self.data[index], dtype=np.float32)  # a copy: never write into a memory map
        self._check_sample(x, index)
        if self.pre_normalise:
            x = pre_normalise_sample(x)
        if self.augmentation is not None:
            x = self.augmentation(x)
        x = derive(x, self.stored, self.modality, self.bone_parents)
        return torch.from_numpy(np.ascontiguousarray(x)), self.labels[index]

    def sample_name(self, index: int) -> str:
        """The sample's name (``S001C001P001R001A001.skeleton`` for NTU) or, where the source has
        none, ``<source>:<index>``."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.source}: index {index} out of range for {len(self)} samples")
        return str(self.names[index]) if self.names is not None else f"{self.source}:{index}"

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1 if self.labels else 0

    @property
    def channels(self) -> int:
        return CHANNELS[self.modality]

    def _check_sample(self, x: np.ndarray, index: int) -> None:
        if x.ndim != 4 or x.shape[0] != CHANNELS[self.stored]:
            raise ValueError(f"{self.source}: sample {index} has shape {x.shape}; expected "
                             f"(C={CHANNELS[self.stored]}, T, V, M) for stored {self.stored!r} data")
        if self.bone_parents is not None and x.shape[2] != len(self.bone_parents):
            raise ValueError(f"{self.source}: sample {index} has {x.shape[2]} joints per body but "
                             f"the skeleton graph has {len(self.bone_parents)}")


class AGCNDataset(SkeletonDataset):
    """The 2s-AGCN / MS-G3D / ST-TR files: ``<split>_data_<kind>.npy`` (N, C, T, V, M), memory-mapped,
    and ``<split>_label.pkl`` (names, labels). What the array holds is read from its name
    (``_data_joint``, ``_data_bone``, ``_data_joint_motion``, ``_data_bone_motion``, ST-TR's
    6-channel ``_data_joint_bones``) unless ``stored`` says it."""

    def __init__(self, data_path, label_path, modality: str | None = None, stored: str | None = None,
                 mmap: bool = True, augmentation: Augmentation | None = None,
                 pre_normalise: bool = False, bone_parents=None):
        data_path, label_path = Path(data_path), Path(label_path)
        stored = stored or _stored_kind(data_path)
        names, labels = _read_label_file(label_path)
        data = LazyArray(functools.partial(_open_npy, data_path, mmap))
        if data.ndim != 5:
            raise ValueError(f"{data_path} holds an array of shape {data.shape}; expected "
                             "(N, C, T, V, M)")
        if len(data) != len(labels):
            raise ValueError(f"{data_path} holds {len(data)} samples but the label file "
                             f"{label_path} has {len(labels)}; are they of the same split?")
        super().__init__(data, labels, names, stored=stored, modality=modality,
                         augmentation=augmentation, pre_normalise=pre_normalise,
                         source=str(data_path), bone_parents=bone_parents)

    @classmethod
    def in_folder(cls, folder, split: str = "train", stored: str = "joint", **options):
        """The dataset of ``folder/<split>_data_<stored>.npy`` and ``folder/<split>_label.pkl``."""
        check_modality(stored)
        folder = Path(folder)
        return cls(folder / f"{split}{AGCN_FILE_SUFFIXES[stored]}", folder / f"{split}_label.pkl",
                   stored=stored, **options)


class PysklDataset(SkeletonDataset):
    """A pyskl / MMAction2 annotation pickle: ``dict(split={name: [frame_dir, ...]},
    annotations=[{frame_dir, label, keypoint (M, T, V, 3)}, ...])``; ``split`` is a key such as
    ``xsub_train``. Samples are zero-padded or cut to ``frames`` and to ``num_person`` bodies."""

    def __init__(self, annotation_path, split: str, modality: str = "joint", frames: int = 300,
                 num_person: int = 2, augmentation: Augmentation | None = None,
                 pre_normalise: bool = False, bone_parents=None):
        path = Path(annotation_path)
        content = load_data_pickle(path, "pyskl annotation file")
        if not (isinstance(content, dict) and isinstance(content.get("split"), dict)
                and isinstance(content.get("annotations"), list)):
            raise ValueError(f"{path} is not a pyskl annotation file: expected a dict with 'split' "
                             "(dict) and 'annotations' (list)")
        if split not in content["split"]:
            raise ValueError(f"{path} has no split {split!r}; it has {sorted(content['split'])}")
        by_name = {}
        for position, annotation in enumerate(content["annotations"]):
            missing = {"frame_dir", "label", "keypoint"} - set(annotation)
            if missing:
                raise ValueError(f"{path}: annotation {position} lacks {sorted(missing)}")
            by_name[annotation["frame_dir"]] = annotation
        names = list(content["split"][split])
        absent = [name for name in names if name not in by_name]
        if absent:
            raise ValueError(f"{path}: split {split!r} lists {len(absent)} samples with no "
                             f"annotation, e.g. {absent[:3]}")
        annotations = [by_name[name] for name in names]
        super().__init__(_PaddedKeypoints(annotations, frames, num_person, path),
                         [a["label"] for a in annotations], names, stored="joint",
                         modality=modality, augmentation=augmentation,
                         pre_normalise=pre_normalise, source=f"{path}[{split}]",
                         bone_parents=bone_parents)


class CTRGCNDataset(SkeletonDataset):
    """A CTR-GCN ``.npz``: ``x_<split>`` (N, T, 150 = 2 bodies x 25 joints x xyz, body-major) and
    one-hot ``y_<split>``; ``split`` is ``train`` or ``test``. Uncompressed archives are
    memory-mapped. The archive has no sample names: ``sample_name`` gives ``<file>[split]:<index>``."""

    def __init__(self, npz_path, split: str = "train", modality: str = "joint",
                 augmentation: Augmentation | None = None, pre_normalise: bool = False,
                 bone_parents=None):
        path = Path(npz_path)
        source = f"{path}[{split}]"
        data = LazyArray(functools.partial(_open_ctrgcn_joints, path, split))
        targets = np.asarray(npz_member(path, f"y_{split}"))
        if targets.ndim == 2:
            labels = targets.argmax(axis=1)
        elif targets.ndim == 1:
            labels = targets.astype(np.int64)
        else:
            raise ValueError(f"{source}: y_{split} has shape {targets.shape}; expected one-hot "
                             "(N, classes) or labels (N,)")
        super().__init__(data, labels, None, stored="joint", modality=modality,
                         augmentation=augmentation, pre_normalise=pre_normalise, source=source,
                         bone_parents=bone_parents)


class LazyArray:
    """An array opened on first use and reopened, not copied, when pickled (DataLoader workers
    under spawn): a memory map must not travel as its whole content."""

    def __init__(self, opener):
        self.opener, self._array = opener, None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self.opener()
        return self._array

    @property
    def shape(self):
        return self.array.shape

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, index):
        return self.array[index]

    def __getstate__(self):
        return {"opener": self.opener, "_array": None}


class _PaddedKeypoints:
    """pyskl keypoints (M, T, V, 3) as (3, frames, V, num_person), zero-padded or cut. 2-D
    annotations (keypoint (M, T, V, 2)) carry the detection score apart, in ``keypoint_score``
    (M, T, V); it becomes the third channel, as for every 2-D source (docs/data.md §9)."""

    def __init__(self, annotations, frames: int, num_person: int, path: Path):
        self.annotations, self.frames, self.num_person, self.path = (annotations, frames,
                                                                     num_person, path)

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> np.ndarray:
        annotation = self.annotations[index]
        keypoint = np.asarray(annotation["keypoint"])
        if keypoint.ndim == 4 and keypoint.shape[-1] == 2:
            score = annotation.get("keypoint_score")
            if score is None or np.shape(score) != keypoint.shape[:3]:
                raise ValueError(f"{self.path}: {annotation['frame_dir']} has 2-D keypoint "
                                 f"{keypoint.shape} and keypoint_score of shape "
                                 f"{None if score is None else np.shape(score)}; expected "
                                 f"{keypoint.shape[:3]}")
            keypoint = np.concatenate([keypoint, np.asarray(score)[..., None]], axis=-1)
        if keypoint.ndim != 4 or keypoint.shape[-1] != 3:
            raise ValueError(f"{self.path}: {annotation['frame_dir']} has keypoint of shape "
                             f"{keypoint.shape}; expected (M, T, V, 3) joints, or (M, T, V, 2) "
                             "with keypoint_score (M, T, V)")
        bodies, frames = min(len(keypoint), self.num_person), min(keypoint.shape[1], self.frames)
        sample = np.zeros((3, self.frames, keypoint.shape[2], self.num_person), np.float32)
        sample[:, :frames, :, :bodies] = keypoint[:bodies, :frames].transpose(3, 1, 2, 0)
        return sample


def _stored_kind(path: Path) -> str:
    for ending, kind in _KIND_BY_ENDING:
        if path.name.endswith(ending):
            return kind
    raise ValueError(f"cannot tell what {path} holds from its name (expected it to end in one of "
                     f"{[ending for ending, _ in _KIND_BY_ENDING]}); pass stored= one of "
                     f"{MODALITIES}")


def _open_npy(path: Path, mmap: bool) -> np.ndarray:
    expected = "expected a .npy array (N, C, T, V, M) as sttr prepare writes"
    if not path.is_file():
        raise ValueError(f"the array {path.resolve()} does not exist; {expected}")
    with open(path, "rb") as file:
        if file.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise ValueError(f"{path} {describe(path)}, not a .npy array; {expected}")
        file.seek(0)
        shape, _, dtype = read_npy_header(file, str(path))
        offset = file.tell()
    if dtype.hasobject:
        raise ValueError(f"{path} holds Python objects (dtype {dtype}), which are not loaded; "
                         f"{expected}")
    needed = offset + int(np.prod(shape)) * dtype.itemsize
    size = path.stat().st_size
    if size < needed:
        raise ValueError(f"{path} is truncated: its header says {dtype} {shape}, "
                         f"{needed:,} bytes, but the file has {size:,}")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the array {path}: {error}") from error


def _open_ctrgcn_joints(path: Path, split: str) -> np.ndarray:
    x = npz_member(path, f"x_{split}")
    if x.ndim != 3 or x.shape[2] != 2 * 25 * 3:
        raise ValueError(f"{path}: x_{split} has shape {x.shape}; expected (N, T, 150)")
    # (N, T, body, joint, xyz) -> (N, C, T, V, M); a view, so a memory map stays one
    return x.reshape(len(x), x.shape[1], 2, 25, 3).transpose(0, 4, 1, 3, 2)


def _read_label_file(path: Path) -> tuple[list[str], list[int]]:
    content = load_data_pickle(path, "label file")
    if not (isinstance(content, (tuple, list)) and len(content) == 2
            and all(isinstance(part, (tuple, list, np.ndarray)) for part in content)
            and len(content[0]) == len(content[1])):
        raise ValueError(f"{path} is not a 2s-AGCN label file: expected a pair (sample names, "
                         f"labels) of equal length; it holds {summary(content)}"
                         + (" (a score file?)" if isinstance(content, dict) else ""))
    names, labels = content
    try:
        labels = [int(label) for label in labels]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: labels must be integers ({error})") from error
    return [name.decode("latin-1") if isinstance(name, bytes) else str(name) for name in names], labels
