"""Adopting a record dir without a manifest (the reference's layout): every record is checked,
a manifest is written, and an experiment trains on it."""
import glob
import os
import subprocess
import sys

import pytest

from tpuflow.inputs import adopt, records
from tpuflow.prep import frames

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
                           f"--tfrec_dir={ref}", "--spec=single"], capture_output=True, text=True, env=ENV)
    assert done.returncode == 0, done.stderr
    manifest = records.read_manifest(ref)
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
