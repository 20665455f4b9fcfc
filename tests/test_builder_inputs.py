"""The builder on the reference's own CSVs, bad labels and escaping paths, edited frames,
a SIGKILLed build, mean rounding and build_all.sh's flags."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tpuflow.inputs import records
from tpuflow.prep import build_plan, builder, frames

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE = [frames.DatasetSpec("single")]
ENV = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}


def _shards(root) -> dict:
    return {os.path.relpath(p, root): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(root, "*", "*.tfrecord-*")))}


def _temporaries(root) -> list:
    return [p for p in glob.glob(os.path.join(root, "**", ".tmp-*"), recursive=True)]


def _copy(cv_dir, dst) -> str:
    shutil.copytree(cv_dir, dst, ignore=shutil.ignore_patterns("data-tfrec-*"))
    return str(dst)


def _cli(*args, cwd=None, **kwargs):
    return subprocess.run([sys.executable, os.path.join(ROOT, "data_prep", "create_tfrecords.py"), *args],
                          capture_output=True, text=True, env=ENV, cwd=cwd, **kwargs)


def test_reference_style_csvs_build_from_any_working_directory(cv_dir, tmp_path):
    """Rows shuffled, image_path relative, test_cv without fold_id/labels/frame_id: the same
    records as from our own CSVs, built from another working directory."""
    ours = tmp_path / "ours"
    builder.build_datasets(cv_dir, str(ours), SINGLE, shards_per_fold=2, workers=1, log=lambda _: None)
    data = _copy(cv_dir, tmp_path / "work" / "data")
    train = pd.read_csv(os.path.join(data, "train_cv.csv"))
    assert train["image_path"].str.startswith("train/").all()
    train.sample(frac=1.0, random_state=34).to_csv(os.path.join(data, "train_cv.csv"), index=False)
    test = pd.read_csv(os.path.join(data, "test_cv.csv"))
    test.drop(columns=["fold_id", "wind_speed", "wind_speed_le", "frame_id"]).to_csv(
        os.path.join(data, "test_cv.csv"), index=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _cli("--data_dir=../work/data", "--out_dir=../work/out", "--specs=single", "--workers=1",
                "--shards_per_fold=2", cwd=str(elsewhere))
    assert done.returncode == 0, done.stderr
    assert _shards(str(tmp_path / "work" / "out")) == _shards(str(ours))


def _set_cell(data, name, row, column, value):
    path = os.path.join(data, name)
    df = pd.read_csv(path, dtype=str)
    df.loc[row, column] = value
    df.to_csv(path, index=False)


@pytest.mark.parametrize("value, why", [
    ("110.7", "wind_speed '110.7' is not a whole number"),
    ("-30", "wind_speed '-30' is outside the plausible range 0..250"),
    ("fast", "wind_speed 'fast' is not a number"),
    ("", "wind_speed is empty"),
])
def test_bad_wind_speed_in_train_cv_names_file_row_and_value(cv_dir, tmp_path, value, why):
    data = _copy(cv_dir, tmp_path / "data")
    _set_cell(data, "train_cv.csv", 4, "wind_speed", value)
    with pytest.raises(ValueError, match=rf"train_cv.csv: row 6: {why}"):
        builder.build_datasets(data, str(tmp_path / "out"), SINGLE, workers=1, log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_non_numeric_relative_time_in_test_cv_names_file_and_row(cv_dir, tmp_path):
    data = _copy(cv_dir, tmp_path / "data")
    _set_cell(data, "test_cv.csv", 0, "relative_time", "later")
    with pytest.raises(ValueError, match=r"test_cv.csv: row 2: relative_time 'later' is not a number"):
        builder.build_datasets(data, str(tmp_path / "out"), SINGLE, workers=1, log=lambda _: None)


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
def test_frames_outside_the_data_dir_are_refused(cv_dir, tmp_path, how):
    data = _copy(cv_dir, tmp_path / "data")
    outside = tmp_path / "private.jpg"
    Image.new("L", (24, 24)).save(outside, format="JPEG")
    if how == "dotdot":
        _set_cell(data, "train_cv.csv", 3, "image_path", "train/../../private.jpg")
    else:
        _set_cell(data, "train_cv.csv", 3, "image_path", str(outside))
    with pytest.raises(ValueError, match=r"train_cv.csv: row 5: image_path .* resolves to "
                                         r".*private.jpg, outside the data dir"):
        builder.build_datasets(data, str(tmp_path / "out"), SINGLE, workers=1, log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_an_edited_frame_rebuilds_the_datasets_built_from_it_only(cv_dir, tmp_path):
    edited, other = _copy(cv_dir, tmp_path / "edited"), _copy(cv_dir, tmp_path / "other")
    specs = frames.parse_specs(["single", "stacked:s2"])
    for data in (edited, other):
        builder.build_datasets(data, data, specs, shards_per_fold=2, workers=1, log=lambda _: None)
    before = _shards(edited)
    frame = os.path.join(edited, pd.read_csv(os.path.join(edited, "train_cv.csv"))["image_path"].iloc[7])
    pixels = np.asarray(Image.open(frame))
    Image.fromarray(255 - pixels).save(frame, format="JPEG", quality=90)
    logs = {}
    for data in (edited, other):
        logs[data] = []
        builder.build_datasets(data, data, specs, shards_per_fold=2, workers=1, log=logs[data].append)
    assert sum("inputs changed since the build (frames); rebuilding" in line for line in logs[edited]) == 2
    assert [line for line in logs[other] if "up to date" in line] == logs[other] and len(logs[other]) == 2
    after = _shards(edited)
    changed = {name for name in before if before[name] != after[name]}
    assert changed and all(name.startswith(tuple(s.name for s in specs)) for name in changed)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.split("/")[2]))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_sigkilled_build_leaves_no_process_and_rerun_gives_identical_shards(cv_dir, tmp_path):
    args = ["--specs=single,stacked:s2,mean:s3,sequence:n6:s2", "--shards_per_fold=2", "--chunk_frames=2"]
    clean = tmp_path / "clean"
    assert _cli(f"--data_dir={cv_dir}", f"--out_dir={clean}", "--workers=1", *args).returncode == 0
    out = tmp_path / "killed"
    build = subprocess.Popen([sys.executable, os.path.join(ROOT, "data_prep", "create_tfrecords.py"),
                              f"--data_dir={cv_dir}", f"--out_dir={out}", "--workers=2", *args],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    deadline = time.time() + 60
    while time.time() < deadline and build.poll() is None and len(workers) < 2:
        workers = _children(build.pid)
        time.sleep(0.01)
    assert build.poll() is None and len(workers) >= 2, "the build ended before its workers were seen"
    os.kill(build.pid, signal.SIGKILL)
    build.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.05)
    survivors = [p for p in workers if _alive(p)]
    for pid in survivors:  # don't leave them to the machine if the check fails
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "workers outlived the killed build"
    # What a kill during a shard's rename leaves: a partial temporary beside the shards.
    os.makedirs(out / SINGLE[0].name, exist_ok=True)
    (out / SINGLE[0].name / ".tmp-abc123-fold.0.tfrecord-00000-of-00002").write_bytes(b"partial")
    again = _cli(f"--data_dir={cv_dir}", f"--out_dir={out}", "--workers=2", *args)
    assert again.returncode == 0, again.stderr
    assert _shards(str(out)) == _shards(str(clean)) and not _temporaries(str(out))


def test_mean_rounding_truncate_is_the_references_uint8_of_the_mean(cv_dir, tmp_path):
    spec = frames.DatasetSpec.parse("mean:s2")
    manifest, = builder.build_datasets(cv_dir, str(tmp_path), [spec], encoding="png", workers=1,
                                       mean_rounding="truncate", log=lambda _: None)
    assert manifest["mean_rounding"] == "truncate"
    table = build_plan.load_frame_table(cv_dir)
    pixels = {storm: [np.asarray(Image.open(p), np.float64) for p in group["image_path"]]
              for storm, group in table.groupby("storm_id")}
    import tensorflow as tf
    ds = tf.data.TFRecordDataset(records.record_files(os.path.join(tmp_path, spec.name), [0]))
    for serialized in ds:
        ex = records.parse_common(serialized)
        image = tf.io.decode_png(ex["image"][0]).numpy()
        row = table[table["image_id"] == ex["image_id"].numpy().decode()].iloc[0]
        storm = pixels[row.storm_id]
        means = [np.mean([storm[i] for i in run], axis=0).astype(np.uint8)  # np.uint8(mean)
                 for run in frames.frame_indices(spec, row.frame_pos)]
        np.testing.assert_array_equal(image, np.stack(means, -1))


def test_build_all_passes_flags_through(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nshift\nfor a in \"$@\"; do echo \"$a\"; done\n")
    fake.chmod(0o755)
    script = os.path.join(ROOT, "data_prep", "build_all.sh")
    run = lambda *a: subprocess.run(["bash", script, *a], capture_output=True, text=True,  # noqa: E731
                                    env={**os.environ, "PYTHON": str(fake)}).stdout.split("\n")
    args = run("DATA", "--workers=1", "--overwrite")
    assert "--out_dir=DATA" in args and "--workers=1" in args and "--overwrite" in args
    args = run("DATA", "OUT", "--workers=1")
    assert "--out_dir=OUT" in args and "--workers=1" in args and "--data_dir=DATA" in args
