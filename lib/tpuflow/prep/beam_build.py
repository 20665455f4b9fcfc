"""The builder on Apache Beam: the same datasets and frame store, byte for byte, built on the
DirectRunner, Dataflow, Flink or Spark (`create_tfrecords.py --runner=...`).

Beam only distributes the local builder's work; every decision and every byte comes from the
code the local build runs:

- planning happens here, in the launching process, exactly as for a local build
  (`build_plan.prepare_build`, `store.plan_store`): the frame table, each example's place in the
  shuffled record order and its shard, and what an existing output already holds (a re-run or
  a run after a local build writes only missing or damaged shards);
- a storm is the unit of work: a worker reads its frames, computes its chunks with
  `build_encode.run_chunk` and assembles its records with `build_encode.RecordAssembler` (the frame
  store's with `store.frame_record`), each keyed by its shard;
- one worker per shard sorts the shard's records into the planned order, checks that every
  example is there exactly once, and writes the shard under a temporary name that it renames
  (`storage.atomic_path`; on gs:// an atomic upload), so a retried worker rewrites the same
  bytes and a killed one leaves nothing a reader or a re-run would trust;
- a final step per dataset, once all its shards are written, writes `manifest.json` last
  (`build_plan.BuildPlan.manifest`, `store.StorePlan.manifest`: the same fields and sha256s).

The plan travels to the workers as files in a directory under the pipeline's `--temp_location`
(a local temporary directory on the DirectRunner): the plan without the frame table, read once
per worker, and the table's rows in files of `STORMS_PER_FILE` storms, read by whichever worker
takes them; so neither the job graph nor a worker holds the whole table, whatever the number of
frames (the manifest step of the frame store reads it once). Each shard's records meet in one
worker's memory to be sorted (e.g. ~260 MB for a `sequence:n96` shard of the competition's data
at 16 shards per fold). The DirectRunner also holds every record of the build in the launching
process while it groups them (docs/data.md, "Building on Apache Beam")."""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import operator
import os
import pickle
import shutil
import signal
import tempfile
import threading
import uuid
from typing import Callable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, PipelineOptions
from apache_beam.runners.runner import PipelineState

from tpuflow import cli, storage
from tpuflow.prep import build_encode, build_plan, build_write, frames, shard_names, store, validate

STORMS_PER_FILE = 64


@dataclasses.dataclass
class BeamJob:
    """What the workers need: the plans, and every shard to write with its example range."""
    build: build_plan.BuildPlan | None
    store: store.StorePlan | None
    shards: dict  # (out_dir, shard name) -> (first example, stop, sha256 a repair must match)

    @property
    def active(self) -> list[build_encode.DatasetPlan]:
        return (self.build.active if self.build else []) + \
            ([self.store.plan] if self.store and self.store.plan.todo else [])


def _job(build: build_plan.BuildPlan | None, frame_store: store.StorePlan | None) -> BeamJob:
    shards = {}
    for plan in build.active if build else []:
        for prefix in build.counts:
            for i, (a, b) in enumerate(build.shard_bounds(prefix)):
                name = shard_names.shard_name(prefix, i, build.n_shards[prefix])
                if name in plan.todo:
                    shards[plan.out_dir, name] = (a, b, plan.old["sha256"][name] if plan.old else None)
    if frame_store is not None:
        plan = frame_store.plan
        for name, (a, b) in zip(frame_store.names, frame_store.bounds):
            if name in plan.todo:
                shards[plan.out_dir, name] = (a, b, plan.old["sha256"][name] if plan.old else None)
    return BeamJob(build, frame_store, shards)


def write_job(job: BeamJob, job_dir: str) -> list[str]:
    """Writes the plan for the workers into `job_dir`; returns the files of storm rows."""
    table = job.build.table if job.build is not None else job.store.table
    table = table.assign(row=np.arange(len(table)))  # a frame's place in the table: its store record
    storage.write_bytes(storage.join(job_dir, "table.pkl"), pickle.dumps(table))
    light = BeamJob(job.build and dataclasses.replace(job.build, table=None),
                    job.store and dataclasses.replace(job.store, table=None), job.shards)
    storage.write_bytes(storage.join(job_dir, "job.pkl"), pickle.dumps(light))
    storms = list(table.groupby("storm_id", sort=True))
    paths = []
    for k in range(0, len(storms), STORMS_PER_FILE):
        path = storage.join(job_dir, f"storms-{k // STORMS_PER_FILE:06d}.pkl")
        storage.write_bytes(path, pickle.dumps([(k + i, str(storm_id), rows) for i, (storm_id, rows)
                                                in enumerate(storms[k:k + STORMS_PER_FILE])]))
        paths.append(path)
    return paths


