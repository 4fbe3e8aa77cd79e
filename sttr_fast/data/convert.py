"""``sttr convert``: pose estimators' outputs to the 2s-AGCN arrays ``sttr prepare`` writes.

One run writes one split: ``OUT/<split>_data_joint.npy`` (float32 N x 3 x T x V x M, row by row
through a memory map, so memory stays flat for Kinetics' 240,000 videos) and ``OUT/<split>_label.pkl``
(sample names, 0-based labels). The array grows as ``<split>_data_joint.npy.partial`` and takes its
name only when complete; finished outputs are replaced only with ``overwrite``, and even then only
once the new ones are complete.
"""
from __future__ import annotations

import csv
import functools
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .npy_files import NpyRowWriter
from .parallel import ordered_map
from .pose_formats import FORMATS, PIXEL_FORMATS, PoseSample, SampleShape, read_sample
from .prepare import PARTIAL_SUFFIX, write_atomic
from .tracking import DEFAULT_MATCH_DISTANCE

INPUT_SUFFIXES = {"kinetics": (".json",), "mmpose": (".json",), "mediapipe": (".csv", ".json")}


@dataclass
class ConvertSettings:
    source_format: str                       # one of pose_formats.FORMATS
    inputs: tuple[Path, ...]
    out_dir: Path
    split: str = "train"
    label: int | None = None                 # every input is of this class ...
    labels: Path | None = None               # ... or: CSV name,label (Kinetics: its label JSON)
    frame_size: tuple[float, float] | None = None
    max_frames: int = 300
    num_person: int = 2
    match_distance: float = DEFAULT_MATCH_DISTANCE
    workers: int = 1
    overwrite: bool = False

    def __post_init__(self):
        if self.source_format not in FORMATS:
            raise ValueError(f"unknown format {self.source_format!r}; expected one of {', '.join(FORMATS)}")
        if self.max_frames < 4 or self.max_frames % 4:
            raise ValueError(f"--max-frames must be a positive multiple of 4 (the network's frames "
                             f"are), got {self.max_frames}")
        if self.num_person < 1:
            raise ValueError(f"--num-person must be at least 1, got {self.num_person}")
        if self.match_distance <= 0:
            raise ValueError(f"--match-distance must be positive, got {self.match_distance}")
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.source_format in PIXEL_FORMATS:
            if self.frame_size is None:
                raise ValueError(f"{self.source_format} coordinates are pixels: give the frame size "
                                 "with --frame-size WIDTH HEIGHT (--frame-size 1 1 for coordinates "
                                 "already divided by it)")
            if min(self.frame_size) <= 0:
                raise ValueError(f"--frame-size must be positive, got {self.frame_size}")
        elif self.frame_size is not None:
            raise ValueError(f"--frame-size is for pixel coordinates ({', '.join(PIXEL_FORMATS)}); "
                             f"{self.source_format} coordinates are already divided by the frame size")
        if self.source_format == "kinetics":
            if self.labels is None or self.label is not None:
                raise ValueError("kinetics takes its labels from its label JSON: give --labels "
                                 "kinetics_<split>_label.json (and no --label)")
        elif (self.label is None) == (self.labels is None):
            raise ValueError("give either --label N (every input is of class N) or --labels FILE "
                             "(a CSV of name,label lines)")
        if self.label is not None and self.label < 0:
            raise ValueError(f"--label must be a 0-based class index, got {self.label}")

    @property
    def data_path(self) -> Path:
        return self.out_dir / f"{self.split}_data_joint.npy"

    @property
    def label_path(self) -> Path:
        return self.out_dir / f"{self.split}_label.pkl"

    @property
    def shape(self) -> SampleShape:
        return SampleShape(self.max_frames, self.num_person, self.frame_size, self.match_distance)


@dataclass
class ConvertReport:
    written: int
    num_joints: int
    layout: str | None                                  # graph preset of the joint order
    label_count: int                                    # the largest label + 1
    skipped: list[str] = field(default_factory=list)    # "<input>: <why>", one per input left out
    without_skeleton: list[str] = field(default_factory=list)   # Kinetics has_skeleton false


