"""The configuration of one run: every setting in one frozen object, grouped in sections.

A run's settings come from the flags (with the experiment's defaults) and are resolved in two
steps, each in one place here:

- `build` (from `experiment.make_config`): the job words, the `--quick` rules, the run dir, the
  TTA views, the verbosity, old flag spellings;
- `resolve` (from the runner, once the inputs and the devices are known): frames per example
  (from the dataset manifest), classes (from `unique_labels_sorted.npy`), the precision policy,
  the global batch and the learning rate scaled for it.

Each step returns a new frozen `Config`: setting an attribute is an error, `replace` makes a
changed copy. `config.json` and `record.json` hold the resolved object.

The sections say what a setting does. Those in `RESULT_SECTIONS` change what a fold's training
produces: their values make the fingerprint that a resumed fold must match (`fingerprint`). The
others say where and how fast a run goes and which part of it runs now: changing them never
invalidates a backup. Every flag must belong to exactly one section (a new flag that does not is
an error), so a new flag cannot slip into or out of the fingerprint unnoticed.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import sys
import tempfile
from typing import Any

SECTIONS: dict[str, tuple[str, ...]] = {
    # What a fold's training produces (fingerprinted).
    "data": ("data_dir", "data_tfrec_dir", "frame_store", "assemble", "dataset_kind", "n_frames", "invert", "aug_prob",
             "buffer_size", "use_cache"),
    "model": ("architecture", "task", "backbone", "weights", "dim", "n_classes", "label_smoothing",
              "bn_momentum"),
    "training": ("quick", "n_epochs", "steps_per_epoch", "batch_size", "batch_size_per_replica",
                 "global_batch_size", "lr", "lr_scaling", "base_batch_size", "scaled_lr", "lr_patience",
                 "lr_factor", "monitor", "metric", "mixup_prob", "mixup_alpha", "mixup_mode", "seed",
                 "mixed_precision", "precision"),
    # Where and how fast it runs (not fingerprinted: backups cross backends and device counts).
    "runtime": ("backend", "distributed", "tpu_ip_or_name", "tpu_fallback", "tpu_timeout_s",
                "cpu_replicas", "steps_per_execution", "jit_compile", "verbose", "frame_cache",
                "backup_every_steps", "backup_every_minutes"),
    # Which part of the run this invocation does, and where its outputs go (not fingerprinted).
    "jobs": ("job", "jobs", "resume", "overwrite", "n_folds", "initial_fold", "tta", "tta_number", "tta_set",
             "tta_views"),
    "outputs": ("output_dir", "experiment_id", "data_preds_dir"),
}
RESULT_SECTIONS = ("data", "model", "training")
# Set by `build` or `resolve`, not by a flag (None until resolved).
DERIVED = ("jobs", "experiment_id", "tta_set", "tta_views", "n_frames", "global_batch_size",
           "scaled_lr", "precision")
PLACED = ("global_batch_size", "scaled_lr", "precision")  # the derived settings the devices decide
# What a prediction may change from the training's settings: its batch (memory) and the devices.
PREDICTION_FREE = ("batch_size", "batch_size_per_replica", *PLACED)

JOB_WORDS = ("train", "val", "test", "score", "subm")
QUICK_DIM = 32  # --quick images: the smallest keras.applications backbones accept

# The two RMSEs have two names. Old spellings of flag values are still read, with a warning.
METRICS = ("rmse_rounded", "rmse_raw")  # run.py --metric: the competition score, or of raw predictions
# run.py --monitor: val_score, the --metric's validation score (logged under its own name), or val_loss
MONITORS = ("val_score", "val_loss")
OLD_VALUES = {("metric", "rmse"): "rmse_rounded",
              ("monitor", "val_rmse"): "val_score"}  # val_rmse held the --metric's score, rounded or raw
# Old flag names, still read with a note: "view" now means a TTA view only. Runs before the rename
# read a frame store as `--data_tfrec_dir=<store> --view=<spec>` (`new_names`, `old_names`).
OLD_NAMES = {"view": "assemble"}


def score_key(metric: str) -> str:
    """The epoch-log key of the --metric's validation score: `val_rmse_rounded` or `val_rmse_raw`."""
    return f"val_{metric}"


