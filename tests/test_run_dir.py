"""A run dir nobody can clobber: one writer at a time (lock), subset CVs beside full results,
full disks leave a `failed` run card and no partial files."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import tiny_experiment
from tpuflow import storage
from tpuflow.results import run_card
from tpuflow.storage import lock
from tpuflow.training import experiment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TINY = os.path.join(HERE, "tiny_experiment.py")


def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "lib"), HERE])}


def _tiny_cmd(cv_dir, single_dir, out, *extra):
    return [sys.executable, TINY, f"--data_dir={cv_dir}", f"--data_tfrec_dir={single_dir}", f"--output_dir={out}",
            "--dim=16", "--batch_size=8", "--buffer_size=64", "--tta_number=0", "--verbose=2", *extra]


# ---------------------------------------------------------------------------------------------
# The lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(run_dir, **owner):
    os.makedirs(run_dir, exist_ok=True)
    base = {"token": "t-old", "pid": 1, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
            "heartbeat": time.time(), "command": "python run.py --lr=0.1", "pid_start": None}
    with open(os.path.join(run_dir, lock.LOCK_NAME), "w") as f:
        json.dump({**base, **owner}, f)


def test_second_lock_fails_naming_the_owner_and_release_frees_it(tmp_path):
    run_dir = str(tmp_path / "run")
    with lock.RunLock(run_dir):
        with pytest.raises(lock.RunDirLocked, match=rf"in use by another run \(pid {os.getpid()} on host "):
            lock.RunLock(run_dir).acquire()
    assert not os.path.exists(run_dir)  # released: nothing left behind (not even the dir it made)
    with lock.RunLock(run_dir):
        pass


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    _write_lock(run_dir, pid=_dead_pid())
    with lock.RunLock(run_dir) as held:
        assert json.load(open(os.path.join(run_dir, lock.LOCK_NAME)))["token"] == held.owner["token"]
    assert "Taking over the run dir from a dead run (process" in capsys.readouterr().out


def test_reused_pid_is_not_the_owner(tmp_path):
    run_dir = str(tmp_path / "run")
    _write_lock(run_dir, pid=os.getpid(), pid_start="1")  # our pid, but a process started at another time
    with lock.RunLock(run_dir):
        pass


def test_other_host_owner_is_stale_only_without_a_recent_heartbeat(tmp_path):
    run_dir = str(tmp_path / "run")
    _write_lock(run_dir, host="tpu-vm-7", pid=4242, heartbeat=time.time() - 10)
    with pytest.raises(lock.RunDirLocked, match="pid 4242 on host tpu-vm-7"):
        lock.RunLock(run_dir, stale_s=60).acquire()
    _write_lock(run_dir, host="tpu-vm-7", pid=4242, heartbeat=time.time() - 120)
    with lock.RunLock(run_dir, stale_s=60):
        pass


def test_heartbeat_keeps_the_lock_fresh_and_notices_a_takeover(tmp_path):
    run_dir = str(tmp_path / "run")
    held = lock.RunLock(run_dir, heartbeat_s=0.1).acquire()
    path = os.path.join(run_dir, lock.LOCK_NAME)
    first = json.load(open(path))["heartbeat"]
    time.sleep(0.5)
    assert json.load(open(path))["heartbeat"] > first
    _write_lock(run_dir, token="someone-else")  # what a takeover leaves
    time.sleep(0.5)
    with pytest.raises(lock.RunDirLocked, match="another run took over"):
        held.check()
    held.release()
    assert json.load(open(path))["token"] == "someone-else"  # not ours: left alone


@pytest.mark.parametrize("scheme", ["gs", "mem"])
def test_lock_on_an_object_store_uses_generation_preconditions(scheme, request):
    root = request.getfixturevalue("gcs_emulator").create_bucket() if scheme == "gs" else f"mem://{uuid.uuid4().hex}"
    run_dir = root + "/runs/run-x"
    first = lock.RunLock(run_dir).acquire()
    with pytest.raises(lock.RunDirLocked, match=f"pid {os.getpid()} on host"):
        lock.RunLock(run_dir).acquire()
    # Another host's lock with an old heartbeat: two runs judge it stale at once; one wins.
    first.release()
    assert not storage.exists(f"{run_dir}/{lock.LOCK_NAME}")
    stale = {"token": "t-old", "pid": 7, "host": "tpu-vm-7", "heartbeat": time.time() - 3600, "command": "x"}
    storage.write_json(f"{run_dir}/{lock.LOCK_NAME}", stale)
    slow, fast = lock.RunLock(run_dir), lock.RunLock(run_dir)
    judged = slow._read()  # the slow one has read the stale lock ...
    fast.acquire()  # ... when the fast one takes it over
    slow._remove(judged)  # removing "the stale lock" now must not remove the fast one's
    assert storage.read_json(f"{run_dir}/{lock.LOCK_NAME}")["token"] == fast.owner["token"]
    assert not slow._create()  # and creating fails: only if no such object
    with pytest.raises(lock.RunDirLocked, match="on host"):
        slow.acquire()
    fast.release()


def test_emulator_honours_generation_preconditions(gcs_emulator):
    """The lock relies on them; the stock emulator ignores them (tests/gcs_emulator.py adds them)."""
    from google.api_core import exceptions as gexc
    from google.cloud import storage as gcs
    bucket = gcs.Client().bucket(gcs_emulator.create_bucket()[len("gs://"):])
    blob = bucket.blob("x")
    blob.upload_from_string(b"1", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("x").upload_from_string(b"2", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        bucket.blob("x").delete(if_generation_match=int(blob.generation) + 1)
    assert bucket.blob("x").download_as_bytes() == b"1"


def test_second_run_py_on_a_run_dir_fails_at_once_and_the_first_finishes_intact(cv_dir, single_dir, tmp_path):
    out = tmp_path / "run-twice"
    first = subprocess.Popen(_tiny_cmd(cv_dir, single_dir, out, "--n_folds=2", "--n_epochs=12", "--steps_per_epoch=1",
                                       "--job=train_val_score"),
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "run_card.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        second = subprocess.run(_tiny_cmd(cv_dir, single_dir, out, "--n_folds=2", "--lr=0.01"), env=_env(),
                                capture_output=True, text=True, timeout=120)
        first_still_running = first.poll() is None
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert first_still_running, "the first run ended before the second was refused: test inconclusive"
    assert second.returncode == 1, second.stderr
    line = second.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert f"--output_dir={out} is in use by another run (pid {first.pid} on host" in line
    assert "Running on" not in second.stdout  # refused before any work
    card = run_card.read_card(str(out))
    assert card["status"] == "complete" and card["flags"]["lr"] == 0.001
    assert sorted(card["cv"]["per_fold"]) == ["0", "1"] and card["cv"]["folds"] == [0, 1]
    assert not (out / lock.LOCK_NAME).exists()


def test_a_run_killed_mid_training_leaves_a_lock_the_rerun_takes_over(cv_dir, single_dir, tmp_path):
    out = tmp_path / "run-killed"
    cmd = _tiny_cmd(cv_dir, single_dir, out, "--n_folds=1", "--n_epochs=3", "--steps_per_epoch=1", "--job=train_val")
    victim = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "backup" / "fold_0" / "state.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    victim.kill()
    victim.wait()
    assert (out / lock.LOCK_NAME).exists()
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"Taking over the run dir from a dead run (process {victim.pid} is gone)" in rerun.stdout
    assert "Resuming fold 0 at epoch" in rerun.stdout
    assert run_card.read_card(str(out))["status"] == "complete"


# ---------------------------------------------------------------------------------------------
# Subset CVs never replace the full one


def _cfg(cv_dir, single_dir, out, **kw):
    base = dict(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), quick=True, dim=16,
                batch_size=8, tta_number=1, weights=None, verbose=0)
    return experiment.make_config(**{**base, **kw})


def _run(cfg):
    return experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)


def test_scoring_fewer_folds_leaves_the_full_results_byte_identical(cv_dir, single_dir, tmp_path):
    out = tmp_path / "run-full"
    _run(_cfg(cv_dir, single_dir, out, n_folds=5, job="train_val_test_score_subm"))
    full = {name: (out / name).read_bytes() for name in ("scores.csv", "run-full.csv", "config.json")}
    trained = run_card.read_card(str(out))
    cv_before = trained["cv"]
    assert cv_before["folds"] == [0, 1, 2, 3, 4]
    result = _run(_cfg(cv_dir, None, out, n_folds=2, job="score_subm"))
    for name, data in full.items():
        assert (out / name).read_bytes() == data, name
    assert result["submission"] == str(out / "run-full.folds-0-1.csv")
    assert sorted(result["scores"].index) == ["0", "1", "all"]
    assert (out / "scores.folds-0-1.csv").exists()
    card = run_card.read_card(str(out))
    assert card["cv"] == cv_before and card["status"] == "complete"
    assert card["cv_subsets"]["folds-0-1"]["folds"] == [0, 1]
    assert card["started"] == trained["started"] and card["timings"]["total"] == trained["timings"]["total"]
    assert [(i["jobs"], i["folds"], i["status"]) for i in card["invocations"][1:]] == [
        (["score", "subm"], [0, 1], "complete")]
    # Retraining a fold of it alone (other settings) would mix two trainings: refused, nothing changed.
    checkpoints = sorted(p.name for p in out.glob("model-best-f0-*"))
    record_before = (out / "run_card.json").read_bytes()
    with pytest.raises(experiment.cli.UsageError, match=rf"--output_dir={out} holds a CV over folds \[0, 1, 2, 3, 4\]; "
                                                        r"redoing folds \[0\] \(train\+val\) alone with --lr=0.01 "
                                                        r"\(trained with 0.001\) would leave"):
        _run(_cfg(cv_dir, single_dir, out, n_folds=1, job="train_val", lr=0.01))
    with socket.socket() as sock:  # refused before a TPU is started: an unreachable one is never tried
        sock.bind(("127.0.0.1", 0))
        closed = f"grpc://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(experiment.cli.UsageError, match=r"redoing folds \[0\] \(train\+val\) alone with --lr=0.01"):
        _run(_cfg(cv_dir, single_dir, out, n_folds=1, job="train_val", lr=0.01, tpu_ip_or_name=closed))
    preds_before = {p.name: p.read_bytes() for p in (out / "preds").iterdir()}
    with pytest.raises(experiment.cli.UsageError, match=r"redoing folds \[0\] \(val\) alone with --lr=0.01"):
        _run(_cfg(cv_dir, single_dir, out, n_folds=1, job="val", lr=0.01))  # predictions would mix too
    assert {p.name: p.read_bytes() for p in (out / "preds").iterdir()} == preds_before
    assert sorted(p.name for p in out.glob("model-best-f0-*")) == checkpoints
    after = json.loads((out / "run_card.json").read_bytes())  # the refusals are recorded, nothing else changed
    before = json.loads(record_before)
    refused = after["invocations"][len(before["invocations"]):]
    assert [(i["jobs"], i["status"], "--lr=0.01" in i["error"]) for i in refused] == [
        (["train", "val"], "failed", True)] * 2 + [(["val"], "failed", True)]
    assert {k: v for k, v in after.items() if k not in ("invocations", "updated")} == \
        {k: v for k, v in before.items() if k not in ("invocations", "updated")}
    _run(_cfg(cv_dir, single_dir, out, n_folds=1, job="train_val"))  # same settings: resumes (nothing to do)
    assert sorted(p.name for p in out.glob("model-best-f0-*")) == checkpoints
    card = run_card.read_card(str(out))  # a subset run never speaks for the run
    assert (card["status"], card["started"]) == ("complete", trained["started"])
    assert card["invocations"][-1]["folds"] == [0] and len(card["invocations"]) == 6
    # The full set again replaces the full results (same numbers: same predictions).
    _run(_cfg(cv_dir, None, out, n_folds=5, job="score_subm"))
    assert (out / "scores.csv").read_bytes() == full["scores.csv"]


# ---------------------------------------------------------------------------------------------
# Full disks


def _mount_tmpfs(path, size: str) -> bool:
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_is_one_line_naming_the_path_record_failed_no_partial_files(cv_dir, single_dir, tmp_path):
    disk = tmp_path / "small-disk"
    if not _mount_tmpfs(disk, "600k"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        out = disk / "run"
        proc = subprocess.run(_tiny_cmd(cv_dir, single_dir, out, "--n_folds=2", "--tta_number=1", "--n_epochs=2",
                                        "--steps_per_epoch=1", "--job=train_val_test_score_subm"),
                              env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "No space left on device" in lines[0] and str(out) in lines[0], proc.stderr
        card = json.load(open(out / "run_card.json"))
        assert card["status"] == "failed" and "No space left on device" in card["error"]
        leftovers = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files
                     if f.startswith(".tmp-") or os.path.getsize(os.path.join(d, f)) == 0]
        assert leftovers == []
        assert not (out / lock.LOCK_NAME).exists()
        # With space again, the same command resumes and completes.
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(proc.args, env=_env(), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        assert json.load(open(out / "run_card.json"))["status"] == "complete"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_injected_enospc_while_saving_predictions_names_the_file(cv_dir, single_dir, tmp_path, monkeypatch):
    out = tmp_path / "run-enospc"
    real_replace = os.replace

    def full_disk(src, dst):
        if "y_pred_test_fold_0" in str(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left on device") as caught:
        _run(_cfg(cv_dir, single_dir, out, n_folds=1, job="train_val_test"))
    assert "y_pred_test_fold_0_tta_0.npy" in str(caught.value.filename)
    monkeypatch.undo()
    card = run_card.read_card(str(out))
    assert card["status"] == "failed" and "y_pred_test_fold_0_tta_0.npy" in card["error"]
    assert not [f for f in os.listdir(out / "preds") if f.startswith(".tmp-") or "test" in f]
    assert os.listdir(out / "preds")  # the val predictions before it stay
    _run(_cfg(cv_dir, single_dir, out, n_folds=1, job="train_val_test"))  # resumes: test predictions only
    assert (out / "preds" / "y_pred_test_fold_0_tta_0.npy").exists()
    assert np.load(out / "preds" / "ids_test.npy").size


def test_quick_run_goes_to_a_temporary_dir_with_a_batch_every_device_count_divides(tmp_path):
    cfg = experiment.make_config(quick=True)
    assert os.path.basename(cfg.output_dir).startswith("tpuflow-quick-") and os.path.isdir(cfg.output_dir)
    assert (cfg.batch_size, cfg.batch_size_per_replica) == (4, True)  # 4 per device, on any number of devices
    os.rmdir(cfg.output_dir)
    cfg = experiment.make_config(quick=True, output_dir=str(tmp_path / "run"), batch_size=6)
    assert (cfg.output_dir, cfg.batch_size, cfg.batch_size_per_replica) == (str(tmp_path / "run"), 6, False)


# ---------------------------------------------------------------------------------------------
# Finished results are replaced only on purpose


@pytest.fixture(scope="module")
def finished_run(cv_dir, single_dir, tmp_path_factory):
    """A finished (not --quick) 2-fold run: its dir and the bytes of its results."""
    out = tmp_path_factory.mktemp("finished") / "run-finished"
    _run(_cfg(cv_dir, single_dir, out, quick=False, n_folds=2, n_epochs=1, steps_per_epoch=1, buffer_size=64,
              tta_number=0, job="train_val_score"))
    return out


def _results(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*")
            if p.is_file() and p.name != "run_card.json" and "tensorboard" not in p.parts}


def test_other_settings_on_a_trained_run_dir_are_refused_naming_the_flags(finished_run, cv_dir, single_dir, tmp_path):
    out = tmp_path / "run-finished"
    shutil.copytree(finished_run, out)
    results = _results(out)
    assert [p for p in results if p.startswith("model-best-f")] and "config.json" in results
    with socket.socket() as sock:  # refused before a TPU is started: an unreachable one is never tried
        sock.bind(("127.0.0.1", 0))
        closed = f"grpc://127.0.0.1:{sock.getsockname()[1]}"
    refusals = [  # (settings, the message's start)
        (dict(quick=True, n_folds=2, tpu_ip_or_name=closed), r"holds folds \[0, 1\] trained with other settings: "
         r"--quick=True \(trained with False\), --steps_per_epoch=2 \(trained with 1\); refusing to replace them: "
         r"pass --overwrite to replace the run, or use a new --output_dir"),
        (dict(quick=False, n_folds=2, n_epochs=1, steps_per_epoch=1, buffer_size=64, lr=0.01, tta_number=0),
         r"--lr=0.01 \(trained with 0.001\); refusing"),
        (dict(quick=False, n_folds=2, n_epochs=1, steps_per_epoch=1, buffer_size=64, dim=24, job="val"),
         r"its folds \[0, 1\] were trained with other settings: --dim=24 \(trained with 16\); predicting \(val\) "
         r"needs the settings they were trained with"),
        (dict(quick=False, n_folds=1, n_epochs=1, steps_per_epoch=1, buffer_size=64, lr=0.01, overwrite=True),
         r"holds a CV over folds \[0, 1\]; redoing folds \[0\] \(train\+val\+test\) alone with --lr=0.01 "
         r"\(trained with 0.001\) would leave its results mixing two trainings"),  # --overwrite never mixes
    ]
    for settings, message in refusals:
        with pytest.raises(experiment.cli.UsageError, match=message):
            _run(_cfg(cv_dir, single_dir, out, **settings))
    assert _results(out) == results  # nothing replaced
    card = run_card.read_card(str(out))
    assert card["status"] == "complete" and not card["quick"]
    assert [i["status"] for i in card["invocations"]] == ["complete"] + ["failed"] * len(refusals)
    same = dict(quick=False, n_folds=2, n_epochs=1, steps_per_epoch=1, buffer_size=64, tta_number=0)
    # A re-prediction may change its batch (memory) and the TTA set; results of the same training.
    _run(_cfg(cv_dir, single_dir, out, **{**same, "tta_number": 1}, batch_size=4, tta="d4", job="val"))
    # --overwrite over all the trained folds replaces the run.
    _run(_cfg(cv_dir, single_dir, out, **{**same, "lr": 0.01}, overwrite=True, job="train_val_score"))
    card = run_card.read_card(str(out))
    assert card["flags"]["lr"] == 0.01 and json.loads((out / "config.json").read_text())["lr"] == 0.01
    assert all(card["folds"][k]["epochs_this_run"] == 1 for k in ("0", "1"))


def test_scoring_without_n_folds_scores_the_runs_folds(finished_run, cv_dir, tmp_path, capsys):
    out = tmp_path / "run-finished"
    shutil.copytree(finished_run, out)
    scores = (out / "scores.csv").read_bytes()
    result = _run(_cfg(cv_dir, None, out, quick=False, job="score", tta_number=0))  # no --n_folds: not 5
    assert "--n_folds not given: the run's folds 0-1 (run_card.json)" in capsys.readouterr().out
    assert sorted(result["scores"].index) == ["0", "1", "all"] and result["subset"] == ""
    assert (out / "scores.csv").read_bytes() == scores
