"""The reference solution's files and habits, read as they are: its helpers read tpuflow's
predictions by position, its record directories are adopted by their names, its flags are
mapped or refused naming ours."""
import os

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tpuflow.inputs import records
from tpuflow.results import prediction_names, scoring
from tpuflow.training import experiment


def _label_probe(cfg):
    """A real Keras model that predicts each example's true label (its image is filled with it)."""
    x = keras.Input((cfg.dim, cfg.dim, 1))
    mean = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros", trainable=False)(mean)
    return keras.Model(x, out)


def _parse_label(serialized, cfg):
    example = records.parse_common(serialized)
    label = tf.cast(example["label"], tf.float32)
    return tf.fill([cfg.dim, cfg.dim, 1], label), label


def _reference_fold_score(data_dir, preds_dir, fold):
    """What the reference's scoring helpers do: the fold's val predictions, by position, against
    `train_cv.csv[fold_id == k]` in file order."""
    train_cv = pd.read_csv(os.path.join(data_dir, "train_cv.csv"))
    y_true = train_cv.loc[train_cv["fold_id"] == fold, "wind_speed"].to_numpy()
    y_pred = np.load(prediction_names.path(preds_dir, "val", fold, 0)).reshape(-1)
    return float(np.sqrt(np.mean((y_true - y_pred) ** 2)))


def test_val_predictions_follow_train_cv_so_the_references_helpers_score_a_label_probe_0(cv_dir, single_dir,
                                                                                         tmp_path):
    out = tmp_path / "probe"
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), quick=True,
                                 n_folds=2, dim=16, batch_size=8, tta_number=0, weights=None, verbose=0,
                                 lr=1e-9, job="train_val_score")
    result = experiment.run(cfg, _label_probe, _parse_label)
    preds_dir = str(out / "preds")
    train_cv = pd.read_csv(os.path.join(cv_dir, "train_cv.csv"))
    for fold in (0, 1):
        ids = np.load(prediction_names.ids_path(preds_dir, "val", fold)).astype(str)
        record_ids = records.read_ids(records.record_files(single_dir, [fold])).astype(str)
        assert list(ids) == list(train_cv.loc[train_cv["fold_id"] == fold, "image_id"])
        assert list(ids) != list(record_ids)  # the records are shuffled: the order was really changed
        assert _reference_fold_score(cv_dir, preds_dir, fold) == 0.0
    assert result["scores"].loc["all", "tta_0"] == 0.0


def test_old_val_predictions_in_record_order_are_still_scored_by_their_ids(cv_dir):
    """A run made before wrote a fold's rows in record order: scores align them by the ids."""
    train_cv = pd.read_csv(os.path.join(cv_dir, "train_cv.csv"))
    fold = train_cv[train_cv["fold_id"] == 0]
    shuffled = fold.sample(frac=1.0, random_state=0)
    preds = {0: (shuffled["image_id"].to_numpy(), shuffled["wind_speed"].to_numpy()[None].astype(float))}
    assert scoring.cv_scores(train_cv, preds).loc["0", "tta_0"] == 0.0
    order = scoring.csv_order(train_cv, 0, shuffled["image_id"].to_numpy())
    assert list(shuffled["image_id"].to_numpy()[order]) == list(fold["image_id"])
    with pytest.raises(ValueError, match="val predictions of fold 0"):
        scoring.csv_order(train_cv, 0, shuffled["image_id"].to_numpy()[1:])
