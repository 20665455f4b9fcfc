"""Saved predictions, CV scores and the submission (NumPy/pandas only: no TensorFlow).

Predictions live in `<preds_dir>/y_pred_{val,test}_fold_<k>_tta_<t>.npy`, one row per example with
the ids beside them (`ids_val_fold_<k>.npy`; `ids_test.npy`, the same for every fold), so the order
is checked, never assumed (the names: `tpuflow.results.prediction_names`). A fold's validation rows
are written in the order of its rows in `train_cv.csv` (`csv_order`), test rows in
`submission_format.csv`'s: the reference's own helpers read them by position against those files.
Runs made before saved validation rows in record order; every reader here aligns by the ids.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from tpuflow import storage
from tpuflow.results import prediction_names


def read_views(preds_dir: str) -> list[str] | None:
    """The saved views (index t -> name), or None for a dir without them (the reference's
    ten views, by the convention of runs made before views were saved)."""
    path = prediction_names.views_path(preds_dir)
    return list(storage.read_json(path)["views"]) if storage.exists(path) else None


def read_view_set(preds_dir: str) -> list[str] | None:
    """The whole TTA set the saved views were taken from (a run may have predicted only its
    first views: `--tta_number`, `--quick`); None without one."""
    path = prediction_names.views_path(preds_dir)
    if not storage.exists(path):
        return None
    saved = storage.read_json(path)
    return list(saved.get("set") or saved["views"])


def check_views(preds_dir: str, views) -> None:
    """Refuses predictions whose TTA index would mean another view than in `views`."""
    saved = read_views(preds_dir)
    n = min(len(saved or ()), len(views))
    if saved and list(saved[:n]) != list(views[:n]):
        raise ValueError(f"{prediction_names.views_path(preds_dir)}: the predictions there are for TTA views {saved}, "
                         f"this run's are {list(views)}: TTA indices would mean different views. Use "
                         "another --data_preds_dir (or --output_dir), or the saved --tta")


def save_views(preds_dir: str, views, view_set) -> None:
    """Saves the views (and the set they are the first of) before predictions are written,
    extending a shorter, agreeing list."""
    check_views(preds_dir, views)
    saved = read_views(preds_dir) or []
    if len(views) > len(saved) or read_view_set(preds_dir) != list(view_set):
        kept = list(views) if len(views) > len(saved) else saved
        storage.write_json(prediction_names.views_path(preds_dir), {"views": kept, "set": list(view_set)})


PROBS_TO_VALUES = ("expectation", "argmax")


def to_values(pred: np.ndarray, unique_labels: np.ndarray | None = None, how: str = "expectation") -> np.ndarray:
    """Regression output (n,) / (n, 1) -> (n,); class probabilities (n, k) -> wind speeds: the
    expected one (`expectation`: probabilities times the labels) or the most probable (`argmax`)."""
    pred = np.asarray(pred)
    if pred.ndim == 2 and pred.shape[1] > 1:
        if unique_labels is None or len(unique_labels) != pred.shape[1]:
            raise ValueError(f"{pred.shape[1]} class probabilities need unique_labels_sorted.npy with as many "
                             f"labels (have {None if unique_labels is None else len(unique_labels)})")
        labels = np.asarray(unique_labels, dtype=np.float64)
        if how == "argmax":
            return labels[np.argmax(pred, axis=1)]
        if how != "expectation":
            raise ValueError(f"--probs_to_values={how}: use one of {PROBS_TO_VALUES}")
        return pred.astype(np.float64) @ labels
    return pred.astype(np.float64).reshape(len(pred))


def load_predictions(preds_dir: str, split: str, folds: range, tta_number: int,
                     unique_labels: np.ndarray | None = None,
                     views=None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{fold: (ids (n,), values (n_tta, n))}; a clear error naming any missing or mismatched file,
    or predictions saved for other TTA `views` than expected."""
    if views is not None:
        check_views(preds_dir, views)
    out = {}
    for k in folds:
        ids_file = prediction_names.ids_path(preds_dir, split, k)
        if not storage.exists(ids_file):
            raise FileNotFoundError(f"{ids_file}: missing (run the '{split}' job for fold {k})")
        ids = storage.load_npy(ids_file)
        values = []
        for t in range(tta_number + 1):
            path = prediction_names.path(preds_dir, split, k, t)
            if not storage.exists(path):
                raise FileNotFoundError(f"{path}: missing (--tta_number={tta_number} needs TTA 0..{tta_number})")
            v = to_values(storage.load_npy(path), unique_labels)
            if len(v) != len(ids):
                raise ValueError(f"{path}: {len(v)} rows but {ids_file} has {len(ids)} ids")
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{path}: contains NaN or inf")
            values.append(v)
        out[k] = (ids, np.stack(values))
    return out


