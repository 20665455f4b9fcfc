"""The one-pass dataset builder: every kind read back to the expected tensors, determinism across
worker counts, resume, bad input, --explain; and the TensorFlow-free record format."""
import glob
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tpuflow.inputs import parsers, records
from tpuflow.prep import build_encode, build_plan, build_write, builder, frames, kinds, recordio, shard_names
from tpuflow.training import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECS = frames.parse_specs(["single", "stacked:s2", "mean:s3", "sequence:n6:s2"])
DIM = 24  # conftest's TINY frames


def _copy_data(cv_dir, dst) -> str:
    """A private copy of the split data (image paths are relative to it), safe to damage."""
    shutil.copytree(cv_dir, dst)
    return str(dst)


def _shard_bytes(root) -> dict:
    return {os.path.relpath(p, root): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(root, "*", "*.tfrecord-*")))}


def _leftovers(root) -> list:
    return [p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
            if ".tfrecord-" in p or os.path.basename(p).startswith(".tmp-")]


@pytest.fixture(scope="module")
def built(cv_dir, tmp_path_factory):
    """All four kinds from one pass: 2 spawned workers, chunks of 4 frames (storms are longer,
    so history crosses chunk boundaries), 2 shards per fold."""
    root = tmp_path_factory.mktemp("built")
    manifests = builder.build_datasets(cv_dir, str(root), SPECS, shards_per_fold=2, workers=2,
                                       chunk_frames=4, log=lambda _: None)
    return str(root), manifests


# ---------------------------------------------------------------------------------------------
# Record format without TensorFlow


def _tf_example(features: dict) -> tf.train.Example:
    """The same features through TensorFlow's own protos: the oracle for recordio."""
    def feature(v):
        v = v if isinstance(v, list) else [v]
        if isinstance(v[0], (bytes, str)):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[x.encode() if isinstance(x, str) else x for x in v]))
        if isinstance(v[0], int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=v))
        return tf.train.Feature(float_list=tf.train.FloatList(value=v))
    return tf.train.Example(features=tf.train.Features(feature={k: feature(v) for k, v in features.items()}))


def test_encode_example_parses_like_tensorflow_and_is_deterministic(tmp_path):
    features = {"image_id": "abc_001", "image": [b"\x00\xff" * 700, b"", b"xyz"], "label": 37,
                "label_le": -1, "weights": [0.5, 1.5], "relative_time": 2**40}
    ours = recordio.encode_example(features)
    assert tf.train.Example.FromString(ours) == _tf_example(features)
    assert recordio.encode_example(dict(reversed(list(features.items())))) == ours
    path = tmp_path / "x.tfrecord"
    with open(path, "wb") as f:
        writer = recordio.RecordWriter(f)
        for i in range(3):
            writer.write(recordio.encode_example({**features, "label": i}))
    assert writer.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    labels = [tf.train.Example.FromString(r.numpy()).features.feature["label"].int64_list.value[0]
              for r in tf.data.TFRecordDataset(str(path))]
    assert labels == [0, 1, 2]
    with open(path, "rb") as f:
        assert len(list(recordio.read_records(f))) == 3
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)
    with open(path, "rb") as f, pytest.raises(ValueError, match=r"x.tfrecord: record 2: damaged"):
        list(recordio.read_records(f, "x.tfrecord"))


def test_builder_workers_do_not_import_tensorflow():
    code = ("import sys; from tpuflow.prep import build_encode, build_plan, build_write, builder, recordio; "
            "assert 'tensorflow' not in sys.modules, 'builder imports TensorFlow'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")})


# ---------------------------------------------------------------------------------------------
# Every kind, read back


def _source_frames(cv_dir):
    """Frames of every storm in builder order, decoded as the readers decode them:
    table, {storm: [float32 (H, W)]}."""
    table = build_plan.load_frame_table(cv_dir)
    table["example_index"] = build_plan.example_order(table, 0)
    pixels = {storm: [records.decode_image(tf.io.read_file(p), 1).numpy()[..., 0].astype(np.float32)
                      for p in group["image_path"]]
              for storm, group in table.groupby("storm_id")}
    return table, pixels


def _parsed(directory, parse, prefix_files):
    ds = tf.data.TFRecordDataset(prefix_files).map(parse)  # parsers run inside tf.data (graph)
    return [{k: v.numpy() for k, v in ex.items()} for ex in ds]


