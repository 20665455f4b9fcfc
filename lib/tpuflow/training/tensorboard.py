"""TensorBoard logs of a run: per-fold scalars and the run's configuration, beside the CSV/PNG curves.

Files: `<output_dir>/tensorboard/fold_<k>/` (every value of the epoch logs: loss, rmse, val_loss,
val_rmse_rounded or val_rmse_raw, learning_rate, ... at step = epoch, counted from 1; runs made
before the two RMSEs had two names tagged the --metric score val_rmse) and `<output_dir>/tensorboard/config/`
(the resolved flags as a Markdown table under the text tab). Written with `tf.summary`
(TensorFlow is always installed for tf.data), so they work whichever Keras backend trains. For a
`gs://` run dir the events are written to a local temporary dir and copied to the bucket through
`tpuflow.storage` after every epoch, like every other output (no TensorFlow Cloud Storage
credentials needed; a preempted run keeps its curves up to the last epoch). Compare many runs with

    tensorboard --logdir=experiments            # every run dir below, or
    tensorboard --logdir_spec=a:runs/run-a,b:gs://bucket/runs/run-b
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from tpuflow import storage


def log_dir(output_dir: str, name: str) -> str:
    return storage.join(output_dir, "tensorboard", name)


class _Writer:
    """A summary writer for a local or `gs://` log dir (see the module docstring)."""

    def __init__(self, path: str):
        self.path = path
        self.local = path if storage.is_local(path) else tempfile.mkdtemp(prefix="tb-")
        self.writer = tf.summary.create_file_writer(self.local)

    def flush(self) -> None:
        self.writer.flush()
        if self.local != self.path:
            for name in os.listdir(self.local):
                with open(os.path.join(self.local, name), "rb") as f:
                    storage.write_bytes(storage.join(self.path, name), f.read())

    def close(self) -> None:
        self.flush()
        self.writer.close()
        if self.local != self.path:
            shutil.rmtree(self.local, ignore_errors=True)


def write_config(output_dir: str, config: dict) -> None:
    """The run's configuration as text (one table row per setting)."""
    rows = "\n".join(f"| {k} | `{json.dumps(v, default=str)}` |" for k, v in sorted(config.items()))
    writer = _Writer(log_dir(output_dir, "config"))
    with writer.writer.as_default():
        tf.summary.text("config", f"| setting | value |\n|---|---|\n{rows}", step=0)
    writer.close()


class FoldScalars(keras.callbacks.Callback):
    """Writes every numeric value of each epoch's logs (plus the optimizer's learning rate) as
    TensorBoard scalars of the fold (or of a named stage, e.g. 'pretrain'). Put it after the callbacks that add values to the logs."""

    def __init__(self, output_dir: str, fold: int | str):
        super().__init__()
        self.path = log_dir(output_dir, fold if isinstance(fold, str) else f"fold_{fold}")
        self.writer = None

    def on_train_begin(self, logs=None):
        self.writer = _Writer(self.path)

    def on_epoch_end(self, epoch, logs=None):
        values = {k: float(v) for k, v in (logs or {}).items()}
        values.setdefault("learning_rate", float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        with self.writer.writer.as_default():
            for name, value in values.items():
                tf.summary.scalar(name, value, step=epoch + 1)
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()
