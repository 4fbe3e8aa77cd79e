"""Pictures of one sample and of what a trained model attends to in it: what ``sttr visualize`` draws.

The sample is prepared exactly as ``sttr predict`` prepares it (sttr_fast/predict.py) and run once
through the checkpoint's eval-mode network in float32 under ``ops.record_attention()``, which keeps
the softmax probabilities of every attention unit. Into the output folder go:

- ``skeleton.gif``: the skeleton over time, one GIF frame per input frame (every ``ceil(T/100)``-th
  frame of longer samples, so at most 100), 80 ms each, ``GIF_SIZE`` pixels;
- ``skeleton_strip.png``: ``STRIP_FRAMES`` frames evenly spread over the sample, ``STRIP_SIZE``;
- ``prediction.png``: the top-5 actions by name with their probabilities, ``PREDICTION_SIZE``;
- S-TR, per spatial self-attention unit: ``ssa_unit<i>.png`` (``SSA_SIZE``), whose top row holds
  the V x V joint-to-joint map of every head and of their mean (row: query joint, column: key
  joint; averaged over the unit's frames) and whose bottom row draws each map on the skeleton (the
  sample's middle frame): a line between two joints for the ``LINES`` pairs that attend to each
  other most, if above uniform attention, thicker and darker the more (on one scale for the unit's
  heads), and each joint's dot sized by the attention it receives;
- T-TR, per temporal self-attention unit: ``tsa_unit<i>.png`` (``TSA_SIZE``), the frame x frame
  map of one joint (``--joint``, 1-based in the graph's joint order; by default the right hand or
  wrist where the graph names one, else its centre) for every head and their mean, on the axes of input frames (a unit of stride 2, or after one, has a token per
  2 or 4 frames).

``<i>`` is the unit's index in ``STTR.units`` (``units.<i>.spatial`` in the weights). The maps are
the first person's (a second person is drawn in grey under the lines but not mapped). Drawings
are a 2-D view of the bones the model's graph has: x to the right and up, on NTU RGB+D skeletons,
the camera axis along person 0's spine, y for raw and synthetic recordings, z after NTU's
pre-normalisation (which turns the spine onto +z); on other skeletons y, turned so that the graph's
centre joint lies above the joints' mean (image coordinates point y down).
"""
from __future__ import annotations

import dataclasses
import math
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from .attention import SpatialSelfAttention, TemporalSelfAttention
from .graph import NTU_JOINTS, Graph
from .ops import record_attention
from .predict import InputError, Predictor, class_names, find_sources, load_predictor

DPI = 100
GIF_SIZE = (400, 480)          # width, height in pixels
STRIP_SIZE = (1600, 270)
PREDICTION_SIZE = (640, 320)
SSA_SIZE = (1800, 480)
TSA_SIZE = (1800, 300)
MAX_GIF_FRAMES = 100
GIF_FRAME_MS = 80
STRIP_FRAMES = 8
TOP_K = 5
LINES = 12
# The joint of the temporal maps when --joint is not given: the first of these the graph names.
DEFAULT_JOINT_NAMES = ("right hand", "right wrist")

SPINE_BASE, SPINE_SHOULDER = NTU_JOINTS.index("spine base"), NTU_JOINTS.index("spine shoulder")
PERSON_COLOURS = ("tab:blue", "tab:orange")
# Files of an earlier run that --overwrite replaces (the unit pictures depend on the model).
OUTPUT_PATTERNS = ("skeleton.gif", "skeleton_strip.png", "prediction.png", "ssa_unit*.png",
                   "tsa_unit*.png")


def gif_frames(frames: int) -> range:
    """The input frames the GIF shows: all of them, or every ``ceil(T/100)``-th."""
    return range(0, frames, math.ceil(frames / MAX_GIF_FRAMES))


@dataclasses.dataclass
class AttentionMap:
    name: str               # the unit's module name, e.g. units.3.spatial
    kind: str               # spatial or temporal
    probabilities: np.ndarray  # spatial (H, V, V) mean over frames; temporal (V, H, L, L)


