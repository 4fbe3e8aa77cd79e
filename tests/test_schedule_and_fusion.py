"""Learning-rate schedule, top-k accuracy and score fusion against values worked out by hand.

Expected numbers are written in the tests as literals (or as plain arithmetic on literals), never
taken from the code under test.
"""
import csv
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sttr_fast.cli import main
from sttr_fast.train import engine
from sttr_fast.train.config import load_config
from sttr_fast.train.engine import Trainer, lr_factor
from sttr_fast.train.metrics import summarise, top_k_correct
from sttr_fast.train.records import EpochRecords
from sttr_fast.train.scores import fuse

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
NTU_PRESETS = sorted(p for p in (ROOT / "configs").glob("ntu*.yaml"))
# Keep a preset's optimiser settings but make model and data tiny (synthetic, 8 frames).
TINY_MODEL_AND_DATA = [
    "data.format=synthetic", "data.modality=joint", "data.frames=8", "data.synthetic_train=4",
    "data.synthetic_val=2", "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0",
    "model.base_channels=8", "model.num_heads=2", "model.num_classes=4",
]


def lr_table(lr_by_epoch_range):
    """{(first, last): lr}, 1-based inclusive epoch ranges -> the lr of epochs 1, 2, ..."""
    table = {}
    for (first, last), lr in lr_by_epoch_range.items():
        for epoch in range(first, last + 1):
            table[epoch] = lr
    assert sorted(table) == list(range(1, len(table) + 1))
    return [table[epoch] for epoch in sorted(table)]


# The authors' NTU recipe: lr 0.1 for the first 60 epochs, x0.1 from the 61st, again from the
# 91st (their epochs count from 0 and decay when epoch >= 60 and >= 90), 120 epochs, no warm-up.
AUTHORS_LR = lr_table({(1, 60): 0.1, (61, 90): 0.01, (91, 120): 0.001})


# --- learning-rate schedule --------------------------------------------------------------------

def test_every_ntu_preset_has_the_authors_optimiser_settings():
    assert len(NTU_PRESETS) == 16
    for preset in NTU_PRESETS:
        config = load_config(preset)
        assert config.optim.lr == 0.1, preset.name
        assert config.optim.milestones == [60, 90], preset.name
        assert config.optim.gamma == 0.1, preset.name
        assert config.optim.warmup_epochs == 0, preset.name
        assert config.train.epochs == 120, preset.name


def test_lr_factor_around_the_authors_milestones():
    config = load_config(NTU_PRESETS[0])
    # 0-based epoch index -> factor, by hand
    for index, factor in {0: 1.0, 58: 1.0, 59: 1.0, 60: 0.1, 61: 0.1, 88: 0.1, 89: 0.1,
                          90: 0.01, 91: 0.01, 119: 0.01}.items():
        assert lr_factor(index, config) == pytest.approx(factor, rel=1e-12), index


def test_lr_factor_with_warm_up():
    config = load_config(DEMO, ["optim.warmup_epochs=4", "optim.milestones=[6, 8]"])
    expected = {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0, 5: 1.0, 6: 0.1, 7: 0.1, 8: 0.01, 9: 0.01}
    for index, factor in expected.items():
        assert lr_factor(index, config) == pytest.approx(factor, rel=1e-12), index


def fit_recording_lr(config, work_dir, monkeypatch) -> list[float]:
    """Run ``Trainer.fit`` (the real optimiser, scheduler and epoch loop) with each epoch's
    training replaced by reading the learning rate SGD would use for it."""
    seen = []

    def record_epoch(self):
        rates = {group["lr"] for group in self.optimizer.param_groups}
        assert len(rates) == 1
        seen.append(rates.pop())
        return {"epoch": self.epoch + 1, "lr": seen[-1], "train_loss": 1.0, "train_top1": 0.0,
                "epoch_seconds": 1.0, "samples_per_second": 1.0}

    monkeypatch.setattr(Trainer, "_train_epoch", record_epoch)
    # 120 plots and checkpoints would cost seconds; neither bears on the learning rate
    monkeypatch.setattr(EpochRecords, "plot", lambda self: None)
    monkeypatch.setattr(engine, "save_atomic", lambda state, path: None)
    trainer = Trainer(config, work_dir, progress=False)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return seen