@pytest.mark.parametrize("spec_text", ["single", "stacked:s2", "mean:s3", "sequence:n6:s2"])
def test_every_kind_round_trips_to_the_expected_tensors(built, cv_dir, spec_text):
    root, manifests = built
    spec = frames.DatasetSpec.parse(spec_text)
    directory = os.path.join(root, spec.name)
    manifest = records.read_manifest(directory)
    assert manifest in manifests and manifest["spec"] == spec_text
    assert manifest["image_size"] == [DIM, DIM] and manifest["n_folds"] == 5
    table, pixels = _source_frames(cv_dir)
    assert manifest["counts"] == {**{f"fold.{k}": int((table["prefix"] == f"fold.{k}").sum())
                                     for k in range(5)}, "test": int((table["split"] == "test").sum())}
    if spec.kind == "sequence":
        parse = lambda s: records.parse_sequence(s, spec.depth, DIM)  # noqa: E731
        packed = lambda s: records.parse_sequence(s, spec.depth, DIM, pack3=True, invert=True)  # noqa: E731
    else:
        parse = lambda s: records.parse_image(s, spec.channels)  # noqa: E731
        packed = lambda s: records.parse_image(s, spec.channels, invert=True)  # noqa: E731
    errors = []
    for prefix in ["fold.0", "fold.3", "test"]:
        files = records.record_files(directory, None if prefix == "test" else [int(prefix[-1])])
        examples = _parsed(directory, parse, files)
        rows = table[table["prefix"] == prefix].sort_values("example_index")
        assert [e["image_id"].decode() for e in examples] == rows["image_id"].tolist()  # record order
        np.testing.assert_array_equal([e["label"] for e in examples], rows["wind_speed"])
        for ex, row in zip(examples, rows.itertuples()):
            storm = pixels[row.storm_id]
            slots = [np.mean([storm[i] for i in run], axis=0) for run in
                     frames.frame_indices(spec, row.frame_pos)]
            if spec.kind == "sequence":
                assert ex["image"].shape == (spec.depth, DIM, DIM, 1)
                np.testing.assert_allclose(ex["image"][..., 0], np.stack(slots), atol=1e-3)
            else:
                assert ex["image"].shape == (DIM, DIM, spec.channels)
                expected = np.stack(slots, axis=-1)
                if spec.kind == "single":  # the source bytes themselves
                    np.testing.assert_array_equal(ex["image"], expected)
                else:  # RGB JPEG q95 of (rounded) frame means: close to every source channel
                    errors.append(np.abs(ex["image"] - expected).reshape(-1, 3).mean(axis=0))
                    assert np.abs(ex["image"] - expected).max() <= 24
        inverted = _parsed(directory, packed, files)
        for ex, inv in zip(examples, inverted):
            if spec.kind == "sequence":  # three consecutive frames as channels, static shape
                assert inv["image"].shape == (spec.depth // 3, DIM, DIM, 3)
                np.testing.assert_allclose(255.0 - inv["image"][1, ..., 2], ex["image"][5, ..., 0], atol=1e-3)
            else:
                np.testing.assert_array_equal(255.0 - inv["image"], ex["image"])
    if errors:  # per-channel mean absolute error: no channel smeared into another
        assert np.max(errors) < 2.5, np.max(errors, axis=0)  # YCbCr 4:4:4 gives up to 4.5 here


def test_sequence_records_hold_the_source_bytes(built, cv_dir):
    root, _ = built
    table = build_plan.load_frame_table(cv_dir)
    storm_paths = {s: g["image_path"].tolist() for s, g in table.groupby("storm_id")}
    positions = dict(zip(table["image_id"], zip(table["storm_id"], table[frames.POSITION_COLUMN])))
    spec = SPECS[3]
    path = os.path.join(root, spec.name, shard_names.shard_name("test", 1, 2))
    with open(path, "rb") as f:
        for record in recordio.read_records(f, path):
            feature = tf.train.Example.FromString(record).features.feature
            storm, t = positions[feature["image_id"].bytes_list.value[0].decode()]
            expected = [open(storm_paths[storm][i[0]], "rb").read() for i in frames.frame_indices(spec, t)]
            assert list(feature["image"].bytes_list.value) == expected


def test_manifest_checksums_match_and_verify_reports_damage(built, tmp_path):
    root, _ = built
    directory = str(tmp_path / "copy")
    shutil.copytree(os.path.join(root, SPECS[1].name), directory)
    status = build_write.verify_dataset(directory)
    assert len(status) == 12 and set(status.values()) == {"ok"}
    manifest = records.read_manifest(directory)
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest() == digest
    assert manifest["encoding"] == "jpeg" and manifest["jpeg_color"].startswith("RGB")
    assert set(manifest["build"]["sources"]) == {"train_cv.csv", "test_cv.csv", "frames"}
    os.remove(os.path.join(directory, "fold.1.tfrecord-00000-of-00002"))
    with open(os.path.join(directory, "test.tfrecord-00001-of-00002"), "r+b") as f:
        f.truncate(50)
    status = build_write.verify_dataset(directory)
    assert status["fold.1.tfrecord-00000-of-00002"] == "missing"
    assert status["test.tfrecord-00001-of-00002"] == "damaged"


# ---------------------------------------------------------------------------------------------
# Determinism, resume, refusing another dataset


def test_same_bytes_whatever_the_workers_and_chunks(built, cv_dir, tmp_path):
    root, manifests = built
    again = builder.build_datasets(cv_dir, str(tmp_path), SPECS, shards_per_fold=2, workers=1,
                                   chunk_frames=1000, log=lambda _: None)
    assert again == manifests
    assert _shard_bytes(str(tmp_path)) == _shard_bytes(root)


def test_resume_rewrites_only_missing_or_damaged_shards(built, cv_dir, tmp_path):
    root, manifests = built
    out = str(tmp_path / "out")
    shutil.copytree(root, out)
    original = _shard_bytes(out)
    stacked, sequence = (os.path.join(out, SPECS[i].name) for i in (1, 3))
    os.remove(os.path.join(stacked, "fold.2.tfrecord-00001-of-00002"))
    with open(os.path.join(sequence, "test.tfrecord-00000-of-00002"), "r+b") as f:
        f.truncate(1000)
    with open(os.path.join(sequence, "fold.9.tfrecord-00000-of-00001"), "wb") as f:
        f.write(b"stray shard of some other build")
    untouched = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in original
                 if "fold.2.tfrecord-00001" not in p and "test.tfrecord-00000" not in p}
    log = []
    again = builder.build_datasets(cv_dir, out, SPECS, shards_per_fold=2, workers=1, log=log.append)
    assert again == manifests
    assert _shard_bytes(out) == original  # rebuilt bit-exactly; the stray shard is gone
    assert {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in untouched} == untouched
    rewritten = sorted(line.split(": ")[0] for line in log if "rewriting" in line)
    assert rewritten == [os.path.join(sequence, "test.tfrecord-00000-of-00002"),
                         os.path.join(stacked, "fold.2.tfrecord-00001-of-00002")]
    log.clear()
    builder.build_datasets(cv_dir, out, SPECS, shards_per_fold=2, workers=1, log=log.append)
    assert len(log) == len(SPECS) and all("up to date" in line for line in log)