@dataclass
class _Input:
    name: str          # the sample name in the label file
    path: Path
    label: int | None  # None: the reason is in ``problem``
    problem: str | None = None


def convert_poses(settings: ConvertSettings, on_problem=print) -> ConvertReport:
    """Convert every input, writing the split's array and label file; an input that cannot be
    converted is reported through ``on_problem`` and left out."""
    inputs = find_inputs(settings.source_format, settings.inputs)
    report = ConvertReport(0, 0, None, 0)
    if settings.source_format == "kinetics":
        inputs, report.without_skeleton = _kinetics_labels(inputs, settings.labels)
        if not inputs:
            raise ValueError(f"the label file {settings.labels} marks every input as without "
                             "skeleton (has_skeleton false); nothing to convert")
    else:
        _assign_labels(inputs, settings.label, settings.labels)
    existing = [str(p) for p in (settings.data_path, settings.label_path) if p.exists()]
    if existing and not settings.overwrite:
        raise ValueError(f"{' and '.join(existing)} already exist; pass --overwrite to replace them, "
                         "or choose another --out or --split")
    # Problems wait until one input is converted: when none is, the error names the first instead.
    held = []
    for entry in inputs:
        if entry.problem:
            _skip(report, held.append, entry.path, entry.problem)
    todo = [entry for entry in inputs if entry.problem is None]
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    partial = settings.data_path.with_name(settings.data_path.name + PARTIAL_SUFFIX)
    read = functools.partial(_read_or_explain, settings.source_format, shape=settings.shape)
    writer, names, labels = None, [], []
    try:
        results = ordered_map(read, [entry.path for entry in todo], settings.workers)
        progress = tqdm(results, total=len(todo), desc="convert", unit="input", disable=None)
        for entry, result in zip(todo, progress):
            if isinstance(result, str):
                _skip(report, on_problem if writer else held.append, entry.path, result)
                continue
            if writer is None:
                report.num_joints, report.layout = result.joints.shape[2], result.layout
                writer = NpyRowWriter(partial, len(todo), result.joints.shape)
                for line in held:
                    on_problem(line)
            elif result.joints.shape[2] != report.num_joints:
                _skip(report, on_problem, entry.path,
                      f"{result.joints.shape[2]} joints ({result.layout or 'no preset'}) where the "
                      f"inputs before have {report.num_joints} ({report.layout or 'no preset'}); "
                      "one split holds one skeleton layout")
                continue
            for note in result.notes:
                on_problem(f"note: {entry.path}: {note}")
            writer.append(result.joints)
            names.append(entry.name)
            labels.append(entry.label)
        if writer is None:
            others = len(report.skipped) - 1
            raise ValueError(f"no input could be converted: {report.skipped[0]}"
                             + (f" (and {others} other input(s) failed)" if others else ""))
        writer.finish()
        os.replace(partial, settings.data_path)
        write_atomic(settings.label_path, pickle.dumps((names, labels)))
    finally:
        partial.unlink(missing_ok=True)   # never finished work: a run is not resumed
    report.written, report.label_count = len(names), max(labels) + 1
    return report


def find_inputs(source_format: str, given) -> list[_Input]:
    """The inputs named: files, or folders of them; for OpenPose, folders of per-frame files (one
    recording each) or folders of such folders."""
    found = []
    for path in map(Path, given):
        if not path.exists():
            raise ValueError(f"{path.resolve()}: no such file or folder")
        if source_format == "openpose":
            found += _openpose_folders(path)
            continue
        suffixes = INPUT_SUFFIXES[source_format]
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not files:
                raise ValueError(f"{path}: the folder holds no {' or '.join(suffixes)} files")
            found += files
        elif path.suffix.lower() in suffixes:
            found.append(path)
        else:
            raise ValueError(f"{path}: not a {' or '.join(suffixes)} file, which {source_format} "
                             "inputs are")
    names = {}
    for path in found:
        if path.name in names and names[path.name] != path:
            raise ValueError(f"two inputs have the name {path.name} ({names[path.name]} and {path}); "
                             "sample names must be unique")
        names[path.name] = path
    return [_Input(path.name, path, None) for path in found]


