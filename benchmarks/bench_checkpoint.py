"""Usage: python benchmarks/bench_checkpoint.py [--backbone=EfficientNetB0] [--backups=4] [--gap_s=3]
    [--epoch_minutes=20] [--interval_minutes=10]

What a backup costs training, and what a preemption costs, for a model of `--backbone`'s size.

1. The training stall per backup (the time `fit` waits), with the run's own backup code
   (`resume.FoldBackup`, a backup within an epoch: weights, Adam state, metrics, state file),
   under Keras' JAX backend: synchronous `.weights.h5` + `.npz` (the TensorFlow backend's format)
   against asynchronous Orbax (the JAX backend's), in one process, and their ratio. Between
   backups the script sleeps `--gap_s` (training would run; Orbax writes meanwhile).
2. The work a preemption throws away for an epoch of `--epoch_minutes` (the reference's CNN-LSTM:
   20 min per epoch on a TPU v3-8): per-epoch backups only, against backups every
   `--interval_minutes` (the default of `--backup_every_minutes`), each without the notice
   (SIGKILL: on average half an interval, at worst one) and with it honoured (SIGTERM: the step
   under way, then a backup).
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

os.environ["KERAS_BACKEND"] = "jax"  # Orbax backups are the JAX backend's; h5 is timed here too
from tpuflow.training import experiment, resume  # noqa: E402 (first: picks Keras' backend)

import keras  # noqa: E402,I001
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

flags.DEFINE_integer("backups", 4, "Timed backups per format (after one warm-up)")
flags.DEFINE_float("gap_s", 3.0, "Seconds between backups (the training that would run meanwhile)")
flags.DEFINE_float("epoch_minutes", 20.0, "Minutes per epoch (reference CNN-LSTM on a TPU v3-8)")
flags.DEFINE_float("interval_minutes", 10.0, "Backup interval within the epoch (--backup_every_minutes' default)")
flags.DEFINE_float("step_s", 1.5, "Seconds per training step on the TPU (assumed; the notice loses at most the "
                   "step under way)")
FLAGS = flags.FLAGS


def stalls(backup: resume.FoldBackup, n: int, gap_s: float) -> list[float]:
    """Seconds each backup within epoch 1 held training up (the first, a warm-up, is left out)."""
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        backup._save(1, i + 1)
        times.append(time.perf_counter() - start)
        time.sleep(gap_s)
    backup.commit()
    return times[1:]


def main(argv):
    model = getattr(keras.applications, experiment.FLAGS.backbone)(weights=None, input_shape=(64, 64, 3), classes=10)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    model.fit(np.zeros((4, 64, 64, 3), np.float32), np.eye(10)[[0, 1, 2, 3]], epochs=1, verbose=0)
    state_mb = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in [*model.weights, *model.optimizer.variables]) / 2**20
    print(f"{experiment.FLAGS.backbone}: {model.count_params() / 1e6:.2f} M parameters, "
          f"{state_mb:.0f} MiB of weights + Adam state per backup")
    measured = {}
    for name in ("h5", "orbax"):
        with tempfile.TemporaryDirectory() as out:
            cfg = experiment.make_config(output_dir=out)
            backup = resume.FoldBackup(cfg, 0, {}, "none", trainer=model, devices="bench")
            backup.set_model(model)
            backup.set_params({"steps": 1000})
            if name == "h5":
                backup.orbax = None
            measured[name] = stalls(backup, FLAGS.backups, FLAGS.gap_s)
        print(f"{'synchronous .weights.h5' if name == 'h5' else 'asynchronous Orbax':24s}: stall per backup "
              f"{statistics.median(measured[name]) * 1e3:7.0f} ms (median of {FLAGS.backups}; "
              f"{', '.join(f'{t * 1e3:.0f}' for t in measured[name])} ms)")
    ratio = statistics.median(measured["h5"]) / statistics.median(measured["orbax"])
    print(f"ratio h5 / Orbax stall: {ratio:.1f}x (CPU, this machine)")

    epoch, interval, step = FLAGS.epoch_minutes, FLAGS.interval_minutes, FLAGS.step_s / 60
    print(f"\nWork lost per preemption, {epoch:g}-minute epochs (minutes of training redone):")
    print(f"{'backups':40s} {'SIGKILL mean':>13s} {'SIGKILL worst':>14s} {'SIGTERM mean':>13s}")
    print(f"{'per epoch, SIGTERM as a kill (before)':40s} {epoch / 2:13.1f} {epoch:14.1f} {epoch / 2:13.1f}")
    print(f"{f'every {interval:g} min + the notice (default)':40s} {interval / 2:13.1f} {interval:14.1f} {step:13.3f}")
    print(f"ratio per-epoch / default, SIGKILL mean: {epoch / interval:.1f}x; "
          f"stall overhead at the default interval: {statistics.median(measured['orbax']) / (interval * 60) * 100:.3f} % "
          f"(Orbax), {statistics.median(measured['h5']) / (interval * 60) * 100:.3f} % (h5)")


if __name__ == "__main__":
    flags.FLAGS.set_default("backbone", "EfficientNetB0")
    app.run(main)
