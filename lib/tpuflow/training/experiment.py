"""What a `run.py` imports: the flags, the resolved run configuration and `main`.

The jobs themselves (fold loop, checkpoints, predictions, scores, submission) run in
`tpuflow.training.runner`.

An experiment's `run.py` defines `init_model(cfg)` (an uncompiled Keras model), sets the flag
defaults in which it differs from the library's and calls `main`:

    experiment.main(init_model, dataset_kind="sequence", batch_size=64)

`--help` is answered by `main` (the flags by section, with the experiment's defaults). The
records are parsed by the parser of `--dataset_kind` (`parse_by_kind`) unless the experiment
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

JOB_WORDS = config.JOB_WORDS
TASKS = config.TASKS

FLAGS = flags.FLAGS
# The run's flags, generated from the configuration's sections (`tpuflow.training.config`).
OUR_FLAGS = sorted(config.define_flags())
# The range of every numeric flag (None, where a flag allows it, is always accepted), checked when
# the run is configured (`check_flags`): flag -> (interval, why).
FLAG_RANGES = config.flag_ranges()

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


HELP_GROUPS = config.help_groups()  # `run.py --help`: the experiment's flags by section
SCRIPT_RELATIVE = ("data_dir", "data_tfrec_dir", "frame_store")  # default paths relative to run.py (see main)

from tpuflow.results import run_card  # noqa: E402

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
    check_flags(Config(**values))  # as given, before anything is derived from them
    from tpuflow.inputs import ondevice  # noqa: PLC0415 (Keras: `run.py --help` imports none)
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
    if cfg.output_dir and storage.is_local(cfg.output_dir) and os.path.exists(cfg.output_dir) \
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
    """Entry point of a `run.py`: applies its flag defaults (`apply_defaults`), answers `--help`,
    checks the backend, parses argv and runs the jobs; records are parsed by `parse_by_kind`
    unless the experiment passes `parse_example`."""
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

    _run_main(_main, HELP_GROUPS, translate=reference_argv)


def run_tool(main: Callable, own_flags: list[str]) -> None:
    """Entry point of a tool that takes a run.py's flags besides its own (`--experiment=`: that
    run.py's defaults, `apply_tool_defaults`); its --help lists both."""
    apply_tool_defaults(sys.argv[1:])
    _run_main(main, {**HELP_GROUPS, os.path.basename(sys.argv[0]): own_flags})


def _run_main(main: Callable, help_groups: dict, translate: Callable | None = None) -> None:
    """`cli.run_main`, after a bad --backend or KERAS_BACKEND was named in one line (unless
    --help is asked for)."""
    if not cli.help_requested():
        try:
            backend.require()
        except backend.BackendError as err:
            raise SystemExit(f"ERROR: {err}") from None
    cli.run_main(main, translate=translate, help_groups=help_groups)


def run(cfg: Config, init_model: Callable, parse_example: Callable) -> dict:
    """Runs the configured jobs (inputs are checked before any long work); returns the results
    (`config`: the configuration as resolved for the run).

    The run holds its run dir's lock throughout (`tpuflow.storage.lock`). A run that fails or is
    interrupted after it started leaves its run card marked `failed`; one stopped by SIGTERM or
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
        invocation = run_card.new_invocation(cfg)  # appended failed if it fails before the card is written
        try:
            return runner.run_jobs(cfg, init_model, parse_example, check_lock=held.check)
        except BaseException as err:
            explained = runner.explain_error(cfg, err)
            try:
                run_card.mark_failed(cfg.output_dir, explained, invocation,
                                       "preempted" if isinstance(err, resume.Preempted) else "failed")
            except (OSError, ValueError) as card_err:  # the run's own error is the one to report
                print(f"WARNING: could not mark the run card failed: {card_err}", file=sys.stderr, flush=True)
            if explained is err:
                raise
            raise explained from err
