"""Builds many fold-sharded TFRecord datasets in one parallel, resumable pass over the frames.

"Which frames make an example" comes from `tpuflow.frames`. This module plans the output (every
frame is one example of every spec, so the examples of each fold, their order and their shard
are known from the CSVs before any image is read), then makes one pass over the storms:

- worker processes take a storm in chunks of consecutive frames, read and decode each frame once
  (the decode also validates frames stored as they are) and encode the `stacked`/`mean` images of
  every spec: JPEG with RGB channels and no subsampling (the channels are different frames; see
  `encode_image`) or PNG (lossless);
- the parent takes the chunk results in storm order, assembles the records (`single`/`sequence`
  records hold the source JPEG bytes: no re-encoding, bit-exact) and spills them to one
  unlinked temporary file per (spec, fold); at the end of the pass each shard is written from
  it in the fold's seeded shuffled record order (`example_order`: batches then mix storms), so
  the bytes do not depend on the number of workers.

Memory stays bounded by the chunks in flight (at most 2 per worker), each holding `chunk_frames`
source frames plus their encoded `stacked`/`mean` images, and by the parent's copy of the source
bytes of the current storm (for `sequence` history); the spills hold only offsets in memory.
Neither TensorFlow nor any intermediate per-example file is involved (see `tpuflow.recordio`).

The build is planned first (`prepare_build` -> `BuildPlan`: examples, order, shards, what an
existing output already holds), records are assembled in one place (`RecordAssembler`) and
shards written in one (`write_shard`): `tpuflow.beam_build` runs the same three on Apache Beam,
so both paths write the same bytes.

Shards are written under a temporary name and renamed; `manifest.json` (spec, encoding, counts,
sha256 per shard, hashes of the CSVs and of every frame) comes last. A re-run skips datasets
whose manifest matches and whose shards check out, rewrites only missing or damaged shards,
rebuilds datasets whose CSVs or frames changed, and removes the `.tmp-*` files a killed run
left. Workers die with the builder, even when it is killed with SIGKILL.
"""
from __future__ import annotations

import bisect
import collections
import concurrent.futures
import ctypes
import dataclasses
import hashlib
import io
import multiprocessing
import os
import signal
import sys
import tempfile
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from tpuflow import __version__, frames, recordio, split, storage, tables, validate

ENCODINGS = ("jpeg", "png")
MEAN_ROUNDINGS = ("round", "truncate")
SHARDS_PER_FOLD = 16  # shuffled shards read in parallel: 4 training folds -> 64 files to interleave
BUILD_FORMAT = 3  # bump when the same inputs and flags would give different record bytes
SOURCES = ("train_cv.csv", "test_cv.csv")
_SHARD_PATTERNS = ("fold.*.tfrecord-*", "test.tfrecord-*", "frames.tfrecord-*")  # frames: tpuflow.store
BEAM_RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")  # tpuflow.beam_build
_PIXEL_KINDS = ("stacked", "mean")  # kinds whose images are computed (the others copy bytes)


# ---------------------------------------------------------------------------------------------
# Frames: reading, decoding, encoding (worker side; no TensorFlow)


