"""Planning a build, from the CSVs, before any frame is read (no TensorFlow).

Every frame is one example of every spec, so the examples of each fold, their order (a seeded
shuffle within each training fold: `example_order`) and their shard are known from the CSVs
alone. `prepare_build` checks the options and inputs (a clear error before any long work),
hashes the CSVs and every frame into each dataset's build key, and decides per dataset what an
existing output already holds (`plan_dataset`: a matching manifest keeps its shards that check
out; a dataset built from other CSVs or frames is rebuilt; another dataset is an error unless
`--overwrite`; leftovers of a killed run are removed). The result, a `BuildPlan`, is executed by
the local pass (`tpuflow.prep.builder`) or on Beam (`tpuflow.prep.beam_build`), so both write the same
bytes. `explain_examples` answers `create_tfrecords.py --explain` from the same frame table.
"""
from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import errno
import hashlib
import os
import shutil
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from tpuflow import storage
from tpuflow.prep import build_encode, build_write, frames, recordio, shard_names, split, validate
from tpuflow.storage import tables

SHARDS_PER_FOLD = 16  # shuffled shards read in parallel: 4 training folds -> 64 files to interleave
BUILD_FORMAT = 3  # bump when the same inputs and flags would give different record bytes
SOURCES = ("train_cv.csv", "test_cv.csv")
BEAM_RUNNERS = ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner")  # what `beam_build` runs on
# An example spanning this many times the longest storm's frames is mostly copies of a storm's
# first frame in every storm: a typo (`sequence:n2400` for `n24`), refused before any work.
TYPO_SPAN = 8


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
    table["prefix"] = np.where(table["split"] == "test", shard_names.TEST,
                               table["fold_id"].map(shard_names.fold_prefix))
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
        fold = shard_names.prefix_fold(prefix)
        if fold is None:  # test
            index[rows] = np.argsort(np.argsort(table["csv_row"].to_numpy()[rows], kind="stable"))
        else:
            index[rows] = np.random.default_rng([seed, fold]).permutation(len(rows))
    return index


class _CountedSha256:
    """A sha256 that also counts the bytes it is fed (`storage.file_digest` takes any `update`)."""

    def __init__(self):
        self.sha, self.n_bytes = hashlib.sha256(), 0

    def update(self, data: bytes) -> None:
        self.sha.update(data)
        self.n_bytes += len(data)


def frames_digest(table: pd.DataFrame, workers: int) -> str:
    """sha256 over every frame's image id, size and content hash: the part of the build key that
    makes an edited, replaced or truncated frame rebuild the datasets built from it."""
    def one(path: str) -> str:  # size and hash from one read (no metadata request per frame on gs://)
        counted = storage.file_digest(path, _CountedSha256())
        return f"{counted.n_bytes} {counted.sha.hexdigest()}"
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:  # hashlib frees the GIL
        hashes = list(pool.map(one, table["image_path"]))
    digest = hashlib.sha256()
    for image_id, line in sorted(zip(table["image_id"].astype(str), hashes)):
        digest.update(f"{image_id} {line}\n".encode())
    return digest.hexdigest()


def build_key(spec: frames.DatasetSpec, encoding: str, quality: int, shards_per_fold: int,
              sources: dict[str, str], order_seed: int = 0, mean_rounding: str = "round") -> dict:
    """What decides a dataset's bytes: a manifest with an equal key describes the same dataset.
    `sources` holds the CSVs' hashes and `frames`, the digest of every frame (`frames_digest`)."""
    pixels = spec.rules.computes_pixels
    return {"format": BUILD_FORMAT, "spec": spec.to_string(),
            "encoding": encoding if pixels else "source",
            "quality": quality if pixels and encoding == "jpeg" else None,
            "mean_rounding": mean_rounding if spec.rules.averages else None,
            "shards_per_fold": shards_per_fold, "order_seed": order_seed, "sources": sources}


def _remove_temporaries(out_dir: str) -> None:
    """Deletes the `.tmp-*` files a killed build left (partial shards, record spills)."""
    if storage.is_local(out_dir) and os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if name.startswith(storage.TMP_PREFIX):
                os.remove(os.path.join(out_dir, name))


def _describe(key: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in key.items() if k != "sources") + \
        f", sources={key.get('sources')}"