def read_storms(path: str):
    """A file of `write_job` -> its (storm ordinal, storm id, the storm's rows of the table)."""
    yield from pickle.loads(storage.read_bytes(path))


class _WithJob(beam.DoFn):
    """A DoFn that reads the plan once per worker."""

    def __init__(self, job_dir: str):
        self.job_dir = job_dir
        self.job: BeamJob | None = None

    def setup(self):
        self.job = pickle.loads(storage.read_bytes(storage.join(self.job_dir, "job.pkl")))


class StormRecords(_WithJob):
    """One storm -> ("records", ((dataset dir, shard), (example index, record))) for every
    wanted example; ("size", (storm ordinal, storm, frame size, first frame)) for the size
    check; ("store", (rows, frames' (height, width), source bytes)) for the store's manifest.
    (One output, not tagged ones: the bundle-based DirectRunner's side input of a tagged
    output also holds the main output's elements.)"""

    def process(self, element):
        ordinal, _, rows = element
        build, frame_store = self.job.build, self.job.store
        if build is not None and build.active:
            yield from self._datasets(ordinal, build, rows)
        if frame_store is not None and frame_store.plan.todo:
            yield from self._store(frame_store, rows)

    @staticmethod
    def _datasets(ordinal, build: build_plan.BuildPlan, storm):
        plans = build.active
        out_dirs = {p.spec: p.out_dir for p in plans}
        assembler = build_encode.RecordAssembler(plans)
        size = build_encode.FrameSize()
        for task, chunk in build_encode.chunk_tasks(storm, plans, build.wants, build.chunk_frames,
                                                    build.encoding, build.quality, build.mean_rounding):
            result = build_encode.run_chunk(task)
            size.check(task, result)
            for spec, prefix, index, record in assembler.records(task, chunk, result):
                yield "records", ((out_dirs[spec], build.shard_name(prefix, index)), (index, record))
        if size.shape is not None:
            yield "size", (ordinal, assembler.storm_id, size.shape, size.first)

    @staticmethod
    def _store(frame_store: store.StorePlan, rows):
        out_dir, todo = frame_store.plan.out_dir, frame_store.plan.todo
        sizes, source_bytes = [], 0
        for row in rows.itertuples():
            data, size = store.read_frame(row.image_path)
            sizes.append(size)
            source_bytes += len(data)
            position = int(row.row)
            name = frame_store.shard_name(position)
            if name in todo:
                yield "records", ((out_dir, name), (position, store.frame_record(row, size, data)))
        yield "store", (rows["row"].tolist(), sizes, source_bytes)


class WriteShard(_WithJob):
    """(dataset dir, shard), its records -> (dataset dir, (shard, sha256)), the shard written."""

    def process(self, element):
        (out_dir, name), items = element
        first, stop, expected = self.job.shards[out_dir, name]
        items = sorted(items, key=operator.itemgetter(0))
        indices = [i for i, _ in items]
        if indices != list(range(first, stop)):
            raise RuntimeError(f"{storage.join(out_dir, name)}: expected examples {first}..{stop - 1} "
                               f"once each, got {len(indices)} records ({len(set(indices))} distinct)")
        sha256 = build_write.write_shard(storage.join(out_dir, name), (r for _, r in items), expected)
        yield out_dir, (name, sha256)


class WriteManifest(_WithJob):
    """Once every shard of a dataset is written: its manifest (a repair keeps the old one)."""

    def process(self, element, sizes, store_rows):
        out_dir, groups = element
        job = self.job
        written = dict(groups["sha256"])
        plan = next(p for p in job.active if p.out_dir == out_dir)
        if set(written) != plan.todo:
            raise RuntimeError(f"{out_dir}: shards not written: {sorted(plan.todo - set(written))}")
        if job.store is not None and plan is job.store.plan:
            if plan.old is None:
                table = pickle.loads(storage.read_bytes(storage.join(self.job_dir, "table.pkl")))
                table_sizes = np.zeros((len(table), 2), np.int64)
                for rows, frame_sizes, _ in store_rows:
                    table_sizes[rows] = frame_sizes
                source_bytes = sum(n for _, _, n in store_rows)
                frame_store = dataclasses.replace(job.store, table=table.drop(columns="row"))
                self._write(out_dir, frame_store.manifest(table_sizes, source_bytes, written))
        else:
            image_size = _image_size(job.build, sizes)
            if plan.old is None:
                self._write(out_dir, job.build.manifest(plan, image_size, written))
        yield out_dir

    @staticmethod
    def _write(out_dir: str, manifest: dict) -> None:
        storage.write_json(storage.join(out_dir, shard_names.MANIFEST), manifest)


