"""Import of the authors' checkpoints and atomic checkpoint writing.

The authors' parameter names and shapes, one ``name (shape)`` line each, are stored under
``tests/data/official_state_dict/`` for S-TR and T-TR on joints and on joints+bones."""
import ast
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sttr_fast import STTR, convert_official_state_dict, load_official_checkpoint
from sttr_fast.checkpoint import CheckpointError, official_model_config, save_atomic
from sttr_fast.cli import main

KEY_LISTS = sorted((Path(__file__).parent / "data" / "official_state_dict").glob("*.txt"))
# The authors' key -> sttr_fast's key, one per kind of rename.
EXPECTED_RENAMES = {
    "spatial": {"gcn0.conv_list.2.weight": "stem.spatial.convs.2.weight",
                "tcn0.bn.running_var": "stem.temporal.bn.running_var",
                "backbone.1.gcn1.mask": "units.1.spatial.mask",
                "backbone.3.gcn1.data_bn.weight": "units.3.spatial.input_bn.weight",
                "backbone.4.gcn1.attention_conv.qkv_conv.bias": "units.4.spatial.qkv.bias",
                "backbone.8.gcn1.attention_conv.attn_out.weight": "units.8.spatial.out_proj.weight",
                "backbone.6.down1.conv.weight": "units.6.shortcut.conv.weight",
                "backbone.7.tcn1.conv.weight": "units.7.temporal.conv.weight"},
    "temporal": {"backbone.3.tcn1.qkv_conv.weight": "units.3.temporal.qkv.weight",
                 "backbone.5.tcn1.attn_out.bias": "units.5.temporal.out_proj.bias",
                 "backbone.6.tcn1.down.bn.running_mean": "units.6.temporal.down.bn.running_mean",
                 "backbone.8.tcn1.data_bn.running_var": "units.8.temporal.input_bn.running_var",
                 "backbone.4.gcn1.conv_list.1.bias": "units.4.spatial.convs.1.bias"},
}


def official_state_dict(key_list: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the authors' names and shapes."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for line in key_list.read_text().splitlines():
        key, shape = line.split(" ", 1)
        shape = ast.literal_eval(shape)
        shape = shape if isinstance(shape, tuple) else (shape,)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 1000, shape, generator=generator)
        else:
            state[key] = torch.randn(shape, generator=generator)
    return state


def test_the_four_key_lists_are_present():
    assert [p.stem for p in KEY_LISTS] == ["spatial_bone", "spatial_joint", "temporal_bone",
                                           "temporal_joint"]


@pytest.mark.parametrize("key_list", KEY_LISTS, ids=lambda p: p.stem)
def test_converted_state_dict_loads_strictly_with_values_in_place(key_list):
    state = official_state_dict(key_list)
    config = official_model_config(state)
    stream, modality = key_list.stem.split("_")
    assert config["stream"] == stream
    assert (config["in_channels"], config["base_channels"]) == ((3, 64) if modality == "joint" else (6, 128))
    converted = convert_official_state_dict(state)
    model = STTR(**config)
    model.load_state_dict(converted, strict=True)
    loaded = model.state_dict()
    for official, ours in EXPECTED_RENAMES[stream].items():
        assert torch.equal(loaded[ours], state[official]), official
    assert torch.equal(loaded["classifier.weight"], state["fcn.weight"][..., 0])
    assert torch.equal(loaded["classifier.bias"], state["fcn.bias"])
    assert not [k for k in converted if "person_bn" in k]
    assert len(converted) == len(state) - 5  # person_bn's weight, bias, mean, var, count


@pytest.mark.parametrize("key_list", KEY_LISTS[:2], ids=lambda p: p.stem)
def test_every_problem_is_named_in_one_error(key_list):
    state = official_state_dict(key_list)
    state["backbone.2.gcn1.conv_list.0.wieght"] = state.pop("backbone.2.gcn1.conv_list.0.weight")
    del state["backbone.7.tcn1.bn.bias"]
    state["backbone.5.tcn1.conv.weight"] = torch.randn(3, 3, 9, 1)
    state["extra_head.weight"] = torch.randn(2)
    with pytest.raises(CheckpointError) as error:
        convert_official_state_dict(state)
    message = str(error.value)
    for expected in ("unknown key backbone.2.gcn1.conv_list.0.wieght",
                     "missing key for units.2.spatial.convs.0.weight",
                     "missing key for units.7.temporal.bn.bias",
                     "mis-shaped backbone.5.tcn1.conv.weight: (3, 3, 9, 1)",
                     "unknown key extra_head.weight"):
        assert expected in message


