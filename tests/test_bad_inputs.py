"""Every mistake named, nothing lost: bad inputs to each ``sttr`` command, run in-process.

One module fixture writes what a user has after some work (a finished training run and its test
outputs, prepared 2s-AGCN arrays, score and label files) plus spoilt copies of those files. Each
case of the table runs one bad command and checks the CLI's rule: exit code 2, one line
``sttr <command>: error: ...`` naming the culprit (a checkpoint/config mismatch adds one line per
differing key), no traceback, and every file written before unchanged, byte for byte.
"""
import hashlib
import os
import pickle
import shlex
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sttr_fast.cli import main
from sttr_fast.data.synthetic import write_raw_dataset
from sttr_fast.train import engine
from sttr_fast.train.config import load_config
from sttr_fast.train.data import build_dataset
from sttr_fast.train.work_dir import LOCK_FILE
from test_checkpoint import KEY_LISTS, official_state_dict

ROOT = Path(__file__).parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
# A model and dataset small enough for about a second per epoch on two cores.
TINY = ["model.base_channels=8", "model.num_heads=2", "model.num_classes=4", "data.frames=8",
        "data.synthetic_train=16", "data.synthetic_val=16", "data.batch_size=8",
        "data.eval_batch_size=16", "data.num_workers=0", "optim.accumulate=1"]
# NTU names: actions 1-4 (labels 0-3) by performers 1 and 2 (xsub train) and 3 (xsub val).
RAW_NAMES = [f"S001C001P00{p}R001A00{a}" for a in range(1, 5) for p in (1, 2, 3)]


def train_args(work_dir, *extra):
    return ["train", "--config", DEMO, "--work-dir", str(work_dir), "--epochs", "1",
            "--no-progress", *TINY, *extra]


def agcn(train_data, train_label, val_data, val_label):
    return ["data.format=agcn", f"data.train_data={train_data}", f"data.train_label={train_label}",
            f"data.val_data={val_data}", f"data.val_label={val_label}"]


@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """The user's files (run/, prepared/, val_label.pkl) and spoilt files under bad/."""
    root = tmp_path_factory.mktemp("user")
    run, bad = root / "run", root / "bad"
    bad.mkdir()
    assert main(train_args(run)) == 0
    assert main(["test", "--checkpoint", str(run / "best.pt"), "--no-progress"]) == 0
    config = load_config(DEMO, TINY)
    val = build_dataset(config, "val")
    names = [val.sample_name(i) for i in range(len(val))]
    (root / "val_label.pkl").write_bytes(pickle.dumps((names, val.labels)))
    write_raw_dataset(root / "raw", RAW_NAMES, seed=5, frames=(8, 8))
    prepared = root / "prepared"
    assert main(["prepare", "--dataset", "ntu60", "--raw-dir", str(root / "raw"), "--out-dir",
                 str(prepared), "--max-frames", "8", "--workers", "1"]) == 0
    xsub = prepared / "xsub"

    scores = pickle.loads((run / "scores.pkl").read_bytes())
    spoilt = {
        "scalars.pkl": {name: 1.0 for name in names},
        "ragged.pkl": {name: np.zeros(3 if i == 5 else 4) for i, name in enumerate(names)},
        "five_classes.pkl": {name: np.zeros(5) for name in names},
        "short_pair.pkl": (names, np.zeros((len(names) - 1, 4))),
        "partial.pkl": dict(list(scores.items())[1:]),
        "big_label.pkl": (names, [7] + val.labels[1:]),
        "other_model.pt": None,
    }
    for name, content in spoilt.items():
        if content is not None:
            (bad / name).write_bytes(pickle.dumps(content))
    torch.save({"conv.weight": torch.randn(2, 2)}, bad / "other_model.pt")
    # best.pt's weights as sttr import-checkpoint stores them: STTR's arguments, no data settings
    torch.save({"format": "sttr_fast", "model": torch.load(run / "best.pt", weights_only=True)["model"],
                "config": dict(num_classes=4, stream="spatial", in_channels=3, base_channels=8,
                               num_point=25, num_person=2)}, root / "imported.pt")
    # the authors' T-TR on joints+bones, and a copy with one key misspelt
    official = official_state_dict(next(p for p in KEY_LISTS if p.stem == "temporal_bone"))
    torch.save(official, bad / "authors.pt")
    official["fcn.wieght"] = official.pop("fcn.weight")
    torch.save(official, bad / "authors_misspelt.pt")
    (bad / "text.pt").write_text("epoch,top1\n1,50.0\n")
    (bad / "empty.pt").write_bytes(b"")
    (bad / "truncated.pt").write_bytes((run / "best.pt").read_bytes()[:5000])
    (bad / "text_data_joint.npy").write_text("S001C001P001R001A001 0.1 0.2 0.3\n")
    (bad / "label_data_joint.npy").write_bytes((xsub / "train_label.pkl").read_bytes())
    train_count = len(pickle.loads((xsub / "train_label.pkl").read_bytes())[0])
    np.save(bad / "joints17_data_joint.npy", np.zeros((train_count, 3, 8, 17, 2), np.float32))
    (bad / "broken.yaml").write_text("model:\n  stream: [spatial\n")
    (bad / "typo.yaml").write_text("_base_: " + DEMO + "\ntrian:\n  epochs: 3\n")
    busy = root / "busy"
    busy.mkdir()
    (busy / LOCK_FILE).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    elsewhere = root / "elsewhere"  # locked by a run on another machine sharing the folder
    elsewhere.mkdir()
    (elsewhere / LOCK_FILE).write_text(f"4242 {socket.gethostname()}-other\n")
    return SimpleNamespace(root=root, run=run, bad=bad, xsub=xsub, labels=root / "val_label.pkl",
                           scores=run / "scores.pkl", fresh=root / "fresh", busy=busy,
                           elsewhere=elsewhere)


