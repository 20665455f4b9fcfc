"""CV split: grouped folds, determinism, conventions, bad input."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from tpuflow import split


def test_every_row_gets_a_fold_and_no_storm_spans_two(raw_dir):
    train, test, labels = split.create_cv_split(raw_dir, n_folds=5, seed=33)
    assert set(train["fold_id"]) == set(range(5))
    assert train.groupby("storm_id")["fold_id"].nunique().max() == 1
    assert (test["fold_id"] == -1).all()
    for col in ("image_path", "frame_id", "storm_id_le", "wind_speed_le", "fold_id"):
        assert col in train.columns and col in test.columns
    np.testing.assert_array_equal(labels, np.sort(train["wind_speed"].unique()))
    np.testing.assert_array_equal(labels[train["wind_speed_le"]], train["wind_speed"])


def test_same_seed_same_split_other_seed_differs(raw_dir):
    a = split.create_cv_split(raw_dir, 5, 33)[0]
    b = split.create_cv_split(raw_dir, 5, 33)[0]
    c = split.create_cv_split(raw_dir, 5, 7)[0]
    pd.testing.assert_frame_equal(a, b)
    assert not a["fold_id"].equals(c["fold_id"])


def test_frame_id_orders_train_and_test_on_one_timeline(raw_dir):
    train, test, _ = split.create_cv_split(raw_dir, 5, 33)
    both = pd.concat([train, test]).sort_values(["storm_id", "relative_time"])
    for _, storm in both.groupby("storm_id"):
        assert storm["frame_id"].tolist() == list(range(len(storm)))
    shared = set(train["storm_id"]) & set(test["storm_id"])
    assert shared, "synthetic test set should hold later frames of training storms"


def _copy_raw(raw_dir, tmp_path):
    dst = tmp_path / "raw"
    shutil.copytree(raw_dir, dst)
    return str(dst)


def test_missing_column_names_the_file(raw_dir, tmp_path):
    d = _copy_raw(raw_dir, tmp_path)
    path = os.path.join(d, "training_set_labels.csv")
    pd.read_csv(path).rename(columns={"wind_speed": "speed"}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"training_set_labels.csv: missing column\(s\) \['wind_speed'\]"):
        split.create_cv_split(d)


def test_missing_image_names_the_file_and_row(raw_dir, tmp_path):
    d = _copy_raw(raw_dir, tmp_path)
    first = pd.read_csv(os.path.join(d, "test_set_features.csv"))["image_id"].iloc[0]
    os.remove(os.path.join(d, "test", f"{first}.jpg"))
    with pytest.raises(FileNotFoundError, match=rf"{first}.jpg: image named in the CSV \(row 2\) is missing"):
        split.create_cv_split(d)


def test_more_folds_than_storms_is_an_error(raw_dir):
    n_storms = pd.read_csv(os.path.join(raw_dir, "training_set_features.csv"))["storm_id"].nunique()
    with pytest.raises(ValueError, match="a fold would be empty"):
        split.create_cv_split(raw_dir, n_folds=n_storms + 1)