def _read_split_csv(data_dir: str, name: str, image_dir: str,
                    wind_speed_range: tuple[int, int]) -> pd.DataFrame:
    """One of train_cv.csv / test_cv.csv, checked, with `image_path` resolved inside `image_dir`.

    Reads the reference's files as they are: rows in any order, `image_path` relative to the
    data dir, test rows without `fold_id` or labels; `wind_speed_le` and `frame_id` are derived
    when absent.
    """
    path = storage.join(data_dir, name)
    train = name == "train_cv.csv"
    required = ("image_id", "storm_id", "relative_time", "image_path") + (("wind_speed", "fold_id") if train else ())
    df = tables.read_table(path, required)
    df["relative_time"] = validate.numeric_column(df, "relative_time", path)
    if train:
        df["wind_speed"] = validate.wind_speeds(df, path, value_range=wind_speed_range)
        fold = validate.numeric_column(df, "fold_id", path)
        bad = np.flatnonzero(((fold < 0) | (fold != np.round(fold))).to_numpy())
        if len(bad):
            raise ValueError(f"{path}: row {validate.csv_row(int(bad[0]))}: fold_id "
                             f"{validate.shown(df['fold_id'].iloc[bad[0]])} is not a fold number (0, 1, ...)")
        df["fold_id"] = fold.astype(np.int64)
        if "wind_speed_le" not in df.columns:
            df["wind_speed_le"] = np.searchsorted(np.unique(df["wind_speed"]), df["wind_speed"])
    else:  # labels of test rows are placeholders; the reference writes no fold_id for them
        labels = pd.to_numeric(df.get("wind_speed", pd.Series(0, index=df.index)), errors="coerce")
        df["wind_speed"] = labels.fillna(split.TEST_PLACEHOLDER).round().astype(np.int64)
        df["wind_speed_le"] = 0
        df["fold_id"] = -1
    df["image_path"] = validate.resolve_frame_paths(df["image_path"], image_dir, path)
    return df.assign(split="train" if train else "test", csv_row=np.arange(len(df)))


def load_frame_table(data_dir: str, image_dir: str | None = None,
                     wind_speed_range: tuple[int, int] = validate.WIND_SPEED_RANGE) -> pd.DataFrame:
    """train_cv + test_cv rows ordered by storm and time, with `split`, `csv_row` (the row in its
    CSV) and `prefix` (the shard file prefix: `fold.<k>` or `test`). Frame paths are resolved
    against `image_dir` (default: `data_dir`) and must stay inside it."""
    image_dir = image_dir or data_dir
    train, test = (_read_split_csv(data_dir, name, image_dir, wind_speed_range) for name in SOURCES)
    table = frames.order_storm_frames(pd.concat([train, test], ignore_index=True))
    if "frame_id" not in table.columns or table["frame_id"].isna().any():
        table["frame_id"] = table[frames.POSITION_COLUMN]
    table["prefix"] = np.where(table["split"] == "test", "test",
                               "fold." + table["fold_id"].astype(str))
    return table


def example_order(table: pd.DataFrame, seed: int) -> np.ndarray:
    """Per row, its index among the examples of its shard prefix.

    Training folds: a seeded random permutation (of the rows in storm/time order, so it depends
    only on the CSVs and the seed, not on the workers): consecutive frames of a storm are near
    duplicates, and records written in storm order leave a reader's shuffle buffer holding few
    storms. Test: the row order of test_cv.csv (submission_format.csv order).
    """
    index = np.zeros(len(table), dtype=np.int64)
    for prefix, rows in table.groupby("prefix", sort=True).indices.items():
        if prefix == "test":
            index[rows] = np.argsort(np.argsort(table["csv_row"].to_numpy()[rows], kind="stable"))
        else:
            fold = int(prefix.split(".")[1])
            index[rows] = np.random.default_rng([seed, fold]).permutation(len(rows))
    return index


def frames_digest(table: pd.DataFrame, workers: int) -> str:
    """sha256 over every frame's image id, size and content hash: the part of the build key that
    makes an edited, replaced or truncated frame rebuild the datasets built from it."""
    def one(path: str) -> str:
        if storage.is_gcs(path):
            data = storage.read_bytes(path)
            return f"{len(data)} {hashlib.sha256(data).hexdigest()}"
        return f"{os.path.getsize(path)} {storage.file_sha256(path)}"
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib frees the GIL
        hashes = list(pool.map(one, table["image_path"]))
    digest = hashlib.sha256()
    for image_id, line in sorted(zip(table["image_id"].astype(str), hashes)):
        digest.update(f"{image_id} {line}\n".encode())
    return digest.hexdigest()


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