@dataclass
class Case:
    command: list           # a function of the fixture giving the argv
    culprits: list          # functions of the fixture giving what the message must name
    details: int = 0        # lines under the error (one per differing key of a mismatch)
    absent: tuple = ()      # paths that must not exist afterwards (no empty work dir left)


def agcn_files(w, train_data=None, train_label=None):
    return agcn(train_data or w.xsub / "train_data_joint.npy",
                train_label or w.xsub / "train_label.pkl",
                w.xsub / "val_data_joint.npy", w.xsub / "val_label.pkl")


CASES = {
    # --- train -------------------------------------------------------------------------------
    "train into a finished run": Case(
        lambda w: train_args(w.run),
        [lambda w: f"{w.run} already holds a run (1 epoch recorded; last.pt, best.pt, metrics.csv)",
         lambda w: "--resume", lambda w: "--overwrite", lambda w: "another --work-dir"]),
    "train --resume and --overwrite": Case(
        lambda w: train_args(w.run, "--resume", "--overwrite"),
        [lambda w: "argument --overwrite: not allowed with argument --resume"]),
    "train --resume without last.pt": Case(
        lambda w: train_args(w.fresh, "--resume"),
        [lambda w: f"--resume: {w.fresh} holds no last.pt"], absent=("fresh",)),
    "train into a work dir in use": Case(
        lambda w: train_args(w.busy),
        [lambda w: f"{w.busy} is in use by another sttr train (pid {os.getpid()})"]),
    "train into a work dir locked on another host": Case(
        lambda w: train_args(w.elsewhere),
        [lambda w: f"{w.elsewhere} is in use by another sttr train (pid 4242 on host "
                   f"{socket.gethostname()}-other, which cannot be checked from here; if no run is "
                   f"going on there, delete {w.elsewhere / LOCK_FILE})"]),
    "train with a missing data file": Case(
        lambda w: train_args(w.fresh, *agcn_files(w, train_data=w.root / "nowhere_data_joint.npy")),
        [lambda w: f"data.train_data: {w.root / 'nowhere_data_joint.npy'} does not exist",
         lambda w: "sttr prepare --dataset ntu60"], absent=("fresh",)),
    "train on a text file named *_data_joint.npy": Case(
        lambda w: train_args(w.fresh, *agcn_files(w, train_data=w.bad / "text_data_joint.npy")),
        [lambda w: f"{w.bad / 'text_data_joint.npy'} is a text file (it begins "
                   "'S001C001P001R001A001 0.1 0.2 0.3'), not a .npy array"], absent=("fresh",)),
    "train on a label pickle named *_data_joint.npy": Case(
        lambda w: train_args(w.fresh, *agcn_files(w, train_data=w.bad / "label_data_joint.npy")),
        [lambda w: f"{w.bad / 'label_data_joint.npy'} is a Python pickle"], absent=("fresh",)),
    "train on arrays and labels of different splits": Case(
        lambda w: train_args(w.fresh, *agcn_files(w, train_data=w.xsub / "val_data_joint.npy")),
        [lambda w: f"{w.xsub / 'val_data_joint.npy'} holds 4 samples but the label file "
                   f"{w.xsub / 'train_label.pkl'} has 8"], absent=("fresh",)),
    "train on a score file as labels": Case(
        lambda w: train_args(w.fresh, *agcn_files(w, train_label=w.scores)),
        [lambda w: f"{w.scores} is not a 2s-AGCN label file",
         lambda w: "it holds a dict of 16 entries (a score file?)"], absent=("fresh",)),
    "train on 17-joint skeletons": Case(
        lambda w: train_args(w.fresh, *agcn_files(w, train_data=w.bad / "joints17_data_joint.npy")),
        [lambda w: f"the train data {w.bad / 'joints17_data_joint.npy'} has 17 joints per body"],
        absent=("fresh",)),
    "train with a misspelt section": Case(
        lambda w: train_args(w.fresh, "trian.epochs=3"),
        [lambda w: "unknown config section 'trian'", lambda w: "did you mean train.epochs?"],
        absent=("fresh",)),
    "train with a misspelt section in the YAML": Case(
        lambda w: ["train", "--config", str(w.bad / "typo.yaml"), "--work-dir", str(w.fresh)],
        [lambda w: f"{w.bad / 'typo.yaml'}: unknown config section 'trian'",
         lambda w: "did you mean train.epochs?"], absent=("fresh",)),
    "train with a misspelt key": Case(
        lambda w: train_args(w.fresh, "optim.lrr=0.1"),
        [lambda w: "unknown config key 'optim.lrr'; did you mean optim.lr?"], absent=("fresh",)),
    "train with a value out of its choices": Case(
        lambda w: train_args(w.fresh, "model.stream=spatio"),
        [lambda w: "model.stream must be one of spatial, temporal, got 'spatio'"],
        absent=("fresh",)),
    "train with broken YAML": Case(
        lambda w: ["train", "--config", str(w.bad / "broken.yaml"), "--work-dir", str(w.fresh)],
        [lambda w: f"{w.bad / 'broken.yaml'} is not valid YAML", lambda w: "line 3"],
        absent=("fresh",)),
    "train with base_channels the heads cannot split": Case(
        lambda w: train_args(w.fresh, "model.base_channels=6"),
        [lambda w: "STTR: base_channels=6 does not split into num_heads=2 heads",
         lambda w: "e.g. 4 or 8"], absent=("fresh",)),
    "train --resume with another stream": Case(
        lambda w: train_args(w.run, "--resume", "model.stream=temporal"),
        [lambda w: f"{w.run / 'last.pt'} was not trained with this config: 1 setting differs",
         lambda w: "model.stream: checkpoint 'spatial', config 'temporal'"], details=1),
    "train --epochs 0": Case(
        lambda w: [*train_args(w.fresh), "--epochs", "0"],
        [lambda w: "--epochs must be at least 1, got 0"], absent=("fresh",)),
    # --- test --------------------------------------------------------------------------------
    "test a missing checkpoint": Case(
        lambda w: ["test", "--checkpoint", str(w.run / "bset.pt")],
        [lambda w: f"checkpoint {w.run / 'bset.pt'} does not exist"]),
    "test an empty checkpoint": Case(
        lambda w: ["test", "--checkpoint", str(w.bad / "empty.pt")],
        [lambda w: f"{w.bad / 'empty.pt'} is empty (0 bytes); expected a torch checkpoint"]),
    "test a text file as checkpoint": Case(
        lambda w: ["test", "--checkpoint", str(w.bad / "text.pt")],
        [lambda w: f"{w.bad / 'text.pt'} is a text file (it begins 'epoch,top1')"]),
    "test a truncated checkpoint": Case(
        lambda w: ["test", "--checkpoint", str(w.bad / "truncated.pt")],
        [lambda w: f"{w.bad / 'truncated.pt'} is truncated or damaged"]),
    "test a label file as checkpoint": Case(
        lambda w: ["test", "--checkpoint", str(w.labels)],
        [lambda w: f"{w.labels} is a Python pickle (a label or score file?)"]),
    "test with a config of other model settings": Case(
        lambda w: ["test", "--config", DEMO, "--checkpoint", str(w.run / "best.pt"), *TINY,
                   "model.stream=temporal", "model.num_classes=5"],
        [lambda w: f"{w.run / 'best.pt'} was not trained with --config {DEMO}: 2 settings differ",
         lambda w: "leave out --config",
         lambda w: "model.stream: checkpoint 'spatial', config 'temporal'",
         lambda w: "model.num_classes: checkpoint 4, config 5"], details=2),
    "test an imported checkpoint without --config": Case(
        lambda w: ["test", "--checkpoint", str(w.root / "imported.pt")],
        [lambda w: f"{w.root / 'imported.pt'} is an imported checkpoint, which stores the model's "
                   "shape but not its data; pass --config"]),
    "test an imported checkpoint on another modality": Case(
        lambda w: ["test", "--config", DEMO, "--checkpoint", str(w.root / "imported.pt"), *TINY,
                   "data.modality=joint_bone"],
        [lambda w: f"{w.root / 'imported.pt'} was not trained with --config {DEMO}: 1 setting differs",
         lambda w: "data.modality: checkpoint has 3 input channels, config 'joint_bone' gives 6"],
        details=1),
    "test the authors' checkpoint of another model": Case(
        lambda w: ["test", "--config", DEMO, "--checkpoint", str(w.bad / "authors.pt"), *TINY],
        [lambda w: f"{w.bad / 'authors.pt'} was not trained with --config {DEMO}: 4 settings differ",
         lambda w: "model.stream: checkpoint 'temporal', config 'spatial'",
         lambda w: "model.num_classes: checkpoint 60, config 4",
         lambda w: "model.base_channels: checkpoint 128, config 8",
         lambda w: "data.modality: checkpoint has 6 input channels, config 'joint' gives 3"],
        details=4),
    "test the authors' checkpoint with a misspelt key": Case(
        lambda w: ["test", "--config", DEMO, "--checkpoint", str(w.bad / "authors_misspelt.pt")],
        [lambda w: f"checkpoint {w.bad / 'authors_misspelt.pt'}: not an ST-TR state_dict in the "
                   "authors' layout: missing ['fcn.weight']"]),
    "test a state_dict without config": Case(
        lambda w: ["test", "--checkpoint", str(w.bad / "other_model.pt")],
        [lambda w: f"{w.bad / 'other_model.pt'} is a checkpoint without a stored config",
         lambda w: "pass --config"]),
    "test a state_dict of another model": Case(
        lambda w: ["test", "--config", DEMO, "--checkpoint", str(w.bad / "other_model.pt"), *TINY],
        [lambda w: f"checkpoint {w.bad / 'other_model.pt'} does not fit the model",
         lambda w: "missing keys (e.g. data_bn.weight", lambda w: "1 unexpected key (e.g. conv.weight)"]),
    # --- ensemble ----------------------------------------------------------------------------
    "ensemble a label file as scores": Case(
        lambda w: ["ensemble", str(w.scores), str(w.labels), "--labels", str(w.labels)],
        [lambda w: f"{w.labels} holds sample names and integer labels: a label file, not scores"]),
    "ensemble a score file as labels": Case(
        lambda w: ["ensemble", str(w.scores), "--labels", str(w.scores)],
        [lambda w: f"{w.scores} is not a label file",
         lambda w: "it holds a dict of 16 entries (a score file? pass it before --labels)"]),
    "ensemble scalar scores": Case(
        lambda w: ["ensemble", str(w.bad / "scalars.pkl"), "--labels", str(w.labels)],
        [lambda w: f"{w.bad / 'scalars.pkl'}: sample 'synthetic_val_", lambda w: "shape ()"]),
    "ensemble score vectors of different lengths": Case(
        lambda w: ["ensemble", str(w.bad / "ragged.pkl"), "--labels", str(w.labels)],
        [lambda w: f"{w.bad / 'ragged.pkl'}: sample 'synthetic_val_000005", lambda w: "has 3 class scores but"]),
    "ensemble streams of different class counts": Case(
        lambda w: ["ensemble", str(w.scores), str(w.bad / "five_classes.pkl"), "--labels", str(w.labels)],
        [lambda w: f"{w.bad / 'five_classes.pkl'} has 5 classes, {w.scores} has 4"]),
    "ensemble a (names, scores) pair of unequal lengths": Case(
        lambda w: ["ensemble", str(w.bad / "short_pair.pkl"), "--labels", str(w.labels)],
        [lambda w: f"{w.bad / 'short_pair.pkl'}: (names, scores) must pair 16 names",
         lambda w: "shape (15, 4)"]),
    "ensemble scores missing a sample": Case(
        lambda w: ["ensemble", str(w.scores), str(w.bad / "partial.pkl"), "--labels", str(w.labels)],
        [lambda w: f"{w.bad / 'partial.pkl'} has no scores for 1 of the 16 samples in {w.labels}"]),
    "ensemble labels beyond the classes": Case(
        lambda w: ["ensemble", str(w.scores), "--labels", str(w.bad / "big_label.pkl")],
        [lambda w: f"{w.bad / 'big_label.pkl'} has label 7 but {w.scores} scores only 4 classes"]),
    "ensemble a text file as scores": Case(
        lambda w: ["ensemble", str(w.bad / "text.pt"), "--labels", str(w.labels)],
        [lambda w: f"the score file {w.bad / 'text.pt'} is a text file"]),
    "ensemble a preset of four streams on two": Case(
        lambda w: ["ensemble", str(w.scores), str(w.scores), "--labels", str(w.labels),
                   "--preset", "4s"],
        [lambda w: "--preset 4s fuses 4 streams, got 2 score files"]),
    "ensemble --out onto an input": Case(
        lambda w: ["ensemble", str(w.scores), "--labels", str(w.labels), "--out", str(w.scores)],
        [lambda w: f"--out {w.scores} is one of the score files"]),
    # --- prepare -----------------------------------------------------------------------------
    "prepare into prepared outputs": Case(
        lambda w: ["prepare", "--dataset", "ntu60", "--raw-dir", str(w.root / "raw"), "--out-dir",
                   str(w.xsub.parent), "--max-frames", "8", "--workers", "1"],
        [lambda w: "already exist; pass --overwrite"]),
    "prepare a missing raw dir": Case(
        lambda w: ["prepare", "--dataset", "ntu60", "--raw-dir", str(w.root / "rwa"), "--out-dir",
                   str(w.fresh)],
        [lambda w: f"raw directory {w.root / 'rwa'} does not exist"], absent=("fresh",)),
    "prepare with a missing list that is not there": Case(
        lambda w: ["prepare", "--dataset", "ntu60", "--raw-dir", str(w.root / "raw"), "--out-dir",
                   str(w.fresh), "--missing", str(w.root / "missing.txt")],
        [lambda w: f"cannot read the missing-sample list {w.root / 'missing.txt'}"],
        absent=("fresh",)),
    "prepare a benchmark of another dataset": Case(
        lambda w: ["prepare", "--dataset", "ntu60", "--raw-dir", str(w.root / "raw"), "--out-dir",
                   str(w.fresh), "--benchmark", "xset"],
        [lambda w: "ntu60 has no benchmark ['xset']"], absent=("fresh",)),
    # --- import-checkpoint -------------------------------------------------------------------
    "import a text file": Case(
        lambda w: ["import-checkpoint", str(w.bad / "text.pt"), str(w.fresh / "x.pt")],
        [lambda w: f"official checkpoint {w.bad / 'text.pt'} is a text file"], absent=("fresh",)),
    "import a truncated file": Case(
        lambda w: ["import-checkpoint", str(w.bad / "truncated.pt"), str(w.fresh / "x.pt")],
        [lambda w: f"{w.bad / 'truncated.pt'} is truncated or damaged"], absent=("fresh",)),
    "import a sttr_fast checkpoint": Case(
        lambda w: ["import-checkpoint", str(w.run / "last.pt"), str(w.fresh / "x.pt")],
        [lambda w: f"{w.run / 'last.pt'} is already in sttr_fast's layout"], absent=("fresh",)),
    "import another model's weights": Case(
        lambda w: ["import-checkpoint", str(w.bad / "other_model.pt"), str(w.fresh / "x.pt")],
        [lambda w: f"{w.bad / 'other_model.pt'} is not a checkpoint of the authors' ST-TR code"],
        absent=("fresh",)),
    "import onto the source": Case(
        lambda w: ["import-checkpoint", str(w.bad / "other_model.pt"), str(w.bad / "other_model.pt")],
        [lambda w: f"the destination {w.bad / 'other_model.pt'} is the source"]),
    # --- bench -------------------------------------------------------------------------------
    "bench on a GPU this machine lacks": Case(
        lambda w: ["bench", "--device", "cuda:99", "--frames", "8"],
        [lambda w: "--device cuda:99: this machine has"]),
    "bench on a device that is no device": Case(
        lambda w: ["bench", "--device", "gpu"],
        [lambda w: "--device 'gpu' is not a device name"]),
    "bench an unknown backend": Case(
        lambda w: ["bench", "--backend", "fast", "--frames", "8"],
        [lambda w: "--backend fast: unknown or unavailable here"]),
    "bench a batch of none": Case(
        lambda w: ["bench", "--batch-size", "0"], [lambda w: "--batch-size must be at least 1, got 0"]),
    "bench an unknown stream": Case(
        lambda w: ["bench", "--stream", "spatio"],
        [lambda w: "argument --stream: invalid choice: 'spatio'", lambda w: "see sttr bench --help"]),
}


