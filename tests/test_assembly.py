"""The frame store and the examples assembled from it: exactly those of the prebuilt records of every
reference spec and of the demo's specs; bad specs, foreign CSVs and damaged shards are refused."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tpuflow import cli
from tpuflow.inputs import assembly, records, source
from tpuflow.prep import build_plan, builder, frames, shard_names, store
from tpuflow.training import experiment

HERE = os.path.dirname(__file__)
REFERENCE = open(os.path.join(HERE, "..", "data_prep", "reference_specs.txt")).read().splitlines()
DEMO = ["single", "stacked:s2", "mean:s2", "sequence:n6:s1"]
SPECS = frames.parse_specs(REFERENCE + [s for s in DEMO if s not in REFERENCE])


@pytest.fixture(scope="module")
def built(cv_dir, tmp_path_factory):
    """The store and, for comparison, PNG-encoded prebuilt records of every spec (one pass)."""
    root = str(tmp_path_factory.mktemp("assembly"))
    store.build_store(cv_dir, root, shards=3, workers=2, log=lambda m: None)
    builder.build_datasets(cv_dir, root, SPECS, shards_per_fold=1, encoding="png", workers=2,
                           log=lambda m: None)
    return root


def _prebuilt(root, spec):
    """{image_id: (pixels uint8 at source size, label, label_le)} of a prebuilt dataset, all splits."""
    d = os.path.join(root, spec.name)
    out = {}
    files = records.record_files(d, range(5)) + records.record_files(d, None)
    for serialized in tf.data.TFRecordDataset(files):
        ex = records.parse_common(serialized)
        images = [records.decode_image(e, spec.channels).numpy() for e in ex["image"]]
        pixels = np.stack(images) if spec.kind == "sequence" else images[0]
        out[ex["image_id"].numpy().decode()] = (pixels, int(ex["label"]), int(ex["label_le"]))
    return out


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_assembled_examples_equal_prebuilt_records(built, spec):
    """Every example of every split: same id, labels, fold membership and pixels (PNG prebuilt:
    exact for every kind, `mean` included; assembly never round-trips through JPEG)."""
    assembled = assembly.Assembly(store.load_store(os.path.join(built, shard_names.STORE_DIR)), spec)
    prebuilt = _prebuilt(built, spec)
    manifest = records.read_manifest(os.path.join(built, spec.name))
    seen = set()
    for fold in [*range(5), None]:
        rows = assembled.split_rows(fold)
        ids, labels, labels_le = assembled.labels(rows)
        files = records.record_files(os.path.join(built, spec.name), None if fold is None else [fold])
        assert sorted(ids) == sorted(records.read_ids(files))  # fold membership
        if fold is None:  # test order: test_cv.csv's, as the prebuilt test records
            assert ids.tolist() == records.read_ids(files).tolist()
        assert len(rows) == manifest["counts"]["test" if fold is None else f"fold.{fold}"]
        for row, image_id, label, label_le in zip(rows, ids, labels, labels_le):
            pixels, want_label, want_le = prebuilt[image_id]
            assert (label, label_le) == (want_label, want_le), image_id
            np.testing.assert_array_equal(assembled.example_numpy(row), pixels, err_msg=f"{spec} {image_id}")
            seen.add(image_id)
    assert seen == set(prebuilt)


@pytest.mark.parametrize("spec", ["stacked:s2", "mean:s2", "sequence:n6:s1", "single"])
def test_assembled_pipeline_matches_prebuilt_pipeline(built, spec):
    """Through the experiments' parse functions and the prediction pipeline (resize to --dim):
    the same inputs as the prebuilt records give, with static shapes."""
    spec = frames.DatasetSpec.parse(spec)
    assembled = assembly.open_assembly(os.path.join(built, shard_names.STORE_DIR), str(spec))
    channels, dim = spec.channels if spec.kind != "sequence" else 1, 16
    if spec.kind == "sequence":
        parse = lambda s: (records.parse_sequence(s, spec.depth, dim)["image"], 0)  # noqa: E731
    else:
        parse = lambda s: (records.parse_image(s, channels, dim)["image"], 0)  # noqa: E731
    files = records.record_files(os.path.join(built, spec.name), None)
    ids = records.read_ids(files)
    want = np.concatenate([b for b in __import__("tpuflow.inputs.pipeline").inputs.pipeline.predict_dataset(
        files, parse, 4, len(ids)).as_numpy_iterator()])
    ds = assembled.predict_dataset(assembled.split_rows(None), parse, 4)
    assert ds.element_spec.shape[1:] == want.shape[1:]  # static
    got = np.concatenate(list(ds.as_numpy_iterator()))
    np.testing.assert_array_equal(got, want)


def test_records_and_the_store_are_one_source_to_the_runner(built, cv_dir, tmp_path):
    """`source.open_source`: prebuilt records and the same spec assembled from the store give the
    same manifest facts, labels, prediction inputs and training batches' shapes; a store passed as
    records, or without its spec, is a usage error naming the flags."""
    spec = frames.DatasetSpec.parse("sequence:n6:s1")
    store_dir = os.path.join(built, shard_names.STORE_DIR)
    given = dict(data_dir=cv_dir, output_dir=str(tmp_path), dim=16)
    rec = source.open_source(experiment.make_config(data_tfrec_dir=os.path.join(built, spec.name), **given))
    made = source.open_source(experiment.make_config(frame_store=store_dir, assemble=str(spec), **given))
    facts = ("kind", "spec", "n_frames", "n_folds", "counts")
    assert {k: made.manifest[k] for k in facts} == {k: rec.manifest[k] for k in facts}
    assert made.name == f"--frame_store={store_dir} --assemble={spec}"
    for s in (rec, made):
        s.check({"train", "test"})
    for fold in range(5):  # the same examples (a fold's records are in shuffled order)
        assert sorted(zip(*rec.labels(fold))) == sorted(zip(*made.labels(fold)))
    assert rec.ids(None).tolist() == made.ids(None).tolist()  # test: submission order, both
    def parse(example):  # as an experiment's parse_example: records and assembled examples alike
        ex = records.parse_sequence(example, spec.depth, 16)
        return ex["image"], ex["label"]
    predicted = [np.concatenate(list(s.predict_dataset(None, parse, 4).as_numpy_iterator())) for s in (rec, made)]
    np.testing.assert_array_equal(*predicted)
    cfg = experiment.make_config(**given).replace(global_batch_size=4)
    batches = [s.train_dataset(cfg, [1, 2, 3, 4], parse, 4, fold=0, epoch=1, step=2, steps=5) for s in (rec, made)]
    assert batches[0].element_spec == batches[1].element_spec
    with pytest.raises(cli.UsageError, match=f"is a frame store: pass --frame_store={store_dir} --assemble=<spec>"):
        source.open_source(experiment.make_config(data_tfrec_dir=store_dir, **given))
    with pytest.raises(cli.UsageError, match="--frame_store and --assemble go together"):
        source.open_source(experiment.make_config(frame_store=store_dir, **given))


def test_global_shuffle_is_deterministic_and_resumable(built):
    assembled = assembly.open_assembly(os.path.join(built, shard_names.STORE_DIR), "stacked:s2")
    parse = lambda s: (records.parse_image(s, 3, 8)["image"], s["label"])  # noqa: E731
    rows = assembled.train_rows([1, 2, 3, 4])

    def labels(start, n_batches, seed=7):
        ds = assembled.train_dataset([1, 2, 3, 4], parse, 4, seed=seed, fold=0, start=start, aug_prob=0.5)
        return [(x, y) for x, y in ds.take(n_batches).as_numpy_iterator()]

    full = labels(0, 2 * len(rows) // 4 + 3)  # two epochs and more
    resumed = labels(4 * 7, len(full) - 7)
    for (x, y), (x2, y2) in zip(full[7:], resumed):  # the same batches, augmentation draws included
        np.testing.assert_array_equal(x["image"], x2["image"])
        np.testing.assert_array_equal(x["transform"], x2["transform"])  # applied on the device
        np.testing.assert_array_equal(y, y2)
    assert 0 < np.mean(np.concatenate([x["transform"] for x, _ in full]) > 0) < 1
    epoch = np.concatenate([y for _, y in full])[: len(rows)]
    assert sorted(epoch) == sorted(assembled.labels(rows)[1])  # each training example once per epoch
    other = labels(0, 3, seed=8)
    assert any((a[1] != b[1]).any() for a, b in zip(full, other))
    # Two hosts read alternate positions: their orders interleave into the one-host order.
    order = lambda host, n: [int(r) for r, _ in assembled.train_order([1, 2, 3, 4], seed=7, fold=0, host=host)  # noqa: E731
                             .take(n).as_numpy_iterator()]
    one = order((0, 1), 2 * len(rows))
    assert order((0, 2), len(rows)) == one[0::2] and order((1, 2), len(rows)) == one[1::2]


def test_bad_specs_and_stores_are_refused(built, cv_dir, tmp_path):
    store_dir = os.path.join(built, shard_names.STORE_DIR)
    for bad, words in [("blocked:s2", "unknown kind"), ("stacked:s0", "step must be >= 1"),
                       ("sequence:n0:s1", "n_frames must be >= 1")]:
        with pytest.raises(ValueError, match=f"--assemble='{bad}'.*{words}"):
            assembly.open_assembly(store_dir, bad)
    with pytest.raises(ValueError, match="not a frame store"):
        assembly.open_assembly(os.path.join(built, frames.DatasetSpec("single").name), "single")
    other = tmp_path / "other"
    shutil.copytree(cv_dir, other, ignore=shutil.ignore_patterns("data-*"))
    train = pd.read_csv(other / "train_cv.csv")
    train.loc[0, "wind_speed"] += 1
    train.to_csv(other / "train_cv.csv", index=False)
    with pytest.raises(ValueError, match=r"another train_cv.csv \(sha256 [0-9a-f]{64}\) than .*"
                                         r"other/train_cv.csv \(sha256 [0-9a-f]{64}\)"):
        store.load_store(store_dir, str(other))
    damaged = tmp_path / "damaged"
    shutil.copytree(store_dir, damaged)
    shard = sorted(p for p in os.listdir(damaged) if p.startswith("frames.tfrecord"))[1]
    with open(damaged / shard, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe")
    with pytest.raises(ValueError, match=f"{damaged / shard}: damaged store shard"):
        store.load_store(str(damaged))


def test_mixed_frame_sizes_within_a_storm_are_named(built):
    s = store.load_store(os.path.join(built, shard_names.STORE_DIR))
    table = s.table.copy()
    table.loc[3, "height"] += 2  # as if one frame of the first storm were another size
    odd = store.FrameStore(s.dir, s.manifest, table, s.frames)
    assembly.Assembly(odd, frames.DatasetSpec("single"))  # a single frame needs no neighbours
    with pytest.raises(ValueError, match=f"--assemble=stacked:s2: .*frame sizes differ within storm "
                                         f"'{table.storm_id[3]}' \\({table.image_id[3]} is"):
        assembly.Assembly(odd, frames.DatasetSpec.parse("stacked:s2"))


def test_store_is_the_source_frames_once_and_resumes(built, cv_dir):
    store_dir = os.path.join(built, shard_names.STORE_DIR)
    manifest = store.read_manifest(store_dir)
    size = sum(os.path.getsize(os.path.join(store_dir, n)) for n in manifest["sha256"])
    table = build_plan.load_frame_table(cv_dir)
    source = sum(os.path.getsize(p) for p in table["image_path"])
    assert manifest["source_bytes"] == source
    assert size < source + 300 * len(table)  # frame bytes once, plus ~270 bytes of features each
    s = store.load_store(store_dir, cv_dir)
    for row in s.table.sample(10, random_state=0).itertuples():  # original bytes, no re-encoding
        path = table.loc[table.image_id == row.image_id, "image_path"].item()
        assert s.frames[row.Index] == open(path, "rb").read()
    shard = sorted(manifest["sha256"])[0]
    before = open(os.path.join(store_dir, shard), "rb").read()
    os.remove(os.path.join(store_dir, shard))
    logs = []
    store.build_store(cv_dir, built, shards=3, workers=2, log=logs.append)
    assert open(os.path.join(store_dir, shard), "rb").read() == before
    assert any("rewriting" in m for m in logs)
    store.build_store(cv_dir, built, shards=3, workers=2, log=logs.append)
    assert "up to date" in logs[-1]


@pytest.mark.parametrize("spec", ["stacked:s2", "sequence:n6:s1"])
def test_inspect_exports_assembled_examples_and_records_alike(built, spec, tmp_path):
    """tools/inspect_records.py --export writes every example losslessly, the same assembled from the
    store and from (PNG) prebuilt records; --assemble (old name --view, read with a warning) draws a
    contact sheet from the store."""
    tool = os.path.join(HERE, "..", "tools", "inspect_records.py")
    env = {**os.environ, "PYTHONPATH": os.path.join(HERE, "..", "lib")}
    name = frames.DatasetSpec.parse(spec).name
    flag = "--view" if spec.startswith("sequence") else "--assemble"  # the old name, and today's
    for args, out in [([f"--tfrec_dir={os.path.join(built, name)}"], "records"),
                      ([f"--tfrec_dir={os.path.join(built, shard_names.STORE_DIR)}", f"{flag}={spec}",
                        f"--contact_sheet={tmp_path / 'sheet.png'}"], "assembled")]:
        proc = subprocess.run([sys.executable, tool, *args, f"--export={tmp_path / out}"],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("--view is the old name of --assemble" in proc.stderr) == (flag == "--view")
    files = sorted(os.listdir(tmp_path / "records"))
    assert files == sorted(os.listdir(tmp_path / "assembled"))
    assert len(files) == sum(store.read_manifest(os.path.join(built, shard_names.STORE_DIR))["counts"].values())
    for f in files:
        load = np.load if f.endswith(".npy") else (lambda p: np.asarray(Image.open(p)))
        np.testing.assert_array_equal(load(tmp_path / "records" / f), load(tmp_path / "assembled" / f), err_msg=f)
    assert Image.open(tmp_path / "sheet.png").size[0] > 0


def test_store_build_refuses_a_damaged_frame_and_leaves_no_shard(cv_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cv_dir, data, ignore=shutil.ignore_patterns("data-*"))
    table = build_plan.load_frame_table(str(data))
    victim = table["image_path"].iloc[-1]  # in the last shard: earlier shards are written first
    with open(victim, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(ValueError, match=f"{victim}: unreadable image"):
        store.build_store(str(data), str(tmp_path / "out"), shards=3, workers=2, log=lambda m: None)
    out = tmp_path / "out" / shard_names.STORE_DIR
    assert not out.exists() or not [n for n in os.listdir(out) if "tfrecord" in n or n == "manifest.json"]


def test_an_assembly_holds_the_encoded_frames_once():
    """Reading without the decoded-frame cache, an assembly holds the store's encoded frames once more
    (one CPU variable): not twice, as a lookup table of them did (benchmarks/bench_scale.py)."""
    from tpuflow.training.throughput import PeakMemory

    n, size = 40_000, 4_000  # ~150 MiB of "frames": far above the allocator's noise
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"image_id": [f"s{i // 100:03d}_{i % 100:03d}" for i in range(n)],
                          "storm_id": [f"s{i // 100:03d}" for i in range(n)], "split": "train",
                          "fold_id": 0, "csv_row": np.arange(n), "label": 50, "label_le": 0, "height": 366,
                          "width": 366})
    encoded = np.empty(n, dtype=object)
    encoded[:] = [rng.bytes(size) for _ in range(n)]
    assembled = assembly.Assembly(store.FrameStore("mem", {}, table, encoded), frames.DatasetSpec.parse("single"),
                      frame_cache="off")
    with PeakMemory() as memory:
        assembled._ready()  # what the map functions capture: here, the encoded frames
    assert memory.peak < 1.3 * n * size, f"{memory.peak / 2**20:.0f} MiB for {n * size / 2**20:.0f} MiB of frames"
