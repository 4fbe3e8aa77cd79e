"""``sttr predict`` and fast inference, with the demo model trained by ``configs/demo.yaml``
(tests/data/demo_checkpoint.pt; how it was made: tests/data/README.txt)."""
import csv
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sttr_fast.cli import main
from sttr_fast.data.ntu_samples import parse_sample_name
from sttr_fast.data.synthetic import SyntheticActionDataset
from sttr_fast.data.synthetic.actions import ACTION_NAMES
from sttr_fast.data.synthetic.dataset import generate_actions
from sttr_fast.data.synthetic.raw import ntu_names, write_raw_dataset
from sttr_fast.inference import InferenceModel, fold_batch_norms
from sttr_fast.predict import load_predictor
from sttr_fast.train.checkpoints import read_checkpoint
from sttr_fast.train.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEMO_CHECKPOINT = ROOT / "tests" / "data" / "demo_checkpoint.pt"
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
UNSEEN_SEED = 7  # the demo trained on seed 0's train stream


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """48 new synthetic recordings as raw NTU files of the demo model's 32 frames."""
    folder = tmp_path_factory.mktemp("raw")
    write_raw_dataset(folder, ntu_names(48, seed=UNSEEN_SEED), seed=UNSEEN_SEED, frames=(32, 32))
    return folder


def _expected_action(sample: str) -> str:
    # The synthetic writer draws action (A - 1) mod 12 for an NTU name.
    return ACTION_NAMES[parse_sample_name(sample).label % len(ACTION_NAMES)]


def test_demo_checkpoint_was_trained_by_the_demo_config():
    stored = read_checkpoint(DEMO_CHECKPOINT).config
    assert stored is not None
    demo = load_config(DEMO_CONFIG)
    # Read as sttr reads it: keys added after the checkpoint was trained take their defaults
    # (model.graph: ntu-rgbd, the only skeleton there was).
    assert load_config(None, values=stored).to_dict()["model"] == demo.to_dict()["model"]
    assert stored["data"] == demo.to_dict()["data"]


