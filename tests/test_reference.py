"""The reference solution's files and habits, read as they are: its helpers read tpuflow's
predictions by position, its record directories are adopted by their names, its flags are
mapped or refused naming ours."""
import os
import sys

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tpuflow import cli
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
    ids = shuffled["image_id"].to_numpy()
    for wrong in (ids[1:], np.append(ids[1:], ids[1])):
        with pytest.raises(ValueError, match="val predictions of fold 0"):  # one missing; one missing, one twice
            scoring.csv_order(train_cv, 0, wrong)


def test_the_references_run_py_flags_are_read_with_a_note_or_refused_naming_ours(capsys):
    argv = ["run.py", "--image_inverted=1", "--pretrained=0", "--aug_percentage=50", "--metric_name=rmse",
            "--batch_size=8", "--pretrained=imagenet"]
    assert experiment.reference_argv(argv) == ["run.py", "--invert=true", "--weights=None", "--aug_prob=0.5",
                                               "--metric=rmse", "--batch_size=8", "--weights=imagenet"]
    notes = capsys.readouterr().err.strip().splitlines()
    assert notes[0] == "NOTE: --image_inverted=1 is the reference's flag: read as --invert=true" and len(notes) == 5
    experiment.FLAGS(experiment.reference_argv(argv[:5]))  # what absl parses: our flags, valid values
    try:
        assert experiment.FLAGS.invert and experiment.FLAGS.weights == "None" and experiment.FLAGS.aug_prob == 0.5
        assert experiment.make_config().metric == "rmse_rounded"  # the old name, read as the new one
    finally:
        experiment.FLAGS.unparse_flags()
    for flag, ours in [("--n_channels=3", "--dataset_kind"), ("--n_examples_train=10000", "--steps_per_epoch"),
                       ("--aug_number=9", "--aug_prob"), ("--dim_before_aug=400", "--dim")]:
        with pytest.raises(cli.UsageError, match=f"^{flag.split('=')[0]} \\(the reference's flag\\) has no "
                                                 f"meaning in tpuflow: .*{ours}"):
            experiment.reference_argv(["run.py", flag])
    with pytest.raises(cli.UsageError, match=r"^--aug_percentage=half: cannot be read as --aug_prob"):
        experiment.reference_argv(["run.py", "--aug_percentage=half"])


def test_a_reference_flag_without_a_meaning_here_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["run.py", "--n_channels=3"])
    with pytest.raises(SystemExit) as caught:
        cli.run_main(lambda argv: None, translate=experiment.reference_argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "run.py: error: --n_channels (the reference's flag) has no meaning in tpuflow: channels follow the records' "
        "kind: --dataset_kind=single (1 channel), stacked or mean (3), sequence (1 per frame)",
        "run.py: see --help for the flags"]