def monitored_key(cfg) -> str:
    """The epoch-log key that --monitor names (the best checkpoint and LR reduction follow it)."""
    return score_key(cfg.metric) if cfg.monitor == "val_score" else cfg.monitor


def section_of() -> dict[str, str]:
    """Setting -> its section (read from SECTIONS each time: one table to edit)."""
    return {name: section for section, names in SECTIONS.items() for name in names}


def result_fields() -> list[str]:
    """The settings that change what a fold's training produces, sorted."""
    return sorted(name for s in RESULT_SECTIONS for name in SECTIONS[s])


class FrozenConfigError(AttributeError):
    """A setting was changed after the configuration was built (use `replace`)."""


class Config:
    """A run's settings, read as attributes (`cfg.dim`); frozen: `replace` makes a changed copy."""

    def __init__(self, values: dict[str, Any]):
        known = section_of()
        unplaced = sorted(set(values) - set(known))
        if unplaced:
            raise ValueError(f"setting(s) {unplaced} belong to no section of tpuflow.training.config.SECTIONS: "
                             "place each one (result-affecting or runtime) so that resume knows it")
        object.__setattr__(self, "_values", {name: values.get(name) for name in known})

    def __getattr__(self, name: str):
        try:
            return self.__dict__["_values"][name]
        except KeyError:
            raise AttributeError(f"the run configuration has no setting {name!r}") from None

    def __setattr__(self, name: str, value) -> None:
        raise FrozenConfigError(f"the run configuration is frozen: cannot set {name!r} "
                                "(settings are resolved in tpuflow.training.config; use cfg.replace(...))")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __eq__(self, other) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Config({self.to_dict()!r})"

    def replace(self, **changes) -> "Config":
        unknown = sorted(set(changes) - set(self._values))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}")
        return Config({**self._values, **changes})

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready (what config.json and record.json hold)."""
        return {k: _json_safe(v) for k, v in sorted(self._values.items())}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """A configuration read back from config.json (older files: old names and value spellings
        read as the new ones, settings they lack are None, settings no longer known dropped)."""
        known = section_of()
        return cls({k: new_value(k, v, warn=False) for k, v in new_names(values, warn=False).items() if k in known})


def _json_safe(value):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def new_value(name: str, value, warn: bool = True):
    """A flag value in its current spelling; an old one is read with a one-line warning."""
    new = OLD_VALUES.get((name, value)) if isinstance(value, str) else None
    if new is None:
        return value
    if warn:
        _warn(f"--{name}={value} is the old name of --{name}={new}; read as {new}")
    return new


def _warn(message: str) -> None:
    logging.warning(message)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def new_names(values: dict[str, Any], warn: bool = True) -> dict[str, Any]:
    """Settings under today's flag names (`OLD_NAMES`), each old one given read with a one-line
    warning; a frame store given the old way (`--data_tfrec_dir` with `--assemble`) is read as
    `--frame_store`. With a frame store, `data_tfrec_dir` is None: no records are read."""
    v = dict(values)
    for old, new in OLD_NAMES.items():
        given = v.pop(old, None)
        if given is not None and v.get(new) is None:
            if warn:
                _warn(f"--{old} is the old name of --{new}; read as --{new}={given}")
            v[new] = given
    if v.get("assemble") and not v.get("frame_store") and v.get("data_tfrec_dir"):
        if warn:
            _warn(f"--data_tfrec_dir={v['data_tfrec_dir']} with --assemble is the old spelling of "
                  f"--frame_store; read as --frame_store={v['data_tfrec_dir']}")
        v["frame_store"] = v["data_tfrec_dir"]
    if v.get("frame_store"):
        v["data_tfrec_dir"] = None
    return v


def old_names(settings: dict[str, Any]) -> dict[str, Any]:
    """Result settings as runs before `--frame_store`/`--assemble` recorded them (for their
    fingerprints): the store in `data_tfrec_dir`, the spec in `view`."""
    old = {k: v for k, v in settings.items() if k not in ("frame_store", "assemble")}
    old["view"] = settings.get("assemble")
    if settings.get("frame_store"):
        old["data_tfrec_dir"] = settings["frame_store"]
    return old


def old_value(name: str, value):
    """The value as runs before the renames recorded it (for their fingerprints)."""
    return next((old for (n, old), new in OLD_VALUES.items() if n == name and new == value), value)


def parse_jobs(job: str) -> list[str]:
    """The job words in run order; an unknown word is an error naming it."""
    words = [w for w in job.split("_") if w]
    bad = [w for w in words if w not in JOB_WORDS]
    if bad or not words:
        raise ValueError(f"--job={job!r}: unknown word(s) {bad}; use words from {JOB_WORDS} joined by '_'")
    return sorted(set(words), key=JOB_WORDS.index)


def build(values: dict[str, Any], asked: set[str]) -> Config:
    """The configuration from flag values (experiment defaults applied): old spellings, job words,
    `--quick` rules (for the settings in none of `asked`, the flags given), run dir, TTA views and
    verbosity; frozen. Devices, dataset and labels are resolved later (`resolve`)."""
    from tpuflow import storage  # noqa: PLC0415 (imported when a run is configured, not for --help)
    from tpuflow.inputs import ondevice  # noqa: PLC0415
    from tpuflow.results import scoring  # noqa: PLC0415
    v = {k: new_value(k, x) for k, x in values.items()}
    v["jobs"] = parse_jobs(v["job"])
    if v["quick"]:  # every job in seconds on a CPU: one short epoch, tiny batches and buffers
        v.update(n_epochs=1, steps_per_epoch=2, buffer_size=64)
        v.update({k: 0 for k in ("backup_every_steps", "backup_every_minutes") if k not in asked})  # epoch ends only
        if "batch_size" not in asked:  # 4 per device, so that any number of devices divides it
            v.update(batch_size=4, batch_size_per_replica=True)
        # unless asked for; assembly decodes the few frames it reads rather than caching every one
        quick = {"n_folds": 1, "tta_number": 0, "dim": min(v["dim"], QUICK_DIM), "frame_cache": "off"}
        asked = asked | ({"tta_number"} if "tta" in asked else set())  # a TTA set asked for: all its views
        v.update({k: x for k, x in quick.items() if k not in asked})
        if "output_dir" not in asked:  # a smoke run never writes into the experiment's real run dir
            name = os.path.basename(os.path.abspath(v["output_dir"] or "."))
            v["output_dir"] = tempfile.mkdtemp(prefix=f"tpuflow-quick-{name}-")
    if v["verbose"] is None:  # progress bars only where a terminal redraws them
        v["verbose"] = 1 if sys.stdout.isatty() else 2
    v["output_dir"] = v["output_dir"] or "."
    v["experiment_id"] = os.path.basename(os.path.abspath(v["output_dir"]))
    v["data_preds_dir"] = v["data_preds_dir"] or storage.join(v["output_dir"], "preds")
    if not set(v["jobs"]) & {"train", "val", "test"} and not asked & {"n_folds", "initial_fold"}:
        v.update(run_folds(v["output_dir"]))  # scoring a run: its folds, not the default 5
    # TTA index t -> view name: the first tta_number + 1 views of the set; without --tta, the set
    # the predictions dir was made with (whatever number of its views a run predicted).
    recorded = scoring.read_view_set(v["data_preds_dir"])
    v["tta_set"] = list(ondevice.tta_views(v["tta"] or (",".join(recorded) if recorded else "ref")))
    v["tta_views"] = v["tta_set"][: v["tta_number"] + 1]
    v["tta_number"] = len(v["tta_views"]) - 1
    return Config(v)


def run_folds(output_dir: str) -> dict[str, int]:
    """`initial_fold` and `n_folds` of the folds a run dir's results cover: its record's CV, else
    its training's (config.json); {} for a dir with neither. Said on one line."""
    from tpuflow import storage  # noqa: PLC0415
    from tpuflow.results import run_record  # noqa: PLC0415
    covered, source = run_record.cv_folds(output_dir), run_record.RECORD_NAME
    if not covered and storage.exists(storage.join(output_dir, "config.json")):
        trained, source = storage.read_json(storage.join(output_dir, "config.json")), "config.json"
        if isinstance(trained.get("initial_fold"), int) and isinstance(trained.get("n_folds"), int):
            covered = list(range(trained["initial_fold"], trained["initial_fold"] + trained["n_folds"]))
    if not covered:
        return {}
    print(f"--n_folds not given: the run's folds {min(covered)}-{max(covered)} ({source})", flush=True)
    return {"initial_fold": min(covered), "n_folds": max(covered) - min(covered) + 1}