# the stub steps no optimiser, so the scheduler's check of the step order has nothing to say
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
def test_authors_preset_lr_in_every_epoch_of_a_training_run(tmp_path, monkeypatch):
    config = load_config(ROOT / "configs" / "ntu60_xsub_s-tr_joint.yaml",
                         [*TINY_MODEL_AND_DATA, "train.eval_interval=1000"])
    seen = fit_recording_lr(config, tmp_path / "run", monkeypatch)
    assert len(seen) == 120
    # around each milestone, 1-based epochs
    for epoch, lr in {59: 0.1, 60: 0.1, 61: 0.01, 62: 0.01, 89: 0.01, 90: 0.01, 91: 0.001,
                      92: 0.001, 120: 0.001}.items():
        assert seen[epoch - 1] == pytest.approx(lr, rel=1e-12), epoch
    assert seen == pytest.approx(AUTHORS_LR, rel=1e-12)
    with open(tmp_path / "run" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in rows] == list(range(1, 121))
    assert [float(row["lr"]) for row in rows] == pytest.approx(AUTHORS_LR, rel=1e-12)


def test_warm_up_and_milestones_in_a_real_run_and_across_a_resume(tmp_path):
    # lr 0.05, 3 warm-up epochs (1/3, 2/3, 3/3 of it), x0.1 from 0-based epoch 4 and again from 5
    overrides = ["model.base_channels=8", "model.num_heads=2", "model.num_classes=4",
                 "data.frames=8", "data.synthetic_train=16", "data.synthetic_val=8",
                 "data.batch_size=8", "data.eval_batch_size=8", "data.num_workers=0",
                 "optim.accumulate=1", "optim.lr=0.05", "optim.warmup_epochs=3",
                 "optim.milestones=[4, 5]", "train.eval_interval=1000"]
    expected = [0.05 / 3, 0.05 * 2 / 3, 0.05, 0.05, 0.005, 0.0005]
    work = tmp_path / "run"
    assert main(["train", "--config", str(DEMO), "--work-dir", str(work), "--epochs", "4",
                 "--no-progress", *overrides]) == 0
    assert main(["train", "--config", str(DEMO), "--work-dir", str(work), "--epochs", "6",
                 "--resume", "--no-progress", *overrides]) == 0
    with open(work / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(row["lr"]) for row in rows] == pytest.approx(expected, rel=1e-9)
    state = torch.load(work / "last.pt", weights_only=True)
    # what the next epoch would use: the last milestone has passed, still 0.0005
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0005, rel=1e-9)


# --- top-k accuracy ----------------------------------------------------------------------------

def ranked_logits():
    """10 samples, 10 classes; sample i has label i, and exactly i classes score above it."""
    logits = np.zeros((10, 10))
    for i in range(10):
        # the other classes score 9, 8, ..., 1 in turn; the label scores 9.5 - i, so it falls
        # below exactly i of them
        others = [c for c in range(10) if c != i]
        for score, c in zip(range(9, 0, -1), others):
            logits[i, c] = score
        logits[i, i] = 9.5 - i
    return torch.from_numpy(logits), torch.arange(10)


def test_top_k_counts_on_a_hand_built_ranking():
    logits, labels = ranked_logits()
    assert logits[3].argsort(descending=True).tolist().index(3) == 3  # rank 4, 0-based 3
    for k in range(1, 11):
        assert top_k_correct(logits, labels, k) == k, k
    result = summarise(logits, labels)
    assert result["top1"] == pytest.approx(10.0)
    assert result["top5"] == pytest.approx(50.0)  # labels at ranks 1-5 count, ranks 6-10 do not
    assert result["samples"] == 10
    # the top-5 does not depend on the order of the samples
    order = torch.tensor([7, 2, 9, 0, 4, 1, 8, 3, 6, 5])
    assert summarise(logits[order], labels[order])["top5"] == pytest.approx(50.0)


