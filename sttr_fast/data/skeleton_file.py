"""The NTU RGB+D ``.skeleton`` text format: a strict reader and an exact writer.

Layout (whitespace-separated, ``\\n`` or ``\\r\\n`` line ends)::

    <frames>
    per frame:  <bodies>
      per body: <bodyID clipedEdges handLeftConfidence handLeftState handRightConfidence
                 handRightState isResticted leanX leanY trackingState>
                <joints = 25>
                25 x <x y z depthX depthY colorX colorY orientationW orientationX orientationY
                      orientationZ trackingState>
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_JOINTS = 25
BODY_FIELDS = ("bodyID", "clipedEdges", "handLeftConfidence", "handLeftState",
               "handRightConfidence", "handRightState", "isResticted", "leanX", "leanY",
               "trackingState")
JOINT_FIELDS = ("x", "y", "z", "depthX", "depthY", "colorX", "colorY", "orientationW",
                "orientationX", "orientationY", "orientationZ", "trackingState")
_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class SkeletonParseError(ValueError):
    """A ``.skeleton`` file that does not follow the format; names the file, line and expectation."""

    def __init__(self, path, line_number: int, message: str):
        """``line_number`` is 1-based; 0 when the file could not be read at all."""
        self.path, self.line_number, self.reason = Path(path), line_number, message
        self.detail = f"line {line_number}: {message}" if line_number else message
        super().__init__(f"{self.path}: {self.detail}")


@dataclass(frozen=True)
class RawSkeleton:
    """Everything a ``.skeleton`` file holds, bodies in file order.

    ``bodies_per_frame`` (T,) int64; ``body_ids`` (B,) int64; ``body_fields`` (B, 9) float64 (the
    body line after bodyID); ``joints`` (B, 25, 12) float64 (``JOINT_FIELDS``); B = sum of bodies.
    """

    path: Path
    bodies_per_frame: np.ndarray
    body_ids: np.ndarray
    body_fields: np.ndarray
    joints: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.bodies_per_frame)

    def body_frames(self) -> np.ndarray:
        """(B,) the frame each body belongs to."""
        return np.repeat(np.arange(self.num_frames), self.bodies_per_frame)

    def body_slots(self) -> np.ndarray:
        """(B,) each body's position among the bodies listed in its frame (0 = first)."""
        first_of_frame = np.cumsum(self.bodies_per_frame) - self.bodies_per_frame
        return np.arange(len(self.body_ids)) - np.repeat(first_of_frame, self.bodies_per_frame)


class _Lines:
    """A cursor over a file's lines that reports where it is when the content is not as expected."""

    def __init__(self, path: Path, text: str):
        self.path = path
        # Split on "\n" only, so line numbers are those of an editor; a "\r" left at a line's end
        # is whitespace to str.split().
        self.lines = text.split("\n")
        self.end = len(self.lines)
        while self.end > 0 and not self.lines[self.end - 1].strip():
            self.end -= 1  # trailing blank lines are not content
        self.position = 0

    def error(self, index: int, message: str) -> SkeletonParseError:
        return SkeletonParseError(self.path, index + 1, message)

    def take(self, count: int, expected: str) -> list[str]:
        if self.position + count > self.end:
            raise self.error(self.end, f"expected {expected}, but the file ends")
        start, self.position = self.position, self.position + count
        return self.lines[start:self.position]

    def count(self, expected: str) -> int:
        index = self.position
        fields = self.take(1, expected)[0].split()
        if len(fields) != 1 or not (fields[0].isascii() and fields[0].isdigit()):
            raise self.error(index, f"expected {expected} (one non-negative integer), "
                                    f"got {_shown(self.lines[index])}")
        return int(fields[0])


