"""Runs an experiment's jobs: the fold loop, best checkpoints, predictions with ids, scores, submission."""
from __future__ import annotations

import time
from typing import Callable

import keras
import numpy as np
import pandas as pd

from tpuflow import pipeline, records, runtime, scoring, split, storage

CHECKPOINT_GLOB = "model-best-f{fold}-e*.weights.h5"


def checkpoint_name(fold: int, epoch: int, score: float) -> str:
    """`model-best-f<k>-e<EEE>-<val score:.4f>.weights.h5`, epoch counted from 1."""
    return f"model-best-f{fold}-e{epoch:03d}-{score:.4f}.weights.h5"


def fold_checkpoints(output_dir: str, fold: int) -> list[str]:
    return storage.glob(storage.join(output_dir, CHECKPOINT_GLOB.format(fold=fold)))


def best_checkpoint(output_dir: str, fold: int) -> str:
    """The one best checkpoint of a fold; an error if there is none or several."""
    found = fold_checkpoints(output_dir, fold)
    if len(found) != 1:
        raise FileNotFoundError(f"{output_dir}: expected one {CHECKPOINT_GLOB.format(fold=fold)}, "
                                f"found {len(found)} (train fold {fold} first)")
    return found[0]


class FoldScore(keras.callbacks.Callback):
    """Scores the whole validation fold after each epoch, exactly once per example.

    Adds `val_rmse` (competition score: rounded predictions) and `val_loss` to the epoch logs, so
    that callbacks after it (checkpoint, LR reduction) can monitor them. Keras' own validation
    would drop or pad examples under TPU static shapes; this uses the padded-then-trimmed pipeline.
    """

    def __init__(self, dataset, labels: np.ndarray, labels_le: np.ndarray, unique_labels, cfg):
        super().__init__()
        self.dataset, self.labels, self.labels_le = dataset, labels, labels_le
        self.unique_labels, self.task, self.round = unique_labels, cfg.task, cfg.metric == "rmse"

    def on_epoch_end(self, epoch, logs=None):
        pred = self.model.predict(self.dataset, verbose=0)[: len(self.labels)]
        values = scoring.to_values(pred, self.unique_labels)
        logs["val_rmse"] = scoring.rmse(self.labels, values, round_pred=self.round)
        if self.task == "classification":
            p = np.clip(pred[np.arange(len(pred)), self.labels_le], 1e-7, 1.0)
            logs["val_loss"] = float(-np.mean(np.log(p)))
        else:
            logs["val_loss"] = float(np.mean((pred.reshape(-1) - self.labels) ** 2))


class BestCheckpoint(keras.callbacks.Callback):
    """Saves weights when the monitored value improves, keeping only the best file of the fold."""

    def __init__(self, output_dir: str, fold: int, monitor: str):
        super().__init__()
        self.output_dir, self.fold, self.monitor = output_dir, fold, monitor
        self.best = np.inf
        self.path = None

    def on_epoch_end(self, epoch, logs=None):
        if logs[self.monitor] >= self.best:
            return
        self.best = logs[self.monitor]
        path = storage.join(self.output_dir, checkpoint_name(self.fold, epoch + 1, logs["val_rmse"]))
        with storage.atomic_path(path) as tmp:
            self.model.save_weights(tmp)
        for old in fold_checkpoints(self.output_dir, self.fold):
            if old != path:
                storage.remove(old)
        self.path = path


