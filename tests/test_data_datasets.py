"""Readers of the 2s-AGCN, pyskl and CTR-GCN formats, the modalities and the augmentations."""
import pickle

import numpy as np
import pytest
import torch

from sttr_fast.data import AGCNDataset, Augmentation, CTRGCNDataset, PysklDataset, derive
from sttr_fast.data.augmentation import random_choose, random_move, random_rotation, random_shift
from sttr_fast.data.modalities import MODALITIES
from sttr_fast.data.pickles import load_data_pickle
from sttr_fast.graph import NTU_INWARD_EDGES_1BASED

N, T, V, M = 5, 12, 25, 2


def random_joints(seed, n=N, frames=T):
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, 3, frames, V, M)).astype(np.float32)
    data[1, :, 7:, :, 1] = 0  # an absent second body in the tail of sample 1
    return data


def loop_bones(joints):
    """bone[v1] = joint[v1] - joint[v2] for each edge (v1, v2), 1-based; bone 21 stays zero."""
    out = np.zeros_like(joints)
    for child, parent in NTU_INWARD_EDGES_1BASED:
        for c in range(joints.shape[0]):
            for t in range(joints.shape[1]):
                for m in range(joints.shape[3]):
                    out[c, t, child - 1, m] = joints[c, t, child - 1, m] - joints[c, t, parent - 1, m]
    return out


def loop_motion(x):
    out = np.zeros_like(x)
    for t in range(x.shape[1] - 1):
        out[:, t] = x[:, t + 1] - x[:, t]
    return out


def expected_modality(joints, modality):
    bones = loop_bones(joints)
    return {"joint": joints, "bone": bones, "joint_bone": np.concatenate([joints, bones]),
            "joint_motion": loop_motion(joints), "bone_motion": loop_motion(bones)}[modality]


@pytest.fixture
def agcn_folder(tmp_path):
    joints = random_joints(0)
    np.save(tmp_path / "val_data_joint.npy", joints)
    names = [f"S001C001P00{i}R001A00{i + 1}.skeleton" for i in range(N)]
    labels = [3, 0, 7, 7, 59]
    with open(tmp_path / "val_label.pkl", "wb") as file:
        pickle.dump((names, labels), file)
    return tmp_path, joints, names, labels


@pytest.mark.parametrize("modality", MODALITIES)
def test_agcn_joint_file_gives_every_modality(agcn_folder, modality):
    folder, joints, names, labels = agcn_folder
    dataset = AGCNDataset(folder / "val_data_joint.npy", folder / "val_label.pkl",
                          modality=modality)
    assert len(dataset) == N and dataset.channels == (6 if modality == "joint_bone" else 3)
    for index in range(N):
        x, label = dataset[index]
        assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
        assert label == labels[index] and isinstance(label, int)
        np.testing.assert_allclose(x.numpy(), expected_modality(joints[index], modality),
                                   rtol=0, atol=1e-6)
        assert dataset.sample_name(index) == names[index]


def test_agcn_data_is_memory_mapped_and_pickles_small(agcn_folder):
    folder, *_ = agcn_folder
    dataset = AGCNDataset.in_folder(folder, "val")
    dataset[0]
    assert isinstance(dataset.data.array, np.memmap)
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(pickle.dumps(dataset)) < 4000  # the path travels, not the array
    np.testing.assert_array_equal(clone[3][0].numpy(), dataset[3][0].numpy())


