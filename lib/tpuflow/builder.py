"""Builds many fold-sharded TFRecord datasets in one parallel, resumable pass over the frames.

"Which frames make an example" comes from `tpuflow.frames`. This module plans the output (every
frame is one example of every spec, so the examples of each fold, their order and their shard
are known from the CSVs before any image is read), then makes one pass over the storms:

- worker processes take a storm in chunks of consecutive frames, read and decode each frame once
  (the decode also validates frames stored as they are) and encode the `stacked`/`mean` images of
  every spec: JPEG with RGB channels and no subsampling (the channels are different frames; see
  `encode_image`) or PNG (lossless);
- the parent takes the chunk results in storm order, assembles the records (`single`/`sequence`
  records hold the source JPEG bytes: no re-encoding, bit-exact) and writes them to the open
  shard of each (spec, fold), so the bytes do not depend on the number of workers.

Memory stays bounded by the chunks in flight (at most 2 per worker), each holding `chunk_frames`
source frames plus their encoded `stacked`/`mean` images, and by the parent's copy of the source
bytes of the current storm (for `sequence` history). Neither TensorFlow nor any intermediate
per-example file is involved (see `tpuflow.recordio`).

Shards are written under a temporary name and renamed; `manifest.json` (spec, encoding, counts,
sha256 per shard, source CSV hashes) comes last. A re-run skips datasets whose manifest matches
and whose shards check out, and rewrites only missing or damaged shards.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import multiprocessing
import os
import sys
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from tpuflow import __version__, frames, recordio, split, storage

ENCODINGS = ("jpeg", "png")
BUILD_FORMAT = 2  # bump when the same inputs and flags would give different record bytes
SOURCES = ("train_cv.csv", "test_cv.csv")
_SHARD_PATTERNS = ("fold.*.tfrecord-*", "test.tfrecord-*")
_PIXEL_KINDS = ("stacked", "mean")  # kinds whose images are computed (the others copy bytes)


# ---------------------------------------------------------------------------------------------
# Frames: reading, decoding, encoding (worker side; no TensorFlow)


def load_frame_table(data_dir: str) -> pd.DataFrame:
    """train_cv + test_cv rows ordered by storm and time, with `split` and `prefix` (the shard
    file prefix: `fold.<k>` or `test`)."""
    cols = ("image_id", "storm_id", "relative_time", "image_path", "frame_id", "wind_speed",
            "wind_speed_le", "fold_id")
    train = split.read_csv(storage.join(data_dir, "train_cv.csv"), cols).assign(split="train")
    test = split.read_csv(storage.join(data_dir, "test_cv.csv"), cols).assign(split="test")
    bad = train.loc[train["fold_id"] < 0, "image_id"].tolist()
    if bad:
        raise ValueError(f"{storage.join(data_dir, 'train_cv.csv')}: negative fold_id for image ids "
                         f"{bad[:10]}")
    table = frames.order_storm_frames(pd.concat([train, test], ignore_index=True))
    table["prefix"] = np.where(table["split"] == "test", "test",
                               "fold." + table["fold_id"].astype(str))
    return table


def decode_frame(data: bytes, path: str) -> np.ndarray:
    """Grayscale frame as uint8 (H, W); a clear error naming the file if it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L"))
    except Exception as err:  # PIL raises several types for damaged files
        raise ValueError(f"{path}: unreadable image ({err})") from err


