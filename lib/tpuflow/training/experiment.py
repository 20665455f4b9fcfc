"""What a `run.py` imports: the flags, the resolved run configuration and `main`.

The jobs themselves (fold loop, checkpoints, predictions, scores, submission) run in
`tpuflow.training.runner`.

An experiment's `run.py` defines `init_model(cfg)` (an uncompiled Keras model), sets the flag
defaults in which it differs from the library's and calls `main`:

    experiment.main(init_model, dataset_kind="sequence", batch_size=64)

The records are parsed by the parser of `--dataset_kind` (`parse_by_kind`) unless the experiment
passes its own `parse_example(serialized, cfg) -> (inputs, target)`. Defaults a run.py need not
state: those of its kind (`KIND_DEFAULTS`: the dataset dir, the batch), ImageNet weights
(`EXPERIMENT_DEFAULTS`) and `--architecture`, the run dir's name after `run-<date>-<time>-`.

`--job` is words joined by `_` from {train, val, test, score, subm}; `score` and `subm` without
`val`/`test` work from the cached predictions alone.
"""
from __future__ import annotations

import os
import sys
import re
from typing import Callable

from absl import flags
from absl import logging as absl_logging

from tpuflow import backend, cli, storage
from tpuflow.prep import frames
from tpuflow.storage import lock
from tpuflow.training import config

cli.quiet_native_logs()  # before anything imports TensorFlow
try:  # a bad --backend or KERAS_BACKEND is named here, before Keras loads (and fails on it)
    backend.require()
except backend.BackendError as _err:
    raise SystemExit(f"ERROR: {_err}") from None

JOB_WORDS = config.JOB_WORDS
TASKS = ("regression", "classification")

FLAGS = flags.FLAGS
_EARLIER_FLAGS = set(FLAGS)
flags.DEFINE_string("job", "train_val_test_score_subm", "Words joined by '_' from " + ", ".join(JOB_WORDS))
flags.DEFINE_enum("backend", "auto", list(backend.CHOICES), "Keras backend: auto (KERAS_BACKEND if set, else JAX "
                  "where JAX sees a TPU, else TensorFlow), jax or tensorflow; applied before Keras is imported")
flags.DEFINE_boolean("distributed", False, "Multi-host (JAX): keras.distribution.initialize() joins the slice's "
                     "hosts; each host reads its share of the training shards")
flags.DEFINE_string("tpu_ip_or_name", None, "TPU name, grpc:// address or 'local' (TPU VM); None: GPUs or CPU")
flags.DEFINE_boolean("tpu_fallback", False, "If the TPU cannot be reached, warn and run on the GPUs/CPU instead of failing")
flags.DEFINE_float("tpu_timeout_s", 10.0, "Seconds each TPU network step (address, metadata server, TPU API) may take")
flags.DEFINE_string("mixed_precision", "auto", "auto (by device: mixed_bfloat16 on TPU, mixed_float16 on GPU, "
                    "float32 on CPU), mixed_float16, mixed_bfloat16 or None (float32 everywhere)")
flags.DEFINE_integer("cpu_replicas", 1, "Split the CPU into this many logical devices (tests multi-replica code)")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps per compiled call (TPU: 32-256 hides host overhead)")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA-compile the train step (auto: Keras "
                  "decides; TPUs always compile)")
flags.DEFINE_boolean("resume", True, "Resume an interrupted fold from its per-epoch backup and skip completed "
                     "folds (--noresume: start every fold afresh)")
flags.DEFINE_string("data_dir", "../../data", "Dir with train_cv.csv, submission_format.csv, unique_labels_sorted.npy")
flags.DEFINE_string("data_tfrec_dir", None, "Dir of the TFRecord dataset (fold.<k>.tfrecord-*, test.tfrecord-*)")
flags.DEFINE_string("output_dir", None, "Run dir for checkpoints, predictions, scores, submission (default: run.py's dir)")
flags.DEFINE_string("data_preds_dir", None, "Predictions dir (default: <output_dir>/preds)")
flags.DEFINE_string("view", None, "Read --data_tfrec_dir as a frame store (create_tfrecords.py --specs=frames) "
                    "through this view, assembled at read time: e.g. sequence:n24:s1, stacked:s5, mean:s10, single")
flags.DEFINE_enum("frame_cache", "auto", ["auto", "memory", "off"], "With --view: decode each store frame once "
                  "into host memory (store rows x H x W bytes; a mean view: twice that); auto: when it fits in "
                  "half the available memory, memory: always, off: decode every slot as it is read")
flags.DEFINE_enum("dataset_kind", None, frames.KINDS,
                  "Record kind the experiment reads; checked against the dataset manifest (None: any)")
