"""Adopting a record directory built elsewhere (the reference's scripts) that has no manifest.

Why: experiments read a dataset's kind, fold count and example counts from its `manifest.json`;
records built by the reference's own scripts have none, and rebuilding hundreds of GB to get one
would be a waste. `adopt_dataset` reads every record once (each must parse as a record of the
given kind: image ids, labels, the right number of images, images of one size), and writes the
manifest: kind, frames, counts per fold and per shard, sha256 per shard.

The kind comes from `--spec` or the directory's name, ours or the reference's (`data-tfrec-1d`,
`data-tfrec-frames024-step001-lstm`, `-ind`, `-mean`). With the data dir, every record's id,
label and fold are checked against `train_cv.csv`/`test_cv.csv` (swapped folds, an example in two
folds, test records posing as a fold) and a sample of examples against the spec's frames, so a
wrong adoption is refused here, naming the file and example, not found after training; the
manifest then holds the CSVs' hashes, which runs compare with their `--data_dir`'s.
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from tpuflow import __version__, storage
from tpuflow.prep import build_encode, build_plan, frames, kinds, recordio, shard_names


def spec_from_dir_name(tfrec_dir: str) -> frames.DatasetSpec:
    """`data-tfrec-<kind>-frames<NNN>-step<SSS>` (this project's names) or the reference's
    (`data-tfrec-1d`, `data-tfrec-frames<NNN>-step<SSS>-<ind|mean|lstm>`) -> its spec."""
    parsed = shard_names.parse_dataset_dir(tfrec_dir) or shard_names.parse_reference_dir(tfrec_dir)
    if parsed is None:
        raise ValueError(f"{tfrec_dir}: cannot tell the kind from the directory name; pass --spec "
                         "(single, stacked:s<step>, mean:s<step>, sequence:n<frames>:s<step>)")
    kind, n, step = parsed
    try:
        return frames.DatasetSpec(kind, n_frames=n, step=step)
    except ValueError as err:  # e.g. `-ind` with another number of frames than a stacked image's 3
        raise ValueError(f"{tfrec_dir}: the directory name does not give a dataset tpuflow reads ({err}); "
                         "pass --spec") from None


class _Hashing(io.RawIOBase):
    """A binary file that keeps the sha256 of what is read from it."""

    def __init__(self, f):
        self._f, self.sha = f, hashlib.sha256()

    def read(self, n=-1):
        data = self._f.read(n)
        self.sha.update(data)
        return data


def _file_sha256(path: str) -> str:
    """sha256 of a shard, checking both CRCs of every record on the way (streamed locally)."""
    with storage.open_read(path) as raw:
        f = _Hashing(raw)
        for _ in recordio.read_records(f, path):
            pass
        f.read()  # nothing should be left; hash it anyway
        return f.sha.hexdigest()


def _check_file(path: str, spec: frames.DatasetSpec) -> tuple[int, list[int] | None, np.ndarray, np.ndarray]:
    """(records, image size of its first record, image ids, labels); every record parsed and checked."""
    features = {"image_id": tf.io.FixedLenFeature([], tf.string),
                "image": tf.io.VarLenFeature(tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64),
                "label_le": tf.io.FixedLenFeature([], tf.int64)}
    count, size, first, ids, labels = 0, None, None, [], []
    for batch in tf.data.TFRecordDataset([path]).batch(1024):
        try:
            parsed = tf.io.parse_example(batch, features)
        except tf.errors.InvalidArgumentError as err:
            raise ValueError(f"{path}: a record near #{count} is not a {spec.kind} record "
                             f"({err.message.splitlines()[0]})") from None
        per_record = np.bincount(parsed["image"].indices[:, 0].numpy(), minlength=len(batch))
        wrong = np.flatnonzero(per_record != spec.images_per_example)
        if len(wrong):
            raise ValueError(f"{path}: record {count + int(wrong[0])} holds {per_record[wrong[0]]} "
                             f"image(s); a {spec} record holds {spec.images_per_example}")
        if first is None:
            first = parsed["image"].values[0]
        ids.append(parsed["image_id"].numpy().astype(str))
        labels.append(parsed["label"].numpy())
        count += len(batch)
    if first is not None:
        channels = spec.channels
        image = tf.io.decode_image(first, expand_animations=False)
        if image.shape[-1] != channels:
            raise ValueError(f"{path}: images have {image.shape[-1]} channel(s); a {spec} record's "
                             f"have {channels}")
        size = [int(image.shape[0]), int(image.shape[1])]
    return count, size, np.concatenate(ids or [np.array([], str)]), np.concatenate(labels or [np.array([], int)])


def check_against_csvs(tfrec_dir: str, table, shard_ids: dict[str, tuple[str, np.ndarray, np.ndarray]]) -> None:
    """Every record's id, label and fold (its file's prefix) against the frame table of the data
    dir's `train_cv.csv`/`test_cv.csv` (`build_plan.load_frame_table`); `shard_ids`: {path:
    (prefix, ids, labels)}. Refuses, naming the file and the example: an id in neither CSV, a test
    example in a fold's file or the reverse, an example of another fold, another label, an example
    in two files, and a fold or test split of the CSVs that the records do not cover."""
    rows = table.set_index("image_id")
    seen: dict[str, str] = {}
    for path, (_, ids, _) in shard_ids.items():
        for image_id in ids:
            if image_id in seen:
                raise ValueError(f"example {image_id} is in both {seen[image_id]} and {path}")
            seen[image_id] = path
    for path, (prefix, ids, labels) in shard_ids.items():
        fold = shard_names.prefix_fold(prefix)
        known = np.isin(ids, rows.index)
        if not known.all():
            raise ValueError(f"{path}: example {ids[~known][0]} is in neither train_cv.csv nor test_cv.csv "
                             "(records of other data?)")
        where = rows.loc[ids]
        is_test = (where["split"] == "test").to_numpy()
        if fold is not None and is_test.any():
            raise ValueError(f"{path}: example {ids[is_test][0]} is a test example (test_cv.csv): test records "
                             f"posing as fold {fold}")
        if fold is None and not is_test.all():
            bad = ids[~is_test][0]
            raise ValueError(f"{path}: example {bad} is a training example (fold {rows.loc[bad, 'fold_id']} of "
                             "train_cv.csv), not a test one")
        other = (where["fold_id"].to_numpy() != fold) if fold is not None else np.zeros(len(ids), bool)
        if other.any():
            bad = ids[other][0]
            raise ValueError(f"{path}: example {bad} is in fold {rows.loc[bad, 'fold_id']} of train_cv.csv, not "
                             f"fold {fold} (folds swapped, or records of another split)")
        wrong = (where["wind_speed"].to_numpy() != labels) if fold is not None else np.zeros(len(ids), bool)
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise ValueError(f"{path}: example {ids[i]} has label {labels[i]}, train_cv.csv says "
                             f"{where['wind_speed'].iloc[i]}")
    for prefix, group in table.groupby("prefix"):
        missing = sorted(set(group["image_id"]) - set(seen))
        if missing:
            raise ValueError(f"{tfrec_dir}: {len(missing)} example(s) of {prefix} in the CSVs have no record, "
                             f"e.g. {missing[:3]}")


def check_spec_content(table, spec: frames.DatasetSpec, samples: list[tuple[str, str, np.ndarray]],
                       tolerance: float = 2.0) -> None:
    """The sampled examples (path, image id, images (slots, H, W)) must be the spec's frames: each
    is compared with what every candidate rule of its kind (other steps; stacked vs mean) makes of
    the data dir's frames, slots oldest or newest first, and the spec must fit at least as well as
    the best of them (within `tolerance` levels: the reference's 4:2:0 JPEG is lossy), else the
    error names the better-fitting spec."""
    if not samples:
        return
    # other steps: up to 16 for a 3-slot image; a sequence's slots cost more, so only nearby ones
    steps = range(1, (2 * spec.step + 2 if spec.rules.image_per_slot else max(2 * spec.step, 16)) + 1)
    rivals = [kinds.REGISTRY[k] for k in spec.rules.look_alike or (spec.kind,)]
    candidates = [spec] + [frames.DatasetSpec(k.name, n_frames=spec.n_frames if k.fixed_depth is None else None, step=s)
                           for k in rivals for s in (steps if k.uses_history else (1,))]
    storms = {sid: g.sort_values(frames.POSITION_COLUMN) for sid, g in table.groupby("storm_id")}
    rows = table.set_index("image_id")
    decoded: dict[str, np.ndarray] = {}

    def frame(path: str) -> np.ndarray:
        if path not in decoded:
            decoded[path] = build_encode.decode_frame(storage.read_bytes(path), path).astype(np.float64)
        return decoded[path]

    errors = {c: [] for c in candidates}
    for _, image_id, images in samples:
        storm = storms[rows.loc[image_id, "storm_id"]]
        paths = storm["image_path"].tolist()
        t = int(rows.loc[image_id, frames.POSITION_COLUMN])
        for c in candidates:  # slots oldest first, or newest first
            expected = np.stack([np.mean([frame(paths[i]) for i in run], axis=0)
                                 for run in frames.frame_indices(c, t)])
            errors[c].append(min(float(np.mean(np.abs(e - images))) for e in (expected, expected[::-1]))
                             if expected.shape == images.shape else np.inf)
    mean_error = {c: float(np.mean(e)) for c, e in errors.items()}
    best = min(mean_error, key=mean_error.get)
    if mean_error[spec] > mean_error[best] + tolerance or not np.isfinite(mean_error[spec]):
        path, image_id, _ = samples[0]
        raise ValueError(f"{path}: example {image_id} and {len(samples) - 1} other(s) sampled are not {spec}'s "
                         f"frames of the data dir (mean error {mean_error[spec]:.1f} levels) but look like {best}'s "
                         f"({mean_error[best]:.1f}): pass --spec={best.to_string()}")


def sample_examples(files: list[str], table, per_file: int = 2, among: int = 64
                    ) -> list[tuple[str, str, np.ndarray]]:
    """A few examples per file, (path, image id, images (slots, H, W) float64): of its first
    `among` records, those with the longest history (early frames are clamped to the first,
    where rules agree)."""
    position = table.set_index("image_id")[frames.POSITION_COLUMN]
    features = {"image_id": tf.io.FixedLenFeature([], tf.string), "image": tf.io.VarLenFeature(tf.string)}
    out = []
    for path in files:
        found = []
        for serialized in tf.data.TFRecordDataset([path]).take(among):
            ex = tf.io.parse_single_example(serialized, features)
            found.append((int(position.get(ex["image_id"].numpy().decode(), 0)), serialized))
        for _, serialized in sorted(found, key=lambda f: -f[0])[:per_file]:
            ex = tf.io.parse_single_example(serialized, features)
            images = [tf.io.decode_image(v, expand_animations=False).numpy()
                      for v in tf.sparse.to_dense(ex["image"]).numpy()]
            slots = np.concatenate([np.moveaxis(im, -1, 0) for im in images]).astype(np.float64)  # (slots, H, W)
            out.append((path, ex["image_id"].numpy().decode(), slots))
    return out


def adopt_dataset(tfrec_dir: str, spec: frames.DatasetSpec | None = None,
                  log: Callable[[str], None] = print, data_dir: str | None = None) -> dict:
    """Checks every record of `tfrec_dir` (with `data_dir`: against its CSVs and frames) and
    writes its manifest; returns the manifest."""
    manifest_path = storage.join(tfrec_dir, shard_names.MANIFEST)
    if storage.exists(manifest_path):
        raise ValueError(f"{manifest_path}: the directory already has a manifest; nothing to adopt")
    spec = spec or spec_from_dir_name(tfrec_dir)
    named = {p: shard_names.parse_shard_name(os.path.basename(p))
             for p in storage.glob(storage.join(tfrec_dir, shard_names.shard_glob("*")))}
    files = sorted(p for p, shard in named.items() if shard)
    if not files:
        raise FileNotFoundError(f"{tfrec_dir}: no fold.<k>.tfrecord* or test.tfrecord* files")
    folds = sorted({named[p].fold for p in files if named[p].fold is not None})
    if folds != list(range(len(folds))) or not folds:
        raise ValueError(f"{tfrec_dir}: fold files for folds {folds}; expected folds 0..n-1")
    counts, shards, sha256, sizes, shard_ids = {}, {}, {}, set(), {}
    for path in files:
        name = os.path.basename(path)
        digest = _file_sha256(path)
        n, size, ids, labels = _check_file(path, spec)
        shard_ids[path] = (named[path].prefix, ids, labels)
        prefix = named[path].prefix
        counts[prefix] = counts.get(prefix, 0) + n
        shards[name], sha256[name] = n, digest
        if size:
            sizes.add(tuple(size))
        log(f"{name}: {n} records ok")
    if len(sizes) > 1:
        raise ValueError(f"{tfrec_dir}: shards hold images of different sizes {sorted(sizes)}")
    empty = [p for p in shard_names.prefixes(folds) if not counts.get(p)]
    if empty:
        raise ValueError(f"{tfrec_dir}: no records for {empty}")
    sources = None
    if data_dir is not None:
        table = build_plan.load_frame_table(data_dir)
        check_against_csvs(tfrec_dir, table, shard_ids)
        check_spec_content(table, spec, sample_examples(files, table))
        sources = {name: storage.file_sha256(storage.join(data_dir, name)) for name in build_plan.SOURCES}
        log(f"{tfrec_dir}: every record's id, label and fold match {data_dir}'s CSVs; "
            f"sampled examples are {spec}'s frames")
    manifest = {
        "build": {"format": "adopted", "spec": spec.to_string()},
        "spec": spec.to_string(), "kind": spec.kind, "n_frames": spec.n_frames, "step": spec.step,
        "channels": spec.channels, "images_per_example": spec.images_per_example,
        "encoding": "unknown (adopted)", "quality": None, "jpeg_color": None,
        "image_size": list(sizes.pop()) if sizes else None, "n_folds": len(folds),
        "counts": {**{p: counts[p] for p in shard_names.prefixes(folds)},
                   **{p: counts[p] for p in shard_names.prefixes() if p in counts}},
        "shards": shards, "sha256": dict(sorted(sha256.items())), "sources": sources,
        "adopted": True, "tpuflow_version": __version__,
    }
    storage.write_json(manifest_path, manifest)
    log(f"{manifest_path}: {manifest['counts']}")
    return manifest