def encode_image(pixels: np.ndarray, encoding: str, quality: int) -> bytes:
    """(H, W, C) uint8 -> JPEG or PNG bytes.

    A 3-channel JPEG is stored as RGB, not YCbCr (`keep_rgb`), and without subsampling: the
    channels are three different frames, so each is coded on its own like a grayscale frame.
    The usual YCbCr transform would mix them into two chroma planes, which JPEG quantises more
    coarsely (and 4:2:0 would also halve their resolution): at quality 95 on 366x366 frames,
    YCbCr 4:4:4 leaves a mean error of 2-4 levels per channel, RGB about 0.6, for 40% more bytes.
    """
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if encoding == "jpeg":
        image.save(buf, format="JPEG", quality=quality, subsampling=0, keep_rgb=True)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def mean_image(cumsum: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 channel means of the frame runs [starts[c], stops[c]), rounded half up.

    `cumsum[i]` is the sum of the first i frames, kept modulo 2**16 (or 2**32): a difference of
    two entries is still the exact sum of a run as long as that sum fits the type, which holds
    for runs of up to 257 frames (2**16 > 257 * 255). That keeps the sums at 2 bytes a pixel.
    """
    out = np.empty((*cumsum.shape[1:], 3), np.uint8)
    for c in range(3):  # one channel at a time, in uint32: 5x faster than one int64 expression
        n = int(stops[c] - starts[c])
        sums = (cumsum[stops[c]] - cumsum[starts[c]]).astype(np.uint32)
        out[..., c] = (2 * sums + n) // (2 * n)
    return out


def _size(shape) -> str:
    return f"{shape[1]}x{shape[0]}"  # width x height, as image tools print sizes


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """Frames [start, stop) of one storm, for a worker. Paths cover [read_from, stop): the chunk
    plus the history it needs: pixels from `pixel_from` for the images, source bytes from
    `raw_from` (sent back for `single`/`sequence` records). `images` lists, per stacked/mean
    spec, the positions whose image to encode."""
    storm_id: str
    paths: tuple[str, ...]
    read_from: int
    pixel_from: int
    start: int
    stop: int
    raw_from: int
    images: tuple[tuple[frames.DatasetSpec, tuple[int, ...]], ...]
    encoding: str
    quality: int


@dataclasses.dataclass
class ChunkResult:
    raw: list[bytes]  # source bytes of positions [task.raw_from, task.stop)
    shape: tuple[int, int]
    images: dict  # spec -> encoded images, one per requested position


def run_chunk(task: ChunkTask) -> ChunkResult:
    """Reads and decodes every frame of a chunk once and encodes its stacked/mean images.

    Frames of the chunk are all decoded (validating them: a damaged JPEG fails here, naming its
    file, not hours later in training); history frames only when an image needs them.
    """
    lo, pixel_from = task.read_from, task.pixel_from
    data = [storage.read_bytes(p) for p in task.paths]
    decoded = {i: decode_frame(data[i - lo], task.paths[i - lo]) for i in range(pixel_from, task.stop)}
    shape = decoded[task.start].shape
    for i, frame in decoded.items():
        if frame.shape != shape:
            raise ValueError(f"{task.paths[i - lo]} (storm {task.storm_id!r}): frame size "
                             f"{_size(frame.shape)} differs from {_size(shape)} of "
                             f"{task.paths[task.start - lo]}")
    images = {}
    steps = [spec.step for spec, _ in task.images if spec.kind == "mean"]
    if steps:  # running sums of the chunk's frames: every mean is one subtraction
        dtype = np.uint16 if max(steps) <= 257 else np.uint32
        cumsum = np.zeros((task.stop - pixel_from + 1, *shape), dtype)
        np.cumsum(np.stack([decoded[i] for i in range(pixel_from, task.stop)]), axis=0,
                  dtype=dtype, out=cumsum[1:])
    for spec, positions in task.images:
        starts, stops = frames.storm_ranges(spec, task.stop)
        out = []
        for t in positions:
            if spec.kind == "stacked":
                pixels = np.stack([decoded[i] for i in starts[t]], axis=-1)
            else:
                pixels = mean_image(cumsum, starts[t] - pixel_from, stops[t] - pixel_from)
            out.append(encode_image(pixels, task.encoding, task.quality))
        images[spec] = out
    return ChunkResult(data[task.raw_from - lo:], shape, images)


# ---------------------------------------------------------------------------------------------
# Planning: which examples, which shards, what is already there


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (hex), as `sha256sum` prints it."""
    digest = hashlib.sha256()
    if storage.is_gcs(path):
        digest.update(storage.read_bytes(path))
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def build_key(spec: frames.DatasetSpec, encoding: str, quality: int, shards_per_fold: int,
              sources: dict[str, str]) -> dict:
    """What decides a dataset's bytes: a manifest with an equal key describes the same dataset."""
    pixels = spec.kind in _PIXEL_KINDS
    return {"format": BUILD_FORMAT, "spec": spec.to_string(),
            "encoding": encoding if pixels else "source",
            "quality": quality if pixels and encoding == "jpeg" else None,
            "shards_per_fold": shards_per_fold, "sources": sources}


@dataclasses.dataclass
class DatasetPlan:
    """One spec's output: its directory, key, and the shards still to write (all on a fresh
    build; the missing or damaged ones when resuming from a manifest)."""
    spec: frames.DatasetSpec
    out_dir: str
    key: dict
    old: dict | None  # the matching manifest being repaired, if any
    todo: set[str]


def _shard_files(out_dir: str) -> list[str]:
    if not storage.exists(out_dir):
        return []
    return sorted(p for pattern in _SHARD_PATTERNS for p in storage.glob(storage.join(out_dir, pattern)))


def _describe(key: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items() if k != "sources") + \
        f", sources={key.get('sources')}"


def plan_dataset(spec: frames.DatasetSpec, out_dir: str, key: dict, shard_names: Sequence[str],
                 overwrite: bool, log: Callable[[str], None]) -> DatasetPlan:
    """Decides what to write for one dataset, clearing what cannot be kept.

    - a manifest with the same key: shards whose sha256 checks out are kept, the others redone;
    - a manifest of another dataset: an error naming both, unless `overwrite`;
    - no manifest (an interrupted first build): leftover shard files are removed.
    Shard files that are not part of the planned dataset are removed either way, so a reader's
    `fold.<k>.tfrecord-*` glob finds exactly the dataset's shards.
    """
    manifest_path = storage.join(out_dir, recordio.MANIFEST)
    old = None
    if storage.exists(manifest_path):
        try:
            old = storage.read_json(manifest_path)
        except ValueError as err:
            if not overwrite:
                raise ValueError(f"{manifest_path}: unreadable manifest ({err}); pass --overwrite "
                                 "to rebuild the dataset") from err
        if old is not None and old.get("build") != key:
            if not overwrite:
                theirs = old.get("build") or {"spec": old.get("spec"), "format": "unknown"}
                raise ValueError(
                    f"{out_dir} holds a different dataset: [{_describe(theirs)}], not "
                    f"[{_describe(key)}]; pass --overwrite to replace it, or choose another "
                    "--out_dir")
            log(f"{out_dir}: replacing dataset [{_describe(old.get('build') or {})}] (--overwrite)")
            old = None
        if old is None:
            storage.remove(manifest_path)
    todo = set(shard_names)
    if old is not None:
        for name in shard_names:
            path = storage.join(out_dir, name)
            if storage.exists(path) and file_sha256(path) == old["sha256"].get(name):
                todo.discard(name)
            else:
                log(f"{path}: missing or damaged; rewriting it")
    for path in _shard_files(out_dir):
        name = os.path.basename(path)
        if old is None or name not in shard_names:
            storage.remove(path)
    return DatasetPlan(spec, out_dir, key, old, todo)


# ---------------------------------------------------------------------------------------------
# Writing


class _Discarded(Exception):
    """Thrown into `storage.atomic_path` to drop its temporary file instead of renaming it."""


class _AtomicFile:
    """`storage.atomic_path` held open across calls: `commit` renames (or uploads), `discard`
    deletes the temporary file."""

    def __init__(self, path: str):
        self._context = storage.atomic_path(path)
        self.file = open(self._context.__enter__(), "wb", buffering=1 << 20)

    def commit(self) -> None:
        self.file.close()
        self._context.__exit__(None, None, None)

    def discard(self) -> None:
        self.file.close()
        self._context.__exit__(_Discarded, _Discarded(), None)


class ShardWriter:
    """Writes the examples of one (dataset, prefix), in order, to the shards still to write.

    The example -> shard assignment is fixed by `recordio.shard_bounds`; each shard goes to a
    temporary name and is renamed when its last example is in. A shard redone against a
    manifest must come out with the recorded sha256 (else the sources changed since).
    """

    def __init__(self, plan: DatasetPlan, prefix: str, count: int, n_shards: int):
        self.plan = plan
        self.bounds = recordio.shard_bounds(count, n_shards)
        self.names = [recordio.shard_name(prefix, i, n_shards) for i in range(n_shards)]
        self.sha256: dict[str, str] = {}
        self.finished: list[str] = []
        self._shard = -1
        self._out: _AtomicFile | None = None
        self._writer: recordio.RecordWriter | None = None

    def shard_of(self, index: int) -> int:
        return next(i for i, (a, b) in enumerate(self.bounds) if a <= index < b)

    def wants(self, index: int) -> bool:
        return self.names[self.shard_of(index)] in self.plan.todo

    def write(self, index: int, record: bytes) -> None:
        """Writes the example at `index` (examples of a shard arrive in order, without gaps)."""
        shard = self.shard_of(index)
        if self._out is None:
            self._shard = shard
            self._out = _AtomicFile(storage.join(self.plan.out_dir, self.names[shard]))
            self._writer = recordio.RecordWriter(self._out.file)
        if shard != self._shard:
            raise RuntimeError(f"{self.names[self._shard]}: example {index} arrived before the "
                               "shard was complete")
        self._writer.write(record)
        if self._writer.count == self.bounds[shard][1] - self.bounds[shard][0]:
            self._finish()

    def _finish(self) -> None:
        name = self.names[self._shard]
        digest = self._writer.sha256()
        expected = self.plan.old["sha256"].get(name) if self.plan.old else None
        out, self._out = self._out, None
        if expected is not None and digest != expected:
            out.discard()
            raise ValueError(f"{storage.join(self.plan.out_dir, name)}: rebuilt shard differs from "
                             "its manifest (source frames changed since the build?); pass "
                             "--overwrite to rebuild the whole dataset")
        out.commit()
        self.sha256[name] = digest
        self.finished.append(name)

    def abort(self) -> None:
        """Drops the shard being written (its temporary file goes away)."""
        if self._out is not None:
            self._out.discard()
            self._out = None


# ---------------------------------------------------------------------------------------------
# The pass over the storms


@dataclasses.dataclass
class _Chunk:
    """Parent-side bookkeeping of a ChunkTask: per position, the example's prefix, index in
    the prefix and features but the image; per spec, the positions to write."""
    rows: dict  # position -> (prefix, example index, features without `image`)
    wanted: dict  # spec -> list of positions in [start, stop)
    storm_length: int


def check_frames_exist(table: pd.DataFrame) -> None:
    """Fails before any work if a listed frame file is missing, naming it and its storm."""
    missing = []
    for directory, group in table.groupby(table["image_path"].map(os.path.dirname), sort=True):
        try:
            present = set(storage.listdir(directory))
        except FileNotFoundError:
            present = set()
        lost = group[~group["image_path"].map(os.path.basename).isin(present)]
        missing += [f"{r.image_path} (storm {r.storm_id!r}, image_id {r.image_id!r})"
                    for r in lost.itertuples()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} frame(s) listed in the CSVs but missing, e.g. "
                                + "; ".join(missing[:5]))