flags.DEFINE_string("architecture", None, "Architecture name for the experiment record and leaderboard")
flags.DEFINE_enum("task", "regression", TASKS, "Regression on wind speed or classification over its values")
flags.DEFINE_enum("metric", "rmse_rounded", [*config.METRICS, "rmse"], "Score: rmse_rounded, the RMSE of "
                  "rounded predictions (the competition's score), or rmse_raw, of raw ones (rmse: old name of "
                  "rmse_rounded)")
flags.DEFINE_enum("monitor", "val_score", [*config.MONITORS, "val_rmse"], "Quantity for best checkpoint and LR "
                  "reduction: val_score, the --metric's validation score (logged as val_rmse_rounded or "
                  "val_rmse_raw), or val_loss (val_rmse: old name of val_score)")
flags.DEFINE_integer("n_folds", 5, "Number of folds to run, starting at --initial_fold")
flags.DEFINE_integer("initial_fold", 0, "First fold to run")
flags.DEFINE_integer("dim", 366, "Image height and width fed to the model (records are resized)")
flags.DEFINE_boolean("invert", False, "Invert pixel values (255 - x)")
flags.DEFINE_integer("n_epochs", 15, "Maximum epochs per fold")
flags.DEFINE_integer("batch_size", 32, "Batch size: global (all replicas together) unless --batch_size_per_replica")
flags.DEFINE_boolean("batch_size_per_replica", False, "--batch_size is per replica: global batch = it x replicas")
flags.DEFINE_float("lr", 1e-3, "Initial learning rate (at --base_batch_size when --lr_scaling is set)")
flags.DEFINE_enum("lr_scaling", "none", ["none", "linear", "sqrt"], "Scale --lr by (global batch / "
                  "--base_batch_size), or its square root")
flags.DEFINE_integer("base_batch_size", 0, "Batch size --lr was tuned for (0: the per-replica batch)")
flags.DEFINE_float("bn_momentum", None, "Override every BatchNormalization momentum (e.g. 0.9: short runs from scratch)")
flags.DEFINE_string("backbone", "EfficientNetB0", "keras.applications backbone name")
flags.DEFINE_string("weights", None, "Backbone weights: None, imagenet or a file path")
flags.DEFINE_float("aug_prob", 0.5, "Probability that a training example gets one of the nine augmentations")
flags.DEFINE_integer("tta_number", 9, "TTA views beyond the original (a number beyond the set's size: the whole set)")
flags.DEFINE_string("tta", None, "TTA set: ref (the reference's ten views), d4 (the eight symmetries of the square) "
                    "or view names joined by ',' starting with orig (None: the set recorded in the predictions "
                    "dir, else ref)")
flags.DEFINE_float("mixup_prob", 0.0, "Probability that a training example is mixed with another of its batch (0: off)")
flags.DEFINE_float("mixup_alpha", 0.4, "Mixing weights are drawn from Beta(alpha, alpha)")
flags.DEFINE_enum("mixup_mode", "mixup", ["mixup", "cutmix"], "mixup: blend whole images; cutmix: paste a box")
flags.DEFINE_integer("n_classes", 0, "Classes for classification (0: from unique_labels_sorted.npy)")
flags.DEFINE_float("label_smoothing", 0.0, "Label smoothing for classification")
flags.DEFINE_integer("buffer_size", 2048, "Shuffle buffer: at most this many serialized records (and about 1 GB)")
flags.DEFINE_boolean("use_cache", False, "Cache the serialized training records in memory")
flags.DEFINE_integer("steps_per_epoch", 0, "Training steps per epoch (0: training examples / batch size)")
flags.DEFINE_integer("lr_patience", 2, "Epochs without improvement before the LR is reduced")
flags.DEFINE_float("lr_factor", 0.5, "LR reduction factor on plateau")
flags.DEFINE_integer("seed", 33, "Seed for shuffling and initialisation")
flags.DEFINE_boolean("quick", False, "Smoke run in seconds: 1 epoch of 2 steps, a 64-record buffer; 1 fold, 32 px, "
                     "no TTA, 4 examples per device and a new temporary run dir unless those flags are given; "
                     "its CV means nothing")
flags.DEFINE_integer("verbose", None, "Keras verbosity: 1 progress bar, 2 one line per epoch, 0 silent "
                     "(default: 1 on a terminal, 2 when output goes to a file or pipe)")

OUR_FLAGS = sorted(set(FLAGS) - _EARLIER_FLAGS)

