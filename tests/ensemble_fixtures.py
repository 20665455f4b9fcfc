"""Writes small fake experiments (preds/ dirs with ids) and the CSVs they refer to, for the ensemble tests."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from tpuflow.results import prediction_names


def write_data(root: str, fold_of_row: list[int], n_test: int, seed: int = 0,
               labels: np.ndarray | None = None) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """train_cv.csv (folds interleaved, so a fold's rows are not contiguous), submission_format.csv
    and, if given, unique_labels_sorted.npy. Returns (data_dir, train_cv, submission_format)."""
    rng = np.random.default_rng(seed)
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir, exist_ok=True)
    n = len(fold_of_row)
    pool = labels if labels is not None else np.arange(20, 140)
    train = pd.DataFrame({"image_id": [f"abc_{i:03d}" for i in range(n)], "fold_id": fold_of_row,
                          "wind_speed": rng.choice(pool, n).astype(int)})
    fmt = pd.DataFrame({"image_id": [f"tst_{i:03d}" for i in range(n_test)], "wind_speed": 0})
    train.to_csv(os.path.join(data_dir, "train_cv.csv"), index=False)
    fmt.to_csv(os.path.join(data_dir, "submission_format.csv"), index=False)
    if labels is not None:
        np.save(os.path.join(data_dir, "unique_labels_sorted.npy"), np.asarray(labels))
    return data_dir, train, fmt


def write_model(root: str, name: str, train: pd.DataFrame, fmt: pd.DataFrame, val: dict[int, np.ndarray],
                test: dict[int, np.ndarray], shuffle_seed: int | None = None) -> str:
    """One experiment dir. val[fold]: (T, n_fold[, k]) rows in train_cv order of that fold;
    test[fold]: (T, n_test[, k]) in submission order. shuffle_seed saves rows (and ids) permuted."""
    preds = os.path.join(root, name, "preds")
    os.makedirs(preds, exist_ok=True)
    rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)

    def save(split: str, fold: int, ids: np.ndarray, values: np.ndarray) -> None:
        perm = np.arange(len(ids)) if rng is None else rng.permutation(len(ids))
        np.save(prediction_names.ids_path(preds, split, fold), ids[perm].astype(str))
        for t, v in enumerate(values):
            np.save(prediction_names.path(preds, split, fold, t), v[perm])

    for fold, values in val.items():
        save("val", fold, train.loc[train["fold_id"] == fold, "image_id"].to_numpy(), values)
        save("test", fold, fmt["image_id"].to_numpy(), test[fold])
    return os.path.join(root, name)


def random_models(root: str, train: pd.DataFrame, fmt: pd.DataFrame, n_models: int, n_tta: int,
                  seed: int = 0, dtype=np.float32, shuffle: bool = False) -> list[str]:
    """Regression experiments: target + shared noise + per-model bias/noise + per-TTA noise."""
    rng = np.random.default_rng(seed)
    y = train["wind_speed"].to_numpy(np.float64)
    common = rng.normal(0, 5, len(y))
    dirs = []
    for m in range(n_models):
        bias, scale = rng.normal(0, 2), rng.uniform(2, 6)
        base = y + common + bias + rng.normal(0, scale, len(y))
        full = (base + rng.normal(0, 1.5, (n_tta, len(y)))).astype(dtype)
        val = {f: full[:, (train["fold_id"] == f).to_numpy()] for f in sorted(train["fold_id"].unique())}
        test = {f: (60 + rng.normal(0, 10, (n_tta, len(fmt)))).astype(dtype) for f in val}
        shuffle_seed = seed + m if shuffle else None
        dirs.append(write_model(root, f"run-{m:02d}", train, fmt, val, test, shuffle_seed=shuffle_seed))
    return dirs
