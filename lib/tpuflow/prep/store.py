"""The frame store: every source frame written once, as its original bytes, with what assembling any kind needs.

`create_tfrecords.py --specs=frames` writes `<out_dir>/data-frames/`: `frames.tfrecord-*` shards
of one record per frame of train_cv.csv and test_cv.csv, in storm and time order, holding the
frame's encoded bytes as read (no re-encoding) and its image id, storm, time, position in the
storm, split, fold, labels, CSV row and pixel size; and `manifest.json` (kind `frames`, counts
per fold, sha256 per shard, the hashes of the CSVs and of every frame). The table of frames comes
from the builder (`build_plan.load_frame_table`: the same label, path, time and order rules), the
records from `recordio` (no TensorFlow), and resuming, damaged-shard repair and rebuild on changed
inputs from `build_plan.plan_dataset`, so the store and the prebuilt datasets obey one set of rules.

Examples of any kind are assembled from the store at read time (`tpuflow.inputs.assembly`), so a new
(kind, n, step) idea needs no new build, and a dataset costs the source frames' bytes once.
"""
from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import hashlib
import io
import os
from typing import Callable

import numpy as np
import pandas as pd

from tpuflow import __version__, storage
from tpuflow.prep import build_encode, build_plan, build_write, recordio, shard_names, validate

KIND = "frames"
SHARDS = 16
FORMAT = 1  # bump when the same inputs would give other record bytes


def is_store(manifest: dict) -> bool:
    return manifest.get("kind") == KIND


def frame_features(row, size: tuple[int, int], data: bytes) -> dict:
    """One frame's record: the builder's example features plus what assembly needs to place it."""
    return {**build_encode.example_features(row), "image": [data], "split": row.split,
            "frame_pos": int(row.frame_pos), "csv_row": int(row.csv_row),
            "height": int(size[0]), "width": int(size[1])}


def read_frame(path: str) -> tuple[bytes, tuple[int, int]]:
    """The frame's bytes and (height, width); decoding checks it is an image (error names it)."""
    data = storage.read_bytes(path)
    return data, build_encode.decode_frame(data, path).shape[:2]


@dataclasses.dataclass
class StorePlan:
    """What a store build will write, decided before any frame is read: the frame table (storm
    and time order: row i is record i), the shards and their row ranges, and which are still to
    write. The local build and the Beam pipeline (`tpuflow.prep.beam_build`) both execute one."""
    table: pd.DataFrame
    plan: build_encode.DatasetPlan
    names: list[str]
    bounds: list[tuple[int, int]]
    counts: dict[str, int]
    n_folds: int

    def shard_name(self, row: int) -> str:
        return self.names[bisect.bisect_right([b for _, b in self.bounds], row)]

    def manifest(self, sizes: np.ndarray, source_bytes: int, sha256: dict) -> dict:
        """The manifest of a new store, given every frame's (height, width) in table order."""
        table = self.table.assign(height=sizes[:, 0], width=sizes[:, 1])
        mixed = [str(s) for s, g in table.groupby("storm_id", sort=True)
                 if g[["height", "width"]].drop_duplicates().shape[0] > 1]
        key = self.plan.key
        return {
            "build": key, "spec": KIND, "kind": KIND, "n_frames": 1, "encoding": "source",
            "image_size": [int(sizes[0, 0]), int(sizes[0, 1])], "storms_with_mixed_sizes": mixed,
            "n_folds": self.n_folds, "counts": self.counts, "n_storms": int(table["storm_id"].nunique()),
            "shards": {n: b - a for n, (a, b) in zip(self.names, self.bounds)},
            "source_bytes": int(source_bytes), "record_order": "storm, then relative_time",
            "sha256": dict(sorted(sha256.items())), "sources": key["sources"],
            "tpuflow_version": __version__,
        }


