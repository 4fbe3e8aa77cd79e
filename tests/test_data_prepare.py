"""``sttr prepare`` end to end on generated raw folders."""
import pickle

import numpy as np
import pytest

import sttr_fast.data.prepare as prepare_module
from sttr_fast.cli import main
from sttr_fast.data.body_selection import select_bodies
from sttr_fast.data.normalisation import pre_normalise
from sttr_fast.data.ntu_samples import official_missing_samples, parse_sample_name
from sttr_fast.data.skeleton_file import read_skeleton
from sttr_fast.data.synthetic import ntu_names, write_raw_dataset

MAX_FRAMES = 48  # above the generated lengths, so every sample is loop-padded
ON_MISSING_LIST = "S001C002P005R002A008"  # in the official NTU-60 list


@pytest.fixture(scope="module")
def raw_ntu60(tmp_path_factory):
    """22 generated files over both cameras and subject groups, one on the official missing list,
    one truncated, one longer than MAX_FRAMES, one stray file."""
    directory = tmp_path_factory.mktemp("raw60")
    names = ntu_names(20, seed=1) + [ON_MISSING_LIST]
    write_raw_dataset(directory, names, seed=3, frames=(14, 30))
    write_raw_dataset(directory, ["S002C001P003R001A010"], seed=4, frames=(60, 60))
    broken = directory / f"{names[4]}.skeleton"
    text = broken.read_text().split("\n")
    broken.write_text("\n".join(text[:100]) + "\n")
    (directory / "README.txt").write_text("not a skeleton")
    return directory, broken.name


def run_prepare(raw, out, *extra):
    return main(["prepare", "--dataset", "ntu60", "--raw-dir", str(raw), "--out-dir", str(out),
                 "--max-frames", str(MAX_FRAMES), "--workers", "1", *extra])


def load_split(out, benchmark, split):
    data = np.load(out / benchmark / f"{split}_data_joint.npy", mmap_mode="r")
    with open(out / benchmark / f"{split}_label.pkl", "rb") as file:
        names, labels = pickle.load(file)
    return data, names, labels


@pytest.fixture(scope="module")
def prepared(raw_ntu60, tmp_path_factory):
    raw, broken = raw_ntu60
    out = tmp_path_factory.mktemp("out60")
    code = run_prepare(raw, out)
    return raw, broken, out, code


def test_splits_labels_and_counts(prepared, capsys):
    raw, broken, out, code = prepared
    assert code == 1  # one file failed: reported, the rest written
    expected = sorted(p.name for p in raw.glob("*.skeleton")
                      if p.stem not in official_missing_samples("ntu60") and p.name != broken)
    assert ON_MISSING_LIST + ".skeleton" not in expected
    for benchmark in ("xsub", "xview"):
        seen = []
        for split in ("train", "val"):
            data, names, labels = load_split(out, benchmark, split)
            assert data.dtype == np.float32 and data.shape == (len(names), 3, MAX_FRAMES, 25, 2)
            assert names == sorted(names)
            assert labels == [parse_sample_name(name).action - 1 for name in names]
            assert all(parse_sample_name(n).split("ntu60", benchmark) == split for n in names)
            seen += names
        assert sorted(seen) == expected
    assert not (out / ".prepare_state.json").exists()
    assert not list(out.rglob("*.partial"))


def test_broken_file_is_reported_in_the_log(prepared):
    _, broken, out, _ = prepared
    log = (out / "prepare.log").read_text()
    assert f"error: {broken}: line 101: expected" in log
    assert "but the file ends" in log


def test_cut_is_reported(prepared):
    log = (prepared[2] / "prepare.log").read_text()
    assert "warning: S002C001P003R001A010.skeleton: 60 frames, cut to the first 48" in log


def test_console_reports_counts_and_failures(raw_ntu60, tmp_path, capsys):
    raw, broken = raw_ntu60
    run_prepare(raw, tmp_path / "out", "--benchmark", "xview")
    captured = capsys.readouterr()
    assert f"error: {broken}: line 101" in captured.err
    assert "xview  train" in captured.out and "xview  val" in captured.out
    assert "1 file(s) could not be parsed" in captured.out
    assert not (tmp_path / "out" / "xsub").exists()


def test_samples_equal_the_per_file_pipeline(prepared):
    raw, _, out, _ = prepared
    data, names, _ = load_split(out, "xview", "train")
    for row, name in zip(data, names):
        joints = select_bodies(read_skeleton(raw / name), max_frames=MAX_FRAMES).joints
        np.testing.assert_array_equal(row, pre_normalise(joints))


def test_normalisation_properties_of_the_written_samples(prepared):
    raw, _, out, _ = prepared
    for split in ("train", "val"):
        data, names, _ = load_split(out, "xsub", split)
        for row, name in zip(data, names):
            persons = np.asarray(row).transpose(3, 1, 2, 0)  # M, T, V, C
            assert not persons[0, :, 1].any()  # spine mid centred in every frame
            spine = persons[0, 0, 1] - persons[0, 0, 0]
            shoulders = persons[0, 0, 8] - persons[0, 0, 4]
            assert shoulders[0] > 0
            np.testing.assert_allclose(shoulders[1:], 0, atol=1e-5)
            # the rotation onto +x turns the spine away from +z by the shoulders' tilt only
            assert spine[2] / np.linalg.norm(spine) > np.cos(np.deg2rad(20))
            length = read_skeleton(raw / name).num_frames
            if length < MAX_FRAMES:  # loop padding: the tail repeats the sequence
                np.testing.assert_array_equal(persons[:, length:2 * length],
                                              persons[:, :min(length, MAX_FRAMES - length)])


