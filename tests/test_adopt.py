"""Adopting a record dir without a manifest (the reference's layout): every record is checked,
a manifest is written, and an experiment trains on it."""
import glob
import os
import subprocess
import sys

import pytest

from tpuflow.inputs import adopt, records
from tpuflow.prep import frames, shard_names

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.path.join(ROOT, "lib")}


def _reference_layout(single_dir, dst) -> str:
    """The records of `single_dir` as the reference lays them out: one `fold.<k>.tfrecord` per
    fold, `test.tfrecord`, no manifest, a name without the kind."""
    os.makedirs(dst)
    for prefix in [f"fold.{k}" for k in range(5)] + ["test"]:
        with open(os.path.join(dst, f"{prefix}.tfrecord"), "wb") as out:
            for shard in sorted(glob.glob(os.path.join(single_dir, f"{prefix}.tfrecord-*"))):
                out.write(open(shard, "rb").read())  # TFRecord files concatenate
    return str(dst)


def test_adopted_reference_dir_trains(single_dir, cv_dir, tmp_path):
    ref = _reference_layout(single_dir, tmp_path / "data-tfrec-frames001-step001")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        records.read_manifest(ref)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "adopt_records.py"),
                           f"--tfrec_dir={ref}", "--spec=single", f"--data_dir={cv_dir}"],
                          capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    manifest = records.read_manifest(ref)
    assert set(manifest["sources"]) == {"train_cv.csv", "test_cv.csv"}  # runs compare them with their --data_dir's
    original = records.read_manifest(single_dir)
    assert manifest["counts"] == original["counts"] and manifest["kind"] == "single"
    assert manifest["image_size"] == original["image_size"] and manifest["n_folds"] == 5
    assert set(manifest["sha256"]) == {f"fold.{k}.tfrecord" for k in range(5)} | {"test.tfrecord"}
    out = tmp_path / "run"
    train = subprocess.run([sys.executable, os.path.join(HERE, "tiny_experiment.py"), "--job=train_val",
                            "--quick", f"--data_dir={cv_dir}", f"--data_tfrec_dir={ref}",
                            f"--output_dir={out}", "--n_folds=1", "--tta_number=0"],
                           capture_output=True, text=True, env=ENV)
    assert train.returncode == 0, train.stderr[-3000:]
    assert glob.glob(str(out / "preds" / "*val_fold_0*"))


def test_a_damaged_record_is_named_and_no_manifest_written(single_dir, tmp_path):
    ref = _reference_layout(single_dir, tmp_path / "ref")
    path = os.path.join(ref, "fold.3.tfrecord")
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match=r"fold.3.tfrecord: record \d+: damaged"):
        adopt.adopt_dataset(ref, frames.DatasetSpec("single"), log=lambda _: None)
    assert not os.path.exists(os.path.join(ref, "manifest.json"))


def test_wrong_kind_and_existing_manifest_are_refused(single_dir, tmp_path):
    ref = _reference_layout(single_dir, tmp_path / "ref")
    with pytest.raises(ValueError, match=r"holds 1 image\(s\); a sequence:n6:s1 record holds 6"):
        adopt.adopt_dataset(ref, frames.DatasetSpec.parse("sequence:n6:s1"), log=lambda _: None)
    with pytest.raises(ValueError, match="cannot tell the kind"):
        adopt.adopt_dataset(ref, log=lambda _: None)
    with pytest.raises(ValueError, match="already has a manifest"):
        adopt.adopt_dataset(single_dir, log=lambda _: None)


def _copy_as(src_dir, dst, names: dict[str, str]) -> str:
    """The reference layout of `src_dir` in `dst`, with files renamed: {name in dst: name in src}."""
    staged = _reference_layout(src_dir, str(dst) + ".staged")
    os.makedirs(dst)
    for prefix in [f"fold.{k}" for k in range(5)] + ["test"]:
        name = f"{prefix}.tfrecord"
        with open(os.path.join(dst, name), "wb") as out:
            out.write(open(os.path.join(staged, names.get(name, name)), "rb").read())
    return str(dst)


def test_the_references_dir_names_give_the_spec_and_the_csvs_are_checked(single_dir, cv_dir, tmp_path):
    assert shard_names.parse_reference_dir("/data/data-tfrec-1d/") == ("single", 1, 1)
    assert shard_names.parse_reference_dir("data-tfrec-frames024-step001-lstm") == ("sequence", 24, 1)
    assert shard_names.parse_reference_dir("data-tfrec-frames003-step005-ind") == ("stacked", 3, 5)
    assert shard_names.parse_reference_dir("data-tfrec-frames003-step010-mean") == ("mean", 3, 10)
    lstm = adopt.spec_from_dir_name("x/data-tfrec-frames048-step001-lstm")
    assert lstm == frames.DatasetSpec.parse("sequence:n48:s1")
    with pytest.raises(ValueError, match="pass --spec"):
        adopt.spec_from_dir_name("data-tfrec-frames005-step002-ind")  # a stacked image holds 3 frames
    ref = _reference_layout(single_dir, tmp_path / "data-tfrec-1d")
    manifest = adopt.adopt_dataset(ref, log=lambda _: None, data_dir=cv_dir)  # kind from the name
    assert manifest["spec"] == "single" and set(manifest["sources"]) == {"train_cv.csv", "test_cv.csv"}


@pytest.mark.parametrize("names,expected", [
    ({"fold.0.tfrecord": "fold.1.tfrecord", "fold.1.tfrecord": "fold.0.tfrecord"},
     r"fold.0.tfrecord: example \w+ is in fold 1 of train_cv.csv, not fold 0 \(folds swapped"),
    ({"fold.4.tfrecord": "test.tfrecord", "test.tfrecord": "fold.4.tfrecord"},
     r"fold.4.tfrecord: example \w+ is a test example \(test_cv.csv\): test records posing as fold 4"),
    ({"fold.1.tfrecord": "fold.0.tfrecord"}, r"example \w+ is in both .*fold.0.tfrecord and .*fold.1.tfrecord"),
], ids=["folds-swapped", "test-as-fold", "in-two-folds"])
def test_records_that_do_not_match_the_csvs_are_refused_at_adopt_time(names, expected, single_dir, cv_dir,
                                                                      tmp_path):
    ref = _copy_as(single_dir, tmp_path / "data-tfrec-1d", names)
    with pytest.raises(ValueError, match=expected):
        adopt.adopt_dataset(ref, log=lambda _: None, data_dir=cv_dir)
    assert not os.path.exists(os.path.join(ref, "manifest.json"))


def test_a_spec_that_does_not_match_the_records_frames_is_refused_naming_the_one_that_does(history_dirs, cv_dir,
                                                                                           tmp_path):
    built = history_dirs["stacked"]  # stacked:s2
    wrong = _reference_layout(built, tmp_path / "data-tfrec-frames003-step005-ind")  # the name says step 5
    with pytest.raises(ValueError, match=r"fold.0.tfrecord: example \w+ and \d+ other\(s\) sampled are not "
                                         r"stacked:s5's frames of the data dir .* pass --spec=stacked:s2"):
        adopt.adopt_dataset(wrong, log=lambda _: None, data_dir=cv_dir)
    right = _reference_layout(built, tmp_path / "data-tfrec-frames003-step002-ind")
    assert adopt.adopt_dataset(right, log=lambda _: None, data_dir=cv_dir)["spec"] == "stacked:s2"
