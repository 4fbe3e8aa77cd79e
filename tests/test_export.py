"""``sttr export`` and sttr_fast.export: the ONNX model run by onnxruntime and the torch.export
program run after ``torch.export.load`` give the eager model's logits (relative error <= 1e-4) for
batches and frame counts other than the capture's; bad requests are one line and write nothing.

Exports take seconds each, so each happens once per module: S-TR through the command line (both
formats) from a checkpoint in sttr train's format, T-TR through the Python API (one capture, both
formats). onnxruntime, onnx and onnxscript come with the dev extra, so a missing one fails here.
"""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from sttr_fast import STTR, export
from sttr_fast.attention import SpatialSelfAttention, TemporalSelfAttention
from sttr_fast.cli import main
from sttr_fast.train.checkpoints import TRAINING_FORMAT
from sttr_fast.train.config import load_config
from sttr_fast.train.engine import build_model

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
# The real architecture (all 9 units, stride-2 TSA in T-TR), narrow and with few classes.
TINY = ["model.base_channels=8", "model.num_heads=2", "model.num_classes=4", "data.frames=8"]
# Two batches and two frame counts, none of them the capture's example (2, 16).
SHAPES = [(1, 8), (1, 20), (3, 8), (3, 20)]
TOLERANCE = 1e-4


def trained_like(stream: str, seed: int) -> tuple:
    """A model of the tiny config with random weights and BatchNorm statistics (as after training,
    so that eval mode's normalisation is not the identity), and its config."""
    config = load_config(DEMO, [*TINY, f"model.stream={stream}"])
    torch.manual_seed(seed)
    model = build_model(config)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0.0, 0.5)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 2.0)
    return model.eval(), config


def relative_error(result, expected: torch.Tensor) -> float:
    result = torch.as_tensor(np.asarray(result))
    return ((result - expected).abs().max() / expected.abs().max()).item()