def test_top5_of_a_few_samples_with_eight_classes():
    logits = torch.tensor([
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],   # label 3: 4 classes above -> rank 5, counts
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],   # label 2: 5 classes above -> rank 6, misses
        [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0],   # label 0: rank 1
        [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0],  # label 7: rank 8, misses
    ])
    labels = torch.tensor([3, 2, 0, 7])
    result = summarise(logits, labels)
    assert result["top1"] == pytest.approx(25.0)
    assert result["top5"] == pytest.approx(50.0)


# --- score fusion ------------------------------------------------------------------------------

# Each stream gives every sample a probability row that is these 8 values in some class order.
PROBABILITIES = (0.40, 0.20, 0.12, 0.09, 0.07, 0.05, 0.04, 0.03)
WEIGHTS = (1.0, 1.0, 0.5)
LABELS = [2, 5, 4, 5, 0, 3]
# ORDERS[sample][stream]: classes from the most to the least likely in that stream.
ORDERS = [
    ([2, 0, 1, 3, 4, 5, 6, 7], [2, 1, 0, 3, 4, 5, 6, 7], [0, 2, 1, 3, 4, 5, 6, 7]),
    ([5, 1, 6, 0, 2, 3, 4, 7], [6, 1, 0, 2, 3, 4, 7, 5], [5, 1, 6, 0, 2, 3, 4, 7]),
    ([0, 1, 2, 3, 4, 5, 6, 7], [1, 0, 3, 2, 4, 6, 5, 7], [0, 1, 2, 3, 5, 4, 6, 7]),
    ([0, 1, 2, 3, 4, 5, 6, 7], [1, 0, 3, 2, 4, 6, 5, 7], [0, 1, 2, 3, 5, 4, 6, 7]),
    ([7, 6, 5, 4, 3, 2, 1, 0], [6, 7, 4, 5, 2, 3, 0, 1], [7, 6, 5, 4, 3, 2, 1, 0]),
    ([3, 2, 1, 0, 7, 6, 5, 4], [3, 1, 2, 0, 6, 7, 4, 5], [2, 3, 1, 0, 7, 6, 5, 4]),
]
# A shift per (stream, sample) added to every logit of the row: softmax over the classes of one
# sample removes it; mixing samples would not.
SHIFTS = [[3.0, -1.0, 0.5, 7.0, -4.0, 2.0], [-2.0, 5.0, 1.0, -3.0, 0.0, 4.0],
          [10.0, 0.0, -6.0, 2.5, 1.5, -1.0]]
# Weighted sums of probabilities, by hand (class 0..7):
#   sample 0: class 2 = .40 + .40 + .5 x .20 = .90, the largest            -> label rank 1
#   sample 1: class 5 = .40 + .03 + .5 x .40 = .63, class 6 = .12 + .40 + .5 x .12 = .58,
#             class 1 = .20 + .20 + .5 x .20 = .50                          -> label rank 1
#   samples 2 and 3 (same rows): class 0 .80, 1 .70, 2 .27, 3 .255, 4 .165, 5 .125, 6 .11, 7 .075
#             sample 2 has label 4 -> rank 5; sample 3 has label 5 -> rank 6
#   sample 4: class 0 = .03 + .04 + .5 x .03 = .085, the smallest           -> label rank 8
#   sample 5: class 3 = .40 + .40 + .5 x .20 = .90, the largest             -> label rank 1
# softmax fusion: top-1 3/6 = 50 %, top-5 4/6 = 66.67 %.
# Adding raw logits sums weighted log-probabilities instead; it differs only in sample 1:
#   class 1: 2.5 ln .2 = -4.02, class 6: ln .12 + ln .4 + .5 ln .12 = -4.10,
#   class 5: ln .4 + ln .03 + .5 ln .4 = -4.88 -> label rank 3
# raw fusion: top-1 2/6 = 33.33 %, top-5 4/6 = 66.67 %.
NAMES = [f"S001C001P001R001A{i + 1:03d}.skeleton" for i in range(len(LABELS))]


def stream_probabilities() -> np.ndarray:
    """(streams, samples, classes) probabilities of ORDERS."""
    out = np.zeros((len(WEIGHTS), len(LABELS), len(PROBABILITIES)))
    for sample, orders in enumerate(ORDERS):
        for stream, order in enumerate(orders):
            for rank, cls in enumerate(order):
                out[stream, sample, cls] = PROBABILITIES[rank]
    return out


