"""``sttr convert``: Kinetics-Skeleton, OpenPose, MMPose and MediaPipe files written here in their
published layouts, converted, and compared with arrays computed independently from the coordinates
put in; the tracking rule; bad inputs. Coordinates are multiples of 1/64 of the frame and scores of
1/8, so every expected value is exact in float32."""
import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from sttr_fast.cli import main
from sttr_fast.data import PysklDataset
from sttr_fast.data.synthetic import write_raw_dataset
from sttr_fast.data.tracking import most_confident, track_people
from sttr_fast.graph import graph_preset
from sttr_fast.predict import load_predictor

WIDTH, HEIGHT = 640, 480
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _expected(people, frames, num_person):
    """(3, frames, V, M) from ground-truth persons, each (T, V, 3) with x, y in [0, 1], listed in
    the order they must come out: x - 0.5, y - 0.5, score, and (0, 0, 0) where the score is 0."""
    joints = people[0].shape[1]
    out = np.zeros((3, frames, joints, num_person), np.float32)
    for m, person in enumerate(people[:num_person]):
        for t in range(min(frames, len(person))):
            for v in range(joints):
                x, y, score = person[t, v]
                if score != 0:
                    out[:, t, v, m] = (x - 0.5, y - 0.5, score)
    return out


def _walker(rng, frames, joints, start, step, score, offsets=None):
    """One person: joints scattered around a point moving by ``step`` per frame, x, y in 64ths."""
    offsets = rng.integers(-6, 7, (joints, 2)) if offsets is None else offsets
    person = np.zeros((frames, joints, 3))
    for t in range(frames):
        person[t, :, :2] = (np.array(start) * 64 + t * np.array(step) * 64 + offsets) / 64
        person[t, :, 2] = score
    return person


def _load(out, split="train"):
    data = np.load(out / f"{split}_data_joint.npy")
    names, labels = pickle.loads((out / f"{split}_label.pkl").read_bytes())
    return data, names, labels


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


# --- tracking ---------------------------------------------------------------------------------------

def test_tracking_follows_people_who_cross_while_the_estimator_swaps_their_order():
    rng = np.random.default_rng(11)
    frames, joints = 24, 5
    # A walks right, B left, alike and 4/64 apart vertically: at the crossing both are within the
    # match distance of both tracks, and only the closest-first rule keeps them apart.
    shape = rng.integers(-6, 7, (joints, 2))
    a = _walker(rng, frames, joints, (0.2, 0.40), (0.025, 0), 0.875, shape)
    b = _walker(rng, frames, joints, (0.8, 0.40 + 4 / 64), (-0.025, 0), 0.625, shape)
    a[15:17] = 0            # A is missed for two frames and found again
    b[:, 4, 2] = 0          # B's joint 4 is never seen (its coordinates must not count)
    b[:, 4, :2] = 0.95
    ghost = np.zeros((joints, 3))
    ghost[:2] = (0.9, 0.1, 1.0)   # a false detection in frames 5-7: its own, short track
    listed = []
    for t in range(frames):
        people = [p[t] for p in (a, b) if p[t, :, 2].any()] + ([ghost] if 5 <= t <= 7 else [])
        listed.append(np.stack([people[i] for i in rng.permutation(len(people))]))
    assert any(np.array_equal(frame[0], b[t]) for t, frame in enumerate(listed))  # order swaps

    tracks = track_people(listed, max_distance=0.1)
    assert len(tracks) == 3
    kept = most_confident(tracks, 2)
    np.testing.assert_array_equal(kept[0], a)
    np.testing.assert_array_equal(kept[1], b)
    padded = most_confident(tracks, 4)
    np.testing.assert_array_equal(padded[2, 5:8, :2], np.stack([ghost[:2]] * 3))
    np.testing.assert_array_equal(padded[3], 0)


def test_a_person_farther_than_the_match_distance_starts_a_new_track():
    still = np.zeros((1, 3, 3))
    still[0, :, 2] = 1.0
    still[0, :, :2] = 0.5
    jumped = still.copy()
    jumped[0, :, 0] += 0.25
    assert len(track_people([still, jumped], max_distance=0.2)) == 2
    assert len(track_people([still, jumped], max_distance=0.3)) == 1
    unseen = np.zeros((1, 3, 3))          # a detection without any joint seen is dropped
    assert len(track_people([still, unseen, still], max_distance=0.2)) == 1


