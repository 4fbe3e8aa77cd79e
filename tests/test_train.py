"""The training program end to end on CPU: config, train, resume, DDP on gloo, test, ensemble."""
import csv
import os
import pickle
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sttr_fast.cli import main
from sttr_fast.train.config import ConfigError, load_config
from sttr_fast.train.data import StepBatches
from sttr_fast.train.engine import build_model, place_model
from sttr_fast.train.scores import fuse

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
# A model and dataset small enough for seconds per epoch on two cores.
TINY = ["model.base_channels=8", "model.num_heads=2", "model.num_classes=4", "data.frames=8",
        "data.synthetic_train=32", "data.synthetic_val=16", "data.batch_size=8",
        "data.eval_batch_size=16", "data.num_workers=0", "optim.accumulate=1", "optim.lr=0.05",
        "optim.warmup_epochs=0", "optim.milestones=[2]"]
# Dropout and DropAttention draw different random numbers per process; off for the DDP comparison.
NO_RANDOMNESS = ["model.dropout=0.0", "model.drop_attention=0.0"]


def run_cli(*args, env_threads=True, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1") if env_threads else None
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def read_metrics(work_dir: Path) -> list[dict]:
    with open(work_dir / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def weights(path: Path, parameters_only: bool = False) -> dict:
    state = torch.load(path, weights_only=True)["model"]
    if parameters_only:
        names = {name for name, _ in build_model(load_config(DEMO, TINY)).named_parameters()}
        state = {k: v for k, v in state.items() if k in names}
    return state


# --- configuration -----------------------------------------------------------------------------

def test_every_preset_loads_and_builds_its_model():
    presets = sorted((ROOT / "configs").glob("*.yaml"))
    names = {p.stem for p in presets}
    for benchmark in ("ntu60_xsub", "ntu60_xview", "ntu120_xsub", "ntu120_xset"):
        for stream in ("s-tr", "t-tr"):
            for modality in ("joint", "joint_bone"):
                assert f"{benchmark}_{stream}_{modality}" in names
    for preset in presets:
        if preset.stem.startswith("_"):
            continue
        config = load_config(preset)
        with torch.device("meta"):
            build_model(config)
        if preset.stem.startswith("ntu"):  # the authors' hyper-parameters (docs/network.md §10)
            assert (config.optim.lr, config.optim.momentum, config.optim.nesterov) == (0.1, 0.9, True)
            assert (config.optim.weight_decay, config.optim.milestones, config.optim.gamma) == \
                (1e-4, [60, 90], 0.1)
            assert config.train.epochs == 120 and config.data.frames == 300
            assert config.data.batch_size * config.optim.accumulate == 32
            assert config.model.num_classes == (60 if "ntu60" in preset.stem else 120)
            joint_bone = preset.stem.endswith("joint_bone")
            assert config.model.base_channels == (128 if joint_bone else 64)
            assert config.data.modality == ("joint_bone" if joint_bone else "joint")


def test_cpu_bf16_training_runs_channels_last():
    """bf16 on the CPU: the convolutions skip their layout reorders (bench/bench_training.py);
    float32 keeps NCHW."""
    config = load_config(DEMO, TINY)
    model = place_model(build_model(config), torch.device("cpu"), "bf16")
    assert model.activation_layout() == torch.channels_last
    assert model.stem.temporal.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert place_model(build_model(config), torch.device("cpu")).activation_layout() == torch.contiguous_format


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'; did you mean optim\.lr"):
        load_config(DEMO, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"unknown config section 'trian' \(in trian\.epochs\); "
                                          r"did you mean train\.epochs\?"):
        load_config(DEMO, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match=r"'data\.augmnt'.*did you mean data\.augment\.window\?"):
        load_config(DEMO, ["data.augmnt.window=8"])
    with pytest.raises(ConfigError, match=r"unknown config key 'trian'; did you mean train\?"):
        load_config(DEMO, ["trian=3"])
    with pytest.raises(ConfigError, match="optim.momentum must be float, got 'fast'"):
        load_config(DEMO, ["optim.momentum=fast"])
    with pytest.raises(ConfigError, match="model.stream must be one of spatial, temporal"):
        load_config(DEMO, ["model.stream=spatio"])
    with pytest.raises(ConfigError, match="data.frames must be a positive multiple of 4, got 30"):
        load_config(DEMO, ["data.frames=30"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  strem: spatial\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}: unknown config key 'model\.strem'"):
        load_config(bad)
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML: expected ',' or ']', but got "
                                          "'<stream end>' at line 2, column 1"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_base_inheritance_and_override_order(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.2\n  milestones: [5]\ndata:\n  frames: 16\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\noptim:\n  lr: 0.3\n")
    config = load_config(tmp_path / "child.yaml", ["data.frames=12", "optim.clip_grad_norm=2"])
    assert config.optim.lr == 0.3 and config.optim.milestones == [5]
    assert config.data.frames == 12 and config.optim.clip_grad_norm == 2.0


def test_floats_without_a_dot_are_floats_in_files_and_overrides(tmp_path):
    """``1e-3`` is a float in YAML 1.2 but a string to PyYAML (YAML 1.1), which the type check
    would then refuse; strings that only look close stay strings."""
    (tmp_path / "config.yaml").write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n")
    config = load_config(tmp_path / "config.yaml", ["optim.clip_grad_norm=2e+1"])
    assert (config.optim.lr, config.optim.weight_decay, config.optim.clip_grad_norm) == (1e-3, 5e-4, 20.0)
    assert load_config(None, ["optim.lr=+1.5e-2"]).optim.lr == 0.015
    with pytest.raises(ConfigError, match="optim.lr must be float, got '1e'"):
        load_config(None, ["optim.lr=1e"])


def test_step_batches_match_across_process_and_accumulation_layouts():
    single = list(StepBatches(50, 4, world_size=1, rank=0, accumulate=2, seed=3))
    rank0 = list(StepBatches(50, 4, world_size=2, rank=0, accumulate=1, seed=3))
    rank1 = list(StepBatches(50, 4, world_size=2, rank=1, accumulate=1, seed=3))
    assert len(single) == 12 and len(rank0) == len(rank1) == 6
    assert single[0::2] == rank0 and single[1::2] == rank1
    flat = [i for batch in single for i in batch]
    assert len(set(flat)) == len(flat) == 48


# --- training ----------------------------------------------------------------------------------

def test_one_epoch_through_the_cli_writes_the_work_dir(tmp_path):
    work = tmp_path / "run"
    assert main(["train", "--config", str(DEMO), "--work-dir", str(work), "--epochs", "1",
                 "--no-progress", *TINY]) == 0
    for name in ("config.yaml", "log.txt", "metrics.csv", "loss.png", "accuracy.png", "lr.png",
                 "last.pt", "best.pt"):
        assert (work / name).is_file(), name
    assert list((work / "tensorboard").glob("events.out.tfevents.*"))
    rows = read_metrics(work)
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert 0 <= float(rows[0]["val_top1"]) <= 100 and float(rows[0]["samples_per_second"]) > 0
    checkpoint = torch.load(work / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "config"} <= set(checkpoint)
    assert checkpoint["epoch"] == 1 and checkpoint["config"]["model"]["base_channels"] == 8
    assert "epoch 1:" in (work / "log.txt").read_text()


def test_bf16_amp_trains_on_the_cpu_and_fp16_is_refused_there(tmp_path, capsys):
    base = ["train", "--config", str(DEMO), "--epochs", "1", "--no-progress", *TINY, "train.device=cpu"]
    assert main([*base, "--work-dir", str(tmp_path / "bf16"), "train.amp=bf16"]) == 0
    rows = read_metrics(tmp_path / "bf16")
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    assert main([*base, "--work-dir", str(tmp_path / "fp16"), "train.amp=fp16"]) == 2
    error = capsys.readouterr().err.strip()
    assert "train.amp='fp16' needs a CUDA device" in error and "\n" not in error
    assert not (tmp_path / "fp16").exists()


def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path):
    args = ["sttr_fast", "train", "--config", str(DEMO), "--epochs", "3", "--no-progress", *TINY]
    straight = tmp_path / "straight"
    result = run_cli(*args, "--work-dir", str(straight))
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", *args, "--work-dir", str(killed)], cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (killed / "last.pt").exists():
            process.kill()
            break
        time.sleep(0.02)
    process.wait()
    epochs_done = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert epochs_done < 3, "the run finished before it could be killed"
    result = run_cli(*args, "--work-dir", str(killed), "--resume")
    assert result.returncode == 0, result.stderr
    assert f"resuming from {killed / 'last.pt'}: {epochs_done} of 3 epochs done" in result.stdout
    a, b = weights(straight / "last.pt"), weights(killed / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["train_loss"] for r in read_metrics(straight)] == \
        [r["train_loss"] for r in read_metrics(killed)]


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    assert main(["train", "--config", str(DEMO), "--work-dir", str(tmp_path), "--resume",
                 *TINY]) == 2
    assert "holds no last.pt" in capsys.readouterr().err


def write_agcn(folder: Path, split: str, data: np.ndarray, labels: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}_data_joint.npy", data.astype(np.float32))
    names = [f"S001C001P001R001A{label + 1:03d}.skeleton" for label in labels]
    with open(folder / f"{split}_label.pkl", "wb") as file:
        pickle.dump((names, labels), file)


def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    rng = np.random.default_rng(0)
    good, bad = tmp_path / "good", tmp_path / "bad"
    for split, count in (("train", 16), ("val", 8)):
        write_agcn(good, split, rng.normal(size=(count, 3, 8, 25, 2)), [i % 4 for i in range(count)])
    write_agcn(bad, "train", np.full((16, 3, 8, 25, 2), np.nan), [i % 4 for i in range(16)])
    paths = lambda folder: ["data.format=agcn", f"data.train_data={folder / 'train_data_joint.npy'}",
                            f"data.train_label={folder / 'train_label.pkl'}",
                            f"data.val_data={good / 'val_data_joint.npy'}",
                            f"data.val_label={good / 'val_label.pkl'}"]
    work = tmp_path / "run"
    assert main(["train", "--config", str(DEMO), "--work-dir", str(work), "--epochs", "1",
                 "--no-progress", *TINY, *paths(good)]) == 0
    before = (work / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--config", str(DEMO), "--work-dir", str(work), "--epochs", "2",
                 "--resume", "--no-progress", *TINY, *paths(bad)]) == 1
    err = capsys.readouterr().err
    assert "the training loss became nan in epoch 2" in err
    assert "last good checkpoint" in err and "(1 epochs)" in err
    assert (work / "last.pt").read_bytes() == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args):
    return run_cli("torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                   "--master-port", str(free_port()), "-m", "sttr_fast", *args, timeout=400)


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tmp_path):
    # a gentle learning rate: the two runs differ in the order of float sums, which a chaotic
    # high-lr run would amplify
    # train.device=cpu: gloo on the CPU also on a GPU machine (which may hold one GPU, not two)
    base = ["train", "--config", str(DEMO), "--epochs", "1", "--no-progress", *TINY, *NO_RANDOMNESS,
            "data.batch_size=4", "optim.lr=0.005", "train.device=cpu"]
    one, two = tmp_path / "one", tmp_path / "two"
    result = run_cli("sttr_fast", *base, "--work-dir", str(one), "optim.accumulate=2")
    assert result.returncode == 0, result.stderr
    result = torchrun(*base, "--work-dir", str(two), "optim.accumulate=1")
    assert result.returncode == 0, result.stderr
    assert "2 process(es)" in (two / "log.txt").read_text()
    for row_one, row_two in zip(read_metrics(one), read_metrics(two), strict=True):
        for column in ("train_loss", "train_top1", "lr"):
            assert float(row_one[column]) == pytest.approx(float(row_two[column]), rel=1e-4), column
    a, b = weights(one / "last.pt", True), weights(two / "last.pt", True)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)

    # distributed evaluation gathers every sample once, in order
    single_test, double_test = tmp_path / "test1", tmp_path / "test2"
    test_args = ["test", "--config", str(DEMO), "--checkpoint", str(one / "last.pt"), "--no-progress",
                 *TINY, "data.synthetic_val=15", "train.device=cpu"]
    assert run_cli("sttr_fast", *test_args, "--work-dir", str(single_test)).returncode == 0
    result = torchrun(*test_args, "--work-dir", str(double_test))
    assert result.returncode == 0, result.stderr
    scores = [pickle.loads((d / "scores.pkl").read_bytes()) for d in (single_test, double_test)]
    assert list(scores[0]) == list(scores[1]) and len(scores[0]) == 15
    for name in scores[0]:
        np.testing.assert_allclose(scores[0][name], scores[1][name], rtol=1e-5, atol=1e-6)


