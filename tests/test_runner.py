"""The experiment runner end to end on tiny records: every job, cached scoring, bad input."""
import os
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest

import tiny_experiment
from tpuflow.inputs import records
from tpuflow.training import experiment, runner

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)


def _cfg(cv_dir, single_dir, out, **kw):
    base = dict(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), quick=True, dim=16,
                batch_size=8, tta_number=2, weights=None, verbose=0, n_folds=5)
    return experiment.make_config(**{**base, **kw})


def _run(cfg):
    return experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)


def _csv_fold_ids(cv_dir, fold):
    train_cv = pd.read_csv(os.path.join(cv_dir, "train_cv.csv"))
    return train_cv.loc[train_cv["fold_id"] == fold, "image_id"].to_numpy()


@pytest.fixture(scope="module")
def full_run(cv_dir, single_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run-test"
    result = _run(_cfg(cv_dir, single_dir, out, job="train_val_test_score_subm"))
    return out, result


def test_all_jobs_write_checkpoints_predictions_scores_submission(full_run, cv_dir, single_dir):
    out, result = full_run
    for k in range(5):
        ckpts = [f for f in os.listdir(out) if f.startswith(f"model-best-f{k}-e")]
        assert len(ckpts) == 1 and ckpts[0].endswith(".weights.h5")
        ids = np.load(out / "preds" / f"ids_val_fold_{k}.npy")  # in the order of the fold's rows of train_cv.csv
        np.testing.assert_array_equal(ids, _csv_fold_ids(cv_dir, k))
        for t in range(3):
            assert np.load(out / "preds" / f"y_pred_val_fold_{k}_tta_{t}.npy").shape == (len(ids), 1)
            assert os.path.exists(out / "preds" / f"y_pred_test_fold_{k}_tta_{t}.npy")
    scores = result["scores"]
    assert list(scores.index) == ["0", "1", "2", "3", "4", "all"]
    assert list(scores.columns) == ["tta_0", "tta_1", "tta_2", "tta_mean", "baseline"]
    sub = pd.read_csv(result["submission"])
    fmt = pd.read_csv(os.path.join(cv_dir, "submission_format.csv"))
    assert sub["image_id"].tolist() == fmt["image_id"].tolist()
    assert sub["wind_speed"].dtype == np.int64
    assert (out / "config.json").exists()


def test_score_subm_from_cached_predictions_reproduces(full_run, cv_dir, single_dir):
    out, result = full_run
    before = open(result["submission"]).read()
    again = _run(_cfg(cv_dir, None, out, job="score_subm"))
    pd.testing.assert_frame_equal(again["scores"], result["scores"])
    assert open(again["submission"]).read() == before


def test_val_job_from_checkpoints_reproduces_predictions(full_run, cv_dir, single_dir, tmp_path):
    out, _ = full_run
    _run(_cfg(cv_dir, single_dir, out, job="val", data_preds_dir=str(tmp_path), n_folds=1, tta_number=1))
    for t in range(2):
        np.testing.assert_allclose(np.load(tmp_path / f"y_pred_val_fold_0_tta_{t}.npy"),
                                   np.load(out / "preds" / f"y_pred_val_fold_0_tta_{t}.npy"), rtol=1e-5)


def test_missing_prediction_file_is_named_and_submission_kept(full_run, cv_dir, tmp_path):
    out, result = full_run
    preds = tmp_path / "preds"
    preds.mkdir()
    for f in os.listdir(out / "preds"):
        if f != "y_pred_test_fold_3_tta_1.npy":
            os.link(out / "preds" / f, preds / f)
    before = open(result["submission"]).read()
    with pytest.raises(FileNotFoundError, match="y_pred_test_fold_3_tta_1.npy: missing"):
        _run(_cfg(cv_dir, None, out, job="subm", data_preds_dir=str(preds)))
    assert open(result["submission"]).read() == before


def test_unknown_job_word_is_an_error():
    with pytest.raises(ValueError, match=r"--job='train_vall': unknown word\(s\) \['vall'\]"):
        experiment.make_config(job="train_vall")


def test_records_dir_without_files_is_an_error(cv_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        _run(_cfg(cv_dir, str(tmp_path), tmp_path / "out", job="train"))


def test_mixed_bfloat16_trains_on_cpu(cv_dir, single_dir, tmp_path):
    try:
        result = _run(_cfg(cv_dir, single_dir, tmp_path / "bf16", job="train_val_score", n_folds=1,
                           tta_number=0, mixed_precision="mixed_bfloat16"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(result["scores"].loc["0", "tta_0"])


MULTI_REPLICA_CHECK = r"""
import sys
import numpy as np, keras, tensorflow as tf
sys.path.insert(0, {here!r})
import tiny_experiment
from tpuflow.inputs import ondevice, pipeline, records; from tpuflow.training import experiment, hosts, runtime

strategy = runtime.get_strategy(None, cpu_replicas=2)
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
settings = dict(data_dir={cv!r}, data_tfrec_dir={rec!r}, output_dir={out!r}, quick=True, dim=16, cpu_replicas=2,
                tta_number=0, verbose=0, n_folds=1, job="train_val")
try:  # a global batch that does not split over the replicas is an error naming both numbers
    experiment.run(experiment.make_config(batch_size=5, **settings), tiny_experiment.init_model,
                   tiny_experiment.parse_example)
    raise AssertionError("batch 5 on 2 replicas was accepted")
except ValueError as err:
    assert "--batch_size=5 (global) is not divisible by the 2 replicas" in str(err), err
# Cutmix partners come from each replica's own examples (a replica's step sees only those).
cfg = experiment.make_config(batch_size=3, batch_size_per_replica=True, mixup_prob=1.0, mixup_mode="cutmix", **settings)
result = experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)
cfg = result["config"]
assert cfg.global_batch_size == 6, cfg.global_batch_size
# Exactly once, in id order: a weight-free model whose output identifies the example.
with strategy.scope():
    inp = keras.Input((16, 16, 1))
    probe = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))
    predictor = ondevice.tta_model(probe, ["orig", "flip_lr", "rot90"])  # views on the device
parse = lambda s: tiny_experiment.parse_example(s, cfg)
files = records.record_files({rec!r}, [0])
ids = records.read_ids(files)
assert len(ids) % 6, "choose a batch that does not divide the fold"
# Static shapes, per replica too: each of the 2 replicas gets 3 of the 6 examples of every batch.
train_ds = pipeline.train_dataset(files, parse, 6, shuffle_buffer=8, aug_prob=1.0, seed=0)
predict_ds = pipeline.predict_dataset(files, parse, 6, len(ids))
assert train_ds.element_spec[0]["image"].shape == (6, 16, 16, 1), train_ds.element_spec
assert train_ds.element_spec[0]["transform"].shape == (6,), train_ds.element_spec  # applied on the device
assert predict_ds.element_spec.shape == (6, 16, 16, 1), predict_ds.element_spec
per_replica = next(iter(strategy.experimental_distribute_dataset(predict_ds)))
assert [v.shape for v in strategy.experimental_local_results(per_replica)] == [(3, 16, 16, 1)] * 2
pred = hosts.predict(predictor, pipeline.predict_dataset(files, parse, cfg.global_batch_size, len(ids)),
                     cfg.global_batch_size)[:len(ids) * 3].reshape(len(ids), 3)  # the path predict_split takes
expected = np.array([float(tf.reduce_mean(pipeline.to_float(parse(s)[0]))) for s in tf.data.TFRecordDataset(files)])
expected = np.repeat(expected[:, None], 3, axis=1)  # the mean is the same in every view
assert pred.shape == expected.shape, (pred.shape, expected.shape)
np.testing.assert_allclose(pred, expected, rtol=1e-5)
saved = np.load({out!r} + "/preds/ids_val_fold_0.npy")  # the fold's ids, in train_cv.csv's order
np.testing.assert_array_equal(np.sort(saved), np.sort(ids))
print("OK", len(ids))
"""


def test_mirrored_strategy_on_two_logical_cpus(cv_dir, single_dir, tmp_path):
    code = MULTI_REPLICA_CHECK.format(here=HERE, cv=cv_dir, rec=single_dir, out=str(tmp_path / "mr"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK" in proc.stdout


def test_a_diverged_epoch_never_replaces_the_best_checkpoint(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = runner.BestCheckpoint(str(tmp_path), 0, "val_rmse_rounded")
    best.set_model(model)
    for epoch, value in enumerate([5.0, float("nan"), 6.0, 4.0, float("nan")]):
        best.on_epoch_end(epoch, {"val_rmse_rounded": value})
    assert best.best == 4.0
    assert os.listdir(tmp_path) == ["model-best-f0-e004-4.0000.weights.h5"]
