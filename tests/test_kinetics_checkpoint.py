"""Import of the authors' Kinetics-Skeleton checkpoints (18 OpenPose joints, 400 classes).

Their key lists with shapes are stored under ``tests/data/official_state_dict/kinetics/``; the
parameter counts below are those of the authors' model class (person_bn included). The one
difference from NTU is the stride-2 TSA's qkv kernel, (1, 1) instead of (1, 2): import must pick
``tsa_stride_skips_frames`` from that shape, and the model must then compute the authors' tokens.
"""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from spec_forward import sttr_forward
from sttr_fast import STTR, convert_official_state_dict
from sttr_fast.checkpoint import official_model_config
from sttr_fast.cli import main
from sttr_fast.graph import graph_preset
from sttr_fast.predict import find_sources, load_predictor, predict
from sttr_fast.train.config import load_config
from test_checkpoint import official_state_dict
from test_model import randomise_buffers_and_affine

KINETICS = Path(__file__).parent / "data" / "official_state_dict" / "kinetics"
AUTHORS_PARAMETERS = {"spatial_joint": 3_145_540, "spatial_bone": 12_270_024,
                      "temporal_joint": 1_708_128, "temporal_bone": 6_482_360}
PERSON_BN_PARAMETERS = {"joint": 2 * 256, "bone": 2 * 512}  # weight and bias of 2*C_last features


def runnable_state_dict(name: str, seed: int) -> dict[str, torch.Tensor]:
    """The authors' keys and shapes with random values that keep a forward pass finite: BatchNorm
    variances positive, convolution and linear weights scaled by 1/sqrt(fan-in)."""
    state = official_state_dict(KINETICS / f"{name}.txt", seed=seed)
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = value.abs() + 0.5
        elif key.endswith("weight") and value.dim() >= 2:
            state[key] = value / value[0].numel() ** 0.5
    return state


@pytest.mark.parametrize("name", sorted(AUTHORS_PARAMETERS))
def test_a_kinetics_checkpoint_imports_loads_strictly_and_runs(name):
    stream, modality = name.split("_")
    state = runnable_state_dict(name, seed=2)
    config = official_model_config(state)
    assert config == dict(num_classes=400, stream=stream, in_channels=3 if modality == "joint" else 6,
                          base_channels=64 if modality == "joint" else 128, num_point=18, num_person=2,
                          graph="openpose-18", tsa_stride_skips_frames=stream == "temporal")
    model = STTR(**config)
    assert sum(p.numel() for p in model.parameters()) + PERSON_BN_PARAMETERS[modality] == \
        AUTHORS_PARAMETERS[name]
    model.load_state_dict(convert_official_state_dict(state), strict=True)
    if stream == "temporal":
        assert torch.equal(model.units[3].temporal.qkv.weight, state["backbone.3.tcn1.qkv_conv.weight"])
    with torch.no_grad():
        logits = model.eval()(torch.randn(1, config["in_channels"], 8, 18, 2,
                                          generator=torch.Generator().manual_seed(0)))
    assert logits.shape == (1, 400) and torch.isfinite(logits).all()


def test_without_the_variant_a_kinetics_temporal_checkpoint_is_refused_by_shape():
    state = official_state_dict(KINETICS / "temporal_joint.txt")
    config = {**official_model_config(state), "tsa_stride_skips_frames": False}
    with pytest.raises(RuntimeError, match=r"units.3.temporal.qkv.weight.*\[192, 128, 1, 1\].*"
                                           r"\[192, 128, 1, 2\]"):
        STTR(**config).load_state_dict(convert_official_state_dict(state), strict=True)


def test_the_skipping_variant_computes_the_written_out_network():
    """T-TR with the variant against tests/spec_forward.py, which convolves the qkv weight with
    the unit's stride whatever its kernel (the authors' formula)."""
    generator = torch.Generator().manual_seed(5)
    model = STTR(num_classes=7, stream="temporal", base_channels=16, num_heads=2, graph="openpose-18",
                 num_person=2, tsa_stride_skips_frames=True).double().eval()
    with torch.no_grad():
        randomise_buffers_and_affine(model, generator)
        x = torch.randn(2, 3, 8, 18, 2, generator=generator, dtype=torch.float64)
        torch.testing.assert_close(model(x), sttr_forward(model, x), rtol=1e-10, atol=1e-10)


def test_sttr_import_checkpoint_then_predict_on_kinetics_arrays(tmp_path, capsys):
    state = runnable_state_dict("temporal_joint", seed=3)
    torch.save({"state_dict": state}, tmp_path / "authors.pt")
    assert main(["import-checkpoint", str(tmp_path / "authors.pt"), str(tmp_path / "imported.pt")]) == 0
    assert "graph=openpose-18, tsa_stride_skips_frames=True" in capsys.readouterr().out
    arrays = np.random.default_rng(0).normal(size=(2, 3, 8, 18, 2)).astype(np.float32)
    np.save(tmp_path / "val_data_joint.npy", arrays)
    with open(tmp_path / "val_label.pkl", "wb") as file:
        pickle.dump((["a", "b"], [3, 7]), file)
    predictor = load_predictor(tmp_path / "imported.pt", precision="fp32")
    assert predictor.config.model.graph == "openpose-18"
    assert predictor.config.model.tsa_stride_skips_frames
    sources, _ = find_sources([str(tmp_path / "val_data_joint.npy")], labels=str(tmp_path / "val_label.pkl"))
    predictions = predict([predictor], sources, on_problem=pytest.fail)
    reference = STTR(**official_model_config(state))
    reference.load_state_dict(convert_official_state_dict(state), strict=True)
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(arrays)).softmax(1)
    torch.testing.assert_close(torch.stack([p.probabilities for p in predictions]), expected,
                               rtol=1e-4, atol=1e-5)
    assert [p.label for p in predictions] == [3, 7]


def test_the_kinetics_presets_hold_the_authors_recipe():
    root = Path(__file__).parents[1] / "configs"
    for stream in ("s-tr", "t-tr"):
        for modality in ("joint", "joint_bone"):
            config = load_config(root / f"kinetics_{stream}_{modality}.yaml")
            assert config.model.stream == ("spatial" if stream == "s-tr" else "temporal")
            assert config.data.modality == modality
            assert config.model.base_channels == (128 if modality == "joint_bone" else 64)
            assert (config.model.num_classes, config.model.graph, config.model.dropout) == (400, "openpose-18", 0.0)
            assert not config.model.tsa_stride_skips_frames
            assert (config.train.epochs, config.optim.milestones, config.optim.lr) == (65, [45, 55], 0.1)
            assert config.data.batch_size * config.optim.accumulate == 64
            assert (config.data.frames, config.data.num_person) == (300, 2)
            augment = config.data.augment
            assert (augment.window, augment.random_move, augment.random_shift) == (152, True, False)
            assert graph_preset(config.model.graph).num_joints == 18
