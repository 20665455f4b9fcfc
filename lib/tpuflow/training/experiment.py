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

import functools
import importlib.util
import os
import sys
import re
from typing import Callable

from absl import flags
from absl import logging as absl_logging

from tpuflow import backend, cli, storage
from tpuflow.prep import kinds
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
flags.DEFINE_integer("steps_per_execution", 0, "Training steps per compiled call (0: auto, 32 on TPUs, where it "
                     "hides host overhead, and 1 elsewhere; never more than an epoch's or a backup interval's steps)")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA-compile the train step (auto: Keras "
                  "decides; TPUs always compile)")
flags.DEFINE_boolean("resume", True, "Resume an interrupted fold from its last backup and skip completed "
                     "folds (--noresume: start every fold afresh)")
flags.DEFINE_boolean("overwrite", False, "Replace the results of a run dir whose folds were trained with other "
                     "settings (without it such a training is refused, naming the flags that differ)")
flags.DEFINE_integer("backup_every_steps", 0, "Also back a fold up within the epoch every this many steps (0: off)")
flags.DEFINE_float("backup_every_minutes", 10.0, "Also back a fold up within the epoch once this many minutes "
                   "passed since the last backup (0: off; --quick: off)")
flags.DEFINE_string("data_dir", "../../data", "Dir with train_cv.csv, submission_format.csv, unique_labels_sorted.npy")
flags.DEFINE_string("data_tfrec_dir", None, "Dir of the TFRecord dataset (fold.<k>.tfrecord-*, test.tfrecord-*)")
flags.DEFINE_string("output_dir", None, "Run dir for checkpoints, predictions, scores, submission (default: run.py's dir)")
flags.DEFINE_string("data_preds_dir", None, "Predictions dir (default: <output_dir>/preds)")
flags.DEFINE_string("frame_store", None, "Dir of a frame store (create_tfrecords.py --specs=frames) to assemble "
                    "the examples from at read time, as --assemble says (instead of --data_tfrec_dir's records)")
flags.DEFINE_string("assemble", None, "With --frame_store: the examples to assemble from it, in the builder's spec "
                    "grammar: e.g. sequence:n24:s1, stacked:s5, mean:s10, single")
flags.DEFINE_string("view", None, "Old name of --assemble (read as it, with a note)")
flags.DEFINE_enum("frame_cache", "auto", ["auto", "memory", "off"], "With --assemble: decode each store frame once "
                  "into host memory (store rows x H x W bytes; mean examples: twice that); auto: when it fits in "
                  "half the available memory, memory: always, off: decode every slot as it is read")