@dataclasses.dataclass
class Visualized:
    sample: str
    label: int | None
    joints: np.ndarray      # (3, T, V, M) coordinates
    probabilities: np.ndarray  # (classes,)
    maps: list[AttentionMap]
    graph: Graph            # the model's skeleton: the bones drawn, the joints named


def default_joint(graph: Graph) -> int:
    """The 1-based joint of the temporal maps when none is asked for: the right hand or wrist if
    the graph names one, else its centre, else the first joint."""
    names = graph.joint_names or ()
    for name in DEFAULT_JOINT_NAMES:
        if name in names:
            return names.index(name) + 1
    return (graph.center or 0) + 1


def joint_label(graph: Graph, joint: int) -> str:
    """``joint <n>`` (1-based) and its name where the graph has names."""
    name = f" ({graph.joint_names[joint]})" if graph.joint_names else ""
    return f"joint {joint + 1}{name}"


def run_sample(predictor: Predictor, inputs, sample: int, labels=None, split=None) -> Visualized:
    """Sample ``sample`` (0-based, counted over ``inputs`` in order) through the model, with its
    joints and the attention of person 0 in every attention unit."""
    sources, problems = find_sources(inputs, labels, split)
    if problems:
        raise InputError("; ".join(problems))
    source, offset = _locate(sources, predictor, sample)
    name, x, label = next(islice(source.samples(predictor), offset, None))
    joints = x
    if predictor.config.data.modality != "joint":
        drawn = dataclasses.replace(predictor, config=dataclasses.replace(
            predictor.config, data=dataclasses.replace(predictor.config.data, modality="joint")))
        try:
            _, joints, _ = next(islice(source.samples(drawn), offset, None))
        except ValueError as error:
            raise InputError(f"{source.path}: visualize draws joint coordinates, which this input "
                             f"cannot give ({error})") from None
    if not joints[..., 0].any():
        raise InputError(f"{name}: the sample holds no skeleton to draw (its first person is all "
                         "zeros)")
    network = predictor.model.model
    device = next(network.parameters()).device
    with record_attention() as records, torch.inference_mode():
        logits = network(torch.from_numpy(x[None]).to(device))
    # The units run in the order of named_modules(), one core call each.
    units = [module_name for module_name, module in network.named_modules()
             if isinstance(module, (SpatialSelfAttention, TemporalSelfAttention))]
    maps = []
    for module_name, record in zip(units, records, strict=True):
        person0 = record.probabilities[0].float().cpu().numpy()
        maps.append(AttentionMap(module_name, record.kind,
                                 person0.mean(axis=0) if record.kind == "spatial" else person0))
    return Visualized(name, label, joints, logits[0].float().softmax(0).cpu().numpy(), maps,
                      network.graph)


def _locate(sources, predictor: Predictor, sample: int):
    """The source holding sample ``sample`` and its index there; a .skeleton file is one sample
    and is not read to be counted."""
    if sample < 0:
        raise InputError(f"--sample must be 0 or more, got {sample}")
    seen = 0
    for source in sources:
        count = 1 if source.kind == "skeleton" else sum(1 for _ in source.samples(predictor))
        if sample < seen + count:
            return source, sample - seen
        seen += count
    raise InputError(f"--sample {sample} is out of range: the inputs hold {seen} sample(s) "
                     f"(0 to {seen - 1})" if seen else "the inputs hold no samples")


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a file, or a folder that holds files unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; expected a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"--out {out} holds files; pass --overwrite to replace the pictures "
                         "there or choose another folder")


def clear_out_dir(out: Path) -> None:
    """Make ``out``, without the pictures of an earlier run (other files stay)."""
    out.mkdir(parents=True, exist_ok=True)
    for pattern in OUTPUT_PATTERNS:
        for old in out.glob(pattern):
            old.unlink()


