"""The configuration of one run: every setting in one frozen object, grouped in sections.

A run's settings come from the flags (with the experiment's defaults) and are resolved in two
steps, each in one place here:

- `build` (from `experiment.make_config`): the job words, the `--quick` rules, the run dir, the
  TTA views, the verbosity, old flag spellings;
- `resolve` (from the runner, once the inputs and the devices are known): frames per example
  (from the dataset manifest), classes (from `unique_labels_sorted.npy`), the precision policy,
  the global batch and the learning rate scaled for it.

Each step returns a new frozen `Config`: setting an attribute is an error, `replace` makes a
changed copy. `config.json` and `run_card.json` hold the resolved object.

Every setting is declared once, as a typed field of a section (`Data`, `Model`, ... below) with
its default and help, for a flag its choices or range, or marked derived (set by `build` or
`resolve`, never a flag). From these come the absl flags (`define_flags`), `--help`'s groups
(`help_groups`), the range checks (`flag_ranges`), config.json (`Config.to_dict`) and the
fingerprint. The sections say what a setting does. Those marked RESULTS change what a fold's
training produces: their values make the fingerprint that a resumed fold must match
(`fingerprint`). The others say where and how fast a run goes and which part of it runs now:
changing them never invalidates a backup. `Config` is every section together and declares
nothing itself, so a new setting cannot slip into or out of the fingerprint unnoticed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
import sys
import tempfile
import typing
from typing import Any, Sequence

from tpuflow import backend as backend_choices
from tpuflow.prep import kinds

JOB_WORDS = ("train", "val", "test", "score", "subm")
TASKS = ("regression", "classification")
# The two RMSEs have two names. Old spellings of flag values are still read, with a warning.
METRICS = ("rmse_rounded", "rmse_raw")  # run.py --metric: the competition score, or of raw predictions
# run.py --monitor: val_score, the --metric's validation score (logged under its own name), or val_loss
MONITORS = ("val_score", "val_loss")


def setting(default, help: str, *, choices: Sequence[str] | None = None, interval: str | None = None,
            why: str = "", derived: bool = False, required: bool = False):
    """One setting of a section: its default and help (its type is the field's annotation), for a
    flag its `choices` (an enum) or numeric `interval` (checked when a run is configured, `why`
    said with it), or `derived`: set by `build` or `resolve`, never a flag."""
    meta = {"help": help, "choices": choices, "interval": interval, "why": why, "derived": derived,
            "required": required}
    return dataclasses.field(default=default, metadata=meta) if not required else \
        dataclasses.field(metadata=meta)


@dataclasses.dataclass(frozen=True)
class Data:
    """What a fold trains on."""
    NAME, RESULTS = "data", True
    data_dir: str = setting("../../data", "Dir with train_cv.csv, submission_format.csv, unique_labels_sorted.npy")
    data_tfrec_dir: str | None = setting(None, "Dir of the TFRecord dataset (fold.<k>.tfrecord-*, test.tfrecord-*)")
    frame_store: str | None = setting(None, "Dir of a frame store (create_tfrecords.py --specs=frames) to "
                                      "assemble the examples from at read time, as --assemble says (instead of "
                                      "--data_tfrec_dir's records)")
    assemble: str | None = setting(None, "With --frame_store: the examples to assemble from it, in the builder's "
                                   "spec grammar: e.g. sequence:n24:s1, stacked:s5, mean:s10, single")
    dataset_kind: str | None = setting(None, "Dataset kind the experiment reads; checked against the dataset "
                                       "manifest (None: any)", choices=kinds.NAMES)
    n_frames: int | None = setting(None, "Frames per example (from the dataset manifest)", derived=True)
    invert: bool = setting(False, "Invert pixel values (255 - x)")
    aug_prob: float = setting(0.5, "Probability that a training example gets one of the nine augmentations",
                              interval="[0, 1]")
    buffer_size: int = setting(2048, "Shuffle buffer: at most this many serialized records (and about 1 GB)",
                               interval="[1, inf)", why="records")
    use_cache: bool = setting(False, "Cache the serialized training records in memory")


@dataclasses.dataclass(frozen=True)
class Model:
    """The model trained."""
    NAME, RESULTS = "model", True
    architecture: str | None = setting(None, "Architecture name for the run card and leaderboard")
    task: str = setting("regression", "Regression on wind speed or classification over its values", choices=TASKS)
    backbone: str = setting("EfficientNetB0", "keras.applications backbone name")
    weights: str | None = setting(None, "Backbone weights: None, imagenet or a file path")
    dim: int = setting(366, "Image height and width fed to the model (records are resized)", interval="[1, inf)",
                       why="image height and width in pixels")
    n_classes: int = setting(0, "Classes for classification (0: from unique_labels_sorted.npy)",
                             interval="[0, inf)", why="0: from unique_labels_sorted.npy")
    label_smoothing: float = setting(0.0, "Label smoothing for classification", interval="[0, 1)")
    bn_momentum: float | None = setting(None, "Override every BatchNormalization momentum (e.g. 0.9: short runs "
                                        "from scratch)", interval="[0, 1]")


@dataclasses.dataclass(frozen=True)
class Training:
    """How it is trained."""
    NAME, RESULTS = "training", True
    quick: bool = setting(False, "Smoke run in seconds: 1 epoch of 2 steps, a 64-record buffer; 1 fold, 32 px, "
                          "no TTA, 4 examples per device and a new temporary run dir unless those flags are "
                          "given; its CV means nothing")
    n_epochs: int = setting(15, "Maximum epochs per fold", interval="[1, inf)")
    steps_per_epoch: int = setting(0, "Training steps per epoch (0: training examples / batch size)",
                                   interval="[0, inf)", why="0: one pass over the training folds")
    batch_size: int = setting(32, "Batch size: global (all replicas together) unless --batch_size_per_replica",
                              interval="[1, inf)")
    batch_size_per_replica: bool = setting(False, "--batch_size is per replica: global batch = it x replicas")
    global_batch_size: int | None = setting(None, "The batch over all replicas", derived=True)
    lr: float = setting(1e-3, "Initial learning rate (at --base_batch_size when --lr_scaling is set)",
                        interval="(0, inf)", why="the initial learning rate")
    lr_scaling: str = setting("none", "Scale --lr by (global batch / --base_batch_size), or its square root",
                              choices=("none", "linear", "sqrt"))
    base_batch_size: int = setting(0, "Batch size --lr was tuned for (0: the per-replica batch)",
                                   interval="[0, inf)", why="0: the per-replica batch")
    scaled_lr: float | None = setting(None, "--lr scaled for the global batch", derived=True)
    lr_patience: int = setting(2, "Epochs without improvement before the LR is reduced", interval="[0, inf)",
                               why="epochs")
    lr_factor: float = setting(0.5, "LR reduction factor on plateau", interval="(0, 1)",
                               why="the LR is multiplied by it on a plateau")
    monitor: str = setting("val_score", "Quantity for best checkpoint and LR reduction: val_score, the --metric's "
                           "validation score (logged as val_rmse_rounded or val_rmse_raw), or val_loss (val_rmse: "
                           "old name of val_score)", choices=(*MONITORS, "val_rmse"))
    metric: str = setting("rmse_rounded", "Score: rmse_rounded, the RMSE of rounded predictions (the competition's "
                          "score), or rmse_raw, of raw ones (rmse: old name of rmse_rounded)",
                          choices=(*METRICS, "rmse"))
    mixup_prob: float = setting(0.0, "Probability that a training example is mixed with another of its batch "
                                "(0: off)", interval="[0, 1]")
    mixup_alpha: float = setting(0.4, "Mixing weights are drawn from Beta(alpha, alpha)", interval="(0, inf)")
    mixup_mode: str = setting("mixup", "mixup: blend whole images; cutmix: paste a box", choices=("mixup", "cutmix"))
    seed: int = setting(33, "Seed for shuffling and initialisation", interval="[0, inf)")
    mixed_precision: str = setting("auto", "auto (by device: mixed_bfloat16 on TPU, mixed_float16 on GPU, float32 "
                                   "on CPU), mixed_float16, mixed_bfloat16 or None (float32 everywhere)")
    precision: str | None = setting(None, "The precision policy --mixed_precision chose", derived=True)


@dataclasses.dataclass(frozen=True)
class Jobs:
    """Which part of the run this invocation does."""
    NAME, RESULTS = "jobs", False
    job: str = setting("train_val_test_score_subm", "Words joined by '_' from " + ", ".join(JOB_WORDS))
    jobs: list[str] | None = setting(None, "The job words in run order", derived=True)
    resume: bool = setting(True, "Resume an interrupted fold from its last backup and skip completed folds "
                           "(--noresume: start every fold afresh)")
    overwrite: bool = setting(False, "Replace the results of a run dir whose folds were trained with other "
                              "settings (without it such a training is refused, naming the flags that differ)")
    n_folds: int = setting(5, "Number of folds to run, starting at --initial_fold", interval="[1, inf)",
                           why="folds to run, from --initial_fold")
    initial_fold: int = setting(0, "First fold to run", interval="[0, inf)")
    tta_number: int = setting(9, "TTA views beyond the original (a number beyond the set's size: the whole set)",
                              interval="[0, inf)", why="views beyond the original")
    tta: str | None = setting(None, "TTA set: ref (the reference's ten views), d4 (the eight symmetries of the "
                              "square) or view names joined by ',' starting with orig (None: the set saved in "
                              "the predictions dir, else ref)")
    tta_set: list[str] | None = setting(None, "The TTA set's views", derived=True)
    tta_views: list[str] | None = setting(None, "The TTA views predicted", derived=True)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where and how fast it runs: backups cross backends and device counts."""
    NAME, RESULTS = "runtime", False
    backend: str = setting("auto", "Keras backend: auto (KERAS_BACKEND if set, else JAX where JAX sees a TPU, "
                           "else TensorFlow), jax or tensorflow; applied before Keras is imported",
                           choices=backend_choices.CHOICES)
    distributed: bool = setting(False, "Multi-host (JAX): keras.distribution.initialize() joins the slice's "
                                "hosts; each host reads its share of the training shards")
    tpu_ip_or_name: str | None = setting(None, "TPU name, grpc:// address or 'local' (TPU VM); None: GPUs or CPU")
    tpu_fallback: bool = setting(False, "If the TPU cannot be reached, warn and run on the GPUs/CPU instead of "
                                 "failing")
    tpu_timeout_s: float = setting(10.0, "Seconds each TPU network step (address, metadata server, TPU API) may "
                                   "take", interval="(0, inf)", why="seconds")
    cpu_replicas: int = setting(1, "Split the CPU into this many logical devices (tests multi-replica code)",
                                interval="[1, inf)", why="logical CPU devices")
    steps_per_execution: int = setting(0, "Training steps per compiled call (0: auto, 32 on TPUs, where it hides "
                                       "host overhead, and 1 elsewhere; never more than an epoch's or a backup "
                                       "interval's steps)", interval="[0, inf)",
                                       why="0: auto, 32 on TPUs and 1 elsewhere")
    jit_compile: str = setting("auto", "XLA-compile the train step (auto: Keras decides; TPUs always compile)",
                               choices=("auto", "true", "false"))
    frame_cache: str = setting("auto", "With --assemble: decode each store frame once into host memory (store rows "
                               "x H x W bytes; mean examples: twice that); auto: when it fits in half the "
                               "available memory, memory: always, off: decode every slot as it is read",
                               choices=("auto", "memory", "off"))
    backup_every_steps: int = setting(0, "Also back a fold up within the epoch every this many steps (0: off)",
                                      interval="[0, inf)", why="0: off")
    backup_every_minutes: float = setting(10.0, "Also back a fold up within the epoch once this many minutes "
                                          "passed since the last backup (0: off; --quick: off)",
                                          interval="[0, inf)", why="0: off")
    verbose: int | None = setting(None, "Keras verbosity: 1 progress bar, 2 one line per epoch, 0 silent (default: "
                                  "1 on a terminal, 2 when output goes to a file or pipe)", interval="[0, 2]")


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where its outputs go."""
    NAME, RESULTS = "outputs", False
    output_dir: str | None = setting(None, "Run dir for checkpoints, predictions, scores, submission (default: "
                                     "run.py's dir)")
    data_preds_dir: str | None = setting(None, "Predictions dir (default: <output_dir>/preds)")
    experiment_id: str | None = setting(None, "The run dir's name", derived=True)


# In --help's order. Those with RESULTS change what a fold's training produces: their values make
# the fingerprint that a resumed fold must match (`fingerprint`); the others never invalidate a backup.
SECTION_TYPES = (Data, Model, Training, Jobs, Runtime, Outputs)


QUICK_DIM = 32  # --quick images: the smallest keras.applications backbones accept

OLD_VALUES = {("metric", "rmse"): "rmse_rounded",
              ("monitor", "val_rmse"): "val_score"}  # val_rmse held the --metric's score, rounded or raw
# Old flag names, still flags, read as the new ones with a note: "view" now means a TTA view only.
# Runs before the rename read a frame store as `--data_tfrec_dir=<store> --view=<spec>` (`new_names`);
# fingerprints keep that form (`old_names`), so that theirs still match.
OLD_NAMES = {"view": "assemble"}


def score_key(metric: str) -> str:
    """The epoch-log key of the --metric's validation score: `val_rmse_rounded` or `val_rmse_raw`."""
    return f"val_{metric}"


def monitored_key(cfg) -> str:
    """The epoch-log key that --monitor names (the best checkpoint and LR reduction follow it)."""
    return score_key(cfg.metric) if cfg.monitor == "val_score" else cfg.monitor


@dataclasses.dataclass(frozen=True)
class Config(Outputs, Runtime, Jobs, Training, Model, Data):  # fields: SECTION_TYPES in order
    """A run's settings, typed and frozen: every field of every section, read as `cfg.dim`;
    `replace` makes a changed copy. Declares nothing itself: a setting belongs to a section."""

    def replace(self, **changes) -> "Config":
        unknown = sorted(set(changes) - set(setting_names()))
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every setting, JSON-ready (what config.json and run_card.json hold)."""
        return {k: _json_safe(getattr(self, k)) for k in sorted(setting_names())}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """A configuration read back from config.json (older files: old names and value spellings
        read as the new ones, settings they lack are None, settings no longer known dropped)."""
        values = new_names(values, warn=False)
        return cls(**{k: new_value(k, values.get(k), warn=False) for k in setting_names()})


FrozenConfigError = dataclasses.FrozenInstanceError  # raised by setting an attribute (use `replace`)


def setting_names(section_types=SECTION_TYPES) -> list[str]:
    """Every setting of the sections, in their order."""
    return [f.name for s in section_types for f in dataclasses.fields(s)]


def result_fields() -> list[str]:
    """The settings that change what a fold's training produces, sorted."""
    return sorted(setting_names([s for s in SECTION_TYPES if s.RESULTS]))


SECTIONS = {s.NAME: tuple(setting_names([s])) for s in SECTION_TYPES}  # section -> its settings
DERIVED = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["derived"])
PLACED = ("global_batch_size", "scaled_lr", "precision")  # the derived settings the devices decide
# What a prediction may change from the training's settings: its batch (memory) and the devices.
PREDICTION_FREE = ("batch_size", "batch_size_per_replica", *PLACED)