flags.DEFINE_enum("dataset_kind", None, kinds.NAMES,
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

# The range of every numeric flag (None, where a flag allows it, is always accepted), checked when
# the run is configured (`check_flags`): flag -> (interval, why).
FLAG_RANGES = {
    "tpu_timeout_s": ("(0, inf)", "seconds"),
    "cpu_replicas": ("[1, inf)", "logical CPU devices"),
    "steps_per_execution": ("[0, inf)", "0: auto, 32 on TPUs and 1 elsewhere"),
    "backup_every_steps": ("[0, inf)", "0: off"),
    "backup_every_minutes": ("[0, inf)", "0: off"),
    "n_folds": ("[1, inf)", "folds to run, from --initial_fold"),
    "initial_fold": ("[0, inf)", ""),
    "dim": ("[1, inf)", "image height and width in pixels"),
    "n_epochs": ("[1, inf)", ""),
    "batch_size": ("[1, inf)", ""),
    "lr": ("(0, inf)", "the initial learning rate"),
    "base_batch_size": ("[0, inf)", "0: the per-replica batch"),
    "bn_momentum": ("[0, 1]", ""),
    "aug_prob": ("[0, 1]", ""),
    "tta_number": ("[0, inf)", "views beyond the original"),
    "mixup_prob": ("[0, 1]", ""),
    "mixup_alpha": ("(0, inf)", ""),
    "n_classes": ("[0, inf)", "0: from unique_labels_sorted.npy"),
    "label_smoothing": ("[0, 1)", ""),
    "buffer_size": ("[1, inf)", "records"),
    "steps_per_epoch": ("[0, inf)", "0: one pass over the training folds"),
    "lr_patience": ("[0, inf)", "epochs"),
    "lr_factor": ("(0, 1)", "the LR is multiplied by it on a plateau"),
    "seed": ("[0, inf)", ""),
    "verbose": ("[0, 2]", ""),
}

# The reference solution's run.py flags that tpuflow names otherwise: reference flag -> (our flag,
# value in our terms) where it means the same here (read with a one-line note), or (None, what to
# use instead) where it does not (refused, naming our equivalent). Its other flags share our names.
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no", "none", "")


def _boolean(value: str) -> str:
    if value.lower() not in _TRUE + _FALSE:
        raise ValueError(value)
    return "true" if value.lower() in _TRUE else "false"


REFERENCE_FLAGS = {
    "image_inverted": ("invert", _boolean),
    "pretrained": ("weights", lambda v: "imagenet" if v.lower() in _TRUE else "None" if v.lower() in _FALSE else v),
    "metric_name": ("metric", lambda v: v),
    "aug_percentage": ("aug_prob", lambda v: f"{float(v) / 100:g}" if float(v) > 1 else v),  # 50 (%) or 0.5
    "n_channels": (None, "channels follow the records' kind: --dataset_kind=single (1 channel), stacked or "
                         "mean (3), sequence (1 per frame)"),
    "n_examples_train": (None, "an epoch is the training folds' examples, counted from the dataset manifest; "
                               "use --steps_per_epoch for shorter epochs"),
    "aug_number": (None, "a training example gets one of the nine TTA transforms with probability --aug_prob "
                         "(--aug_prob=0: none)"),
    "dim_before_aug": (None, "augmentation runs at --dim on the accelerator (flips and rotations without a crop "
                             "or a second resize): set --dim"),
}


def reference_argv(argv: list[str]) -> list[str]:
    """The command line with the reference's flag names (`REFERENCE_FLAGS`) in ours, each noted on
    stderr in one line; a flag without a meaning here is a UsageError naming our equivalent."""
    out = list(argv[:1])
    for arg in argv[1:]:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name not in REFERENCE_FLAGS:
            out.append(arg)
            continue
        ours, how = REFERENCE_FLAGS[name]
        if ours is None:
            raise cli.UsageError(f"--{name} (the reference's flag) has no meaning in tpuflow: {how}")
        try:
            mapped = f"--{ours}={how(value if eq else '1')}"
        except ValueError:
            raise cli.UsageError(f"--{name}={value}: cannot be read as --{ours} (the reference's flag for it)"
                                 ) from None
        print(f"NOTE: {arg} is the reference's flag: read as {mapped}", file=sys.stderr, flush=True)
        out.append(mapped)
    return out


# `run.py --help`: the experiment's flags by group (flags in none are listed as "other").
HELP_GROUPS = {
    "data": ["data_dir", "data_tfrec_dir", "frame_store", "assemble", "frame_cache", "dataset_kind", "invert",
             "aug_prob", "buffer_size", "use_cache"],
    "model": ["architecture", "task", "backbone", "weights", "dim", "n_classes", "label_smoothing", "bn_momentum"],
    "training": ["job", "quick", "n_folds", "initial_fold", "n_epochs", "batch_size", "lr", "lr_scaling",
                 "base_batch_size", "lr_patience", "lr_factor", "steps_per_epoch", "monitor", "metric",
                 "tta_number", "tta", "mixup_prob", "mixup_alpha", "mixup_mode", "seed", "resume", "overwrite",
                 "backup_every_steps", "backup_every_minutes"],
    "hardware": ["backend", "distributed", "tpu_ip_or_name", "tpu_fallback", "tpu_timeout_s", "mixed_precision",
                 "cpu_replicas", "batch_size_per_replica", "steps_per_execution", "jit_compile"],
    "outputs": ["output_dir", "data_preds_dir", "verbose"],
}
SCRIPT_RELATIVE = ("data_dir", "data_tfrec_dir", "frame_store")  # default paths relative to run.py (see main)
cli.answer_help(HELP_GROUPS, OUR_FLAGS, SCRIPT_RELATIVE)  # exits after printing: TensorFlow is never loaded for --help

# What a model and its configuration need loads no TensorFlow (a run.py's `init_model` builds on a
# machine with JAX alone: `benchmarks/device_check.py`); the jobs and the parsers load it when used.
from tpuflow.inputs import ondevice  # noqa: E402
from tpuflow.results import run_record  # noqa: E402

Config = config.Config
# Defaults of every experiment run from a run.py (library calls keep the flags' own defaults).
EXPERIMENT_DEFAULTS = {"weights": "imagenet"}
# Defaults by --dataset_kind (each kind's `defaults`): the records a run.py reads unless it says
# otherwise, and a batch that fits one accelerator's memory at 366 px.
KIND_DEFAULTS = {name: kind.defaults for name, kind in kinds.REGISTRY.items()}
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
    values, asked = config.new_names(values), {config.OLD_NAMES.get(n, n) for n in asked}
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
    """Flag values that cannot work fail here, naming the flag, before anything is loaded: every
    numeric flag against its range in `FLAG_RANGES`."""
    for name in ("backup_every_steps", "backup_every_minutes"):  # 0 is off; below 1 (not 0) is a typo
        if getattr(cfg, name) and getattr(cfg, name) < 1:
            raise cli.UsageError(f"--{name}={getattr(cfg, name)!r}: a backup interval must be >= 1 (0: off)")
    for name, (interval, why) in FLAG_RANGES.items():
        value = getattr(cfg, name)
        if value is not None and not in_range(value, interval):
            raise cli.UsageError(f"--{name}={value!r}: must be {range_text(interval)}" + (f" ({why})" if why else ""))
    if cfg.output_dir and not storage.is_gcs(cfg.output_dir) and os.path.exists(cfg.output_dir) \
            and not os.path.isdir(cfg.output_dir):
        raise cli.UsageError(f"--output_dir={cfg.output_dir}: is a file, not a directory")


def in_range(value: float, interval: str) -> bool:
    """Whether `value` lies in `interval`, written as in FLAG_RANGES: `[1, inf)`, `(0, 1]`, ..."""
    low, high = (float(x) for x in interval[1:-1].split(","))
    return ((value >= low) if interval[0] == "[" else (value > low)) and \
        ((value <= high) if interval[-1] == "]" else (value < high))


def range_text(interval: str) -> str:
    """`[1, inf)` -> `>= 1`, `(0, inf)` -> `> 0`, a bounded interval as it is written."""
    low, high = (x.strip() for x in interval[1:-1].split(","))
    if high == "inf":
        return f"{'>=' if interval[0] == '[' else '>'} {low}"
    return f"within {interval}"


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


def run_py_path(path: str) -> str:
    """An experiment given as its folder or its run.py -> the run.py's path."""
    return os.path.join(path, "run.py") if os.path.isdir(path) else path


@functools.cache
def load_run_py(path: str):
    """An experiment's run.py (or its folder) as a module, for the tools that check or plan it
    (its `__main__` guard keeps it from running)."""
    spec = importlib.util.spec_from_file_location("tool_experiment", run_py_path(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def apply_tool_defaults(argv: list[str]) -> None:
    """For a tool given `--experiment=<run.py or its folder>`: that run.py's flag defaults, set
    before flags are parsed as `main` sets them; without one, outputs default to the working dir."""
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--experiment=")), None)
    if not path:
        FLAGS.set_default("output_dir", os.getcwd())
        return
    try:
        defaults = getattr(load_run_py(path), "DEFAULTS", {})  # a run.py may pass them to main only
    except OSError:
        return  # the tool loads it again and names the file in one line
    apply_defaults(defaults, os.path.dirname(os.path.abspath(run_py_path(path))))


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
        from tpuflow.training import resume  # noqa: PLC0415 (TensorFlow)
        try:
            run(make_config(), init_model, parse_example or parse_by_kind)
        except resume.Preempted as err:  # not an error: the same command resumes
            print(f"{os.path.basename(sys.argv[0])}: preempted: {err}", file=sys.stderr, flush=True)
            sys.exit(cli.PREEMPTED_EXIT)

    cli.run_main(_main, translate=reference_argv)


def run(cfg: Config, init_model: Callable, parse_example: Callable) -> dict:
    """Runs the configured jobs (inputs are checked before any long work); returns the results
    (`config`: the configuration as resolved for the run).

    The run holds its run dir's lock throughout (`tpuflow.storage.lock`). A run that fails or is
    interrupted after it started leaves its record marked `failed`; one stopped by SIGTERM or
    SIGINT (`resume.NOTICE`: training backs up first) `preempted`, and raises `resume.Preempted`.
    """
    from tpuflow.training import hosts, resume, runner, runtime  # noqa: PLC0415 (TensorFlow)
    if cfg.distributed and backend.chosen == "jax":
        runtime.start_hosts()  # before the lock: which host this is decides the run dir
        host = hosts.process_info()[0]
        if host:  # host 0 writes the run dir; host k the same outputs under it, never the same files
            preds_default = cfg.data_preds_dir == storage.join(cfg.output_dir, "preds")
            output_dir = hosts.host_dir(cfg.output_dir, host)
            cfg = cfg.replace(output_dir=output_dir, data_preds_dir=storage.join(output_dir, "preds")
                              if preds_default else cfg.data_preds_dir)
    with lock.RunLock(cfg.output_dir) as held, resume.NOTICE:  # a second run on this run dir fails here
        invocation = run_record.new_invocation(cfg)  # appended failed if it fails before it is recorded
        try:
            return runner.run_jobs(cfg, init_model, parse_example, check_lock=held.check)
        except BaseException as err:
            explained = runner.explain_error(cfg, err)
            try:
                run_record.mark_failed(cfg.output_dir, explained, invocation,
                                       "preempted" if isinstance(err, resume.Preempted) else "failed")
            except (OSError, ValueError) as record_err:  # the run's own error is the one to report
                print(f"WARNING: could not mark the record failed: {record_err}", file=sys.stderr, flush=True)
            if explained is err:
                raise
            raise explained from err
