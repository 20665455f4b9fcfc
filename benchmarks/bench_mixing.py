"""Usage: python benchmarks/bench_mixing.py [--storms=494] [--frames=70000] [--batch_size=96]
    [--buffer=2048] [--batches=300]

How well do training batches mix storms? Consecutive frames of a storm are near-duplicates, so a
batch holding few storms is a poor gradient sample. On a frame table with the real data's storm
count and size (storm lengths drawn from a skewed distribution; 5 GroupKFold folds, folds 0-3
read for training), records are written in two layouts and read through
`pipeline.train_dataset` with the default shuffle buffer:

- old: storm/time order, 1 shard per fold (the builder before shuffled record order);
- new: the builder's layout: `build_plan.example_order` (seeded shuffle within each fold),
  `build_plan.SHARDS_PER_FOLD` shards per fold.

- assembled: examples assembled from the frame store (`assembly.Assembly.train_order`): a global
  shuffle of every training example, no buffer.

It prints the mean and minimum number of distinct storms per batch for each, and for a fully
shuffled order of the same training frames (the ideal, computed directly), and the ratio of each
mean to the ideal's. Records hold only the storm (no image), so this measures order alone.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
import tensorflow as tf
from absl import app, flags
from sklearn.model_selection import GroupKFold

from tpuflow.inputs import assembly, pipeline
from tpuflow.prep import build_plan, frames, recordio, shard_names, store

FLAGS = flags.FLAGS
flags.DEFINE_integer("storms", 494, "Storms (the real training set has 494)")
flags.DEFINE_integer("frames", 70257, "Training frames over all 5 folds (the real set has 70,257)")
flags.DEFINE_integer("batch_size", 96, "Batch size")
flags.DEFINE_integer("buffer", 2048, "Shuffle buffer (the experiments' default --buffer_size)")
flags.DEFINE_integer("batches", 300, "Batches drawn per layout")


def frame_table(n_storms: int, n_frames: int, seed: int = 0) -> pd.DataFrame:
    """Storms with skewed lengths summing to about `n_frames`, 5 folds by GroupKFold."""
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 0.8, n_storms)
    lengths = np.maximum(4, np.round(weights / weights.sum() * n_frames)).astype(int)
    storm = np.repeat(np.arange(n_storms), lengths)
    time = np.concatenate([np.arange(n) for n in lengths])
    table = pd.DataFrame({"storm": storm, "relative_time": time * 1800,
                          "image_id": [f"s{s:03d}_{t:03d}" for s, t in zip(storm, time)]})
    table["fold_id"] = -1
    for k, (_, rows) in enumerate(GroupKFold(5).split(table, groups=table["storm"])):
        table.loc[rows, "fold_id"] = k
    table["prefix"] = table["fold_id"].map(shard_names.fold_prefix)
    table["split"] = "train"
    return table


def write_layout(table: pd.DataFrame, out: str, order: np.ndarray, shards_per_fold: int) -> list[str]:
    """Writes each fold's records in `order` (index among the fold's examples); training files."""
    os.makedirs(out, exist_ok=True)
    files = []
    for k in range(5):
        fold = table[table["fold_id"] == k].assign(order=order[table["fold_id"].to_numpy() == k])
        fold = fold.sort_values("order")
        bounds = recordio.shard_bounds(len(fold), shards_per_fold)
        for i, (a, b) in enumerate(bounds):
            path = os.path.join(out, shard_names.shard_name(shard_names.fold_prefix(k), i, len(bounds)))
            with open(path, "wb") as f:
                writer = recordio.RecordWriter(f)
                for row in fold.iloc[a:b].itertuples():
                    writer.write(recordio.encode_example({"image_id": row.image_id, "image": [b""],
                                                          "label": int(row.storm), "label_le": 0}))
            if k < 4:
                files.append(path)
    return files


def parse_storm(serialized):
    ex = tf.io.parse_single_example(serialized, {"label": tf.io.FixedLenFeature([], tf.int64)})
    return tf.zeros([1], tf.uint8), ex["label"]


def storms_per_batch(files: list[str]) -> np.ndarray:
    ds = pipeline.train_dataset(files, parse_storm, FLAGS.batch_size, shuffle_buffer=FLAGS.buffer, seed=0)
    return np.array([len(np.unique(y)) for _, y in ds.take(FLAGS.batches).as_numpy_iterator()])


def assembled_storms_per_batch(table: pd.DataFrame) -> np.ndarray:
    """Storms per batch of the assembly's training order over the same frames (folds 0-3)."""
    columns = table.assign(storm_id=table["storm"].astype(str), height=1, width=1)
    assembled = assembly.Assembly(store.FrameStore("<synthetic>", {}, columns, np.array([], object)),
                                  frames.DatasetSpec("single"))
    order = assembled.train_order(range(4), seed=0, fold=4).map(lambda row, seed: row).batch(FLAGS.batch_size)
    storm = table["storm"].to_numpy()
    return np.array([len(np.unique(storm[rows])) for rows in order.take(FLAGS.batches).as_numpy_iterator()])


def main(argv):
    del argv
    table = frame_table(FLAGS.storms, FLAGS.frames)
    train = table[table["fold_id"] < 4]
    print(f"{table['storm'].nunique()} storms, {len(table)} frames; training folds 0-3: "
          f"{train['storm'].nunique()} storms, {len(train)} frames; batch {FLAGS.batch_size}, "
          f"shuffle buffer {FLAGS.buffer}, {FLAGS.batches} batches per layout")
    rng = np.random.default_rng(1)
    shuffled = rng.permutation(train["storm"].to_numpy())
    n = len(shuffled) // FLAGS.batch_size
    ideal = np.array([len(np.unique(b)) for b in shuffled[:n * FLAGS.batch_size].reshape(n, -1)])
    with tempfile.TemporaryDirectory() as work:
        storm_order = table.groupby("prefix").cumcount().to_numpy()
        layouts = {
            "old (storm/time order, 1 shard/fold)": write_layout(table, os.path.join(work, "old"), storm_order, 1),
            f"new (shuffled, {build_plan.SHARDS_PER_FOLD} shards/fold)": write_layout(
                table, os.path.join(work, "new"), build_plan.example_order(table, 0), build_plan.SHARDS_PER_FOLD),
        }
        results = {name: storms_per_batch(files) for name, files in layouts.items()}
    results["assembled (global shuffle of the store)"] = assembled_storms_per_batch(table)
    results["fully shuffled (ideal)"] = ideal
    for name, counts in results.items():
        print(f"{name:40s} storms/batch mean {counts.mean():6.1f}  min {counts.min():3d}  "
              f"mean/ideal {counts.mean() / ideal.mean():.3f}")


if __name__ == "__main__":
    app.run(main)
