"""TFRecord writer, manifest and builder: real records written and read back."""
import io
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from tpuflow.inputs import records
from tpuflow.prep import builder, frames, recordio, shard_names


def _png(pixels):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def test_n_examples_into_k_shards_read_back(tmp_path):
    """recordio writes, TensorFlow reads: ids, labels and pixels survive, order kept across shards."""
    rng = np.random.default_rng(0)
    images = {f"s_{i:03d}": rng.integers(0, 256, (8, 8), dtype=np.uint8) for i in range(23)}
    examples = [recordio.encode_example({"image_id": k, "image": [_png(v)], "label": i, "label_le": i % 5})
                for i, (k, v) in enumerate(images.items())]
    bounds = recordio.shard_bounds(len(examples), 4)
    sizes = [b - a for a, b in bounds]
    assert sum(sizes) == 23 and max(sizes) - min(sizes) <= 1
    for i, (start, stop) in enumerate(bounds):
        with open(tmp_path / shard_names.shard_name("fold.0", i, 4), "wb") as f:
            writer = recordio.RecordWriter(f)
            for record in examples[start:stop]:
                writer.write(record)
    files = records.record_files(str(tmp_path), [0])
    assert [os.path.basename(f) for f in files] == [f"fold.0.tfrecord-0000{i}-of-00004" for i in range(4)]
    ids, labels, labels_le = records.read_labels(files)
    assert ids.tolist() == list(images)
    np.testing.assert_array_equal(labels, np.arange(23))
    np.testing.assert_array_equal(labels_le, np.arange(23) % 5)
    ds = tf.data.TFRecordDataset(files).map(lambda s: records.parse_image(s, channels=1))
    for (k, v), ex in zip(images.items(), ds):
        assert ex["image_id"].numpy().decode() == k
        np.testing.assert_array_equal(ex["image"].numpy()[..., 0], v)


def test_built_single_dataset_matches_source_frames(single_dir, cv_dir):
    manifest = records.read_manifest(single_dir)
    train = pd.read_csv(os.path.join(cv_dir, "train_cv.csv"))
    test = pd.read_csv(os.path.join(cv_dir, "test_cv.csv"))
    assert manifest["counts"] == {**{f"fold.{k}": int((train["fold_id"] == k).sum()) for k in range(5)},
                                  "test": len(test)}
    for name, count in manifest["shards"].items():
        assert sum(1 for _ in tf.data.TFRecordDataset(os.path.join(single_dir, name))) == count
    files = records.record_files(single_dir, [2])
    ids, labels, _ = records.read_labels(files)
    fold = train[train["fold_id"] == 2].set_index("image_id")
    assert sorted(ids) == sorted(fold.index)
    np.testing.assert_array_equal(labels, fold.loc[ids, "wind_speed"])
    ex = next(iter(tf.data.TFRecordDataset(files).map(lambda s: records.parse_image(s, channels=1))))
    path = os.path.join(cv_dir, fold.loc[ex["image_id"].numpy().decode(), "image_path"])
    source = tf.io.decode_jpeg(tf.io.read_file(path), channels=1, dct_method="INTEGER_ACCURATE").numpy()
    assert ex["image"].dtype == tf.uint8  # pixels stay uint8 until the pipeline has batched them
    np.testing.assert_array_equal(ex["image"].numpy(), source)


def test_unreadable_jpeg_names_the_file_and_writes_nothing(cv_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cv_dir, data)
    train = pd.read_csv(data / "train_cv.csv")
    bad = os.path.join(data, train["image_path"].iloc[3])  # relative to the data dir
    with open(bad, "wb") as f:
        f.write(b"not a jpeg at all")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{os.path.basename(bad)}: unreadable image"):
        builder.build_datasets(str(data), str(out), [frames.DatasetSpec("stacked", step=2)])
    assert not out.exists() or not any(out.rglob("*.tfrecord*"))