def shared(name: str, default=dataclasses.MISSING, help: str | None = None, required: bool = False):
    """A run setting declared again for a tool that shares it (`tools/pretrain_simsiam.py`): the
    same help, choices and range unless given, with the tool's own default."""
    field = next(f for f in dataclasses.fields(Config) if f.name == name)
    return setting(field.default if default is dataclasses.MISSING else default,
                   help or field.metadata["help"], choices=field.metadata["choices"],
                   interval=field.metadata["interval"], why=field.metadata["why"], required=required)


def flag_fields(section_types=SECTION_TYPES) -> list[dataclasses.Field]:
    """The settings that are flags (not derived), in the sections' order."""
    return [f for s in section_types for f in dataclasses.fields(s) if not f.metadata["derived"]]


def define_flags(section_types=SECTION_TYPES) -> list[str]:
    """Defines an absl flag for each setting of the sections that is not derived (its type from the
    annotation, an enum where it has choices); returns their names."""
    from absl import flags  # noqa: PLC0415
    define = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}
    for section in section_types:
        hints = typing.get_type_hints(section)
        for f in flag_fields([section]):
            meta, flag_type = f.metadata, _flag_type(hints[f.name])
            default = None if meta["required"] else f.default
            if meta["choices"]:
                flags.DEFINE_enum(f.name, default, list(meta["choices"]), meta["help"], required=meta["required"])
            else:
                define[flag_type](f.name, default, meta["help"], required=meta["required"])
    old = _old_flags(section_types)
    for name, new in old.items():
        define[_flag_type(typing.get_type_hints(Config)[new])](name, None, f"Old name of --{new} (read as it, "
                                                                         "with a warning)")
    return [f.name for f in flag_fields(section_types)] + list(old)