def test_out_dir_holding_another_dataset_is_refused_unless_overwrite(cv_dir, tmp_path):
    spec = [frames.DatasetSpec("stacked", step=2)]
    builder.build_datasets(cv_dir, str(tmp_path), spec, workers=1, quality=90, log=lambda _: None)
    before = _shard_bytes(str(tmp_path))
    with pytest.raises(ValueError, match=r"data-tfrec-stacked-frames003-step002 holds a different "
                                         r"dataset: \[.*quality=90.*\], not \[.*quality=95.*--overwrite"):
        builder.build_datasets(cv_dir, str(tmp_path), spec, workers=1, log=lambda _: None)
    assert _shard_bytes(str(tmp_path)) == before
    manifest, = builder.build_datasets(cv_dir, str(tmp_path), spec, workers=1, overwrite=True,
                                       log=lambda _: None)
    assert manifest["quality"] == 95 and _shard_bytes(str(tmp_path)) != before


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, nothing half-written


def _narrow(path):
    Image.new("L", (20, 24)).save(path, format="JPEG")


@pytest.mark.parametrize("case", ["unreadable", "size_in_storm", "size_of_storm", "missing"])
def test_bad_frames_name_the_frame_and_leave_nothing_behind(cv_dir, tmp_path, case):
    data = _copy_data(cv_dir, tmp_path / "data")
    table = build_plan.load_frame_table(data)
    # Frames of the last storm, so that earlier shards are complete when the build fails.
    last = table[table["storm_id"] == table["storm_id"].max()]
    first, row = last.iloc[0], last.iloc[1]
    if case == "unreadable":
        open(row.image_path, "wb").write(b"not a jpeg")
        error = rf"{row.image_path}: unreadable image"
    elif case == "size_in_storm":
        _narrow(row.image_path)
        error = (rf"{row.image_path} \(storm '{row.storm_id}'\): frame size 20x24 differs from "
                 rf"24x24 of {first.image_path}")
    elif case == "size_of_storm":
        for path in last["image_path"]:
            _narrow(path)
        first_of_all = table["image_path"].iloc[0]
        error = (rf"{first.image_path} \(storm '{row.storm_id}'\): frame size 20x24 differs from "
                 rf"24x24 of {first_of_all}")
    else:
        os.remove(row.image_path)
        error = rf"missing, e.g. {row.image_path} \(storm '{row.storm_id}', image_id '{row.image_id}'\)"
    out = tmp_path / "out"
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        builder.build_datasets(data, str(out), SPECS, shards_per_fold=3, workers=1, chunk_frames=3,
                               log=lambda _: None)
    assert not _leftovers(str(out)) and not glob.glob(str(out / "*" / shard_names.MANIFEST))


