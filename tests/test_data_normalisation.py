"""Body selection and pre-normalisation against straightforward loop implementations of
docs/data.md §3-§4."""
import math

import numpy as np
import pytest

from sttr_fast.data.body_selection import select_bodies
from sttr_fast.data.normalisation import pre_normalise, rotation_onto
from sttr_fast.data.skeleton_file import read_skeleton, write_skeleton


# ---- reference implementations: loops over samples, persons, frames and joints -------------------

def reference_rotation(axis, angle):
    """Euler-Rodrigues: right-handed rotation about ``axis`` by ``angle``."""
    if np.abs(axis).sum() < 1e-6 or abs(angle) < 1e-6:
        return np.eye(3)
    axis = np.asarray(axis, dtype=np.float64) / math.sqrt(np.dot(axis, axis))
    a = math.cos(angle / 2.0)
    b, c, d = -axis * math.sin(angle / 2.0)
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c + a * d), 2 * (b * d - a * c)],
                     [2 * (b * c - a * d), a * a + c * c - b * b - d * d, 2 * (c * d + a * b)],
                     [2 * (b * d + a * c), 2 * (c * d - a * b), a * a + d * d - b * b - c * c]])


def reference_angle(v1, v2):
    if np.abs(v1).sum() < 1e-6 or np.abs(v2).sum() < 1e-6:
        return 0.0
    v1 = np.asarray(v1, np.float64) / np.linalg.norm(v1)
    v2 = np.asarray(v2, np.float64) / np.linalg.norm(v2)
    return float(np.arccos(np.clip(np.dot(v1, v2), -1.0, 1.0)))


def is_empty(block):
    return not np.any(block != 0)


def reference_pre_normalise(sample):
    """(C, T, V, M) -> same, one joint at a time."""
    s = np.array(sample, dtype=np.float32).transpose(3, 1, 2, 0).copy()  # M, T, V, C
    persons, frames, joints, _ = s.shape
    if is_empty(s):
        return np.array(sample, dtype=np.float32)
    for p in range(persons):  # (a) loop padding
        if is_empty(s[p]):
            continue
        if is_empty(s[p, 0]):
            kept = [s[p, f].copy() for f in range(frames) if not is_empty(s[p, f])]
            s[p] = 0
            for f, frame in enumerate(kept):
                s[p, f] = frame
        for f in range(frames):
            if is_empty(s[p, f]) and is_empty(s[p, f:]):
                for g in range(f, frames):
                    s[p, g] = s[p, (g - f) % f]
                break
    centre = s[0, :, 1].copy()  # (b) centring
    for p in range(persons):
        for f in range(frames):
            for j in range(joints):
                if not is_empty(s[p, f, j]):
                    s[p, f, j] = s[p, f, j] - centre[f]
    for bottom, top, target in ((0, 1, (0, 0, 1)), (4, 8, (1, 0, 0))):  # (c), (d)
        vector = s[0, 0, top].astype(np.float64) - s[0, 0, bottom]
        matrix = reference_rotation(np.cross(vector, target), reference_angle(vector, target))
        for p in range(persons):
            for f in range(frames):
                if is_empty(s[p, f]):
                    continue
                for j in range(joints):
                    s[p, f, j] = matrix @ s[p, f, j].astype(np.float64)
    return s.transpose(3, 1, 2, 0)


def reference_select(raw, max_frames, num_person=2):
    """2s-AGCN's read_xyz: slot m = m-th body of the frame (m < 4), rank slots by energy."""
    frames = min(raw.num_frames, max_frames)
    data = np.zeros((4, frames, 25, 3))
    body = 0
    for f, count in enumerate(raw.bodies_per_frame):
        for m in range(count):
            if m < 4 and f < frames:
                data[m, f] = raw.joints[body, :, :3]
            body += 1
    energy = []
    for slot in data:
        valid = slot[slot.sum(-1).sum(-1) != 0]
        energy.append(0.0 if len(valid) == 0 else
                      valid[:, :, 0].std() + valid[:, :, 1].std() + valid[:, :, 2].std())
    order = np.argsort(energy, kind="stable")[::-1][:num_person]
    out = np.zeros((3, max_frames, 25, num_person), np.float32)
    out[:, :frames] = data[order].transpose(3, 1, 2, 0)
    return out


# ---- random samples with the cases (a)-(d) distinguish ------------------------------------------

def random_person(rng, frames, length, leading_gap=0, middle_gap=None):
    person = np.zeros((frames, 25, 3), np.float32)
    base = rng.normal(size=(25, 3)) * 0.3 + rng.normal(size=3)
    drift = rng.normal(size=(length, 25, 3)) * 0.05
    person[leading_gap:leading_gap + length] = base + np.cumsum(drift, axis=0)
    if middle_gap is not None:
        person[middle_gap[0]:middle_gap[1]] = 0
    return person


