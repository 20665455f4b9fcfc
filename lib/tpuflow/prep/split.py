"""Grouped k-fold CV split of the raw competition data (no TensorFlow).

Every experiment uses the same split, so all scores are directly comparable. Frames are grouped
by storm (neighbouring frames are near-duplicates), so no storm has frames in two folds.

The folds come from scikit-learn. The default, `group`, is plain `GroupKFold` over the storms:
the reference solution's split (its experiment database was scored on it), which depends only
on the number of training frames per storm, so the same CSVs give the same folds whatever their
row order. `group_shuffle` is `GroupKFold(shuffle=True)` (seeded: equal storm counts per fold);
`stratified` is `StratifiedGroupKFold` on wind speed binned into quantiles (seeded: folds with
the same label distribution).

Usage:
    train_cv, test_cv, labels = create_cv_split(data_dir, n_folds=5)
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from tpuflow import storage
from tpuflow.prep import frames, validate
from tpuflow.storage import tables

FEATURE_COLUMNS = ("image_id", "storm_id", "relative_time", "ocean")
LABEL_COLUMNS = ("image_id", "wind_speed")
SUBMISSION_COLUMNS = ("image_id", "wind_speed")
# Placeholder label of test rows (their wind speed is unknown).
TEST_PLACEHOLDER = 0
METHODS = ("group", "group_shuffle", "stratified")
STRATIFY_BINS = 10  # wind-speed quantile bins of the `stratified` method


def assign_folds(train: pd.DataFrame, n_folds: int, method: str = "group",
                 seed: int = 33) -> np.ndarray:
    """Fold id per training row, whole storms per fold, from scikit-learn's splitters.

    `group`: `GroupKFold(n_folds)` (no shuffle; `seed` unused): storms largest first, each to the
    fold with the fewest frames. `group_shuffle`: `GroupKFold(shuffle=True, random_state=seed)`.
    `stratified`: `StratifiedGroupKFold(shuffle=True, random_state=seed)` on `wind_speed` cut
    into `STRATIFY_BINS` quantile bins.
    """
    if method not in METHODS:
        raise ValueError(f"--split_method={method!r}: expected one of {METHODS}")
    groups = train["storm_id"].astype(str).to_numpy()
    n_storms = len(np.unique(groups))
    if n_storms < n_folds:
        raise ValueError(f"--n_folds={n_folds} but only {n_storms} storms: a fold would be empty")
    if method == "group":
        splitter, y = GroupKFold(n_splits=n_folds), None
    elif method == "group_shuffle":
        splitter, y = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed), None
    else:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        edges = np.unique(np.quantile(train["wind_speed"], np.linspace(0, 1, STRATIFY_BINS + 1)[1:-1]))
        y = np.searchsorted(edges, train["wind_speed"].to_numpy(), side="right")
    fold_id = np.full(len(train), -1, dtype=np.int64)
    for k, (_, rows) in enumerate(splitter.split(np.zeros(len(train)), y, groups)):
        fold_id[rows] = k
    return fold_id


def _check_unique(df: pd.DataFrame, path: str) -> None:
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: duplicate image_id {dup.iloc[0]!r} (row {dup.index[0] + 2})")


def create_cv_split(data_dir: str, n_folds: int = 5, seed: int = 33, check_images: bool = True,
                    method: str = "group",
                    wind_speed_range: tuple[int, int] = validate.WIND_SPEED_RANGE
                    ) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Builds train_cv / test_cv tables and the sorted unique labels from the raw data dir.

    train_cv gains `image_path` (`train/<id>.jpg`, relative to the data dir, as the reference
    writes it), `frame_id, storm_id_le, wind_speed_le, fold_id`; `frame_id` is the frame's
    position in its storm's timeline over train and test together (ordered by `relative_time`).
    test_cv has the same columns with placeholder labels and fold_id -1, in the row order of
    `submission_format.csv` (of `test_set_features.csv` if there is none). Wind speeds must be
    whole numbers within `wind_speed_range`, times numbers, frames inside the data dir.
    """
    feat_path = storage.join(data_dir, "training_set_features.csv")
    lab_path = storage.join(data_dir, "training_set_labels.csv")
    test_path = storage.join(data_dir, "test_set_features.csv")
    sub_path = storage.join(data_dir, "submission_format.csv")
    train = tables.read_table(feat_path, FEATURE_COLUMNS)
    labels = tables.read_table(lab_path, LABEL_COLUMNS)
    test = tables.read_table(test_path, FEATURE_COLUMNS)
    for df, path in ((train, feat_path), (labels, lab_path), (test, test_path)):
        _check_unique(df, path)
    for df, path in ((train, feat_path), (test, test_path)):
        df["relative_time"] = validate.numeric_column(df, "relative_time", path)
    labels["wind_speed"] = validate.wind_speeds(labels, lab_path, value_range=wind_speed_range)

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
    if storage.exists(sub_path):  # the reference's tools read test predictions in this order
        test = _in_submission_order(test, tables.read_table(sub_path, ("image_id",)), test_path, sub_path)

    for df, folder, path in ((train, "train", feat_path), (test, "test", test_path)):
        df["image_path"] = [f"{folder}/{i}.jpg" for i in df["image_id"].astype(str)]
        full = validate.resolve_frame_paths(df["image_path"], data_dir, path)
        if check_images:
            for row, frame in enumerate(full):
                if not storage.exists(frame):
                    raise FileNotFoundError(f"{frame}: image named in the CSV (row {row + 2}) is missing")

    # One timeline per storm over train and test: a test frame's history may be a train frame.
    train["_row"], test["_row"] = np.arange(len(train)), np.arange(len(test))
    both = frames.order_storm_frames(pd.concat([train.assign(_set=0), test.assign(_set=1)], ignore_index=True))
    both["frame_id"] = both.pop(frames.POSITION_COLUMN)
    storms = np.sort(both["storm_id"].astype(str).unique())
    both["storm_id_le"] = np.searchsorted(storms, both["storm_id"].astype(str))

    unique_labels = np.sort(train["wind_speed"].unique()).astype(np.int64)
    train = both[both["_set"] == 0].drop(columns="_set").reset_index(drop=True)
    test = both[both["_set"] == 1].sort_values("_row").drop(columns=["_set", "_row"]).reset_index(drop=True)
    train["wind_speed_le"] = np.searchsorted(unique_labels, train["wind_speed"])
    test["wind_speed_le"] = 0
    # Folds on the rows in the raw CSV's order (the reference's), then kept in storm/time order.
    raw_order = train.sort_values("_row")
    train.loc[raw_order.index, "fold_id"] = assign_folds(raw_order, n_folds, method, seed)
    train["fold_id"] = train["fold_id"].astype(np.int64)
    train = train.drop(columns="_row")
    test["fold_id"] = -1
    return train, test, unique_labels


