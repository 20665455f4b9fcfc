"""Prints a dataset's manifest, verifies its shard checksums, and draws a contact sheet.

Usage:
    python tools/inspect_records.py --tfrec_dir=data/data-tfrec-stacked-frames003-step005
    python tools/inspect_records.py --tfrec_dir=... --contact_sheet=sheet.png --n_examples=6 --fold=0
    python tools/inspect_records.py --tfrec_dir=data/data-frames --view=stacked:s5 --contact_sheet=sheet.png
    python tools/inspect_records.py --tfrec_dir=... [--view=...] --export=DIR

The contact sheet has one row per example (the first `--n_examples` records of `--fold`, or of
the test split with --fold=-1): its channels (stacked/mean) or frames (sequence) side by side,
decoded by the same parsers the models use, with the image id and label in the row's corner.
`--view` reads a frame store (`create_tfrecords.py --specs=frames`) through that view instead.
`--export=DIR` writes every example of every split losslessly, as the model gets it before
resizing: `<image_id>.png` for one-image kinds (grayscale, or the three channels as RGB),
`<image_id>.npy` (n, H, W, 1) uint8 for `sequence`.
Exits with status 1 if any shard is missing or damaged.
"""
import sys

import numpy as np
from absl import flags
from PIL import Image, ImageDraw

from tpuflow import cli

cli.quiet_native_logs()  # before TensorFlow loads

import tensorflow as tf  # noqa: E402

from tpuflow import storage  # noqa: E402
from tpuflow.inputs import records, views  # noqa: E402
from tpuflow.prep import build_write  # noqa: E402

flags.DEFINE_string("tfrec_dir", None, "Dataset dir (with manifest.json)", required=True)
flags.DEFINE_string("contact_sheet", None, "Write a PNG contact sheet here")
flags.DEFINE_integer("n_examples", 4, "Examples on the contact sheet")
flags.DEFINE_integer("fold", 0, "Fold to draw examples from (-1: test split)")
flags.DEFINE_bool("verify", True, "Check every shard's sha256 against the manifest")
flags.DEFINE_string("view", None, "Read --tfrec_dir as a frame store through this view (e.g. sequence:n24:s1)")
flags.DEFINE_string("export", None, "Write every example losslessly into this dir (<image_id>.png or .npy)")
FLAGS = flags.FLAGS


def examples(tfrec_dir: str, fold: int | None, view: str | None = None, frame_cache: str = "off"):
    """(image id, label, uint8 pixels at the frames' size: (H, W, C) or (n, H, W, 1)) of a fold or
    the test split (None), in record order (a view: CSV order), from records or a view (with the
    decoded-frame cache `frame_cache` says: worth building only to read every example)."""
    if view:
        v = views.open_view(tfrec_dir, view, frame_cache=frame_cache)
        rows = v.split_rows(fold)
        for row, image_id, label in zip(rows, *v.labels(rows)[:2]):
            yield image_id, int(label), v.example_numpy(row)
        return
    manifest = records.read_manifest(tfrec_dir)
    files = records.record_files(tfrec_dir, None if fold is None else [fold])
    if manifest["kind"] == "sequence":
        parse = lambda s: records.parse_sequence(s, manifest["n_frames"], manifest["image_size"][0])  # noqa: E731
    else:
        parse = lambda s: records.parse_image(s, manifest["channels"])  # noqa: E731
    for ex in tf.data.TFRecordDataset(files).map(parse):
        yield ex["image_id"].numpy().decode(), int(ex["label"]), ex["image"].numpy()


def contact_sheet(tfrec_dir: str, n_examples: int, fold: int | None, view: str | None = None) -> np.ndarray:
    """uint8 (rows, cols) image: per example, its channels or frames side by side."""
    rows = []
    for (image_id, label, image), _ in zip(examples(tfrec_dir, fold, view), range(n_examples)):
        # (H, W, C) or (n, H, W, 1) -> tiles of (H, W), separated by a 2-pixel gap.
        tiles = np.moveaxis(image, -1, 0) if image.ndim == 3 else image[..., 0]
        gap = np.full((tiles.shape[1], 2), 255.0)
        row = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
        row = Image.fromarray(np.clip(row, 0, 255).astype(np.uint8))
        ImageDraw.Draw(row).text((2, 2), f"{image_id} {label}kt", fill=255)
        rows.append(np.asarray(row))
    if not rows:
        raise ValueError(f"{tfrec_dir}: no examples in fold {fold}")
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 2), (0, width - r.shape[1])), constant_values=255)
                           for r in rows])


def export(tfrec_dir: str, out_dir: str, n_folds: int, view: str | None = None) -> int:
    """Writes every example of every split into `out_dir` losslessly; returns how many."""
    storage.makedirs(out_dir)
    count = 0
    for fold in [*range(n_folds), None]:
        for image_id, _, image in examples(tfrec_dir, fold, view, frame_cache="auto"):
            if image.ndim == 4:  # a sequence: (n, H, W, 1)
                storage.save_npy(storage.join(out_dir, f"{image_id}.npy"), image)
            else:
                path = storage.join(out_dir, f"{image_id}.png")
                with storage.atomic_path(path) as tmp:
                    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG")
            count += 1
    return count


def main(argv):
    del argv
    manifest = records.read_manifest(FLAGS.tfrec_dir)
    summary = {k: v for k, v in manifest.items() if k not in ("sha256", "shards", "build")}
    for key, value in summary.items():
        print(f"{key:20s} {value}")
    print(f"{'shards':20s} {len(manifest['shards'])} files, "
          f"{sum(manifest['shards'].values())} examples")
    bad = []
    if FLAGS.verify:
        status = build_write.verify_dataset(FLAGS.tfrec_dir)
        bad = {name: s for name, s in status.items() if s != "ok"}
        print(f"{'checksums':20s} {len(status) - len(bad)}/{len(status)} ok"
              + "".join(f"\n  {name}: {s}" for name, s in sorted(bad.items())))
    if FLAGS.contact_sheet:
        sheet = contact_sheet(FLAGS.tfrec_dir, FLAGS.n_examples, None if FLAGS.fold < 0 else FLAGS.fold, FLAGS.view)
        with storage.atomic_path(FLAGS.contact_sheet) as tmp:
            Image.fromarray(sheet).save(tmp, format="PNG")
        print(f"{'contact sheet':20s} {FLAGS.contact_sheet} ({sheet.shape[1]}x{sheet.shape[0]})")
    if FLAGS.export:
        n = export(FLAGS.tfrec_dir, FLAGS.export, int(manifest["n_folds"]), FLAGS.view)
        print(f"{'exported':20s} {n} examples to {FLAGS.export}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    cli.run_main(main)
