"""Runs an experiment's jobs: the fold loop, best checkpoints, predictions with ids, scores, submission."""
from __future__ import annotations

import json
import re
import time
from typing import Callable

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from tpuflow import backend, cli, storage
from tpuflow.inputs import ondevice, records, source
from tpuflow.prep import split
from tpuflow.results import checkpoint_names, prediction_names, run_card, scoring
from tpuflow.storage import tables
from tpuflow.training import config, curves, hosts, loop, models, resume, runtime, tensorboard

fold_checkpoints = resume.best_checkpoints


def load_weights(model: keras.Model, path: str) -> None:
    """Loads a best checkpoint from a local or `gs://` path (h5py needs a local file) under either
    backend, whichever wrote it: Keras' `.weights.h5` (TensorFlow) or an Orbax directory (JAX),
    read into NumPy and assigned (so a fold trained under one backend predicts under the other:
    converted on load). A checkpoint of another model is an error naming the file and both shapes."""
    if checkpoint_names.is_orbax(path):
        try:
            resume.orbax_load(path, model)
        except ValueError as err:
            raise CheckpointMismatch(f"{path}: {err}") from err
        return
    with storage.local_copy(path) as local:
        try:
            model.load_weights(local)
        except ValueError as err:
            raise CheckpointMismatch(f"{path}: {checkpoint_mismatch(str(err))}") from err


class CheckpointMismatch(ValueError):
    """A checkpoint saved from a model of another shape (another backbone, size or head)."""


def checkpoint_mismatch(keras_message: str) -> str:
    """Keras' long load error, to one line: the first variable whose shape differs, in the model
    and in the file."""
    found = re.search(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))", keras_message)
    where = re.search(r"Variable path=([^,]+),", keras_message)
    if found:
        return (f"saved from a model of another shape: {where.group(1) if where else 'a variable'} is "
                f"{found.group(1)} in this model but {found.group(2)} in the checkpoint")
    return "does not fit this model: " + keras_message.strip().splitlines()[0]


def best_checkpoint(output_dir: str, fold: int) -> str:
    """The one best checkpoint of a fold; an error if there is none or several."""
    found = fold_checkpoints(output_dir, fold)
    if len(found) != 1:
        raise FileNotFoundError(f"{output_dir}: expected one {checkpoint_names.GLOB.format(fold=fold)}.weights.h5 "
                                f"(or .orbax), found {len(found)} (train fold {fold} first)")
    return found[0]


class FoldScore(keras.callbacks.Callback):
    """Scores the whole validation fold after each epoch, exactly once per example.

    Adds the `--metric` score under its own name (`val_rmse_rounded` or `val_rmse_raw`) and
    `val_loss` to the epoch logs, so that callbacks after it (checkpoint, LR reduction) can monitor them. Keras' own validation
    would drop or pad examples under TPU static shapes; this uses the padded-then-trimmed pipeline.
    """

    def __init__(self, dataset, labels: np.ndarray, labels_le: np.ndarray, unique_labels, cfg):
        super().__init__()
        self.dataset, self.labels, self.labels_le = dataset, labels, labels_le
        self.unique_labels, self.task, self.round = unique_labels, cfg.task, cfg.metric == "rmse_rounded"
        self.global_batch, self.score_key = cfg.global_batch_size, config.score_key(cfg.metric)

    def on_epoch_end(self, epoch, logs=None):
        pred = hosts.predict(self.model, self.dataset, self.global_batch)[: len(self.labels)]
        values = scoring.to_values(pred, self.unique_labels)
        logs[self.score_key] = scoring.rmse(self.labels, values, round_pred=self.round)
        if self.task == "classification":
            p = np.clip(pred[np.arange(len(pred)), self.labels_le], 1e-7, 1.0)
            logs["val_loss"] = float(-np.mean(np.log(p)))
        else:
            logs["val_loss"] = float(np.mean((pred.reshape(-1) - self.labels) ** 2))