def test_duplicate_times_name_the_storm(cv_dir, tmp_path):
    data = _copy_data(cv_dir, tmp_path / "data")
    train = pd.read_csv(os.path.join(data, "train_cv.csv"))
    train.loc[1, "relative_time"] = train.loc[0, "relative_time"]
    train.to_csv(os.path.join(data, "train_cv.csv"), index=False)
    with pytest.raises(ValueError, match=rf"storm '{train.loc[0, 'storm_id']}' at relative_time"):
        builder.build_datasets(data, str(tmp_path / "out"), SPECS, workers=1, log=lambda _: None)
    assert not (tmp_path / "out").exists()


def test_an_empty_fold_is_named_and_nothing_is_written(cv_dir, tmp_path):
    data = _copy_data(cv_dir, tmp_path / "data")
    train = pd.read_csv(os.path.join(data, "train_cv.csv"))
    train.loc[train["fold_id"] == 3, "fold_id"] = 2
    train.to_csv(os.path.join(data, "train_cv.csv"), index=False)
    with pytest.raises(ValueError, match=r"no frames for \['fold.3'\]"):
        builder.build_datasets(data, str(tmp_path / "out"), SPECS, workers=1, log=lambda _: None)
    assert not _leftovers(str(tmp_path / "out")) and not glob.glob(str(tmp_path / "out" / "*" / shard_names.MANIFEST))


@pytest.mark.parametrize("kwargs, error", [
    (dict(shards_per_fold=0), "--shards_per_fold=0"),
    (dict(quality=101), "--quality=101"),
    (dict(encoding="webp"), "--encoding='webp'"),
    (dict(specs=[]), "no dataset specs"),
])
def test_bad_options_are_refused(cv_dir, tmp_path, kwargs, error):
    args = {"specs": SPECS, **kwargs}
    with pytest.raises(ValueError, match=error):
        builder.build_datasets(cv_dir, str(tmp_path), log=lambda _: None, **args)


# ---------------------------------------------------------------------------------------------
# Command line: --explain, bad specs, PNG


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "data_prep", "create_tfrecords.py"), *args],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")})


def test_explain_prints_the_frames_of_a_test_frame_with_train_history(cv_dir, tmp_path):
    table = build_plan.load_frame_table(cv_dir)
    tails = table[(table["split"] == "test") & (table[frames.POSITION_COLUMN] > 0)]
    target = tails.iloc[0]
    storm = table[table["storm_id"] == target.storm_id]["image_id"].tolist()
    t = int(target.frame_pos)
    out = _cli(f"--data_dir={cv_dir}", f"--out_dir={tmp_path}", "--specs=stacked:s2,sequence:n4:s1",
               f"--explain={target.image_id}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"{target.image_id} [stacked:s2] ch0<-{storm[max(t - 4, 0)]} ch1<-{storm[max(t - 2, 0)]} ch2<-{storm[t]}"
        if t >= 4 else frames.explain(frames.DatasetSpec("stacked", step=2), storm, t),
        frames.explain(frames.DatasetSpec("sequence", 4, 1), storm, t)]
    assert storm[t - 1] in out.stdout  # the previous (train) frame is part of its history
    assert not os.listdir(tmp_path)  # explain builds nothing
    bad = _cli(f"--data_dir={cv_dir}", "--specs=stacked:s2", "--explain=zzz_999")
    assert bad.returncode != 0 and "image ids not in train_cv.csv/test_cv.csv: ['zzz_999']" in bad.stderr


@pytest.mark.parametrize("spec_text", ["sequence:n0:s1", "stacked:s0"])
def test_cli_refuses_specs_below_one(cv_dir, tmp_path, spec_text):
    out = _cli(f"--data_dir={cv_dir}", f"--out_dir={tmp_path}", f"--specs=single,{spec_text}")
    assert out.returncode != 0 and f"bad dataset spec {spec_text!r}" in out.stderr
    assert not os.listdir(tmp_path)


