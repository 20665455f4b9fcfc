"""TensorBoard logs of a real run: per-fold scalars (loss, val_rmse_rounded, learning rate) and the config
as text, in a local run dir and in a Cloud Storage bucket (a real emulator)."""
import os

import pandas as pd
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import tiny_experiment
from tpuflow import storage
from tpuflow.training import experiment


def _run(cv_dir, single_dir, out, **kw):
    cfg = experiment.make_config(**{**dict(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=out, quick=True,
                                           dim=16, batch_size=8, tta_number=0, verbose=0, n_folds=2,
                                           job="train_val_score"), **kw})
    experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)


def _events(path):
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _check(out, local_copy):
    for fold in (0, 1):
        acc = _events(local_copy / "tensorboard" / f"fold_{fold}")
        tags = set(acc.Tags()["scalars"]) | set(acc.Tags()["tensors"])
        assert {"loss", "val_rmse_rounded", "val_loss", "learning_rate"} <= tags, tags
        curves = pd.read_csv(local_copy / "curves" / f"fold_{fold}.csv")
        events = acc.Tensors("val_rmse_rounded")
        assert [e.step for e in events] == curves["epoch"].tolist() == [1, 2]
        assert [float(tf.make_ndarray(e.tensor_proto)) for e in events] == \
            [float(v) for v in curves["val_rmse_rounded"].astype("float32")]
    config = _events(local_copy / "tensorboard" / "config")
    text = tf.make_ndarray(config.Tensors("config")[0].tensor_proto).item().decode()
    assert "| n_epochs | `2` |" in text and "| backbone |" in text


def test_local_run_writes_fold_scalars_and_config(cv_dir, single_dir, tmp_path):
    out = tmp_path / "run-tb"
    _run(cv_dir, single_dir, str(out), n_epochs=2, steps_per_epoch=2, quick=False, batch_size=8)
    _check(out, out)


def test_bucket_run_writes_them_to_the_bucket(gcs_emulator, cv_dir, single_dir, tmp_path):
    root = gcs_emulator.create_bucket()
    out = f"{root}/runs/run-tb"
    _run(cv_dir, single_dir, out, n_epochs=2, steps_per_epoch=2, quick=False, batch_size=8)
    local = tmp_path / "copy"
    for path in storage.glob(f"{out}/tensorboard/*/*") + storage.glob(f"{out}/curves/*.csv"):
        rel = path[len(out) + 1:]
        os.makedirs(local / os.path.dirname(rel), exist_ok=True)
        (local / rel).write_bytes(storage.read_bytes(path))
    _check(out, local)
