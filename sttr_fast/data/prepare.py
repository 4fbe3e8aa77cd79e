"""Raw NTU RGB+D ``.skeleton`` folders to the 2s-AGCN layout, for every benchmark at once.

Each file is parsed once, its bodies selected and pre-normalised in a worker process, and the
sample written to the train or val array of every benchmark. Arrays are written row by row into
memory-mapped ``.npy`` files, so memory does not grow with the dataset. Progress is saved every few
seconds: an interrupted run picks up where it stopped when started again with the same settings.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .body_selection import NUM_PERSON, select_bodies
from .normalisation import pre_normalise
from .npy_files import NpyRowWriter
from .ntu_samples import (BENCHMARKS, FULL_DATASET_FILES, OFFICIAL_SPLIT_SIZES, SPLITS, NTUSample,
                          parse_sample_name)
from .parallel import ordered_map
from .skeleton_file import NUM_JOINTS, SkeletonParseError, read_skeleton

STATE_FILE = ".prepare_state.json"
LOG_FILE = "prepare.log"
PARTIAL_SUFFIX = ".partial"
CHECKPOINT_SECONDS = 5.0


@dataclass(frozen=True)
class PrepareSettings:
    dataset: str
    raw_dirs: tuple[Path, ...]
    out_dir: Path
    missing: frozenset[str]
    benchmarks: tuple[str, ...] = ()  # empty: all of the dataset's
    max_frames: int = 300
    normalise: bool = True
    workers: int = 1
    overwrite: bool = False

    def __post_init__(self):
        if self.dataset not in BENCHMARKS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {sorted(BENCHMARKS)}")
        unknown = [b for b in self.benchmarks if b not in BENCHMARKS[self.dataset]]
        if unknown:
            raise ValueError(f"{self.dataset} has no benchmark {unknown}; it has "
                             f"{BENCHMARKS[self.dataset]}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}")

    @property
    def chosen_benchmarks(self) -> tuple[str, ...]:
        return self.benchmarks or BENCHMARKS[self.dataset]


@dataclass
class SampleResult:
    """What a worker returns for one file: the sample, or why there is none, plus notes."""

    name: str
    joints: np.ndarray | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PrepareReport:
    counts: dict[tuple[str, str], int]
    failures: list[tuple[str, str]]
    skipped_missing: int
    ignored: list[str]
    official_comparison: bool  # the raw folders hold the whole dataset, so sizes are comparable


def process_file(path: Path, max_frames: int, normalise: bool) -> SampleResult:
    """Parse, select bodies, pre-normalise; a file that cannot be read becomes an error entry."""
    result = SampleResult(name=path.name)
    try:
        selected = select_bodies(read_skeleton(path), max_frames=max_frames)
    except SkeletonParseError as error:
        result.error = error.detail
        return result
    if selected.was_cut:
        result.notes.append(f"{selected.frames_in_file} frames, cut to the first {max_frames}")
    if not selected.joints.any():
        result.notes.append("no body in any frame: written as zeros")
    result.joints = pre_normalise(selected.joints) if normalise else selected.joints
    return result


def find_raw_files(raw_dirs, dataset: str) -> tuple[dict[str, Path], list[str], int]:
    """``{sample name: path}`` of the dataset's files in ``raw_dirs``, names of files ignored
    (not ``SsssCcccPpppRrrrAaaa.skeleton``) and the count of NTU files outside ``dataset``."""
    files, ignored, outside = {}, [], 0
    for raw_dir in map(Path, raw_dirs):
        if not raw_dir.is_dir():
            raise ValueError(f"raw directory {raw_dir} does not exist or is not a directory")
        for entry in os.scandir(raw_dir):
            sample = parse_sample_name(entry.name) if entry.name.endswith(".skeleton") else None
            if sample is None:
                ignored.append(entry.name)
            elif not sample.in_dataset(dataset):
                outside += 1
            elif sample.name in files:
                raise ValueError(f"sample {sample.name} is in two raw directories: "
                                 f"{files[sample.name]} and {entry.path}")
            else:
                files[sample.name] = Path(entry.path)
    return files, sorted(ignored), outside


def prepare_ntu(settings: PrepareSettings, progress_stream=None) -> PrepareReport:
    """Write ``OUT/<benchmark>/{train,val}_data_joint.npy`` and ``_label.pkl`` (see the module
    docstring); prints counts to stdout, progress and per-file problems to ``progress_stream``
    (stderr by default), and logs everything to ``OUT/prepare.log``."""
    files, ignored, outside = find_raw_files(settings.raw_dirs, settings.dataset)
    if not files:
        raise ValueError(f"no {settings.dataset} .skeleton files (SsssCcccPpppRrrrAaaa.skeleton) in "
                         + ", ".join(map(str, settings.raw_dirs)))
    skipped = sorted(files.keys() & settings.missing)
    samples = [parse_sample_name(name) for name in sorted(files.keys() - settings.missing)]
    if not samples:
        raise ValueError("every sample found is on the missing-sample list; nothing to write")
    run = _Run(settings, samples)
    try:
        run.open()
        run.log(f"{len(files):,} {settings.dataset} files, {len(skipped):,} on the missing-sample "
                f"list skipped, {len(samples):,} to convert; {len(ignored):,} other files and "
                f"{outside:,} NTU files outside {settings.dataset} ignored")
        _convert(run, files, progress_stream)
        counts = run.finish()
    finally:
        run.close()
    full = len(files) == FULL_DATASET_FILES[settings.dataset]
    return PrepareReport(counts, sorted(run.failures.items()), len(skipped), ignored, full)


def _convert(run: _Run, files: dict[str, Path], progress_stream) -> None:
    """Convert the files not done yet, in order, writing each sample where it belongs."""
    settings, samples = run.settings, run.samples
    if run.files_done:
        run.log(f"resuming after {run.files_done:,} of {len(samples):,} files")
    stream = progress_stream or sys.stderr
    progress = tqdm(total=len(samples), initial=run.files_done, desc="prepare", unit="file",
                    file=stream, dynamic_ncols=True)
    convert = functools.partial(process_file, max_frames=settings.max_frames,
                                normalise=settings.normalise)
    remaining = samples[run.files_done:]
    try:
        results = ordered_map(convert, [files[sample.name] for sample in remaining],
                              settings.workers)
        for sample, result in zip(remaining, results):
            for note in result.notes:
                progress.write(f"warning: {result.name}: {note}", file=stream)
                run.log(f"warning: {result.name}: {note}", echo=False)
            if result.error is not None:
                progress.write(f"error: {result.name}: {result.error} (skipped)", file=stream)
                run.log(f"error: {result.name}: {result.error} (skipped)", echo=False)
                run.failures[sample.name] = result.error
            else:
                run.write(sample, result.joints)
            run.files_done += 1
            progress.update()
            run.checkpoint_if_due()
    except KeyboardInterrupt:
        progress.close()
        run.checkpoint()
        run.log(f"interrupted after {run.files_done:,} of {len(samples):,} files; run the same "
                "command again to resume")
        raise
    progress.close()


class _Run:
    """The output files, resume state and log of one prepare run.

    The state on disk is the number of files done and the failures among them; the rows of each
    array follow from those, so a sample cut off half-written by an interruption is simply
    written again.
    """

    def __init__(self, settings: PrepareSettings, samples: list[NTUSample]):
        self.settings, self.samples = settings, samples
        self.out = settings.out_dir
        self.row_shape = (3, settings.max_frames, NUM_JOINTS, NUM_PERSON)
        self.outputs = [(benchmark, split) for benchmark in settings.chosen_benchmarks
                        for split in SPLITS]
        self.fingerprint = {
            "dataset": settings.dataset, "benchmarks": list(settings.chosen_benchmarks),
            "max_frames": settings.max_frames, "normalise": settings.normalise,
            "samples": hashlib.sha256("\n".join(s.name for s in samples).encode()).hexdigest(),
        }
        self.files_done, self.failures, self.writers = 0, {}, {}
        self.last_checkpoint = time.monotonic()
        self.log_file = None

    def data_path(self, output) -> Path:
        return self.out / output[0] / f"{output[1]}_data_joint.npy"

    def label_path(self, output) -> Path:
        return self.out / output[0] / f"{output[1]}_label.pkl"

    def partial_path(self, output) -> Path:
        return self.data_path(output).with_name(self.data_path(output).name + PARTIAL_SUFFIX)

    def in_output(self, sample: NTUSample, output) -> bool:
        return sample.split(self.settings.dataset, output[0]) == output[1]

    def rows_written(self, samples) -> dict:
        """Rows each array holds once ``samples`` are done (failed ones write none)."""
        converted = [s for s in samples if s.name not in self.failures]
        return {output: sum(self.in_output(s, output) for s in converted)
                for output in self.outputs}

    def open(self) -> None:
        """Resume the unfinished run in OUT if there is one with these settings, else start."""
        self.out.mkdir(parents=True, exist_ok=True)
        resuming = self._load_state()
        if not resuming:
            existing = [str(path) for output in self.outputs
                        for path in (self.data_path(output), self.label_path(output))
                        if path.exists()]
            if existing and not self.settings.overwrite:
                raise ValueError(f"{', '.join(existing)} already exist; pass --overwrite to replace "
                                 "them or choose another --out-dir")
        self.log_file = open(self.out / LOG_FILE, "a", encoding="utf-8")
        self.log(f"--- sttr prepare {time.strftime('%Y-%m-%d %H:%M:%S')}: {self.settings.dataset} "
                 f"from {', '.join(map(str, self.settings.raw_dirs))}, max_frames "
                 f"{self.settings.max_frames}, pre-normalisation "
                 f"{'on' if self.settings.normalise else 'off'}", echo=False)
        # Rows are allocated for every sample; failures are known only at the end, when the arrays
        # shrink to the rows written.
        allocated = {output: sum(self.in_output(s, output) for s in self.samples)
                     for output in self.outputs}
        rows_done = self.rows_written(self.samples[:self.files_done])
        for output in self.outputs:
            self.partial_path(output).parent.mkdir(parents=True, exist_ok=True)
            self.writers[output] = NpyRowWriter(self.partial_path(output), allocated[output],
                                                self.row_shape, rows_done=rows_done[output])
        if not resuming:
            self.checkpoint()

    def _load_state(self) -> bool:
        state_path = self.out / STATE_FILE
        if self.settings.overwrite or not state_path.exists():
            return False
        try:
            state = json.loads(state_path.read_text())
            files_done, failures = int(state["files_done"]), dict(state["failures"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"cannot read the resume state {state_path} ({error}); pass "
                             "--overwrite to start again") from error
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.out} holds an unfinished prepare run with other settings or samples "
                f"({state.get('fingerprint')}); rerun it with those to resume, or pass --overwrite "
                "to start again")
        absent = [str(self.partial_path(o)) for o in self.outputs
                  if not self.partial_path(o).exists()]
        if absent:
            raise ValueError(f"the unfinished run in {self.out} lacks {', '.join(absent)}; pass "
                             "--overwrite to start again")
        self.files_done, self.failures = files_done, failures
        return True

    def log(self, text: str, echo: bool = True) -> None:
        if echo:
            print(text)
        self.log_file.write(text + "\n")
        self.log_file.flush()

    def write(self, sample: NTUSample, joints: np.ndarray) -> None:
        for output in self.outputs:
            if self.in_output(sample, output):
                self.writers[output].append(joints)

    def checkpoint_if_due(self) -> None:
        if time.monotonic() - self.last_checkpoint >= CHECKPOINT_SECONDS:
            self.checkpoint()

    def checkpoint(self) -> None:
        for writer in self.writers.values():
            writer.sync()
        state = {"fingerprint": self.fingerprint, "files_done": self.files_done,
                 "failures": self.failures}
        write_atomic(self.out / STATE_FILE, json.dumps(state).encode())
        self.last_checkpoint = time.monotonic()

    def finish(self) -> dict[tuple[str, str], int]:
        """Shrink and rename the arrays, write the label files, drop the resume state."""
        counts = {}
        for output, writer in self.writers.items():
            written = [s for s in self.samples
                       if s.name not in self.failures and self.in_output(s, output)]
            writer.finish()
            os.replace(writer.path, self.data_path(output))
            labels = ([s.file_name for s in written], [s.label for s in written])
            write_atomic(self.label_path(output), pickle.dumps(labels))
            counts[output] = len(written)
        (self.out / STATE_FILE).unlink()
        for output, count in counts.items():
            self.log(f"{output[0]:<6} {output[1]:<5} {count:>7,} samples", echo=False)
        return counts

    def close(self) -> None:
        if self.log_file is not None:
            self.log_file.close()


def official_sizes_match(dataset: str, counts: dict[tuple[str, str], int]) -> dict[str, bool]:
    """Per benchmark, whether (train, val) equals the official sizes (docs/data.md §2)."""
    return {benchmark: (counts[(benchmark, "train")], counts[(benchmark, "val")])
            == OFFICIAL_SPLIT_SIZES[(dataset, benchmark)]
            for benchmark in {b for b, _ in counts}}


def write_atomic(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; outputs are shared files
        with os.fdopen(handle, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
