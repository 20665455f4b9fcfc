"""Run outputs straight to a Cloud Storage bucket (a real emulator), and tools reading them back."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import tiny_experiment
from tpuflow import storage
from tpuflow.training import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(cv_dir, single_dir, out, **kw):
    cfg = experiment.make_config(**{**dict(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=out,
                                           quick=True, dim=16, batch_size=8, tta_number=1, verbose=0, n_folds=5), **kw})
    return experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)


@pytest.fixture(scope="module")
def bucket_run(gcs_emulator, cv_dir, single_dir):
    root = gcs_emulator.create_bucket()
    out = f"{root}/runs/run-gcs"
    result = _run(cv_dir, single_dir, out, job="train_val_test_score_subm")
    return root, out, result


def test_checkpoints_predictions_scores_and_submission_land_in_the_bucket(bucket_run):
    _, out, result = bucket_run
    assert len(storage.glob(f"{out}/model-best-f*-e*.weights.h5")) == 5
    for k in range(5):
        for split in ("val", "test"):
            for t in range(2):
                assert storage.exists(f"{out}/preds/y_pred_{split}_fold_{k}_tta_{t}.npy")
        assert storage.exists(f"{out}/preds/ids_val_fold_{k}.npy")
    assert storage.exists(f"{out}/config.json") and storage.exists(f"{out}/scores.csv")
    assert result["submission"] == f"{out}/run-gcs.csv" and storage.exists(result["submission"])


def test_cached_scoring_and_checkpoint_prediction_from_the_bucket(bucket_run, cv_dir, single_dir):
    _, out, result = bucket_run
    again = _run(cv_dir, None, out, job="score_subm")
    pd.testing.assert_frame_equal(again["scores"], result["scores"])
    preds = f"{out}/preds-again"
    _run(cv_dir, single_dir, out, job="val", data_preds_dir=preds, n_folds=1, tta_number=0)
    np.testing.assert_allclose(storage.load_npy(f"{preds}/y_pred_val_fold_0_tta_0.npy"),
                               storage.load_npy(f"{out}/preds/y_pred_val_fold_0_tta_0.npy"), rtol=1e-5)


def test_ensemble_tool_reads_runs_from_the_bucket_and_writes_there(bucket_run, cv_dir):
    root, out, _ = bucket_run
    ens = f"{root}/ensembles"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ensemble.py"), f"--data_dir={cv_dir}",
                           f"--model_dirs={root}/runs/*", f"--out_dir={ens}", "--method=pairwise",
                           "--noplot", "--nonested", "--include_quick"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    subs = storage.glob(f"{ens}/submission_*.csv")
    assert len(subs) == 1
    with storage.local_copy(subs[0]) as local:
        sub = pd.read_csv(local)
    fmt = pd.read_csv(os.path.join(cv_dir, "submission_format.csv"))
    assert sub["image_id"].tolist() == fmt["image_id"].tolist()


def test_leaderboard_reads_cards_from_the_bucket_and_sets_lb_there(bucket_run):
    """Also for a run dir made before the card had its name: its `record.json` is read as the
    card, and --set_lb writes `run_card.json` and removes `record.json`."""
    root, out, _ = bucket_run
    tool = os.path.join(ROOT, "tools", "leaderboard.py")
    before = storage.read_json(f"{out}/run_card.json")
    storage.copy(f"{out}/run_card.json", f"{out}/record.json")
    storage.remove(f"{out}/run_card.json")
    proc = subprocess.run([sys.executable, tool, f"--runs={root}/runs", f"--out_csv={root}/experiments.csv",
                           "--include_quick"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "run-gcs" in proc.stdout
    with storage.local_copy(f"{root}/experiments.csv") as local:
        table = pd.read_csv(local)
    assert table["experiment_id"].tolist() == ["run-gcs"]
    proc = subprocess.run([sys.executable, tool, f"--runs={root}/runs", "--set_lb=run-gcs:7.25:7.5"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = storage.read_json(f"{out}/run_card.json")
    assert card == {**before, "lb": {"private": 7.25, "public": 7.5}, "updated": card["updated"]}
    assert not storage.exists(f"{out}/record.json")
