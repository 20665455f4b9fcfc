"""Experiments on examples assembled from the frame store: unchanged run.py files train from it under both
backends, and a fold killed mid-run resumes on exactly the batches it would have seen."""
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import backup_state
import jax_env
from tpuflow.prep import shard_names, store
from tpuflow.results import run_card

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
       "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "lib"), os.environ.get("PYTHONPATH", "")])}
EPOCHS, STEPS = 5, 12


@pytest.fixture(scope="module")
def store_dir(cv_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("store"))
    store.build_store(cv_dir, root, shards=2, workers=2, log=lambda m: None)
    return os.path.join(root, shard_names.STORE_DIR)


def _tiny(cv_dir, store_dir, out, *flags, backend="tensorflow"):
    cmd = [sys.executable, os.path.join(HERE, "tiny_experiment.py"), f"--data_dir={cv_dir}",
           f"--frame_store={store_dir}", "--assemble=single", f"--output_dir={out}", "--job=train_val",
           "--n_folds=1", f"--n_epochs={EPOCHS}", f"--steps_per_epoch={STEPS}", "--tta_number=1",
           "--verbose=2", f"--backend={backend}", *flags]
    return cmd, jax_env.env({**ENV, "KERAS_BACKEND": backend}, backend)


def test_killed_fold_resumes_on_the_batches_it_would_have_seen(cv_dir, store_dir, tmp_path):
    out, reference = str(tmp_path / "run"), str(tmp_path / "reference")
    cmd, env = _tiny(cv_dir, store_dir, out, "--mixup_prob=0.5")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    log, _ = backup_state.stop_when(proc, out, lambda s: s["epochs_done"] >= 2, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, f"training ended before the kill:\n{log[-3000:]}"
    state = backup_state.read(out)
    done = state["epochs_done"]
    assert 1 <= done < EPOCHS
    assert state["steps_done"] == 0  # an epoch end's backup: the stream resumes at done * STEPS * 8 examples
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Resuming fold 0 at epoch {done + 1}" in again.stdout
    cmd, env = _tiny(cv_dir, store_dir, reference, "--mixup_prob=0.5")
    uninterrupted = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:] + uninterrupted.stderr[-3000:]
    # Same batches, same augmentation and mixing draws, same state: the same model, to the last bit.
    for name in ("y_pred_val_fold_0_tta_0.npy", "y_pred_val_fold_0_tta_1.npy", "ids_val_fold_0.npy"):
        np.testing.assert_array_equal(np.load(os.path.join(out, "preds", name)),
                                      np.load(os.path.join(reference, "preds", name)), err_msg=name)
    curves = [open(os.path.join(d, "curves", "fold_0.csv")).read().splitlines() for d in (out, reference)]
    loss = [[line.split(",")[:3] for line in c] for c in curves]
    assert loss[0] == loss[1]


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_unchanged_experiment_trains_on_assembled_examples(cv_dir, store_dir, tmp_path, backend):
    """The zoo's CNN-LSTM run.py on `--assemble=sequence:n6:s1`, predictions for val and test."""
    out = str(tmp_path / "lstm")
    run = os.path.join(ROOT, "experiments", "run-20261121-1330-cnn-lstm", "run.py")
    cmd = [sys.executable, run, f"--data_dir={cv_dir}", f"--frame_store={store_dir}",
           "--assemble=sequence:n6:s1", f"--output_dir={out}", "--job=train_val_test", "--quick",
           "--n_folds=1", "--dim=32", "--backbone=MobileNetV3Small", "--weights=None", "--tta_number=1",
           f"--backend={backend}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=jax_env.env({**ENV, "KERAS_BACKEND": backend}, backend))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = np.load(os.path.join(out, "preds", "ids_test.npy"))
    assert ids.tolist() == pd.read_csv(os.path.join(cv_dir, "test_cv.csv"))["image_id"].tolist()
    assert np.load(os.path.join(out, "preds", "y_pred_test_fold_0_tta_1.npy")).shape == (len(ids), 1)
    card = run_card.read_card(out)
    assert card["dataset"]["spec"] == "sequence:n6:s1" and card["dataset"]["dir"] == store_dir


def test_store_without_a_spec_and_wrong_kind_are_refused(cv_dir, store_dir, tmp_path):
    cmd, env = _tiny(cv_dir, store_dir, str(tmp_path / "x"))
    as_records = [f"--data_tfrec_dir={store_dir}" if c.startswith("--frame_store") else c
                  for c in cmd if not c.startswith("--assemble")]
    proc = subprocess.run(as_records, capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"is a frame store: pass --frame_store={store_dir} --assemble=<spec>" in proc.stderr
    proc = subprocess.run([c for c in cmd if not c.startswith("--assemble")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--frame_store and --assemble go together" in proc.stderr
    proc = subprocess.run(cmd[:-1] + ["--assemble=stacked:s0"], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "--assemble='stacked:s0'" in proc.stderr + proc.stdout
