"""Skeleton graphs: the presets, custom graphs from the config, and ST-GCN's "spatial" partitioning.

Every preset keeps the joint order its source writes (what the readers under ``sttr_fast/data/``
keep), and its inward edges form a tree: every joint but the centre points to exactly one joint, one
step closer to the centre. ``docs/graphs.md`` lists where each layout comes from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

# NTU RGB+D inward edges (child -> parent, towards the spine joint 21), 1-based as in the dataset.
NTU_INWARD_EDGES_1BASED = (
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
    (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
    (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
)
NTU_JOINTS = (
    "spine base", "spine mid", "neck", "head",
    "left shoulder", "left elbow", "left wrist", "left hand",
    "right shoulder", "right elbow", "right wrist", "right hand",
    "left hip", "left knee", "left ankle", "left foot",
    "right hip", "right knee", "right ankle", "right foot",
    "spine shoulder",
    "left hand tip", "left thumb", "right hand tip", "right thumb",
)


@dataclass(frozen=True)
class Graph:
    """A skeleton: ``num_joints`` joints and inward edges ``(i, j)`` (0-based, i points towards j)."""

    num_joints: int
    inward_edges: tuple[tuple[int, int], ...]
    joint_names: tuple[str, ...] | None = None
    center: int | None = None

    def __post_init__(self):
        if self.num_joints < 1:
            raise ValueError(f"Graph needs at least one joint, got num_joints={self.num_joints}")
        for edge in self.inward_edges:
            if len(edge) != 2 or not all(0 <= j < self.num_joints for j in edge):
                raise ValueError(
                    f"Graph edge {edge} is not a pair of 0-based joint indices in [0, {self.num_joints})"
                )
        if self.center is not None and not 0 <= self.center < self.num_joints:
            raise ValueError(f"Graph center {self.center} is not a joint index in [0, {self.num_joints})")
        if self.joint_names is not None and len(self.joint_names) != self.num_joints:
            raise ValueError(f"Graph has {self.num_joints} joints but {len(self.joint_names)} joint names")
        object.__setattr__(self, "inward_edges", tuple(tuple(e) for e in self.inward_edges))
        if self.joint_names is not None:
            object.__setattr__(self, "joint_names", tuple(self.joint_names))

    def spatial_adjacency(self) -> torch.Tensor:
        """The (3, V, V) stack [I, norm(E_in), norm(E_out)] of ST-GCN's spatial partitioning."""
        v = self.num_joints
        inward = torch.zeros(v, v, dtype=torch.float64)
        for i, j in self.inward_edges:
            inward[j, i] = 1.0
        outward = inward.t()
        return torch.stack([torch.eye(v, dtype=torch.float64), _normalise_columns(inward),
                            _normalise_columns(outward)]).float()

    def bone_parents(self) -> tuple[int, ...]:
        """The joint each joint's bone points to; a joint without an outgoing edge is its own parent.

        A bone is one vector per joint, so a joint with two outgoing edges has no single bone.
        """
        parents = list(range(self.num_joints))
        for child, parent in self.inward_edges:
            if parents[child] != child and parents[child] != parent:
                raise ValueError(f"joint {child} points to both {parents[child]} and {parent}; bones "
                                 f"need at most one outgoing edge per joint")
            parents[child] = parent
        return tuple(parents)


def _normalise_columns(edges: torch.Tensor) -> torch.Tensor:
    """E·diag(1/colsum), leaving empty columns zero."""
    colsum = edges.sum(0)
    return edges * torch.where(colsum > 0, colsum.reciprocal(), torch.zeros_like(colsum))


def ntu_graph() -> Graph:
    """The 25-joint NTU RGB+D skeleton (ST-GCN / 2s-AGCN / ST-TR's edges)."""
    return Graph(25, tuple((i - 1, j - 1) for i, j in NTU_INWARD_EDGES_1BASED), NTU_JOINTS, 20)


def _ntu_pyskl_graph() -> Graph:
    # pyskl hangs both the hand tip and the thumb off the hand joint, where ST-GCN chains tip -> thumb -> hand.
    hands = {22: 8, 23: 8, 24: 12, 25: 12}
    edges = tuple((i - 1, hands.get(i, j) - 1) for i, j in NTU_INWARD_EDGES_1BASED)
    return Graph(25, edges, NTU_JOINTS, 20)


def _named_graph(joints: tuple[str, ...], parent: Mapping[str, str], center: str) -> Graph:
    """A tree written as ``{joint: the joint it points to}``, in the source's joint order."""
    index = {name: i for i, name in enumerate(joints)}
    return Graph(len(joints), tuple((index[c], index[p]) for c, p in parent.items()), joints, index[center])