@pytest.mark.parametrize("stored,file_suffix,modality,derived_from", [
    ("bone", "_data_bone.npy", "bone", "bone"),
    ("bone", "_data_bone.npy", "bone_motion", "bone_motion"),
    ("joint_motion", "_data_joint_motion.npy", "joint_motion", "joint_motion"),
    ("bone_motion", "_data_bone_motion.npy", "bone_motion", "bone_motion"),
    ("joint_bone", "_data_joint_bones.npy", "joint_bone", "joint_bone"),
    ("joint_bone", "_data_joint_bones.npy", "joint", "joint"),
    ("joint_bone", "_data_joint_bones.npy", "bone", "bone"),
    ("joint_bone", "_data_joint_bones.npy", "joint_motion", "joint_motion"),
    ("joint_bone", "_joint_bone.npy", "bone_motion", "bone_motion"),
    ("bone", "_bone.npy", "bone", "bone"),
])
def test_derived_files(agcn_folder, stored, file_suffix, modality, derived_from):
    folder, joints, _, _ = agcn_folder
    stored_data = np.stack([expected_modality(sample, stored) for sample in joints])
    np.save(folder / f"val{file_suffix}", stored_data)
    dataset = AGCNDataset(folder / f"val{file_suffix}", folder / "val_label.pkl",
                          modality=modality)
    assert dataset.stored == stored
    for index in range(N):
        np.testing.assert_allclose(dataset[index][0].numpy(),
                                   expected_modality(joints[index], derived_from), atol=1e-6)


def test_bones_and_motion_also_work_on_torch_batches():
    joints = random_joints(1)
    batch = torch.from_numpy(joints)
    for modality in MODALITIES:
        expected = np.stack([expected_modality(sample, modality) for sample in joints])
        np.testing.assert_allclose(derive(batch, "joint", modality).numpy(), expected, atol=1e-6)


def test_modality_errors(agcn_folder):
    folder, joints, _, _ = agcn_folder
    np.save(folder / "val_data_joint_motion.npy", joints)
    with pytest.raises(ValueError, match="cannot compute 'bone' from 'joint_motion'"):
        AGCNDataset(folder / "val_data_joint_motion.npy", folder / "val_label.pkl",
                    modality="bone")
    with pytest.raises(ValueError, match="unknown modality 'bones'"):
        AGCNDataset.in_folder(folder, "val", modality="bones")
    np.save(folder / "val_features.npy", joints)
    with pytest.raises(ValueError, match="cannot tell what"):
        AGCNDataset(folder / "val_features.npy", folder / "val_label.pkl")
    np.save(folder / "val_data_bone.npy", joints[:, :2])
    with pytest.raises(ValueError, match=r"expected \(C=3, T, V, M\)"):
        AGCNDataset(folder / "val_data_bone.npy", folder / "val_label.pkl")


def test_label_file_errors(agcn_folder):
    folder, *_ = agcn_folder
    with open(folder / "val_label.pkl", "wb") as file:
        pickle.dump((["a.skeleton"], [1]), file)
    with pytest.raises(ValueError, match="holds 5 samples but the label file .*val_label.pkl has 1"):
        AGCNDataset.in_folder(folder, "val")
    with open(folder / "val_label.pkl", "wb") as file:
        pickle.dump({"names": []}, file)
    with pytest.raises(ValueError, match="not a 2s-AGCN label file"):
        AGCNDataset.in_folder(folder, "val")
    (folder / "val_label.pkl").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"is a text file \(it begins 'garbage'\), not a pickle"):
        AGCNDataset.in_folder(folder, "val")
    (folder / "val_label.pkl").write_bytes(pickle.dumps((["a.skeleton"] * 5, [1] * 5))[:-4])
    with pytest.raises(ValueError, match="cannot be read as a data pickle"):
        AGCNDataset.in_folder(folder, "val")
    (folder / "val_label.pkl").unlink()
    with pytest.raises(ValueError, match="cannot read the label file"):
        AGCNDataset.in_folder(folder, "val")


def test_python2_label_pickle_needs_latin1(tmp_path):
    # What Python 2's pickle.dump((names, labels)) writes, with a non-ASCII byte in a name.
    payload = (b"((lp0\nS'S001C001P001R001A001.skeleton'\np1\naS'caf\\xe9'\np2\na"
               b"(lp3\nI0\naI2\natp4\n.")
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(payload)
    path = tmp_path / "old_label.pkl"
    path.write_bytes(payload)
    assert load_data_pickle(path) == (["S001C001P001R001A001.skeleton", "caf\xe9"], [0, 2])


def test_pickles_that_run_code_are_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("this should never run",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(([Exploit()], [0])))
    with pytest.raises(ValueError, match="builtins.print"):
        load_data_pickle(path, "label file")