def _chunk_tasks(table: pd.DataFrame, plans: Sequence[DatasetPlan], writers: dict,
                 chunk_frames: int, encoding: str, quality: int) -> Iterator[tuple[ChunkTask, _Chunk]]:
    """The chunks to compute, in storm and time order, skipping chunks with nothing to write."""
    copy_specs = [p.spec for p in plans if p.spec.kind not in _PIXEL_KINDS]
    raw_span = max([s.history_span for s in copy_specs], default=0)
    for storm_id, storm in table.groupby("storm_id", sort=True):
        paths = storm["image_path"].tolist()
        previous_done = False
        for start in range(0, len(storm), chunk_frames):
            stop = min(start + chunk_frames, len(storm))
            rows = {t: (r.prefix, r.example_index, example_features(r))
                    for t, r in zip(range(start, stop), storm.iloc[start:stop].itertuples())}
            wanted = {}
            for plan in plans:
                keep = [t for t, (prefix, index, _) in rows.items()
                        if writers[plan.spec, prefix].wants(index)]
                if keep:
                    wanted[plan.spec] = keep
            if not wanted:
                previous_done = False
                continue
            images = tuple((s, tuple(ts)) for s, ts in wanted.items() if s.kind in _PIXEL_KINDS)
            pixel_from = min([start] + [int(frames.storm_ranges(s, t + 1)[0][t].min())
                                        for s, ts in images for t in ts[:1]])
            if not copy_specs:
                raw_from = stop
            else:
                raw_from = start if previous_done else max(0, start - raw_span)
            read_from = min(pixel_from, raw_from, start)
            task = ChunkTask(str(storm_id), tuple(paths[read_from:stop]), read_from, pixel_from,
                             start, stop, raw_from, images, encoding, quality)
            previous_done = True
            yield task, _Chunk(rows, wanted, len(storm))