def _image_size(build: build_plan.BuildPlan, sizes) -> list:
    """The datasets' frame size, checked over every storm as the local pass checks it: that of a
    repaired dataset's manifest, else that of the first storm (in storm order)."""
    repaired = [p.old["image_size"] for p in build.active if p.old is not None]
    image_size, first = (repaired[0], None) if repaired else (None, None)
    for _, storm_id, shape, path in sorted(sizes, key=operator.itemgetter(0)):
        if image_size is None:
            image_size, first = shape, path
        elif shape != image_size:
            raise build_encode.size_mismatch(path, storm_id, shape, image_size, first)
    return image_size


def expand(pipeline: beam.Pipeline, job: BeamJob, job_dir: str, storm_files: Sequence[str],
           storm_records: type[StormRecords] = StormRecords):
    """Adds the build's steps to `pipeline` (`storm_files`: those of `write_job`;
    `storm_records`: the per-storm step, replaceable so that tests can make a worker fail);
    returns the PCollection of finished dataset dirs."""
    computed = (pipeline
                | "StormFiles" >> beam.Create(storm_files)
                | "SpreadFiles" >> beam.Reshuffle()
                | "Storms" >> beam.FlatMap(read_storms)
                | "SpreadStorms" >> beam.Reshuffle()
                | "Compute" >> beam.ParDo(storm_records(job_dir)))
    records, sizes, store_rows = (
        computed | name >> beam.FlatMap(lambda out, tag: [out[1]] if out[0] == tag else [], tag)
        for name, tag in (("Records", "records"), ("Sizes", "size"), ("StoreRows", "store")))
    written = (records
               | "ByShard" >> beam.GroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShard(job_dir)))
    datasets = pipeline | "Datasets" >> beam.Create([(p.out_dir, None) for p in job.active])
    return ({"todo": datasets, "sha256": written}
            | "ByDataset" >> beam.CoGroupByKey()
            | "WriteManifests" >> beam.ParDo(WriteManifest(job_dir),
                                             sizes=beam.pvalue.AsList(sizes),
                                             store_rows=beam.pvalue.AsList(store_rows)))


def pipeline_options(runner, beam_args: Sequence[str], workers: int | None) -> PipelineOptions:
    """Beam's options from the command line's leftover flags. `DirectRunner` runs Beam's Python
    batch runner (FnApiRunner) in multi-process mode, one worker per core unless
    `--direct_num_workers`/`--direct_running_mode` say otherwise: Beam's DirectRunner would
    first try to download the Prism runner from GitHub."""
    if isinstance(runner, str) and runner not in build_plan.BEAM_RUNNERS:
        raise ValueError(f"--runner={runner!r}: expected local or one of {build_plan.BEAM_RUNNERS}")
    options = PipelineOptions(list(beam_args))
    unknown = sorted(set(options.get_all_options(retain_unknown_options=True))
                     - set(options.get_all_options()))
    if unknown:  # Beam would only log that it drops them: a misspelt flag must not pass silently
        raise cli.UsageError(f"unknown flags {['--' + u for u in unknown]}: neither "
                             "create_tfrecords.py's nor Beam's pipeline options")
    temp = options.view_as(GoogleCloudOptions).temp_location
    if isinstance(runner, str) and runner != "DirectRunner" and not temp:
        raise cli.UsageError(f"--runner={runner} needs --temp_location (gs://BUCKET/DIR, or a "
                             "directory every worker mounts): the workers read the build plan there")
    if runner == "DirectRunner":
        direct = options.view_as(DirectOptions)
        given = " ".join(beam_args)
        if "--direct_running_mode" not in given:
            direct.direct_running_mode = "multi_processing"
        if "--direct_num_workers" not in given:
            direct.direct_num_workers = workers or os.cpu_count() or 1
    return options


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (from /proc; none where there is no /proc)."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat, "rb") as f:
                parents[int(stat.split("/")[2])] = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