def plan_store(data_dir: str, out_root: str, shards: int = SHARDS, workers: int | None = None,
               overwrite: bool = False, log: Callable[[str], None] = print,
               image_dir: str | None = None,
               wind_speed_range: tuple[int, int] = validate.WIND_SPEED_RANGE,
               sources: dict | None = None) -> StorePlan:
    """Checks the inputs and plans the store build (`build_store` has the arguments; `sources`:
    the hashes of the CSVs and frames when a build of datasets already computed them)."""
    workers = workers or os.cpu_count() or 1
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"--shards_per_fold={shards!r}: expected an integer >= 1")
    table = build_plan.load_frame_table(data_dir, image_dir, wind_speed_range)
    build_plan.check_frames_exist(table)
    train = table[table["split"] == "train"]
    n_folds = int(train["fold_id"].max()) + 1 if len(train) else 0
    counts = {shard_names.fold_prefix(k): int((train["fold_id"] == k).sum()) for k in range(n_folds)}
    counts[shard_names.TEST] = int((table["split"] == "test").sum())
    empty = [p for p, n in counts.items() if not n]
    if empty or not n_folds:
        raise ValueError(f"{data_dir}: no frames for {empty or [shard_names.fold_prefix(0)]} (check fold_id in "
                         "train_cv.csv and test_cv.csv)")
    n_shards = min(shards, len(table))
    names = [shard_names.shard_name(shard_names.STORE_PREFIX, i, n_shards) for i in range(n_shards)]
    out_dir = storage.join(out_root, shard_names.STORE_DIR)
    if not storage.exists(storage.join(out_dir, shard_names.MANIFEST)):  # every frame once, ~270 B of features each
        build_plan.check_fits(out_root, {KIND: float(build_plan.frame_sizes(table).sum()) + 270.0 * len(table)}, 0)
    if sources is None:
        sources = {name: storage.file_sha256(storage.join(data_dir, name)) for name in build_plan.SOURCES}
        sources["frames"] = build_plan.frames_digest(table, workers)
    key = {"format": FORMAT, "kind": KIND, "encoding": "source", "shards": n_shards, "sources": sources}
    plan = build_plan.plan_dataset(None, out_dir, key, names, overwrite, log)
    if not plan.todo:
        log(f"{out_dir}: up to date (manifest and shard checksums match)")
    return StorePlan(table, plan, names, recordio.shard_bounds(len(table), n_shards), counts, n_folds)


def build_store(data_dir: str, out_root: str, shards: int = SHARDS, workers: int | None = None,
                overwrite: bool = False, log: Callable[[str], None] = print,
                image_dir: str | None = None,
                wind_speed_range: tuple[int, int] = validate.WIND_SPEED_RANGE) -> dict:
    """Builds (or completes) `<out_root>/data-frames/`; returns its manifest.

    A store whose manifest matches is kept (missing or damaged shards are rewritten), one built
    from other CSVs or frames is rebuilt, and every shard is written under a temporary name and
    renamed, so a killed build leaves nothing a re-run would trust.
    """
    workers = workers or os.cpu_count() or 1
    sp = plan_store(data_dir, out_root, shards, workers, overwrite, log, image_dir, wind_speed_range)
    plan, table, out_dir = sp.plan, sp.table, sp.plan.out_dir
    if not plan.todo:
        return plan.old
    storage.makedirs(out_dir)
    sha256 = dict(plan.old["sha256"]) if plan.old else {}
    sizes = np.zeros((len(table), 2), np.int64)
    source_bytes, written = 0, []
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # reads and PIL decodes free the GIL
            for name, (a, b) in zip(sp.names, sp.bounds):
                rows = list(table.iloc[a:b].itertuples())
                read = list(pool.map(read_frame, [r.image_path for r in rows]))
                for i, (data, size) in enumerate(read):
                    sizes[a + i] = size
                    source_bytes += len(data)
                if name not in plan.todo:
                    continue
                sha256[name] = build_write.write_shard(
                    storage.join(out_dir, name),
                    (frame_record(row, size, data) for row, (data, size) in zip(rows, read)),
                    plan.old["sha256"].get(name) if plan.old else None)
                written.append(name)
    except BaseException:
        if plan.old is None:  # a failed first build leaves no shard (a repair keeps its good ones)
            for name in written:
                storage.remove(storage.join(out_dir, name))
        raise
    if plan.old:
        log(f"{out_dir}: repaired {sorted(plan.todo)}")
        return plan.old
    manifest = sp.manifest(sizes, source_bytes, sha256)
    storage.write_json(storage.join(out_dir, shard_names.MANIFEST), manifest)
    log(f"{out_dir}: {len(table)} frames in {len(sp.names)} shards, {manifest['counts']}")
    return manifest


