"""2-D pose estimators' outputs as 2s-AGCN samples: Kinetics-Skeleton, OpenPose, MMPose, MediaPipe.

Every reader returns one sample, float32 (3, T, V, M) as ``sttr prepare`` writes them: channel 0
and 1 are x and y divided by the frame's width and height (so in [0, 1] inside the frame) minus
0.5, channel 2 the joint's detection score; a joint whose score is 0 (not detected) is (0, 0, 0).
This is how ST-GCN's Kinetics feeder prepares Kinetics-Skeleton, applied to every source so that
one model can read them all. Joints keep the source's order, named by the graph preset of that
order (``sttr_fast/graph.py``). docs/data.md §9 describes each format.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .tracking import DEFAULT_MATCH_DISTANCE, most_confident, track_people

FORMATS = ("kinetics", "openpose", "mmpose", "mediapipe")
PIXEL_FORMATS = ("openpose", "mmpose")  # the ones that need --frame-size

KINETICS_JOINTS = 18
# ST-GCN's feeder reads at most the first 5 skeletons listed in a frame (its num_person_in).
KINETICS_SLOTS = 5
OPENPOSE_LAYOUTS = {25: "openpose-25", 18: "openpose-18"}
MMPOSE_LAYOUTS = {17: "coco-17"}
MEDIAPIPE_LAYOUTS = {33: "mediapipe-33", 21: "mediapipe-hands-21"}
MEDIAPIPE_CSV_COLUMNS = ("frame", "landmark", "x", "y")  # required; person, z, visibility optional


class PoseFileError(ValueError):
    """An input that is not what its format says; the message names the file and the place."""


@dataclass(frozen=True)
class SampleShape:
    """What every converted sample becomes: ``frames`` x joints x ``num_person``."""
    frames: int = 300
    num_person: int = 2
    frame_size: tuple[float, float] | None = None   # width, height of pixel coordinates
    match_distance: float = DEFAULT_MATCH_DISTANCE


@dataclass
class PoseSample:
    joints: np.ndarray                  # float32 (3, frames, V, num_person)
    layout: str | None                  # graph preset of the joint order, None when none fits
    notes: list[str] = field(default_factory=list)   # what was cut, reported but not an error


def read_sample(source_format: str, path: Path, shape: SampleShape) -> PoseSample:
    """The sample of one input: a Kinetics-Skeleton or MMPose .json file, a folder of OpenPose
    per-frame .json files, a MediaPipe .csv or .json file."""
    if source_format == "kinetics":
        return read_kinetics(path, shape)
    if source_format == "openpose":
        frames, layout = read_openpose_folder(path)
    elif source_format == "mmpose":
        frames, layout = read_mmpose(path)
    elif source_format == "mediapipe":
        frames, layout = read_mediapipe(path)
    else:
        raise ValueError(f"unknown pose format {source_format!r}; expected one of {', '.join(FORMATS)}")
    if source_format in PIXEL_FORMATS:
        if shape.frame_size is None:
            raise ValueError(f"{source_format} coordinates are pixels; the frame size is needed")
        width, height = shape.frame_size
        frames = [people / np.array([width, height, 1.0]) for people in frames]
    return _tracked_sample(frames, layout, shape)


# --- Kinetics-Skeleton -----------------------------------------------------------------------------

def read_kinetics(path: Path, shape: SampleShape) -> PoseSample:
    """One video of ST-GCN's Kinetics-Skeleton: ``{"data": [{"frame_index": i, "skeleton": [{"pose":
    36 values x, y interleaved, "score": 18 values}, ...]}, ...]}``, coordinates already divided by
    the frame size. As ST-GCN's feeder: frame_index is the frame's position, the first 5 skeletons of
    a frame fill slots 0-4, and each frame's slots are ranked by their summed score, keeping the
    first ``num_person``."""
    content = _load_json(path)
    frames = content.get("data") if isinstance(content, dict) else None
    if not isinstance(frames, list):
        raise PoseFileError(f"{path}: expected an object with a 'data' list of frames "
                            "(Kinetics-Skeleton)")
    slots = np.zeros((3, shape.frames, KINETICS_JOINTS, KINETICS_SLOTS))
    beyond = []
    for position, frame in enumerate(frames):
        where = f"{path}: data[{position}]"
        if not (isinstance(frame, dict) and isinstance(frame.get("skeleton"), list)
                and _is_count(frame.get("frame_index"))):
            raise PoseFileError(f"{where} is not a frame {{\"frame_index\": a whole number >= 0, "
                                "\"skeleton\": [...]}")
        index = frame["frame_index"]
        if index >= shape.frames:
            beyond.append(index)
            continue
        for m, skeleton in enumerate(frame["skeleton"][:KINETICS_SLOTS]):
            if not isinstance(skeleton, dict):
                raise PoseFileError(f"{where}.skeleton[{m}] is not an object with 'pose' and 'score'")
            pose = _numbers(skeleton.get("pose"), f"{where}.skeleton[{m}].pose")
            score = _numbers(skeleton.get("score"), f"{where}.skeleton[{m}].score")
            if pose.shape != (2 * KINETICS_JOINTS,) or score.shape != (KINETICS_JOINTS,):
                raise PoseFileError(f"{where}.skeleton[{m}] has {pose.size} pose and {score.size} "
                                    f"score values; expected {2 * KINETICS_JOINTS} (18 joints x, y) "
                                    f"and {KINETICS_JOINTS}")
            slots[0, index, :, m], slots[1, index, :, m], slots[2, index, :, m] = (
                pose[0::2], pose[1::2], score)
    slots = _centred(slots)
    ranking = np.argsort(-slots[2].sum(axis=1), axis=1, kind="stable")   # (T, slots)
    ranked = np.take_along_axis(slots, ranking[None, :, None, :], axis=3)
    joints = np.zeros((3, shape.frames, KINETICS_JOINTS, shape.num_person))
    kept = min(shape.num_person, KINETICS_SLOTS)
    joints[..., :kept] = ranked[..., :kept]
    notes = []
    if beyond:
        notes.append(f"{len(beyond)} frame(s) with frame_index >= {shape.frames} (up to "
                     f"{max(beyond)}) cut")
    return PoseSample(joints.astype(np.float32), "openpose-18", notes)


# --- OpenPose ----------------------------------------------------------------------------------------

def read_openpose_folder(folder: Path) -> tuple[list[np.ndarray], str]:
    """Per-frame people (P, V, 3) in pixels from a folder of OpenPose ``--write_json`` files (one
    ``<video>_<frame>_keypoints.json`` per frame, in the natural order of their names), and the
    layout: BODY_25 (75 values per person) or COCO-18 (54)."""
    files = sorted(folder.glob("*.json"), key=_natural_order)
    if not files:
        raise PoseFileError(f"{folder}: holds no .json files (OpenPose --write_json writes one "
                            "<video>_<frame>_keypoints.json per frame)")
    frames, first = [], None   # first: (joint count, file) of the first person found
    for file in files:
        content = _load_json(file)
        people = content.get("people") if isinstance(content, dict) else None
        if not isinstance(people, list):
            raise PoseFileError(f"{file}: expected an object with a 'people' list (OpenPose "
                                "--write_json output)")
        poses = []
        for p, person in enumerate(people):
            values = _numbers(person.get("pose_keypoints_2d") if isinstance(person, dict) else None,
                              f"{file}: people[{p}].pose_keypoints_2d")
            joints = values.size // 3
            if values.ndim != 1 or values.size % 3 or joints not in OPENPOSE_LAYOUTS:
                raise PoseFileError(f"{file}: people[{p}].pose_keypoints_2d has {values.size} values; "
                                    "expected 75 (BODY_25: 25 joints x, y, confidence) or 54 (COCO-18)")
            if first is None:
                first = (joints, file)
            elif joints != first[0]:
                raise PoseFileError(
                    f"{file}: people[{p}] has {joints} joints ({OPENPOSE_LAYOUTS[joints]}) but "
                    f"{first[1].name} has {first[0]} ({OPENPOSE_LAYOUTS[first[0]]}); the frames of "
                    "one recording must come from one OpenPose model")
            poses.append(values.reshape(joints, 3))
        frames.append(poses)
    if first is None:
        raise PoseFileError(f"{folder}: no person detected in any of its {len(files)} frames")
    return _stacked(frames, first[0]), OPENPOSE_LAYOUTS[first[0]]


# --- MMPose ------------------------------------------------------------------------------------------

def read_mmpose(path: Path) -> tuple[list[np.ndarray], str | None]:
    """Per-frame people (P, V, 3) in pixels from MMPose / RTMPose predictions: a list of frames, or
    an object whose ``instance_info`` is that list (MMPose's demo scripts), each frame
    ``{"instances": [{"keypoints": [[x, y], ...], "keypoint_scores": [...]}, ...]}``; a frame may also
    be a plain list of people whose ``keypoints`` hold x, y, score triplets, flat or nested (the
    older form)."""
    content = _load_json(path)
    if isinstance(content, dict) and isinstance(content.get("instance_info"), list):
        content = content["instance_info"]
    if not isinstance(content, list):
        raise PoseFileError(f"{path}: expected a list of frames, or an object with an "
                            "'instance_info' list (MMPose predictions)")
    frames, first = [], None
    for position, frame in enumerate(content):
        where = f"{path}: frame {position}"
        people = frame.get("instances") if isinstance(frame, dict) else frame
        if not isinstance(people, list):
            raise PoseFileError(f"{where} is neither {{\"instances\": [...]}} nor a list of people")
        poses = []
        for p, person in enumerate(people):
            pose = _mmpose_person(person, f"{where}, person {p}")
            if first is None:
                first = (len(pose), position)
            elif len(pose) != first[0]:
                raise PoseFileError(f"{where}, person {p} has {len(pose)} keypoints but frame "
                                    f"{first[1]} has {first[0]}")
            poses.append(pose)
        frames.append(poses)
    if first is None:
        raise PoseFileError(f"{path}: no person detected in any of its {len(content)} frames")
    return _stacked(frames, first[0]), MMPOSE_LAYOUTS.get(first[0])


def _mmpose_person(person, where: str) -> np.ndarray:
    keypoints = person.get("keypoints") if isinstance(person, dict) else None
    if isinstance(keypoints, list) and keypoints and isinstance(keypoints[0], list):
        xy = _numbers(keypoints, f"{where} keypoints")
        if xy.ndim == 2 and xy.shape[1] == 3 and "keypoint_scores" not in person:
            return xy   # [[x, y, score], ...]
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise PoseFileError(f"{where}: keypoints must be [[x, y], ...], got shape {xy.shape}")
        scores = _numbers(person.get("keypoint_scores"), f"{where} keypoint_scores")
        if scores.shape != (len(xy),):
            raise PoseFileError(f"{where}: {scores.size} keypoint_scores for {len(xy)} keypoints")
        return np.concatenate([xy, scores[:, None]], axis=1)
    values = _numbers(keypoints, f"{where} keypoints")
    if values.ndim != 1 or values.size % 3 or values.size == 0:
        raise PoseFileError(f"{where}: keypoints must be [[x, y], ...] with keypoint_scores, or "
                            f"flat x, y, score triplets; got {values.size} values")
    return values.reshape(-1, 3)


# --- MediaPipe ---------------------------------------------------------------------------------------

def read_mediapipe(path: Path) -> tuple[list[np.ndarray], str]:
    """Per-frame poses (P, V, 3) of MediaPipe landmarks (x, y already divided by the frame size;
    the score is ``visibility``, 1 where the file has none). ``.csv``: a header with ``frame``,
    ``landmark``, ``x``, ``y`` and optionally ``person``, ``z``, ``visibility``; one row per frame,
    pose and landmark. ``.json``: a list of frames, each an empty list, one pose (a list of
    landmarks ``{"x", "y", "z", "visibility"}``) or a list of poses. z is not used."""
    if path.suffix.lower() == ".csv":
        return _read_mediapipe_csv(path)
    content = _load_json(path)
    if not isinstance(content, list):
        raise PoseFileError(f"{path}: expected a list of frames (MediaPipe landmarks)")
    frames, count = [], None
    for position, frame in enumerate(content):
        where = f"{path}: frame {position}"
        if not isinstance(frame, list):
            raise PoseFileError(f"{where} is not a list of landmarks or of poses")
        poses = [frame] if frame and isinstance(frame[0], dict) else frame
        people = []
        for p, pose in enumerate(poses):
            if not isinstance(pose, list) or len(pose) not in MEDIAPIPE_LAYOUTS:
                size = len(pose) if isinstance(pose, list) else type(pose).__name__
                raise PoseFileError(f"{where}, pose {p} has {size} landmarks; expected 33 (pose) or "
                                    "21 (hands)")
            if count is None:
                count = len(pose)
            elif len(pose) != count:
                raise PoseFileError(f"{where}, pose {p} has {len(pose)} landmarks but earlier poses "
                                    f"have {count}")
            people.append(np.array([_landmark(point, f"{where}, pose {p}, landmark {j}")
                                    for j, point in enumerate(pose)]))
        frames.append(people)
    if count is None:
        raise PoseFileError(f"{path}: no pose in any of its {len(content)} frames")
    return _stacked(frames, count), MEDIAPIPE_LAYOUTS[count]


def _landmark(point, where: str) -> tuple[float, float, float]:
    if not isinstance(point, dict) or "x" not in point or "y" not in point:
        raise PoseFileError(f"{where} is not an object with x and y")
    values = _numbers([point["x"], point["y"], point.get("visibility", 1.0)], where)
    return tuple(values)


def _read_mediapipe_csv(path: Path) -> tuple[list[np.ndarray], str]:
    try:
        with open(path, newline="", encoding="utf-8") as file:
            rows = list(csv.reader(file))
    except UnicodeDecodeError:
        raise PoseFileError(f"{path}: not a UTF-8 text file, expected CSV") from None
    except csv.Error as error:
        raise PoseFileError(f"{path}: not a readable CSV file ({error})") from None
    if not rows:
        raise PoseFileError(f"{path}: empty; expected a header frame,landmark,x,y,z,visibility")
    header = [name.strip().lower() for name in rows[0]]
    missing = [name for name in MEDIAPIPE_CSV_COLUMNS if name not in header]
    if missing:
        raise PoseFileError(f"{path}: the header lacks {', '.join(missing)}; expected the columns "
                            "frame,landmark,x,y (and optionally person, z, visibility)")
    column = {name: header.index(name) for name in (*MEDIAPIPE_CSV_COLUMNS, "person", "visibility")
              if name in header}
    points = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path}, line {line}"
        if len(row) != len(header):
            raise PoseFileError(f"{where}: {len(row)} fields where the header has {len(header)}")
        frame, landmark = (_csv_count(row[column[name]], name, where) for name in ("frame", "landmark"))
        person = _csv_count(row[column["person"]], "person", where) if "person" in column else 0
        if landmark >= max(MEDIAPIPE_LAYOUTS):
            raise PoseFileError(f"{where}: landmark {landmark}; MediaPipe numbers them 0-32 (pose) "
                                "or 0-20 (hands)")
        values = [row[column["x"]], row[column["y"]],
                  row[column["visibility"]] if "visibility" in column else 1.0]
        try:
            point = tuple(float(value) for value in values)
        except ValueError:
            raise PoseFileError(f"{where}: x, y and visibility must be numbers, got "
                                f"{', '.join(map(repr, values))}") from None
        if not np.isfinite(point).all():
            raise PoseFileError(f"{where}: x, y and visibility must be finite, got {point}")
        if (frame, person, landmark) in points:
            raise PoseFileError(f"{where}: frame {frame}, person {person}, landmark {landmark} "
                                "is given twice")
        points[frame, person, landmark] = point
    if not points:
        raise PoseFileError(f"{path}: holds a header but no landmarks")
    largest = max(landmark for _, _, landmark in points)
    count = min(size for size in MEDIAPIPE_LAYOUTS if size > largest)
    frames = [dict() for _ in range(max(frame for frame, _, _ in points) + 1)]
    for (frame, person, landmark), point in points.items():
        frames[frame].setdefault(person, np.zeros((count, 3)))[landmark] = point
    people = [[poses[person] for person in sorted(poses)] for poses in frames]
    return _stacked(people, count), MEDIAPIPE_LAYOUTS[count]


def _csv_count(text: str, name: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise PoseFileError(f"{where}: {name} {text!r} is not a whole number") from None
    if value < 0:
        raise PoseFileError(f"{where}: {name} {value} is negative")
    return value


# --- shared --------------------------------------------------------------------------------------------

def _tracked_sample(frames: list[np.ndarray], layout: str | None, shape: SampleShape) -> PoseSample:
    """People followed across frames (``tracking.py``), the ``num_person`` most confident kept,
    centred, in a window of ``shape.frames``."""
    notes = []
    if len(frames) > shape.frames:
        notes.append(f"{len(frames)} frames, cut to the first {shape.frames}")
        frames = frames[:shape.frames]
    people = most_confident(track_people(frames, shape.match_distance), shape.num_person)
    joints = np.zeros((3, shape.frames, people.shape[2], shape.num_person))
    joints[:, :len(frames)] = people.transpose(3, 1, 2, 0)
    return PoseSample(_centred(joints).astype(np.float32), layout, notes)


def _centred(joints: np.ndarray) -> np.ndarray:
    """x, y minus 0.5, and (0, 0) where the score is 0: ST-GCN's Kinetics centring."""
    centred = joints.copy()
    centred[:2] = np.where(joints[2] == 0, 0.0, joints[:2] - 0.5)
    return centred


def _stacked(frames: list[list[np.ndarray]], num_joints: int) -> list[np.ndarray]:
    return [np.stack(people) if people else np.zeros((0, num_joints, 3)) for people in frames]


def _load_json(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise PoseFileError(f"{path}: not a UTF-8 text file, expected JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PoseFileError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, column "
                            f"{error.colno})") from None


def _numbers(value, where: str) -> np.ndarray:
    """A JSON list (nested or not) of finite numbers as float64."""
    if not isinstance(value, list):
        raise PoseFileError(f"{where}: expected a list of numbers, got "
                            f"{'nothing' if value is None else type(value).__name__}")
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise PoseFileError(f"{where}: expected numbers in lists of equal length") from None
    if not np.isfinite(array).all():
        raise PoseFileError(f"{where}: holds a value that is not a finite number")
    return array


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _natural_order(path: Path):
    """``f_2`` before ``f_10``: digits compare as numbers."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part)
            for part in re.split(r"(\d+)", path.name)]
