"""Skeleton graphs beyond NTU RGB+D: the presets against their sources' published joint orders,
custom graphs from the config, bones that follow the graph, one training step on every preset, and
a non-NTU checkpoint through sttr test, predict, export and visualize's view.

The joint facts below are written out from the formats' own documentation (OpenPose's COCO-18 and
BODY_25 output orders, the COCO keypoint order, MediaPipe Pose and Hands landmark indices) and
ST-GCN's / pyskl's published edge lists, not read from the package.
"""
import pickle

import numpy as np
import pytest
import torch

from sttr_fast import STTR
from sttr_fast.cli import main
from sttr_fast.data.modalities import bones, derive
from sttr_fast.export import model_from_checkpoint
from sttr_fast.graph import GRAPH_PRESETS, graph_from_config, graph_preset, ntu_graph
from sttr_fast.predict import find_sources, load_predictor, predict
from sttr_fast.train.checkpoints import check_fits, read_checkpoint
from sttr_fast.train.config import ConfigError, load_config
from sttr_fast.train.data import build_dataset
from sttr_fast.train.engine import build_model
from sttr_fast.visualize import _View, default_joint

# (joints, the 0-based index of some named joints in the source's order, centre)
PRESET_FACTS = {
    "ntu-rgbd": (25, {"spine base": 0, "head": 3, "right hand": 11, "spine shoulder": 20,
                      "right thumb": 24}, "spine shoulder"),
    "ntu-rgbd-pyskl": (25, {"spine base": 0, "right hand": 11, "left hand tip": 21}, "spine shoulder"),
    "openpose-18": (18, {"nose": 0, "neck": 1, "right wrist": 4, "left wrist": 7, "right hip": 8,
                         "left ankle": 13, "right eye": 14, "left ear": 17}, "neck"),
    "openpose-25": (25, {"nose": 0, "neck": 1, "left wrist": 7, "mid hip": 8, "right hip": 9,
                         "left ankle": 14, "left big toe": 19, "right heel": 24}, "neck"),
    "coco-17": (17, {"nose": 0, "left eye": 1, "right ear": 4, "left shoulder": 5, "right wrist": 10,
                     "left hip": 11, "right ankle": 16}, "nose"),
    "mediapipe-33": (33, {"nose": 0, "left ear": 7, "mouth right": 10, "left shoulder": 11,
                          "right wrist": 16, "left thumb": 21, "left hip": 23, "right ankle": 28,
                          "right foot index": 32}, "nose"),
    "mediapipe-hands-21": (21, {"wrist": 0, "thumb tip": 4, "index mcp": 5, "index tip": 8,
                                "middle mcp": 9, "ring tip": 16, "pinky mcp": 17, "pinky tip": 20},
                           "wrist"),
}
# ST-GCN's Kinetics (OpenPose) layout, inward edges towards the neck, 0-based as published.
ST_GCN_OPENPOSE_EDGES = {(4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5),
                         (8, 2), (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14)}
TINY = {"base_channels": 8, "num_heads": 2, "num_classes": 3}


def test_the_presets_are_the_ones_the_issue_names():
    assert set(GRAPH_PRESETS) == set(PRESET_FACTS)


@pytest.mark.parametrize("name", sorted(PRESET_FACTS))
def test_every_preset_keeps_its_sources_order_and_is_a_tree_towards_its_centre(name):
    joints, known, centre = PRESET_FACTS[name]
    graph = graph_preset(name)
    assert graph.num_joints == joints and len(graph.joint_names) == joints
    assert len(set(graph.joint_names)) == joints
    for joint, index in known.items():
        assert graph.joint_names[index] == joint
    assert graph.joint_names[graph.center] == centre
    outgoing = {}
    for child, parent in graph.inward_edges:
        assert child not in outgoing, f"joint {child} points to two joints"
        outgoing[child] = parent
    assert set(outgoing) == set(range(joints)) - {graph.center}
    for joint in range(joints):  # every chain of parents ends at the centre
        steps = 0
        while joint != graph.center:
            joint, steps = outgoing[joint], steps + 1
            assert steps < joints


def test_openpose_18_is_st_gcns_kinetics_layout():
    assert set(graph_preset("openpose-18").inward_edges) == ST_GCN_OPENPOSE_EDGES


