"""Preemption-grade training: backups within the epoch and the preemption notice. A real run on
assembled examples is stopped by SIGTERM mid-epoch (it backs up, notes `preempted`, frees the run dir and exits
with its own status), re-run and SIGKILLed mid-epoch, re-run to the end: it ends with the very
predictions of an uninterrupted run, under both backends and with its run dir on Cloud Storage."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import backup_state
import jax_env
import tiny_experiment
from test_backends import _free_port
from test_assembly_run import store_dir  # noqa: F401 (fixture)
from tpuflow import cli, storage
from tpuflow.results import run_card
from tpuflow.training import config, experiment, models, resume

HERE = os.path.dirname(__file__)
ROOT = os.path.dirname(HERE)
EPOCHS, STEPS, EVERY = 3, 12, 3
PREDS = ("y_pred_val_fold_0_tta_0.npy", "y_pred_val_fold_0_tta_1.npy", "ids_val_fold_0.npy")


def _cmd(cv_dir, store, out, backend, *flags):
    return [sys.executable, os.path.join(HERE, "tiny_experiment.py"), f"--data_dir={cv_dir}",
            f"--frame_store={store}", "--assemble=single", f"--output_dir={out}", "--job=train_val",
            "--n_folds=1", f"--n_epochs={EPOCHS}", f"--steps_per_epoch={STEPS}", "--tta_number=1", "--verbose=2",
            "--mixup_prob=0.5", f"--backend={backend}", *flags]


def _env(backend):
    return jax_env.env({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join(
        [os.path.join(ROOT, "lib"), HERE, os.environ.get("PYTHONPATH", "")])}, backend)


def _preempted_then_killed_then_finished(cv_dir, store, out, backend):
    """The three runs of one command; returns their logs and the backup states they stopped at."""
    cmd, env = _cmd(cv_dir, store, out, backend, f"--backup_every_steps={EVERY}"), _env(backend)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    first, seen = backup_state.stop_when(proc, out, lambda s: s["epochs_done"] >= 1 and s["steps_done"] > 0, signal.SIGTERM)
    assert proc.returncode == cli.PREEMPTED_EXIT, f"not preempted mid-epoch:\n{first[-3000:]}"
    term = backup_state.read(out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    moved = lambda s: (s["epochs_done"], s["steps_done"]) > (term["epochs_done"], term["steps_done"]) \
        and s["steps_done"] > 0  # noqa: E731
    second, _ = backup_state.stop_when(proc, out, moved, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, f"training ended before the kill:\n{second[-3000:]}"
    killed = backup_state.read(out)
    snapshot = None
    if storage.is_local(out):
        snapshot = out + "-killed"
        shutil.copytree(out, snapshot)
    third = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    return (first, second, third.stdout), (seen, term, killed), snapshot


@pytest.fixture(scope="module", params=["tensorflow", "jax"])
def interrupted(request, cv_dir, store_dir, tmp_path_factory):  # noqa: F811
    backend = request.param
    root = tmp_path_factory.mktemp(f"preempt_{backend}")
    out, reference = str(root / "run"), str(root / "reference")
    logs, states, snapshot = _preempted_then_killed_then_finished(cv_dir, store_dir, out, backend)
    uninterrupted = subprocess.run(_cmd(cv_dir, store_dir, reference, backend, "--backup_every_minutes=0"),
                                   capture_output=True, text=True, env=_env(backend))
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:] + uninterrupted.stderr[-3000:]
    return backend, out, reference, logs, states, snapshot


def _same_predictions(out, reference):
    for name in PREDS:
        np.testing.assert_array_equal(storage.load_npy(storage.join(out, "preds", name)),
                                      np.load(os.path.join(reference, "preds", name)), err_msg=name)
    curves = [storage.read_text(storage.join(d, "curves", "fold_0.csv")).splitlines() for d in (out, reference)]
    assert [line.split(",")[:3] for line in curves[0]] == [line.split(",")[:3] for line in curves[1]]


def test_sigterm_backs_up_mid_epoch_records_preempted_and_frees_the_run_dir(interrupted):
    backend, out, _, (first, *_), (seen, term, _), _ = interrupted
    assert "SIGTERM received: finishing the step, backing up, then stopping" in first
    assert "preempted: SIGTERM: fold 0 backed up" in first
    # the step under way finished and was backed up (a later step than the last interval's backup)
    assert term["steps_done"] > 0 and (term["epochs_done"], term["steps_done"]) >= (seen["epochs_done"], seen["steps_done"])
    assert term["boundary"]["epochs_done"] == term["epochs_done"]  # the epoch boundary's backup is kept
    assert term["format"] == {"tensorflow": "h5", "jax": "orbax"}[backend]
    killed = json.load(open(os.path.join(out + "-killed", "backup", "fold_0", "state.json")))
    stems = {n.split(".")[0] for n in os.listdir(os.path.join(out + "-killed", "backup", "fold_0")) if n.startswith("epoch-")}
    named = {killed["stem"], killed["boundary"]["stem"]}
    assert named <= stems and len(stems - named) <= 1  # older ones pruned (one may be a kill's half-made next)
    card = run_card.read_card(out)
    assert card["invocations"][0]["status"] == "preempted" and "SIGTERM" in card["invocations"][0]["error"]
    assert card["invocations"][1]["status"] == "running"  # the SIGKILLed one: nothing could mark it
    assert card["status"] == "complete"


def test_sigterm_and_sigkill_mid_epoch_resume_to_the_uninterrupted_predictions(interrupted):
    backend, out, reference, (_, second, third), (_, term, killed), _ = interrupted
    assert f"Resuming fold 0 at epoch {term['epochs_done'] + 1}, step {term['steps_done']} " in second
    assert f"Resuming fold 0 at epoch {killed['epochs_done'] + 1}, step {killed['steps_done']} " in third
    assert "already" not in second  # the lock of the preempted run was released, not taken over
    _same_predictions(out, reference)
    card = run_card.read_card(reference)
    assert card["runtime"]["steps_per_execution"] == "1 (auto: 1 on CPU)"


def test_damaged_or_foreign_backup_within_the_epoch_falls_back_to_the_epoch_boundary(interrupted, cv_dir, store_dir,
                                                                                       capsys):  # noqa: F811
    """In-process, under TensorFlow: after the JAX run, its Orbax backups are read across backends."""
    backend, _, _, _, (_, _, killed), snapshot = interrupted
    settings = dict(data_dir=cv_dir, frame_store=store_dir, assemble="single", job="train", n_folds=1,
                    n_epochs=EPOCHS, steps_per_epoch=STEPS, tta_number=1, mixup_prob=0.5, verbose=0, dim=16,
                    batch_size=8, weights=None, backup_every_minutes=0)
    state_path = os.path.join(snapshot, "backup", "fold_0", "state.json")
    state = json.load(open(state_path))
    stem = os.path.join(snapshot, "backup", "fold_0", state["stem"])
    foreign = snapshot + "-foreign"
    shutil.copytree(snapshot, foreign)
    damaged = stem + (".orbax" if state["format"] == "orbax" else ".weights.h5")
    if state["format"] == "orbax":  # its arrays lost, as by a copy cut short
        shutil.rmtree(os.path.join(damaged, "d"))
    else:
        with open(damaged, "r+b") as f:  # half-written, as by a non-atomic copy
            f.truncate(os.path.getsize(damaged) // 2)
    epochs = killed["epochs_done"]
    experiment.run(experiment.make_config(output_dir=snapshot, **settings), tiny_experiment.init_model,
                   tiny_experiment.parse_example)
    log = capsys.readouterr().out
    assert f"WARNING: {damaged}: corrupt backup" in log and "the previous backup is used" in log
    assert f"Resuming fold 0 at epoch {epochs + 1} (backup of epoch {epochs} " in log
    with open(os.path.join(foreign, "backup", "fold_0", "state.json"), "w") as f:
        json.dump({**state, "devices": "1 process(es), 8 TPU device(s)"}, f)
    experiment.run(experiment.make_config(output_dir=foreign, **settings), tiny_experiment.init_model,
                   tiny_experiment.parse_example)
    log = capsys.readouterr().out
    assert "was made on 1 process(es), 8 TPU device(s) and resumes exactly only there" in log
    assert f"Resuming fold 0 at epoch {epochs + 1} (backup of epoch {epochs} " in log


def test_run_dir_on_cloud_storage_resumes_mid_epoch_to_the_same_predictions(interrupted, gcs_emulator, cv_dir,
                                                                            store_dir):  # noqa: F811
    """Under JAX Orbax writes through a local staging dir, uploaded before the state file names it."""
    backend, _, reference, *_ = interrupted
    out = gcs_emulator.create_bucket() + "/runs/run-preempt"
    _, (_, term, killed), _ = _preempted_then_killed_then_finished(cv_dir, store_dir, out, backend)
    assert term["steps_done"] > 0 and killed["steps_done"] > 0
    assert term["format"] == {"tensorflow": "h5", "jax": "orbax"}[backend]
    _same_predictions(out, reference)
    assert not storage.exists(storage.join(out, "run.lock"))
    best = storage.glob(storage.join(out, "model-best-f0-*"))
    assert len(best) == 1 and best[0].endswith({"tensorflow": ".weights.h5", "jax": ".orbax"}[backend])


@pytest.mark.parametrize("flag,value", [("backup_every_steps", -3), ("backup_every_minutes", 0.5)])
def test_backup_interval_below_one_is_refused(flag, value):
    with pytest.raises(cli.UsageError, match=f"--{flag}={value}: a backup interval must be >= 1"):
        experiment.make_config(**{flag: value})


def test_missing_orbax_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)  # as when the package is not installed
    with pytest.raises(ValueError, match=r"orbax-checkpoint is not installed.*pip install 'tpuflow\[orbax\]'"):
        resume.require_orbax()


def test_steps_per_execution_default_by_device_bounded_by_epoch_and_backup():
    cfg = experiment.make_config()
    assert config.steps_per_execution(cfg, "tpu", 1000) == (32, "auto: 32 on TPU")
    assert config.steps_per_execution(cfg, "cpu", 1000) == (1, "auto: 1 on CPU")
    assert config.steps_per_execution(cfg, "tpu", 20)[0] == 20
    assert config.steps_per_execution(cfg.replace(backup_every_steps=8), "tpu", 1000)[0] == 8
    assert config.steps_per_execution(cfg.replace(steps_per_execution=64), "tpu", 10) == (64, "--steps_per_execution")
    quick = experiment.make_config(quick=True)
    assert (quick.backup_every_steps, quick.backup_every_minutes) == (0, 0)


def test_two_jax_processes_back_up_into_one_orbax_backup_and_stop_together(cv_dir, single_dir, tmp_path):
    """Two hosts on 127.0.0.1 (as in test_backends): one SIGTERMed mid-epoch, both back up into
    one Orbax backup in host 0's run dir (host 1 keeps no weights of its own) and stop; re-run,
    both resume at that step, and stop together when the other host is SIGTERMed while predicting."""
    out = tmp_path / "run"

    def start():
        port = _free_port()
        return [subprocess.Popen(
            [sys.executable, os.path.join(HERE, "tiny_experiment.py"), "--backend=jax", "--distributed",
             "--job=train_val", "--n_folds=1", "--n_epochs=2", "--steps_per_epoch=8", "--backup_every_steps=2",
             "--buffer_size=64", "--tta_number=0", "--batch_size=6", "--verbose=2", f"--data_dir={cv_dir}",
             f"--data_tfrec_dir={single_dir}", f"--output_dir={out}"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env={**_env("jax"), "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
                                                       "KERAS_DISTRIBUTION_NUM_PROCESSES": "2",
                                                       "KERAS_DISTRIBUTION_PROCESS_ID": str(index)})
            for index in range(2)]

    procs = start()
    while procs[0].poll() is None and not ((backup_state.read(str(out)) or {}).get("steps_done", 0) >= 2):
        time.sleep(0.02)
    procs[0].send_signal(signal.SIGTERM)
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [cli.PREEMPTED_EXIT] * 2, logs[0][-2000:] + logs[1][-2000:]
    assert "preempted: another host: fold 0 backed up" in logs[1]
    states = [backup_state.read(str(out)), backup_state.read(str(out / "host_1"))]
    assert states[0]["stem"] == states[1]["stem"] and states[0]["steps_done"] > 0 and states[0]["format"] == "orbax"
    assert os.path.isdir(out / "backup" / "fold_0" / (states[0]["stem"] + ".orbax"))
    assert sorted(os.listdir(out / "host_1" / "backup" / "fold_0")) == ["state.json"]  # no weights of its own
    assert not list(out.glob("host_1/model-best-*"))  # and no best checkpoint of its own
    procs = start()  # resumes; host 1 is SIGTERMed once predicting (outside training): both stop there
    seen = []
    for line in procs[1].stdout:
        seen.append(line)
        if "Fold 0: predicting val" in line:
            procs[1].send_signal(signal.SIGTERM)
            break
    logs = [procs[0].communicate(timeout=300)[0], "".join(seen) + procs[1].communicate(timeout=300)[0]]
    assert [p.returncode for p in procs] == [cli.PREEMPTED_EXIT] * 2, logs[0][-2000:] + logs[1][-2000:]
    resumed = f"Resuming fold 0 at epoch {states[0]['epochs_done'] + 1}, step {states[0]['steps_done']} "
    assert resumed in logs[0] and resumed in logs[1], [line for log in logs for line in log.splitlines()
                                                      if "backup" in line or "Resuming" in line]
    assert "preempted: another host: stopped outside training" in logs[0]
    assert run_card.read_card(str(out))["invocations"][-1]["status"] == "preempted"
    assert len(list(out.glob("model-best-f0-*.orbax"))) == 1  # the fold's training is kept: a re-run predicts
    assert json.load(open(out / "backup" / "fold_0" / resume.DONE))["done"] == ["train"]


def test_minutes_interval_backs_up_within_the_epoch(tmp_path):
    cfg = experiment.make_config(output_dir=str(tmp_path), dim=8, task="regression", backup_every_minutes=1)
    cfg = cfg.replace(global_batch_size=4, scaled_lr=cfg.lr)
    model = tiny_experiment.init_model(cfg)
    models.compile_model(model, cfg)
    model.fit(np.ones((8, 8, 8, 1), np.float32), np.ones(8, np.float32), batch_size=4, epochs=1, verbose=0)
    backup = resume.FoldBackup(cfg, 0, {}, devices="here")
    backup.set_model(model)
    backup.set_params({"steps": 10})
    backup.on_train_batch_end(2)  # 3 steps in well under a minute: no backup yet
    assert backup_state.read(str(tmp_path)) is None
    backup._last -= 60  # a minute later
    backup.on_train_batch_end(3)
    state = backup_state.read(str(tmp_path))
    assert (state["epochs_done"], state["steps_done"], state["format"]) == (0, 4, "h5")
