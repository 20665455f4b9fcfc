"""Tests of the built-in synthetic storms: layout, determinism, splits, winds, atomicity, learnability."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from PIL import Image

from tpuflow import storage
from tpuflow.prep.synthetic import SyntheticConfig, make_synthetic

SMALL = SyntheticConfig(seed=3, n_storms=8, n_test_only_storms=3, min_frames=6, max_frames=20, size=32)
CSV_NAMES = ("training_set_features.csv", "training_set_labels.csv", "test_set_features.csv", "submission_format.csv")


def read_csv(path: str) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("synth") / "raw")
    return out, make_synthetic(out, SMALL)


def test_layout_and_columns(small):
    out, summary = small
    assert sorted(os.listdir(out)) == sorted(CSV_NAMES + ("test", "train"))
    columns = {name: read_csv(os.path.join(out, name))[0] for name in CSV_NAMES}
    assert columns["training_set_features.csv"] == ["image_id", "storm_id", "relative_time", "ocean"]
    assert columns["test_set_features.csv"] == ["image_id", "storm_id", "relative_time", "ocean"]
    assert columns["training_set_labels.csv"] == ["image_id", "wind_speed"]
    assert columns["submission_format.csv"] == ["image_id", "wind_speed"]

    _, train = read_csv(os.path.join(out, "training_set_features.csv"))
    _, labels = read_csv(os.path.join(out, "training_set_labels.csv"))
    _, test = read_csv(os.path.join(out, "test_set_features.csv"))
    _, submission = read_csv(os.path.join(out, "submission_format.csv"))
    assert [r["image_id"] for r in labels] == [r["image_id"] for r in train]
    assert [r["image_id"] for r in submission] == [r["image_id"] for r in test]
    assert {r["wind_speed"] for r in submission} == {"0"}
    assert {r["ocean"] for r in train + test} <= {"1", "2"}
    assert sorted(os.listdir(os.path.join(out, "train"))) == sorted(r["image_id"] + ".jpg" for r in train)
    assert sorted(os.listdir(os.path.join(out, "test"))) == sorted(r["image_id"] + ".jpg" for r in test)
    assert summary["n_train_frames"] == len(train) and summary["n_test_frames"] == len(test)

    with Image.open(os.path.join(out, "train", train[0]["image_id"] + ".jpg")) as image:
        assert (image.format, image.mode, image.size) == ("JPEG", "L", (SMALL.size, SMALL.size))


def test_frame_numbering_and_timeline(small):
    out, _ = small
    _, train = read_csv(os.path.join(out, "training_set_features.csv"))
    _, test = read_csv(os.path.join(out, "test_set_features.csv"))
    by_storm: dict[str, list[tuple[int, int, str]]] = {}
    for split, rows in (("train", train), ("test", test)):
        for r in rows:
            storm_id, frame = r["image_id"].split("_")
            assert storm_id == r["storm_id"] and len(storm_id) == 3 and storm_id.isalpha() and storm_id.islower()
            assert len(frame) == 3
            by_storm.setdefault(storm_id, []).append((int(frame), int(r["relative_time"]), split))
    for storm_id, frames in by_storm.items():
        frames.sort()
        numbers, times, splits = zip(*frames)
        assert list(numbers) == list(range(len(frames))), storm_id  # 000.. over the whole timeline
        assert times[0] == 0 and all(np.diff(times) > 0), storm_id  # ordered by relative_time
        # Train frames come first; test frames, if any, are the storm's tail.
        assert list(splits) == sorted(splits, key=lambda s: s == "test"), storm_id
    steps = np.concatenate([np.diff(sorted(t for _, t, _ in f)) for f in by_storm.values()])
    assert np.mean(steps == 1800) > 0.6  # mostly 30 min steps, irregular otherwise
    assert np.any(steps > 1800)


def test_test_set_has_tails_and_unseen_storms(small):
    out, summary = small
    _, train = read_csv(os.path.join(out, "training_set_features.csv"))
    _, test = read_csv(os.path.join(out, "test_set_features.csv"))
    train_storms = {r["storm_id"] for r in train}
    test_storms = {r["storm_id"] for r in test}
    assert len(train_storms) == SMALL.n_storms
    assert len(test_storms - train_storms) == SMALL.n_test_only_storms
    assert len(test_storms & train_storms) == round(SMALL.tail_storm_fraction * SMALL.n_storms)
    assert summary["n_storms_tail_in_test"] == len(test_storms & train_storms)


def test_deterministic_for_a_seed(small, tmp_path):
    out, _ = small
    again = str(tmp_path / "again")
    make_synthetic(again, SMALL)
    files = [os.path.relpath(p, out) for p in storage.glob(os.path.join(out, "*", "*.jpg"))] + list(CSV_NAMES)
    assert sorted(files) == sorted(
        [os.path.relpath(p, again) for p in storage.glob(os.path.join(again, "*", "*.jpg"))] + list(CSV_NAMES))
    for name in files:
        assert storage.read_bytes(os.path.join(out, name)) == storage.read_bytes(os.path.join(again, name)), name

    other = str(tmp_path / "other")
    make_synthetic(other, SyntheticConfig(**{**SMALL.__dict__, "seed": SMALL.seed + 1}))
    assert storage.read_bytes(os.path.join(other, "training_set_labels.csv")) != storage.read_bytes(
        os.path.join(out, "training_set_labels.csv"))


def test_wind_speeds_are_skewed_integers_in_range(tmp_path):
    out = str(tmp_path / "raw")
    make_synthetic(out, SyntheticConfig(seed=0, n_storms=60, n_test_only_storms=0, size=16))
    _, labels = read_csv(os.path.join(out, "training_set_labels.csv"))
    wind = np.array([int(r["wind_speed"]) for r in labels])  # int() fails on "45.0"
    assert wind.min() >= 15 and wind.max() <= 185
    assert np.median(wind) < 70  # weak storms dominate (the range's middle is 100)...
    assert wind.max() >= 120  # ...but some storms are intense
    assert np.mean(wind) > np.median(wind)  # right-skewed


def test_existing_output_is_never_half_replaced(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_synthetic(str(out), SMALL)
    assert os.listdir(out) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["raw"]  # no temporary directory left behind

    with pytest.raises(ValueError, match="max_frames"):
        make_synthetic(str(out), SyntheticConfig(max_frames=1001), overwrite=True)
    assert os.listdir(out) == ["keep.txt"]

    make_synthetic(str(out), SMALL, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and "training_set_labels.csv" in os.listdir(out)
    assert sorted(os.listdir(tmp_path)) == ["raw"]


def test_empty_output_directory_is_filled(tmp_path):
    out = tmp_path / "raw"
    out.mkdir()
    make_synthetic(str(out), SMALL)
    assert "train" in os.listdir(out)


def read_image(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def _radial_features(image: np.ndarray) -> np.ndarray:
    """Mean and spread of brightness in 10 rings around the image centre, and their squares."""
    size = image.shape[0]
    centres = np.arange(size) + 0.5 - size / 2
    radius = np.hypot(*np.meshgrid(centres, centres, indexing="ij")) / (size / 2)
    ring = np.minimum((radius * 10).astype(int), 10)  # ring 10: the corners
    x = image.astype(np.float64) / 255.0
    count = np.bincount(ring.ravel(), minlength=11)
    mean = np.bincount(ring.ravel(), x.ravel(), minlength=11) / count
    spread = np.sqrt(np.maximum(np.bincount(ring.ravel(), x.ravel() ** 2, minlength=11) / count - mean ** 2, 0))
    linear = np.concatenate([mean, spread, [x.mean(), x.std()]])
    return np.concatenate([[1.0], linear, linear ** 2])


def test_single_frames_are_informative_and_history_helps(tmp_path):
    """Least squares on radial-profile features, fitted on 30 storms and scored on 10 others.

    One frame beats predicting the mean by far; averaging the predictions of the current and
    four previous frames of the same storm (never later ones) beats one frame.
    """
    out = str(tmp_path / "raw")
    make_synthetic(out, SyntheticConfig(seed=1, n_storms=40, n_test_only_storms=0, size=64))
    _, rows = read_csv(os.path.join(out, "training_set_features.csv"))
    _, labels = read_csv(os.path.join(out, "training_set_labels.csv"))
    x = np.stack([_radial_features(read_image(os.path.join(out, "train", r["image_id"] + ".jpg"))) for r in rows])
    y = np.array([int(r["wind_speed"]) for r in labels], dtype=np.float64)
    storm = np.array([r["storm_id"] for r in rows])  # rows of a storm are consecutive, in time order
    held_out = np.isin(storm, np.unique(storm)[::4])

    coef, *_ = np.linalg.lstsq(x[~held_out], y[~held_out], rcond=None)
    single = x @ coef
    history = np.array([single[max(i - 4, 0): i + 1][storm[max(i - 4, 0): i + 1] == storm[i]].mean()
                        for i in range(len(y))])

    def rmse(pred: np.ndarray) -> float:
        return float(np.sqrt(np.mean((pred[held_out] - y[held_out]) ** 2)))

    baseline = rmse(np.full_like(y, y[~held_out].mean()))
    assert rmse(single) < 0.6 * baseline, (rmse(single), baseline)
    assert rmse(history) < 0.9 * rmse(single), (rmse(history), rmse(single))
