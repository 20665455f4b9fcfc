"""Serving artefacts: a fold's best checkpoint, or the fold ensemble with its TTA averaging, as a
TensorFlow SavedModel (Keras `ExportArchive`, the machinery behind `model.export`).

The SavedModel needs neither tpuflow nor the experiment's code: load it with
`tf.saved_model.load(dir)` and call its `serve` signature on raw encoded frames (JPEG or PNG bytes,
as the records hold them):

- `single`, `stacked`, `mean` experiments: `frames` is a string tensor (B,), one image per example
  (for `stacked`/`mean`, the 3-channel image the builder wrote);
- `sequence` experiments: (B, n_frames), the frames of each example, oldest first.

It returns `{"wind_speed": (B,) float32}`: the mean over the exported folds and TTA views of each
model's wind speed (class probabilities times the sorted unique wind speeds for classification),
exactly what the runner averages for a submission (before rounding). Decoding, resizing,
inversion and frame packing are the runner's own (`records.decode_image`, `decode_frames`), and the
TTA views are `augment.apply_view`, so exported and runner predictions agree.

Export runs under the TensorFlow backend (the SavedModel is a TensorFlow format); checkpoints from
runs on any backend load into it.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import types

import keras
import numpy as np
import tensorflow as tf

from tpuflow import storage
from tpuflow.inputs import augment, records
from tpuflow.prep import kinds
from tpuflow.results import run_card
from tpuflow.storage import sync
from tpuflow.training import config, runner

EXPORT_INFO = "tpuflow_export.json"  # what was exported (run, folds, views, input), inside the export dir

def load_run(run_dir: str, run_py: str | None = None) -> tuple[config.Config, types.ModuleType, dict]:
    """(the run's resolved configuration, its experiment module, its run card) from a run dir.

    The experiment's `run.py` is `run_py`, else the one the card names, else `<run_dir>/run.py`.
    """
    card = run_card.read_card(run_dir)
    if not card.get("dataset"):
        raise ValueError(f"{run_dir}: its run card names no dataset (train the run first)")
    cfg = config.Config.from_dict(storage.read_json(storage.join(run_dir, "config.json")))
    candidates = [run_py] if run_py else [card["run_py"]["path"], os.path.join(run_dir, "run.py")]
    path = next((p for p in candidates if p and os.path.exists(p)), None)
    if path is None:
        raise FileNotFoundError(f"{run_dir}: the experiment's run.py is not at {candidates} (pass --run_py)")
    spec = importlib.util.spec_from_file_location("tpuflow_exported_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cfg, module, card


def _decode(frames: tf.Tensor, cfg, per_slot: bool, input_shape: tuple, n_frames: int) -> tf.Tensor:
    """Encoded frames (an image each, or `per_slot`: n_frames images each) -> the model's input
    batch, as the runner's parsers make it."""
    if not per_slot:
        channels = input_shape[-1]
        one = lambda e: records.decode_image(e, channels, cfg.dim)  # noqa: E731
        images = tf.map_fn(one, frames, fn_output_signature=tf.TensorSpec(input_shape, tf.uint8))
        return tf.cast(255 - images if cfg.invert else images, tf.float32)
    pack3 = input_shape[-1] == 3
    one = lambda e: records.decode_frames(e, n_frames, cfg.dim, pack3=pack3, invert=cfg.invert)  # noqa: E731
    return tf.cast(tf.map_fn(one, frames, fn_output_signature=tf.TensorSpec(input_shape, tf.uint8)), tf.float32)


def _view(x: tf.Tensor, name: str) -> tf.Tensor:
    """A TTA view of a batch of images (B, H, W, C) or sequences (B, T, H, W, C)."""
    if x.shape.rank == 4:
        return augment.apply_view(x, name)
    shape = tf.shape(x)
    flat = tf.reshape(x, tf.concat([[-1], shape[2:]], 0))
    flat = tf.ensure_shape(flat, [None, *x.shape[2:]])
    return tf.reshape(augment.apply_view(flat, name), shape)


def export_run(run_dir: str, export_dir: str, folds: list[int] | None = None, views: list[str] | None = None,
               run_py: str | None = None) -> dict:
    """Writes the SavedModel of `folds` (default: every fold of the run) with TTA `views` (default:
    the run's) to `export_dir`, with what was exported in `EXPORT_INFO` beside it; returns that.
    A failed export leaves an earlier one intact; a local `export_dir` is replaced by a rename, a
    gs:// one file by file (see `_write`)."""
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(f"export needs the TensorFlow backend (KERAS_BACKEND=tensorflow), not "
                           f"{keras.backend.backend()!r}: a SavedModel is a TensorFlow format")
    cfg, module, card = load_run(run_dir, run_py)
    folds = list(runner.folds(cfg)) if folds is None else list(folds)
    # Runs made before views were saved used the reference's views 0..tta_number.
    views = list(views or getattr(cfg, "tta_views", None) or augment.REFERENCE_VIEWS[: cfg.tta_number + 1])
    for name in views:
        if name not in augment.VIEWS:
            raise ValueError(f"--views: unknown view {name!r}; expected names from {augment.VIEWS}")
    checkpoints = [runner.best_checkpoint(run_dir, k) for k in folds]  # fails now if one is missing
    kind, n_frames = card["dataset"]["kind"], int(card["dataset"]["n_frames"])
    per_slot = kinds.get(kind).image_per_slot
    labels = None
    if cfg.task == "classification":
        labels = runner.load_unique_labels(cfg.data_dir, required=True).astype(np.float32)
    cfg = cfg.replace(weights=None)  # the checkpoints hold every weight; no download, no pretrained file needed
    fold_models = []
    for path in checkpoints:
        model = module.init_model(cfg)
        runner.load_weights(model, path)
        fold_models.append(model)
    input_shape = tuple(fold_models[0].inputs[0].shape[1:])
    signature = tf.TensorSpec([None, n_frames] if per_slot else [None], tf.string, name="frames")

    def serve(frames):
        x = _decode(frames, cfg, per_slot, input_shape, n_frames)
        values = []
        for model in fold_models:
            for name in views:
                pred = tf.cast(model(_view(x, name), training=False), tf.float32)
                values.append(tf.linalg.matvec(pred, labels) if labels is not None else tf.reshape(pred, [-1]))
        return {"wind_speed": tf.add_n(values) / len(values)}

    archive = keras.export.ExportArchive()
    for model in fold_models:
        archive.track(model)
    archive.add_endpoint(name="serve", fn=serve, input_signature=[signature])
    info = {"run_dir": run_dir, "folds": folds, "views": views, "checkpoints": checkpoints, "kind": kind,
            "input": signature.shape.as_list(), "task": cfg.task}
    _write(archive, info, export_dir)
    return info


def _write(archive, info: dict, export_dir: str) -> None:
    """Writes the SavedModel and its `EXPORT_INFO` to a local temporary dir first, so a failed
    export leaves an earlier one intact, then puts it in place:

    - local: the old dir is moved aside and the new one renamed in (the old one is put back if that
      rename fails, and deleted once it succeeds);
    - gs://: Cloud Storage has no rename of a prefix, so the files are uploaded over `export_dir`
      (`storage.sync`: checksum-verified, unchanged files skipped), then objects of an earlier
      export that the new one lacks are deleted. Not atomic: a reader during the upload can see a
      mix of old and new files.
    """
    if not storage.is_local(export_dir):
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "model")
            archive.write_out(model, verbose=False)
            storage.write_json(os.path.join(model, EXPORT_INFO), info)
            sync.sync(model, export_dir)
            stale = set(storage.list_files(export_dir)) - set(storage.list_files(model))
        for name in sorted(stale):
            storage.remove(storage.join(export_dir, name))
        return
    parent = os.path.dirname(os.path.abspath(export_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        model = os.path.join(tmp, "model")
        archive.write_out(model, verbose=False)
        storage.write_json(os.path.join(model, EXPORT_INFO), info)
        old = None
        if os.path.exists(export_dir):
            old = tmp + "-old"
            os.rename(export_dir, old)
        try:
            os.rename(model, export_dir)
        except OSError:
            if old:
                os.rename(old, export_dir)  # the earlier export back in place
            raise
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