def pyskl_annotations(seed):
    rng = np.random.default_rng(seed)
    annotations = []
    for i, (bodies, frames) in enumerate([(1, 9), (2, 15), (3, 20), (2, 4)]):
        keypoint = rng.normal(size=(bodies, frames, V, 3)).astype(np.float16)
        annotations.append(dict(frame_dir=f"S001C001P001R001A{i + 1:03d}", label=i * 2,
                                keypoint=keypoint, total_frames=frames))
    names = [a["frame_dir"] for a in annotations]
    return dict(split={"xsub_train": names[:3], "xsub_val": names[3:]}, annotations=annotations)


def test_pyskl_reader(tmp_path):
    content = pyskl_annotations(2)
    path = tmp_path / "ntu60_3danno.pkl"
    path.write_bytes(pickle.dumps(content))
    dataset = PysklDataset(path, "xsub_train", frames=16)
    assert len(dataset) == 3
    for index, annotation in enumerate(content["annotations"][:3]):
        x, label = dataset[index]
        assert x.shape == (3, 16, V, 2) and label == annotation["label"]
        keypoint = annotation["keypoint"].astype(np.float32)
        bodies, frames = min(len(keypoint), 2), min(keypoint.shape[1], 16)
        expected = np.zeros((3, 16, V, 2), np.float32)
        expected[:, :frames, :, :bodies] = keypoint[:bodies, :frames].transpose(3, 1, 2, 0)
        np.testing.assert_array_equal(x.numpy(), expected)
        assert dataset.sample_name(index) == annotation["frame_dir"]
    val_joints = PysklDataset(path, "xsub_val", frames=16)[0][0].numpy()
    val_bones = PysklDataset(path, "xsub_val", modality="bone", frames=16)[0][0].numpy()
    np.testing.assert_allclose(val_bones, loop_bones(val_joints), atol=1e-6)


def test_pyskl_errors(tmp_path):
    path = tmp_path / "a.pkl"
    path.write_bytes(pickle.dumps(pyskl_annotations(3)))
    with pytest.raises(ValueError, match=r"no split 'xview_train'.*xsub_train"):
        PysklDataset(path, "xview_train")
    content = pyskl_annotations(3)
    content["split"]["xsub_train"].append("S009C001P001R001A001")
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match="1 samples with no annotation"):
        PysklDataset(path, "xsub_train")
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="not a pyskl annotation file"):
        PysklDataset(path, "xsub_train")


@pytest.mark.parametrize("compressed", [False, True])
def test_ctrgcn_reader(tmp_path, compressed):
    rng = np.random.default_rng(4)
    x_train = rng.normal(size=(N, T, 150)).astype(np.float32)
    y_train = np.eye(60, dtype=np.float32)[[5, 0, 59, 1, 1]]
    save = np.savez_compressed if compressed else np.savez
    path = tmp_path / "NTU60_CS.npz"
    save(path, x_train=x_train, y_train=y_train, x_test=x_train[:2], y_test=y_train[:2])
    dataset = CTRGCNDataset(path, "train", modality="joint")
    assert isinstance(dataset.data.array, np.memmap) != compressed
    assert [dataset[i][1] for i in range(N)] == [5, 0, 59, 1, 1]
    for index in range(N):
        expected = np.zeros((3, T, V, M), np.float32)
        for body in range(2):
            for joint in range(V):
                start = body * 75 + joint * 3
                expected[:, :, joint, body] = x_train[index, :, start:start + 3].T
        np.testing.assert_array_equal(dataset[index][0].numpy(), expected)
    assert dataset.sample_name(1) == f"{path}[train]:1"
    assert len(CTRGCNDataset(path, "test")) == 2
    with pytest.raises(ValueError, match="has no array '[xy]_val'"):
        CTRGCNDataset(path, "val")


def test_augmentation_off_by_default_and_items_unchanged(agcn_folder):
    folder, joints, _, _ = agcn_folder
    dataset = AGCNDataset.in_folder(folder, "val", augmentation=Augmentation())
    np.testing.assert_array_equal(dataset[2][0].numpy(), joints[2])