def test_two_workers_write_the_same_files(raw_ntu60, prepared, tmp_path):
    raw, _, out, _ = prepared
    run_prepare(raw, tmp_path / "parallel", "--workers", "2")
    for split in ("train", "val"):
        a, names_a, _ = load_split(out, "xsub", split)
        b, names_b, _ = load_split(tmp_path / "parallel", "xsub", split)
        assert names_a == names_b
        np.testing.assert_array_equal(a, b)


def test_resume_after_interruption_gives_the_same_files(raw_ntu60, prepared, tmp_path,
                                                        monkeypatch):
    raw, _, out, _ = prepared
    calls = []
    real = prepare_module.process_file

    def interrupted(path, **options):
        calls.append(path)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real(path, **options)

    monkeypatch.setattr(prepare_module, "process_file", interrupted)
    assert run_prepare(raw, tmp_path / "resumed") == 130
    assert (tmp_path / "resumed" / ".prepare_state.json").exists()
    monkeypatch.setattr(prepare_module, "process_file", real)
    calls.clear()
    assert run_prepare(raw, tmp_path / "resumed") == 1
    for benchmark in ("xsub", "xview"):
        for split in ("train", "val"):
            a, names_a, labels_a = load_split(out, benchmark, split)
            b, names_b, labels_b = load_split(tmp_path / "resumed", benchmark, split)
            assert (names_a, labels_a) == (names_b, labels_b)
            np.testing.assert_array_equal(a, b)
    assert "resuming after 8 of" in (tmp_path / "resumed" / "prepare.log").read_text()


def test_existing_outputs_need_overwrite(raw_ntu60, prepared, capsys):
    raw, _, out, _ = prepared
    assert run_prepare(raw, out) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    stamp = (out / "xsub" / "train_label.pkl").stat().st_mtime_ns
    assert run_prepare(raw, out, "--overwrite") == 1
    assert (out / "xsub" / "train_label.pkl").stat().st_mtime_ns != stamp


def test_user_missing_list_with_prose_header(raw_ntu60, tmp_path):
    raw, broken = raw_ntu60
    skipped = sorted(p.stem for p in raw.glob("*.skeleton"))[:3]
    listing = tmp_path / "missing.txt"
    listing.write_text("The following samples have missing skeletons:\nS001 is a setup\n\n"
                       + "\r\n".join(skipped) + "\r\n")
    run_prepare(raw, tmp_path / "out", "--missing", str(listing))
    names = sum((load_split(tmp_path / "out", "xsub", split)[1] for split in ("train", "val")), [])
    assert not {f"{s}.skeleton" for s in skipped} & set(names)
    assert ON_MISSING_LIST + ".skeleton" in names  # the official list no longer applies
    broken_counted = broken.removesuffix(".skeleton") not in skipped
    assert len(names) == len(list(raw.glob("*.skeleton"))) - len(skipped) - broken_counted


def test_no_normalise_writes_camera_coordinates(raw_ntu60, tmp_path):
    raw, _ = raw_ntu60
    run_prepare(raw, tmp_path / "out", "--no-normalise", "--benchmark", "xsub")
    data, names, _ = load_split(tmp_path / "out", "xsub", "train")
    for row, name in zip(data, names):
        np.testing.assert_array_equal(
            row, select_bodies(read_skeleton(raw / name), max_frames=MAX_FRAMES).joints)


def test_ntu120_benchmarks(tmp_path):
    raw = tmp_path / "raw120"
    names = ntu_names(16, seed=5, last_setup=32, last_action=120)
    write_raw_dataset(raw, names, seed=6, frames=(8, 12))
    code = main(["prepare", "--dataset", "ntu120", "--raw-dir", str(raw), "--out-dir",
                 str(tmp_path / "out"), "--max-frames", "16", "--workers", "1"])
    assert code == 0
    for benchmark in ("xsub", "xset"):
        seen = []
        for split in ("train", "val"):
            _, split_names, labels = load_split(tmp_path / "out", benchmark, split)
            assert all(parse_sample_name(n).split("ntu120", benchmark) == split
                       for n in split_names)
            assert labels == [parse_sample_name(n).action - 1 for n in split_names]
            seen += split_names
        assert sorted(seen) == sorted(f"{n}.skeleton" for n in names)


def test_ntu60_ignores_ntu120_only_files(tmp_path, capsys):
    raw = tmp_path / "raw"
    write_raw_dataset(raw, ["S001C001P001R001A001", "S018C001P001R001A001",
                            "S001C001P001R001A061"], frames=(8, 8))
    main(["prepare", "--dataset", "ntu60", "--raw-dir", str(raw), "--out-dir",
          str(tmp_path / "out"), "--max-frames", "8", "--workers", "1"])
    assert "2 NTU files outside ntu60 ignored" in capsys.readouterr().out
    names = load_split(tmp_path / "out", "xview", "val")[1]
    assert names == ["S001C001P001R001A001.skeleton"]


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["prepare", "--dataset", "ntu60", "--raw-dir", str(tmp_path / "absent"),
                 "--out-dir", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["prepare", "--dataset", "ntu60", "--raw-dir", str(tmp_path / "empty"),
                 "--out-dir", str(tmp_path / "out")]) == 2
    assert "no ntu60 .skeleton files" in capsys.readouterr().err
    assert main(["prepare", "--dataset", "ntu60", "--raw-dir", str(tmp_path / "empty"),
                 "--out-dir", str(tmp_path / "out"), "--benchmark", "xset"]) == 2
    assert "ntu60 has no benchmark ['xset']" in capsys.readouterr().err
    assert main(["prepare", "--dataset", "ntu60", "--raw-dir", str(tmp_path / "empty"),
                 "--out-dir", str(tmp_path / "out"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