def _same_but_sources(old_key: dict | None, key: dict) -> bool:
    """Whether two build keys differ in their sources (CSVs, frames) only."""
    if not isinstance(old_key, dict) or not isinstance(old_key.get("sources"), dict):
        return False
    return {**old_key, "sources": None} == {**key, "sources": None}


def plan_dataset(spec: frames.DatasetSpec, out_dir: str, key: dict, shards: Sequence[str],
                 overwrite: bool, log: Callable[[str], None]) -> build_encode.DatasetPlan:
    """Decides what to write for one dataset, clearing what cannot be kept.

    - a manifest with the same key: shards whose sha256 checks out are kept, the others redone;
    - a manifest of the same dataset built from other CSVs or frames: rebuilt;
    - a manifest of another dataset: an error naming both, unless `overwrite`;
    - no manifest (an interrupted first build): leftover shard files are removed.
    Shard files that are not part of the planned dataset are removed either way, so a reader's
    `fold.<k>.tfrecord-*` glob finds exactly the dataset's shards.
    """
    manifest_path = storage.join(out_dir, shard_names.MANIFEST)
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
    todo = set(shards)
    if old is not None:
        for name in shards:
            path = storage.join(out_dir, name)
            if storage.exists(path) and storage.file_sha256(path) == old["sha256"].get(name):
                todo.discard(name)
            else:
                log(f"{path}: missing or damaged; rewriting it")
    for path in shard_names.shard_files(out_dir):
        name = os.path.basename(path)
        if old is None or name not in shards:
            storage.remove(path)
    return build_encode.DatasetPlan(spec, out_dir, key, old, todo)


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


def frame_sizes(table: pd.DataFrame) -> np.ndarray:
    """Every frame's size in bytes, from the file system (gs://: one listing per directory)."""
    listed = {}
    for directory in table["image_path"].map(os.path.dirname).unique():
        if not storage.is_local(directory):
            listed.update({storage.join(directory, n): f.size for n, f in storage.list_files(directory).items()})
    return np.array([listed[p] if p in listed else os.path.getsize(p) for p in table["image_path"]], np.int64)