@contextlib.contextmanager
def _workers_die_with_launcher():
    """While the pipeline runs: SIGTERM or SIGINT to the launching process first kills the
    processes it started (the DirectRunner's SDK workers, which Beam starts as plain
    subprocesses: they would outlive it), then ends it as the signal would have (SIGINT as
    KeyboardInterrupt, so the temporary plan is still removed)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        for pid in _descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    saved = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _runner(runner):
    if runner == "DirectRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        return FnApiRunner()
    return runner


def build(data_dir: str, out_root: str, specs: Sequence[frames.DatasetSpec], want_store: bool,
          runner: str = "DirectRunner", beam_args: Sequence[str] = (),
          shards_per_fold: int = build_plan.SHARDS_PER_FOLD, encoding: str = "jpeg",
          quality: int = 95, workers: int | None = None, overwrite: bool = False,
          chunk_frames: int = 128, log: Callable[[str], None] = print, mean_rounding: str = "round",
          order_seed: int = 0, image_dir: str | None = None,
          wind_speed_range: tuple[int, int] = validate.WIND_SPEED_RANGE,
          storm_records: type[StormRecords] = StormRecords) -> list[dict]:
    """`builder.build_datasets` (and `store.build_store` when `want_store`) on a Beam runner
    (one of `build_plan.BEAM_RUNNERS`, or a `PipelineRunner`): the same arguments, the same output; returns the
    manifests (the store's last).

    If the pipeline fails, the shards it wrote for datasets without a manifest are removed, as
    after a failed local build; a re-run (here or local) completes the others.
    """
    options = pipeline_options(runner, beam_args, workers)  # bad Beam flags fail before any work
    datasets = (build_plan.prepare_build(data_dir, out_root, specs, shards_per_fold, encoding, quality,
                                         workers, overwrite, chunk_frames, log, mean_rounding,
                                         order_seed, image_dir, wind_speed_range) if specs else None)
    sources = datasets.plans[0].key["sources"] if datasets else None  # frames hashed once
    frame_store = (store.plan_store(data_dir, out_root, shards_per_fold, workers, overwrite, log,
                                    image_dir, wind_speed_range, sources) if want_store else None)
    job = _job(datasets, frame_store)
    if job.active:
        temp = options.view_as(GoogleCloudOptions).temp_location
        local_temp = None if temp else tempfile.mkdtemp(prefix="tpuflow-beam-")
        job_dir = storage.join(temp or local_temp, f"tpuflow-build-{uuid.uuid4().hex}")
        storm_files = write_job(job, job_dir)
        log(f"building {[p.out_dir for p in job.active]} on {runner}")
        result, ended = None, True
        try:
            pipeline = beam.Pipeline(runner=_runner(runner), options=options)
            expand(pipeline, job, job_dir, storm_files, storm_records)
            with _workers_die_with_launcher():
                result = pipeline.run()
                result.wait_until_finish()
        except Exception:  # not on Ctrl-C: a cluster's job may still be running
            ended = result is None or _state(result) in (PipelineState.FAILED, PipelineState.CANCELLED)
            if ended:
                _clean_up(job.active)
            else:  # e.g. the launcher lost the runner while the job runs on: its files stay
                log(f"the job's state is {_state(result)}: its output and plan ({job_dir}) are left "
                    "in place; re-run this command once it has ended to check or complete it")
            raise
        finally:
            if ended:
                storage.remove(job_dir)
                if local_temp:
                    shutil.rmtree(local_temp, ignore_errors=True)
        for plan in job.active:
            log(f"{plan.out_dir}: {'repaired' if plan.old else 'built'}")
    plans = (datasets.plans if datasets else []) + ([frame_store.plan] if frame_store else [])
    return [storage.read_json(storage.join(p.out_dir, shard_names.MANIFEST)) for p in plans]


def _state(result) -> str:
    """The job's state, or UNKNOWN if the runner cannot be asked."""
    try:
        return result.state
    except Exception:  # noqa: BLE001 (whatever the runner's client raises)
        return PipelineState.UNKNOWN


def _clean_up(plans: Sequence[build_encode.DatasetPlan]) -> None:
    """After a failed pipeline: the shards of datasets without a manifest (a repaired dataset
    keeps its shards: each was checked against its manifest before it was renamed)."""
    for plan in plans:
        if plan.old is None and storage.exists(plan.out_dir):
            for name in plan.todo:
                storage.remove(storage.join(plan.out_dir, name))
            if not storage.listdir(plan.out_dir):
                storage.remove(plan.out_dir)
