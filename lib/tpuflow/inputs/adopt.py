"""Adopting a record directory built elsewhere (the reference's scripts) that has no manifest.

Why: experiments read a dataset's kind, fold count and example counts from its `manifest.json`;
records built by the reference's own scripts have none, and rebuilding hundreds of GB to get one
would be a waste. `adopt_dataset` reads every record once (each must parse as a record of the
given kind: image ids, labels, the right number of images, images of one size), and writes the
manifest: kind, frames, counts per fold and per shard, sha256 per shard.
"""
from __future__ import annotations

import hashlib
import io
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from tpuflow import __version__, storage
from tpuflow.prep import frames, recordio, shard_names


def spec_from_dir_name(tfrec_dir: str) -> frames.DatasetSpec:
    """`data-tfrec-<kind>-frames<NNN>-step<SSS>` (this project's names) -> its spec."""
    parsed = shard_names.parse_dataset_dir(tfrec_dir)
    if parsed is None:
        raise ValueError(f"{tfrec_dir}: cannot tell the kind from the directory name; pass --spec "
                         "(single, stacked:s<step>, mean:s<step>, sequence:n<frames>:s<step>)")
    kind, n, step = parsed
    return frames.DatasetSpec(kind, n_frames=n if kind == "sequence" else None, step=step)


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
    if storage.is_gcs(path):
        f = _Hashing(io.BytesIO(storage.read_bytes(path)))
        for _ in recordio.read_records(f, path):
            pass
        return f.sha.hexdigest()
    with open(path, "rb") as raw:
        f = _Hashing(raw)
        for _ in recordio.read_records(f, path):
            pass
        f.read()  # nothing should be left; hash it anyway
        return f.sha.hexdigest()


def _check_file(path: str, spec: frames.DatasetSpec) -> tuple[int, list[int] | None]:
    """(records, image size of its first record); every record parsed and checked."""
    features = {"image_id": tf.io.FixedLenFeature([], tf.string),
                "image": tf.io.VarLenFeature(tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64),
                "label_le": tf.io.FixedLenFeature([], tf.int64)}
    count, size, first = 0, None, None
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
        count += len(batch)
    if first is not None:
        channels = spec.channels if spec.kind != "sequence" else 1
        image = tf.io.decode_image(first, expand_animations=False)
        if image.shape[-1] != channels:
            raise ValueError(f"{path}: images have {image.shape[-1]} channel(s); a {spec} record's "
                             f"have {channels}")
        size = [int(image.shape[0]), int(image.shape[1])]
    return count, size


def adopt_dataset(tfrec_dir: str, spec: frames.DatasetSpec | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """Checks every record of `tfrec_dir` and writes its manifest; returns the manifest."""
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
    counts, shards, sha256, sizes = {}, {}, {}, set()
    for path in files:
        name = os.path.basename(path)
        digest = _file_sha256(path)
        n, size = _check_file(path, spec)
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
    manifest = {
        "build": {"format": "adopted", "spec": spec.to_string()},
        "spec": spec.to_string(), "kind": spec.kind, "n_frames": spec.n_frames, "step": spec.step,
        "channels": spec.channels, "images_per_example": spec.images_per_example,
        "encoding": "unknown (adopted)", "quality": None, "jpeg_color": None,
        "image_size": list(sizes.pop()) if sizes else None, "n_folds": len(folds),
        "counts": {**{p: counts[p] for p in shard_names.prefixes(folds)},
                   **{p: counts[p] for p in shard_names.prefixes() if p in counts}},
        "shards": shards, "sha256": dict(sorted(sha256.items())), "sources": None,
        "adopted": True, "tpuflow_version": __version__,
    }
    storage.write_json(manifest_path, manifest)
    log(f"{manifest_path}: {manifest['counts']}")
    return manifest