class BestCheckpoint(keras.callbacks.Callback):
    """Saves weights when the monitored value improves, keeping only the best checkpoint of the
    fold; its name holds the validation score (`score`: the epoch-log key of `--metric`'s).

    TensorFlow: Keras' `.weights.h5`, written at once. JAX: an Orbax directory, written in the
    background by all hosts together into host 0's run dir (`resume.OrbaxWriter`); `wait` (at the
    next backup's state file and at train end) returns once it is complete, and only then is the
    previous best removed: there is always one complete best checkpoint."""

    def __init__(self, output_dir: str, fold: int, monitor: str, score: str = config.score_key("rmse_rounded")):
        super().__init__()
        self.output_dir, self.fold, self.monitor, self.score = output_dir, fold, monitor, score
        self.best = np.inf
        self.path = None
        self.orbax = resume.OrbaxWriter() if resume.orbax_writes(output_dir) else None

    def on_epoch_end(self, epoch, logs=None):
        value = logs[self.monitor]
        if not np.isfinite(value) or value >= self.best:  # a diverged (NaN) epoch is no improvement
            return
        self.best = value
        name = checkpoint_names.name(self.fold, epoch + 1, logs[self.score], "orbax" if self.orbax else "h5")
        if self.orbax:
            self.wait()  # the one before, complete (and its predecessor gone)
            self.path = storage.join(hosts.shared_dir(self.output_dir), name)
            self.orbax.save(self.path, {"weights": [v.value for v in self.model.weights]})
            return
        self.path = storage.join(self.output_dir, name)
        storage.save_weights(self.model, self.path)
        self._remove_others()

    def wait(self) -> None:
        """Returns once the last checkpoint is complete; then the older ones are removed."""
        if self.orbax and self.path:
            self.orbax.wait()
            self._remove_others()

    def on_train_end(self, logs=None):
        self.wait()

    def _remove_others(self) -> None:
        for old in fold_checkpoints(self.output_dir, self.fold):
            if old != self.path:
                resume.remove_checkpoint(old)


def check_inputs(cfg, jobs: set[str]) -> source.RecordSource | source.FrameStoreSource | None:
    """Fails fast, before any long work, on anything missing; returns the input source (None when
    the jobs read no examples)."""
    inputs = None
    if cfg.batch_size < 1:
        raise ValueError(f"--batch_size={cfg.batch_size}: must be >= 1")
    if jobs & {"train", "val", "test"}:
        models.check_weights(cfg.weights, cfg.backbone)  # the model is built for each of them
        inputs = source.open_source(cfg)
        check_dataset_kind(cfg, inputs)
        total = int(inputs.manifest["n_folds"])
        if cfg.initial_fold + cfg.n_folds > total:
            raise ValueError(f"--initial_fold={cfg.initial_fold} --n_folds={cfg.n_folds}: the dataset "
                             f"{inputs.name} has only {total} folds")
        inputs.check(jobs)
        scoring.check_views(cfg.data_preds_dir, cfg.tta_views)
        if "train" not in jobs:
            found = [best_checkpoint(cfg.output_dir, k) for k in folds(cfg)]
            if any(checkpoint_names.is_orbax(p) for p in found):
                resume.require_orbax()  # read under either backend
    if "train" in jobs and keras.backend.backend() == "jax":
        resume.require_orbax()
    if jobs & {"val", "score"}:  # validation rows are written in its order
        read_train_cv(cfg)
        if "val" not in jobs:
            scoring.load_predictions(cfg.data_preds_dir, "val", folds(cfg), cfg.tta_number, load_unique_labels(cfg.data_dir),
                                     views=cfg.tta_views)
    if "subm" in jobs:
        tables.read_table(storage.join(cfg.data_dir, "submission_format.csv"), split.SUBMISSION_COLUMNS)
        if "test" not in jobs:
            scoring.load_predictions(cfg.data_preds_dir, "test", folds(cfg), cfg.tta_number, load_unique_labels(cfg.data_dir),
                                     views=cfg.tta_views)
    return inputs


