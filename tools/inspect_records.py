"""Prints a dataset's manifest, verifies its shard checksums, and draws a contact sheet.

Usage:
    python tools/inspect_records.py --tfrec_dir=data/data-tfrec-stacked-frames003-step005
    python tools/inspect_records.py --tfrec_dir=... --contact_sheet=sheet.png --n_examples=6 --fold=0
    python tools/inspect_records.py --tfrec_dir=data/data-frames --assemble=stacked:s5 --contact_sheet=sheet.png
    python tools/inspect_records.py --tfrec_dir=... [--assemble=...] --export=DIR

The contact sheet has one row per example (the first `--n_examples` records of `--fold`, or of
the test split with --fold=-1): its channels (stacked/mean) or frames (sequence) side by side,
decoded by the same parsers the models use, with the image id and label in the row's corner.
`--assemble` reads a frame store (`create_tfrecords.py --specs=frames`) as examples of that spec
instead (old name: `--view`).
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
from tpuflow.inputs import assembly, records  # noqa: E402
from tpuflow.prep import build_write, kinds  # noqa: E402

flags.DEFINE_string("tfrec_dir", None, "Dataset dir (with manifest.json)", required=True)
flags.DEFINE_string("contact_sheet", None, "Write a PNG contact sheet here")
flags.DEFINE_integer("n_examples", 4, "Examples on the contact sheet")
flags.DEFINE_integer("fold", 0, "Fold to draw examples from (-1: test split)")
flags.DEFINE_bool("verify", True, "Check every shard's sha256 against the manifest")
flags.DEFINE_string("assemble", None, "Read --tfrec_dir as a frame store: examples of this spec assembled from it "
                    "(e.g. sequence:n24:s1)")
flags.DEFINE_string("view", None, "Old name of --assemble")
flags.DEFINE_string("export", None, "Write every example losslessly into this dir (<image_id>.png or .npy)")
FLAGS = flags.FLAGS


def examples(tfrec_dir: str, fold: int | None, spec: str | None = None, frame_cache: str = "off"):
    """(image id, label, uint8 pixels at the frames' size: (H, W, C) or (n, H, W, 1)) of a fold or
    the test split (None), in record order (assembled: CSV order), from records or assembled from a
    frame store as `spec` says (with the decoded-frame cache `frame_cache` says: worth building only
    to read every example)."""
    if spec:
        made = assembly.open_assembly(tfrec_dir, spec, frame_cache=frame_cache)
        rows = made.split_rows(fold)
        for row, image_id, label in zip(rows, *made.labels(rows)[:2]):
            yield image_id, int(label), made.example_numpy(row)
        return
    manifest = records.read_manifest(tfrec_dir)
    files = records.record_files(tfrec_dir, None if fold is None else [fold])
    if kinds.get(manifest["kind"]).image_per_slot:
        parse = lambda s: records.parse_sequence(s, manifest["n_frames"], manifest["image_size"][0])  # noqa: E731
    else:
        parse = lambda s: records.parse_image(s, manifest["channels"])  # noqa: E731
    for ex in tf.data.TFRecordDataset(files).map(parse):
        yield ex["image_id"].numpy().decode(), int(ex["label"]), ex["image"].numpy()


def contact_sheet(tfrec_dir: str, n_examples: int, fold: int | None, spec: str | None = None) -> np.ndarray:
    """uint8 (rows, cols) image: per example, its channels or frames side by side."""
    rows = []
    for (image_id, label, image), _ in zip(examples(tfrec_dir, fold, spec), range(n_examples)):
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


def export(tfrec_dir: str, out_dir: str, n_folds: int, spec: str | None = None) -> int:
    """Writes every example of every split into `out_dir` losslessly; returns how many."""
    storage.makedirs(out_dir)
    count = 0
    for fold in [*range(n_folds), None]:
        for image_id, _, image in examples(tfrec_dir, fold, spec, frame_cache="auto"):
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
    spec = FLAGS.assemble or FLAGS.view
    if FLAGS.view:
        print(f"WARNING: --view is the old name of --assemble; read as --assemble={spec}", file=sys.stderr, flush=True)
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
        sheet = contact_sheet(FLAGS.tfrec_dir, FLAGS.n_examples, None if FLAGS.fold < 0 else FLAGS.fold, spec)
        with storage.atomic_path(FLAGS.contact_sheet) as tmp:
            Image.fromarray(sheet).save(tmp, format="PNG")
        print(f"{'contact sheet':20s} {FLAGS.contact_sheet} ({sheet.shape[1]}x{sheet.shape[0]})")
    if FLAGS.export:
        n = export(FLAGS.tfrec_dir, FLAGS.export, int(manifest["n_folds"]), spec)
        print(f"{'exported':20s} {n} examples to {FLAGS.export}")
    if bad:
        sys.exit(1)


if __name__ == "__main__":
    cli.run_main(main)