def _computed(tasks: Iterator[tuple[ChunkTask, _Chunk]], workers: int
              ) -> Iterator[tuple[ChunkTask, _Chunk, ChunkResult]]:
    """Runs `run_chunk` over the tasks, in order, with at most 2 chunks per worker in flight."""
    if workers == 1:
        for task, chunk in tasks:
            yield task, chunk, run_chunk(task)
        return
    # fork starts workers at once, but TensorFlow's threads do not survive a fork: when the
    # parent has imported it (tests, notebooks), spawn fresh interpreters instead.
    method = "spawn" if "tensorflow" in sys.modules or sys.platform != "linux" else "fork"
    pool = concurrent.futures.ProcessPoolExecutor(workers, multiprocessing.get_context(method))
    try:
        pending = collections.deque()
        for task, chunk in tasks:
            pending.append((task, chunk, pool.submit(run_chunk, task)))
            if len(pending) >= 2 * workers:
                task, chunk, future = pending.popleft()
                yield task, chunk, future.result()
        while pending:
            task, chunk, future = pending.popleft()
            yield task, chunk, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def example_features(row) -> dict:
    """The features of one frame's record but its `image`: the DESIGN.md ones (image_id, label,
    label_le) plus storm, fold, frame and time."""
    return {
        "image_id": row.image_id,
        "label": int(row.wind_speed), "label_le": int(row.wind_speed_le),
        "storm_id": str(row.storm_id), "fold_id": int(row.fold_id),
        "frame_id": int(row.frame_id), "relative_time": int(row.relative_time),
    }