# --- Kinetics-Skeleton -------------------------------------------------------------------------------

def _kinetics_video(rng, frames, skeletons_per_frame):
    """A video JSON and its skeletons [(frame_index, pose 36, score 18), ...] per frame."""
    data, truth = [], []
    for index in range(frames):
        skeletons = []
        for _ in range(skeletons_per_frame(index)):
            pose = rng.integers(0, 65, 36) / 64
            score = rng.integers(0, 9, 18) / 8
            skeletons.append((pose, score))
        data.append({"frame_index": index,
                     "skeleton": [{"pose": p.tolist(), "score": s.tolist()} for p, s in skeletons]})
        truth.append(skeletons)
    return {"data": data, "label": "x", "label_index": 0}, truth


def _kinetics_expected(truth, frames, num_person):
    """ST-GCN's feeder written out frame by frame: the first 5 skeletons, ranked by summed score."""
    out = np.zeros((3, frames, 18, num_person), np.float32)
    for t, skeletons in enumerate(truth[:frames]):
        ranked = sorted(skeletons[:5], key=lambda s: -s[1].sum())
        for m, (pose, score) in enumerate(ranked[:num_person]):
            for v in range(18):
                if score[v] != 0:
                    out[:, t, v, m] = (pose[2 * v] - 0.5, pose[2 * v + 1] - 0.5, score[v])
    return out


def test_kinetics_skeleton_is_prepared_as_st_gcns_feeder_does(tmp_path, capsys):
    rng = np.random.default_rng(5)
    videos = tmp_path / "kinetics_val"
    videos.mkdir()
    # up to 6 skeletons per frame: the sixth is never read, even with the highest score
    first, first_truth = _kinetics_video(rng, 10, lambda t: t % 7)
    second, second_truth = _kinetics_video(rng, 6, lambda t: 1)
    (videos / "vidA.json").write_text(json.dumps(first))
    (videos / "vidB.json").write_text(json.dumps(second))
    (videos / "vidC.json").write_text(json.dumps({"data": []}))
    labels = {"vidA": {"has_skeleton": True, "label": "abseiling", "label_index": 0},
              "vidB": {"has_skeleton": True, "label": "zumba", "label_index": 399},
              "vidC": {"has_skeleton": False, "label": "yoga", "label_index": 398}}
    label_file = tmp_path / "kinetics_val_label.json"
    label_file.write_text(json.dumps(labels))
    out = tmp_path / "out"
    assert main(["convert", "--from", "kinetics", str(videos), "--labels", str(label_file),
                 "--out", str(out), "--split", "val", "--max-frames", "8", "--workers", "1"]) == 0
    printed = capsys.readouterr()
    assert "1 video(s) without skeleton" in printed.out
    assert "model.graph=openpose-18 model.num_classes=400" in printed.out
    assert "vidA.json: 2 frame(s) with frame_index >= 8 (up to 9) cut" in printed.err
    data, names, stored_labels = _load(out, "val")
    assert names == ["vidA.json", "vidB.json"] and stored_labels == [0, 399]
    assert data.shape == (2, 3, 8, 18, 2) and data.dtype == np.float32
    np.testing.assert_array_equal(data[0], _kinetics_expected(first_truth, 8, 2))
    np.testing.assert_array_equal(data[1], _kinetics_expected(second_truth, 8, 2))
    assert np.count_nonzero(data[0, 2, 6]) > 0   # frame 6 lists 6 skeletons and still fills 2 slots
    assert graph_preset("openpose-18").num_joints == data.shape[3]


# --- OpenPose ----------------------------------------------------------------------------------------

def _openpose_folder(folder, persons, listing_order):
    """One JSON per frame as OpenPose --write_json names them; coordinates in pixels and undetected
    joints (score 0) written as 0, 0, 0 as OpenPose does."""
    folder.mkdir(parents=True)
    for t in range(len(persons[0])):
        people = []
        for p in listing_order(t):
            pose = persons[p][t].copy()
            if not pose[:, 2].any():
                continue
            pose[:, 0] *= WIDTH
            pose[:, 1] *= HEIGHT
            pose[pose[:, 2] == 0] = 0
            people.append({"person_id": [-1], "pose_keypoints_2d": pose.ravel().tolist()})
        (folder / f"clip_{t:012d}_keypoints.json").write_text(
            json.dumps({"version": 1.3, "people": people}))