# --- test and ensemble -------------------------------------------------------------------------

def test_test_command_writes_scores_and_plots(tmp_path, capsys):
    work = tmp_path / "run"
    assert main(["train", "--config", str(DEMO), "--work-dir", str(work), "--epochs", "1",
                 "--no-progress", *TINY]) == 0
    capsys.readouterr()
    assert main(["test", "--config", str(DEMO), "--checkpoint", str(work / "best.pt"),
                 "--work-dir", str(tmp_path / "test"), "--no-progress", *TINY]) == 0
    out = capsys.readouterr().out
    test = tmp_path / "test"
    scores = pickle.loads((test / "scores.pkl").read_bytes())
    assert len(scores) == 16 and all(v.shape == (4,) for v in scores.values())
    assert (test / "confusion_matrix.png").is_file()
    with open(test / "per_class_accuracy.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(r["samples"]) for r in rows] == [4, 4, 4, 4]
    # top-1 from the score file by hand
    labels = [int(re.match(r"synthetic_val_(\d+)_", name).group(1)) % 4 for name in scores]
    top1 = np.mean([np.argmax(scores[name]) == label for name, label in zip(scores, labels)]) * 100
    assert f"top-1 {top1:.2f}%" in out


def test_ensemble_on_known_scores(tmp_path, capsys):
    names = ["a.skeleton", "b.skeleton", "c.skeleton", "d.skeleton"]
    labels = [0, 1, 2, 2]
    spatial = {"a.skeleton": [5.0, 0, 0], "b.skeleton": [0, 1.0, 2.0], "c.skeleton": [3.0, 0, 1.0],
               "d.skeleton": [0, 0, 1.0]}
    temporal = {"a.skeleton": [1.0, 0, 0], "b.skeleton": [0, 4.0, 0], "c.skeleton": [0, 0, 4.0],
                "d.skeleton": [2.0, 0, 0]}
    paths = []
    for stream, scores in (("spatial", spatial), ("temporal", temporal)):
        path = tmp_path / f"{stream}.pkl"
        path.write_bytes(pickle.dumps({k: np.array(v) for k, v in scores.items()}))
        paths.append(str(path))
    label_file = tmp_path / "val_label.pkl"
    label_file.write_bytes(pickle.dumps((names, labels)))
    # sum: a [6,0,0] ok; b [0,5,2] ok; c [3,0,5] ok; d [2,0,1] wrong -> 75 %
    assert main(["ensemble", *paths, "--labels", str(label_file), "--preset", "st-tr"]) == 0
    assert "top-1 75.00%" in capsys.readouterr().out
    # spatial alone: a ok, b wrong, c wrong, d ok -> 50 %; weights (1, 0) reproduce it
    assert fuse(paths, label_file, [1.0, 0.0])["top1"] == 50.0
    # weighting spatial 3x: b [0, 7, 6] and d [2, 0, 3] right, c [9, 0, 7] wrong -> 75 %
    assert fuse(paths, label_file, [3.0, 1.0])["top1"] == 75.0
    assert fuse(paths, label_file, softmax=True)["top5"] == 100.0
    assert main(["ensemble", *paths, "--labels", str(label_file), "--preset", "4s"]) == 2
    assert "fuses 4 streams, got 2" in capsys.readouterr().err
    label_file.write_bytes(pickle.dumps((names + ["e.skeleton"], labels + [1])))
    assert main(["ensemble", *paths, "--labels", str(label_file)]) == 2
    assert "no scores for 1 of the 5 samples" in capsys.readouterr().err