def mean_image(cumsum: np.ndarray, starts: np.ndarray, stops: np.ndarray,
               rounding: str = "round") -> np.ndarray:
    """(H, W, 3) uint8 channel means of the frame runs [starts[c], stops[c]), rounded half up
    (`round`) or truncated (`truncate`, the reference's `np.uint8(mean)`: 0.5 level darker on
    average, a bias the model learns but does not need).

    `cumsum[i]` is the sum of the first i frames, kept modulo 2**16 (or 2**32): a difference of
    two entries is still the exact sum of a run as long as that sum fits the type, which holds
    for runs of up to 257 frames (2**16 > 257 * 255). That keeps the sums at 2 bytes a pixel.
    """
    out = np.empty((*cumsum.shape[1:], 3), np.uint8)
    for c in range(3):  # one channel at a time, in uint32: 5x faster than one int64 expression
        n = int(stops[c] - starts[c])
        sums = (cumsum[stops[c]] - cumsum[starts[c]]).astype(np.uint32)
        out[..., c] = (2 * sums + n) // (2 * n) if rounding == "round" else sums // n
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
    mean_rounding: str = "round"


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
                pixels = mean_image(cumsum, starts[t] - pixel_from, stops[t] - pixel_from,
                                    task.mean_rounding)
            out.append(encode_image(pixels, task.encoding, task.quality))
        images[spec] = out
    return ChunkResult(data[task.raw_from - lo:], shape, images)


# ---------------------------------------------------------------------------------------------
# Planning: which examples, which shards, what is already there


def build_key(spec: frames.DatasetSpec, encoding: str, quality: int, shards_per_fold: int,
              sources: dict[str, str], order_seed: int = 0, mean_rounding: str = "round") -> dict:
    """What decides a dataset's bytes: a manifest with an equal key describes the same dataset.
    `sources` holds the CSVs' hashes and `frames`, the digest of every frame (`frames_digest`)."""
    pixels = spec.kind in _PIXEL_KINDS
    return {"format": BUILD_FORMAT, "spec": spec.to_string(),
            "encoding": encoding if pixels else "source",
            "quality": quality if pixels and encoding == "jpeg" else None,
            "mean_rounding": mean_rounding if spec.kind == "mean" else None,
            "shards_per_fold": shards_per_fold, "order_seed": order_seed, "sources": sources}


@dataclasses.dataclass
class DatasetPlan:
    """One spec's output: its directory, key, and the shards still to write (all on a fresh
    build; the missing or damaged ones when resuming from a manifest)."""
    spec: frames.DatasetSpec
    out_dir: str
    key: dict
    old: dict | None  # the matching manifest being repaired, if any
    todo: set[str]


def _remove_temporaries(out_dir: str) -> None:
    """Deletes the `.tmp-*` files a killed build left (partial shards, record spills)."""
    if not storage.is_gcs(out_dir) and os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if name.startswith(storage.TMP_PREFIX):
                os.remove(os.path.join(out_dir, name))


def _shard_files(out_dir: str) -> list[str]:
    if not storage.exists(out_dir):
        return []
    return sorted(p for pattern in _SHARD_PATTERNS for p in storage.glob(storage.join(out_dir, pattern)))


def _describe(key: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items() if k != "sources") + \
        f", sources={key.get('sources')}"


def _same_but_sources(old_key: dict | None, key: dict) -> bool:
    """Whether two build keys differ in their sources (CSVs, frames) only."""
    if not isinstance(old_key, dict) or not isinstance(old_key.get("sources"), dict):
        return False
    return {**old_key, "sources": None} == {**key, "sources": None}


