"""Examples/s of an input pipeline and of a model's training step, measured apart: which one
limits a run (used by benchmarks/bench_throughput.py, benchmarks/bench_backends.py and
tools/doctor.py). Works under either Keras backend: the model is fed from tf.data, as in training."""
from __future__ import annotations

import time

import keras
import tensorflow as tf


def input_rate(ds: tf.data.Dataset, batches: int, batch_size: int) -> float:
    """Examples/s drawn from `ds` after one warm-up batch (fills buffers, traces the maps)."""
    it = iter(ds)
    next(it)
    started = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - started)


def model_rate(model: keras.Model, batch: tuple, steps: int, batch_size: int) -> float:
    """Training examples/s of a compiled `model` on one batch held in memory (no input work),
    after two warm-up steps (which trace and compile the step)."""
    data = tf.data.Dataset.from_tensors(batch).repeat()
    model.fit(data, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return steps * batch_size / (time.perf_counter() - started)