def random_sample(rng, frames=40):
    persons = [random_person(rng, frames, int(rng.integers(5, frames - 8)),
                             leading_gap=int(rng.integers(0, 3)),
                             middle_gap=(3, 5) if rng.random() < 0.5 else None),
               random_person(rng, frames, int(rng.integers(3, frames - 5)),
                             leading_gap=int(rng.integers(0, 6)))]
    if rng.random() < 0.25:
        persons[1][:] = 0
    sample = np.stack(persons).transpose(3, 1, 2, 0)  # (3, T, 25, 2)
    absent = rng.random(sample.shape[1:3]) < 0.03  # joints Kinect lost in a frame
    sample[:, absent, 0] = 0
    return np.ascontiguousarray(sample)


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_equals_loop_reference(seed):
    sample = random_sample(np.random.default_rng(seed))
    expected = reference_pre_normalise(sample)
    actual = pre_normalise(sample)
    assert actual.dtype == np.float32 and actual.shape == sample.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6)
    assert np.array_equal(actual == 0, expected == 0)  # the same joints are absent


def test_all_zero_sample_and_person_are_left_alone():
    zero = np.zeros((3, 20, 25, 2), np.float32)
    np.testing.assert_array_equal(pre_normalise(zero), zero)
    sample = random_sample(np.random.default_rng(100))
    sample[..., 1] = 0
    assert not pre_normalise(sample)[..., 1].any()


def test_properties_after_normalisation():
    rng = np.random.default_rng(5)
    persons = [random_person(rng, 40, 25, leading_gap=2), random_person(rng, 40, 30)]
    sample = np.ascontiguousarray(np.stack(persons).transpose(3, 1, 2, 0))
    out = pre_normalise(sample)
    persons = out.transpose(3, 1, 2, 0)  # M, T, V, C
    # centred: person 0's spine mid is the origin in every frame, and every frame holds a body
    # (the tail is loop-padded)
    assert not persons[0, :, 1].any()
    assert persons[0].any(axis=(1, 2)).all()
    # shoulders of frame 0 along +x
    shoulders = persons[0, 0, 8] - persons[0, 0, 4]
    assert shoulders[0] > 0
    np.testing.assert_allclose(shoulders[1:], 0, atol=1e-5 * np.linalg.norm(shoulders))
    # lengths are preserved by the rotations
    before = sample.transpose(3, 1, 2, 0)
    first = np.flatnonzero(before[0].any(axis=(1, 2)))[0]
    np.testing.assert_allclose(np.linalg.norm(shoulders),
                               np.linalg.norm(before[0, first, 8] - before[0, first, 4]),
                               rtol=1e-5)


def test_spine_on_z_after_step_c():
    vector = np.array([0.3, -0.2, 0.5])
    rotated = rotation_onto(vector, np.array([0.0, 0.0, 1.0])) @ vector
    np.testing.assert_allclose(rotated, [0, 0, np.linalg.norm(vector)], atol=1e-12)


def test_antiparallel_vector_is_not_flipped():
    assert np.array_equal(rotation_onto(np.array([0.0, 0.0, -2.0]), np.array([0.0, 0.0, 1.0])),
                          np.eye(3))


def test_loop_padding_repeats_the_sequence():
    rng = np.random.default_rng(3)
    sample = np.zeros((3, 50, 25, 2), np.float32)
    sample[:, 2:14, :, 0] = rng.normal(size=(3, 12, 25)) + 1.0  # frames 0-1 empty, 12 frames
    out = pre_normalise(sample)
    for repeat in range(1, 50 // 12 + 1):
        end = min(12 * (repeat + 1), 50)
        np.testing.assert_array_equal(out[:, 12 * repeat:end], out[:, :end - 12 * repeat])
    assert out[:, :12].any(axis=(0, 2, 3)).all()


def test_middle_gap_stays_when_frame_zero_is_present():
    rng = np.random.default_rng(4)
    sample = np.zeros((3, 30, 25, 2), np.float32)
    sample[:, :20, :, 0] = rng.normal(size=(3, 20, 25)) + 1.0
    sample[:, 8:11, :, 0] = 0
    out = pre_normalise(sample)
    assert not out[:, 8:11].any()
    np.testing.assert_array_equal(out[:, 20:30], out[:, 0:10])


def test_pre_normalise_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"\(3, T, V>8, M\)"):
        pre_normalise(np.zeros((2, 3, 25, 3, 2)))


def test_body_selection_equals_reference_with_many_bodies(tmp_path):
    rng = np.random.default_rng(11)
    counts = [1, 2, 5, 0, 3, 6, 2, 0, 1, 4]
    scales = [0.1, 2.0, 0.5, 0.2, 0.05, 3.0]  # slot 5 is very active but beyond the 4 kept slots
    frames = [np.stack([rng.normal(size=(25, 3)) * scales[m] + (m, 0, 3) for m in range(count)])
              if count else np.zeros((0, 25, 3)) for count in counts]
    ids = [[int(x) for x in rng.integers(0, 2 ** 62, count)] for count in counts]  # ids ignored
    path = tmp_path / "many.skeleton"
    write_skeleton(path, frames, body_ids=ids)
    raw = read_skeleton(path)
    for max_frames in (20, 7):
        selected = select_bodies(raw, max_frames=max_frames)
        np.testing.assert_array_equal(selected.joints, reference_select(raw, max_frames))
        assert selected.was_cut == (max_frames < len(counts))
    joints = select_bodies(raw, max_frames=20).joints
    # slot 1 (scale 2) is the most active of the first four, slot 2 (scale 0.5) the next
    np.testing.assert_array_equal(joints[:, 1, :, 0], frames[1][1].T.astype(np.float32))
    np.testing.assert_array_equal(joints[:, 2, :, 1], frames[2][2].T.astype(np.float32))
