"""Builds fold-sharded TFRecord datasets (any of the four kinds) from the CV split tables.

"Which frames make an example" comes from `tpuflow.frames`; this module reads and decodes the
frames of one storm once, turns each example into features, and hands them to the sharded writer.
`single` and `sequence` store the original JPEG bytes (bit-exact, no re-encoding); `stacked` and
`mean` store one 3-channel image, JPEG without chroma subsampling (the channels are different
frames: 4:2:0 would smear one into another) or PNG (lossless).
"""
from __future__ import annotations

import io
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from tpuflow import __version__, frames, records, split, storage

ENCODINGS = ("jpeg", "png")


def load_frame_table(data_dir: str) -> pd.DataFrame:
    """train_cv + test_cv rows, ordered by storm and time, with `split` ('train'/'test')."""
    cols = ("image_id", "storm_id", "relative_time", "image_path", "frame_id", "wind_speed",
            "wind_speed_le", "fold_id")
    train = split.read_csv(storage.join(data_dir, "train_cv.csv"), cols).assign(split="train")
    test = split.read_csv(storage.join(data_dir, "test_cv.csv"), cols).assign(split="test")
    return frames.order_storm_frames(pd.concat([train, test], ignore_index=True))


def decode_frame(data: bytes, path: str) -> np.ndarray:
    """Grayscale frame as uint8 (H, W); a clear error naming the file if it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("L"))
    except Exception as err:  # PIL raises several types for damaged files
        raise ValueError(f"{path}: unreadable image ({err})") from err


def encode_image(pixels: np.ndarray, encoding: str, quality: int) -> bytes:
    """(H, W, C) uint8 -> JPEG (4:4:4, no chroma subsampling) or PNG bytes."""
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if encoding == "jpeg":
        image.save(buf, format="JPEG", quality=quality, subsampling=0)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def storm_examples(storm: pd.DataFrame, specs: Sequence[frames.DatasetSpec], encoding: str,
                   quality: int) -> Iterator[tuple[frames.DatasetSpec, pd.Series, list[bytes]]]:
    """(spec, frame row, encoded images) for every frame of one storm and every spec.

    Each source frame is read and decoded once. Decoding also validates the frames that are
    stored as they are (`single`, `sequence`): a damaged JPEG fails here, naming its file, not
    hours later in training.
    """
    raw = [storage.read_bytes(p) for p in storm["image_path"]]
    decoded = [decode_frame(b, p) for b, p in zip(raw, storm["image_path"])]
    first = decoded[0].shape
    bad = [i for i, d in enumerate(decoded) if d.shape != first]
    if bad:
        raise ValueError(f"{storm['image_path'].iloc[bad[0]]}: frame size {decoded[bad[0]].shape} differs "
                         f"from {first} of the storm's first frame")
    if any(s.kind in ("stacked", "mean") for s in specs):
        # Cumulative sums make every `mean` range one subtraction.
        cumsum = np.concatenate([np.zeros((1, *first)), np.cumsum(np.stack(decoded), axis=0, dtype=np.float64)])
    for spec in specs:
        starts, stops = frames.storm_ranges(spec, len(storm))
        for t in range(len(storm)):
            if spec.kind in ("single", "sequence"):
                images = [raw[i] for i in starts[t]]
            else:
                sums = cumsum[stops[t]] - cumsum[starts[t]]
                means = sums / (stops[t] - starts[t])[:, None, None]
                channels = np.clip(np.rint(np.moveaxis(means, 0, -1)), 0, 255).astype(np.uint8)
                images = [encode_image(channels, encoding, quality)]
            yield spec, storm.iloc[t], images


def example_features(row: pd.Series, images: list[bytes]) -> dict:
    return {
        "image_id": row["image_id"], "image": images,
        "label": int(row["wind_speed"]), "label_le": int(row["wind_speed_le"]),
        "storm_id": str(row["storm_id"]), "fold_id": int(row["fold_id"]),
        "frame_id": int(row["frame_id"]), "relative_time": int(row["relative_time"]),
    }


def build_datasets(data_dir: str, out_root: str, specs: Sequence[frames.DatasetSpec],
                   shards_per_fold: int = 1, encoding: str = "jpeg", quality: int = 95) -> list[dict]:
    """Builds `<out_root>/<spec.name>/` for every spec; returns their manifests.

    Shards are written atomically and the manifest last, so a dataset with a manifest is complete.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"--encoding={encoding!r}: expected one of {ENCODINGS}")
    table = load_frame_table(data_dir)
    n_folds = int(table.loc[table["split"] == "train", "fold_id"].max()) + 1
    buckets = {spec: {} for spec in specs}  # spec -> {prefix: [(key, serialized)]}
    for _, storm in table.groupby("storm_id", sort=True):
        for spec, row, images in storm_examples(storm.reset_index(drop=True), specs, encoding, quality):
            prefix = "test" if row["split"] == "test" else f"fold.{int(row['fold_id'])}"
            buckets[spec].setdefault(prefix, []).append(
                (row["image_id"], records.serialize_example(example_features(row, images))))
    manifests = []
    for spec in specs:
        out_dir = storage.join(out_root, spec.name)
        prefixes = [f"fold.{k}" for k in range(n_folds)] + ["test"]
        empty = [p for p in prefixes if not buckets[spec].get(p)]
        if empty:
            raise ValueError(f"{spec}: no examples for {empty} (check fold_id in train_cv.csv)")
        shards = {}
        for prefix in prefixes:
            n = 1 if prefix == "test" and shards_per_fold > len(buckets[spec][prefix]) else shards_per_fold
            shards.update(records.write_shards(buckets[spec][prefix], out_dir, prefix, n))
        manifest = {
            "spec": spec.to_string(), "kind": spec.kind, "n_frames": spec.n_frames, "step": spec.step,
            "channels": spec.channels, "images_per_example": spec.images_per_example,
            "encoding": "source" if spec.kind in ("single", "sequence") else encoding,
            "quality": quality if encoding == "jpeg" else None,
            "n_folds": n_folds, "counts": {p: len(buckets[spec][p]) for p in prefixes},
            "shards": shards, "tpuflow_version": __version__,
        }
        storage.write_json(storage.join(out_dir, records.MANIFEST), manifest)
        manifests.append(manifest)
    return manifests