def plan_dataset(spec: frames.DatasetSpec, out_dir: str, key: dict, shard_names: Sequence[str],
                 overwrite: bool, log: Callable[[str], None]) -> DatasetPlan:
    """Decides what to write for one dataset, clearing what cannot be kept.

    - a manifest with the same key: shards whose sha256 checks out are kept, the others redone;
    - a manifest of the same dataset built from other CSVs or frames: rebuilt;
    - a manifest of another dataset: an error naming both, unless `overwrite`;
    - no manifest (an interrupted first build): leftover shard files are removed.
    Shard files that are not part of the planned dataset are removed either way, so a reader's
    `fold.<k>.tfrecord-*` glob finds exactly the dataset's shards.
    """
    manifest_path = storage.join(out_dir, recordio.MANIFEST)
    old = None
    _remove_temporaries(out_dir)
    if storage.exists(manifest_path):
        try:
            old = storage.read_json(manifest_path)
        except ValueError as err:
            if not overwrite:
                raise ValueError(f"{manifest_path}: unreadable manifest ({err}); pass --overwrite "
                                 "to rebuild the dataset") from err
        stale = old is not None and old.get("build") != key and _same_but_sources(old.get("build"), key)
        if stale:  # same dataset, edited inputs: rebuilt, as `make` would
            changed = sorted(k for k in key["sources"] if old["build"]["sources"].get(k) != key["sources"][k])
            log(f"{out_dir}: inputs changed since the build ({', '.join(changed)}); rebuilding")
            old = None
        elif old is not None and old.get("build") != key:
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
            if storage.exists(path) and storage.file_sha256(path) == old["sha256"].get(name):
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


def write_shard(path: str, records: Iterable[bytes], expected: str | None = None) -> str:
    """Writes one TFRecord shard under a temporary name, renamed (on gs://, uploaded) only when
    complete and, when `expected` is given (a shard redone against its manifest), only if its
    sha256 is that; returns its sha256. Every builder writes its shards through here."""
    with storage.atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as f:
        writer = recordio.RecordWriter(f)
        for record in records:
            writer.write(record)
        if expected is not None and writer.sha256() != expected:  # raised before the rename
            raise ValueError(f"{path}: rebuilt shard differs from its manifest (source frames "
                             "changed since the build?); pass --overwrite to rebuild the dataset")
    return writer.sha256()


