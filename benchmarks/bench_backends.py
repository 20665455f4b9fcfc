"""Usage: python benchmarks/bench_backends.py [--experiment=experiments/run-20261121-1300-cnn-1ch/run.py]
    [--backbone=EfficientNetB0] [--dim=128] [--batch_size=32] [--n_frames=6] [--steps=5]
    [--mixed_precision=auto|None|mixed_bfloat16|mixed_float16] [--backends=tensorflow,jax]

Training examples/s of one experiment's model under each Keras backend, in one run, and their
ratio (jax / tensorflow). Keras fixes its backend per process, so each backend is measured in a
child process (this script with --worker) on the same machine, one after the other: the same
model built by the experiment's `init_model` and compiled as in training (same optimizer, loss,
precision, devices), fed one in-memory batch of random images (no input work, see
bench_throughput.py for that). The same command is what a GPU or TPU user runs.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

from tpuflow.training import config, experiment, models, runtime  # first: tpuflow picks Keras' backend (--backend)
from tpuflow.training.throughput import model_rate

import keras  # noqa: E402,I001
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("experiment", os.path.join(ROOT, "experiments", "run-20261121-1300-cnn-1ch", "run.py"),
                    "The run.py whose model is measured")
flags.DEFINE_integer("n_frames", 6, "Frames per example for sequence models")
flags.DEFINE_integer("steps", 5, "Timed training steps (after two warm-up steps)")
flags.DEFINE_list("backends", ["tensorflow", "jax"], "Backends to compare; the ratio is the 2nd over the 1st")
flags.DEFINE_boolean("worker", False, "Measure under this process's backend and print RATE <examples/s>")
FLAGS = flags.FLAGS
# Experiment flags the comparison passes on to its workers.
PASSED = ("backbone", "dim", "batch_size", "mixed_precision", "n_frames", "steps", "experiment", "cpu_replicas")


def load_run_py(path: str):
    spec = importlib.util.spec_from_file_location("bench_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure() -> float:
    """Examples/s of the experiment's model, compiled as in training, under this process's backend."""
    run_py = load_run_py(FLAGS.experiment)
    cfg = experiment.make_config(**{**run_py.DEFAULTS, "weights": None, "backbone": FLAGS.backbone,
                                    "dim": FLAGS.dim, "batch_size": FLAGS.batch_size,
                                    "mixed_precision": FLAGS.mixed_precision, "cpu_replicas": FLAGS.cpu_replicas})
    placement = runtime.get_runtime(cpu_replicas=cfg.cpu_replicas)
    cfg = config.resolve(cfg.replace(n_frames=FLAGS.n_frames, n_classes=cfg.n_classes or 10), placement=placement)
    runtime.set_precision(cfg.precision)
    print(runtime.describe(placement, cfg.precision, cfg.global_batch_size), flush=True)
    keras.utils.set_random_seed(0)
    with placement.scope():
        model = run_py.init_model(cfg)
        models.compile_model(model, cfg)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (cfg.global_batch_size, *model.inputs[0].shape[1:])).astype("float32")
    n_out = model.outputs[0].shape[-1]
    target = (np.eye(n_out, dtype="float32")[rng.integers(0, n_out, cfg.global_batch_size)]
              if cfg.task == "classification" else rng.uniform(20, 120, (cfg.global_batch_size, 1)).astype("float32"))
    return model_rate(model, (images, target), FLAGS.steps, cfg.global_batch_size)


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.worker:
        print(f"RATE {measure():.3f}", flush=True)
        return
    passed = [f"--{name}={FLAGS[name].value}" for name in PASSED]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' work slows every figure)")
    print(f"experiment: {os.path.basename(os.path.dirname(FLAGS.experiment))}, backbone {FLAGS.backbone} at "
          f"{FLAGS.dim} px, batch {FLAGS.batch_size}, precision {FLAGS.mixed_precision}", flush=True)
    rates = {}
    for name in FLAGS.backends:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", f"--backend={name}", *passed],
                              capture_output=True, text=True, env=env)
        found = re.search(r"^RATE ([\d.]+)$", proc.stdout, flags=re.M)
        if proc.returncode or not found:
            sys.exit(f"ERROR: the {name} worker failed:\n{proc.stderr[-3000:]}")
        line = next(x for x in proc.stdout.splitlines() if x.startswith("Backend "))
        rates[name] = float(found.group(1))
        print(f"{name}: {rates[name]:.1f} examples/s  [{line}]", flush=True)
    first, second = FLAGS.backends[0], FLAGS.backends[-1]
    print(f"{second}/{first} = {rates[second] / rates[first]:.2f}")


if __name__ == "__main__":
    FLAGS.set_default("dim", 128)  # the experiments' 366 px is slow on a CPU; pass --dim=366 on an accelerator
    app.run(main)