def frame_record(row, size: tuple[int, int], data: bytes) -> bytes:
    return recordio.encode_example(frame_features(row, size, data))


# Columns of the store's table (one row per frame, in storm and time order) and their types.
COLUMNS = {"image_id": str, "storm_id": str, "split": str, "label": np.int64, "label_le": np.int64,
           "fold_id": np.int64, "frame_pos": np.int64, "csv_row": np.int64,
           "relative_time": np.int64, "height": np.int64, "width": np.int64}


class FrameStore:
    """A store read into host memory: `table` (one row per frame, storm and time order) and
    `frames` (encoded bytes, same order). Its size is the source frames' bytes (e.g. 272 MB for
    the competition's ~70k frames), whatever is assembled from it."""

    def __init__(self, store_dir: str, manifest: dict, table: pd.DataFrame, frames: np.ndarray):
        self.dir, self.manifest, self.table, self.frames = store_dir, manifest, table, frames
        self.decoded = {}  # sums (for `mean` examples) or not -> frame_cache.FrameCache, built by the assemblies using it


def read_manifest(store_dir: str) -> dict:
    path = storage.join(store_dir, shard_names.MANIFEST)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no manifest; build the store with "
                                "create_tfrecords.py --specs=frames")
    manifest = storage.read_json(path)
    if not is_store(manifest):
        raise ValueError(f"{store_dir} holds '{manifest.get('spec')}' records, not a frame store "
                         "(create_tfrecords.py --specs=frames)")
    return manifest


def check_sources(manifest: dict, built_dir: str, data_dir: str) -> None:
    """A frame store or record dataset must be built from the CSVs in `data_dir` (folds and labels
    come from them): otherwise an error naming both hashes. A manifest that holds no CSV hashes
    (records adopted without --data_dir) is not checked."""
    sources = manifest.get("sources") or {}
    for name in build_plan.SOURCES:
        path = storage.join(data_dir, name)
        if name not in sources or not storage.exists(path):
            continue
        have, built = storage.file_sha256(path), sources[name]
        if have != built:
            raise ValueError(f"{built_dir} was built from another {name} (sha256 {built}) than "
                             f"{path} (sha256 {have}): its folds and labels would not be --data_dir's; "
                             "rebuild it from --data_dir, or pass the --data_dir it was built from")


def load_store(store_dir: str, data_dir: str | None = None) -> FrameStore:
    """Reads every shard (checked against the manifest's sha256: a damaged one is named) into a
    `FrameStore`; with `data_dir`, also checks that its CSVs are the ones the store was built from."""
    manifest = read_manifest(store_dir)
    if data_dir is not None:
        check_sources(manifest, store_dir, data_dir)
    parts = []
    for name in sorted(manifest["sha256"]):
        path = storage.join(store_dir, name)
        if not storage.exists(path):
            raise FileNotFoundError(f"{path}: store shard missing (re-run create_tfrecords.py "
                                    "--specs=frames to repair it)")
        data = storage.read_bytes(path)
        if hashlib.sha256(data).hexdigest() != manifest["sha256"][name]:
            raise ValueError(f"{path}: damaged store shard (sha256 differs from the manifest); "
                             "re-run create_tfrecords.py --specs=frames to repair it")
        parts += [_parse(r) for r in recordio.read_records(io.BytesIO(data), path)]
    table = pd.DataFrame([p[0] for p in parts]).astype(COLUMNS)
    frames = np.empty(len(parts), dtype=object)
    frames[:] = [p[1] for p in parts]
    return FrameStore(store_dir, manifest, table, frames)


def _parse(record: bytes) -> tuple[dict, bytes]:
    """(columns, frame bytes) of one store record, with the protobuf parser TensorFlow ships."""
    from tensorflow.core.example import example_pb2  # loads TensorFlow: only reading a store needs it
    example = example_pb2.Example.FromString(record)
    feature = example.features.feature
    row = {}
    for name, column_type in COLUMNS.items():
        f = feature[name]
        row[name] = f.bytes_list.value[0].decode() if column_type is str else f.int64_list.value[0]
    return row, feature["image"].bytes_list.value[0]