def _openpose_folders(path: Path) -> list[Path]:
    if not path.is_dir():
        raise ValueError(f"{path}: openpose inputs are folders of per-frame .json files, one "
                         "folder per recording")
    if any(path.glob("*.json")):
        return [path]
    folders = sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("*.json")))
    if not folders:
        raise ValueError(f"{path}: holds no .json files, nor folders of them (OpenPose "
                         "--write_json writes one file per frame)")
    return folders


def _assign_labels(inputs: list[_Input], label: int | None, labels_file: Path | None) -> None:
    if label is not None:
        for entry in inputs:
            entry.label = label
        return
    table = read_label_csv(labels_file)
    missing = []
    for entry in inputs:
        entry.label = table.get(entry.name, table.get(Path(entry.name).stem))
        if entry.label is None:
            missing.append(entry.name)
    if missing:
        raise ValueError(f"--labels {labels_file} has no label for {len(missing)} input(s), e.g. "
                         f"{', '.join(missing[:3])} (lines: name,label; the name with or without "
                         "its extension)")


def read_label_csv(path: Path) -> dict[str, int]:
    """``name,label`` lines (a first line whose label is not a number is a header)."""
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--labels {path}: cannot read it "
                         f"({getattr(error, 'strerror', None) or error})") from None
    table = {}
    for line, row in enumerate(rows, start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise ValueError(f"--labels {path}, line {line}: expected name,label, got {len(row)} "
                             "fields")
        name, text = row[0].strip(), row[1].strip()
        try:
            value = int(text)
        except ValueError:
            if line == 1:
                continue
            raise ValueError(f"--labels {path}, line {line}: label {text!r} is not a whole "
                             "number") from None
        if value < 0:
            raise ValueError(f"--labels {path}, line {line}: labels are 0-based, got {value}")
        if name in table and table[name] != value:
            raise ValueError(f"--labels {path}, line {line}: {name} is labelled {table[name]} and "
                             f"{value}")
        table[name] = value
    if not table:
        raise ValueError(f"--labels {path}: holds no name,label lines")
    return table


def _kinetics_labels(inputs: list[_Input], path: Path) -> tuple[list[_Input], list[str]]:
    """The inputs with their ``label_index`` from ST-GCN's label JSON (``{video id: {has_skeleton,
    label, label_index}}``), without those it marks has_skeleton false (returned apart)."""
    try:
        table = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"--labels {path}: not a readable Kinetics label JSON "
                         f"({getattr(error, 'strerror', None) or error})") from None
    if not isinstance(table, dict):
        raise ValueError(f"--labels {path}: expected an object {{video id: {{has_skeleton, label, "
                         "label_index}}}}")
    kept, without_skeleton = [], []
    for entry in inputs:
        video = Path(entry.name).stem
        info = table.get(video)
        if not isinstance(info, dict):
            entry.problem = f"{video} is not in the label file {path}"
        elif info.get("has_skeleton") is False:
            without_skeleton.append(entry.name)
            continue
        elif not (isinstance(info.get("label_index"), int) and info["label_index"] >= 0):
            entry.problem = (f"the label file {path} gives {video} no label_index (a whole number "
                             f">= 0), it has {info.get('label_index')!r}")
        else:
            entry.label = info["label_index"]
        kept.append(entry)
    return kept, without_skeleton


def _read_or_explain(source_format: str, path: Path, shape: SampleShape) -> PoseSample | str:
    """The sample, or why it could not be read (a worker process must not raise for one input)."""
    try:
        return read_sample(source_format, path, shape)
    except OSError as error:
        return f"{error.filename or path}: {error.strerror or error}"
    except ValueError as error:
        return str(error)


def _skip(report: ConvertReport, on_problem, path: Path, why: str) -> None:
    line = why if why.startswith(str(path)) else f"{path}: {why}"
    report.skipped.append(line)
    on_problem(f"skipped {line}")
