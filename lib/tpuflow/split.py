"""Grouped k-fold CV split of the raw competition data (no TensorFlow).

Every experiment uses the same split, so all scores are directly comparable. Frames are grouped
by storm (neighbouring frames are near-duplicates), so no storm has frames in two folds.

Usage:
    train_cv, test_cv, labels = create_cv_split(data_dir, n_folds=5, seed=33)
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from tpuflow import frames, storage

FEATURE_COLUMNS = ("image_id", "storm_id", "relative_time", "ocean")
LABEL_COLUMNS = ("image_id", "wind_speed")
SUBMISSION_COLUMNS = ("image_id", "wind_speed")
# Placeholder label of test rows (their wind speed is unknown).
TEST_PLACEHOLDER = 0


def read_csv(path: str, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Reads a CSV (local or gs://) and checks its columns, naming the file if one is missing."""
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    df = pd.read_csv(io.BytesIO(storage.read_bytes(path)))
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{path}: no rows")
    return df


def group_kfold(groups: pd.Series, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per row; whole groups per fold, folds balanced by row count.

    Groups are shuffled with `seed`, then (largest first, stable) each goes to the fold that has
    the fewest rows so far — GroupKFold's balancing, made seedable.
    """
    sizes = groups.value_counts(sort=False)
    if len(sizes) < n_folds:
        raise ValueError(f"--n_folds={n_folds} but only {len(sizes)} storms: a fold would be empty")
    order = np.random.default_rng(seed).permutation(len(sizes))
    shuffled = sizes.iloc[order]
    by_size = shuffled.iloc[np.argsort(-shuffled.to_numpy(), kind="stable")]
    fold_rows = np.zeros(n_folds, dtype=np.int64)
    fold_of = {}
    for group, size in by_size.items():
        k = int(np.argmin(fold_rows))
        fold_of[group] = k
        fold_rows[k] += size
    return groups.map(fold_of).to_numpy(dtype=np.int64)


def _check_unique(df: pd.DataFrame, path: str) -> None:
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: duplicate image_id {dup.iloc[0]!r} (row {dup.index[0] + 2})")


def create_cv_split(data_dir: str, n_folds: int = 5, seed: int = 33,
                    check_images: bool = True) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Builds train_cv / test_cv tables and the sorted unique labels from the raw data dir.

    train_cv gains `image_path, frame_id, storm_id_le, wind_speed_le, fold_id`; `frame_id` is the
    frame's position in its storm's timeline over train and test together (ordered by
    `relative_time`). test_cv has the same columns with placeholder labels and fold_id -1.
    """
    feat_path = storage.join(data_dir, "training_set_features.csv")
    lab_path = storage.join(data_dir, "training_set_labels.csv")
    test_path = storage.join(data_dir, "test_set_features.csv")
    train = read_csv(feat_path, FEATURE_COLUMNS)
    labels = read_csv(lab_path, LABEL_COLUMNS)
    test = read_csv(test_path, FEATURE_COLUMNS)
    for df, path in ((train, feat_path), (labels, lab_path), (test, test_path)):
        _check_unique(df, path)

    train = train.merge(labels[list(LABEL_COLUMNS)], on="image_id", how="left", validate="1:1")
    unlabeled = train["wind_speed"].isna()
    if unlabeled.any():
        row = int(np.flatnonzero(unlabeled)[0])
        raise ValueError(f"{lab_path}: no wind_speed for image_id {train['image_id'].iloc[row]!r} "
                         f"(row {row + 2} of {feat_path})")
    train["wind_speed"] = train["wind_speed"].astype(np.int64)
    test["wind_speed"] = TEST_PLACEHOLDER
    both_sets = set(train["image_id"]) & set(test["image_id"])
    if both_sets:
        raise ValueError(f"{test_path}: image_id {sorted(both_sets)[0]!r} is in train and test")

    train["image_path"] = [storage.join(data_dir, "train", f"{i}.jpg") for i in train["image_id"]]
    test["image_path"] = [storage.join(data_dir, "test", f"{i}.jpg") for i in test["image_id"]]
    if check_images:
        for df in (train, test):
            for row, path in enumerate(df["image_path"]):
                if not storage.exists(path):
                    raise FileNotFoundError(f"{path}: image named in the CSV (row {row + 2}) is missing")

    # One timeline per storm over train and test: a test frame's history may be a train frame.
    both = frames.order_storm_frames(pd.concat([train.assign(_set=0), test.assign(_set=1)], ignore_index=True))
    both["frame_id"] = both.pop(frames.POSITION_COLUMN)
    storms = np.sort(both["storm_id"].astype(str).unique())
    both["storm_id_le"] = np.searchsorted(storms, both["storm_id"].astype(str))

    unique_labels = np.sort(train["wind_speed"].unique()).astype(np.int64)
    train = both[both["_set"] == 0].drop(columns="_set").reset_index(drop=True)
    test = both[both["_set"] == 1].drop(columns="_set").reset_index(drop=True)
    train["wind_speed_le"] = np.searchsorted(unique_labels, train["wind_speed"])
    test["wind_speed_le"] = 0
    train["fold_id"] = group_kfold(train["storm_id"], n_folds, seed)
    test["fold_id"] = -1
    return train, test, unique_labels


def write_cv_split(out_dir: str, train: pd.DataFrame, test: pd.DataFrame,
                   unique_labels: np.ndarray) -> None:
    """Writes train_cv.csv, test_cv.csv and unique_labels_sorted.npy atomically."""
    storage.write_text(storage.join(out_dir, "train_cv.csv"), train.to_csv(index=False))
    storage.write_text(storage.join(out_dir, "test_cv.csv"), test.to_csv(index=False))
    storage.save_npy(storage.join(out_dir, "unique_labels_sorted.npy"), unique_labels)