def test_png_encoding_is_lossless_for_mean_and_stacked(cv_dir, tmp_path):
    specs = frames.parse_specs(["stacked:s3", "mean:s2"])
    built = builder.build_datasets(cv_dir, str(tmp_path), specs, encoding="png", workers=1,
                                   log=lambda _: None)
    assert [(m["encoding"], m["quality"], m["jpeg_color"]) for m in built] == [("png", None, None)] * 2
    table = build_plan.load_frame_table(cv_dir)
    table["example_index"] = build_plan.example_order(table, 0)
    pixels = {storm: [build_encode.decode_frame(open(p, "rb").read(), p).astype(np.float64)
                      for p in group["image_path"]] for storm, group in table.groupby("storm_id")}
    for spec in specs:
        files = records.record_files(os.path.join(tmp_path, spec.name), [1])
        for ex in _parsed(None, lambda s: records.parse_image(s, 3), files):
            row = table[table["image_id"] == ex["image_id"].decode()].iloc[0]
            storm = pixels[row.storm_id]
            means = [np.floor(np.mean([storm[i] for i in run], axis=0) + 0.5)  # rounded half up
                     for run in frames.frame_indices(spec, row.frame_pos)]
            np.testing.assert_array_equal(ex["image"], np.stack(means, -1))


def test_inspect_records_verifies_and_draws_a_contact_sheet(built, tmp_path):
    root, _ = built
    directory = str(tmp_path / "seq")
    shutil.copytree(os.path.join(root, SPECS[3].name), directory)
    tool = os.path.join(ROOT, "tools", "inspect_records.py")
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}
    sheet = str(tmp_path / "sheet.png")
    out = subprocess.run([sys.executable, tool, f"--tfrec_dir={directory}", f"--contact_sheet={sheet}",
                          "--n_examples=3", "--fold=-1"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "checksums            12/12 ok" in out.stdout and "sequence:n6:s2" in out.stdout
    # 3 rows of 6 frames of 24 px, 2-pixel gaps.
    assert Image.open(sheet).size == (6 * DIM + 5 * 2, 3 * (DIM + 2))
    with open(os.path.join(directory, "fold.4.tfrecord-00001-of-00002"), "ab") as f:
        f.write(b"junk")
    out = subprocess.run([sys.executable, tool, f"--tfrec_dir={directory}"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 1 and "fold.4.tfrecord-00001-of-00002: damaged" in out.stdout


class _Pair(kinds.base.Kind):
    """A kind written for the test below: frames t-s and t, each one as its source bytes."""
    name = "pair"
    fixed_depth = 2
    image_per_slot = True
    slot_label = "step"


def test_a_new_kind_is_one_module_registered(cv_dir, tmp_path, monkeypatch):
    """What a new kind module declares is all the builder and the parsers need (`tpuflow.prep.kinds`)."""
    monkeypatch.setitem(kinds.REGISTRY, "pair", _Pair())
    spec = frames.DatasetSpec.parse("pair:s2")
    assert (spec.to_string(), spec.history_span, spec.images_per_example, spec.channels) == ("pair:s2", 2, 2, 1)
    builder.build_datasets(cv_dir, str(tmp_path), [spec], shards_per_fold=1, workers=1, log=lambda _: None)
    table = build_plan.load_frame_table(cv_dir)
    storm_paths = {s: g["image_path"].tolist() for s, g in table.groupby("storm_id")}
    positions = dict(zip(table["image_id"], zip(table["storm_id"], table[frames.POSITION_COLUMN])))
    files = records.record_files(str(tmp_path / spec.name), None)
    seen = 0
    for path in files:
        with open(path, "rb") as f:
            for record in recordio.read_records(f, path):
                feature = tf.train.Example.FromString(record).features.feature
                storm, t = positions[feature["image_id"].bytes_list.value[0].decode()]
                expected = [open(storm_paths[storm][max(t - 2, 0)], "rb").read(), open(storm_paths[storm][t], "rb").read()]
                assert list(feature["image"].bytes_list.value) == expected
                seen += 1
    assert seen == int((table["split"] == "test").sum())
    cfg = config.Config(dataset_kind="pair", n_frames=2, dim=DIM)
    image, _ = next(iter(tf.data.TFRecordDataset(files).map(lambda s: parsers.parse_by_kind(s, cfg))))
    assert image.shape == (2, DIM, DIM, 1)