def test_ntu_pyskl_differs_from_st_gcns_ntu_graph_only_at_the_hands():
    # 1-based: ST-GCN chains tip -> thumb -> hand, pyskl hangs both off the hand.
    st_gcn, pyskl = set(ntu_graph().inward_edges), set(graph_preset("ntu-rgbd-pyskl").inward_edges)
    assert st_gcn - pyskl == {(21, 22), (23, 24)}
    assert pyskl - st_gcn == {(21, 7), (23, 11)}


def test_a_named_bone_of_each_kind_of_preset():
    coco = graph_preset("coco-17").bone_parents()
    assert coco[9] == 7 and coco[7] == 5 and coco[5] == 0      # left wrist -> elbow -> shoulder -> nose
    body25 = graph_preset("openpose-25").bone_parents()
    assert body25[9] == 8 and body25[8] == 1 and body25[20] == 19  # r hip -> mid hip -> neck; toes
    hand = graph_preset("mediapipe-hands-21").bone_parents()
    assert [hand[j] for j in (8, 7, 6, 5)] == [7, 6, 5, 0]        # index finger tip to wrist
    pose = graph_preset("mediapipe-33").bone_parents()
    assert pose[27] == 25 and pose[31] == 27 and pose[19] == 15     # ankle <- knee; foot, hand


def test_a_custom_graph_gives_st_gcns_partition_computed_by_hand():
    graph = graph_from_config({"num_joints": 4, "edges": [[0, 1], [2, 1], [3, 2]], "center": 1})
    # Inward: column i holds i's parent; outward: column j holds j's children, each column
    # divided by its number of entries (joint 1 has two children, 0 and 2).
    inward = torch.zeros(4, 4)
    inward[1, 0] = inward[1, 2] = inward[2, 3] = 1.0
    outward = torch.zeros(4, 4)
    outward[0, 1] = outward[2, 1] = 0.5
    outward[3, 2] = 1.0
    torch.testing.assert_close(graph.spatial_adjacency(), torch.stack([torch.eye(4), inward, outward]))


@pytest.mark.parametrize("value, message", [
    ("kinect-v3", r"unknown graph preset 'kinect-v3'; expected one of ntu-rgbd, ntu-rgbd-pyskl, openpose-18"),
    ({"num_joints": 3, "edges": [[0, 3]]}, r"edge \[0, 3\] is out of range: joints are 0-based in \[0, 3\)"),
    ({"num_joints": 0, "edges": []}, r"num_joints must be a positive integer, got 0"),
    ({"num_joints": 3, "edges": [[0, 1, 2]]}, r"edge \[0, 1, 2\] is not a pair"),
    ({"num_joints": 3, "edges": [[0, 1]], "center": 5}, r"center must be a joint index in \[0, 3\), got 5"),
    ({"num_joints": 3}, r"a custom graph needs 'edges'"),
    ({"num_joints": 3, "edges": [], "centre": 0}, r"unknown custom graph key\(s\) \['centre'\]"),
    (18, r"a graph is a preset name .* or a mapping"),
])
def test_bad_graphs_are_named_in_one_line(value, message):
    with pytest.raises(ValueError, match=message):
        graph_from_config(value)
    with pytest.raises(ConfigError, match="^override .model.graph=.*.: model.graph: " + message):
        load_config(None, [f"model.graph={value}"])


def test_the_config_takes_a_preset_or_a_custom_graph_and_a_child_file_replaces_it_whole(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "model:\n  graph: {num_joints: 3, edges: [[0, 1], [2, 1]], center: 1}\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  graph: {num_joints: 2, edges: [[1, 0]]}\n")
    assert load_config(tmp_path / "base.yaml").model.graph["center"] == 1
    assert load_config(tmp_path / "child.yaml").model.graph == {"num_joints": 2, "edges": [[1, 0]]}
    assert load_config(None, ["model.graph=coco-17"]).model.graph == "coco-17"
    assert load_config(None).model.graph == "ntu-rgbd"
    with torch.device("meta"):
        model = build_model(load_config(tmp_path / "child.yaml"))
    assert model.num_point == 2 and model.data_bn.num_features == 2 * 2 * 3