def fingerprint(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_the_table_covers_every_command_thirty_times_over():
    commands = {case.command(SimpleNamespace(**{k: Path("x") for k in (
        "root", "run", "bad", "xsub", "labels", "scores", "fresh", "busy", "elsewhere")}))[0]
        for case in CASES.values()}
    assert commands == {"train", "test", "ensemble", "prepare", "import-checkpoint", "bench"}
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES.values(), ids=CASES)
def test_a_bad_input_is_one_named_error_and_changes_nothing(w, case, capsys):
    argv = case.command(w)
    before = fingerprint(w.root)
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, err
    assert "Traceback" not in out + err
    assert lines and lines[0].startswith(f"sttr {argv[0]}: error: "), err
    assert len(lines) == 1 + case.details, err
    assert all(line.startswith("  ") for line in lines[1:]), err
    for culprit in case.culprits:
        assert culprit(w) in err, err
    assert fingerprint(w.root) == before
    for name in case.absent:
        assert not (w.root / name).exists(), f"{name} was left behind"


# --- beyond the table: what the table's one-liners promise ---------------------------------------

def test_test_without_config_uses_the_checkpoints_own(w):
    scores = pickle.loads(w.scores.read_bytes())
    assert len(scores) == 16 and all(row.shape == (4,) for row in scores.values())