# `run.py --help`: the experiment's flags by group (flags in none are listed as "other").
HELP_GROUPS = {
    "data": ["data_dir", "data_tfrec_dir", "dataset_kind", "invert", "aug_prob", "buffer_size", "use_cache"],
    "model": ["architecture", "task", "backbone", "weights", "dim", "n_classes", "label_smoothing", "bn_momentum"],
    "training": ["job", "quick", "n_folds", "initial_fold", "n_epochs", "batch_size", "lr", "lr_scaling",
                 "base_batch_size", "lr_patience", "lr_factor", "steps_per_epoch", "monitor", "metric",
                 "tta_number", "tta", "mixup_prob", "mixup_alpha", "mixup_mode", "seed", "resume"],
    "hardware": ["backend", "distributed", "tpu_ip_or_name", "tpu_fallback", "tpu_timeout_s", "mixed_precision",
                 "cpu_replicas", "batch_size_per_replica", "steps_per_execution", "jit_compile"],
    "outputs": ["output_dir", "data_preds_dir", "verbose"],
}
SCRIPT_RELATIVE = ("data_dir", "data_tfrec_dir")  # default paths relative to run.py (see main)
cli.answer_help(HELP_GROUPS, OUR_FLAGS, SCRIPT_RELATIVE)  # exits after printing: TensorFlow is never loaded for --help

# What a model and its configuration need loads no TensorFlow (a run.py's `init_model` builds on a
# machine with JAX alone: `benchmarks/device_check.py`); the jobs and the parsers load it when used.
from tpuflow.inputs import ondevice  # noqa: E402
from tpuflow.results import run_record  # noqa: E402

Config = config.Config
# Defaults of every experiment run from a run.py (library calls keep the flags' own defaults).
EXPERIMENT_DEFAULTS = {"weights": "imagenet"}
# Defaults by --dataset_kind: the records a run.py reads unless it says otherwise, and a batch
# that fits one accelerator's memory at 366 px (sequences: 12 frames an example).
KIND_DEFAULTS = {
    "single": {"data_tfrec_dir": "../../data/data-tfrec-single-frames001-step001", "batch_size": 128},
    "stacked": {"data_tfrec_dir": "../../data/data-tfrec-stacked-frames003-step002", "batch_size": 128},
    "mean": {"data_tfrec_dir": "../../data/data-tfrec-mean-frames003-step002", "batch_size": 128},
    "sequence": {"data_tfrec_dir": "../../data/data-tfrec-sequence-frames012-step002", "batch_size": 32},
}
_RUN_DIR = re.compile(r"^run-\d{8}-\d{4}-")
_PARSERS = ("parse_by_kind", "parse_image_example", "parse_sequence_example", "target")


def __getattr__(name: str):
    """`experiment.parse_by_kind` and the other parsers of `tpuflow.inputs.parsers`, for run.py
    files, imported (with TensorFlow) when first used."""
    if name in _PARSERS:
        from tpuflow.inputs import parsers  # noqa: PLC0415 (TensorFlow)
        return getattr(parsers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_config(**overrides) -> Config:
    """Flag values (defaults as set by the experiment) plus overrides: the run's configuration,
    frozen (`config.build`; devices and data are resolved by the runner, `config.resolve`)."""
    values = {name: FLAGS[name].value if FLAGS.is_parsed() else FLAGS[name].default for name in OUR_FLAGS}
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}")
    values.update(overrides)
    asked = set(overrides) | ({n for n in OUR_FLAGS if FLAGS[n].present} if FLAGS.is_parsed() else set())
    check_flags(Config(values))  # as given, before anything is derived from them
    ondevice.check_mixup(values["mixup_alpha"], values["mixup_prob"], values["mixup_mode"])
    ondevice.check_prob(values["aug_prob"])
    return config.build(values, asked)


def architecture_of(run_dir: str) -> str | None:
    """An experiment's architecture from its dir name: `run-20261121-1330-cnn-lstm` -> `cnn-lstm`
    (None for a dir not named `run-<yyyymmdd>-<hhmm>-<architecture>`: set `--architecture`)."""
    name = os.path.basename(os.path.abspath(run_dir))
    return _RUN_DIR.sub("", name) if _RUN_DIR.match(name) else None


