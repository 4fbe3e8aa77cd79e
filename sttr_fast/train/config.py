"""Training configuration: YAML files (with ``_base_`` inheritance) plus dotted overrides.

Every key is declared in the dataclasses below; an unknown key is an error that names the key and
the closest valid ones, and a value of the wrong type names the key, the expected type and the value.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..graph import DEFAULT_GRAPH, graph_from_config


@dataclass
class ModelConfig:
    stream: str = "spatial"          # spatial (S-TR) or temporal (T-TR)
    num_classes: int = 60
    base_channels: int = 64          # 128 for joints+bones (the authors' double_channel)
    num_heads: int = 8
    drop_attention: float = 0.5
    dropout: float = 0.5
    backend: str = "auto"
    # A preset (sttr_fast/graph.py: ntu-rgbd, openpose-18, coco-17, ...) or a custom skeleton
    # {num_joints: V, edges: [[i, j], ...], center: c}, 0-based, i pointing towards j.
    graph: str | dict = DEFAULT_GRAPH
    # The authors' stride-2 TSA for an even joint count: each token is every other frame. Only to
    # load their Kinetics checkpoints (sttr import-checkpoint sets it); off trains the usual TSA.
    tsa_stride_skips_frames: bool = False


@dataclass
class AugmentConfig:
    """ST-GCN-family augmentations of the training split; all off, as in ST-TR's NTU configs."""
    random_shift: bool = False
    window: int = 0                  # ST-GCN's random choose: random crop/pad to this many frames; 0: off
    random_move: bool = False
    rotation_degrees: float = 0.0    # random 3-D rotation up to this angle; 0 disables


@dataclass
class DataConfig:
    format: str = "synthetic"        # synthetic, agcn (2s-AGCN .npy/.pkl), pyskl, ctrgcn
    modality: str = "joint"          # joint, bone, joint_bone, joint_motion, bone_motion
    train_data: str | None = None    # agcn: train_data_joint.npy; pyskl: annotation .pkl; ctrgcn: .npz
    train_label: str | None = None   # agcn: train_label.pkl
    val_data: str | None = None
    val_label: str | None = None
    benchmark: str = "xsub"          # pyskl split prefix: xsub, xview, xset
    frames: int = 300                # T fed to the network (divisible by 4)
    num_person: int = 2
    synthetic_train: int = 600       # synthetic: samples per split
    synthetic_val: int = 240
    synthetic_seed: int = 0
    batch_size: int = 16             # per process and step, before accumulation
    eval_batch_size: int = 64
    num_workers: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    milestones: list[int] = field(default_factory=lambda: [60, 90])
    gamma: float = 0.1
    warmup_epochs: int = 0
    accumulate: int = 2              # the authors: 16 per step x 2 accumulated = 32
    clip_grad_norm: float | None = None
    label_smoothing: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 120
    seed: int = 1
    amp: str = "none"                # none, bf16 (CUDA or CPU), fp16 (CUDA only)
    eval_interval: int = 1
    device: str = "auto"             # auto: cuda if available (the local rank's GPU under torchrun)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "model.stream": ("spatial", "temporal"),
    "data.format": ("synthetic", "agcn", "pyskl", "ctrgcn"),
    "data.modality": ("joint", "bone", "joint_bone", "joint_motion", "bone_motion"),
    "train.amp": ("none", "bf16", "fp16"),
}


# Keys whose value a function checks instead of a type (it raises ValueError saying what is wrong);
# their value is replaced whole by a later file or override, never merged key by key.
CHECKED_BY = {"model.graph": graph_from_config}


class ConfigError(ValueError):
    """A configuration that names an unknown key or holds a value of the wrong type or range."""


def _valid_keys(cls, prefix: str = "", sections: bool = False) -> list[str]:
    """Every dotted key (``train.epochs``); with ``sections``, the sections too (``data.augment``)."""
    keys = []
    for name, annotation in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(annotation):
            keys += [f"{prefix}{name}"] if sections else []
            keys += _valid_keys(annotation, f"{prefix}{name}.", sections)
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _leaves(key: str, value) -> list[str]:
    """The dotted keys a value sets: ``trian`` with ``{epochs: 3}`` sets ``trian.epochs``."""
    if isinstance(value, dict) and value:
        return [leaf for name, inner in value.items() for leaf in _leaves(f"{key}.{name}", inner)]
    return [key]