def test_an_imported_checkpoint_with_a_fitting_config_scores_as_the_original(w, tmp_path):
    assert main(["test", "--config", DEMO, "--checkpoint", str(w.root / "imported.pt"),
                 "--work-dir", str(tmp_path), "--no-progress", *TINY]) == 0
    ours, original = (pickle.loads(path.read_bytes()) for path in (tmp_path / "scores.pkl", w.scores))
    assert list(ours) == list(original)
    for name in ours:
        np.testing.assert_array_equal(ours[name], original[name])


def test_overwrite_says_what_it_removes_and_keeps_other_files(w, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "metrics.csv", "scores.pkl", "log.txt"):
        (run / name).write_bytes((w.run / name).read_bytes())
    (run / "notes.txt").write_text("keep me")
    # a lock left by a process that is gone is taken over, and said so
    gone = os.fork()  # a child that exits at once: its pid is free once reaped
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    (run / LOCK_FILE).write_text(f"{gone} {socket.gethostname()}\n")
    assert main(train_args(run, "--overwrite")) == 0
    out, err = capsys.readouterr()
    assert f"taking over the stale lock {run / LOCK_FILE} (pid {gone} is no longer running)" in err
    assert (f"--overwrite: removed the earlier run's last.pt, metrics.csv, log.txt, scores.pkl "
            f"from {run}") in out
    assert (run / "notes.txt").read_text() == "keep me"
    assert not (run / "scores.pkl").exists() and not (run / LOCK_FILE).exists()
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1


