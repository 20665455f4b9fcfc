"""Reading TFRecord datasets: shard files, manifests and record parsers (TensorFlow side).

Records are written without TensorFlow by `tpuflow.prep.recordio` (through the builder).

Files are `fold.<k>.tfrecord-<i:05d>-of-<n:05d>` and `test.tfrecord-<i:05d>-of-<n:05d>`
(`tpuflow.prep.shard_names`); `manifest.json` beside them holds the spec and
the number of examples per fold and per shard (the runner's steps per epoch come from it).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf

from tpuflow import storage
from tpuflow.prep import shard_names

# Every record carries these; builders may add more (storm_id, fold_id, frame_id, ...).
JPEG_DCT = "INTEGER_ACCURATE"  # how every kind decodes JPEG frames: the builder's (PIL's) and the reference's IDCT
COMMON_FEATURES = {
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "image": tf.io.VarLenFeature(tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "label_le": tf.io.FixedLenFeature([], tf.int64),
}


def read_manifest(tfrec_dir: str) -> dict:
    """The dataset's manifest; a clear error if the directory holds no dataset."""
    path = storage.join(tfrec_dir, shard_names.MANIFEST)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no manifest; is --data_tfrec_dir a built dataset?")
    return storage.read_json(path)


def record_files(tfrec_dir: str, folds: Iterable[int] | None = None) -> list[str]:
    """Sorted shard paths of the given folds, or of the test split when `folds` is None."""
    files = []
    for prefix in shard_names.prefixes(folds):
        found = storage.glob(storage.join(tfrec_dir, shard_names.shard_glob(prefix)))  # also adopted `fold.0.tfrecord`
        if not found:
            raise FileNotFoundError(f"{tfrec_dir}: no {shard_names.shard_glob(prefix)} files")
        files += found
    return files


def example_count(manifest: dict, folds: Iterable[int] | None = None) -> int:
    """Examples in the given folds (or test) according to the manifest."""
    counts = manifest["counts"]
    keys = shard_names.prefixes(folds)
    missing = [k for k in keys if k not in counts]
    if missing:
        raise KeyError(f"manifest has no counts for {missing}; it has {sorted(counts)}")
    return sum(int(counts[k]) for k in keys)


def parse_common(serialized: tf.Tensor) -> dict:
    """Parses the common features; `image` stays a dense vector of encoded images."""
    ex = tf.io.parse_single_example(serialized, COMMON_FEATURES)
    ex["image"] = tf.sparse.to_dense(ex["image"])
    return ex


def decode_image(encoded: tf.Tensor, channels: int, dim: int | None = None) -> tf.Tensor:
    """Decodes one JPEG/PNG to uint8 (H, W, channels), resized to dim x dim if given (bilinear,
    rounded to whole levels; a frame already dim x dim is unchanged).

    JPEGs with the accurate integer IDCT (`JPEG_DCT`), as the builder decodes the frames it
    computes `stacked`/`mean` images from (`tpuflow.prep.build_encode.decode_frame`) and assembly
    decodes the frame store, so every kind reads a frame the same way (TensorFlow's default, the
    fast IDCT, is off by a level here and there).

    Pixels stay uint8 (a quarter of float32's bytes) until the pipeline has batched them
    (`pipeline.to_float`), so shuffle and prefetch buffers stay small whatever the kind.
    The static shape is set so that TPU programs see fixed shapes.
    """
    image = tf.cond(tf.io.is_jpeg(encoded),
                    lambda: tf.io.decode_jpeg(encoded, channels=channels, dct_method=JPEG_DCT),
                    lambda: tf.io.decode_image(encoded, channels=channels, expand_animations=False))
    return image if dim is None else resize(image, dim)


def resize(image: tf.Tensor, dim: int) -> tf.Tensor:
    """uint8 (..., H, W, C) -> (..., dim, dim, C): bilinear, rounded to whole levels, static shape."""
    if image.shape[-3] == dim and image.shape[-2] == dim:  # known to be dim already: resizing is the identity
        return image
    resized = tf.image.resize(image, [dim, dim], method="bilinear")
    shape = image.shape[:-3].as_list() + [dim, dim, image.shape[-1]]
    return tf.ensure_shape(tf.saturate_cast(tf.round(resized), tf.uint8), shape)