def check_inputs(cfg, jobs: set[str]) -> dict:
    """Fails fast, before any long work, on anything missing; returns the dataset manifest."""
    manifest = {}
    if cfg.batch_size < 1:
        raise ValueError(f"--batch_size={cfg.batch_size}: must be >= 1")
    if jobs & {"train", "val", "test"}:
        if not cfg.data_tfrec_dir:
            raise ValueError("--data_tfrec_dir is required for the train/val/test jobs")
        manifest = records.read_manifest(cfg.data_tfrec_dir)
        total = int(manifest["n_folds"])
        if cfg.initial_fold + cfg.n_folds > total:
            raise ValueError(f"--initial_fold={cfg.initial_fold} --n_folds={cfg.n_folds}: the dataset "
                             f"{cfg.data_tfrec_dir} has only {total} folds")
        records.record_files(cfg.data_tfrec_dir, range(total))
        if "test" in jobs:
            records.record_files(cfg.data_tfrec_dir, None)
        if "train" not in jobs:
            for k in folds(cfg):
                best_checkpoint(cfg.output_dir, k)
    if cfg.task == "classification" and cfg.n_classes == 0:
        cfg.n_classes = len(load_unique_labels(cfg.data_dir, required=True))
    if "score" in jobs:
        split.read_csv(storage.join(cfg.data_dir, "train_cv.csv"), ("image_id", "wind_speed", "fold_id"))
        if "val" not in jobs:
            scoring.load_predictions(cfg.data_preds_dir, "val", folds(cfg), cfg.tta_number, load_unique_labels(cfg.data_dir))
    if "subm" in jobs:
        split.read_csv(storage.join(cfg.data_dir, "submission_format.csv"), split.SUBMISSION_COLUMNS)
        if "test" not in jobs:
            scoring.load_predictions(cfg.data_preds_dir, "test", folds(cfg), cfg.tta_number, load_unique_labels(cfg.data_dir))
    return manifest


def folds(cfg) -> range:
    return range(cfg.initial_fold, cfg.initial_fold + cfg.n_folds)


def load_unique_labels(data_dir: str, required: bool = False) -> np.ndarray | None:
    path = storage.join(data_dir, "unique_labels_sorted.npy")
    if storage.exists(path):
        return storage.load_npy(path)
    if required:
        raise FileNotFoundError(f"{path}: needed for classification (run data_prep/create_cv_split.py)")
    return None


def compile_model(model: keras.Model, cfg) -> None:
    """Loss and optimizer from the task flags (loss scaling is automatic under mixed_float16)."""
    if cfg.task == "classification":
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        metrics = ["accuracy"]
    else:
        loss, metrics = "mse", [keras.metrics.RootMeanSquaredError(name="rmse")]
    model.compile(optimizer=keras.optimizers.Adam(cfg.lr), loss=loss, metrics=metrics)


def predict(model: keras.Model, files: list[str], parse, n_examples: int, cfg, tta_index: int) -> np.ndarray:
    """Predictions for every example exactly once, in record order (padding trimmed)."""
    ds = pipeline.predict_dataset(files, parse, cfg.batch_size, n_examples, tta_index)
    return np.asarray(model.predict(ds, verbose=0))[:n_examples]