def sample_with_padding(seed):
    rng = np.random.default_rng(seed)
    x = np.zeros((3, 30, V, M), np.float32)
    x[:, 4:22, :, 0] = rng.normal(size=(3, 18, V)) + 1.0
    x[:, 4:22, :5, 1] = rng.normal(size=(3, 18, 5))
    return x


def generator(seed):
    return torch.Generator().manual_seed(seed)


def test_random_shift_moves_the_valid_span():
    x = sample_with_padding(0)
    starts = set()
    for seed in range(12):
        shifted = random_shift(x, generator(seed))
        start = np.flatnonzero(shifted.any(axis=(0, 2, 3)))[0]
        np.testing.assert_array_equal(shifted[:, start:start + 18], x[:, 4:22])
        assert not np.delete(shifted, np.s_[start:start + 18], axis=1).any()
        starts.add(start)
    assert len(starts) > 3


def test_random_choose_crops_and_pads():
    x = sample_with_padding(1)
    cropped = random_choose(x, 10, generator(0))
    assert cropped.shape == (3, 10, V, M)
    offsets = [o for o in range(21) if np.array_equal(x[:, o:o + 10], cropped)]
    assert offsets
    padded = random_choose(x, 40, generator(1))
    assert padded.shape == (3, 40, V, M)
    start = [o for o in range(11) if np.array_equal(padded[:, o:o + 30], x)]
    assert start and not np.delete(padded, np.s_[start[0]:start[0] + 30], axis=1).any()


def test_random_move_is_an_in_plane_similarity_that_keeps_absent_joints():
    x = sample_with_padding(2)
    moved = random_move(x, generator(3))
    np.testing.assert_array_equal(moved[2], x[2])  # z untouched
    absent = ~x.any(axis=0)
    assert absent.any() and not moved[:, absent].any()
    # per frame a rotation times a scale in the x-y plane: ratios of distances are kept
    d_before = np.linalg.norm(x[:2, 10, 0, 0] - x[:2, 10, 1, 0])
    d_after = np.linalg.norm(moved[:2, 10, 0, 0] - moved[:2, 10, 1, 0])
    e_before = np.linalg.norm(x[:2, 10, 2, 0] - x[:2, 10, 3, 0])
    e_after = np.linalg.norm(moved[:2, 10, 2, 0] - moved[:2, 10, 3, 0])
    np.testing.assert_allclose(d_after / d_before, e_after / e_before, rtol=1e-4)
    assert 0.85 < d_after / d_before < 1.15
    assert not np.array_equal(moved, x)


def test_random_rotation_keeps_lengths_and_both_channel_groups_alike():
    x = sample_with_padding(3)
    both = np.concatenate([x, 2 * x])
    rotated = random_rotation(both, 30.0, generator(4))
    np.testing.assert_allclose(np.linalg.norm(rotated[:3], axis=0), np.linalg.norm(x, axis=0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rotated[3:], 2 * rotated[:3], rtol=1e-5, atol=1e-6)
    assert not np.allclose(rotated[:3], x, atol=1e-3)
    assert not rotated[:, :4].any()


def test_augmentations_are_reproducible_under_torch_seed(agcn_folder):
    folder, *_ = agcn_folder
    augmentation = Augmentation(random_shift=True, window=8, random_move=True,
                                rotation_degrees=15.0)
    dataset = AGCNDataset.in_folder(folder, "val", modality="joint_bone",
                                    augmentation=augmentation)
    torch.manual_seed(0)
    first = dataset[1][0]
    torch.manual_seed(0)
    again = dataset[1][0]
    second = dataset[1][0]
    assert first.shape == (6, 8, V, M)
    assert torch.equal(first, again) and not torch.equal(first, second)
    # bones are computed from the augmented joints
    np.testing.assert_allclose(first[3:].numpy(), loop_bones(first[:3].numpy()), atol=1e-5)


def test_augmentation_rejects_bad_settings_and_samples():
    with pytest.raises(ValueError, match="window"):
        Augmentation(window=0)
    with pytest.raises(ValueError, match="rotation_degrees"):
        Augmentation(rotation_degrees=200)
    with pytest.raises(ValueError, match="multiple of 3"):
        Augmentation(random_shift=True)(np.zeros((4, 5, V, M), np.float32))
