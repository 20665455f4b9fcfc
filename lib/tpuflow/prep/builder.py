"""Builds many fold-sharded TFRecord datasets in one parallel, resumable pass over the frames.

The build is planned first (`tpuflow.prep.build_plan`: examples, order, shards, what an existing
output already holds); this module makes the pass over the storms: worker processes compute
chunks of consecutive frames (`tpuflow.prep.build_encode.run_chunk`: each frame read and decoded
once, `stacked`/`mean` images encoded), the parent takes their results in storm order, assembles
the records (`build_encode.RecordAssembler`) and hands each to the writer of its (spec, fold)
(`tpuflow.prep.build_write.ShardWriter`), which writes the shards at the end of the pass in the
fold's shuffled record order and the manifest last. `tpuflow.prep.beam_build` runs the same plan,
encoding and writing on Apache Beam, so both paths write the same bytes.

Memory stays bounded by the chunks in flight (at most 2 per worker), each holding `chunk_frames`
source frames plus their encoded `stacked`/`mean` images, and by the parent's copy of the source
bytes of the current storm (for `sequence` history); the spills hold only offsets in memory.
Neither TensorFlow nor any intermediate per-example file is involved (see `tpuflow.prep.recordio`).

A re-run skips datasets whose manifest matches and whose shards check out, rewrites only missing
or damaged shards, rebuilds datasets whose CSVs or frames changed, and removes the `.tmp-*`
files a killed run left. Workers die with the builder, even when it is killed with SIGKILL.
"""
from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import multiprocessing
import os
import signal
import sys
from typing import Callable, Iterator, Sequence

from tpuflow import storage
from tpuflow.prep import build_encode, build_plan, build_write, frames, shard_names, validate


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: the worker is killed when the builder dies, even by SIGKILL (which
    runs no cleanup): otherwise it would wait forever on a pipe that nobody writes to."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _computed(tasks: Iterator[tuple[build_encode.ChunkTask, build_encode.Chunk]], workers: int
              ) -> Iterator[tuple[build_encode.ChunkTask, build_encode.Chunk, build_encode.ChunkResult]]:
    """Runs `build_encode.run_chunk` over the tasks, in order, with at most 2 chunks per worker in flight."""
    if workers == 1:
        for task, chunk in tasks:
            yield task, chunk, build_encode.run_chunk(task)
        return
    # fork starts workers at once, but TensorFlow's threads do not survive a fork: when the
    # parent has imported it (tests, notebooks), spawn fresh interpreters instead.
    method = "spawn" if "tensorflow" in sys.modules or sys.platform != "linux" else "fork"
    pool = concurrent.futures.ProcessPoolExecutor(workers, multiprocessing.get_context(method),
                                                  initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        pending = collections.deque()
        for task, chunk in tasks:
            pending.append((task, chunk, pool.submit(build_encode.run_chunk, task)))
            if len(pending) >= 2 * workers:
                task, chunk, future = pending.popleft()
                yield task, chunk, future.result()
        while pending:
            task, chunk, future = pending.popleft()
            yield task, chunk, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_pass(build: build_plan.BuildPlan, plans: Sequence[build_encode.DatasetPlan], writers: dict,
                image_size: list | None, workers: int, log: Callable[[str], None]) -> list[int]:
    """Computes every wanted example and hands it to its writer; returns the frame size."""
    size = build_encode.FrameSize(image_size)
    n_storms, done, storm_id = build.table["storm_id"].nunique(), 0, None
    assembler = build_encode.RecordAssembler(plans)
    tasks = build_encode.chunk_tasks(build.table, plans, build.wants, build.chunk_frames, build.encoding,
                                     build.quality, build.mean_rounding)
    for task, chunk, result in _computed(tasks, workers):
        if task.storm_id != storm_id:
            storm_id, done = task.storm_id, done + 1
            if done % max(1, n_storms // 10) == 0:
                log(f"storm {done}/{n_storms}")
        size.check(task, result)
        for spec, prefix, index, record in assembler.records(task, chunk, result):
            writers[spec, prefix].write(index, record)
    return size.shape


def build_datasets(data_dir: str, out_root: str, specs: Sequence[frames.DatasetSpec],
                   shards_per_fold: int = build_plan.SHARDS_PER_FOLD, encoding: str = "jpeg", quality: int = 95,
                   workers: int | None = None, overwrite: bool = False, chunk_frames: int = 128,
                   log: Callable[[str], None] = print, mean_rounding: str = "round",
                   order_seed: int = 0, image_dir: str | None = None,
                   wind_speed_range: tuple[int, int] = validate.WIND_SPEED_RANGE) -> list[dict]:
    """Builds (or completes) `<out_root>/<spec.name>/` for every spec; returns their manifests.

    One pass over the storms serves every spec; `workers` processes (default: all cores)
    compute chunks of `chunk_frames` frames. Datasets whose manifest matches are kept (damaged
    or missing shards are rewritten); a directory holding another dataset is an error unless
    `overwrite`. If the build fails, the shards it wrote for datasets without a manifest are
    removed again, so no half-built dataset is left behind. Training records are written in a
    seeded shuffled order (`build_plan.example_order`, `order_seed`); frames are read from `image_dir`
    (default: `data_dir`), which every `image_path` must stay inside.
    """
    workers = workers or os.cpu_count() or 1
    build = build_plan.prepare_build(data_dir, out_root, specs, shards_per_fold, encoding, quality, workers,
                                     overwrite, chunk_frames, log, mean_rounding, order_seed, image_dir,
                                     wind_speed_range)
    active = build.active
    writers = {(p.spec, prefix): build_write.ShardWriter(p, prefix, build.counts[prefix], build.n_shards[prefix])
               for p in active for prefix in build.counts}
    manifests = {id(p): p.old for p in build.plans if not p.todo}
    if active:
        repaired = [p.old["image_size"] for p in active if p.old is not None]
        try:
            image_size = _write_pass(build, active, writers, repaired[0] if repaired else None,
                                     workers, log)
            for writer in writers.values():
                writer.finish()
        except BaseException:
            _clean_up(active, writers.values())
            raise
        for plan in active:
            written = {n for w in writers.values() if w.plan is plan for n in w.finished}
            if written != plan.todo:
                raise RuntimeError(f"{plan.out_dir}: shards not written: {sorted(plan.todo - written)}")
            if plan.old is not None:  # repaired: every shard matches the manifest's checksum
                manifests[id(plan)] = plan.old
                continue
            sha = {n: d for w in writers.values() if w.plan is plan for n, d in w.sha256.items()}
            manifest = build.manifest(plan, image_size, sha)
            storage.write_json(storage.join(plan.out_dir, shard_names.MANIFEST), manifest)
            manifests[id(plan)] = manifest
            log(f"{plan.out_dir}: {manifest['counts']}")
    return [manifests[id(p)] for p in build.plans]


def _clean_up(plans: Sequence[build_encode.DatasetPlan], writers) -> None:
    """After a failed pass: drops open shards, and the finished shards of datasets that have no
    manifest (a repaired dataset keeps its repaired shards: they match its manifest)."""
    for writer in writers:
        writer.abort()
        if writer.plan.old is None:
            for name in writer.finished:
                storage.remove(storage.join(writer.plan.out_dir, name))
    for plan in plans:
        if plan.old is None and storage.exists(plan.out_dir) and not storage.listdir(plan.out_dir):
            storage.remove(plan.out_dir)