def test_openpose_body_25_folders_are_tracked_normalised_and_centred(tmp_path, capsys):
    rng = np.random.default_rng(7)
    strong = _walker(rng, 12, 25, (0.3, 0.5), (1 / 64, 0), 0.75)
    weak = _walker(rng, 12, 25, (0.7, 0.5), (-1 / 64, 0), 0.5)
    strong[:, 3, 2] = 0           # never detected: 0, 0, 0 in the file and in the array
    weak[4] = 0                   # a frame without the second person
    _openpose_folder(tmp_path / "videos" / "walk", [weak, strong], lambda t: (t % 2, 1 - t % 2))
    lone = _walker(rng, 6, 25, (0.5, 0.5), (0, 1 / 64), 0.625)
    _openpose_folder(tmp_path / "videos" / "stand", [lone], lambda t: (0,))
    labels = tmp_path / "labels.csv"
    labels.write_text("name,label\nwalk,3\nstand.json,1\nstand,1\n")
    out = tmp_path / "out"
    assert main(["convert", "--from", "openpose", str(tmp_path / "videos"), "--out", str(out),
                 "--labels", str(labels), "--frame-size", str(WIDTH), str(HEIGHT),
                 "--max-frames", "8", "--workers", "1"]) == 0
    assert "model.graph=openpose-25" in capsys.readouterr().out
    data, names, stored_labels = _load(out)
    assert names == ["stand", "walk"] and stored_labels == [1, 3]
    np.testing.assert_array_equal(data[0], _expected([lone], 8, 2))
    np.testing.assert_array_equal(data[1], _expected([strong, weak], 8, 2))
    assert np.all(data[1, :, :, 3, 0] == 0)


def test_openpose_frames_follow_the_numbers_in_their_names_and_coco_18_is_told_by_its_length(
        tmp_path):
    rng = np.random.default_rng(8)
    person = _walker(rng, 11, 18, (0.5, 0.5), (1 / 64, 1 / 64), 1.0)
    folder = tmp_path / "jump"
    folder.mkdir()
    for t in range(11):   # frame_2 must come before frame_10, which it does not as text
        pose = person[t] * (WIDTH, HEIGHT, 1)
        (folder / f"frame_{t}.json").write_text(
            json.dumps({"people": [{"pose_keypoints_2d": pose.ravel().tolist()}]}))
    out = tmp_path / "out"
    assert main(["convert", "--from", "openpose", str(folder), "--out", str(out), "--label", "0",
                 "--frame-size", str(WIDTH), str(HEIGHT), "--max-frames", "12",
                 "--num-person", "1", "--workers", "1"]) == 0
    data, names, _ = _load(out)
    assert data.shape == (1, 3, 12, 18, 1) and names == ["jump"]
    np.testing.assert_array_equal(data[0], _expected([person], 12, 1))


# --- MMPose ------------------------------------------------------------------------------------------

def _mmpose_frames(persons, listing_order, old_form=False):
    frames = []
    for t in range(len(persons[0])):
        people = []
        for p in listing_order(t):
            pose = persons[p][t] * (WIDTH, HEIGHT, 1)
            if old_form:
                people.append({"keypoints": pose.ravel().tolist()})
            else:
                people.append({"keypoints": pose[:, :2].tolist(),
                               "keypoint_scores": pose[:, 2].tolist(), "bbox": [[0, 0, 1, 1]]})
        frames.append(people if old_form else {"frame_id": t + 1, "instances": people})
    return frames


