"""Preemption: a real training process is killed mid-fold, the same command is re-run, and the run
resumes the fold where it stopped, skips the finished fold, and ends with the outputs of an
uninterrupted run; a corrupt backup is reported and its fold restarts cleanly."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import backup_state
import jax_env
import keras
import tiny_experiment
from tpuflow.inputs import records
from tpuflow.results import run_card
from tpuflow.training import experiment, models, resume, runner

HERE = os.path.dirname(__file__)
EPOCHS = 6
SETTINGS = dict(job="train_val", n_folds=2, n_epochs=EPOCHS, steps_per_epoch=30, tta_number=1, verbose=2,
                dim=16, batch_size=8, weights=None)  # dim/batch_size/weights: tiny_experiment's defaults


def _command(cv_dir, single_dir, out, backend):
    flags = [f"--{k}={v}" for k, v in SETTINGS.items() if k not in ("dim", "batch_size", "weights")]
    return [sys.executable, os.path.join(HERE, "tiny_experiment.py"), f"--data_dir={cv_dir}",
            f"--data_tfrec_dir={single_dir}", f"--output_dir={out}", f"--backend={backend}", *flags]


def _epochs_run(log: str) -> int:
    return len(re.findall(rf"^Epoch \d+/{EPOCHS}$", log, flags=re.M))


def _outputs(out):
    """What a run leaves: prediction file shapes, ids per fold, checkpoints per fold."""
    preds = os.path.join(out, "preds")
    shapes = {f: np.load(os.path.join(preds, f)).shape for f in sorted(os.listdir(preds)) if f.endswith(".npy")}
    ids = {k: np.load(os.path.join(preds, f"ids_val_fold_{k}.npy")).tolist() for k in range(2)}
    ckpts = [sum(f.startswith(f"model-best-f{k}-e") for f in os.listdir(out)) for k in range(2)]
    return shapes, ids, ckpts


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def killed_and_resumed(request, cv_dir, single_dir, tmp_path_factory):
    """Runs the command under each Keras backend, SIGKILLs it once fold 1 has a backup of epoch >= 1,
    re-runs it. (The in-process checks below run under TensorFlow: after JAX, they also show that
    backups and checkpoints cross backends.)"""
    backend = request.param
    root = tmp_path_factory.mktemp(f"preempt_{backend}")
    out = str(root / "run")
    env = jax_env.env({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join(
        [os.path.join(os.path.dirname(HERE), "lib"), os.environ.get("PYTHONPATH", "")])}, backend)
    proc = subprocess.Popen(_command(cv_dir, single_dir, out, backend), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    first_log, _ = backup_state.stop_when(proc, out, lambda s: s["epochs_done"] >= 1, signal.SIGKILL, fold=1)
    assert proc.returncode == -signal.SIGKILL, f"training ended before the kill:\n{first_log[-3000:]}"
    state = backup_state.read(out, 1)  # the last complete backup (maybe later than the one seen)
    assert state and 1 <= state["epochs_done"] < EPOCHS, "the kill came after fold 1 finished training"
    killed_at = state["epochs_done"]
    snapshot = str(root / "snapshot")
    shutil.copytree(out, snapshot)  # the killed run's files, for the corrupt-backup test
    again = subprocess.run(_command(cv_dir, single_dir, out, backend), capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"Backend {backend} (--backend={backend})" in first_log and f"Backend {backend}" in again.stdout
    return out, snapshot, killed_at, first_log, again.stdout


def test_rerun_after_kill_resumes_the_fold_and_skips_the_finished_one(killed_and_resumed):
    out, _, killed_at, first_log, log = killed_and_resumed
    assert _epochs_run(first_log) >= EPOCHS + 1  # fold 0 completed, fold 1 was under way
    assert "Fold 0: train+val already complete, skipping" in log
    assert f"Resuming fold 1 at epoch {killed_at + 1} (backup of epoch {killed_at}" in log
    assert _epochs_run(log) == EPOCHS - killed_at  # only fold 1's remaining epochs ran
    for k in range(2):  # the backups are gone once a fold is trained; the done file stays
        backup = os.path.join(out, "backup", f"fold_{k}")
        assert sorted(os.listdir(backup)) == ["done.json"]
        assert json.load(open(os.path.join(backup, "done.json")))["done"] == ["train", "val"]


def test_resumed_run_has_the_outputs_of_an_uninterrupted_run(killed_and_resumed, cv_dir, single_dir, tmp_path):
    out, *_ = killed_and_resumed
    reference = tmp_path / "reference"
    experiment.run(experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(reference),
                                          **SETTINGS), tiny_experiment.init_model, tiny_experiment.parse_example)
    shapes, ids, ckpts = _outputs(out)
    assert (shapes, ids, ckpts) == _outputs(str(reference))
    assert ckpts == [1, 1]
    for k in range(2):
        assert sorted(ids[k]) == sorted(records.read_ids(records.record_files(single_dir, [k])).tolist())
    assert set(json.load(open(os.path.join(out, "config.json")))) == set(json.load(open(reference / "config.json")))


def test_corrupt_backup_is_reported_and_the_fold_restarts(killed_and_resumed, cv_dir, single_dir, capsys):
    _, snapshot, killed_at, *_ = killed_and_resumed
    stem = os.path.join(snapshot, "backup", "fold_1", f"epoch-{killed_at:03d}")
    if os.path.isdir(stem + ".orbax"):  # written under JAX: its arrays lost, as by a copy cut short
        weights = stem + ".orbax"
        shutil.rmtree(os.path.join(weights, "d"))
    else:
        weights = stem + ".weights.h5"
        with open(weights, "r+b") as f:  # truncated, as by a kill during a non-atomic copy
            f.truncate(os.path.getsize(weights) // 2)
    experiment.run(experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=snapshot,
                                          **SETTINGS), tiny_experiment.init_model, tiny_experiment.parse_example)
    log = capsys.readouterr().out
    assert f"WARNING: {weights}: corrupt backup" in log and "fold 1 restarts from scratch" in log
    assert "Fold 0: train+val already complete, skipping" in log
    assert _epochs_run(log) == EPOCHS  # fold 1 trained from its first epoch
    shapes, ids, ckpts = _outputs(snapshot)
    assert ckpts == [1, 1] and shapes["y_pred_val_fold_1_tta_1.npy"] == (len(ids[1]), 1)


def test_backup_restores_optimizer_lr_and_callback_state(tmp_path):
    """What a resumed fold needs beyond weights: Adam moments and step, the (reduced) LR, the best
    value so far (else a worse epoch could replace the best checkpoint) and the plateau counters."""
    cfg = experiment.make_config(output_dir=str(tmp_path), dim=8, task="regression")
    cfg = cfg.replace(global_batch_size=4, scaled_lr=cfg.lr)

    def fold_setup():
        model = tiny_experiment.init_model(cfg)
        models.compile_model(model, cfg)
        runner.FreshStart(model)
        checkpoint = runner.BestCheckpoint(cfg.output_dir, 0, "val_rmse_rounded")
        reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_rmse_rounded", patience=3)
        backup = resume.FoldBackup(cfg, 0, {"checkpoint": (checkpoint, ("best", "path")),
                                            "reduce_lr": (reduce_lr, ("wait", "best", "cooldown_counter"))})
        for callback in (checkpoint, reduce_lr, backup):
            callback.set_model(model)
        return model, checkpoint, reduce_lr, backup

    model, checkpoint, reduce_lr, backup = fold_setup()
    model.fit(np.ones((8, 8, 8, 1), np.float32), np.ones(8, np.float32), batch_size=4, epochs=2, verbose=0)
    model.optimizer.learning_rate.assign(0.25)  # as if reduced on a plateau
    checkpoint.on_epoch_end(1, {"val_rmse_rounded": 3.5})
    reduce_lr.wait, reduce_lr.best, reduce_lr.cooldown_counter = 2, 3.5, 1
    backup.on_epoch_end(1)
    saved = [v.numpy() for v in model.optimizer.variables], model.get_weights()

    model, checkpoint, reduce_lr, backup = fold_setup()  # a new process: fresh objects
    assert backup.restore(model) == (2, 0)
    reduce_lr.on_train_begin()  # Keras resets the plateau state here; the backup (last) puts it back
    backup.on_train_begin()
    for restored, value in zip(model.optimizer.variables, saved[0]):
        np.testing.assert_array_equal(restored.numpy(), value)
    for restored, value in zip(model.get_weights(), saved[1]):
        np.testing.assert_array_equal(restored, value)
    assert float(model.optimizer.learning_rate) == 0.25 and int(model.optimizer.iterations) == 4
    assert checkpoint.best == 3.5 and os.path.exists(checkpoint.path)
    assert (reduce_lr.wait, reduce_lr.best, reduce_lr.cooldown_counter) == (2, 3.5, 1)
    checkpoint.on_epoch_end(2, {"val_rmse_rounded": 4.0})  # worse than before the kill: best file kept
    assert checkpoint.best == 3.5 and len(runner.fold_checkpoints(cfg.output_dir, 0)) == 1


def test_resumed_run_keeps_whole_fold_curves_and_record(killed_and_resumed):
    out, _, killed_at, *_ = killed_and_resumed
    card = run_card.read_card(out)
    assert card["status"] == "complete"
    assert card["folds"]["0"]["epochs"] == EPOCHS  # trained by the killed run, kept
    assert card["folds"]["1"]["epochs"] == EPOCHS
    assert card["folds"]["1"]["epochs_this_run"] == EPOCHS - killed_at
    for k in range(2):
        curve = pd.read_csv(os.path.join(out, "curves", f"fold_{k}.csv"))
        assert curve["epoch"].tolist() == list(range(1, EPOCHS + 1))



def test_prediction_only_run_keeps_the_folds_training_done(cv_dir, single_dir, tmp_path):
    """`--job=val_test --noresume` on a trained fold adds its splits to done.json (it used to drop
    "train"): a later train_val_test skips the trained fold. A done file of other settings is
    still replaced."""
    out = tmp_path / "run-predict-only"

    def run(**kw):
        cfg = experiment.make_config(**{**dict(
            data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), quick=True, dim=16, batch_size=8,
            tta_number=0, n_folds=1, weights=None, verbose=0, dataset_kind="single", architecture="tiny-cnn"), **kw})
        return experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)

    def done():
        with open(out / "backup" / "fold_0" / resume.DONE) as f:
            return json.load(f)

    run(job="train")
    checkpoint = runner.best_checkpoint(str(out), 0)
    trained = done()
    assert trained["done"] == ["train"]
    run(job="val_test", resume=False)
    assert done() == {**trained, "done": ["test", "train", "val"]}
    result = run(job="train_val_test")
    assert not any(k.startswith(("train_fold", "val_fold", "test_fold")) for k in result["timings"])  # all skipped
    assert runner.best_checkpoint(str(out), 0) == checkpoint
    other = resume.FoldProgress(result["config"].replace(lr=0.5), 0, has_checkpoint=True)
    assert other.todo({"val"}) == ["val"]  # other settings: redone, and the done file is theirs now
    other.mark("val")
    assert done()["done"] == ["val"] and done()["fingerprint"] != trained["fingerprint"]
