"""Decoded-frame cache: every frame of a store decoded once per process, so assembled examples' slots are copies.

Assembly decodes as many JPEG frames per example as the prebuilt records of its kind (a
`sequence:n24` example: 24), and training order is a global shuffle, so frames shared by the
examples of one batch are rare. Each frame, however, is a slot of up to n examples per epoch and
of every epoch: decoded once into host memory, every later use is a gather (a memcpy) instead of
a decode. The cache is one uint8 array (store rows, H, W) held by a TensorFlow variable on the
host CPU (its gathers run in tf.data's threads, without Python); for `mean` examples it holds the
running sums of the frames modulo 2**16 instead (uint16, twice the bytes), so a mean slot is two
reads and a subtraction, exact for runs of up to 257 frames.

Its size is stated before it is built: store rows x H x W bytes (the competition's ~115k frames
of 366 px: ~15 GB; `mean` examples' sums: ~31 GB), which a TPU VM host holds and a small box does
not. `--frame_cache=auto` (the default) builds it when it fits in half of the memory available
now, else reads without it and says so; `memory` always builds it (an error naming the flag if it
exceeds the available memory); `off` decodes every slot as it is read. The cache only changes
where pixels come from: examples are the same to the bit. Every host builds the whole cache (the
global shuffle gives each host examples from every storm).
"""
from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

MODES = ("auto", "memory", "off")
RAM_FRACTION = 0.5  # `auto` builds the cache when it needs at most this share of available memory
MAX_MEAN_RUN = 257  # 257 * 255 < 2**16: a run's sum is exact modulo 2**16
BUILD_BATCH = 64  # frames decoded per assignment while building


def available_bytes() -> int:
    """Memory available to new allocations (Linux `MemAvailable`; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os  # noqa: PLC0415
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cache_shape(table, sums: bool) -> tuple[int, int, int] | None:
    """(rows, H, W) of the cache of a store's table, or None when its frames differ in size."""
    sizes = table[["height", "width"]].drop_duplicates()
    if len(sizes) != 1:
        return None
    h, w = (int(v) for v in sizes.iloc[0])
    return len(table) + int(sums), h, w


def cache_bytes(shape, sums: bool) -> int:
    return int(np.prod(shape)) * (2 if sums else 1)


def describe(shape, sums: bool) -> str:
    what = "running sums (uint16)" if sums else "frames (uint8)"
    return f"{shape[0]} x {shape[1]} x {shape[2]} {what} = {cache_bytes(shape, sums) / 2**20:.1f} MiB"


def use_cache(mode: str, table, sums: bool, longest_run: int, what: str,
              log=lambda m: print(m, flush=True)) -> tuple[int, int, int] | None:
    """The cache's shape when `mode` says to build one for this assembly, else None (`auto` says why
    in one line, naming the flag); a cache `memory` cannot build is an error naming the flag."""
    if mode not in MODES:
        raise ValueError(f"--frame_cache={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "off":
        return None
    shape = cache_shape(table, sums)
    reason = None
    if shape is None:
        reason = "the store's frames differ in size"
    elif sums and longest_run > MAX_MEAN_RUN:
        reason = f"its mean runs of {longest_run} frames exceed the {MAX_MEAN_RUN} the cache sums exactly"
    else:
        need, free = cache_bytes(shape, sums), available_bytes()
        if mode == "memory" and need > free:
            raise ValueError(f"--frame_cache=memory: {what} needs {describe(shape, sums)}, more than the "
                             f"{free / 2**20:.0f} MiB available; use --frame_cache=off (decode as read)")
        if mode == "auto" and need > RAM_FRACTION * free:
            reason = (f"it needs {describe(shape, sums)}, more than {RAM_FRACTION:.0%} of the "
                      f"{free / 2**20:.0f} MiB available")
    if reason:
        if mode == "memory":
            raise ValueError(f"--frame_cache=memory: {what} cannot be cached: {reason}")
        log(f"{what}: decoding frames as they are read (--frame_cache=auto: {reason}; "
            "--frame_cache=memory forces the cache, off silences this)")
        return None
    return shape


class FrameCache:
    """The decoded frames (or their running sums) of a store, as a CPU variable; `build_s` is the
    time the build took, `nbytes` its size."""

    def __init__(self, values: tf.Variable, sums: bool, build_s: float):
        self.values, self.sums, self.build_s = values, sums, build_s
        self.nbytes = int(np.prod(values.shape)) * values.dtype.size

    def frames(self, rows: tf.Tensor) -> tf.Tensor:
        """(len(rows), H, W) uint8 frames of store rows (a frame cache)."""
        return self.values.sparse_read(rows)

    def run_sums(self, starts: tf.Tensor, stops: tf.Tensor) -> tf.Tensor:
        """(k, H, W) uint16 sums of the frames of the runs [starts[i], stops[i]) (a sums cache):
        differences of running sums, wrapping modulo 2**16 as the sums did."""
        ends = self.values.sparse_read(tf.concat([stops, starts], 0))
        k = tf.shape(starts)[0]
        return ends[:k] - ends[k:]


def build(encoded: np.ndarray, decode, shape: tuple[int, int, int], sums: bool,
          log=lambda m: print(m, flush=True), what: str = "assembly") -> FrameCache:
    """Decodes every frame of `encoded` (store order) with `decode` (the assembly's own, so cached
    pixels are the ones it would decode) into a new cache of `shape`."""
    started = time.perf_counter()
    log(f"{what}: building the decoded-frame cache, {describe(shape, sums)} (--frame_cache)")
    with tf.device("/CPU:0"):
        values = tf.Variable(tf.zeros(shape, tf.uint16 if sums else tf.uint8), trainable=False)
    source = tf.data.Dataset.from_generator(lambda: iter(encoded), output_signature=tf.TensorSpec([], tf.string))
    decoded = source.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(BUILD_BATCH).prefetch(2)
    row, running = int(sums), np.zeros(shape[1:], np.uint16)
    for batch in decoded.as_numpy_iterator():
        if sums:  # running sums wrap modulo 2**16 (NumPy's uint16 arithmetic), exact differences
            batch = running + np.cumsum(batch, axis=0, dtype=np.uint16)
            running = batch[-1]
        # rows scattered in place: a slice assignment copied the whole cache at every batch (quadratic)
        values.scatter_update(tf.IndexedSlices(batch, tf.range(row, row + len(batch))))
        row += len(batch)
    cache = FrameCache(values, sums, time.perf_counter() - started)
    log(f"{what}: decoded-frame cache built in {cache.build_s:.1f} s")
    return cache