def resolve(cfg: Config, manifest: dict | None = None, n_labels: int | None = None,
            placement=None) -> Config:
    """The settings that depend on the data and the devices; frozen. The runner resolves the data's
    (frames, classes) first, then, once the devices are up, theirs.

    manifest: the dataset's (frames per example); n_labels: classes in unique_labels_sorted.npy
    (classification); placement: a `runtime.Placement` (precision policy by device kind, global
    batch over its replicas, LR scaled for that batch). What is not given stays as it was.
    """
    changes: dict[str, Any] = {}
    if manifest:
        changes["n_frames"] = int(manifest["n_frames"])
    if n_labels is not None:
        if cfg.n_classes not in (0, n_labels):
            from tpuflow import cli, storage  # noqa: PLC0415
            labels = storage.join(cfg.data_dir, "unique_labels_sorted.npy")
            raise cli.UsageError(f"--n_classes={cfg.n_classes}: the data has {n_labels} classes "
                                 f"({labels}); use 0 or {n_labels}")
        changes["n_classes"] = n_labels
    if placement is not None:
        from tpuflow.training import runtime  # noqa: PLC0415 (imports TensorFlow)
        batch = runtime.global_batch_size(cfg.batch_size, placement.replicas, cfg.batch_size_per_replica)
        changes.update(
            precision=runtime.precision_name(cfg.mixed_precision, placement.kind),
            global_batch_size=batch,
            scaled_lr=runtime.scaled_lr(cfg.lr, batch, cfg.base_batch_size or batch // placement.replicas,
                                        cfg.lr_scaling))
    return cfg.replace(**changes)