def check_flags(cfg: Config) -> None:
    """Flag values that cannot work fail here, naming the flag, before anything is loaded."""
    def need(ok: bool, name: str, why: str) -> None:
        if not ok:
            raise cli.UsageError(f"--{name}={getattr(cfg, name)!r}: {why}")
    need(cfg.tta_number >= 0, "tta_number", "must be >= 0 (views beyond the original)")
    need(cfg.steps_per_execution >= 1, "steps_per_execution", "must be >= 1")
    need(cfg.n_folds >= 1, "n_folds", "must be >= 1 (folds to run, from --initial_fold)")
    need(cfg.initial_fold >= 0, "initial_fold", "must be >= 0")
    need(cfg.n_epochs >= 1, "n_epochs", "must be >= 1")
    need(cfg.batch_size >= 1, "batch_size", "must be >= 1")
    need(cfg.cpu_replicas >= 1, "cpu_replicas", "must be >= 1 (logical CPU devices)")
    need(cfg.dim >= 1, "dim", "must be >= 1 (image height and width in pixels)")
    need(cfg.n_classes >= 0, "n_classes", "must be >= 0 (0: from unique_labels_sorted.npy)")
    need(cfg.steps_per_epoch >= 0, "steps_per_epoch", "must be >= 0 (0: one pass over the training folds)")
    if cfg.output_dir and not storage.is_gcs(cfg.output_dir) and os.path.exists(cfg.output_dir) \
            and not os.path.isdir(cfg.output_dir):
        raise cli.UsageError(f"--output_dir={cfg.output_dir}: is a file, not a directory")


def experiment_defaults(defaults: dict, run_dir: str) -> dict:
    """A run.py's flag defaults over the library's for experiments and for its kind
    (`EXPERIMENT_DEFAULTS`, `KIND_DEFAULTS`), the architecture named after its dir."""
    kind_defaults = KIND_DEFAULTS.get(defaults.get("dataset_kind"), {})
    return {**EXPERIMENT_DEFAULTS, **kind_defaults, "architecture": architecture_of(run_dir), **defaults}


def apply_defaults(defaults: dict, run_dir: str) -> None:
    """Sets the flag defaults of the experiment in `run_dir` (see `experiment_defaults`).

    By default outputs land next to run.py, whatever the working directory, and the default data
    paths (relative ones) are relative to run.py too; paths given on the command line are
    relative to the working directory, as usual.
    """
    defaults = experiment_defaults(defaults, run_dir)
    for name, value in defaults.items():
        if name not in OUR_FLAGS:
            raise ValueError(f"run.py sets a default for unknown flag --{name}")
        FLAGS.set_default(name, value)
    FLAGS.set_default("output_dir", defaults.get("output_dir") or run_dir)
    for name, value in cli.script_relative({n: FLAGS[n].default for n in SCRIPT_RELATIVE}, run_dir).items():
        FLAGS.set_default(name, value)


def main(init_model: Callable, parse_example: Callable | None = None, **defaults) -> None:
    """Entry point of a `run.py`: applies its flag defaults (`apply_defaults`), parses argv and
    runs the jobs; records are parsed by `parse_by_kind` unless the experiment passes
    `parse_example`."""
    apply_defaults(defaults, os.path.dirname(os.path.abspath(sys.argv[0])))

    def _main(argv):
        if len(argv) > 1:
            raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
        if not FLAGS["verbosity"].present:  # status lines are printed once, not logged as well
            absl_logging.set_verbosity(absl_logging.ERROR)
        from tpuflow.inputs.parsers import parse_by_kind  # noqa: PLC0415 (TensorFlow)
        run(make_config(), init_model, parse_example or parse_by_kind)

    cli.run_main(_main)


def run(cfg: Config, init_model: Callable, parse_example: Callable) -> dict:
    """Runs the configured jobs (inputs are checked before any long work); returns the results
    (`config`: the configuration as resolved for the run).

    The run holds its run dir's lock throughout (`tpuflow.storage.lock`). A run that fails or is
    interrupted after it started leaves its record marked `failed`.
    """
    from tpuflow.training import hosts, runner, runtime  # noqa: PLC0415 (TensorFlow)
    if cfg.distributed and backend.chosen == "jax":
        runtime.start_hosts()  # before the lock: which host this is decides the run dir
        host = hosts.process_info()[0]
        if host:  # host 0 writes the run dir; host k the same outputs under it, never the same files
            preds_default = cfg.data_preds_dir == storage.join(cfg.output_dir, "preds")
            output_dir = storage.join(cfg.output_dir, f"host_{host}")
            cfg = cfg.replace(output_dir=output_dir, data_preds_dir=storage.join(output_dir, "preds")
                              if preds_default else cfg.data_preds_dir)
    with lock.RunLock(cfg.output_dir) as held:  # a second run on this run dir fails here, naming this one
        try:
            return runner.run_jobs(cfg, init_model, parse_example, check_lock=held.check)
        except BaseException as err:
            explained = runner.explain_error(cfg, err)
            try:
                run_record.mark_failed(cfg.output_dir, explained)
            except OSError as record_err:  # the run's own error is the one to report
                print(f"WARNING: could not mark the record failed: {record_err}", file=sys.stderr, flush=True)
            if explained is err:
                raise
            raise explained from err