def _old_flags(section_types) -> dict[str, str]:
    """The old flag names (`OLD_NAMES`) of the sections' settings: old -> new."""
    names = set(setting_names(section_types))
    return {old: new for old, new in OLD_NAMES.items() if new in names}


def _flag_type(annotation) -> type:
    """`int | None` -> int."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def flag_ranges(section_types=SECTION_TYPES) -> dict[str, tuple[str, str]]:
    """Numeric flag -> (interval, why): each checked when a run is configured."""
    return {f.name: (f.metadata["interval"], f.metadata["why"]) for f in flag_fields(section_types)
            if f.metadata["interval"]}


def help_groups() -> dict[str, list[str]]:
    """`run.py --help`'s groups: the sections, each with what it holds and whether a resumed fold
    must match it."""
    return {f"{s.NAME} ({s.__doc__.strip().rstrip('.').lower()}" +
            ("; fingerprinted: a resumed fold must match" if s.RESULTS else "") + ")":
            [f.name for f in flag_fields([s])] + list(_old_flags([s])) for s in SECTION_TYPES}


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
    """Result settings as runs before `--frame_store`/`--assemble` wrote them (what fingerprints
    hash): the store in `data_tfrec_dir`, the spec in `view`."""
    old = {k: v for k, v in settings.items() if k not in ("frame_store", "assemble")}
    old["view"] = settings.get("assemble")
    if settings.get("frame_store"):
        old["data_tfrec_dir"] = settings["frame_store"]
    return old


def old_value(name: str, value):
    """The value as runs before the renames wrote it (for their fingerprints)."""
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
    saved = scoring.read_view_set(v["data_preds_dir"])
    v["tta_set"] = list(ondevice.tta_views(v["tta"] or (",".join(saved) if saved else "ref")))
    v["tta_views"] = v["tta_set"][: v["tta_number"] + 1]
    v["tta_number"] = len(v["tta_views"]) - 1
    return Config(**v)


def run_folds(output_dir: str) -> dict[str, int]:
    """`initial_fold` and `n_folds` of the folds a run dir's results cover: its run card's CV, else
    its training's (config.json); {} for a dir with neither. Said on one line."""
    from tpuflow import storage  # noqa: PLC0415
    from tpuflow.results import run_card  # noqa: PLC0415
    covered, source = run_card.cv_folds(output_dir), run_card.CARD_NAME
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
    (classification); placement: a `runtime.Placement` (precision policy by platform, global
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
            precision=runtime.precision_name(cfg.mixed_precision, placement.platform),
            global_batch_size=batch,
            scaled_lr=runtime.scaled_lr(cfg.lr, batch, cfg.base_batch_size or batch // placement.replicas,
                                        cfg.lr_scaling))
    return cfg.replace(**changes)