# OpenPose's COCO-18 output order, the layout of ST-GCN's Kinetics-Skeleton; centre = neck as in ST-GCN.
OPENPOSE_18_JOINTS = (
    "nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder", "left elbow",
    "left wrist", "right hip", "right knee", "right ankle", "left hip", "left knee", "left ankle",
    "right eye", "left eye", "right ear", "left ear",
)
_OPENPOSE_18_PARENT = {
    "nose": "neck",
    "right shoulder": "neck", "right elbow": "right shoulder", "right wrist": "right elbow",
    "left shoulder": "neck", "left elbow": "left shoulder", "left wrist": "left elbow",
    # ST-GCN joins each hip to the shoulder above it (OpenPose has no joint between them).
    "right hip": "right shoulder", "right knee": "right hip", "right ankle": "right knee",
    "left hip": "left shoulder", "left knee": "left hip", "left ankle": "left knee",
    "right eye": "nose", "left eye": "nose", "right ear": "right eye", "left ear": "left eye",
}

# OpenPose BODY_25: COCO-18's body plus a mid hip and three points per foot, in OpenPose's order.
OPENPOSE_25_JOINTS = (
    "nose", "neck", "right shoulder", "right elbow", "right wrist", "left shoulder", "left elbow",
    "left wrist", "mid hip", "right hip", "right knee", "right ankle", "left hip", "left knee",
    "left ankle", "right eye", "left eye", "right ear", "left ear", "left big toe", "left small toe",
    "left heel", "right big toe", "right small toe", "right heel",
)
_OPENPOSE_25_PARENT = {
    "nose": "neck",
    "right shoulder": "neck", "right elbow": "right shoulder", "right wrist": "right elbow",
    "left shoulder": "neck", "left elbow": "left shoulder", "left wrist": "left elbow",
    "mid hip": "neck",
    "right hip": "mid hip", "right knee": "right hip", "right ankle": "right knee",
    "left hip": "mid hip", "left knee": "left hip", "left ankle": "left knee",
    "right eye": "nose", "left eye": "nose", "right ear": "right eye", "left ear": "left eye",
    "left big toe": "left ankle", "left small toe": "left big toe", "left heel": "left ankle",
    "right big toe": "right ankle", "right small toe": "right big toe", "right heel": "right ankle",
}

# The COCO keypoint order (17 points, no neck); the face and both shoulders hang off the nose.
COCO_17_JOINTS = (
    "nose", "left eye", "right eye", "left ear", "right ear", "left shoulder", "right shoulder",
    "left elbow", "right elbow", "left wrist", "right wrist", "left hip", "right hip", "left knee",
    "right knee", "left ankle", "right ankle",
)
_COCO_17_PARENT = {
    "left eye": "nose", "right eye": "nose", "left ear": "left eye", "right ear": "right eye",
    "left shoulder": "nose", "right shoulder": "nose",
    "left elbow": "left shoulder", "right elbow": "right shoulder",
    "left wrist": "left elbow", "right wrist": "right elbow",
    "left hip": "left shoulder", "right hip": "right shoulder",
    "left knee": "left hip", "right knee": "right hip",
    "left ankle": "left knee", "right ankle": "right knee",
}

# MediaPipe Pose's 33 landmarks in its order. Its drawing connections hold loops (hand, foot,
# shoulders-hips) and leave the face apart from the body; the tree below cuts the loops and hangs the
# mouth and shoulders off the nose, like coco-17.
MEDIAPIPE_33_JOINTS = (
    "nose", "left eye inner", "left eye", "left eye outer", "right eye inner", "right eye",
    "right eye outer", "left ear", "right ear", "mouth left", "mouth right", "left shoulder",
    "right shoulder", "left elbow", "right elbow", "left wrist", "right wrist", "left pinky",
    "right pinky", "left index", "right index", "left thumb", "right thumb", "left hip", "right hip",
    "left knee", "right knee", "left ankle", "right ankle", "left heel", "right heel",
    "left foot index", "right foot index",
)
_MEDIAPIPE_33_PARENT = {
    "left eye inner": "nose", "left eye": "left eye inner", "left eye outer": "left eye",
    "left ear": "left eye outer",
    "right eye inner": "nose", "right eye": "right eye inner", "right eye outer": "right eye",
    "right ear": "right eye outer",
    "mouth left": "nose", "mouth right": "nose",
    "left shoulder": "nose", "right shoulder": "nose",
    "left elbow": "left shoulder", "right elbow": "right shoulder",
    "left wrist": "left elbow", "right wrist": "right elbow",
    "left pinky": "left wrist", "left index": "left wrist", "left thumb": "left wrist",
    "right pinky": "right wrist", "right index": "right wrist", "right thumb": "right wrist",
    "left hip": "left shoulder", "right hip": "right shoulder",
    "left knee": "left hip", "right knee": "right hip",
    "left ankle": "left knee", "right ankle": "right knee",
    "left heel": "left ankle", "left foot index": "left ankle",
    "right heel": "right ankle", "right foot index": "right ankle",
}