def _write_pass(table: pd.DataFrame, plans: Sequence[DatasetPlan], writers: dict,
                image_size: list | None, chunk_frames: int, encoding: str, quality: int,
                workers: int, log: Callable[[str], None]) -> list[int]:
    """Computes every wanted example and hands it to its writer; returns the frame size."""
    copy_span = max([p.spec.history_span for p in plans if p.spec.kind not in _PIXEL_KINDS],
                    default=0)
    raw: dict[int, bytes] = {}
    storm_id, first_path = None, None
    indices = {}
    n_storms, done = table["storm_id"].nunique(), 0
    tasks = _chunk_tasks(table, plans, writers, chunk_frames, encoding, quality)
    for task, chunk, result in _computed(tasks, workers):
        if task.storm_id != storm_id:
            storm_id, raw, indices = task.storm_id, {}, {}
            done += 1
            if done % max(1, n_storms // 10) == 0:
                log(f"storm {done}/{n_storms}")
        if image_size is None:
            image_size, first_path = list(result.shape), task.paths[task.start - task.read_from]
        elif list(result.shape) != image_size:
            raise ValueError(f"{task.paths[task.start - task.read_from]} (storm {task.storm_id!r}): "
                             f"frame size {_size(result.shape)} differs from {_size(image_size)} of "
                             f"{first_path or 'the dataset in its manifest'}")
        raw.update(zip(range(task.raw_from, task.stop), result.raw))
        for spec, positions in chunk.wanted.items():
            if spec.kind == "sequence" and spec not in indices:
                indices[spec] = frames.storm_indices(spec, chunk.storm_length)
            encoded = iter(result.images.get(spec, ()))
            for t in positions:
                prefix, index, features = chunk.rows[t]
                if spec.kind == "single":
                    images = [raw[t]]
                elif spec.kind == "sequence":
                    images = [raw[i] for i in indices[spec][t]]
                else:
                    images = [next(encoded)]
                writers[spec, prefix].write(index, recordio.encode_example({**features, "image": images}))
        for i in [i for i in raw if i < task.stop - copy_span]:
            del raw[i]
    return image_size


# ---------------------------------------------------------------------------------------------
# Entry points


def _check_options(specs, shards_per_fold, encoding, quality, workers, chunk_frames) -> None:
    if not specs:
        raise ValueError("no dataset specs given")
    if encoding not in ENCODINGS:
        raise ValueError(f"--encoding={encoding!r}: expected one of {ENCODINGS}")
    checks = [("--shards_per_fold", shards_per_fold, 1, None), ("--quality", quality, 1, 100),
              ("--workers", workers, 1, None), ("--chunk_frames", chunk_frames, 1, None)]
    for name, value, low, high in checks:
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            raise ValueError(f"{name}={value!r}: expected an integer >= {low}"
                             + (f" and <= {high}" if high is not None else ""))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset specs repeat a dataset: {[str(s) for s in specs]}")


def build_datasets(data_dir: str, out_root: str, specs: Sequence[frames.DatasetSpec],
                   shards_per_fold: int = 1, encoding: str = "jpeg", quality: int = 95,
                   workers: int | None = None, overwrite: bool = False, chunk_frames: int = 128,
                   log: Callable[[str], None] = print) -> list[dict]:
    """Builds (or completes) `<out_root>/<spec.name>/` for every spec; returns their manifests.

    One pass over the storms serves every spec; `workers` processes (default: all cores)
    compute chunks of `chunk_frames` frames. Datasets whose manifest matches are kept (damaged
    or missing shards are rewritten); a directory holding another dataset is an error unless
    `overwrite`. If the build fails, the shards it wrote for datasets without a manifest are
    removed again, so no half-built dataset is left behind.
    """
    workers = workers or os.cpu_count() or 1
    _check_options(specs, shards_per_fold, encoding, quality, workers, chunk_frames)
    table = load_frame_table(data_dir)
    check_frames_exist(table)
    n_folds = int(table.loc[table["split"] == "train", "fold_id"].max()) + 1
    prefixes = [f"fold.{k}" for k in range(n_folds)] + ["test"]
    found = table["prefix"].value_counts()
    counts = {p: int(found.get(p, 0)) for p in prefixes}
    empty = [p for p in prefixes if not counts[p]]
    if empty:
        raise ValueError(f"{data_dir}: no frames for {empty} (check fold_id in train_cv.csv and "
                         "test_cv.csv)")
    # Examples of a prefix are numbered in storm and time order: that order is the shard order.
    table["example_index"] = table.groupby("prefix", sort=False).cumcount()
    n_shards = {p: min(shards_per_fold, counts[p]) for p in prefixes}
    shard_names = [recordio.shard_name(p, i, n_shards[p]) for p in prefixes for i in range(n_shards[p])]
    sources = {name: file_sha256(storage.join(data_dir, name)) for name in SOURCES}

    plans = [plan_dataset(spec, storage.join(out_root, spec.name),
                          build_key(spec, encoding, quality, shards_per_fold, sources),
                          shard_names, overwrite, log) for spec in specs]
    active = [p for p in plans if p.todo]
    for plan in plans:
        if not plan.todo:
            log(f"{plan.out_dir}: up to date (manifest and shard checksums match)")
    writers = {(p.spec, prefix): ShardWriter(p, prefix, counts[prefix], n_shards[prefix])
               for p in active for prefix in prefixes}
    manifests = {id(p): p.old for p in plans if not p.todo}
    if active:
        repaired = [p.old["image_size"] for p in active if p.old is not None]
        try:
            image_size = _write_pass(table, active, writers, repaired[0] if repaired else None,
                                     chunk_frames, encoding, quality, workers, log)
        except BaseException:
            _clean_up(active, writers.values())
            raise
        for plan in active:
            written = {n for w in writers.values() if w.plan is plan for n in w.finished}
            if written != plan.todo:
                raise RuntimeError(f"{plan.out_dir}: shards not written: {sorted(plan.todo - written)}")
            if plan.old is not None:  # repaired: every shard matches the recorded checksum
                manifests[id(plan)] = plan.old
                continue
            sha = {n: d for w in writers.values() if w.plan is plan for n, d in w.sha256.items()}
            manifest = _manifest(plan, encoding, n_folds, image_size, counts, n_shards, sha)
            storage.write_json(storage.join(plan.out_dir, recordio.MANIFEST), manifest)
            manifests[id(plan)] = manifest
            log(f"{plan.out_dir}: {manifest['counts']}")
    return [manifests[id(p)] for p in plans]


def _clean_up(plans: Sequence[DatasetPlan], writers) -> None:
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


def _manifest(plan: DatasetPlan, encoding: str, n_folds: int, image_size: list, counts: dict,
              n_shards: dict, sha256: dict) -> dict:
    spec = plan.spec
    shards = {}
    for prefix, n in n_shards.items():
        for i, (a, b) in enumerate(recordio.shard_bounds(counts[prefix], n)):
            shards[recordio.shard_name(prefix, i, n)] = b - a
    pixels = spec.kind in _PIXEL_KINDS
    return {
        "build": plan.key, "spec": spec.to_string(), "kind": spec.kind, "n_frames": spec.n_frames,
        "step": spec.step, "channels": spec.channels, "images_per_example": spec.images_per_example,
        "encoding": plan.key["encoding"], "quality": plan.key["quality"],
        "jpeg_color": "RGB channels, no YCbCr, no subsampling" if pixels and encoding == "jpeg" else None,
        "image_size": image_size, "n_folds": n_folds, "counts": counts, "shards": shards,
        "sha256": dict(sorted(sha256.items())), "sources": plan.key["sources"],
        "tpuflow_version": __version__,
    }


def verify_dataset(tfrec_dir: str) -> dict[str, str]:
    """Checks every shard listed in a dataset's manifest against its sha256.

    Returns {shard name: 'ok' | 'missing' | 'damaged'}; shard files the manifest does not list
    are reported as 'unlisted'.
    """
    manifest = storage.read_json(storage.join(tfrec_dir, recordio.MANIFEST))
    status = {}
    for name, digest in manifest["sha256"].items():
        path = storage.join(tfrec_dir, name)
        status[name] = ("missing" if not storage.exists(path)
                        else "ok" if file_sha256(path) == digest else "damaged")
    for path in _shard_files(tfrec_dir):
        status.setdefault(os.path.basename(path), "unlisted")
    return status


def explain_examples(data_dir: str, specs: Sequence[frames.DatasetSpec],
                     image_ids: Sequence[str]) -> list[str]:
    """`frames.explain` lines (which source frames each channel or step uses) for the given
    image ids, one per (image id, spec), with frames ordered as the builder orders them."""
    table = load_frame_table(data_dir)
    positions = dict(zip(table["image_id"], table[frames.POSITION_COLUMN]))
    storms = dict(zip(table["image_id"], table["storm_id"]))
    unknown = [i for i in image_ids if i not in positions]
    if unknown:
        raise ValueError(f"--explain: image ids not in train_cv.csv/test_cv.csv: {unknown}")
    lines = []
    for image_id in image_ids:
        storm = table.loc[table["storm_id"] == storms[image_id], "image_id"].tolist()
        lines += [frames.explain(spec, storm, int(positions[image_id])) for spec in specs]
    return lines