TPU_STEPS_PER_EXECUTION = 32  # --steps_per_execution=0 (auto) on TPUs: hides the host's per-call overhead


def steps_per_execution(cfg: Config, device_kind: str, epoch_steps: int) -> tuple[int, str]:
    """--steps_per_execution resolved, with why: as given, else (0, auto) 32 on TPUs and 1 elsewhere;
    never more than an epoch's steps (`epoch_steps`, the shortest fold's) or --backup_every_steps
    (a backup falls on a call's last step)."""
    if cfg.steps_per_execution:
        return cfg.steps_per_execution, "--steps_per_execution"
    wanted = TPU_STEPS_PER_EXECUTION if device_kind == "tpu" else 1
    limits = [n for n in (epoch_steps, cfg.backup_every_steps) if n]
    n = min([wanted, *limits])
    return n, f"auto: {wanted} on {device_kind.upper()}" + (f", at most {min(limits)} (epoch or backup steps)"
                                                             if n < wanted else "")


def result_settings(cfg: Config) -> dict[str, Any]:
    """The settings that change what a fold's training produces."""
    return {k: cfg._values.get(k) for k in result_fields()}


def fingerprint(cfg: Config) -> str:
    """Short hash of the result-affecting settings (resolved global batch and LR included)."""
    return _hash(result_settings(cfg))


def fingerprints(cfg: Config) -> set[str]:
    """This configuration's fingerprint and the ones runs made before flags or their values were
    renamed wrote for the same settings, each rename made or not (so that their backups and done
    records still resume)."""
    settings = result_settings(cfg)
    renamed = sorted({n for n, _ in OLD_VALUES} & settings.keys())
    found = set()
    for named in (settings, old_names(settings)):  # --frame_store/--assemble, or not yet
        for spelled_old in itertools.product((False, True), repeat=len(renamed)):  # renamed at different times
            old = {n: old_value(n, named[n]) for n, is_old in zip(renamed, spelled_old) if is_old}
            found.add(_hash({**named, **old}))
    return found


def _hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def recorded_settings(flags: dict) -> dict:
    """Settings as an older record.json or config.json wrote them, in today's names and spelling."""
    return {k: new_value(k, v, warn=False) for k, v in new_names(flags, warn=False).items()}