def check_dataset_kind(cfg, inputs) -> None:
    """The records must be of the kind the experiment reads (a sequence model on single frames
    would otherwise fail deep inside tf.data, or worse, silently read the first frame only)."""
    manifest = inputs.manifest
    if cfg.dataset_kind and manifest["kind"] != cfg.dataset_kind:
        raise ValueError(f"experiment {cfg.experiment_id!r} reads '{cfg.dataset_kind}' records "
                         f"(--dataset_kind), but {inputs.name} holds "
                         f"'{manifest['kind']}' records ({manifest['spec']})")


def check_parse(cfg, inputs, parse) -> None:
    """Parses one example eagerly, so that records the experiment cannot read (e.g. a frame count
    its model cannot use) fail now, with both named, not after the model is built."""
    try:
        parse(inputs.first_example(cfg.initial_fold))
    except Exception as err:  # any parse failure: re-raised with the experiment and dataset named
        raise ValueError(f"experiment {cfg.experiment_id!r} cannot read the records of "
                         f"{inputs.name} ({inputs.manifest['spec']}): {err}") from err


def folds(cfg) -> range:
    return range(cfg.initial_fold, cfg.initial_fold + cfg.n_folds)


load_unique_labels = tables.load_unique_labels


def read_train_cv(cfg) -> pd.DataFrame:
    """`<data_dir>/train_cv.csv`, checked for the columns scores and prediction order need."""
    return tables.read_table(storage.join(cfg.data_dir, "train_cv.csv"), ("image_id", "wind_speed", "fold_id"))


class FreshStart:
    """Snapshot of a compiled model's initial weights and optimizer state, restored per fold.

    The model is built and compiled once per run, so its training and prediction graphs are traced
    once (on a CPU that saves ~30 s per fold for EfficientNetB0); every fold still starts from the
    same initial weights and a new optimizer state (loss-scale state included).
    """

    def __init__(self, model: keras.Model):
        model.optimizer.build(model.trainable_variables)
        self.model = model
        self.weights = model.get_weights()
        self.optimizer_state = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]

    def restore(self) -> None:
        self.model.set_weights(self.weights)
        for variable, value in zip(self.model.optimizer.variables, self.optimizer_state):
            variable.assign(value)