def test_ctrl_c_keeps_the_last_epoch_and_prints_how_to_resume(w, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(w.run, run)  # one epoch done
    last = (run / "last.pt").read_bytes()
    train_epoch = engine.Trainer._train_epoch

    def interrupted_in_epoch_2(trainer):
        if trainer.epoch == 1:
            raise KeyboardInterrupt
        return train_epoch(trainer)

    monkeypatch.setattr(engine.Trainer, "_train_epoch", interrupted_in_epoch_2)
    assert main(train_args(run, "--resume", "--epochs", "2")) == 130
    err = capsys.readouterr().err
    assert f"sttr train: interrupted; {run / 'last.pt'} holds 1 of 2 epochs." in err
    assert "Traceback" not in err and not (run / LOCK_FILE).exists()
    assert (run / "last.pt").read_bytes() == last
    monkeypatch.undo()
    resume = shlex.split(err.split("Resume with: ")[1])
    assert resume[:2] == ["sttr", "train"] and "--resume" in resume
    assert main([*resume[1:], "--no-progress"]) == 0
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2


def test_debug_shows_the_traceback(w, monkeypatch, capsys):
    argv = ["test", "--checkpoint", str(w.bad / "empty.pt")]
    with pytest.raises(ValueError, match="is empty"):
        main(["--debug", *argv])
    with pytest.raises(ValueError, match="is empty"):
        main([*argv, "--debug"])
    monkeypatch.setenv("STTR_DEBUG", "1")
    with pytest.raises(ValueError, match="is empty"):
        main(argv)
    monkeypatch.setenv("STTR_DEBUG", "0")
    assert main(argv) == 2
    assert "is empty" in capsys.readouterr().err


def test_a_bug_is_one_line_too_and_exits_1(monkeypatch, capsys):
    from sttr_fast.commands import bench

    def broken(args):
        raise RuntimeError("an internal\nfailure")

    monkeypatch.setattr(bench, "run", broken)
    assert main(["bench"]) == 1
    err = capsys.readouterr().err
    assert err == ("sttr bench: internal error: RuntimeError: an internal failure (run again with "
                   "--debug for the traceback)\n")


def test_any_interrupted_command_exits_130_without_a_traceback(w, monkeypatch, capsys):
    from sttr_fast.train import scores

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scores, "fuse", interrupted)
    assert main(["ensemble", str(w.scores), "--labels", str(w.labels)]) == 130
    assert capsys.readouterr().err == "sttr ensemble: interrupted\n"
