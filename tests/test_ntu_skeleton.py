"""The NTU RGB+D skeleton, written out here joint by joint, against the graph, bones and adjacency.

Nothing below reads the package's own edge list: the skeleton is described by joint name, in the
dataset's joint order, each joint with the joint its bone points to. The convention is the one of
ST-GCN / 2s-AGCN / ST-TR: every bone runs from a joint towards its parent, the root is the spine
joint between the shoulders (joint 21, 1-based), and its own "bone" is empty. One quirk of that
convention is kept on purpose: the hand tip hangs off the thumb, and the thumb off the hand.
"""
import numpy as np
import torch

import sttr_fast
from sttr_fast.data import bones, derive
from sttr_fast.data.datasets import SkeletonDataset
from sttr_fast.data.modalities import ntu_bone_parents
from sttr_fast.model import STTR, GraphConvolution

# The 25 joints in the order the dataset stores them (index 0 is joint 1).
JOINTS = (
    "spine base", "spine mid", "neck", "head",
    "left shoulder", "left elbow", "left wrist", "left hand",
    "right shoulder", "right elbow", "right wrist", "right hand",
    "left hip", "left knee", "left ankle", "left foot",
    "right hip", "right knee", "right ankle", "right foot",
    "spine shoulder",
    "left hand tip", "left thumb", "right hand tip", "right thumb",
)
ROOT = "spine shoulder"
PARENT = {
    "spine base": "spine mid",
    "spine mid": "spine shoulder",
    "neck": "spine shoulder",
    "head": "neck",
    "left shoulder": "spine shoulder",
    "left elbow": "left shoulder",
    "left wrist": "left elbow",
    "left hand": "left wrist",
    "right shoulder": "spine shoulder",
    "right elbow": "right shoulder",
    "right wrist": "right elbow",
    "right hand": "right wrist",
    "left hip": "spine base",
    "left knee": "left hip",
    "left ankle": "left knee",
    "left foot": "left ankle",
    "right hip": "spine base",
    "right knee": "right hip",
    "right ankle": "right knee",
    "right foot": "right ankle",
    "left hand tip": "left thumb",
    "left thumb": "left hand",
    "right hand tip": "right thumb",
    "right thumb": "right hand",
}
INDEX = {name: i for i, name in enumerate(JOINTS)}
# (child, parent), 0-based, straight from the names above.
EXPECTED_EDGES = {(INDEX[child], INDEX[parent]) for child, parent in PARENT.items()}
CHILDREN = {name: [c for c, p in PARENT.items() if p == name] for name in JOINTS}


def mirrored(name: str) -> str:
    if name.startswith("left "):
        return "right " + name[len("left "):]
    if name.startswith("right "):
        return "left " + name[len("right "):]
    return name


# --- the description itself ---------------------------------------------------------------------

def test_the_description_is_a_tree_rooted_at_the_spine_shoulder():
    assert len(JOINTS) == len(set(JOINTS)) == 25
    assert INDEX[ROOT] == 20 and INDEX["spine base"] == 0 and INDEX["right thumb"] == 24
    assert set(PARENT) == set(JOINTS) - {ROOT}
    for name in JOINTS:
        seen, joint = set(), name
        while joint != ROOT:
            assert joint not in seen, f"cycle through {joint}"
            seen.add(joint)
            joint = PARENT[joint]
    # left and right are mirror images of each other
    assert {(mirrored(c), mirrored(p)) for c, p in PARENT.items()} == set(PARENT.items())
    # a few branching points counted by hand
    assert sorted(CHILDREN[ROOT]) == ["left shoulder", "neck", "right shoulder", "spine mid"]
    assert sorted(CHILDREN["spine base"]) == ["left hip", "right hip"]
    assert CHILDREN["left hand"] == ["left thumb"] and CHILDREN["left thumb"] == ["left hand tip"]
    assert CHILDREN["head"] == [] and CHILDREN["right foot"] == []


# --- the graph ----------------------------------------------------------------------------------

def test_graph_edges_are_the_skeleton_bones_child_to_parent():
    graph = sttr_fast.ntu_graph()
    assert graph.num_joints == 25
    assert len(graph.inward_edges) == 24 == len(set(graph.inward_edges))
    assert set(graph.inward_edges) == EXPECTED_EDGES
    named = {(JOINTS[i], JOINTS[j]) for i, j in graph.inward_edges}
    assert ("left hand tip", "left thumb") in named and ("head", "neck") in named
    assert ("neck", "head") not in named  # direction matters: towards the root