def visualize(checkpoint, inputs, out, sample: int = 0, joint: int | None = None, labels=None,
              split=None, names_file=None, overwrite: bool = False,
              device="cpu") -> tuple[Visualized, list[str], list[Path]]:
    """Draw sample ``sample`` of ``inputs`` and ``checkpoint``'s attention on it into the folder
    ``out``; ``joint`` (1-based, default ``default_joint``) picks the temporal maps' joint.
    Returns what was run, the class names and the files written."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available on this machine")
    out = Path(out)
    check_out_dir(out, overwrite)
    predictor = load_predictor(checkpoint, device, precision="fp32")
    graph = predictor.model.model.graph
    joint = default_joint(graph) if joint is None else joint
    if not 1 <= joint <= graph.num_joints:
        raise InputError(f"--joint must be a joint number from 1 to {graph.num_joints} (the "
                         f"model's skeleton), got {joint}")
    names = class_names([predictor], names_file)
    seen = run_sample(predictor, inputs, sample, labels, split)
    clear_out_dir(out)
    return seen, names, draw(seen, names, out, joint - 1)


# --- drawing --------------------------------------------------------------------------------------

def _figure(size: tuple[int, int]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI)  # no bbox_inches="tight": the size stays the stated one
    return path


class _View:
    """The 2-D view of a sample: x, and an up axis (see the module's docstring); fixed limits over
    time; the graph's edges as bones."""

    def __init__(self, joints: np.ndarray, graph: Graph):
        person0 = joints[..., 0]                                   # (3, T, V)
        if graph.joint_names == NTU_JOINTS:
            spine = (person0[:, :, SPINE_SHOULDER] - person0[:, :, SPINE_BASE]).mean(axis=1)
            self.up = 1 + int(np.argmax(np.abs(spine[1:])))        # y or z
            self.sign = 1.0 if spine[self.up] >= 0 else -1.0
        else:
            self.up = 1
            present = np.abs(person0).sum(axis=0) > 0              # (T, V)
            centre = graph.center
            centre_above = (person0[1][present[:, centre], centre].mean() - person0[1][present].mean()
                            if centre is not None and present[:, centre].any() else 0.0)
            self.sign = -1.0 if centre_above < 0 else 1.0
        self.edges = np.array(graph.inward_edges, dtype=int).reshape(-1, 2)
        self.points = np.stack([joints[0], self.sign * joints[self.up]], axis=-1)  # (T, V, M, 2)
        self.present = np.abs(joints).sum(axis=(0, 2)) > 0        # (T, M)
        shown = self.points[self.present.nonzero()[0], :, self.present.nonzero()[1]]
        low, high = shown.reshape(-1, 2).min(axis=0), shown.reshape(-1, 2).max(axis=0)
        centre, half = (low + high) / 2, (high - low).max() / 2 * 1.1 + 1e-3
        self.limits = [(centre[axis] - half, centre[axis] + half) for axis in range(2)]
        self.persons = [m for m in range(joints.shape[-1]) if self.present[:, m].any()]

    def bones(self, t: int, m: int) -> np.ndarray:
        """(E, 2, 2) line segments of person ``m``'s bones in frame ``t``; none if absent."""
        return self.points[t, :, m][self.edges] if self.present[t, m] else np.zeros((0, 2, 2))

    def frame(self, axes, t: int, bone_colour=None, bone_width=2.0) -> list:
        """Person by person, a collection of bones drawn on fresh ``axes``; the GIF moves them."""
        from matplotlib.collections import LineCollection

        axes.set_xlim(*self.limits[0])
        axes.set_ylim(*self.limits[1])
        axes.set_aspect("equal")
        axes.set_xticks([])
        axes.set_yticks([])
        drawn = []
        for m in self.persons:
            colour = bone_colour or PERSON_COLOURS[m % len(PERSON_COLOURS)]
            drawn.append(axes.add_collection(LineCollection(
                self.bones(t, m), colors=colour, linewidths=bone_width, capstyle="round", zorder=1)))
        return drawn


def top_classes(seen: Visualized, k: int = TOP_K) -> list[tuple[int, float]]:
    """The k most likely classes and their probabilities."""
    order = np.argsort(-seen.probabilities, kind="stable")[:k]
    return [(int(index), float(seen.probabilities[index])) for index in order]


def _caption(seen: Visualized, names: list[str]) -> str:
    index, probability = top_classes(seen, 1)[0]
    action = names[index]
    truth = f", label: {names[seen.label]}" if seen.label is not None and seen.label < len(names) else ""
    return f"{seen.sample}: predicted {action} ({100 * probability:.1f} %){truth}"


def draw(seen: Visualized, names: list[str], out: Path, joint: int) -> list[Path]:
    view = _View(seen.joints, seen.graph)
    files = [_gif(seen, names, view, out / "skeleton.gif"),
             _strip(seen, names, view, out / "skeleton_strip.png"),
             _prediction(seen, names, out / "prediction.png")]
    frames = seen.joints.shape[1]
    for attention in seen.maps:
        unit = attention.name.split(".")[1]
        if attention.kind == "spatial":
            files.append(_spatial(attention, view, frames, out / f"ssa_unit{unit}.png"))
        else:
            files.append(_temporal(attention, frames, joint, seen.graph, out / f"tsa_unit{unit}.png"))
    return files


def _gif(seen, names, view: _View, path: Path) -> Path:
    from PIL import Image

    figure = _figure(GIF_SIZE)
    axes = figure.add_axes((0.02, 0.02, 0.96, 0.86))
    images = []
    total = seen.joints.shape[1]
    index, probability = top_classes(seen, 1)[0]
    persons = view.frame(axes, 0)
    for t in gif_frames(total):
        for m, bones in zip(view.persons, persons):
            bones.set_segments(view.bones(t, m))
        # The frame number also keeps every GIF frame distinct (Pillow merges identical ones).
        figure.suptitle(f"{seen.sample}\nframe {t + 1}/{total}: {names[index]} {100 * probability:.0f} %",
                        fontsize=9)
        figure.canvas.draw()
        rgb = np.asarray(figure.canvas.buffer_rgba())[..., :3]
        images.append(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE))
    images[0].save(path, save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
    return path


def _strip(seen, names, view: _View, path: Path) -> Path:
    figure = _figure(STRIP_SIZE)
    total = seen.joints.shape[1]
    shown = np.linspace(0, total - 1, STRIP_FRAMES).round().astype(int)
    for index, t in enumerate(shown):
        axes = figure.add_axes((index / STRIP_FRAMES + 0.005, 0.02, 1 / STRIP_FRAMES - 0.01, 0.8))
        view.frame(axes, t)
        axes.set_title(f"frame {t + 1}/{total}", fontsize=9)
    figure.suptitle(_caption(seen, names), fontsize=11)
    return _save(figure, path)


def _prediction(seen, names, path: Path) -> Path:
    figure = _figure(PREDICTION_SIZE)
    axes = figure.add_axes((0.3, 0.15, 0.62, 0.68))
    top = top_classes(seen)[::-1]  # the most likely at the top
    labels = [names[index] for index, _ in top]
    values = [100 * probability for _, probability in top]
    colours = ["tab:green" if index == seen.label else "tab:blue" for index, _ in top]
    axes.barh(labels, values, color=colours)
    for row, value in enumerate(values):
        axes.text(value + 1, row, f"{value:.1f} %", va="center", fontsize=9)
    axes.set_xlim(0, 115)
    axes.set_xlabel("probability (%)", fontsize=9, labelpad=1)
    labelled = seen.label in [index for index, _ in top]
    figure.suptitle(_caption(seen, names) + ("\n(green: the label)" if labelled else ""), fontsize=9)
    return _save(figure, path)


def _heads_and_mean(probabilities: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(H, L, L) maps as [("head 1", map), ..., ("mean", mean map)]."""
    return [(f"head {h + 1}", p) for h, p in enumerate(probabilities)] + \
        [("mean of heads", probabilities.mean(axis=0))]


def _spatial(attention: AttentionMap, view: _View, frames: int, path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection

    figure = _figure(SSA_SIZE)
    panels = _heads_and_mean(attention.probabilities)
    columns = len(panels)
    peak = attention.probabilities.max()
    middle = frames // 2
    lines = colormaps["Reds"]
    uniform = 1 / attention.probabilities.shape[-1]
    # Line strength: a pair's mutual attention from uniform (nothing to see) to the unit's
    # strongest pair in any head, so that the heads of a unit compare.
    strongest_pair = max((p + p.T).max() / 2 for _, p in panels)
    for column, (title, p) in enumerate(panels):
        left, width = 0.03 + column * 0.97 / columns, 0.97 * 0.86 / columns
        axes = figure.add_axes((left, 0.5, width, 0.38))
        axes.imshow(p, vmin=0, vmax=peak, cmap="viridis", interpolation="nearest")
        axes.set_title(title, fontsize=9)
        ticks = [0, len(p) // 2, len(p) - 1]
        axes.set_xticks(ticks, [str(t + 1) for t in ticks] if column == 0 else [], fontsize=6)
        axes.set_yticks(ticks, [str(t + 1) for t in ticks] if column == 0 else [], fontsize=6)
        if column == 0:
            axes.set_ylabel("query joint", fontsize=7, labelpad=1)
            axes.set_xlabel("key joint", fontsize=7, labelpad=0)
        axes = figure.add_axes((left, 0.01, width, 0.44))
        view.frame(axes, middle, bone_colour="0.75", bone_width=1.5)
        points = view.points[middle, :, 0]
        pairs = (p + p.T) / 2
        i, j = np.triu_indices(len(p), k=1)
        strongest = np.argsort(-pairs[i, j], kind="stable")[:LINES][::-1]  # strongest on top
        weight = (pairs[i[strongest], j[strongest]] - uniform) / max(strongest_pair - uniform, 1e-9)
        shown = strongest[weight > 0]
        weight = weight[weight > 0]
        axes.add_collection(LineCollection(
            np.stack([points[i[shown]], points[j[shown]]], axis=1), colors=lines(0.3 + 0.7 * weight),
            linewidths=0.5 + 3 * weight, zorder=2))
        received = p.sum(axis=0)
        axes.scatter(*points.T, s=3 + 30 * received / received.max(), color="0.25", zorder=3,
                     linewidths=0)
    figure.suptitle(f"{attention.name} (spatial self-attention), person 1: joint-to-joint "
                    f"attention averaged over the unit's frames (top, 0 to {peak:.2f}, uniform "
                    f"{uniform:.2f}); the {LINES} strongest pairs above uniform on the skeleton "
                    f"at frame {middle + 1} (bottom; dots: attention received)", fontsize=10)
    return _save(figure, path)


def _temporal(attention: AttentionMap, frames: int, joint: int, graph: Graph, path: Path) -> Path:
    figure = _figure(TSA_SIZE)
    of_joint = attention.probabilities[joint]                      # (H, L, L)
    panels = _heads_and_mean(of_joint)
    columns = len(panels)
    peak = of_joint.max()
    for column, (title, p) in enumerate(panels):
        axes = figure.add_axes((column / columns + 0.02, 0.1, 1 / columns - 0.03, 0.68))
        axes.imshow(p, vmin=0, vmax=peak, cmap="viridis", interpolation="nearest",
                    extent=(0, frames, frames, 0))
        axes.set_title(title, fontsize=9)
        axes.tick_params(labelsize=6)
        if column == 0:
            axes.set_ylabel("query frame", fontsize=7)
            axes.set_xlabel("key frame", fontsize=7, labelpad=0)
    tokens = of_joint.shape[-1]
    figure.suptitle(f"{attention.name} (temporal self-attention), person 1, "
                    f"{joint_label(graph, joint)}: frame-to-frame attention ({tokens} tokens of "
                    f"{frames // tokens} frame(s); 0 to {peak:.2f}, uniform {1 / tokens:.2f})",
                    fontsize=10)
    return _save(figure, path)
