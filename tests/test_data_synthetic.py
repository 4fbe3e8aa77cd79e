"""The built-in synthetic actions: determinism, balance, plausible bodies, separable classes; and
the raw .skeleton writer built on them."""
import numpy as np
import pytest
import torch

from sttr_fast.data.skeleton_file import read_skeleton
from sttr_fast.data.synthetic import (ACTION_NAMES, NUM_CLASSES, SyntheticActionDataset,
                                      action_in_world, generate_actions, ntu_names,
                                      write_raw_dataset)
from sttr_fast.data.synthetic.body import (L_ANKLE, L_ELBOW, L_SHOULDER, R_ANKLE, R_ELBOW, R_HAND,
                                           R_SHOULDER, R_WRIST, SPINE_MID)
from sttr_fast.data.synthetic.generate import sample_rng

TWO_PERSON = {"hug", "handshake"}


def test_at_least_ten_distinct_actions():
    assert NUM_CLASSES == len(ACTION_NAMES) >= 10
    assert len(set(ACTION_NAMES)) == NUM_CLASSES


def test_deterministic_under_a_seed():
    a, labels_a = generate_actions(30, frames=24, seed=5)
    b, labels_b = generate_actions(30, frames=24, seed=5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(labels_a, labels_b)
    c, _ = generate_actions(30, frames=24, seed=6)
    val, _ = generate_actions(30, frames=24, seed=5, split="val")
    assert not np.allclose(a, c, atol=1e-3)
    assert not np.allclose(a, val, atol=1e-3)
    # a sample does not depend on how many others are generated
    np.testing.assert_array_equal(generate_actions(7, frames=24, seed=5)[0], a[:7])


@pytest.mark.parametrize("count,classes", [(48, 12), (50, 12), (30, 10)])
def test_classes_are_balanced(count, classes):
    _, labels = generate_actions(count, frames=8, num_classes=classes)
    per_class = np.bincount(labels, minlength=classes)
    assert per_class.max() - per_class.min() <= 1 and per_class.sum() == count
    assert labels.max() == classes - 1


def bone_length(world, a, b):
    return np.linalg.norm(world[:, :, a] - world[:, :, b], axis=-1)


@pytest.mark.parametrize("label", range(NUM_CLASSES))
def test_bodies_are_plausible(label):
    world = action_in_world(label, 40, sample_rng(0, 0, label))
    persons = 2 if ACTION_NAMES[label] in TWO_PERSON else 1
    assert world.shape == (persons, 40, 25, 3)
    for a, b in ((R_SHOULDER, R_ELBOW), (L_SHOULDER, L_ELBOW), (R_WRIST, R_HAND)):
        lengths = bone_length(world, a, b)
        assert np.all(np.abs(lengths - lengths.mean(axis=1, keepdims=True)) < 0.08)
        assert 0.03 < lengths.mean() < 0.4
    height = world[:, :, :, 1].max(axis=-1)
    assert np.all((height > 0.9) & (height < 2.6))  # heads between squatting and mid-jump
    feet = world[:, :, [L_ANKLE, R_ANKLE], 1].min(axis=-1)
    assert np.all(feet > -0.1)  # nobody sinks into the floor
    motion = np.abs(np.diff(world, axis=1)).sum(axis=(1, 2, 3))
    assert np.all(motion > 0.5)  # every person moves


def test_two_person_actions_fill_the_second_body():
    data, labels = generate_actions(24, frames=16)
    second_present = data[..., 1].any(axis=(1, 2, 3))
    for label, present in zip(labels, second_present):
        assert present == (ACTION_NAMES[label] in TWO_PERSON)
    # centred on the first person's spine mid in frame 0
    np.testing.assert_array_equal(data[:, :, 0, SPINE_MID, 0], 0)


def test_classes_are_separable_by_a_nearest_centroid_on_motion_features():
    """A crude classifier far above chance: the classes differ in what moves, and how."""
    def features(data):
        velocity = np.abs(np.diff(data, axis=2)).mean(axis=2)  # (N, 3, V, M)
        pose = data.std(axis=2)
        return np.concatenate([velocity.reshape(len(data), -1), pose.reshape(len(data), -1)], 1)

    train, train_labels = generate_actions(240, frames=32, seed=1)
    val, val_labels = generate_actions(120, frames=32, seed=1, split="val")
    f_train, f_val = features(train), features(val)
    centroids = np.stack([f_train[train_labels == c].mean(0) for c in range(NUM_CLASSES)])
    predicted = np.argmin(((f_val[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == val_labels).mean() > 0.5  # chance is 1/12


def test_sit_down_and_stand_up_are_each_others_reverse_in_time():
    def pelvis_height(label):
        return np.mean([action_in_world(label, 30, sample_rng(2, 0, i))[0, :, 0, 1]
                        for i in range(6)], axis=0)

    sit, stand = ACTION_NAMES.index("sit down"), ACTION_NAMES.index("stand up")
    assert pelvis_height(sit)[0] - pelvis_height(sit)[-1] > 0.2
    assert pelvis_height(stand)[-1] - pelvis_height(stand)[0] > 0.2


def test_torch_dataset_items_and_names():
    dataset = SyntheticActionDataset(num_samples=26, frames=16, seed=3, split="val",
                                     modality="joint_bone")
    x, label = dataset[13]
    assert isinstance(x, torch.Tensor) and x.shape == (6, 16, 25, 2) and x.dtype == torch.float32
    assert label == 13 % NUM_CLASSES and dataset.num_classes == NUM_CLASSES
    assert dataset.sample_name(13) == "synthetic_val_000013_clap"
    assert dataset.class_names == ACTION_NAMES
    with pytest.raises(ValueError, match="split"):
        SyntheticActionDataset(num_samples=2, split="test")


def test_raw_writer_round_trip(tmp_path):
    names = ntu_names(4, seed=9)
    paths = write_raw_dataset(tmp_path, names, seed=2, frames=(10, 14), line_ending="\r\n")
    assert [p.name for p in paths] == [f"{n}.skeleton" for n in names]
    assert b"\r\n" in paths[0].read_bytes()
    for index, (name, path) in enumerate(zip(names, paths)):
        raw = read_skeleton(path)
        assert 10 <= raw.num_frames <= 14
        label = (int(name[-3:]) - 1) % NUM_CLASSES
        persons = 2 if ACTION_NAMES[label] in TWO_PERSON else 1
        assert raw.bodies_per_frame.tolist() == [persons] * raw.num_frames
        depth = raw.joints[:, :, 2]
        assert np.all((depth > 1.5) & (depth < 5.0))  # in front of the sensor, in range
        assert np.all(raw.joints[:, :, 11] == 2)  # tracked
