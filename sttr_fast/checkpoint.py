"""Import of the authors' ST-TR checkpoints, and atomic checkpoint writing."""
from __future__ import annotations

import os
import pickle
import re
import uuid
import warnings
import zipfile
from pathlib import Path

import torch

from .data.file_kinds import NPY_MAGIC, ZIP_MAGIC, describe, text_beginning
from .model import STTR

# The authors' module names -> sttr_fast's. Prefix rules pick the block, then the inner renames
# apply to the rest of the key; a key no prefix rule matches is unknown.
_PREFIX_RULES = (
    (re.compile(r"^data_bn\.(.+)$"), r"data_bn.\1"),
    (re.compile(r"^gcn0\.(.+)$"), r"stem.spatial.\1"),
    (re.compile(r"^tcn0\.(.+)$"), r"stem.temporal.\1"),
    (re.compile(r"^backbone\.(\d+)\.gcn1\.(.+)$"), r"units.\1.spatial.\2"),
    (re.compile(r"^backbone\.(\d+)\.tcn1\.(.+)$"), r"units.\1.temporal.\2"),
    (re.compile(r"^backbone\.(\d+)\.down1\.(.+)$"), r"units.\1.shortcut.\2"),
    (re.compile(r"^fcn\.(.+)$"), r"classifier.\1"),
)
_INNER_RENAMES = (
    (re.compile(r"\.conv_list\."), ".convs."),
    (re.compile(r"\.attention_conv\.qkv_conv\."), ".qkv."),
    (re.compile(r"\.attention_conv\.attn_out\."), ".out_proj."),
    (re.compile(r"\.qkv_conv\."), ".qkv."),
    (re.compile(r"\.attn_out\."), ".out_proj."),
    (re.compile(r"^(units\.\d+\.(spatial|temporal))\.data_bn\."), r"\1.input_bn."),
)
# Present in the authors' state_dict but never used by their forward pass.
_UNUSED_PREFIXES = ("person_bn.",)
# The skeletons of the authors' datasets by joint count: NTU RGB+D and Kinetics-Skeleton. Their
# checkpoints hold no adjacency, the joint count is what tells them apart.
OFFICIAL_GRAPHS = {25: "ntu-rgbd", 18: "openpose-18"}
# The qkv projection of the first stride-2 TSA unit.
_STRIDED_TSA_QKV = "backbone.3.tcn1.qkv_conv.weight"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message lists every problem."""


class CheckpointMismatch(CheckpointError):
    """A checkpoint built with other settings than the config; ``details`` has one line per
    differing key, e.g. ``model.stream: checkpoint 'temporal', config 'spatial'``."""

    def __init__(self, message: str, details: list[str]):
        super().__init__(message)
        self.details = details


def official_key_to_sttr(key: str) -> str | None:
    """The sttr_fast name of one of the authors' parameter keys, or None if it is not theirs."""
    for pattern, replacement in _PREFIX_RULES:
        if pattern.match(key):
            renamed = pattern.sub(replacement, key)
            for inner, inner_replacement in _INNER_RENAMES:
                renamed = inner.sub(inner_replacement, renamed)
            return renamed
    return None


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _legacy_torch(head: bytes) -> bool:
    """The pre-1.6 torch.save format: a pickle whose first object is torch's magic number."""
    return head.startswith(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")


def load_torch_file(path, what: str = "checkpoint"):
    """``torch.load`` of a file, without running code; every way a file can fail to be a torch
    checkpoint (absent, empty, text, another format, truncated, foreign objects) is a
    CheckpointError that names the file, what was expected and what it holds."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{what} {path.resolve()} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is a directory, expected a .pt file")
    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(512)
    expected = "expected a torch checkpoint (.pt)"
    if not head or head.startswith(NPY_MAGIC) or text_beginning(head) is not None:
        raise CheckpointError(f"{what} {path} {describe(path)}; {expected}")
    if head.startswith(ZIP_MAGIC) and not zipfile.is_zipfile(path):
        raise CheckpointError(f"{what} {path} is truncated or damaged: a torch archive of "
                              f"{size:,} bytes without its end (an interrupted copy or download?)")
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch ask the user to file an issue; the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        foreign = _UNSUPPORTED_GLOBAL.search(str(error))
        if foreign:
            raise CheckpointError(
                f"{what} {path} holds a pickled {foreign.group(1)}; checkpoints are read without "
                "running code, so only tensors, numbers, strings and containers are accepted"
            ) from error
        raise CheckpointError(f"{what} {path} {describe(path)}, not one torch.load can read; "
                              f"{expected}") from error
    except Exception as error:  # torch raises many types for damaged or foreign files
        if head[0] != ZIP_MAGIC[0] and not _legacy_torch(head):
            raise CheckpointError(f"{what} {path} {describe(path)}; {expected}") from error
        reason = str(error).split(". ")[0].strip() or type(error).__name__
        raise CheckpointError(f"{what} {path} is damaged or not a torch checkpoint "
                              f"({type(error).__name__}: {reason}); {expected}") from error


def read_state_dict(source, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state_dict from a dict or a ``.pt`` path: bare, or under ``model``/``state_dict``,
    with DataParallel's ``module.`` prefixes removed."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        source = load_torch_file(path, what)
        what = f"{what} {path}"
    if not isinstance(source, dict):
        raise CheckpointError(f"{what} holds a {type(source).__name__}, expected a state_dict")
    for wrapper in ("model", "state_dict"):
        if isinstance(source.get(wrapper), dict):
            source = source[wrapper]
            break
    state = {}
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: entry {key!r} is a {type(value).__name__}, "
                                  "expected a tensor")
        state[key.removeprefix("module.")] = value
    if not state:
        raise CheckpointError(f"{what} holds no weights (an empty state_dict)")
    return state


def load_strictly(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(state, strict=True)``, with a refusal that counts the missing,
    unexpected and mis-shaped keys and shows a few of each instead of listing them all."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(value.shape)}"
                 for key, value in expected.items()
                 if key in state and state[key].shape != value.shape]
    problems = [f"{len(keys)} {kind} key{'s' if len(keys) > 1 else ''} (e.g. "
                + ", ".join(keys[:2]) + ")"
                for kind, keys in (("missing", missing), ("unexpected", unexpected),
                                   ("mis-shaped", misshaped)) if keys]
    if problems:
        raise CheckpointError(f"{what} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def official_model_config(state: dict[str, torch.Tensor]) -> dict:
    """The ``STTR`` keyword arguments that the authors' state_dict was trained with."""
    needed = ("gcn0.conv_list.0.weight", "gcn0.mask", "data_bn.weight", "fcn.weight")
    absent = [key for key in needed if key not in state]
    if absent:
        raise CheckpointError(f"not an ST-TR state_dict in the authors' layout: missing {absent}")
    base_channels, in_channels = state["gcn0.conv_list.0.weight"].shape[:2]
    num_point = state["gcn0.mask"].shape[-1]
    num_person, remainder = divmod(state["data_bn.weight"].numel(), in_channels * num_point)
    if remainder or num_person < 1:
        raise CheckpointError(f"data_bn.weight has {state['data_bn.weight'].numel()} features, "
                              f"not a multiple of in_channels*joints = {in_channels * num_point}")
    if num_point not in OFFICIAL_GRAPHS:
        raise CheckpointError(f"gcn0.mask has {num_point} joints; the authors' code builds "
                              + " and ".join(f"{graph} ({joints} joints)"
                                             for joints, graph in OFFICIAL_GRAPHS.items()))
    if any(".attention_conv." in key for key in state):
        stream = "spatial"
    elif any(re.match(r"^backbone\.\d+\.tcn1\.qkv_conv\.", key) for key in state):
        stream = "temporal"
    else:
        raise CheckpointError("the state_dict has neither spatial (gcn1.attention_conv) nor "
                              "temporal (tcn1.qkv_conv) attention weights")
    # The authors' stride-2 TSA takes a (1, 1) qkv kernel for an even joint count and (1, 2) for an
    # odd one; the weight's width says which their model had.
    strided_qkv = state.get(_STRIDED_TSA_QKV)
    skips_frames = stream == "temporal" and strided_qkv is not None and strided_qkv.shape[-1] == 1
    return dict(num_classes=state["fcn.weight"].shape[0], stream=stream, in_channels=in_channels,
                base_channels=base_channels, num_point=num_point, num_person=num_person,
                graph=OFFICIAL_GRAPHS[num_point], tsa_stride_skips_frames=skips_frames)


def convert_official_state_dict(source) -> dict[str, torch.Tensor]:
    """Map the authors' ST-TR state_dict (a dict or a ``.pt`` path) to ``STTR``'s names.

    Drops the unused ``person_bn``. Raises CheckpointError listing every unknown, missing or
    mis-shaped key at once.
    """
    state = read_state_dict(source, "official checkpoint")
    config = official_model_config(state)
    with torch.device("meta"):
        expected = STTR(**config).state_dict()
    converted, provided, unknown, misshaped = {}, set(), [], []
    for key, value in state.items():
        if key.startswith(_UNUSED_PREFIXES):
            continue
        target = official_key_to_sttr(key)
        if target is None or target not in expected:
            unknown.append(key)
            continue
        provided.add(target)
        if target == "classifier.weight" and value.dim() == 3 and value.shape[-1] == 1:
            value = value[..., 0]  # the authors' classifier is a Conv1d with kernel size 1
        if value.shape != expected[target].shape:
            misshaped.append(f"{key}: {tuple(value.shape)} where {target} needs "
                             f"{tuple(expected[target].shape)}")
            continue
        converted[target] = value
    missing = [key for key in expected if key not in provided]
    problems = ([f"unknown key {key}" for key in unknown]
                + [f"missing key for {key}" for key in missing]
                + [f"mis-shaped {entry}" for entry in misshaped])
    if problems:
        raise CheckpointError(f"cannot convert the official ST-TR state_dict ({config['stream']} "
                              f"stream, {config['in_channels']} channels): " + "; ".join(problems))
    return converted


def load_official_checkpoint(source, **overrides) -> STTR:
    """Build the ``STTR`` an official checkpoint describes and load it strictly."""
    state = read_state_dict(source, "official checkpoint")
    model = STTR(**{**official_model_config(state), **overrides})
    model.load_state_dict(convert_official_state_dict(state), strict=True)
    return model


def save_atomic(obj, path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name opened exclusively keeps the default permissions (mkstemp's are owner-only).
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
