"""NTU RGB+D sample names, benchmarks (train/val rules), official split sizes and missing lists."""
from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SAMPLE_NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")

NTU60_TRAIN_SUBJECTS = frozenset(
    (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38))
NTU120_TRAIN_SUBJECTS = NTU60_TRAIN_SUBJECTS | frozenset(
    (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
     89, 91, 92, 93, 94, 95, 97, 98, 100, 103))
NTU60_TRAIN_CAMERAS = frozenset((2, 3))

# NTU-60 is setups 1-17 with actions 1-60; NTU-120 adds setups 18-32 and actions 61-120.
NTU60_LAST_SETUP, NTU60_LAST_ACTION = 17, 60

# Benchmarks of each dataset, in the order they are written.
BENCHMARKS = {"ntu60": ("xsub", "xview"), "ntu120": ("xsub", "xset")}
SPLITS = ("train", "val")

# Raw files in the complete dataset and (train, val) sizes once the missing samples are removed.
FULL_DATASET_FILES = {"ntu60": 56_880, "ntu120": 114_480}
OFFICIAL_SPLIT_SIZES = {
    ("ntu60", "xsub"): (40_091, 16_487),
    ("ntu60", "xview"): (37_646, 18_932),
    ("ntu120", "xsub"): (63_026, 50_919),
    ("ntu120", "xset"): (54_468, 59_477),
}


@dataclass(frozen=True)
class NTUSample:
    """The fields of a name ``SsssCcccPpppRrrrAaaa``; ``label`` is the 0-based action."""

    name: str
    setup: int
    camera: int
    performer: int
    replication: int
    action: int

    @property
    def label(self) -> int:
        return self.action - 1

    @property
    def file_name(self) -> str:
        return f"{self.name}.skeleton"

    def in_dataset(self, dataset: str) -> bool:
        _check_dataset(dataset)
        return dataset == "ntu120" or (self.setup <= NTU60_LAST_SETUP
                                       and self.action <= NTU60_LAST_ACTION)

    def split(self, dataset: str, benchmark: str) -> str:
        """``"train"`` or ``"val"`` under one benchmark of ``dataset``."""
        _check_benchmark(dataset, benchmark)
        if benchmark == "xsub":
            subjects = NTU60_TRAIN_SUBJECTS if dataset == "ntu60" else NTU120_TRAIN_SUBJECTS
            is_train = self.performer in subjects
        elif benchmark == "xview":
            is_train = self.camera in NTU60_TRAIN_CAMERAS
        else:
            is_train = self.setup % 2 == 0
        return "train" if is_train else "val"


def parse_sample_name(name: str) -> NTUSample | None:
    """The sample a name (with or without ``.skeleton``) denotes, or None if it is not NTU's."""
    match = SAMPLE_NAME.match(name.removesuffix(".skeleton"))
    if match is None:
        return None
    return NTUSample(match.group(0), *(int(field) for field in match.groups()))


def read_missing_list(path) -> frozenset[str]:
    """Sample names in a missing-skeleton list; lines that are not a sample name (the prose header
    of the published lists, blank lines) are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ValueError(f"cannot read the missing-sample list {path}: {error.strerror}") from error
    return _names_in(text)


def official_missing_samples(dataset: str) -> frozenset[str]:
    """The dataset authors' list of samples with missing or empty skeletons (302 or 535 names)."""
    _check_dataset(dataset)
    text = (resources.files(__package__) / "resources" / f"{dataset}_missing_skeletons.txt"
            ).read_text(encoding="utf-8")
    return _names_in(text)


def _names_in(text: str) -> frozenset[str]:
    return frozenset(line.strip() for line in text.splitlines()
                     if SAMPLE_NAME.match(line.strip()))


def _check_dataset(dataset: str) -> None:
    if dataset not in BENCHMARKS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(BENCHMARKS)}")


def _check_benchmark(dataset: str, benchmark: str) -> None:
    _check_dataset(dataset)
    if benchmark not in BENCHMARKS[dataset]:
        raise ValueError(f"{dataset} has no benchmark {benchmark!r}; expected one of "
                         f"{BENCHMARKS[dataset]}")