def train_fold(cfg, fold: int, model: keras.Model, parse, manifest: dict, unique_labels) -> keras.Model:
    """Trains one fold, keeping the best checkpoint; returns the model with the best weights."""
    train_folds = [k for k in range(int(manifest["n_folds"])) if k != fold]
    train_files = records.record_files(cfg.data_tfrec_dir, train_folds)
    val_files = records.record_files(cfg.data_tfrec_dir, [fold])
    steps = cfg.steps_per_epoch or max(1, records.example_count(manifest, train_folds) // cfg.batch_size)
    ids, labels, labels_le = records.read_labels(val_files)
    val_ds = pipeline.predict_dataset(val_files, parse, cfg.batch_size, len(ids))
    checkpoint = BestCheckpoint(cfg.output_dir, fold, cfg.monitor)
    callbacks = [
        FoldScore(val_ds, labels, labels_le, unique_labels, cfg),  # first: fills val_* logs
        checkpoint,
        keras.callbacks.ReduceLROnPlateau(monitor=cfg.monitor, factor=cfg.lr_factor,
                                          patience=cfg.lr_patience, verbose=int(cfg.verbose > 0)),
    ]
    train_ds = pipeline.train_dataset(train_files, parse, cfg.batch_size, shuffle_buffer=cfg.buffer_size,
                                      aug_prob=cfg.aug_prob, cache=cfg.use_cache, seed=cfg.seed + fold)
    model.fit(train_ds, epochs=cfg.n_epochs, steps_per_epoch=steps, callbacks=callbacks, verbose=cfg.verbose)
    model.load_weights(checkpoint.path)
    return model


def predict_split(cfg, fold: int, model: keras.Model, parse, split_name: str) -> None:
    """Writes val (this fold) or test predictions for TTA 0..tta_number, with their ids."""
    files = records.record_files(cfg.data_tfrec_dir, [fold] if split_name == "val" else None)
    ids = records.read_ids(files)
    for t in range(cfg.tta_number + 1):
        pred = predict(model, files, parse, len(ids), cfg, t)
        storage.save_npy(scoring.pred_path(cfg.data_preds_dir, split_name, fold, t), pred)
    storage.save_npy(scoring.ids_path(cfg.data_preds_dir, split_name, fold), ids)


def score(cfg) -> pd.DataFrame:
    """CV scores from the saved predictions; printed and written to `scores.csv`."""
    train_cv = split.read_csv(storage.join(cfg.data_dir, "train_cv.csv"), ("image_id", "wind_speed", "fold_id"))
    preds = scoring.load_predictions(cfg.data_preds_dir, "val", folds(cfg), cfg.tta_number,
                                     load_unique_labels(cfg.data_dir))
    table = scoring.cv_scores(train_cv, preds, round_pred=cfg.metric == "rmse")
    storage.write_text(storage.join(cfg.output_dir, "scores.csv"), table.to_csv(index_label="fold"))
    print(f"CV {cfg.metric} ({cfg.experiment_id}), rows: folds and all, columns: TTA index and TTA mean")
    print(table.round(4).to_string(), flush=True)
    return table


def write_submission(cfg) -> str:
    """Mean over folds and TTAs, rounded, in submission_format order: `<output_dir>/<id>.csv`."""
    fmt = split.read_csv(storage.join(cfg.data_dir, "submission_format.csv"), split.SUBMISSION_COLUMNS)
    preds = scoring.load_predictions(cfg.data_preds_dir, "test", folds(cfg), cfg.tta_number,
                                     load_unique_labels(cfg.data_dir))
    path = storage.join(cfg.output_dir, f"{cfg.experiment_id}.csv")
    storage.write_text(path, scoring.submission(preds, fmt).to_csv(index=False))
    print(f"Submission: {path}", flush=True)
    return path


def run_jobs(cfg, init_model: Callable, parse_example: Callable) -> dict:
    """Runs the jobs of `cfg.jobs` in order; returns {'scores': DataFrame, 'submission': path, ...}."""
    jobs = set(cfg.jobs)
    manifest = check_inputs(cfg, jobs)
    storage.makedirs(cfg.output_dir)
    storage.write_json(storage.join(cfg.output_dir, "config.json"), vars(cfg))
    result, timings = {"timings": {}}, {}
    parse = lambda serialized: parse_example(serialized, cfg)  # noqa: E731 (closure over cfg)
    if jobs & {"train", "val", "test"}:
        runtime.set_precision(cfg.mixed_precision)
        strategy = runtime.get_strategy(cfg.tpu_ip_or_name, cfg.cpu_replicas)
        if cfg.batch_size % strategy.num_replicas_in_sync:
            raise ValueError(f"--batch_size={cfg.batch_size} is not divisible by the "
                             f"{strategy.num_replicas_in_sync} replicas")
        unique_labels = load_unique_labels(cfg.data_dir)
        keras.utils.set_random_seed(cfg.seed)
        for fold in folds(cfg):
            with strategy.scope():
                model = init_model(cfg)
                compile_model(model, cfg)
            start = time.time()
            if "train" in jobs:
                train_fold(cfg, fold, model, parse, manifest, unique_labels)
                timings[f"train_fold_{fold}"] = time.time() - start
            else:
                model.load_weights(best_checkpoint(cfg.output_dir, fold))
            for split_name in ("val", "test"):
                if split_name in jobs:
                    start = time.time()
                    predict_split(cfg, fold, model, parse, split_name)
                    timings[f"{split_name}_fold_{fold}"] = time.time() - start
            keras.backend.clear_session(free_memory=True)
    if "score" in jobs:
        result["scores"] = score(cfg)
    if "subm" in jobs:
        result["submission"] = write_submission(cfg)
    result["timings"] = timings
    return result
