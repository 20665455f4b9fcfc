"""Every experiment file loads, validates its flags and runs every job with the quick setting."""
import glob
import os
import subprocess
import sys

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "*", "run.py")))


def test_there_are_experiments():
    assert RUN_FILES


@pytest.mark.parametrize("run_py", RUN_FILES, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_experiment_runs_every_job_quickly(run_py, cv_dir, single_dir, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, run_py, "--job=train_val_test_score_subm", "--quick", f"--data_dir={cv_dir}",
           f"--data_tfrec_dir={single_dir}", f"--output_dir={out}", "--dim=32", "--weights=None",
           "--n_folds=1", "--tta_number=1", "--verbose=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CV rmse" in proc.stdout
    sub = pd.read_csv(out / "run.csv")
    assert len(sub) == len(pd.read_csv(os.path.join(cv_dir, "submission_format.csv")))


def test_experiment_rejects_unknown_job(tmp_path):
    proc = subprocess.run([sys.executable, RUN_FILES[0], "--job=train_tset", f"--output_dir={tmp_path}"],
                          capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode != 0
    assert "unknown word(s) ['tset']" in proc.stderr
    assert not os.listdir(tmp_path)
