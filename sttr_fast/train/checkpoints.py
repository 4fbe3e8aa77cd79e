"""Checkpoints as ``sttr test`` and ``sttr train --resume`` read them: the weights, the config stored
with them, and the settings that shape the model, compared with a config before anything is loaded,
so that a mismatch is one line per differing key instead of a list of every mis-shaped tensor."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import (CheckpointError, CheckpointMismatch, convert_official_state_dict,
                          load_torch_file, official_model_config, read_state_dict)
from ..data.modalities import CHANNELS
from ..graph import DEFAULT_GRAPH, graph_config_label, same_graph
from .config import Config

TRAINING_FORMAT = "sttr_fast-train"   # written by sttr train
IMPORTED_FORMAT = "sttr_fast"         # written by sttr import-checkpoint: STTR's arguments as config
# The settings that decide the weights' shapes or what they mean (num_heads splits the same
# weights differently; the modality is what the input channels hold; the graph is what the
# joints are and how they connect).
MODEL_SETTINGS = ("model.stream", "model.num_classes", "model.base_channels", "model.num_heads",
                  "model.graph", "model.tsa_stride_skips_frames", "data.modality", "data.num_person")
# What a checkpoint written before a setting existed was built with.
LEGACY_SETTINGS = {"model.graph": DEFAULT_GRAPH, "model.tsa_stride_skips_frames": False}


@dataclass
class StoredCheckpoint:
    path: Path
    content: dict                    # what torch.load returned
    state: dict[str, torch.Tensor]   # the weights under sttr_fast's names
    config: dict | None              # the full training config, for sttr train's checkpoints
    settings: dict[str, object]      # MODEL_SETTINGS it records, plus in_channels


def _from_model_arguments(arguments: dict) -> dict[str, object]:
    """The settings recorded by STTR's keyword arguments (imported and official checkpoints)."""
    return {"model.stream": arguments["stream"], "model.num_classes": arguments["num_classes"],
            "model.base_channels": arguments["base_channels"],
            "model.graph": arguments.get("graph", LEGACY_SETTINGS["model.graph"]),
            "model.tsa_stride_skips_frames": arguments.get(
                "tsa_stride_skips_frames", LEGACY_SETTINGS["model.tsa_stride_skips_frames"]),
            "data.num_person": arguments["num_person"], "in_channels": arguments["in_channels"]}


def read_checkpoint(path, what: str = "checkpoint") -> StoredCheckpoint:
    """A checkpoint of ``sttr train``, ``sttr import-checkpoint``, a bare state_dict, or one of
    the authors' code (converted to sttr_fast's names)."""
    path = Path(path)
    content = load_torch_file(path, what)
    state = read_state_dict(content, f"{what} {path}")
    config, settings = None, {}
    stored = content.get("config")  # read_state_dict refused anything but a dict
    if content.get("format") == TRAINING_FORMAT and isinstance(stored, dict):
        config = stored
        for key in MODEL_SETTINGS:
            section, name = key.split(".")
            if name in stored.get(section, {}):
                settings[key] = stored[section][name]
            elif key in LEGACY_SETTINGS:
                settings[key] = LEGACY_SETTINGS[key]
    elif content.get("format") == IMPORTED_FORMAT and isinstance(stored, dict):
        settings = _from_model_arguments(stored)
    elif any(key.startswith(("backbone.", "gcn0.")) for key in state):
        try:
            settings = _from_model_arguments(official_model_config(state))
            state = convert_official_state_dict(state)
        except CheckpointError as error:
            raise CheckpointError(f"{what} {path}: {error}") from error
    return StoredCheckpoint(path, content, state, config, settings)


def differences(settings: dict[str, object], config: Config) -> list[str]:
    """One line per setting where the checkpoint and ``config`` disagree."""
    lines = []
    for key, stored in settings.items():
        if key == "in_channels":
            channels = CHANNELS[config.data.modality]
            if stored != channels:
                lines.append(f"data.modality: checkpoint has {stored} input channels, config "
                             f"{config.data.modality!r} gives {channels}")
        elif key == "model.graph":
            if not same_graph(stored, config.model.graph):
                ours, theirs = graph_config_label(stored), graph_config_label(config.model.graph)
                lines.append(f"model.graph: checkpoint {ours}, config {theirs}"
                             + (" with other edges" if ours == theirs else ""))
        else:
            section, name = key.split(".")
            current = getattr(getattr(config, section), name)
            if stored != current:
                lines.append(f"{key}: checkpoint {stored!r}, config {current!r}")
    return lines


def check_fits(checkpoint: StoredCheckpoint, config: Config, config_source: str,
               hint: str = "") -> None:
    """Refuse, with one line per differing key, a checkpoint built with other model settings."""
    lines = differences(checkpoint.settings, config)
    if lines:
        count = f"{len(lines)} settings differ" if len(lines) > 1 else "1 setting differs"
        raise CheckpointMismatch(f"{checkpoint.path} was not trained with {config_source}: "
                                 f"{count}{hint}", lines)


def require_training_config(checkpoint: StoredCheckpoint) -> dict:
    if checkpoint.config is None:
        kind = ("an imported checkpoint, which stores the model's shape but not its data"
                if checkpoint.content.get("format") == IMPORTED_FORMAT
                else "a checkpoint without a stored config")
        raise CheckpointError(f"{checkpoint.path} is {kind}; pass --config to say which data and "
                              "settings to use")
    return checkpoint.config