# MediaPipe Hands' 21 landmarks: the wrist, then four per finger from its base to its tip.
_FINGER_POINTS = (("thumb", ("cmc", "mcp", "ip", "tip")), ("index", ("mcp", "pip", "dip", "tip")),
                  ("middle", ("mcp", "pip", "dip", "tip")), ("ring", ("mcp", "pip", "dip", "tip")),
                  ("pinky", ("mcp", "pip", "dip", "tip")))
MEDIAPIPE_HANDS_21_JOINTS = ("wrist",) + tuple(
    f"{finger} {point}" for finger, points in _FINGER_POINTS for point in points)
# Every finger is a chain from the wrist, as the metacarpals run; MediaPipe's line across the finger
# bases would close loops with it.
_MEDIAPIPE_HANDS_21_PARENT = {
    f"{finger} {point}": f"{finger} {points[k - 1]}" if k else "wrist"
    for finger, points in _FINGER_POINTS for k, point in enumerate(points)
}

_PRESETS = {
    "ntu-rgbd": ntu_graph,
    "ntu-rgbd-pyskl": _ntu_pyskl_graph,
    "openpose-18": lambda: _named_graph(OPENPOSE_18_JOINTS, _OPENPOSE_18_PARENT, "neck"),
    "openpose-25": lambda: _named_graph(OPENPOSE_25_JOINTS, _OPENPOSE_25_PARENT, "neck"),
    "coco-17": lambda: _named_graph(COCO_17_JOINTS, _COCO_17_PARENT, "nose"),
    "mediapipe-33": lambda: _named_graph(MEDIAPIPE_33_JOINTS, _MEDIAPIPE_33_PARENT, "nose"),
    "mediapipe-hands-21": lambda: _named_graph(MEDIAPIPE_HANDS_21_JOINTS, _MEDIAPIPE_HANDS_21_PARENT, "wrist"),
}
GRAPH_PRESETS: tuple[str, ...] = tuple(_PRESETS)
DEFAULT_GRAPH = "ntu-rgbd"


def graph_preset(name: str) -> Graph:
    """The preset called ``name`` (one of GRAPH_PRESETS)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown graph preset {name!r}; expected one of {', '.join(GRAPH_PRESETS)}")
    return _PRESETS[name]()


CUSTOM_GRAPH_KEYS = ("num_joints", "edges", "center")


def graph_from_config(value) -> Graph:
    """A graph from ``model.graph``: a preset name or ``{num_joints: V, edges: [[i, j], ...], center: c}``.

    Edges are 0-based and point from i towards j; ``center`` may be left out.
    """
    if isinstance(value, str):
        return graph_preset(value)
    if not isinstance(value, Mapping):
        raise ValueError(f"a graph is a preset name ({', '.join(GRAPH_PRESETS)}) or a mapping with "
                         f"keys num_joints, edges, center; got {type(value).__name__} {value!r}")
    unknown = sorted(set(value) - set(CUSTOM_GRAPH_KEYS))
    if unknown:
        raise ValueError(f"unknown custom graph key(s) {unknown}; expected num_joints, edges, center")
    for key in ("num_joints", "edges"):
        if key not in value:
            raise ValueError(f"a custom graph needs {key!r} (keys: num_joints, edges, center)")
    num_joints = value["num_joints"]
    if not _is_int(num_joints) or num_joints < 1:
        raise ValueError(f"num_joints must be a positive integer, got {num_joints!r}")
    edges = value["edges"]
    if not isinstance(edges, (list, tuple)):
        raise ValueError(f"edges must be a list of [i, j] pairs, got {edges!r}")
    for edge in edges:
        if not (isinstance(edge, (list, tuple)) and len(edge) == 2 and all(_is_int(j) for j in edge)):
            raise ValueError(f"edge {edge!r} is not a pair [i, j] of joint indices")
        if not all(0 <= j < num_joints for j in edge):
            raise ValueError(f"edge {list(edge)} is out of range: joints are 0-based in [0, {num_joints})")
    center = value.get("center")
    if center is not None and not (_is_int(center) and 0 <= center < num_joints):
        raise ValueError(f"center must be a joint index in [0, {num_joints}), got {center!r}")
    return Graph(num_joints, tuple((int(i), int(j)) for i, j in edges), None, center)


def graph_config_label(value) -> str:
    """``model.graph`` in a message: the preset's name, or what a custom graph holds."""
    if isinstance(value, str):
        return repr(value)
    joints = value.get("num_joints", "?") if isinstance(value, Mapping) else "?"
    return f"a custom graph of {joints} joints"


def same_graph(first, second) -> bool:
    """Whether two ``model.graph`` values build the same adjacency (a preset and its custom
    spelling are the same graph; names, centre and edge order do not matter)."""
    a, b = graph_from_config(first), graph_from_config(second)
    return a.num_joints == b.num_joints and set(a.inward_edges) == set(b.inward_edges)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