def parse_image(serialized: tf.Tensor, channels: int, dim: int | None = None,
                invert: bool = False) -> dict:
    """Record with one encoded image -> {image_id, image (H, W, C) uint8, label, label_le}.

    `serialized` may also be an example assembled from the frame store (`tpuflow.inputs.assembly`): a dict whose
    `image` is already decoded; it is resized the same way.

    `invert` maps x -> 255 - x (cold cloud tops bright or dark, as the backbone prefers).
    """
    if isinstance(serialized, dict):  # an example assembled from the frame store
        ex = dict(serialized)
        image = tf.ensure_shape(ex["image"], [None, None, channels])
        image = image if dim is None else resize(image, dim)
    else:
        ex = parse_common(serialized)
        image = decode_image(ex["image"][0], channels, dim)
    ex["image"] = 255 - image if invert else image
    return ex


def parse_sequence(serialized, n_frames: int, dim: int, pack3: bool = False, invert: bool = False) -> dict:
    """`sequence` record of n encoded frames (or an example assembled from the frame store)
    -> uint8 image (n, dim, dim, 1), or (n/3, dim, dim, 3) with `pack3` (three consecutive frames
    as the channels of one image, for 2D backbones over time).

    Frames are decoded with a fixed count (`n_frames`) so the shape is static for TPUs.
    """
    if isinstance(serialized, dict):  # an example assembled from the frame store
        ex = dict(serialized)
        frames = resize(tf.ensure_shape(ex["image"], [n_frames, None, None, 1]), dim)
        ex["image"] = arrange_frames(frames, n_frames, dim, pack3=pack3, invert=invert)
        return ex
    ex = parse_common(serialized)
    ex["image"] = decode_frames(ex["image"], n_frames, dim, pack3=pack3, invert=invert)
    return ex


def decode_frames(encoded: tf.Tensor, n_frames: int, dim: int, pack3: bool = False,
                  invert: bool = False) -> tf.Tensor:
    """n encoded frames (oldest first) -> (n, dim, dim, 1) uint8, or (n/3, dim, dim, 3) with `pack3`;
    what `parse_sequence` and exported models (`tpuflow.training.export`) feed the model."""
    encoded = tf.ensure_shape(encoded, [n_frames])
    frames = tf.map_fn(lambda e: decode_image(e, 1, dim), encoded,
                       fn_output_signature=tf.TensorSpec([dim, dim, 1], tf.uint8))
    return arrange_frames(frames, n_frames, dim, pack3=pack3, invert=invert)


def arrange_frames(frames: tf.Tensor, n_frames: int, dim: int, pack3: bool = False,
                   invert: bool = False) -> tf.Tensor:
    """(n, dim, dim, 1) decoded frames -> packed three per image with `pack3`, inverted with `invert`."""
    if pack3 and n_frames % 3:
        raise ValueError(f"pack3 needs a multiple of 3 frames, got n_frames={n_frames}")
    if pack3:  # (n, H, W, 1) -> (n/3, 3, H, W) -> (n/3, H, W, 3)
        frames = tf.transpose(tf.reshape(frames, [n_frames // 3, 3, dim, dim]), [0, 2, 3, 1])
    return 255 - frames if invert else frames


def _read_columns(files: Sequence[str], names: Sequence[str]) -> list[np.ndarray]:
    """Scalar features of every record in `files`, in the order the ordered pipeline reads them
    (no image decoding, so this is fast)."""
    spec = {n: COMMON_FEATURES[n] for n in names}
    ds = tf.data.TFRecordDataset(list(files)).batch(4096).map(  # parsed a batch at a time
        lambda s: tf.io.parse_example(s, spec), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    batches = list(ds.as_numpy_iterator())
    if not batches:
        raise ValueError(f"no records in {list(files)}")
    return [np.concatenate([b[n] for b in batches]) for n in names]


def read_ids(files: Sequence[str]) -> np.ndarray:
    """Image ids (str) of the records in `files`, in record order."""
    return _read_columns(files, ["image_id"])[0].astype(str)


def read_labels(files: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, wind speeds, class indices) of the records in `files`, in record order."""
    ids, label, label_le = _read_columns(files, ["image_id", "label", "label_le"])
    return ids.astype(str), label, label_le