def read_skeleton(path) -> RawSkeleton:
    """Parse one ``.skeleton`` file; raises SkeletonParseError on any deviation from the format."""
    path = Path(path)
    try:
        # latin-1 maps every byte, so a garbled file fails on its content with a line number.
        text = path.read_bytes().decode("latin-1")
    except OSError as error:
        raise SkeletonParseError(path, 0, f"cannot be read: {error.strerror}") from error
    lines = _Lines(path, text)
    num_frames = lines.count("the frame count")
    bodies_per_frame = np.zeros(num_frames, dtype=np.int64)
    body_ids, body_fields, joint_blocks = [], [], []  # joint_blocks: (first line, which body)
    for frame in range(num_frames):
        where = f"frame {frame + 1} of {num_frames}"
        bodies_per_frame[frame] = lines.count(f"the body count of {where}")
        for body in range(bodies_per_frame[frame]):
            where_body = f"body {body + 1} of {bodies_per_frame[frame]} in {where}"
            body_id, fields = _body_line(lines, where_body)
            body_ids.append(body_id)
            body_fields.append(fields)
            joint_count_index = lines.position
            if lines.count(f"the joint count of {where_body}") != NUM_JOINTS:
                raise lines.error(joint_count_index, f"expected the joint count {NUM_JOINTS} of "
                                  f"{where_body}, got {_shown(lines.lines[joint_count_index])}")
            joint_blocks.append((lines.position, where_body))
            lines.take(NUM_JOINTS, f"{NUM_JOINTS} joint lines of {where_body} "
                                   f"({len(JOINT_FIELDS)} numbers each)")
    if lines.position < lines.end:
        raise lines.error(lines.position, f"expected the end of the file after {num_frames} frames, "
                                          f"got {_shown(lines.lines[lines.position])}")
    return RawSkeleton(
        path=path, bodies_per_frame=bodies_per_frame,
        body_ids=np.array(body_ids, dtype=np.int64),
        body_fields=np.array(body_fields, dtype=np.float64).reshape(-1, len(BODY_FIELDS) - 1),
        joints=_joint_values(lines, joint_blocks))


def _body_line(lines: _Lines, where: str) -> tuple[int, list[float]]:
    index = lines.position
    expected = f"the body line of {where} ({len(BODY_FIELDS)} fields: bodyID ... trackingState)"
    fields = lines.take(1, expected)[0].split()
    if len(fields) != len(BODY_FIELDS):
        raise lines.error(index, f"expected {expected}, got {len(fields)} fields: "
                                 f"{_shown(lines.lines[index])}")
    try:
        # bodyID is a 64-bit tracking id: parsed as an integer, never through a float.
        body_id = int(fields[0])
        values = [float(field) for field in fields[1:]]
    except ValueError:
        raise lines.error(index, f"expected {expected} with an integer bodyID and numbers, got "
                                 f"{_shown(lines.lines[index])}") from None
    if not _INT64_MIN <= body_id <= _INT64_MAX:
        raise lines.error(index, f"bodyID {body_id} of {where} does not fit in 64 bits")
    if not all(math.isfinite(value) for value in values):
        raise lines.error(index, f"expected finite numbers in the body line of {where}, got "
                                 f"{_shown(lines.lines[index])}")
    return body_id, values


def _joint_values(lines: _Lines, blocks: list[tuple[int, str]]) -> np.ndarray:
    """(bodies, 25, 12) from every body's joint lines, read in one call (the bulk of the work);
    when that fails, the lines are checked one by one to name the first bad one."""
    text = [line for first, _ in blocks for line in lines.lines[first:first + NUM_JOINTS]]
    shape = (len(blocks), NUM_JOINTS, len(JOINT_FIELDS))
    if not text:
        return np.zeros(shape)
    try:
        # comments=None: a '#' is garbage here, not a comment; blank lines, which loadtxt skips,
        # show up as a wrong row count.
        values = np.loadtxt(text, dtype=np.float64, comments=None, ndmin=2)
        if values.shape == (len(text), len(JOINT_FIELDS)) and np.isfinite(values).all():
            return values.reshape(shape)
    except ValueError:
        pass  # numpy refused a line: the pass below finds it
    for first, where in blocks:
        for offset in range(NUM_JOINTS):
            problem = _joint_row_problem(lines.lines[first + offset].split())
            if problem:
                raise lines.error(first + offset, f"expected joint {offset + 1} of {NUM_JOINTS} of "
                                                  f"{where}: {len(JOINT_FIELDS)} finite numbers "
                                                  f"(x y z ... trackingState), {problem}: "
                                                  f"{_shown(lines.lines[first + offset])}")
    # Every field is a number Python reads (numpy's reader is stricter about some spellings).
    return np.array([[float(field) for field in line.split()] for line in text]).reshape(shape)