def test_predict_names_the_actions_of_new_raw_recordings(recordings, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--checkpoint", str(DEMO_CHECKPOINT), str(recordings), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 48
    assert list(rows[0]) == ["sample"] + [f"{field}_{rank}" for rank in range(1, 6)
                                          for field in ("action", "probability")]
    correct = 0
    for row in rows:
        probabilities = [float(row[f"probability_{rank}"]) for rank in range(1, 6)]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-5
        assert {row[f"action_{rank}"] for rank in range(1, 6)} <= set(ACTION_NAMES)
        correct += row["action_1"] == _expected_action(row["sample"])
    assert correct >= 0.95 * len(rows), f"{correct}/48 right"
    first = rows[0]
    assert f"{first['sample']}: {first['action_1']} {100 * float(first['probability_1']):.1f} %" in printed
    reported = float(re.search(r"top-1 against the labels the inputs carry: ([0-9.]+) % of 48", printed).group(1))
    assert reported == pytest.approx(100 * correct / 48, abs=0.01)


def test_predict_on_prepared_arrays_matches_the_model_on_the_same_arrays(tmp_path, capsys):
    data, labels = generate_actions(24, frames=32, seed=UNSEEN_SEED, split="val")
    np.save(tmp_path / "val_data_joint.npy", data)
    names = [f"clip{i:02d}" for i in range(24)]
    with open(tmp_path / "val_label.pkl", "wb") as file:
        pickle.dump((names, labels.tolist()), file)
    out = tmp_path / "predictions.json"
    assert main(["predict", "--checkpoint", str(DEMO_CHECKPOINT), str(tmp_path / "val_data_joint.npy"),
                 "--labels", str(tmp_path / "val_label.pkl"), "--precision", "fp32", "--top-k", "2",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [row["sample"] for row in rows] == names
    predictor = load_predictor(DEMO_CHECKPOINT, precision="fp32")
    probabilities = predictor.model(torch.from_numpy(data)).softmax(dim=1)
    for row, expected in zip(rows, probabilities):
        values, indices = expected.topk(2)
        assert [entry["action"] for entry in row["top"]] == [ACTION_NAMES[i] for i in indices]
        assert [entry["probability"] for entry in row["top"]] == pytest.approx(values.tolist(), abs=2e-6)
    assert "of 24" in capsys.readouterr().out


def test_fusing_a_checkpoint_with_itself_keeps_its_probabilities(recordings, tmp_path):
    outputs = []
    for checkpoints in ([DEMO_CHECKPOINT], [DEMO_CHECKPOINT, DEMO_CHECKPOINT]):
        out = tmp_path / f"fused{len(checkpoints)}.json"
        arguments = [item for path in checkpoints for item in ("--checkpoint", str(path))]
        files = sorted(recordings.glob("*.skeleton"))[:4]
        assert main(["predict", *arguments, *map(str, files), "--softmax", "--out", str(out)]) == 0
        outputs.append(json.loads(out.read_text()))
    for single, fused in zip(*outputs):
        assert [e["action"] for e in single["top"]] == [e["action"] for e in fused["top"]]
        assert [e["probability"] for e in single["top"]] == pytest.approx(
            [e["probability"] for e in fused["top"]], abs=1e-5)


def test_bad_inputs_are_skipped_and_the_rest_predicted(recordings, tmp_path, capsys):
    broken = tmp_path / "S001C001P001R001A001.skeleton"
    broken.write_text("12\n1\nnot a body line\n")
    good = sorted(recordings.glob("*.skeleton"))[0]
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello")
    code = main(["predict", "--checkpoint", str(DEMO_CHECKPOINT), str(broken), str(good), str(unknown)])
    captured = capsys.readouterr()
    assert code == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in captured.err
    assert any(str(broken) in line and "line" in line for line in errors)
    assert any(str(unknown) in line and "not an input predict reads" in line for line in errors)
    assert f"{good.name}: " in captured.out and "1 samples predicted" in captured.out


def test_predict_never_overwrites_an_output_without_overwrite(recordings, tmp_path, capsys):
    out = tmp_path / "kept.csv"
    out.write_text("finished work\n")
    files = [str(sorted(recordings.glob("*.skeleton"))[0])]
    assert main(["predict", "--checkpoint", str(DEMO_CHECKPOINT), *files, "--out", str(out)]) == 2
    assert out.read_text() == "finished work\n"
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(DEMO_CHECKPOINT), *files, "--out", str(out),
                 "--overwrite"]) == 0
    assert out.read_text().startswith("sample,action_1")


def test_folding_batch_norms_is_exact(seed):
    from sttr_fast import STTR

    torch.manual_seed(seed)
    model = STTR(num_classes=10, stream="spatial", base_channels=16, backend="reference").double().eval()
    for module in model.modules():  # statistics far from the initial ones, so folding is tested
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.3, 3.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.3)
    x = torch.randn(2, 3, 16, 25, 2, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batch_norms(model)
        # S-TR: 4 graph convolutions (stem, units 0-2), 10 temporal convolutions (stem, units
        # 0-8), 2 projection shortcuts and 2 SSA without a residual (units 3 and 6)
        assert folded == 18
        actual = model(x)
    assert ((actual - expected).norm() / expected.norm()).item() < 1e-13


def test_fast_inference_agrees_with_the_float32_model_on_the_demo_validation_set():
    predictor = load_predictor(DEMO_CHECKPOINT, precision="fp32")
    validation = SyntheticActionDataset(240, frames=32, seed=0, split="val", num_classes=12)
    x = torch.stack([validation[i][0] for i in range(len(validation))])
    eager = predictor.model.model  # the loaded model; fp32 and folded
    fast = InferenceModel(eager, precision="bf16")
    with torch.no_grad():
        reference = eager(x)
    logits = fast(x)
    assert fast.precision == "bf16"
    assert ((logits - reference).norm() / reference.norm()).item() <= 2e-2
    agreement = (logits.argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement >= 0.99


def test_sttr_test_fast_scores_like_the_float32_model(tmp_path, capsys):
    import pickle as pickle_module

    scores = {}
    for fast in (False, True):
        work = tmp_path / ("fast" if fast else "plain")
        arguments = ["test", "--checkpoint", str(DEMO_CHECKPOINT), "--work-dir", str(work), "--no-progress",
                     "data.synthetic_val=120"]
        assert main(arguments + (["--fast"] if fast else [])) == 0
        scores[fast] = pickle_module.loads((work / "scores.pkl").read_bytes())
        assert json.loads((work / "test_metrics.json").read_text())["samples"] == 120
    plain = np.stack(list(scores[False].values()))
    fast = np.stack(list(scores[True].values()))
    assert list(scores[False]) == list(scores[True])
    assert np.linalg.norm(fast - plain) / np.linalg.norm(plain) <= 2e-2
    assert (fast.argmax(1) == plain.argmax(1)).mean() >= 0.99
    capsys.readouterr()