def write_mmpose_recordings(folder, count, frames, seed):
    """``count`` COCO-17 recordings of two people as MMPose's demo writes them, and their persons
    in the order the conversion must give (the more confident first)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = []
    for index in range(count):
        first = _walker(rng, frames, 17, (0.3, 0.5), (1 / 64, 0), 0.875)
        second = _walker(rng, frames, 17, (0.7, 0.5), (-1 / 64, 1 / 64), 0.375)
        first[:, 0, :2] = (0.25, 0.75)  # seen at 0 score: kept out of the array
        first[:, 0, 2] = 0
        content = {"meta_info": {"dataset_name": "coco"},
                   "instance_info": _mmpose_frames([second, first], lambda t: (t % 2, 1 - t % 2))}
        (folder / f"rec{index}.json").write_text(json.dumps(content))
        truth.append([first, second])
    return truth


def test_mmpose_predictions_in_both_forms_become_coco_17_samples(tmp_path, capsys):
    truth = write_mmpose_recordings(tmp_path / "mmpose", 1, 10, seed=9)
    rng = np.random.default_rng(10)
    single = _walker(rng, 5, 17, (0.5, 0.25), (0, 1 / 64), 0.5)
    (tmp_path / "mmpose" / "old.json").write_text(json.dumps(_mmpose_frames([single], lambda t: (0,),
                                                                            old_form=True)))
    out = tmp_path / "out"
    assert main(["convert", "--from", "mmpose", str(tmp_path / "mmpose"), "--out", str(out),
                 "--label", "2", "--frame-size", str(WIDTH), str(HEIGHT), "--max-frames", "8",
                 "--workers", "1"]) == 0
    assert "model.graph=coco-17" in capsys.readouterr().out
    data, names, labels = _load(out)
    assert names == ["old.json", "rec0.json"] and labels == [2, 2]
    np.testing.assert_array_equal(data[0], _expected([single], 8, 2))
    np.testing.assert_array_equal(data[1], _expected(truth[0], 8, 2))  # cut from 10 frames to 8
    assert graph_preset("coco-17").num_joints == data.shape[3]


# --- MediaPipe ---------------------------------------------------------------------------------------

def test_mediapipe_csv_keeps_x_y_and_visibility_with_the_documented_columns(tmp_path):
    rng = np.random.default_rng(12)
    pose = _walker(rng, 6, 33, (0.25, 0.5), (1 / 64, 0), 0.875)
    pose[:, 10, 2] = 0.125
    other = _walker(rng, 6, 33, (0.75, 0.5), (0, 1 / 64), 0.5)
    path = tmp_path / "squat.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["person", "frame", "landmark", "x", "y", "z", "visibility"])
        for t in range(6):
            # no pose found in frame 2: no rows; the landmarker lists the poses in varying order
            for person, landmarks in enumerate([] if t == 2 else [pose, other][::(-1) ** t]):
                for v in range(33):
                    if (t, v) == (3, 7) and landmarks is pose:
                        continue               # a landmark missing from the file: unseen
                    x, y, visibility = landmarks[t, v]
                    writer.writerow([person, t, v, x, y, -0.25, visibility])
    pose[2] = other[2] = 0
    pose[3, 7] = 0
    out = tmp_path / "out"
    assert main(["convert", "--from", "mediapipe", str(path), "--out", str(out), "--label", "5",
                 "--max-frames", "8", "--workers", "1"]) == 0
    data, names, labels = _load(out)
    assert names == ["squat.csv"] and labels == [5] and data.shape == (1, 3, 8, 33, 2)
    np.testing.assert_array_equal(data[0], _expected([pose, other], 8, 2))


def test_mediapipe_json_hands_without_visibility_count_as_seen(tmp_path, capsys):
    rng = np.random.default_rng(13)
    left = _walker(rng, 4, 21, (0.25, 0.5), (0, 0), 1.0)
    right = _walker(rng, 4, 21, (0.75, 0.5), (0, 0), 1.0)
    frames = []
    for t in range(4):
        hands = [[{"x": x, "y": y, "z": 0.0} for x, y, _ in hand[t]] for hand in (right, left)]
        frames.append(hands if t else hands[1])   # frame 0: one hand, given as a single pose
    path = tmp_path / "wave.json"
    path.write_text(json.dumps(frames))
    out = tmp_path / "out"
    assert main(["convert", "--from", "mediapipe", str(path), "--out", str(out), "--label", "0",
                 "--max-frames", "4", "--workers", "1"]) == 0
    assert "model.graph=mediapipe-hands-21" in capsys.readouterr().out
    data, _, _ = _load(out)
    right[0] = 0
    # equal scores: the left hand's track started first, so it is person 0
    np.testing.assert_array_equal(data[0], _expected([left, right], 4, 2))


# --- pyskl 2-D -------------------------------------------------------------------------------------

def test_pyskl_2d_annotations_take_keypoint_score_as_the_third_channel(tmp_path):
    rng = np.random.default_rng(14)
    keypoint = (rng.integers(0, 64, (1, 6, 17, 2)) * 10).astype(np.float16)
    score = (rng.integers(0, 8, (1, 6, 17)) / 8).astype(np.float16)
    content = {"split": {"xsub_val": ["a"]},
               "annotations": [{"frame_dir": "a", "label": 1, "keypoint": keypoint,
                                "keypoint_score": score, "total_frames": 6}]}
    path = tmp_path / "kinetics_2d.pkl"
    path.write_bytes(pickle.dumps(content))
    x, label = PysklDataset(path, "xsub_val", frames=8, num_person=2)[0]
    expected = np.zeros((3, 8, 17, 2), np.float32)
    expected[:2, :6, :, 0] = keypoint[0].transpose(2, 0, 1)
    expected[2, :6, :, 0] = score[0]
    assert label == 1
    np.testing.assert_array_equal(x.numpy(), expected)
    del content["annotations"][0]["keypoint_score"]
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(ValueError, match="keypoint_score"):
        PysklDataset(path, "xsub_val")[0]


# --- bad inputs ----------------------------------------------------------------------------------------

def _convert(*args):
    return main(["convert", *map(str, args), "--workers", "1"])


@pytest.fixture
def finished(tmp_path):
    """A finished conversion in out/ and the bytes of its files."""
    write_mmpose_recordings(tmp_path / "good", 2, 4, seed=1)
    out = tmp_path / "out"
    assert _convert("--from", "mmpose", tmp_path / "good", "--out", out, "--label", "0",
                    "--frame-size", WIDTH, HEIGHT, "--max-frames", "4") == 0
    return out, {path.name: path.read_bytes() for path in out.iterdir()}


BAD_FILES = {
    "malformed.json": ('{"instance_info": [', "not valid JSON (Expecting value at line 1, column 20)"),
    "short.json": ('[{"instances": [{"keypoints": [[1, 2], [3, 4]], "keypoint_scores": [1]}]}]',
                   "frame 0, person 0: 1 keypoint_scores for 2 keypoints"),
    "mixed.json": ('[[{"keypoints": [1, 2, 1, 3, 4, 1]}], [{"keypoints": [1, 2, 1]}]]',
                   "frame 1, person 0 has 1 keypoints but frame 0 has 2"),
    "text.json": ('[{"instances": [{"keypoints": "[[1, 2]]"}]}]',
                  "frame 0, person 0 keypoints: expected a list of numbers, got str"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_mmpose_file_is_named_with_what_is_wrong_and_nothing_is_lost(name, tmp_path, finished,
                                                                          capsys):
    out, before = finished
    capsys.readouterr()
    content, problem = BAD_FILES[name]
    bad = tmp_path / name
    bad.write_text(content)
    assert _convert("--from", "mmpose", bad, "--out", out, "--split", "val", "--label", "0",
                    "--frame-size", WIDTH, HEIGHT) == 2
    line = _one_error_line(capsys)
    assert line == f"sttr convert: error: no input could be converted: {bad}: {problem}"
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_openpose_keypoint_counts_are_checked_per_file(tmp_path, capsys):
    clip = tmp_path / "clip"
    clip.mkdir()
    body25 = {"people": [{"pose_keypoints_2d": [1.0] * 75}]}
    (clip / "clip_000000000000_keypoints.json").write_text(json.dumps(body25))
    odd = clip / "clip_000000000001_keypoints.json"
    odd.write_text(json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 57}]}))
    args = ["--from", "openpose", clip, "--out", tmp_path / "out", "--label", "0",
            "--frame-size", WIDTH, HEIGHT]
    assert _convert(*args) == 2
    assert _one_error_line(capsys).endswith(
        f"{odd}: people[0].pose_keypoints_2d has 57 values; expected 75 (BODY_25: 25 joints x, y, "
        "confidence) or 54 (COCO-18)")
    odd.write_text(json.dumps({"people": [{"pose_keypoints_2d": [1.0] * 54}]}))
    assert _convert(*args) == 2
    assert _one_error_line(capsys).endswith(
        f"{odd}: people[0] has 18 joints (openpose-18) but clip_000000000000_keypoints.json has 25 "
        "(openpose-25); the frames of one recording must come from one OpenPose model")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_some_inputs_bad_writes_the_rest_and_exits_1(tmp_path, capsys):
    write_mmpose_recordings(tmp_path / "in", 2, 4, seed=2)
    (tmp_path / "in" / "rec1.json").write_text("[")
    out = tmp_path / "out"
    assert _convert("--from", "mmpose", tmp_path / "in", "--out", out, "--label", "1",
                    "--frame-size", WIDTH, HEIGHT, "--max-frames", "4") == 1
    err = capsys.readouterr().err
    assert f"sttr convert: skipped {tmp_path / 'in' / 'rec1.json'}: not valid JSON" in err
    data, names, labels = _load(out)
    assert names == ["rec0.json"] and labels == [1] and data.shape == (1, 3, 4, 17, 2)
    assert sorted(p.name for p in out.iterdir()) == ["train_data_joint.npy", "train_label.pkl"]


@pytest.mark.parametrize("case", ["missing input", "exists", "no frame size", "frame size for "
                                  "normalised", "no label", "label missing", "bad label line",
                                  "frames not multiple of 4", "kinetics without label json"])
def test_command_line_mistakes_are_one_line_before_anything_is_written(case, tmp_path, finished,
                                                                       capsys):
    out, before = finished
    capsys.readouterr()
    good = tmp_path / "good"
    labels = tmp_path / "labels.csv"
    labels.write_text("rec0,1\nrec1,x\n" if case == "bad label line" else "rec0,1\n")
    size = ["--frame-size", WIDTH, HEIGHT]
    args, expected = {
        "missing input": (["--from", "mmpose", tmp_path / "nowhere", "--label", "0", *size],
                          f"{tmp_path / 'nowhere'}: no such file or folder"),
        "exists": (["--from", "mmpose", good, "--label", "0", *size, "--split", "train"],
                   f"{out / 'train_data_joint.npy'} and {out / 'train_label.pkl'} already exist; "
                   "pass --overwrite"),
        "no frame size": (["--from", "openpose", good, "--label", "0"],
                          "openpose coordinates are pixels: give the frame size with --frame-size"),
        "frame size for normalised": (["--from", "mediapipe", good, "--label", "0", *size],
                                      "--frame-size is for pixel coordinates (openpose, mmpose)"),
        "no label": (["--from", "mmpose", good, *size], "give either --label N"),
        "label missing": (["--from", "mmpose", good, "--labels", labels, *size],
                          f"--labels {labels} has no label for 1 input(s), e.g. rec1.json"),
        "bad label line": (["--from", "mmpose", good, "--labels", labels, *size],
                           f"--labels {labels}, line 2: label 'x' is not a whole number"),
        "frames not multiple of 4": (["--from", "mmpose", good, "--label", "0", *size,
                                      "--max-frames", "10"], "--max-frames must be a positive "
                                                             "multiple of 4"),
        "kinetics without label json": (["--from", "kinetics", good, "--label", "0"],
                                        "kinetics takes its labels from its label JSON"),
    }[case]
    split = [] if case == "exists" else ["--split", "val"]
    assert _convert(*args, "--out", out, *split) == 2
    line = _one_error_line(capsys)
    assert line.startswith("sttr convert: error: ") and expected in line, line
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_overwrite_replaces_a_finished_conversion(tmp_path, finished):
    out, before = finished
    assert _convert("--from", "mmpose", tmp_path / "good", "--out", out, "--label", "3",
                    "--frame-size", WIDTH, HEIGHT, "--max-frames", "4", "--overwrite") == 0
    _, names, labels = _load(out)
    assert labels == [3, 3] and names == ["rec0.json", "rec1.json"]
    assert (out / "train_data_joint.npy").read_bytes() == before["train_data_joint.npy"]


# --- end to end ------------------------------------------------------------------------------------

def test_converted_coco_17_recordings_train_a_model_that_predicts_them(tmp_path, capsys):
    """MMPose files -> sttr convert -> sttr train (model.graph=coco-17, one tiny epoch) -> sttr
    predict on the converted array, whose probabilities are the model's on that array untouched
    (no NTU pre-normalisation)."""
    data = tmp_path / "data"
    for split, count, seed in (("train", 4, 3), ("val", 2, 4)):
        write_mmpose_recordings(tmp_path / split, count, 16, seed=seed)
        labels = tmp_path / f"{split}.csv"
        labels.write_text("".join(f"rec{i},{i % 2}\n" for i in range(count)))
        assert _convert("--from", "mmpose", tmp_path / split, "--out", data, "--split", split,
                        "--labels", labels, "--frame-size", WIDTH, HEIGHT, "--max-frames", "16") == 0
    run = tmp_path / "run"
    assert main(["train", "--config", str(DEMO_CONFIG), "--work-dir", str(run), "--epochs", "1",
                 "--no-progress", "model.graph=coco-17", "model.base_channels=8",
                 "model.num_heads=2", "model.num_classes=2", "data.format=agcn",
                 f"data.train_data={data / 'train_data_joint.npy'}",
                 f"data.train_label={data / 'train_label.pkl'}",
                 f"data.val_data={data / 'val_data_joint.npy'}",
                 f"data.val_label={data / 'val_label.pkl'}", "data.frames=16",
                 "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0",
                 "optim.accumulate=1"]) == 0
    capsys.readouterr()
    out = tmp_path / "predictions.csv"
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(data / "val_data_joint.npy"),
                 "--labels", str(data / "val_label.pkl"), "--precision", "fp32", "--device", "cpu",
                 "--top-k", "2", "--out", str(out)]) == 0
    with open(out, newline="") as file:
        rows = list(csv.DictReader(file))
    predictor = load_predictor(run / "best.pt", "cpu", "fp32")
    with torch.no_grad():
        expected = predictor.model(torch.from_numpy(np.load(data / "val_data_joint.npy"))).softmax(1)
    assert [row["sample"] for row in rows] == ["rec0.json", "rec1.json"]
    for row, probabilities in zip(rows, expected):
        top = int(probabilities.argmax())
        assert row["action_1"] == f"class {top}"
        assert float(row["probability_1"]) == pytest.approx(float(probabilities[top]), abs=2e-6)

    # a raw NTU recording or an array of another skeleton is refused for this model, by name
    write_raw_dataset(tmp_path / "raw", ["S001C001P001R001A001"], seed=0, frames=(16, 16))
    raw = tmp_path / "raw" / "S001C001P001R001A001.skeleton"
    openpose = tmp_path / "openpose_data_joint.npy"
    np.save(openpose, np.zeros((1, 3, 16, 18, 2), np.float32))
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(raw), str(openpose)]) == 2
    err = capsys.readouterr().err
    assert (f"skipped {raw}: {raw} is a raw NTU RGB+D recording but the checkpoint's model is "
            "built for model.graph 'coco-17'") in err
    assert (f"skipped {openpose}: {openpose} holds 18 joints per body but the checkpoint's "
            "model.graph 'coco-17' has 17") in err


def test_a_custom_two_joint_graph_trains_from_converted_recordings_through_sttr_train(tmp_path):
    """A skeleton of no preset: two-keypoint MMPose recordings -> sttr convert -> sttr train with
    model.graph given as {num_joints, edges, center}; the checkpoint keeps that graph and scores
    the converted validation array."""
    rng = np.random.default_rng(21)
    data = tmp_path / "data"
    for split, count in (("train", 4), ("val", 2)):
        folder = tmp_path / split
        folder.mkdir()
        for index in range(count):
            person = _walker(rng, 8, 2, (0.3 + 0.1 * index, 0.5), (1 / 64, 0), 0.75)
            (folder / f"rec{index}.json").write_text(json.dumps(
                {"instance_info": _mmpose_frames([person], lambda t: (0,))}))
        assert _convert("--from", "mmpose", folder, "--out", data, "--split", split, "--label", "1",
                        "--frame-size", WIDTH, HEIGHT, "--max-frames", "8") == 0
    train, _, _ = _load(data)
    assert train.shape == (4, 3, 8, 2, 2)
    run = tmp_path / "run"
    graph = "model.graph={num_joints: 2, edges: [[1, 0]], center: 0}"
    assert main(["train", "--config", str(DEMO_CONFIG), "--work-dir", str(run), "--epochs", "1",
                 "--no-progress", graph, "model.base_channels=8", "model.num_heads=2",
                 "model.num_classes=2", "data.format=agcn", "data.modality=joint_bone",
                 f"data.train_data={data / 'train_data_joint.npy'}",
                 f"data.train_label={data / 'train_label.pkl'}",
                 f"data.val_data={data / 'val_data_joint.npy'}",
                 f"data.val_label={data / 'val_label.pkl'}", "data.frames=8",
                 "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0",
                 "optim.accumulate=1"]) == 0
    model = load_predictor(run / "best.pt", "cpu", "fp32").model.model
    assert (model.num_point, model.in_channels) == (2, 6)
    out = tmp_path / "predictions.json"
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(data / "val_data_joint.npy"),
                 "--labels", str(data / "val_label.pkl"), "--precision", "fp32", "--device", "cpu",
                 "--top-k", "2", "--out", str(out)]) == 0
    predictions = json.loads(out.read_text())
    assert [p["sample"] for p in predictions] == ["rec0.json", "rec1.json"]
    for p in predictions:
        assert sorted(top["action"] for top in p["top"]) == ["class 0", "class 1"]
        assert sum(top["probability"] for top in p["top"]) == pytest.approx(1.0, abs=1e-5)


def _write_recordings(fmt, folder, rng, count):
    """``count`` small recordings of one person in ``fmt``'s published layout; the conversion
    options they need (labels, frame size)."""
    folder.mkdir(parents=True)
    if fmt == "kinetics":
        labels = {}
        for index in range(count):
            video, _ = _kinetics_video(rng, 8, lambda t: 1)
            (folder / f"vid{index}.json").write_text(json.dumps(video))
            labels[f"vid{index}"] = {"has_skeleton": True, "label": "x", "label_index": index % 2}
        (folder.parent / f"{folder.name}_label.json").write_text(json.dumps(labels))
        return ["--labels", folder.parent / f"{folder.name}_label.json"]
    for index in range(count):
        joints = {"openpose": 25, "mediapipe-pose": 33, "mediapipe-hands": 21}[fmt]
        person = _walker(rng, 8, joints, (0.3 + 0.1 * index, 0.5), (1 / 64, 0), 0.75)
        if fmt == "openpose":
            _openpose_folder(folder / f"rec{index}", [person], lambda t: (0,))
            continue
        frames = [[{"x": x, "y": y, "z": 0.0, "visibility": s} for x, y, s in person[t]] for t in range(8)]
        (folder / f"rec{index}.json").write_text(json.dumps(frames))
    return ["--label", "1"] + (["--frame-size", WIDTH, HEIGHT] if fmt == "openpose" else [])


@pytest.mark.parametrize("fmt,graph", [("kinetics", "openpose-18"), ("openpose", "openpose-25"),
                                       ("mediapipe-pose", "mediapipe-33"),
                                       ("mediapipe-hands", "mediapipe-hands-21")])
def test_every_format_converts_trains_on_its_preset_and_predicts(fmt, graph, tmp_path, capsys):
    """Each reader's output trains one tiny epoch on the preset sttr convert names (joints+bones,
    so the preset's edges are used) and the checkpoint predicts the converted array."""
    rng = np.random.default_rng(31)
    data = tmp_path / "data"
    for split, count in (("train", 2), ("val", 2)):
        options = _write_recordings(fmt, tmp_path / split, rng, count)
        source = "mediapipe" if fmt.startswith("mediapipe") else fmt
        assert _convert("--from", source, tmp_path / split, "--out", data, "--split", split,
                        "--max-frames", "8", *options) == 0
        assert f"model.graph={graph}" in capsys.readouterr().out
    run = tmp_path / "run"
    assert main(["train", "--config", str(DEMO_CONFIG), "--work-dir", str(run), "--epochs", "1",
                 "--no-progress", f"model.graph={graph}", "model.base_channels=8", "model.num_heads=2",
                 "model.num_classes=2", "data.format=agcn", "data.modality=joint_bone",
                 *(f"data.{split}_{kind}={data / f'{split}_{stem}'}" for split in ("train", "val")
                   for kind, stem in (("data", "data_joint.npy"), ("label", "label.pkl"))),
                 "data.frames=8", "data.batch_size=2", "data.eval_batch_size=2", "data.num_workers=0",
                 "optim.accumulate=1"]) == 0
    out = tmp_path / "predictions.json"
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(data / "val_data_joint.npy"),
                 "--labels", str(data / "val_label.pkl"), "--precision", "fp32", "--device", "cpu",
                 "--top-k", "1", "--out", str(out)]) == 0
    predictions = json.loads(out.read_text())
    assert len(predictions) == 2 and all(0 < p["top"][0]["probability"] <= 1 for p in predictions)