def _in_submission_order(test: pd.DataFrame, sub: pd.DataFrame, test_path: str,
                         sub_path: str) -> pd.DataFrame:
    """Test rows reordered as submission_format.csv lists them (the same ids, each once)."""
    _check_unique(sub, sub_path)
    ids = test["image_id"].astype(str)
    wanted = sub["image_id"].astype(str)
    extra = sorted(set(wanted) - set(ids))
    lost = sorted(set(ids) - set(wanted))
    if extra or lost:
        raise ValueError(f"{sub_path}: image ids differ from {test_path}: "
                         f"{len(extra)} only in the submission format (e.g. {extra[:3]}), "
                         f"{len(lost)} only in the test features (e.g. {lost[:3]})")
    position = pd.Series(np.arange(len(wanted)), index=wanted)
    return test.iloc[np.argsort(position[ids].to_numpy(), kind="stable")].reset_index(drop=True)


def write_cv_split(out_dir: str, train: pd.DataFrame, test: pd.DataFrame,
                   unique_labels: np.ndarray) -> None:
    """Writes train_cv.csv, test_cv.csv and unique_labels_sorted.npy atomically."""
    storage.write_text(storage.join(out_dir, "train_cv.csv"), train.to_csv(index=False))
    storage.write_text(storage.join(out_dir, "test_cv.csv"), test.to_csv(index=False))
    storage.save_npy(storage.join(out_dir, "unique_labels_sorted.npy"), unique_labels)