class ShardWriter:
    """Writes the examples of one (dataset, prefix) to the shards still to write.

    Examples arrive in storm order but are numbered in the shuffled record order
    (`example_order`); the example -> shard assignment is fixed by `recordio.shard_bounds` over
    those numbers. Each record is appended to a spill file (`.tmp-order-<prefix>` beside the
    shards; a local temporary file for gs://) as it arrives; once the pass is over, `finish`
    copies every wanted shard's records out of it in example order, to a temporary name that is
    renamed when complete. Memory holds only offsets; the disk holds the dataset once more
    until the shards are out. A shard redone against a manifest must come out with the recorded
    sha256 (else the sources changed since).
    """

    def __init__(self, plan: DatasetPlan, prefix: str, count: int, n_shards: int):
        self.plan = plan
        self.prefix = prefix
        self.bounds = recordio.shard_bounds(count, n_shards)
        self.names = [recordio.shard_name(prefix, i, n_shards) for i in range(n_shards)]
        self.sha256: dict[str, str] = {}
        self.finished: list[str] = []
        self._where: dict[int, tuple[int, int]] = {}  # example index -> (offset, length) in the spill
        self._spill = None

    def write(self, index: int, record: bytes) -> None:
        """Keeps the example at `index` (any order) until `finish`."""
        if self._spill is None:
            if storage.is_gcs(self.plan.out_dir):
                self._spill = tempfile.TemporaryFile(prefix=storage.TMP_PREFIX + "order-")
            else:
                os.makedirs(self.plan.out_dir, exist_ok=True)
                path = os.path.join(self.plan.out_dir, f"{storage.TMP_PREFIX}order-{self.prefix}")
                self._spill = open(path, "w+b", buffering=1 << 20)
                os.remove(path)  # the open file stays; nothing is left if the process dies
        self._where[index] = (self._spill.tell(), len(record))
        self._spill.write(record)

    def finish(self) -> None:
        """Writes every wanted shard from the spill, in example order, and drops the spill."""
        for shard, name in enumerate(self.names):
            if name not in self.plan.todo:
                continue
            a, b = self.bounds[shard]
            lost = [i for i in range(a, b) if i not in self._where]
            if lost:
                raise RuntimeError(f"{name}: examples {lost[:5]} were never computed")
            expected = self.plan.old["sha256"].get(name) if self.plan.old else None
            self.sha256[name] = write_shard(storage.join(self.plan.out_dir, name),
                                            self._records(a, b), expected)
            self.finished.append(name)
        self.abort()

    def _records(self, a: int, b: int) -> Iterator[bytes]:
        """Records [a, b) of the example order, read back from the spill."""
        for i in range(a, b):
            offset, length = self._where[i]
            self._spill.seek(offset)
            yield self._spill.read(length)
        self._spill.seek(0, os.SEEK_END)

    def abort(self) -> None:
        """Drops the spilled records."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
            self._where = {}


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


def chunk_tasks(table: pd.DataFrame, plans: Sequence[DatasetPlan],
                wants: Callable[[frames.DatasetSpec, str, int], bool], chunk_frames: int,
                encoding: str, quality: int,
                mean_rounding: str = "round") -> Iterator[tuple[ChunkTask, _Chunk]]:
    """The chunks to compute, in storm and time order, skipping chunks with nothing to write
    (`wants(spec, prefix, example index)` says whether an example's shard is to be written)."""
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
                keep = [t for t, (prefix, index, _) in rows.items() if wants(plan.spec, prefix, index)]
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
                             start, stop, raw_from, images, encoding, quality, mean_rounding)
            previous_done = True
            yield task, _Chunk(rows, wanted, len(storm))


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: the worker is killed when the builder dies, even by SIGKILL (which
    runs no cleanup): otherwise it would wait forever on a pipe that nobody writes to."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


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
    pool = concurrent.futures.ProcessPoolExecutor(workers, multiprocessing.get_context(method),
                                                  initializer=_die_with_parent, initargs=(os.getpid(),))
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
    """The features of one frame's record but its `image`: the reference's (image_id, label,
    label_le) plus storm, fold, frame and time."""
    return {
        "image_id": row.image_id,
        "label": int(row.wind_speed), "label_le": int(row.wind_speed_le),
        "storm_id": str(row.storm_id), "fold_id": int(row.fold_id),
        "frame_id": int(row.frame_id), "relative_time": int(row.relative_time),
    }


class RecordAssembler:
    """Turns computed chunks, given in storm and time order, into records; the one place that
    assembles them, for the local pass and the Beam pipeline (`tpuflow.beam_build`).

    `single`/`sequence` records take the source bytes of their frames: it keeps those of the
    current storm's last `history_span` frames, for the `sequence` history of the next chunk.
    """

    def __init__(self, plans: Sequence[DatasetPlan]):
        self.copy_span = max([p.spec.history_span for p in plans if p.spec.kind not in _PIXEL_KINDS],
                             default=0)
        self.storm_id = None
        self.raw: dict[int, bytes] = {}
        self.indices: dict = {}

    def records(self, task: ChunkTask, chunk: _Chunk, result: ChunkResult
                ) -> Iterator[tuple[frames.DatasetSpec, str, int, bytes]]:
        """(spec, shard prefix, example index, serialised record) of every wanted example of
        the chunk; consume all of it before the next chunk."""
        if task.storm_id != self.storm_id:
            self.storm_id, self.raw, self.indices = task.storm_id, {}, {}
        raw = self.raw
        raw.update(zip(range(task.raw_from, task.stop), result.raw))
        for spec, positions in chunk.wanted.items():
            if spec.kind == "sequence" and spec not in self.indices:
                self.indices[spec] = frames.storm_indices(spec, chunk.storm_length)
            encoded = iter(result.images.get(spec, ()))
            for t in positions:
                prefix, index, features = chunk.rows[t]
                if spec.kind == "single":
                    images = [raw[t]]
                elif spec.kind == "sequence":
                    images = [raw[i] for i in self.indices[spec][t]]
                else:
                    images = [next(encoded)]
                yield spec, prefix, index, recordio.encode_example({**features, "image": images})
        for i in [i for i in raw if i < task.stop - self.copy_span]:
            del raw[i]