def csv_order(train_cv: pd.DataFrame, fold: int, ids: np.ndarray) -> np.ndarray:
    """Positions that put a fold's predicted rows (`ids`, in record order) into the order of the
    fold's rows in train_cv.csv; an error naming what differs if they are not the same examples."""
    fold_ids = train_cv.loc[train_cv["fold_id"] == fold, "image_id"].astype(str)
    index = pd.Index(np.asarray(ids).astype(str))
    pos = index.get_indexer(fold_ids) if index.is_unique and len(index) == len(fold_ids) else None
    if pos is None or (pos < 0).any():
        raise ValueError(_ids_mismatch(fold, ids, fold_ids))
    return pos


def rmse(y_true: np.ndarray, y_pred: np.ndarray, round_pred: bool = True) -> float:
    """RMSE; the competition scores integer predictions, so they are rounded by default."""
    y_pred = np.rint(y_pred) if round_pred else y_pred
    return float(np.sqrt(np.mean((np.asarray(y_true, np.float64) - y_pred) ** 2)))


def cv_scores(train_cv: pd.DataFrame, preds: dict[int, tuple[np.ndarray, np.ndarray]],
              round_pred: bool = True) -> pd.DataFrame:
    """RMSE (of rounded predictions by default) per fold and over all folds, for each TTA and for the mean of all TTAs.

    Rows: fold 0..k-1 and 'all'; columns: tta_0..tta_T, tta_mean, and `baseline`: the score of
    predicting the mean wind speed of the other folds (what a model must beat to be useful).
    """
    truth = train_cv.set_index("image_id")["wind_speed"]
    rows, all_true, all_pred, all_base = {}, [], [], []
    for k, (ids, values) in preds.items():
        fold_ids = train_cv.loc[train_cv["fold_id"] == k, "image_id"]
        if set(ids) != set(fold_ids) or len(ids) != len(fold_ids):
            raise ValueError(_ids_mismatch(k, ids, fold_ids))
        y = truth.loc[ids].to_numpy()
        base = np.full(len(y), train_cv.loc[train_cv["fold_id"] != k, "wind_speed"].mean())
        all_true.append(y)
        all_pred.append(values)
        all_base.append(base)
        rows[str(k)] = _score_row(y, values, base, round_pred)
    rows["all"] = _score_row(np.concatenate(all_true), np.concatenate(all_pred, axis=1),
                             np.concatenate(all_base), round_pred)
    return pd.DataFrame.from_dict(rows, orient="index")


def _ids_mismatch(fold: int, ids: np.ndarray, fold_ids: pd.Series) -> str:
    """What differs between a fold's predicted ids and its rows in train_cv.csv, with examples."""
    extra = sorted(set(map(str, ids)) - set(map(str, fold_ids)))
    missing = sorted(set(map(str, fold_ids)) - set(map(str, ids)))
    parts = [f"val predictions of fold {fold} ({prediction_names.ids_name('val', fold)}, {len(ids)} ids) do not match "
             f"fold {fold} of train_cv.csv ({len(fold_ids)} ids):"]
    if extra:
        parts.append(f"{len(extra)} predicted id(s) not in the fold, e.g. {extra[:3]};")
    if missing:
        parts.append(f"{len(missing)} id(s) of the fold not predicted, e.g. {missing[:3]};")
    if not extra and not missing:
        parts.append(f"{len(ids) - len(set(map(str, ids)))} id(s) predicted more than once;")
    parts.append("were the records built from another split?")
    return " ".join(parts)


def _score_row(y: np.ndarray, values: np.ndarray, baseline: np.ndarray, round_pred: bool) -> dict:
    row = {f"tta_{t}": rmse(y, v, round_pred) for t, v in enumerate(values)}
    row["tta_mean"] = rmse(y, values.mean(axis=0), round_pred)
    row["baseline"] = rmse(y, baseline, round_pred)
    return row


def submission(preds: dict[int, tuple[np.ndarray, np.ndarray]], submission_format: pd.DataFrame) -> pd.DataFrame:
    """Mean over folds and TTAs, rounded to integers, in `submission_format` order."""
    order = submission_format["image_id"].to_numpy()
    stacked = []
    for k, (ids, values) in preds.items():
        pos = pd.Series(np.arange(len(ids)), index=ids)
        missing = np.setdiff1d(order, ids)
        if len(missing) or len(ids) != len(order):
            raise ValueError(f"test predictions of fold {k}: {len(ids)} ids do not match the "
                             f"{len(order)} of submission_format.csv (e.g. {missing[:3].tolist()})")
        stacked.append(values[:, pos.loc[order].to_numpy()])
    mean = np.concatenate(stacked).mean(axis=0)
    return pd.DataFrame({"image_id": order, "wind_speed": np.rint(mean).astype(np.int64)})