def _joint_row_problem(row: list[str]) -> str | None:
    if len(row) != len(JOINT_FIELDS):
        return f"got {len(row)} fields"
    for field in row:
        try:
            if not math.isfinite(float(field)):
                return f"got the non-finite value {field!r}"
        except ValueError:
            return f"got {field!r}, not a number"
    return None


def _shown(line: str, limit: int = 80) -> str:
    line = line.strip()
    if not line:
        return "an empty line"
    return repr(line if len(line) <= limit else line[:limit] + "...")


def write_skeleton(path, frames, body_ids=None, line_ending: str = "\n",
                   significant_digits: int | None = None) -> None:
    """Write a ``.skeleton`` file in NTU's exact layout.

    ``frames``: a sequence over time of arrays (bodies, 25, 3) of x y z in metres (camera space),
    or (bodies, 25, 12) with every joint field; a frame may hold 0 bodies. ``body_ids``: per frame,
    one integer per body (default: a fixed 64-bit id per slot, as Kinect's tracking ids look).
    Fields not given are derived as the Kinect SDK would report them for a tracked body. Numbers
    are written exactly (shortest round-trip text) unless ``significant_digits`` is given (the
    dataset's files have 7).
    """
    if line_ending not in ("\n", "\r\n"):
        raise ValueError(f"line_ending must be '\\n' or '\\r\\n', got {line_ending!r}")
    out = [str(len(frames))]
    for frame_index, bodies in enumerate(frames):
        bodies = np.asarray(bodies, dtype=np.float64)
        if bodies.size == 0:
            bodies = bodies.reshape(0, NUM_JOINTS, 3)
        if bodies.ndim != 3 or bodies.shape[1:] not in ((NUM_JOINTS, 3),
                                                        (NUM_JOINTS, len(JOINT_FIELDS))):
            raise ValueError(f"frame {frame_index}: bodies must be (B, 25, 3) or (B, 25, 12), "
                             f"got {tuple(bodies.shape)}")
        ids = (body_ids[frame_index] if body_ids is not None
               else [72057594037931101 + slot for slot in range(len(bodies))])
        if len(ids) != len(bodies):
            raise ValueError(f"frame {frame_index}: {len(bodies)} bodies but {len(ids)} body ids")
        out.append(str(len(bodies)))
        for body_id, joints in zip(ids, bodies):
            out.append(f"{int(body_id)} 0 1 1 1 1 0 {0.01:.8f} {-0.02:.8f} 2")
            out.append(str(NUM_JOINTS))
            full = joints if joints.shape[-1] == len(JOINT_FIELDS) else _kinect_fields(joints)
            out.extend(" ".join(_number(value, significant_digits) for value in row)
                       for row in full)
    Path(path).write_bytes((line_ending.join(out) + line_ending).encode("ascii"))


def _kinect_fields(xyz: np.ndarray) -> np.ndarray:
    """(25, 12) joint lines for (25, 3) camera-space points: Kinect v2 depth (512x424) and colour
    (1920x1080) projections, identity orientation, tracked."""
    depth = np.maximum(xyz[:, 2:3], 1e-3)
    depth_xy = np.array([256.0, 212.0]) + np.array([365.0, -365.0]) * xyz[:, :2] / depth
    color_xy = np.array([960.0, 540.0]) + np.array([1060.0, -1060.0]) * xyz[:, :2] / depth
    orientation = np.tile([1.0, 0.0, 0.0, 0.0], (len(xyz), 1))
    tracked = np.full((len(xyz), 1), 2.0)
    return np.concatenate([xyz, depth_xy, color_xy, orientation, tracked], axis=1)


def _number(value: float, significant_digits: int | None) -> str:
    value = float(value)
    if value.is_integer():
        return str(int(value))  # integral fields (trackingState) as the dataset writes them
    return repr(value) if significant_digits is None else f"{value:.{significant_digits}g}"
