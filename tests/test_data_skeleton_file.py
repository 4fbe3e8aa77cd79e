"""The .skeleton parser on hand-written and generated files, and its errors on broken ones."""
import numpy as np
import pytest

from sttr_fast.data.skeleton_file import SkeletonParseError, read_skeleton, write_skeleton

BIG_BODY_ID = 72057594037931101  # above 2**53: a float would change it


def joint_line(x, y, z):
    return f"{x} {y} {z} 250.1 200.2 900.3 500.4 0.1 0.2 0.3 0.4 2"


def body_lines(body_id, origin):
    lines = [f"{body_id} 0 1 1 1 1 0 0.02764709 0.05745083 2", "25"]
    lines += [joint_line(origin + 0.01 * j, 0.5 - 0.02 * j, 3.0 + 0.001 * j) for j in range(25)]
    return lines


def hand_written_lines():
    """3 frames: one body; no body; two bodies (the second with the big id)."""
    return (["3", "1"] + body_lines(17, 0.1) + ["0", "2"] + body_lines(17, 0.2)
            + body_lines(BIG_BODY_ID, -0.5))


def test_hand_written_file(tmp_path):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text("\n".join(hand_written_lines()) + "\n")
    raw = read_skeleton(path)
    assert raw.num_frames == 3
    assert raw.bodies_per_frame.tolist() == [1, 0, 2]
    assert raw.body_ids.dtype == np.int64
    assert raw.body_ids.tolist() == [17, 17, BIG_BODY_ID]
    assert raw.body_frames().tolist() == [0, 2, 2]
    assert raw.body_slots().tolist() == [0, 0, 1]
    assert raw.joints.shape == (3, 25, 12)
    np.testing.assert_array_equal(raw.joints[2, 7, :3], [-0.5 + 0.07, 0.5 - 0.14, 3.007])
    np.testing.assert_array_equal(raw.joints[0, :, 11], 2)
    np.testing.assert_array_equal(raw.body_fields[1], [0, 1, 1, 1, 1, 0, 0.02764709, 0.05745083, 2])


def test_crlf_reads_like_lf(tmp_path):
    lf, crlf = tmp_path / "lf.skeleton", tmp_path / "crlf.skeleton"
    lf.write_bytes(("\n".join(hand_written_lines()) + "\n").encode())
    crlf.write_bytes(("\r\n".join(hand_written_lines()) + "\r\n").encode())
    a, b = read_skeleton(lf), read_skeleton(crlf)
    np.testing.assert_array_equal(a.joints, b.joints)
    np.testing.assert_array_equal(a.body_ids, b.body_ids)
    np.testing.assert_array_equal(a.bodies_per_frame, b.bodies_per_frame)


@pytest.mark.parametrize("line_ending", ["\n", "\r\n"])
def test_generated_file_round_trip_with_empty_frames_and_six_bodies(tmp_path, line_ending):
    rng = np.random.default_rng(7)
    counts = [0, 1, 3, 0, 6, 2, 0]
    frames = [rng.normal(size=(count, 25, 3)).astype(np.float32) for count in counts]
    ids = [list(rng.integers(0, 2 ** 63 - 1, size=count)) for count in counts]
    path = tmp_path / "generated.skeleton"
    write_skeleton(path, frames, body_ids=ids, line_ending=line_ending)
    raw = read_skeleton(path)
    assert raw.bodies_per_frame.tolist() == counts
    assert raw.body_ids.tolist() == [int(i) for frame_ids in ids for i in frame_ids]
    np.testing.assert_array_equal(raw.joints[..., :3], np.concatenate(frames).astype(np.float64))
    assert raw.body_slots().tolist() == [s for count in counts for s in range(count)]
    assert raw.body_frames().tolist() == [f for f, count in enumerate(counts) for _ in range(count)]


def test_file_of_zero_frames(tmp_path):
    path = tmp_path / "empty.skeleton"
    path.write_text("0\n")
    raw = read_skeleton(path)
    assert raw.num_frames == 0 and raw.joints.shape == (0, 25, 12)


def assert_parse_error(path, line_number, *fragments):
    with pytest.raises(SkeletonParseError) as caught:
        read_skeleton(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"line {line_number}:" in message
    assert caught.value.line_number == line_number
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("kept_lines", [0, 1, 2, 3, 5, 27, 28, 29, 56, 57, 60])
def test_truncated_file_names_the_line_after_the_end(tmp_path, kept_lines):
    lines = hand_written_lines()
    path = tmp_path / "truncated.skeleton"
    path.write_text("\n".join(lines[:kept_lines]) + ("\n" if kept_lines else ""))
    assert_parse_error(path, kept_lines + 1, "but the file ends")


def test_truncated_in_the_middle_of_the_last_joint_line(tmp_path):
    lines = hand_written_lines()
    path = tmp_path / "cut.skeleton"
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:12])
    assert_parse_error(path, len(lines), "joint 25 of 25", "body 2 of 2 in frame 3 of 3",
                       "fields")


@pytest.mark.parametrize("line_index,replacement,fragments", [
    (0, "three", ["frame count"]),
    (1, "1.0", ["body count of frame 1"]),
    (2, "7.2057594037931101e16 0 1 1 1 1 0 0.02 0.05 2", ["integer bodyID"]),
    (2, "17 0 1 1 1 1 0 0.02 0.05", ["10 fields", "got 9 fields"]),
    (3, "24", ["joint count 25"]),
    (4, "0.1 0.2 0.3 1 2 3 4 5 6 7 8", ["joint 1 of 25", "got 11 fields"]),
    (9, "0.1 0.2 zero 1 2 3 4 5 6 7 8 2", ["joint 6 of 25", "'zero', not a number"]),
    (9, "0.1 nan 0.3 1 2 3 4 5 6 7 8 2", ["joint 6 of 25", "non-finite"]),
    (29, "\x00\x9f\xff garbage", ["body count of frame 2"]),
    (29, "", ["body count of frame 2", "an empty line"]),
])
def test_garbled_line_is_named(tmp_path, line_index, replacement, fragments):
    lines = hand_written_lines()
    lines[line_index] = replacement
    path = tmp_path / "garbled.skeleton"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    assert_parse_error(path, line_index + 1, *fragments)


def test_content_after_the_last_frame_is_an_error(tmp_path):
    lines = hand_written_lines() + ["1"]
    path = tmp_path / "extra.skeleton"
    path.write_text("\n".join(lines) + "\n\n")
    assert_parse_error(path, len(lines), "end of the file after 3 frames")


def test_binary_garbage(tmp_path):
    path = tmp_path / "binary.skeleton"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    with pytest.raises(SkeletonParseError) as caught:
        read_skeleton(path)
    assert str(path) in str(caught.value) and caught.value.line_number >= 1


def test_missing_file(tmp_path):
    with pytest.raises(SkeletonParseError, match="cannot be read"):
        read_skeleton(tmp_path / "absent.skeleton")


def test_writer_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(B, 25, 3\)"):
        write_skeleton(tmp_path / "x.skeleton", [np.zeros((1, 24, 3))])
    with pytest.raises(ValueError, match="body ids"):
        write_skeleton(tmp_path / "x.skeleton", [np.zeros((2, 25, 3))], body_ids=[[1]])