TPU_STEPS_PER_EXECUTION = 32  # --steps_per_execution=0 (auto) on TPUs: hides the host's per-call overhead


def steps_per_execution(cfg: Config, platform: str, epoch_steps: int) -> tuple[int, str]:
    """--steps_per_execution resolved, with why: as given, else (0, auto) 32 on TPUs and 1 elsewhere;
    never more than an epoch's steps (`epoch_steps`, the shortest fold's) or --backup_every_steps
    (a backup falls on a call's last step)."""
    if cfg.steps_per_execution:
        return cfg.steps_per_execution, "--steps_per_execution"
    wanted = TPU_STEPS_PER_EXECUTION if platform == "tpu" else 1
    limits = [n for n in (epoch_steps, cfg.backup_every_steps) if n]
    n = min([wanted, *limits])
    return n, f"auto: {wanted} on {platform.upper()}" + (f", at most {min(limits)} (epoch or backup steps)"
                                                          if n < wanted else "")


def result_settings(cfg: Config) -> dict[str, Any]:
    """The settings that change what a fold's training produces."""
    return {k: getattr(cfg, k) for k in result_fields()}


def fingerprint(cfg: Config) -> str:
    """Short hash of the result-affecting settings (resolved global batch and LR included), under
    the flag names of runs before `--frame_store`/`--assemble` (`old_names`): an unchanged
    configuration hashes as it always did."""
    return _hash(old_names(result_settings(cfg)))


def fingerprints(cfg: Config) -> set[str]:
    """This configuration's fingerprint and the ones runs made before flag values were renamed
    wrote for the same settings, each rename made or not (so that their backups and done files
    still resume)."""
    settings = old_names(result_settings(cfg))
    renamed = sorted({n for n, _ in OLD_VALUES} & settings.keys())
    found = set()
    for spelled_old in itertools.product((False, True), repeat=len(renamed)):  # renamed at different times
        old = {n: old_value(n, settings[n]) for n, is_old in zip(renamed, spelled_old) if is_old}
        found.add(_hash({**settings, **old}))
    return found


def _hash(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def saved_settings(flags: dict) -> dict:
    """Settings as an older run card or config.json wrote them, in today's names and spelling."""
    return {k: new_value(k, v, warn=False) for k, v in new_names(flags, warn=False).items()}