def _bytes(n: float) -> str:
    """Bytes as '512 kB', '3.4 GB'."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g} {unit}"
        n /= 1000


def check_fits(out_root: str, estimates: dict[str, float], largest_part: float) -> None:
    """Refuses a build whose output (`estimates`: bytes per spec still to write), plus the largest
    record spill held beside it while its shards are written, exceeds the free space of the disk
    under a local `out_root`, naming the specs and the estimate (gs://: no limit known)."""
    if not storage.is_local(out_root) or not estimates:
        return
    existing = os.path.abspath(out_root)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    need = sum(estimates.values()) + largest_part
    if need > free:
        shown = sorted(estimates.items(), key=lambda kv: -kv[1])
        raise OSError(errno.ENOSPC, f"the build needs about {_bytes(need)} (at least; " + ", ".join(
            f"{name}: {_bytes(size)}" for name, size in shown[:4]) + (", ..." if len(shown) > 4 else "")
            + f"), but {existing} has {_bytes(free)} free; free some space, build fewer specs at once, "
            "or choose another --out_dir", out_root)


def check_output_size(table: pd.DataFrame, specs: Sequence[frames.DatasetSpec], out_root: str) -> None:
    """Before any frame is hashed: refuses a spec whose examples span far more frames than the
    longest storm holds (`TYPO_SPAN`), and a build that cannot fit on the output's disk
    (`check_fits`; datasets that already have a manifest are not counted)."""
    longest = int(table.groupby("storm_id").size().max())
    for spec in specs:
        span = spec.history_span + 1
        if span > TYPO_SPAN * longest:
            raise ValueError(f"dataset spec {spec.to_string()!r}: each example spans {span} frames, "
                             f"more than {TYPO_SPAN}x the longest storm ({longest} frames): a typo? "
                             "Every example would be mostly copies of its storm's first frame")
    todo = [s for s in specs if not storage.exists(storage.join(out_root, s.name, shard_names.MANIFEST))]
    if not storage.is_local(out_root) or not todo:
        return
    frame_bytes = float(frame_sizes(table).sum())
    # an example's bytes are at least its slots' frames': the source bytes, or a channel coded like a
    # frame at quality 95 (3.8-5.9x for 366 px synthetic frames, more for the competition's small JPEGs)
    estimates = {s.to_string(): frame_bytes * s.depth for s in todo}
    largest_share = table["prefix"].value_counts().max() / len(table)  # one (spec, prefix) spill
    check_fits(out_root, estimates, max(estimates.values()) * largest_share)


def _check_options(specs, shards_per_fold, encoding, quality, workers, chunk_frames,
                   mean_rounding="round") -> None:
    if not specs:
        raise ValueError("no dataset specs given")
    if mean_rounding not in build_encode.MEAN_ROUNDINGS:
        raise ValueError(f"--mean_rounding={mean_rounding!r}: expected one of {build_encode.MEAN_ROUNDINGS}")
    if encoding not in build_encode.ENCODINGS:
        raise ValueError(f"--encoding={encoding!r}: expected one of {build_encode.ENCODINGS}")
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
    plans: list[build_encode.DatasetPlan]
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
    def active(self) -> list[build_encode.DatasetPlan]:
        return [p for p in self.plans if p.todo]

    def shard_bounds(self, prefix: str) -> list[tuple[int, int]]:
        return recordio.shard_bounds(self.counts[prefix], self.n_shards[prefix])

    def shard_name(self, prefix: str, index: int) -> str:
        """The shard holding example `index` of `prefix` (the fixed assignment of `shard_bounds`)."""
        return shard_names.shard_name(prefix, bisect.bisect_right(self._stops[prefix], index),
                                      self.n_shards[prefix])

    def wants(self, spec: frames.DatasetSpec, prefix: str, index: int) -> bool:
        return self.shard_name(prefix, index) in self._todo[spec]

    def manifest(self, plan: build_encode.DatasetPlan, image_size: list, sha256: dict) -> dict:
        return build_write.manifest(plan, self.encoding, self.n_folds, image_size, self.counts, self.n_shards,
                                    sha256)


def prepare_build(data_dir: str, out_root: str, specs: Sequence[frames.DatasetSpec],
                  shards_per_fold: int = SHARDS_PER_FOLD, encoding: str = "jpeg", quality: int = 95,
                  workers: int | None = None, overwrite: bool = False, chunk_frames: int = 128,
                  log: Callable[[str], None] = print, mean_rounding: str = "round",
                  order_seed: int = 0, image_dir: str | None = None,
                  wind_speed_range: tuple[int, int] = validate.WIND_SPEED_RANGE) -> BuildPlan:
    """Checks the options and inputs and plans the build (`builder.build_datasets` has the arguments):
    clears what cannot be kept in the output dirs, reads no frame but to hash it."""
    workers = workers or os.cpu_count() or 1
    _check_options(specs, shards_per_fold, encoding, quality, workers, chunk_frames, mean_rounding)
    table = load_frame_table(data_dir, image_dir, wind_speed_range)
    check_frames_exist(table)
    n_folds = int(table.loc[table["split"] == "train", "fold_id"].max()) + 1
    prefixes = shard_names.prefixes(range(n_folds)) + shard_names.prefixes()
    found = table["prefix"].value_counts()
    counts = {p: int(found.get(p, 0)) for p in prefixes}
    empty = [p for p in prefixes if not counts[p]]
    if empty:
        raise ValueError(f"{data_dir}: no frames for {empty} (check fold_id in train_cv.csv and "
                         "test_cv.csv)")
    check_output_size(table, specs, out_root)
    table["example_index"] = example_order(table, order_seed)  # the record order in the shards
    n_shards = {p: min(shards_per_fold, counts[p]) for p in prefixes}
    shards = [shard_names.shard_name(p, i, n_shards[p]) for p in prefixes for i in range(n_shards[p])]
    sources = {name: storage.file_sha256(storage.join(data_dir, name)) for name in SOURCES}
    sources["frames"] = frames_digest(table, workers)
    plans = [plan_dataset(spec, storage.join(out_root, spec.name),
                          build_key(spec, encoding, quality, shards_per_fold, sources, order_seed,
                                    mean_rounding),
                          shards, overwrite, log) for spec in specs]
    for plan in plans:
        if not plan.todo:
            log(f"{plan.out_dir}: up to date (manifest and shard checksums match)")
    return BuildPlan(table, plans, counts, n_shards, n_folds, encoding, quality, mean_rounding,
                     chunk_frames)


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