def eager_logits(model, batch: int, frames: int, seed: int):
    x = torch.randn(batch, model.in_channels, frames, model.num_point, model.num_person,
                    generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return x, model(x)


def onnx_session(path) -> onnxruntime.InferenceSession:
    # The CPU provider alone: a node it cannot run fails the session, with no fallback elsewhere.
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def s_tr_started(tmp_path_factory):
    """S-TR's `sttr export` runs (ONNX, then a program over an earlier file with --overwrite),
    from a checkpoint as sttr train writes it, started in a child process: they run on the second
    core while this process exports T-TR, which halves the module's time on two cores."""
    root = tmp_path_factory.mktemp("s_tr")
    model, config = trained_like("spatial", seed=1)
    checkpoint = root / "best.pt"
    torch.save({"format": TRAINING_FORMAT, "config": config.to_dict(), "epoch": 1,
                "model": model.state_dict()}, checkpoint)
    onnx_file, program_file = root / "model.onnx", root / "model.pt2"
    program_file.write_text("earlier work\n")
    commands = [[sys.executable, "-m", "sttr_fast", "export", "--checkpoint", str(checkpoint),
                 "--format", fmt, "--out", str(out), *extra]
                for fmt, out, extra in (("onnx", onnx_file, []),
                                        ("torch-export", program_file, ["--overwrite"]))]
    # one thread each, as the eager checks later, so that the two processes do not contend
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with ThreadPoolExecutor(1) as pool:
        runs = pool.submit(lambda: [subprocess.run(command, capture_output=True, text=True,
                                                   env=env, timeout=600, check=False)
                                    for command in commands])
        yield SimpleNamespace(model=model, checkpoint=checkpoint, onnx=onnx_file,
                              program=program_file), runs


@pytest.fixture(scope="module")
def t_tr(s_tr_started, tmp_path_factory):
    """T-TR through the Python API (while S-TR's exports run): one capture of a model left in
    training mode on the default backend, written in both formats."""
    root = tmp_path_factory.mktemp("t_tr")
    model, _ = trained_like("temporal", seed=2)
    model.train()
    program = export.export_program(model)
    after = SimpleNamespace(training=model.training, backends={
        m.backend for m in model.modules()
        if isinstance(m, (SpatialSelfAttention, TemporalSelfAttention))})
    export.save_program(program, root / "model.pt2")
    export.export_onnx(program, root / "model.onnx")
    return SimpleNamespace(model=model.eval(), onnx=root / "model.onnx",
                           session=onnx_session(root / "model.onnx"),
                           run=torch.export.load(root / "model.pt2").module(), after=after)


@pytest.fixture(scope="module")
def s_tr(s_tr_started, t_tr):
    """S-TR's exports once they are done (after T-TR's, which run meanwhile)."""
    exported, runs = s_tr_started
    for run in runs.result():
        assert (run.returncode, run.stderr) == (0, ""), run.stderr
        assert run.stdout.startswith("wrote ") and run.stdout.count("\n") == 1
    exported.session = onnx_session(exported.onnx)
    exported.run = torch.export.load(exported.program).module()  # --overwrite replaced the file
    return exported


@pytest.fixture(params=["s_tr", "t_tr"])
def exported(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("batch, frames", SHAPES)
def test_onnxruntime_gives_the_eager_logits(exported, batch, frames, seed):
    x, expected = eager_logits(exported.model, batch, frames, seed)
    (logits,) = exported.session.run(None, {"skeletons": x.numpy()})
    assert logits.shape == (batch, exported.model.num_classes)
    assert relative_error(logits, expected) <= TOLERANCE


@pytest.mark.parametrize("batch, frames", SHAPES)
def test_the_loaded_program_gives_the_eager_logits(exported, batch, frames, seed):
    x, expected = eager_logits(exported.model, batch, frames, seed)
    logits = exported.run(x)
    assert relative_error(logits.detach(), expected) <= TOLERANCE


def test_the_onnx_graph_is_standard_onnx_with_named_dynamic_axes(exported):
    graph = onnx.load(exported.onnx)
    onnx.checker.check_model(graph, full_check=True)
    assert {node.domain for node in graph.graph.node} == {""}   # no custom or contrib operators
    assert not graph.functions and not graph.graph.initializer[0].external_data
    model = exported.model
    [given], [result] = exported.session.get_inputs(), exported.session.get_outputs()
    assert (given.name, given.shape, given.type) == (
        "skeletons", ["batch", model.in_channels, "4*frames_div_4", 25, 2], "tensor(float)")
    assert (result.name, result.shape) == ("logits", ["batch", model.num_classes])


def test_the_program_refuses_frames_it_was_not_captured_for(t_tr):
    for frames in (10, 4):   # not a multiple of 4; a multiple below the least, 8
        with pytest.raises(AssertionError):
            t_tr.run(torch.randn(1, 3, frames, 25, 2))


def test_export_program_leaves_the_model_as_it_was(t_tr):
    assert t_tr.after.training and t_tr.after.backends == {"auto"}


def test_an_existing_output_is_kept_without_overwrite(s_tr, capsys):
    before = s_tr.onnx.read_bytes()
    assert main(["export", "--checkpoint", str(s_tr.checkpoint), "--format", "onnx",
                 "--out", str(s_tr.onnx)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "exists; pass --overwrite" in error
    assert s_tr.onnx.read_bytes() == before


@pytest.mark.parametrize("case", ["unknown format", "wrong suffix", "missing checkpoint",
                                  "text checkpoint", "truncated checkpoint", "bare state_dict",
                                  "out is a directory", "onnx modules missing"])
def test_a_bad_request_is_one_line_and_writes_nothing(s_tr, tmp_path, case, capsys, monkeypatch):
    checkpoint, out, fmt = s_tr.checkpoint, tmp_path / "model.onnx", "onnx"
    culprit = str(out)
    if case == "unknown format":
        fmt, culprit = "tensorrt", "tensorrt"
    elif case == "wrong suffix":
        fmt, culprit = "torch-export", ".pt2"
    elif case == "missing checkpoint":
        checkpoint = culprit = tmp_path / "absent.pt"
    elif case == "text checkpoint":
        checkpoint = culprit = tmp_path / "metrics.pt"
        checkpoint.write_text("epoch,top1\n1,50.0\n")
    elif case == "truncated checkpoint":
        checkpoint = culprit = tmp_path / "truncated.pt"
        checkpoint.write_bytes(s_tr.checkpoint.read_bytes()[:5000])
    elif case == "bare state_dict":
        checkpoint, culprit = tmp_path / "weights.pt", "pass --config"
        torch.save(s_tr.model.state_dict(), checkpoint)
    elif case == "out is a directory":
        out = culprit = tmp_path / "folder.onnx"
        out.mkdir()
    else:
        monkeypatch.setattr(export, "ONNX_MODULES", ("onnx", "onnx_runtime_of_nowhere"))
        culprit = "pip install 'sttr_fast[export]'"
    before = sorted(tmp_path.rglob("*"))
    code = main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and error.startswith("sttr export: error:")
    assert str(culprit) in error and "Traceback" not in error
    assert sorted(tmp_path.rglob("*")) == before


def test_an_imported_checkpoint_builds_its_model_from_the_recorded_settings(tmp_path):
    # what sttr import-checkpoint writes: STTR's arguments (the authors' 8 heads), no data config
    arguments = dict(num_classes=4, stream="temporal", in_channels=6, base_channels=16,
                     num_point=25, num_person=1)
    original = STTR(**arguments)
    imported = tmp_path / "imported.pt"
    torch.save({"format": "sttr_fast", "config": arguments, "model": original.state_dict()},
               imported)
    model = export.model_from_checkpoint(imported)
    assert not model.training and (model.stream, model.in_channels, model.num_person) == (
        "temporal", 6, 1)
    assert {m.backend for m in model.modules() if isinstance(m, TemporalSelfAttention)} == {
        "reference"}
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in original.state_dict().items())