def size_mismatch(path: str, storm_id: str, shape, image_size, first_path: str | None) -> ValueError:
    """The error for a frame whose size differs from the dataset's (`image_size`, of `first_path`)."""
    return ValueError(f"{path} (storm {storm_id!r}): frame size {_size(shape)} differs from "
                      f"{_size(image_size)} of {first_path or 'the dataset in its manifest'}")


def _write_pass(build: "BuildPlan", plans: Sequence[DatasetPlan], writers: dict,
                image_size: list | None, workers: int, log: Callable[[str], None]) -> list[int]:
    """Computes every wanted example and hands it to its writer; returns the frame size."""
    first_path = None
    n_storms, done, storm_id = build.table["storm_id"].nunique(), 0, None
    assembler = RecordAssembler(plans)
    tasks = chunk_tasks(build.table, plans, build.wants, build.chunk_frames, build.encoding,
                        build.quality, build.mean_rounding)
    for task, chunk, result in _computed(tasks, workers):
        if task.storm_id != storm_id:
            storm_id, done = task.storm_id, done + 1
            if done % max(1, n_storms // 10) == 0:
                log(f"storm {done}/{n_storms}")
        if image_size is None:
            image_size, first_path = list(result.shape), task.paths[task.start - task.read_from]
        elif list(result.shape) != image_size:
            raise size_mismatch(task.paths[task.start - task.read_from], task.storm_id,
                                result.shape, image_size, first_path)
        for spec, prefix, index, record in assembler.records(task, chunk, result):
            writers[spec, prefix].write(index, record)
    return image_size


# ---------------------------------------------------------------------------------------------
# Entry points


def _check_options(specs, shards_per_fold, encoding, quality, workers, chunk_frames,
                   mean_rounding="round") -> None:
    if not specs:
        raise ValueError("no dataset specs given")
    if mean_rounding not in MEAN_ROUNDINGS:
        raise ValueError(f"--mean_rounding={mean_rounding!r}: expected one of {MEAN_ROUNDINGS}")
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


@dataclasses.dataclass
class BuildPlan:
    """What a build of many datasets will write, decided from the CSVs before any frame is read:
    the frame table (with each example's `prefix` and `example_index`, its place in the shuffled
    record order), the shards of every prefix and, per dataset, the shards still to write. The
    local pass and the Beam pipeline both execute one, so they write the same bytes."""
    table: pd.DataFrame
    plans: list[DatasetPlan]
    counts: dict[str, int]  # examples per shard prefix (`fold.<k>`, `test`)
    n_shards: dict[str, int]
    n_folds: int
    encoding: str
    quality: int
    mean_rounding: str
    chunk_frames: int

    def __post_init__(self):
        self._stops = {p: [b for _, b in self.shard_bounds(p)] for p in self.counts}
        self._todo = {p.spec: p.todo for p in self.plans}

    @property
    def active(self) -> list[DatasetPlan]:
        return [p for p in self.plans if p.todo]

    def shard_bounds(self, prefix: str) -> list[tuple[int, int]]:
        return recordio.shard_bounds(self.counts[prefix], self.n_shards[prefix])

    def shard_name(self, prefix: str, index: int) -> str:
        """The shard holding example `index` of `prefix` (the fixed assignment of `shard_bounds`)."""
        return recordio.shard_name(prefix, bisect.bisect_right(self._stops[prefix], index),
                                   self.n_shards[prefix])

    def wants(self, spec: frames.DatasetSpec, prefix: str, index: int) -> bool:
        return self.shard_name(prefix, index) in self._todo[spec]

    def manifest(self, plan: DatasetPlan, image_size: list, sha256: dict) -> dict:
        return _manifest(plan, self.encoding, self.n_folds, image_size, self.counts, self.n_shards,
                         sha256)


def prepare_build(data_dir: str, out_root: str, specs: Sequence[frames.DatasetSpec],
                  shards_per_fold: int = SHARDS_PER_FOLD, encoding: str = "jpeg", quality: int = 95,
                  workers: int | None = None, overwrite: bool = False, chunk_frames: int = 128,
                  log: Callable[[str], None] = print, mean_rounding: str = "round",
                  order_seed: int = 0, image_dir: str | None = None,
                  wind_speed_range: tuple[int, int] = validate.WIND_SPEED_RANGE) -> BuildPlan:
    """Checks the options and inputs and plans the build (`build_datasets` has the arguments):
    clears what cannot be kept in the output dirs, reads no frame but to hash it."""
    workers = workers or os.cpu_count() or 1
    _check_options(specs, shards_per_fold, encoding, quality, workers, chunk_frames, mean_rounding)
    table = load_frame_table(data_dir, image_dir, wind_speed_range)
    check_frames_exist(table)
    n_folds = int(table.loc[table["split"] == "train", "fold_id"].max()) + 1
    prefixes = [f"fold.{k}" for k in range(n_folds)] + ["test"]
    found = table["prefix"].value_counts()
    counts = {p: int(found.get(p, 0)) for p in prefixes}
    empty = [p for p in prefixes if not counts[p]]
    if empty:
        raise ValueError(f"{data_dir}: no frames for {empty} (check fold_id in train_cv.csv and "
                         "test_cv.csv)")
    table["example_index"] = example_order(table, order_seed)  # the record order in the shards
    n_shards = {p: min(shards_per_fold, counts[p]) for p in prefixes}
    shard_names = [recordio.shard_name(p, i, n_shards[p]) for p in prefixes for i in range(n_shards[p])]
    sources = {name: storage.file_sha256(storage.join(data_dir, name)) for name in SOURCES}
    sources["frames"] = frames_digest(table, workers)
    plans = [plan_dataset(spec, storage.join(out_root, spec.name),
                          build_key(spec, encoding, quality, shards_per_fold, sources, order_seed,
                                    mean_rounding),
                          shard_names, overwrite, log) for spec in specs]
    for plan in plans:
        if not plan.todo:
            log(f"{plan.out_dir}: up to date (manifest and shard checksums match)")
    return BuildPlan(table, plans, counts, n_shards, n_folds, encoding, quality, mean_rounding,
                     chunk_frames)


def build_datasets(data_dir: str, out_root: str, specs: Sequence[frames.DatasetSpec],
                   shards_per_fold: int = SHARDS_PER_FOLD, encoding: str = "jpeg", quality: int = 95,
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
    seeded shuffled order (`example_order`, `order_seed`); frames are read from `image_dir`
    (default: `data_dir`), which every `image_path` must stay inside.
    """
    workers = workers or os.cpu_count() or 1
    build = prepare_build(data_dir, out_root, specs, shards_per_fold, encoding, quality, workers,
                          overwrite, chunk_frames, log, mean_rounding, order_seed, image_dir,
                          wind_speed_range)
    active = build.active
    writers = {(p.spec, prefix): ShardWriter(p, prefix, build.counts[prefix], build.n_shards[prefix])
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
            if plan.old is not None:  # repaired: every shard matches the recorded checksum
                manifests[id(plan)] = plan.old
                continue
            sha = {n: d for w in writers.values() if w.plan is plan for n, d in w.sha256.items()}
            manifest = build.manifest(plan, image_size, sha)
            storage.write_json(storage.join(plan.out_dir, recordio.MANIFEST), manifest)
            manifests[id(plan)] = manifest
            log(f"{plan.out_dir}: {manifest['counts']}")
    return [manifests[id(p)] for p in build.plans]


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
        "mean_rounding": plan.key["mean_rounding"],
        "record_order": {"folds": f"shuffled (seed {plan.key['order_seed']})", "test": "test_cv.csv rows"},
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
                        else "ok" if storage.file_sha256(path) == digest else "damaged")
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
