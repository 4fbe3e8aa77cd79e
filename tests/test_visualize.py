"""``sttr visualize`` (sttr_fast/visualize.py) and the attention hook it reads,
``ops.record_attention`` (sttr_fast/ops/reference.py).

The pictures come from small untrained S-TR and T-TR models (the demo's shape, weights from a fixed
seed) on synthetic raw recordings; what they show was judged by eye, what is checked here is that
every picture is a valid image of the stated size and that two samples give different pictures.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sttr_fast import STTR, ntu_graph
from sttr_fast.attention import SpatialSelfAttention
from sttr_fast.cli import main
from sttr_fast.data.normalisation import pre_normalise
from sttr_fast.data.synthetic.dataset import generate_actions
from sttr_fast.data.synthetic.raw import ntu_names, write_raw_dataset
from sttr_fast.ops import record_attention
from sttr_fast.ops.reference import recording
from sttr_fast.train.checkpoints import TRAINING_FORMAT
from sttr_fast.train.config import load_config
from sttr_fast.train.engine import build_model
from sttr_fast.visualize import (GIF_SIZE, PREDICTION_SIZE, SSA_SIZE, STRIP_SIZE, TSA_SIZE,
                                 _View, check_out_dir, clear_out_dir, gif_frames, visualize)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
MODEL_SEED, RAW_SEED = 11, 5   # module-wide fixtures run before the per-test seed fixture
RECORDED, FRAMES = 32, 16   # raw recordings of 32 frames, resampled to the models' 16
ATTENTION_UNITS = range(3, 9)


def _write_checkpoint(path: Path, stream: str) -> Path:
    config = load_config(DEMO_CONFIG, overrides=[f"model.stream={stream}", f"data.frames={FRAMES}"])
    torch.manual_seed(MODEL_SEED)
    model = build_model(config)
    torch.save({"format": TRAINING_FORMAT, "config": config.to_dict(), "model": model.state_dict(),
                "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("visualize")
    write_raw_dataset(root / "raw", ntu_names(3, seed=RAW_SEED), seed=RAW_SEED,
                      frames=(RECORDED, RECORDED))
    for stream in ("spatial", "temporal"):
        _write_checkpoint(root / f"{stream}.pt", stream)
    return root


@pytest.fixture(scope="module")
def drawn(workspace):
    """Folders of pictures: S-TR on samples 0 (through the command line) and 1, T-TR on sample 0."""
    raw = str(workspace / "raw")
    folders = {("spatial", 0): workspace / "s0", ("spatial", 1): workspace / "s1",
               ("temporal", 0): workspace / "t0"}
    assert main(["visualize", "--checkpoint", str(workspace / "spatial.pt"), raw, "--sample", "0",
                 "--out", str(folders["spatial", 0])]) == 0
    visualize(workspace / "spatial.pt", [raw], folders["spatial", 1], sample=1)
    visualize(workspace / "temporal.pt", [raw], folders["temporal", 0], sample=0, joint=8)
    return folders


def _expected_sizes(stream: str) -> dict[str, tuple[int, int]]:
    unit_picture, size = ("ssa", SSA_SIZE) if stream == "spatial" else ("tsa", TSA_SIZE)
    return {"skeleton.gif": GIF_SIZE, "skeleton_strip.png": STRIP_SIZE,
            "prediction.png": PREDICTION_SIZE,
            **{f"{unit_picture}_unit{unit}.png": size for unit in ATTENTION_UNITS}}


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_the_pictures_are_images_of_the_stated_sizes(drawn, stream):
    folder = drawn[stream, 0]
    expected = _expected_sizes(stream)
    assert sorted(path.name for path in folder.iterdir()) == sorted(expected)
    for name, size in expected.items():
        with Image.open(folder / name) as image:
            assert image.format == ("GIF" if name.endswith(".gif") else "PNG"), name
            assert image.size == size, name
            if name.endswith(".gif"):
                assert image.n_frames == len(gif_frames(FRAMES)) == FRAMES


def test_two_samples_give_different_pictures(drawn):
    for name in _expected_sizes("spatial"):
        pictures = []
        for sample in (0, 1):
            with Image.open(drawn["spatial", sample] / name) as image:
                pictures.append(np.asarray(image.convert("RGB")))
        assert not np.array_equal(*pictures), f"{name} is the same for samples 0 and 1"


def test_the_gif_shows_at_most_100_frames_of_a_long_sample():
    assert list(gif_frames(32)) == list(range(32))
    assert len(gif_frames(300)) == 100 and gif_frames(300).step == 3
    assert len(gif_frames(301)) == math.ceil(301 / 4)


def test_the_view_stands_the_skeleton_up_in_camera_and_in_pre_normalised_coordinates():
    camera, _ = generate_actions(1, frames=FRAMES, seed=3)   # y is up, as the camera sees it
    assert _View(camera[0], ntu_graph()).up == 1 and _View(camera[0], ntu_graph()).sign == 1.0
    rotated = pre_normalise(camera[0])                       # the spine turned onto +z
    assert _View(rotated, ntu_graph()).up == 2 and _View(rotated, ntu_graph()).sign == 1.0


@pytest.mark.parametrize("stream", ["spatial", "temporal"])
def test_recorded_probabilities_are_softmax_of_the_units_queries_and_keys(stream, seed):
    torch.manual_seed(seed)
    model = STTR(num_classes=5, stream=stream, base_channels=16).double().eval()
    unit = model.units[4].spatial if stream == "spatial" else model.units[4].temporal
    captured = []
    unit.qkv.register_forward_hook(lambda module, inputs, output: captured.append(output))
    x = torch.randn(1, 3, 8, 25, 2, dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)
        with record_attention() as records:
            recorded = model(x)
    torch.testing.assert_close(recorded, plain, rtol=1e-12, atol=1e-12)
    assert [record.kind for record in records] == [stream] * len(ATTENTION_UNITS)

    # The unit hands the core the projection in (N', C, T, V); heads are channel chunks.
    qkv = captured[-1].transpose(2, 3)
    n, _, t, v = qkv.shape
    heads, dk = unit.num_heads, unit.dk
    q = qkv[:, :dk].reshape(n, heads, dk // heads, t, v)
    k = qkv[:, dk:2 * dk].reshape(n, heads, dk // heads, t, v)
    if stream == "spatial":   # (N', T, H, V, V): each frame's joints
        scores = torch.einsum("nhdti,nhdtj->nthij", q, k)
    else:                     # (N', V, H, T, T): each joint's frames
        scores = torch.einsum("nhdiv,nhdjv->nvhij", q, k)
    expected = torch.softmax(scores / math.sqrt(dk // heads), dim=-1)
    probabilities = records[1].probabilities    # units.4: the second attention unit
    assert probabilities.dtype == torch.float64
    torch.testing.assert_close(probabilities, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones_like(probabilities[..., 0]),
                               rtol=0, atol=1e-12)


def test_recording_runs_the_reference_core_whichever_backend_is_asked_for(seed):
    torch.manual_seed(seed)
    asked = SpatialSelfAttention(16, 16, num_heads=4, backend="triton").eval()
    reference = SpatialSelfAttention(16, 16, num_heads=4, backend="reference").eval()
    reference.load_state_dict(asked.state_dict())
    x = torch.randn(2, 16, 8, 25)
    with torch.no_grad():
        with record_attention() as records:
            assert recording()
            out = asked(x)
        assert not recording()
        torch.testing.assert_close(out, reference(x), rtol=0, atol=0)
    assert len(records) == 1 and records[0].probabilities.shape == (2, 8, 4, 25, 25)


def _bad_file(workspace) -> Path:
    path = workspace / "bad" / "S001C001P001R001A001.skeleton"
    path.parent.mkdir(exist_ok=True)
    path.write_text("32\n1\nnot a body line\n")
    return path


@pytest.mark.parametrize("case", ["sample out of range", "negative sample", "bad input file",
                                  "missing input", "out holds files", "joint out of range"])
def test_errors_are_one_line_naming_the_culprit(workspace, tmp_path, capsys, case):
    raw = str(workspace / "raw")
    out = tmp_path / "pictures"
    arguments, culprit = {
        "sample out of range": (["--sample", "3"],
                                "--sample 3 is out of range: the inputs hold 3 sample(s) (0 to 2)"),
        "negative sample": (["--sample", "-1"], "--sample must be 0 or more, got -1"),
        "bad input file": ([], str(_bad_file(workspace))),
        "missing input": ([], "nowhere"),
        "out holds files": ([], f"--out {out} holds files; pass --overwrite"),
        "joint out of range": (["--joint", "26"],
                               "--joint must be a joint number from 1 to 25 (the model's skeleton), got 26"),
    }[case]
    inputs = {"bad input file": str(workspace / "bad"),
              "missing input": str(tmp_path / "nowhere")}.get(case, raw)
    if case == "out holds files":
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
    code = main(["visualize", "--checkpoint", str(workspace / "spatial.pt"), inputs, "--out", str(out),
                 *arguments])
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and error.startswith("sttr visualize: error: ") and culprit in error, error
    assert not out.exists() or [path.name for path in out.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_an_earlier_runs_pictures_and_keeps_other_files(tmp_path):
    for name in ("ssa_unit3.png", "skeleton.gif", "notes.txt"):
        (tmp_path / name).write_text("earlier\n")
    check_out_dir(tmp_path, overwrite=True)
    clear_out_dir(tmp_path)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(ValueError, match="is a file"):
        check_out_dir(tmp_path / "notes.txt", overwrite=True)