def test_spatial_adjacency_partitions_against_the_description():
    adjacency = sttr_fast.ntu_graph().spatial_adjacency()
    assert adjacency.shape == (3, 25, 25) and adjacency.dtype == torch.float32
    identity = torch.eye(25)
    # inward subset: column of a joint holds 1 at its parent's row (one parent, so the column
    # normalisation leaves it 1); the root's column is empty
    inward = torch.zeros(25, 25)
    # outward subset: column of a joint holds 1 / (number of its children) at each child's row
    outward = torch.zeros(25, 25)
    for child, parent in PARENT.items():
        inward[INDEX[parent], INDEX[child]] = 1.0
        outward[INDEX[child], INDEX[parent]] = 1.0 / len(CHILDREN[parent])
    torch.testing.assert_close(adjacency[0], identity, rtol=0, atol=0)
    torch.testing.assert_close(adjacency[1], inward, rtol=0, atol=0)
    torch.testing.assert_close(adjacency[2], outward, rtol=0, atol=0)
    # spot checks written out by hand
    root, mid, neck = INDEX[ROOT], INDEX["spine mid"], INDEX["neck"]
    assert adjacency[2][mid, root] == 0.25 and adjacency[2][neck, root] == 0.25
    assert adjacency[2][:, root].count_nonzero() == 4
    assert adjacency[2][INDEX["left hip"], INDEX["spine base"]] == 0.5
    assert adjacency[2][INDEX["left thumb"], INDEX["left hand"]] == 1.0
    assert adjacency[1][:, root].count_nonzero() == 0
    assert adjacency[2][:, INDEX["head"]].count_nonzero() == 0  # a leaf has no outward edge


def test_the_network_uses_that_adjacency_in_every_graph_convolution():
    model = STTR(num_classes=3, stream="temporal", base_channels=8, num_heads=2, num_person=1)
    convolutions = [m for m in model.modules() if isinstance(m, GraphConvolution)]
    assert len(convolutions) == 10  # stem + 3 plain units + 6 units whose TCN is attention
    expected = torch.zeros(3, 25, 25)
    expected[0] = torch.eye(25)
    for child, parent in PARENT.items():
        expected[1, INDEX[parent], INDEX[child]] = 1.0
        expected[2, INDEX[child], INDEX[parent]] = 1.0 / len(CHILDREN[parent])
    for gcn in convolutions:
        torch.testing.assert_close(gcn.adjacency, expected, rtol=0, atol=0)


# --- bones ------------------------------------------------------------------------------------

def test_bone_parents_follow_the_description():
    parents = ntu_bone_parents()
    assert parents.shape == (25,)
    for name in JOINTS:
        expected = INDEX[ROOT] if name == ROOT else INDEX[PARENT[name]]
        assert parents[INDEX[name]] == expected, name


def named_bones(joints: np.ndarray) -> np.ndarray:
    """bone of a joint = joint - its parent, joint by joint; the root's bone is zero."""
    out = np.zeros_like(joints)
    for name in JOINTS:
        if name != ROOT:
            child, parent = INDEX[name], INDEX[PARENT[name]]
            out[..., child, :] = joints[..., child, :] - joints[..., parent, :]
    return out


def test_bone_modality_matches_the_description_in_numpy_and_torch():
    rng = np.random.default_rng(21)
    sample = rng.normal(size=(3, 6, 25, 2)).astype(np.float32)   # (C, T, V, M)
    batch = rng.normal(size=(4, 3, 6, 25, 2)).astype(np.float32)  # (N, C, T, V, M)
    for x in (sample, batch):
        expected = named_bones(x)
        np.testing.assert_array_equal(bones(x), expected)
        np.testing.assert_array_equal(bones(torch.from_numpy(x)).numpy(), expected)
        assert not expected[..., INDEX[ROOT], :].any()
    np.testing.assert_array_equal(derive(sample, "joint", "bone"), named_bones(sample))
    np.testing.assert_array_equal(derive(sample, "joint", "joint_bone"),
                                  np.concatenate([sample, named_bones(sample)]))
    # one joint moved: its own bone and the bones of its children change, nothing else
    moved = sample.copy()
    moved[:, :, INDEX["left hand"], :] += 1.0
    changed = np.flatnonzero(np.abs(bones(moved) - bones(sample)).sum(axis=(0, 1, 3)) > 0)
    assert sorted(JOINTS[v] for v in changed) == ["left hand", "left thumb"]


def test_a_dataset_serving_bones_from_joint_files_uses_the_description():
    rng = np.random.default_rng(5)
    data = rng.normal(size=(2, 3, 4, 25, 2)).astype(np.float32)
    dataset = SkeletonDataset(data, [0, 1], stored="joint", modality="bone")
    for i in range(2):
        x, _ = dataset[i]
        np.testing.assert_allclose(x.numpy(), named_bones(data[i]), rtol=0, atol=1e-6)
