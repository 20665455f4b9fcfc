"""The tf.data input pipeline: one function for training, one ordered one for prediction.

Training order (fixed): read shards interleaved, one record from each in turn -> [cache] ->
shuffle the serialized records -> repeat -> parse (uint8 pixels) -> batch (drop_remainder=True,
static shapes for TPU) -> [draw each example's augmentation] -> float32 -> prefetch. The
augmentation itself runs on the accelerator (`training.loop.train_model`), like prediction's TTA.
The builder writes each fold's records in a shuffled order over many shards, so interleaving
them mixes storms before the buffer does; the buffer holds encoded records (tens of KB each),
not decoded images (a 366 px 24-frame example is 12.9 MB as float32), and pixels stay uint8
until the batch, so host memory stays bounded whatever the kind.
Prediction order: read shards sequentially -> parse -> float32 -> [TTA transform] -> pad to a
whole number of global batches -> batch(drop_remainder=True) -> prefetch; the caller trims the
padding, so every example is predicted exactly once, in record order (the order
`records.read_ids` returns). Runs predict every TTA view in one pass: each example is read and
decoded once and `ondevice.tta_model` makes its views on the accelerator.
"""
from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from tpuflow.inputs import augment, ondevice

AUTOTUNE = tf.data.AUTOTUNE
ParseFn = Callable[[tf.Tensor], tuple]


MAX_OPEN_FILES = 64  # shards read at once: 4 training folds x 16 shards
SHUFFLE_BYTES = 1 << 30  # the shuffle buffer's share of host memory (records, not images)


def to_float(x):
    """Integer pixel tensors of an input structure -> float32 (other tensors unchanged)."""
    return tf.nest.map_structure(lambda t: tf.cast(t, tf.float32) if t.dtype.is_integer else t, x)


def train_dataset(files: Sequence[str], parse_fn: ParseFn, batch_size: int, *,
                  shuffle_buffer: int = 2048, aug_prob: float = 0.0, cache: bool = False,
                  seed: int | None = None) -> tf.data.Dataset:
    """Endless, shuffled batches of (inputs, target) for `model.fit`; with `aug_prob` > 0 the
    inputs are {"image", "transform"}: each example's transform index, drawn here, applied on the
    device (`training.loop.train_model`). `seed` also seeds the draws.

    The buffer holds at most `shuffle_buffer` records and about `SHUFFLE_BYTES` of them (a
    24-frame 366 px record is ~0.8 MB): records are written in a shuffled order, so a smaller
    buffer costs no mixing (`benchmarks/bench_mixing.py`: ideal storms per batch from 64 records
    on). `cache` keeps the serialized records in memory: later epochs skip reading, not decoding.
    """
    shuffle_buffer = max(1, min(shuffle_buffer, SHUFFLE_BYTES // mean_record_bytes(files)))
    files_ds = tf.data.Dataset.from_tensor_slices(list(files)).shuffle(len(files), seed=seed)
    ds = files_ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), MAX_OPEN_FILES),
                             block_length=1, num_parallel_calls=AUTOTUNE, deterministic=seed is not None)
    if cache:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed).repeat()
    ds = ds.map(parse_fn, num_parallel_calls=AUTOTUNE, deterministic=seed is not None)
    ds = ds.batch(batch_size, drop_remainder=True).map(lambda x, y: (to_float(x), y))
    if aug_prob > 0:  # a transform index per example, from a seed per batch (random without `seed`)
        ondevice.check_prob(aug_prob)  # named before any work
        draws = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip((ds, draws)).map(
            lambda xy, s: (with_transform(xy[0], augment.draw(aug_prob, [batch_size], seed=s)), xy[1]))
    return ds.prefetch(2)


def host_files(files: Sequence[str], index: int, count: int) -> list[str]:
    """This host's share of the training shards (every `count`-th file, from `index`)."""
    files = list(files)
    if count == 1:
        return files
    if len(files) < count:
        raise ValueError(f"{len(files)} training record file(s) cannot be shared by {count} hosts: build the "
                         f"records with at least {count} shards per fold (create_tfrecords.py --shards_per_fold)")
    return files[index::count]


def with_transform(x, transform):
    """Training inputs {"image", "transform"} that carry each example's transform index, which the
    device applies (`training.loop.train_model`); `x` itself when there is none (`transform` is ())."""
    return {"image": x, "transform": transform} if isinstance(transform, tf.Tensor) else x


def mean_record_bytes(files: Sequence[str], sample: int = 32) -> int:
    """Mean size of the first `sample` records of the first file (1 if it has none)."""
    sizes = [len(r) for r in tf.data.TFRecordDataset(list(files)[:1]).take(sample).as_numpy_iterator()]
    return max(1, sum(sizes) // max(1, len(sizes)))


def padded_count(n_examples: int, batch_size: int) -> int:
    """Smallest multiple of `batch_size` that holds `n_examples`."""
    return -(-n_examples // batch_size) * batch_size


def predict_dataset(files: Sequence[str], parse_fn: ParseFn, batch_size: int, n_examples: int,
                    tta_index: int = 0, source: tf.data.Dataset | None = None) -> tf.data.Dataset:
    """Inputs only, in record order, TTA `tta_index` applied, padded to full batches.

    Padding repeats the first example; predictions beyond `n_examples` must be dropped.
    `source`, if given, replaces the records of `files` (examples assembled from the frame store).
    """
    source = tf.data.TFRecordDataset(list(files)) if source is None else source
    ds = source.map(
        lambda s: augment.apply_tta(to_float(parse_fn(s)[0]), tta_index),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    n_padded = padded_count(n_examples, batch_size)
    if n_padded > n_examples:
        ds = ds.concatenate(ds.take(1).repeat(n_padded - n_examples))
    ds = ds.batch(batch_size, drop_remainder=True)
    # Known length: Keras stops exactly; a wrong `n_examples` fails instead of misaligning ids.
    return ds.apply(tf.data.experimental.assert_cardinality(n_padded // batch_size)).prefetch(AUTOTUNE)
