"""Export a trained ST-TR to run without sttr_fast: an ONNX model (onnxruntime, TensorRT, ...) and a
``torch.export`` program (``.pt2``, run by ``torch.export.load`` alone).

Both come from one ``torch.export`` capture of the model in eval mode with the reference attention
core (the fused backends' kernels cannot be traced). The batch and the frame count stay dynamic: the
frames as 4 x ``frames_div_4`` because the two stride-2 units halve them twice, and at least 8: a
capture allowing 4 guards against it all the same (at 4 the strided units leave a single frame).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import uuid
import warnings
from pathlib import Path

import torch
from torch.export import Dim, ExportedProgram

from .attention import SpatialSelfAttention, TemporalSelfAttention
from .model import STTR

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "skeletons", "logits"
MIN_FRAMES = 8
# What the ONNX format needs besides torch; the [export] extra of setup.py installs them.
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")


def dynamic_shapes() -> dict:
    """``torch.export``'s description of the free axes of STTR's input ``x`` (N, C, T, V, M)."""
    return {"x": {0: Dim("batch", min=1),
                  2: 4 * Dim("frames_div_4", min=MIN_FRAMES // 4)}}


def example_input(model: STTR, batch: int = 2, frames: int = 2 * MIN_FRAMES) -> torch.Tensor:
    """A random input of ``model``'s shape, on its device and in its dtype. The capture's example is
    neither the batch of 1 nor the least frame count, which export would take for fixed sizes."""
    parameter = next(model.parameters())
    return torch.randn(batch, model.in_channels, frames, model.num_point, model.num_person,
                       device=parameter.device, dtype=parameter.dtype)


@contextlib.contextmanager
def _exportable(model: STTR):
    """``model`` in eval mode with the reference attention core; its mode and backends restored."""
    attention = [m for m in model.modules()
                 if isinstance(m, (SpatialSelfAttention, TemporalSelfAttention))]
    backends, training = [m.backend for m in attention], model.training
    try:
        for module in attention:
            module.backend = "reference"
        yield model.eval()
    finally:
        for module, backend in zip(attention, backends):
            module.backend = backend
        model.train(training)


@contextlib.contextmanager
def _quiet():
    """Silence what torch's exporters tell a developer of torch rather than a user: a deprecation
    inside torch's own code and the ops of the absent torchvision being skipped."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        registration.setLevel(level)


def export_program(model: STTR) -> ExportedProgram:
    """``torch.export`` capture of ``model`` in eval mode on the reference attention path, with a
    dynamic batch and frame count (a multiple of 4, at least 8). ``model`` is left as it was."""
    with _exportable(model), _quiet():
        return torch.export.export(model, (example_input(model),), dynamic_shapes=dynamic_shapes())


def require_onnx() -> None:
    """Refuse, naming what to install, when a module of the ONNX export is missing."""
    missing = [name for name in ONNX_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"the ONNX export needs {', '.join(missing)}, not installed here: "
                         "pip install 'sttr_fast[export]'")


def _readable_axes(program: ExportedProgram, onnx_model) -> None:
    """Name the ONNX graph's symbolic axes ``batch`` and ``frames_div_4`` instead of the capture's
    symbol names (``s77``), in every value's shape so that the names agree across the graph."""
    placeholder = next(node for node in program.graph.nodes if node.op == "placeholder"
                       and node.name == program.graph_signature.user_inputs[0])
    shape = placeholder.meta["val"].shape
    names = {str(next(iter(shape[axis].node.expr.free_symbols))): name
             for axis, name in ((0, "batch"), (2, "frames_div_4"))}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    graph = onnx_model.graph
    values = [*graph.inputs, *graph.outputs,
              *(output for node in graph.all_nodes() for output in node.outputs)]
    for value in values:
        if value.shape is not None:
            value.shape = type(value.shape)([
                pattern.sub(lambda m: names[m.group(1)], str(dim)) if not isinstance(dim, int)
                else dim for dim in value.shape])


def export_onnx(program: ExportedProgram, path, overwrite: bool = False) -> None:
    """Write ``program`` (from :func:`export_program`) as one self-contained ONNX file: input
    ``skeletons`` (batch, C, 4*frames_div_4, V, M) float32, output ``logits`` (batch, classes)."""
    require_onnx()
    with _quiet():
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME],
                                         output_names=[OUTPUT_NAME], verbose=False)
    _readable_axes(program, onnx_program.model)
    _write(path, "onnx", lambda temporary: onnx_program.save(temporary, external_data=False),
           overwrite)


def save_program(program: ExportedProgram, path, overwrite: bool = False) -> None:
    """Write ``program`` with ``torch.export.save``; ``torch.export.load(path).module()`` runs it."""
    _write(path, "torch-export", lambda temporary: torch.export.save(program, temporary), overwrite)


def _write(path, fmt: str, save, overwrite: bool) -> None:
    """``save`` to a temporary file beside ``path`` (same suffix: the savers check it), then rename:
    never a half-written file under ``path``, nor a file that appeared meanwhile replaced."""
    path = check_output(path, fmt, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        save(temporary)
        check_output(path, fmt, overwrite)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_output(path, fmt: str, overwrite: bool = False) -> Path:
    """The output path for format ``fmt`` (a key of FORMATS), refused when its suffix is another
    format's, it is a directory, or it exists and ``overwrite`` is not given: finished work is
    never replaced unasked."""
    path = Path(path)
    if path.suffix != FORMATS[fmt]:
        raise ValueError(f"{path}: a {fmt} file must end in {FORMATS[fmt]}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory; name the file to write")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it, or write elsewhere")
    return path


def model_from_checkpoint(path) -> STTR:
    """The STTR a checkpoint holds, weights loaded strictly, in eval mode on the reference path:
    built from the config stored by ``sttr train``, or from the model settings that an imported
    or an authors' checkpoint records."""
    from .checkpoint import load_strictly
    from .train.checkpoints import read_checkpoint, require_training_config
    from .train.config import load_config
    from .train.engine import build_model

    checkpoint = read_checkpoint(path)
    settings = checkpoint.settings
    if checkpoint.config is not None:
        model = build_model(load_config(None, ["model.backend=reference"],
                                        values=checkpoint.config,
                                        values_source=f"the config stored in {checkpoint.path}"))
    elif settings:
        model = STTR(num_classes=settings["model.num_classes"], stream=settings["model.stream"],
                     in_channels=settings["in_channels"], base_channels=settings["model.base_channels"],
                     graph=settings["model.graph"], num_person=settings["data.num_person"],
                     tsa_stride_skips_frames=settings["model.tsa_stride_skips_frames"],
                     backend="reference")
    else:
        require_training_config(checkpoint)  # a bare state_dict: says what the checkpoint lacks
    load_strictly(model, checkpoint.state, f"checkpoint {checkpoint.path}")
    return model.eval()
