"""A work dir holds one run: never replaced by accident, never trained into twice at once.

``check`` refuses, before anything is built or written, a work dir that holds a run (without
``--resume`` or ``--overwrite``) or that another ``sttr train`` is using. ``WorkDirLock`` is that
use: a lock file with the owner's pid and host, taken over when its owner is gone.
"""
from __future__ import annotations

import csv
import os
import shutil
import socket
import sys
from pathlib import Path

LOCK_FILE = ".train.lock"
# A run's results: a work dir holding any of them holds a run.
RESULTS = ("last.pt", "best.pt", "metrics.csv")
# Everything sttr train (and sttr test, by default beside the checkpoint) writes into a work dir:
# what --overwrite removes, and nothing else.
WRITTEN = (*RESULTS, "config.yaml", "log.txt", "loss.png", "accuracy.png", "lr.png",
           "tensorboard", "scores.pkl", "per_class_accuracy.csv", "confusion_matrix.png",
           "test_metrics.json")


class WorkDirError(ValueError):
    """A work dir that this run must not write into."""


def _epochs_recorded(work_dir: Path) -> int | None:
    try:
        with open(work_dir / "metrics.csv", newline="", encoding="utf-8") as file:
            return sum(1 for _ in csv.DictReader(file))
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def run_summary(work_dir: Path) -> str | None:
    """``'3 epochs; last.pt, best.pt, metrics.csv'`` for a work dir that holds a run, else None."""
    results = [name for name in RESULTS if (work_dir / name).exists()]
    if not results:
        return None
    epochs = _epochs_recorded(work_dir)
    done = f"{epochs} epoch{'' if epochs == 1 else 's'} recorded; " if epochs is not None else ""
    return done + ", ".join(results)


def _holder(path: Path) -> tuple[int, str] | None:
    """(pid, host) written in a lock file, or None when it cannot be read."""
    try:
        pid, host = path.read_text(encoding="utf-8").split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _live_holder(work_dir: Path) -> str | None:
    """Who holds the work dir's lock, if that process may still run; None if free or stale."""
    holder = _holder(work_dir / LOCK_FILE)
    if holder is None:
        return None
    pid, host = holder
    if host != socket.gethostname():
        return (f"pid {pid} on host {host}, which cannot be checked from here; if no run is "
                f"going on there, delete {work_dir / LOCK_FILE}")
    return f"pid {pid}" if _alive(pid) else None


def _in_use(work_dir: Path, holder: str) -> WorkDirError:
    return WorkDirError(f"{work_dir} is in use by another sttr train ({holder}); wait for it to "
                        "finish or stop it, or pass another --work-dir")


def check(work_dir: Path, resume: bool, overwrite: bool, locked: bool = False) -> None:
    """Refuse a work dir in use (unless this process ``locked`` it), one holding a run without
    ``--resume``/``--overwrite``, and ``--resume`` without a checkpoint to resume from. Reads only."""
    work_dir = Path(work_dir)
    holder = None if locked else _live_holder(work_dir)
    if holder:
        raise _in_use(work_dir, holder)
    if resume:
        if not (work_dir / "last.pt").is_file():
            raise WorkDirError(f"--resume: {work_dir} holds no last.pt to resume from")
        return
    summary = run_summary(work_dir)
    if summary and not overwrite:
        raise WorkDirError(f"{work_dir} already holds a run ({summary}); continue it with "
                           "--resume, replace it with --overwrite, or pass another --work-dir")


def remove_run(work_dir: Path) -> list[str]:
    """Delete what an earlier run wrote (``WRITTEN``) and return the names removed."""
    removed = []
    for name in WRITTEN:
        path = work_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(name + ("/" if name == "tensorboard" else ""))
    return removed


class WorkDirLock:
    """``work_dir/.train.lock`` holding ``<pid> <host>`` while this process trains there."""

    def __init__(self, work_dir: Path):
        self.path = Path(work_dir) / LOCK_FILE
        self.token = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _live_holder(self.path.parent)
                if holder:
                    raise _in_use(self.path.parent, holder) from None
                stale = _holder(self.path)
                owner = f"pid {stale[0]}" if stale else "an unreadable owner"
                print(f"sttr train: taking over the stale lock {self.path} ({owner} is no longer "
                      "running)", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(self.token)
            return
        raise WorkDirError(f"{self.path.parent}: another sttr train took the lock at the same "
                           "time; pass another --work-dir")

    def release(self) -> None:
        # only our own lock: a run that took over a lock we lost must keep it
        try:
            if self.path.read_text(encoding="utf-8") == self.token:
                self.path.unlink()
        except OSError:
            pass