def test_bones_follow_the_graph():
    generator = np.random.default_rng(0)
    joints = generator.normal(size=(3, 4, 17, 2)).astype(np.float32)
    coco = graph_preset("coco-17")
    bone = bones(joints, coco.bone_parents())
    # left wrist (9) - left elbow (7); the nose (centre, 0) has an empty bone
    np.testing.assert_array_equal(bone[:, :, 9], joints[:, :, 9] - joints[:, :, 7])
    np.testing.assert_array_equal(bone[:, :, 0], 0)
    both = derive(joints, "joint", "joint_bone", coco.bone_parents())
    np.testing.assert_array_equal(both[3:], bone)
    with pytest.raises(ValueError, match="have 17 joints per body but the skeleton graph's bones are for 25"):
        derive(joints, "joint", "bone")


def _agcn_files(folder, split, joints, samples=4, frames=8, persons=1, seed=0):
    generator = np.random.default_rng(seed)
    data = generator.normal(size=(samples, 3, frames, joints, persons)).astype(np.float32)
    np.save(folder / f"{split}_data_joint.npy", data)
    with open(folder / f"{split}_label.pkl", "wb") as file:
        pickle.dump(([f"{split}{i}" for i in range(samples)], [i % 3 for i in range(samples)]), file)
    return data


def _config(folder, graph, *extra):
    return load_config(None, [
        "data.format=agcn", f"data.train_data={folder / 'train_data_joint.npy'}",
        f"data.train_label={folder / 'train_label.pkl'}", f"data.val_data={folder / 'val_data_joint.npy'}",
        f"data.val_label={folder / 'val_label.pkl'}", "data.num_person=1", "data.frames=8",
        "data.batch_size=2", "data.eval_batch_size=4", "data.num_workers=0", "optim.accumulate=1",
        "model.base_channels=8", "model.num_heads=2", "model.num_classes=3", "model.dropout=0.0",
        f"model.graph={graph}", *extra])


@pytest.mark.parametrize("name", sorted(PRESET_FACTS))
def test_every_preset_trains_a_step_on_joints_and_bones(tmp_path, name):
    graph = graph_preset(name)
    joints = _agcn_files(tmp_path, "train", graph.num_joints)
    _agcn_files(tmp_path, "val", graph.num_joints, seed=1)
    stream = "spatial" if sorted(PRESET_FACTS).index(name) % 2 else "temporal"
    config = _config(tmp_path, name, "data.modality=joint_bone", f"model.stream={stream}")
    dataset = build_dataset(config, "train", training=True)
    x, _ = dataset[1]
    parents = graph.bone_parents()
    child = next(c for c in range(graph.num_joints) if parents[c] != c)
    np.testing.assert_allclose(x[3:, :, child].numpy(), joints[1, :, :, child] - joints[1, :, :, parents[child]])
    torch.manual_seed(0)
    model = build_model(config)
    assert model.num_point == graph.num_joints
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = torch.stack([dataset[i][0] for i in range(2)])
    loss = torch.nn.functional.cross_entropy(model(batch), torch.tensor([0, 1]))
    loss.backward()
    before = model.classifier.weight.detach().clone()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.classifier.weight)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_data_of_another_joint_count_than_the_graph_is_refused_naming_both(tmp_path):
    _agcn_files(tmp_path, "train", 17)
    _agcn_files(tmp_path, "val", 17)
    with pytest.raises(ConfigError, match=r"has 17 joints per body where model.graph 'openpose-18' has 18"):
        build_dataset(_config(tmp_path, "openpose-18"), "train")
    with pytest.raises(ConfigError, match=r"data.format='synthetic' makes 25-joint NTU RGB\+D skeletons, "
                                          r"but model.graph 'coco-17' has 17 joints"):
        build_dataset(load_config(None, ["model.graph=coco-17"]), "train")
    looped = "{num_joints: 17, edges: [[1, 0], [1, 2]]}"
    with pytest.raises(ConfigError, match=r"model.graph: joint 1 points to both 0 and 2"):
        build_dataset(_config(tmp_path, looped, "data.modality=bone"), "train")


