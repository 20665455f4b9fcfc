"""The tf.data input pipeline: one function for training, one ordered one for prediction.

Training order (fixed): read shards interleaved -> parse -> [cache] -> shuffle -> repeat ->
augment -> batch(drop_remainder=True, static shapes for TPU) -> prefetch.
Prediction order: read shards sequentially -> parse -> TTA transform -> pad to a whole number of
global batches -> batch(drop_remainder=True) -> prefetch; the caller trims the padding, so every
example is predicted exactly once, in record order (the order `records.read_ids` returns).
"""
from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from tpuflow import augment

AUTOTUNE = tf.data.AUTOTUNE
ParseFn = Callable[[tf.Tensor], tuple]


def train_dataset(files: Sequence[str], parse_fn: ParseFn, batch_size: int, *,
                  shuffle_buffer: int = 2048, aug_prob: float = 0.0, cache: bool = False,
                  seed: int | None = None) -> tf.data.Dataset:
    """Endless, shuffled, augmented batches of (inputs, target) for `model.fit`."""
    files_ds = tf.data.Dataset.from_tensor_slices(list(files)).shuffle(len(files), seed=seed)
    ds = files_ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                             num_parallel_calls=AUTOTUNE, deterministic=seed is not None)
    ds = ds.map(parse_fn, num_parallel_calls=AUTOTUNE)
    if cache:  # decoded images: later epochs skip reading and decoding
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer, seed=seed).repeat()
    if aug_prob > 0:
        ds = ds.map(lambda x, y: (augment.random_augment(x, aug_prob), y), num_parallel_calls=AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def padded_count(n_examples: int, batch_size: int) -> int:
    """Smallest multiple of `batch_size` that holds `n_examples`."""
    return -(-n_examples // batch_size) * batch_size


def predict_dataset(files: Sequence[str], parse_fn: ParseFn, batch_size: int, n_examples: int,
                    tta_index: int = 0) -> tf.data.Dataset:
    """Inputs only, in record order, TTA `tta_index` applied, padded to full batches.

    Padding repeats the first example; predictions beyond `n_examples` must be dropped.
    """
    ds = tf.data.TFRecordDataset(list(files)).map(
        lambda s: augment.apply_tta(parse_fn(s)[0], tta_index),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    n_padded = padded_count(n_examples, batch_size)
    if n_padded > n_examples:
        ds = ds.concatenate(ds.take(1).repeat(n_padded - n_examples))
    ds = ds.batch(batch_size, drop_remainder=True)
    # Known length: Keras stops exactly; a wrong `n_examples` fails instead of misaligning ids.
    return ds.apply(tf.data.experimental.assert_cardinality(n_padded // batch_size)).prefetch(AUTOTUNE)
