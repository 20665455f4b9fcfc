"""CV split: grouped folds, determinism, conventions, bad input."""
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from tpuflow.prep import split


def test_every_row_gets_a_fold_and_no_storm_spans_two(raw_dir):
    train, test, labels = split.create_cv_split(raw_dir, n_folds=5, seed=33)
    assert set(train["fold_id"]) == set(range(5))
    assert train.groupby("storm_id")["fold_id"].nunique().max() == 1
    assert (test["fold_id"] == -1).all()
    for col in ("image_path", "frame_id", "storm_id_le", "wind_speed_le", "fold_id"):
        assert col in train.columns and col in test.columns
    np.testing.assert_array_equal(labels, np.sort(train["wind_speed"].unique()))
    np.testing.assert_array_equal(labels[train["wind_speed_le"]], train["wind_speed"])


def _raw_train(raw_dir):
    features = pd.read_csv(os.path.join(raw_dir, "training_set_features.csv"))
    labels = pd.read_csv(os.path.join(raw_dir, "training_set_labels.csv"))
    return features.merge(labels, on="image_id", how="left")


def test_default_folds_are_scikit_learns_group_kfold(raw_dir):
    """The reference's split: GroupKFold(5) over the storms of the raw rows."""
    raw = _raw_train(raw_dir)
    expected = np.full(len(raw), -1)
    for k, (_, rows) in enumerate(GroupKFold(n_splits=5).split(raw, groups=raw["storm_id"])):
        expected[rows] = k
    want = dict(zip(raw["image_id"], expected))
    train = split.create_cv_split(raw_dir, n_folds=5)[0]
    assert train["fold_id"].tolist() == [want[i] for i in train["image_id"]]


def test_default_folds_do_not_depend_on_row_order(raw_dir, tmp_path):
    d = _copy_raw(raw_dir, tmp_path)
    for name in ("training_set_features.csv", "training_set_labels.csv"):
        path = os.path.join(d, name)
        pd.read_csv(path).sample(frac=1.0, random_state=34).to_csv(path, index=False)
    a = split.create_cv_split(raw_dir, 5)[0].set_index("image_id")["fold_id"]
    b = split.create_cv_split(d, 5)[0].set_index("image_id")["fold_id"]
    pd.testing.assert_series_equal(a.sort_index(), b.sort_index())


@pytest.mark.parametrize("method", ["group_shuffle", "stratified"])
def test_seeded_methods_same_seed_same_split_other_seed_differs(raw_dir, method):
    a = split.create_cv_split(raw_dir, 5, 33, method=method)[0]
    b = split.create_cv_split(raw_dir, 5, 33, method=method)[0]
    others = [split.create_cv_split(raw_dir, 5, seed, method=method)[0] for seed in range(4)]
    pd.testing.assert_frame_equal(a, b)
    assert any(not a["fold_id"].equals(c["fold_id"]) for c in others)
    assert a.groupby("storm_id")["fold_id"].nunique().max() == 1
    assert set(a["fold_id"]) == set(range(5))


def test_stratified_is_scikit_learns_on_binned_wind_speed(raw_dir):
    raw = _raw_train(raw_dir)
    edges = np.unique(np.quantile(raw["wind_speed"], np.linspace(0, 1, split.STRATIFY_BINS + 1)[1:-1]))
    y = np.searchsorted(edges, raw["wind_speed"], side="right")
    expected = np.full(len(raw), -1)
    splitter = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=7)
    for k, (_, rows) in enumerate(splitter.split(raw, y, groups=raw["storm_id"])):
        expected[rows] = k
    want = dict(zip(raw["image_id"], expected))
    train = split.create_cv_split(raw_dir, 5, 7, method="stratified")[0]
    assert train["fold_id"].tolist() == [want[i] for i in train["image_id"]]


def test_image_path_is_relative_to_the_data_dir(raw_dir):
    train, test, _ = split.create_cv_split(raw_dir, 5)
    assert train["image_path"].tolist() == [f"train/{i}.jpg" for i in train["image_id"]]
    assert test["image_path"].tolist() == [f"test/{i}.jpg" for i in test["image_id"]]


def test_test_rows_follow_submission_format(raw_dir, tmp_path):
    d = _copy_raw(raw_dir, tmp_path)
    path = os.path.join(d, "submission_format.csv")
    sub = pd.read_csv(path).sample(frac=1.0, random_state=1)
    sub.to_csv(path, index=False)
    test = split.create_cv_split(d, 5)[1]
    assert test["image_id"].tolist() == sub["image_id"].tolist()


@pytest.mark.parametrize("value, why", [
    ("110.7", r"wind_speed '110.7' is not a whole number"),
    ("-30", r"wind_speed '-30' is outside the plausible range 0..250"),
    ("fast", r"wind_speed 'fast' is not a number"),
])
def test_bad_wind_speed_names_file_row_and_value(raw_dir, tmp_path, value, why):
    d = _copy_raw(raw_dir, tmp_path)
    path = os.path.join(d, "training_set_labels.csv")
    labels = pd.read_csv(path, dtype=str)
    labels.loc[3, "wind_speed"] = value
    labels.to_csv(path, index=False)
    with pytest.raises(ValueError, match=rf"training_set_labels.csv: row 5: {why}"):
        split.create_cv_split(d)


def test_wind_speed_range_can_be_widened(raw_dir, tmp_path):
    d = _copy_raw(raw_dir, tmp_path)
    path = os.path.join(d, "training_set_labels.csv")
    labels = pd.read_csv(path)
    labels.loc[3, "wind_speed"] = 300
    labels.to_csv(path, index=False)
    train = split.create_cv_split(d, wind_speed_range=(0, 400))[0]
    assert 300 in train["wind_speed"].tolist()


def test_non_numeric_relative_time_names_file_and_row(raw_dir, tmp_path):
    d = _copy_raw(raw_dir, tmp_path)
    path = os.path.join(d, "test_set_features.csv")
    features = pd.read_csv(path, dtype=str)
    features.loc[0, "relative_time"] = "noon"
    features.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"test_set_features.csv: row 2: relative_time 'noon' is not a number"):
        split.create_cv_split(d)


def test_image_id_escaping_the_data_dir_is_an_error(raw_dir, tmp_path):
    d = _copy_raw(raw_dir, tmp_path)
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"x")
    for name in ("training_set_features.csv", "training_set_labels.csv"):
        path = os.path.join(d, name)
        df = pd.read_csv(path)
        df.loc[2, "image_id"] = "../../secret"
        df.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"training_set_features.csv: row 4: image_path 'train/../../secret.jpg' "
                                         r"resolves to .*secret.jpg, outside the data dir"):
        split.create_cv_split(d)


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
