"""Plans a run for TPU targets on this machine, without a TPU: will it fit, what will it cost?

Usage:
    python tools/tpu_plan.py --experiment=experiments/<run-id> [its run.py flags: --dim,
        --batch_size, --backbone, --data_tfrec_dir (or --frame_store with --assemble), --mixup_prob, ...]
        [--target=v5e-8,v3-8] [--json=PATH] [--host_rates=PATH]

Takes the same flags as the experiment's run.py (its defaults applied, resolved by the run's own
configuration code) and, for each target, AOT-compiles the run's training step (with the device
augmentation and mixup) and its one-pass TTA prediction step with JAX's TPU compiler (the
`tpu-aot` extra: jax[tpu]), from the dataset's manifest alone (no example is read). Prints a
table: HBM per chip needed against the chip's, whether it fits (else the largest global batch that
does, found by compiling), FLOPs per step, the compiler's step time, epoch and whole-job time
(folds x epochs + TTA of val and test), the host input rate the step needs (and host cores, given
`--host_rates` from `benchmarks/bench_scale.py --rates_json`), and the collectives (gradient
all-reduces; collectives that move the batch). Writes nothing but `--json`. Exit status 1 if a
target could not be planned. Targets: see `tpuflow.training.tpu_plan.TARGETS`.
"""
from __future__ import annotations

import os
import sys

# The plan compiles under Keras' JAX backend; JAX itself runs on the CPU here (libtpu compiles for
# the targets' abstract devices and is never started as a device).
if next((a.split("=", 1)[1] for a in reversed(sys.argv[1:]) if a.startswith("--backend=")), "jax") == "tensorflow":
    sys.exit("tpu_plan.py: error: --backend=tensorflow: the plan compiles the run as Keras' JAX backend runs it "
             "(TPU VMs run JAX); drop --backend")
os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import importlib.util  # noqa: E402

from tpuflow import backend, cli, storage  # noqa: E402

if importlib.util.find_spec("jax") is None:  # Keras' JAX backend cannot load: what to install, not a traceback
    sys.exit(f"tpu_plan.py: error: {backend.tpu_compiler_missing()}")

from tpuflow.training import experiment, tpu_plan  # noqa: E402 (first: picks Keras' backend)

from absl import flags  # noqa: E402,I001

flags.DEFINE_string("experiment", None, "The experiment to plan: experiments/<run-id> or its run.py")
flags.DEFINE_string("target", "v5e-8,v3-8", "TPU targets joined by ',': " + ", ".join(tpu_plan.TARGETS))
flags.DEFINE_string("json", None, "Also write the plan here (JSON: one entry per target)")
flags.DEFINE_string("host_rates", None, "JSON of measured host input rates per core "
                    "(benchmarks/bench_scale.py --rates_json): host cores each target needs")
FLAGS = flags.FLAGS


def read_host_rates(path: str | None) -> dict | None:
    """`{"cores": N, "rates": {example spec: examples/s per core}}`; a bad file is named in one line."""
    if not path:
        return None
    try:
        rates = storage.read_json(path)
    except (OSError, ValueError) as err:
        raise cli.UsageError(f"--host_rates={path}: {err}") from err
    if not isinstance(rates, dict) or not isinstance(rates.get("rates"), dict):
        raise cli.UsageError(f"--host_rates={path}: expected {{\"cores\": N, \"rates\": {{example spec: examples/s per core}}}}")
    return rates


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    if not FLAGS.experiment:
        raise cli.UsageError("--experiment is required (experiments/<run-id> or its run.py)")
    targets = tpu_plan.parse_targets(FLAGS.target)
    tpu_plan.require_compiler()
    rates = read_host_rates(FLAGS.host_rates)
    run_py = experiment.load_run_py(FLAGS.experiment)
    cfg = experiment.make_config()
    entries = tpu_plan.plan(cfg, run_py.init_model, targets, rates)
    print(tpu_plan.table(entries), flush=True)
    if FLAGS.json:
        storage.write_json(FLAGS.json, {"experiment": cfg.experiment_id, "targets": entries})
    failed = [e["target"] for e in entries if "error" in e]
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    experiment.run_tool(main, ["experiment", "target", "json", "host_rates"])
