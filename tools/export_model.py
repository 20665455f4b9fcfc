"""Exports a run's fold model, or its fold ensemble with TTA averaging, as a TensorFlow SavedModel
that takes raw encoded frames and returns wind speed (no tpuflow needed to serve it).

Usage:
    python tools/export_model.py --run_dir=experiments/run-20261121-1300-cnn-1ch --export_dir=serving/cnn-1ch
    python tools/export_model.py --run_dir=... --export_dir=... --folds=0 --views=orig   # one fold, no TTA

    # anywhere with TensorFlow:
    m = tf.saved_model.load("serving/cnn-1ch")
    m.serve(tf.constant([jpeg_bytes]))["wind_speed"]

--views: ref, d4 or view names joined by ',' (default: the views the run predicted with); --experiment_py:
the run.py to rebuild the model with (default: the one the run's card names).
"""
from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # a SavedModel is a TensorFlow format

from absl import app, flags  # noqa: E402

from tpuflow import cli  # noqa: E402

cli.quiet_native_logs()  # before TensorFlow loads

from tpuflow.inputs import ondevice  # noqa: E402
from tpuflow.training import export  # noqa: E402

flags.DEFINE_string("run_dir", None, "Run dir with config.json, run_card.json and model-best-f<k>-*.weights.h5 "
                    "(or .orbax: trained under JAX)", required=True)
flags.DEFINE_string("export_dir", None, "Where the SavedModel goes (replaced if it exists)", required=True)
flags.DEFINE_list("folds", None, "Folds to export (default: every fold of the run)")
flags.DEFINE_string("views", None, "TTA views averaged inside the model: ref, d4 or names joined by ',' (default: the run's)")
flags.DEFINE_string("experiment_py", None, "The experiment's run.py (default: the one the run's card names)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        folds = [int(k) for k in FLAGS.folds] if FLAGS.folds else None
    except ValueError:
        raise app.UsageError(f"--folds={','.join(FLAGS.folds)}: expected fold numbers") from None
    try:
        views = list(ondevice.tta_views(FLAGS.views)) if FLAGS.views else None
    except ValueError as err:
        raise app.UsageError(f"--views={FLAGS.views}: {str(err).split(': ', 1)[-1]}") from None
    info = export.export_run(FLAGS.run_dir, FLAGS.export_dir, folds, views, FLAGS.experiment_py)
    print(f"Exported folds {info['folds']} x TTA views {info['views']} ({info['kind']} frames "
          f"{info['input']}) to {FLAGS.export_dir}", flush=True)


if __name__ == "__main__":
    cli.run_main(main)