def epoch_steps(cfg, manifest: dict, fold: int) -> int:
    """Training steps per epoch of `fold`: --steps_per_epoch, else a pass over the other folds."""
    train_folds = [k for k in range(int(manifest["n_folds"])) if k != fold]
    return cfg.steps_per_epoch or max(1, records.example_count(manifest, train_folds) // cfg.global_batch_size)


def read_fold_labels(inputs) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{fold: (ids, wind speeds, class indices)} of every fold, read once per run (records carry
    their labels; reading them needs no image decoding, but still a pass over the files)."""
    return {k: inputs.labels(k) for k in range(int(inputs.manifest["n_folds"]))}


def train_fold(cfg, fold: int, model: keras.Model, parse, inputs, fold_labels: dict,
               unique_labels, trainer: keras.Model | None = None, block: int | None = None,
               devices: str = "") -> keras.callbacks.History:
    """Trains one fold, keeping its best checkpoint and its curves, and leaves the best weights in
    the model; returns the fit History (of the epochs run now, after any resumed ones). `trainer`
    (`loop.train_model`, default `model`) is what `fit` runs: `model` behind the training
    augmentation made on the accelerator; the callbacks see `model`. `block`: the examples one
    device trains on per step, among which mixup draws partners (None: the whole batch).
    `devices`: where it trains (`placement_name`), which a backup within an epoch must match.
    `inputs`: the run's input source (`tpuflow.inputs.source`).

    Each epoch is backed up (and within it, as `--backup_every_*` say); after a kill the fold
    resumes from its last backup (see `resume`).
    """
    train_folds = [k for k in range(int(inputs.manifest["n_folds"])) if k != fold]
    steps = epoch_steps(cfg, inputs.manifest, fold)
    if cfg.task == "regression":  # start at the training folds' mean wind speed (no val labels)
        models.set_regression_bias(model, float(np.mean(np.concatenate([fold_labels[k][1] for k in train_folds]))))
    _, labels, labels_le = fold_labels[fold]
    val_ds = inputs.predict_dataset(fold, parse, cfg.global_batch_size)
    monitor, score = config.monitored_key(cfg), config.score_key(cfg.metric)
    checkpoint = BestCheckpoint(cfg.output_dir, fold, monitor, score)
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode="min", factor=cfg.lr_factor,
                                                  patience=cfg.lr_patience, verbose=int(cfg.verbose > 0))
    tracked = {"checkpoint": (checkpoint, ("best", "path")),
               "reduce_lr": (reduce_lr, ("wait", "best", "cooldown_counter"))}
    backup = resume.FoldBackup(cfg, fold, tracked, trainer=trainer or model, devices=devices)
    initial_epoch, initial_step = backup.restore(model)
    callbacks = [
        FoldScore(val_ds, labels, labels_le, unique_labels, cfg),  # first: fills val_* logs
        checkpoint,
        reduce_lr,
        curves.TrainingCurves(cfg.output_dir, fold, cfg.experiment_id, score),  # sees every value above
        tensorboard.FoldScalars(cfg.output_dir, fold),
        backup,  # last: saves the state the callbacks above reached
    ]
    host, n_hosts = hosts.process_info()

    def train_dataset(epoch: int, step: int):
        """The training batches from step `step` of epoch `epoch` on (how a resumed fold continues:
        the source's doc); each host feeds its share of the global batch."""
        return inputs.train_dataset(cfg, train_folds, parse, hosts.host_batch(cfg.global_batch_size, n_hosts),
                                    fold=fold, epoch=epoch, step=step, steps=steps, block=block, host=(host, n_hosts))

    # A fold resumed within an epoch runs the rest of that epoch as a fit of its own, then the others.
    segments = [(initial_epoch, initial_step)] if initial_step else []
    if initial_epoch + bool(initial_step) < cfg.n_epochs or not segments:
        segments.append((initial_epoch + bool(initial_step), 0))
    history = None
    for epoch, step in segments:
        ran = loop.fit(trainer or model, model, train_dataset(epoch, step),
                            epochs=epoch + 1 if step else cfg.n_epochs, initial_epoch=epoch,
                            steps_per_epoch=steps - step, callbacks=callbacks, verbose=cfg.verbose,
                            shuffle=False)  # shuffling: the pipeline's job
        history = ran if history is None else _joined(history, ran)
    if checkpoint.path is None:  # no epoch gave a finite score: nothing worth keeping
        raise ValueError(f"fold {fold}: training diverged: {monitor} was NaN or infinite after every one of "
                         f"{cfg.n_epochs} epoch(s), so there is no checkpoint (try a lower --lr={cfg.lr:g})")
    load_weights(model, checkpoint.path)
    return history


def _joined(first: keras.callbacks.History, then: keras.callbacks.History) -> keras.callbacks.History:
    """One History of two fits in a row (a fold resumed within an epoch)."""
    then.epoch = first.epoch + then.epoch
    then.history = {k: first.history.get(k, []) + then.history.get(k, []) for k in {*first.history, *then.history}}
    return then


def placement_name(placement: runtime.Placement) -> str:
    """Where a run trains, as a backup within an epoch notes it: processes and devices."""
    return f"{placement.processes} process(es), {placement.replicas} {placement.platform.upper()} device(s)"


def predict_split(cfg, fold: int, predictor: keras.Model, parse, inputs, split_name: str, batch: int) -> None:
    """Writes val (this fold) or test predictions for TTA 0..tta_number, with their ids; the view
    of each TTA index is saved first (`tta_views.json`). All views come from one pass: each
    example is read and decoded once, in batches of `batch` examples, and `predictor`
    (`ondevice.tta_model`) makes its views on the accelerator. Validation rows are written in the
    order of the fold's rows in train_cv.csv (`scoring.csv_order`), test rows in the records' order:
    submission_format.csv's."""
    which = fold if split_name == "val" else None
    ids = inputs.ids(which)
    scoring.save_views(cfg.data_preds_dir, cfg.tta_views, cfg.tta_set)
    n_tta = len(cfg.tta_views)
    print(f"Fold {fold}: predicting {split_name} ({len(ids)} examples x {n_tta} TTA views)", flush=True)
    ds = inputs.predict_dataset(which, parse, batch)
    pred = hosts.predict(predictor, ds, batch, resume.NOTICE.check)[:len(ids) * n_tta]
    pred = pred.reshape(len(ids), n_tta, *pred.shape[1:])
    if split_name == "val":
        order = scoring.csv_order(read_train_cv(cfg), fold, ids)
        pred, ids = pred[order], ids[order]
    for t in range(n_tta):
        storage.save_npy(prediction_names.path(cfg.data_preds_dir, split_name, fold, t), pred[:, t])
    storage.save_npy(prediction_names.ids_path(cfg.data_preds_dir, split_name, fold), ids)


def subset_suffix(cfg, previous_cv_folds: list[int] | None) -> str:
    """'' if this invocation's CV may replace the run's results; else `.folds-<k>-<k>...`, the
    suffix of the files it writes beside them: when it covers fewer folds than the CV the run
    already has (e.g. `--job=score_subm --n_folds=2` on a finished 5-fold run)."""
    mine = list(folds(cfg))
    if previous_cv_folds is None or set(previous_cv_folds) <= set(mine):
        return ""
    return ".folds-" + "-".join(str(k) for k in mine)


def trained_folds(output_dir: str) -> list[int]:
    """The folds of a run dir that were trained, completely (a best checkpoint) or in part (an
    epoch backup)."""
    found = {checkpoint_names.parse(p).fold for p in fold_checkpoints(output_dir, "*")}
    for state in storage.glob(storage.join(output_dir, "backup", "fold_*", resume.STATE)):
        found.add(int(state.rsplit("/", 2)[-2].split("_")[-1]))
    return sorted(found)


def training_settings(output_dir: str) -> dict:
    """The result settings the run dir's folds were trained with (its card's flags, else its
    config.json); {} for a run dir without either (e.g. adopted from elsewhere)."""
    card = run_card.load(output_dir)
    if card is not None:
        return config.saved_settings(card.get("flags") or {})
    if storage.exists(storage.join(output_dir, "config.json")):
        return config.saved_settings(storage.read_json(storage.join(output_dir, "config.json")) or {})
    return {}


def refuse_other_settings(cfg, full_folds: list[int] | None, suffix: str, placed: bool = True) -> None:
    """An invocation that trains or predicts folds of a run dir whose folds were trained (completed
    or in part) with other result-shaping settings is refused before any work, naming each
    differing flag, so that a run's results never mix two trainings nor are replaced by accident
    (e.g. `--quick` with the `--output_dir` of a finished run):

    - a subset of the folds of a run dir whose CV covers more (`suffix`) may only resume them with
      the settings they were trained with (and without --noresume);
    - training with other settings replaces the run only with `--overwrite`, over all its trained
      folds (or goes to a new --output_dir);
    - predicting (val/test without train) needs the training's settings; the batch and what the
      devices decide (`config.PREDICTION_FREE`) may differ.

    `placed=False`: the devices are not known yet, so the settings they decide are not compared."""
    jobs = [j for j in cfg.jobs if j in ("train", "val", "test")]
    done = trained_folds(cfg.output_dir) if jobs else []
    if not jobs or not (done or suffix):
        return
    trained, mine = training_settings(cfg.output_dir), config.result_settings(cfg)
    ignored = (config.PLACED if not placed else ()) + (config.PREDICTION_FREE if "train" not in jobs else ())
    changed = [k for k in sorted(mine) if k in trained and k not in ignored
               and json.loads(json.dumps(mine[k], default=str)) != trained[k]]
    changed = [k for k in changed if k not in config.DERIVED] or changed  # name the flags given, if any
    what = ", ".join(f"--{k}={getattr(cfg, k)} (trained with {trained[k]})" for k in changed)
    where, doing = f"--output_dir={cfg.output_dir}", "+".join(jobs)
    if suffix:
        if changed or not cfg.resume:
            raise cli.UsageError(f"{where} holds a CV over folds {full_folds}; redoing folds {list(folds(cfg))} "
                                 f"({doing}) alone with {what or '--noresume'} would leave its results mixing two "
                                 "trainings: use another --output_dir, or run all its folds")
        return
    if not changed:
        return
    if "train" not in jobs:
        raise cli.UsageError(f"{where}: its folds {done} were trained with other settings: {what}; predicting "
                             f"({doing}) needs the settings they were trained with: drop those flags (or train "
                             "anew: --overwrite, or another --output_dir)")
    if not cfg.overwrite:
        raise cli.UsageError(f"{where} holds folds {done} trained with other settings: {what}; refusing to "
                             "replace them: pass --overwrite to replace the run, or use a new --output_dir")
    if not set(done) <= set(folds(cfg)):
        raise cli.UsageError(f"{where} --overwrite: the run has folds {done} trained with other settings "
                             f"({what}); replacing it means retraining all of them (--initial_fold/--n_folds "
                             f"cover {list(folds(cfg))}): run them all, or use a new --output_dir")
    if placed:  # said once, when the run goes ahead
        print(f"--overwrite: replacing the run in {cfg.output_dir} (folds {done} were trained with {what})", flush=True)


def score(cfg, suffix: str = "") -> pd.DataFrame:
    """CV scores from the saved predictions; printed and written to `scores<suffix>.csv`."""
    train_cv = read_train_cv(cfg)
    preds = scoring.load_predictions(cfg.data_preds_dir, "val", folds(cfg), cfg.tta_number,
                                     load_unique_labels(cfg.data_dir), views=cfg.tta_views)
    table = scoring.cv_scores(train_cv, preds, round_pred=cfg.metric == "rmse_rounded")
    storage.write_text(storage.join(cfg.output_dir, f"scores{suffix}.csv"), table.to_csv(index_label="fold"))
    n_split = int(train_cv.loc[train_cv["fold_id"] >= 0, "fold_id"].nunique())
    covered = f"folds {', '.join(map(str, folds(cfg)))} of {n_split}"
    if suffix:
        print(f"CV of {covered} only: written beside the run's full results (scores{suffix}.csv); "
              f"scores.csv and run_card.json's CV are unchanged")
    print(f"CV {cfg.metric} ({cfg.experiment_id}, {covered}), rows: folds and all, columns: TTA index and TTA mean")
    print(table.round(4).to_string(), flush=True)
    return table


def write_submission(cfg, suffix: str = "") -> str:
    """Mean over folds and TTAs, rounded, in submission_format order: `<output_dir>/<id><suffix>.csv`."""
    fmt = tables.read_table(storage.join(cfg.data_dir, "submission_format.csv"), split.SUBMISSION_COLUMNS)
    preds = scoring.load_predictions(cfg.data_preds_dir, "test", folds(cfg), cfg.tta_number,
                                     load_unique_labels(cfg.data_dir), views=cfg.tta_views)
    path = storage.join(cfg.output_dir, f"{cfg.experiment_id}{suffix}.csv")
    storage.write_text(path, scoring.submission(preds, fmt).to_csv(index=False))
    print(f"Submission: {path}", flush=True)
    return path


def model_facts(cfg, model: keras.Model, placement: runtime.Placement,
                execution: tuple[int, str] = (1, "")) -> tuple[dict, dict]:
    """What the card says of the model and of where it runs (`run_card.RunCard.set_model`);
    `execution`: steps per execution and why (`config.steps_per_execution`)."""
    return ({"architecture": cfg.architecture, "task": cfg.task, "backbone": cfg.backbone,
             "weights": models.resolve_weights(cfg.weights), "dim": cfg.dim, "n_params": int(model.count_params())},
            {"replicas": placement.replicas, "strategy": placement.name, "device": placement.platform.upper(),
             "precision": cfg.precision or keras.mixed_precision.global_policy().name,
             "backend": placement.backend, "backend_reason": backend.reason,
             "processes": placement.processes, "devices": placement.devices,
             "steps_per_execution": f"{execution[0]} ({execution[1]})"})


def run_jobs(cfg, init_model: Callable, parse_example: Callable, check_lock: Callable[[], None] = lambda: None) -> dict:
    """Runs the jobs of `cfg.jobs` in order; returns {'scores': DataFrame, 'submission': path, ...}.

    `check_lock` raises if the run dir's lock was lost; it is called before each fold."""
    jobs = set(cfg.jobs)
    inputs = check_inputs(cfg, jobs)
    manifest = inputs.manifest if inputs else {}
    labels = load_unique_labels(cfg.data_dir, required=True) if cfg.task == "classification" else None
    cfg = config.resolve(cfg, manifest, None if labels is None else len(labels))  # what the data decides
    full_folds = run_card.cv_folds(cfg.output_dir)
    suffix = subset_suffix(cfg, full_folds)
    refuse_other_settings(cfg, full_folds, suffix, placed=False)  # before a TPU is started for a refused run
    placement = None
    if jobs & {"train", "val", "test"}:
        placement = runtime.get_runtime(cfg.tpu_ip_or_name, cfg.cpu_replicas, tpu_fallback=cfg.tpu_fallback,
                                        tpu_timeout_s=cfg.tpu_timeout_s, distributed=cfg.distributed)
    cfg = config.resolve(cfg, placement=placement)  # and what the devices decide; frozen from here
    execution = None
    if placement is not None:
        shortest = min(epoch_steps(cfg, manifest, k) for k in folds(cfg))
        execution = config.steps_per_execution(cfg, placement.platform, shortest)
        cfg = cfg.replace(steps_per_execution=execution[0])
    parse = lambda serialized: parse_example(serialized, cfg)  # noqa: E731 (closure over cfg)
    if inputs:
        check_parse(cfg, inputs, parse)
    refuse_other_settings(cfg, full_folds, suffix)  # and the settings the devices decide
    storage.makedirs(cfg.output_dir)
    config_path = storage.join(cfg.output_dir, "config.json")
    # The training's configuration, as the card's flags: a run that does not train (or trains a
    # subset of the folds) keeps it.
    if not suffix and ("train" in jobs or not storage.exists(config_path)):
        storage.write_json(config_path, cfg.to_dict())
    if "train" in jobs and not suffix:
        tensorboard.write_config(cfg.output_dir, cfg.to_dict())
    if cfg.quick:
        print(f"Quick run (--quick): a smoke test of the pipeline ({cfg.n_folds} fold(s), {cfg.n_epochs} epoch of "
              f"{cfg.steps_per_epoch} steps, {cfg.dim} px, TTA 0..{cfg.tta_number}) into {cfg.output_dir}; its CV "
              "means nothing.", flush=True)
    card = run_card.RunCard(cfg, manifest, init_model, runtime.versions())
    result, timings = {"config": cfg}, {}
    if placement is not None:
        runtime.set_precision(cfg.precision)
        print(runtime.describe(placement, cfg.precision, cfg.global_batch_size), flush=True)
        unique_labels = load_unique_labels(cfg.data_dir)
        keras.utils.set_random_seed(cfg.seed)
        with placement.scope():
            model = build_model(cfg, init_model)
            models.compile_model(model, cfg)
            fresh = FreshStart(model)  # builds the optimizer's variables: inside the scope
            predictor = ondevice.tta_model(model, cfg.tta_views)  # TTA views made on the accelerator
            block = cfg.global_batch_size // placement.replicas  # one device's examples per step
            trains = "train" in jobs
            trainer = loop.train_model(model, trains and cfg.aug_prob > 0,  # training augmentation, ditto
                                           cfg.mixup_mode if trains and cfg.mixup_prob else None, block=block)
        # examples per prediction batch: about a training batch of views in all, whole per replica
        replicas = placement.replicas
        tta_batch = max(replicas, cfg.global_batch_size // len(cfg.tta_views) // replicas * replicas)
        card.set_model(*model_facts(cfg, model, placement, execution))
        fold_labels = read_fold_labels(inputs) if "train" in jobs else {}
        for fold in folds(cfg):
            check_lock()  # another run took this run dir over (our heartbeat failed): stop writing
            resume.NOTICE.check()  # a notice outside training: every host stops here together
            progress = resume.FoldProgress(cfg, fold, bool(fold_checkpoints(cfg.output_dir, fold)))
            todo = progress.todo(jobs)  # re-running after a kill skips what a fold already finished
            if not todo:
                continue
            fresh.restore()
            print(f"Fold {fold} ({fold - cfg.initial_fold + 1}/{cfg.n_folds}): {'+'.join(todo)}", flush=True)
            start, history = time.time(), None
            if "train" in todo:
                history = train_fold(cfg, fold, model, parse, inputs, fold_labels, unique_labels, trainer, block,
                                     placement_name(placement))
                progress.mark("train")
                timings[f"train_fold_{fold}"] = time.time() - start
            else:
                load_weights(model, best_checkpoint(cfg.output_dir, fold))
            for split_name in ("val", "test"):
                if split_name in todo:
                    start = time.time()
                    predict_split(cfg, fold, predictor, parse, inputs, split_name, tta_batch)
                    progress.mark(split_name)
                    timings[f"{split_name}_fold_{fold}"] = time.time() - start
            card.fold_done(fold, history, best_checkpoint(cfg.output_dir, fold), timings)
            resume.NOTICE.check()
    if "score" in jobs:
        result["scores"] = score(cfg, suffix)
    if "subm" in jobs:
        result["submission"] = write_submission(cfg, suffix)
    result["subset"] = suffix
    result["timings"] = timings
    card.finish(result)
    return result


def build_model(cfg, init_model: Callable) -> keras.Model:
    """The experiment's model; a size or backbone Keras refuses is an error naming the flags."""
    try:
        return init_model(cfg)
    except ValueError as err:
        raise cli.UsageError(f"--dim={cfg.dim} --backbone={cfg.backbone}: the model cannot be built "
                             f"({' '.join(str(err).split())})") from err


def explain_error(cfg, err: BaseException) -> BaseException:
    """An error that names what to fix, for errors that point nowhere: a corrupt record file
    (TensorFlow names only a byte offset) is found by its manifest checksum; a full disk or
    other I/O error without a path gets the run dir's."""
    dataset = cfg.frame_store or cfg.data_tfrec_dir
    if isinstance(err, tf.errors.DataLossError) and dataset:
        from tpuflow.prep import build_write  # noqa: PLC0415 (only on this error path)
        bad = {name: state for name, state in build_write.verify_dataset(dataset).items() if state != "ok"}
        named = ", ".join(f"{storage.join(dataset, n)} ({state})" for n, state in sorted(bad.items()))
        message = (f"corrupt record file(s): {named}; rebuild with data_prep/create_tfrecords.py (it redoes "
                   f"damaged shards)" if bad else f"{dataset}: {' '.join(str(err).split())}")
        return ValueError(message).with_traceback(err.__traceback__)
    if isinstance(err, OSError) and not err.filename and err.errno:
        return type(err)(err.errno, f"{err.strerror or err} (writing to --output_dir)", cfg.output_dir)
    return err