@pytest.fixture
def score_files(tmp_path):
    probabilities = stream_probabilities()
    assert np.allclose(probabilities.sum(-1), 1.0)
    paths = []
    for stream in range(len(WEIGHTS)):
        logits = np.log(probabilities[stream]) + np.array(SHIFTS[stream])[:, None]
        path = tmp_path / f"stream{stream}.pkl"
        # scores as `sttr test` writes them: sample name -> float32 logits; listed in another
        # order than the label file to make sure rows are matched by name
        path.write_bytes(pickle.dumps({NAMES[i]: logits[i].astype(np.float32)
                                       for i in reversed(range(len(NAMES)))}))
        paths.append(str(path))
    label_file = tmp_path / "val_label.pkl"
    label_file.write_bytes(pickle.dumps((NAMES, LABELS)))
    return paths, label_file, probabilities


def test_softmax_fusion_of_three_weighted_streams(score_files):
    paths, label_file, probabilities = score_files
    fused_by_hand = sum(w * p for w, p in zip(WEIGHTS, probabilities))
    np.testing.assert_allclose(fused_by_hand[1], [.255, .50, .195, .145, .11, .63, .58, .085],
                               atol=1e-12)
    result = fuse(paths, label_file, WEIGHTS, softmax=True)
    assert result["names"] == NAMES
    np.testing.assert_allclose(result["logits"].numpy(), fused_by_hand, rtol=0, atol=1e-6)
    assert result["top1"] == pytest.approx(50.0)
    assert result["top5"] == pytest.approx(400 / 6)
    raw = fuse(paths, label_file, WEIGHTS)
    assert raw["top1"] == pytest.approx(200 / 6)
    assert raw["top5"] == pytest.approx(400 / 6)


def test_ensemble_command_softmax_and_raw(score_files, tmp_path, capsys):
    paths, label_file, probabilities = score_files
    out = tmp_path / "fusion" / "fused.pkl"  # --out makes its folder
    assert main(["ensemble", *paths, "--labels", str(label_file), "--weights", "1", "1", "0.5",
                 "--softmax", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fused 3 streams on 6 samples: top-1 50.00%, top-5 66.67%" in printed
    fused = pickle.loads(out.read_bytes())
    assert sorted(fused) == sorted(NAMES)
    fused_by_hand = sum(w * p for w, p in zip(WEIGHTS, probabilities))
    for i, name in enumerate(NAMES):
        np.testing.assert_allclose(fused[name], fused_by_hand[i], rtol=0, atol=1e-6)
        # every stream's row is a distribution, so each fused row sums to the sum of the weights
        assert float(np.sum(fused[name])) == pytest.approx(2.5, abs=1e-5)
    assert main(["ensemble", *paths, "--labels", str(label_file), "--weights", "1", "1",
                 "0.5"]) == 0
    assert "fused 3 streams on 6 samples: top-1 33.33%, top-5 66.67%" in capsys.readouterr().out


def test_ensemble_command_softmax_of_two_streams_with_a_preset(score_files, capsys):
    paths, label_file, probabilities = score_files
    # st-tr preset: weights 1 and 1 on the first two streams. Sums of probabilities, by hand:
    #   sample 0: class 2 = .80, first; sample 1: class 6 = .52 beats class 5 = .43 -> rank 2;
    #   samples 2, 3: class 0 .60, 1 .60, 3 .21, 2 .21, 4 .14, 6 .09, 5 .09, 7 .06
    #     label 4 -> rank 5 (counts); label 5 ties with class 6 at .09 for ranks 6-7 (misses);
    #   sample 4: class 0 = .03 + .04 = .07, tied for last with class 1 (misses);
    #   sample 5: class 3 = .80, first.
    # top-1 2/6 = 33.33 %, top-5 4/6 = 66.67 %
    assert main(["ensemble", *paths[:2], "--labels", str(label_file), "--preset", "st-tr",
                 "--softmax"]) == 0
    assert "top-1 33.33%, top-5 66.67%" in capsys.readouterr().out