def _unknown_key(key: str, value, where: str) -> ConfigError:
    """An unknown key or section, with the closest valid keys (a misspelt section is matched
    together with the keys under it, so ``trian.epochs`` suggests ``train.epochs``)."""
    valid = _valid_keys(Config)
    if isinstance(value, dict):
        close = []
        for leaf in _leaves(key, value):
            close += [match for match in difflib.get_close_matches(leaf, valid, n=3, cutoff=0.75)
                      if match not in close]
        close = close or difflib.get_close_matches(key, _valid_keys(Config, sections=True), n=3,
                                                   cutoff=0.6)
        what = f"section '{key}'" + (f" (in {', '.join(_leaves(key, value))})" if value else "")
    else:
        close = difflib.get_close_matches(key, _valid_keys(Config, sections=True), n=3,
                                          cutoff=0.75)
        what = f"key '{key}'"
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"{where}: unknown config {what}{hint}")


def _coerce(key: str, value, annotation, where: str):
    """Check ``value`` against a field's type; ints are accepted where floats are expected."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _coerce(key, value, next(a for a in args if a is not type(None)), where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0], where) for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool) or not isinstance(value, annotation):
        raise ConfigError(f"{where}: {key} must be {annotation.__name__}, got {value!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{where}: {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def _apply(instance, values: dict, prefix: str, where: str) -> None:
    hints = typing.get_type_hints(type(instance))
    names = {f.name for f in dataclasses.fields(instance)}
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in names:
            raise _unknown_key(key, value, where)
        current = getattr(instance, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {key} is a section; give its keys, got {value!r}")
            _apply(current, value, f"{key}.", where)
        elif key in CHECKED_BY:
            try:
                CHECKED_BY[key](value)
            except ValueError as error:
                raise ConfigError(f"{where}: {key}: {error}") from None
            setattr(instance, name, value)
        else:
            setattr(instance, name, _coerce(key, value, hints[name], where))


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: as YAML 1.1, PyYAML reads a float without a
    dot, such as ``lr: 1e-3`` or ``optim.lr=5e-4``, as a string."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The YAML mapping of ``path`` merged over its ``_base_`` file (relative to it), if any."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ files include each other: "
                          + " -> ".join(str(p) for p in (*seen, path)))
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = _load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not a text file, expected a YAML config") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(error)}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {values!r}")
    base = values.pop("_base_", None)
    if base is None:
        return values
    return _deep_merge(_read_yaml(path.parent / base, (*seen, path)), values)


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: what is wrong and where."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _deep_merge(base: dict, overrides: dict, prefix: str = "") -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if (isinstance(value, dict) and isinstance(merged.get(key), dict)
                and f"{prefix}{key}" not in CHECKED_BY):
            merged[key] = _deep_merge(merged[key], value, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[str, object]:
    """``section.key=value`` with the value read as YAML (``lr=0.05``, ``milestones=[10,20]``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        return key.strip(), _load_yaml(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML: "
                          f"{_yaml_problem(error)}") from error


def load_config(path=None, overrides: list[str] = (), values: dict | None = None,
                values_source: str = "config values") -> Config:
    """Defaults, then the YAML file (if any), then ``values`` (from ``values_source``), then
    ``key=value`` overrides."""
    config = Config()
    if path is not None:
        _apply(config, _read_yaml(Path(path)), "", str(path))
    if values:
        _apply(config, values, "", values_source)
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.rpartition(".")
        nested: dict = {name: value}
        for part in reversed(section.split(".")) if section else ():
            nested = {part: nested}
        _apply(config, nested, "", f"override {text!r}")
    _check_ranges(config)
    return config


def _check_ranges(config: Config) -> None:
    checks = [
        ("data.frames", config.data.frames % 4 == 0 and config.data.frames > 0,
         "a positive multiple of 4"),
        ("data.batch_size", config.data.batch_size >= 1, ">= 1"),
        ("data.eval_batch_size", config.data.eval_batch_size >= 1, ">= 1"),
        ("data.num_workers", config.data.num_workers >= 0, ">= 0"),
        ("data.num_person", config.data.num_person >= 1, ">= 1"),
        ("data.augment.window", config.data.augment.window % 4 == 0 and
         config.data.augment.window >= 0, "0 (off) or a positive multiple of 4"),
        ("optim.accumulate", config.optim.accumulate >= 1, ">= 1"),
        ("optim.lr", config.optim.lr > 0, "> 0"),
        ("train.epochs", config.train.epochs >= 1, ">= 1"),
        ("train.eval_interval", config.train.eval_interval >= 1, ">= 1"),
        ("model.drop_attention", 0 <= config.model.drop_attention <= 1, "in [0, 1]"),
        ("model.dropout", 0 <= config.model.dropout < 1, "in [0, 1)"),
        ("optim.label_smoothing", 0 <= config.optim.label_smoothing < 1, "in [0, 1)"),
    ]
    for key, ok, requirement in checks:
        if not ok:
            value = config
            for name in key.split("."):
                value = getattr(value, name)
            raise ConfigError(f"{key} must be {requirement}, got {value!r}")


def save_config(config: Config, path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