def test_a_coco_checkpoint_tests_predicts_exports_and_is_drawn_with_its_own_bones(tmp_path, capsys):
    data = _agcn_files(tmp_path, "train", 17)
    _agcn_files(tmp_path, "val", 17, seed=1)
    config = tmp_path / "coco.yaml"
    config.write_text(
        "model: {graph: coco-17, stream: temporal, base_channels: 8, num_heads: 2, num_classes: 3}\n"
        f"data: {{format: agcn, train_data: {tmp_path / 'train_data_joint.npy'}, "
        f"train_label: {tmp_path / 'train_label.pkl'}, val_data: {tmp_path / 'val_data_joint.npy'}, "
        f"val_label: {tmp_path / 'val_label.pkl'}, num_person: 1, frames: 8, batch_size: 2, "
        "eval_batch_size: 4, num_workers: 0, modality: bone}\n"
        "optim: {accumulate: 1}\ntrain: {epochs: 1}\n")
    work = tmp_path / "work"
    assert main(["train", "--config", str(config), "--work-dir", str(work), "--no-progress"]) == 0
    checkpoint = work / "best.pt"
    assert read_checkpoint(checkpoint).settings["model.graph"] == "coco-17"
    assert main(["test", "--checkpoint", str(checkpoint), "--work-dir", str(tmp_path / "test"), "--no-progress"]) == 0
    assert "4 samples: top-1" in capsys.readouterr().out

    model = model_from_checkpoint(checkpoint)
    assert model.graph == graph_preset("coco-17")
    predictor = load_predictor(checkpoint)
    sources, problems = find_sources([str(tmp_path / "val_data_joint.npy")])
    predictions = predict([predictor], sources, on_problem=pytest.fail)
    assert not problems and len(predictions) == 4
    x = derive(np.load(tmp_path / "val_data_joint.npy"), "joint", "bone", graph_preset("coco-17").bone_parents())
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).softmax(1)
    torch.testing.assert_close(torch.stack([p.probabilities for p in predictions]), expected,
                               rtol=2e-2, atol=2e-3)

    view = _View(data[0], predictor.model.model.graph)
    segments = view.bones(0, 0)
    assert segments.shape == (16, 2, 2)  # coco-17's 16 bones, not NTU's 24
    left_wrist_bone = list(graph_preset("coco-17").inward_edges).index((9, 7))
    np.testing.assert_allclose(segments[left_wrist_bone, :, 0], data[0, 0, 0, [9, 7], 0])
    assert default_joint(model.graph) == 11  # the right wrist, 1-based


def test_a_checkpoint_from_before_graphs_is_an_ntu_one(tmp_path):
    model = STTR(**TINY, num_person=1)
    stored = load_config(None, ["model.base_channels=8", "model.num_heads=2", "model.num_classes=3",
                                "data.num_person=1"]).to_dict()
    del stored["model"]["graph"], stored["model"]["tsa_stride_skips_frames"]
    path = tmp_path / "old.pt"
    torch.save({"format": "sttr_fast-train", "config": stored, "model": model.state_dict()}, path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.settings["model.graph"] == "ntu-rgbd"
    assert model_from_checkpoint(path).graph == ntu_graph()
    coco = load_config(None, values=stored, overrides=["model.graph=coco-17"])
    with pytest.raises(ValueError) as error:
        check_fits(checkpoint, coco, "coco.yaml")
    assert error.value.details == ["model.graph: checkpoint 'ntu-rgbd', config 'coco-17'"]
    # a preset and the same skeleton spelt out are the same graph
    spelt = {"num_joints": 25, "edges": [list(edge) for edge in ntu_graph().inward_edges]}
    check_fits(checkpoint, load_config(None, values={**stored, "model": {**stored["model"], "graph": spelt}}),
               "spelt.yaml")


def test_tsa_stride_skipping_frames_sees_only_every_other_frame():
    torch.manual_seed(0)
    model = STTR(**TINY, stream="temporal", graph="openpose-18", num_person=1,
                 tsa_stride_skips_frames=True).eval()
    strided = model.units[3].temporal
    assert strided.qkv.weight.shape[-2:] == (1, 1) and strided.qkv.stride == (1, 2)
    x = torch.randn(2, strided.channels, 8, 18)
    with torch.no_grad():
        tokens = strided.qkv(x.transpose(2, 3))
        x[:, :, 1::2] += 1.0  # the odd frames change, the tokens (frames 0, 2, 4, 6) do not
        torch.testing.assert_close(strided.qkv(x.transpose(2, 3)), tokens)
    assert STTR(**TINY, stream="temporal", graph="openpose-18").units[3].temporal.qkv.weight.shape[-1] == 2