def test_a_state_dict_of_another_model_is_refused_clearly():
    with pytest.raises(CheckpointError, match="missing .*gcn0.conv_list.0.weight"):
        convert_official_state_dict({"conv.weight": torch.randn(2, 2)})


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
@pytest.mark.parametrize("data_parallel", [False, True])
def test_checkpoint_files_in_every_layout(tmp_path, wrapper, data_parallel):
    state = official_state_dict(KEY_LISTS[3], seed=1)
    stored = {("module." + k if data_parallel else k): v for k, v in state.items()}
    if wrapper:
        stored = {wrapper: stored, "epoch": torch.tensor(7)}
    path = tmp_path / "official.pt"
    torch.save(stored, path)
    model = load_official_checkpoint(path)
    assert torch.equal(model.state_dict()["units.3.temporal.qkv.weight"],
                       state["backbone.3.tcn1.qkv_conv.weight"])


def _truncated(path):
    torch.save(official_state_dict(KEY_LISTS[0]), path)
    path.write_bytes(path.read_bytes()[:5000])


def _legacy_truncated(path):
    torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-300])


# how to spoil a checkpoint file -> what the error must say about it
SPOILT_FILES = {
    "truncated": (_truncated, "is truncated or damaged: a torch archive of 5,000 bytes"),
    "truncated-legacy": (_legacy_truncated, "is damaged or not a torch checkpoint"),
    "empty": (lambda path: path.write_bytes(b""), r"is empty \(0 bytes\)"),
    "text": (lambda path: path.write_text("epoch,loss\n1,0.5\n"),
             r"is a text file \(it begins 'epoch,loss'\)"),
    "npy": (lambda path: np.save(open(path, "wb"), np.zeros(3)), "is a numpy .npy array"),
    "label pickle": (lambda path: path.write_bytes(pickle.dumps((["a"], [0]))),
                     r"is a Python pickle \(a label or score file\?\)"),
    "foreign object": (lambda path: torch.save({"model": {"w": torch.zeros(1)},
                                                "acc": np.float64(0.5)}, path),
                       "holds a pickled numpy"),
    "not a state_dict": (lambda path: torch.save([torch.zeros(1)], path),
                         "holds a list, expected a state_dict"),
}


@pytest.mark.parametrize("spoil, message", SPOILT_FILES.values(), ids=SPOILT_FILES)
def test_spoilt_checkpoint_files_are_named_with_what_they_hold(tmp_path, spoil, message):
    path = tmp_path / "spoilt.pt"
    spoil(path)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} {message}"):
        convert_official_state_dict(path)


def test_absent_checkpoint_is_named_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(tmp_path / 'absent.pt'))} does "
                                              "not exist"):
        convert_official_state_dict("absent.pt")


def test_imported_model_runs_and_cli_writes_a_loadable_checkpoint(tmp_path, capsys):
    source, destination = tmp_path / "official.pt", tmp_path / "ours" / "sttr.pt"
    torch.save(official_state_dict(KEY_LISTS[1], seed=2), source)
    assert main(["import-checkpoint", str(source), str(destination)]) == 0
    assert "stream=spatial" in capsys.readouterr().out
    saved = torch.load(destination, weights_only=True)
    model = STTR(**saved["config"])
    model.load_state_dict(saved["model"], strict=True)
    assert model.eval()(torch.randn(1, 3, 8, 25, 2)).shape == (1, 60)
    assert main(["import-checkpoint", str(tmp_path / "nothing.pt"), str(destination)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_atomic_save_keeps_the_previous_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def interrupted_save(obj, file):
        file.write(b"partial bytes")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
