"""Examples/s of an input pipeline and of a model's training step, measured apart: which one
limits a run (used by benchmarks/bench_throughput.py, benchmarks/bench_backends.py and
tools/doctor.py). Works under either Keras backend: the model is fed from tf.data, as in training."""
from __future__ import annotations

import os
import threading
import time

import keras
import tensorflow as tf

from tpuflow.inputs import parsers
from tpuflow.prep import frames
from tpuflow.training import config


def kind_config(spec: frames.DatasetSpec, dim: int, backbone: str = "EfficientNetB0") -> config.Config:
    """The settings a regression experiment on records of `spec` runs with (no weights)."""
    return config.Config(dataset_kind=spec.kind, n_frames=spec.depth, dim=dim, backbone=backbone)


def kind_parser(spec: frames.DatasetSpec, dim: int):
    """The parser training uses for the kind (`parsers.parse_by_kind`; records and examples assembled
    assembled alike): serialized -> (uint8 image, float32 wind speed)."""
    cfg = kind_config(spec, dim)
    return lambda serialized: parsers.parse_by_kind(serialized, cfg)


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


def rss_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakMemory:
    """Samples the resident memory in a thread between `with` entry and exit; `.peak` is the
    highest value above the memory at entry."""

    def __enter__(self):
        self.base, self.peak, self._stop = rss_bytes(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes() - self.base)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes() - self.base)
