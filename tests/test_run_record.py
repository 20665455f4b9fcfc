"""The experiment record written by real short runs: every field, round trip, updates by later
invocations, failures, and the per-fold training curves."""
import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import tiny_experiment
from tpuflow.results import leaderboard, run_record
from tpuflow.training import experiment

HERE = os.path.dirname(os.path.abspath(__file__))


def _cfg(cv_dir, tfrec_dir, out, **kw):
    base = dict(data_dir=cv_dir, data_tfrec_dir=tfrec_dir, output_dir=str(out), quick=True, dim=16,
                batch_size=8, tta_number=2, n_folds=2, weights=None, verbose=0, dataset_kind="single",
                architecture="tiny-cnn")
    return experiment.make_config(**{**base, **kw})


def _run(cfg):
    return experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)


@pytest.fixture(scope="module")
def tiny_run(cv_dir, single_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("record") / "run-tiny"
    result = _run(_cfg(cv_dir, single_dir, out))
    return out, result


def test_record_has_every_field(tiny_run, single_dir):
    out, result = tiny_run
    record = run_record.read_record(str(out))
    assert run_record.missing_fields(record) == []
    assert record["experiment_id"] == "run-tiny" and record["status"] == "complete"
    assert record["error"] is None
    assert record["description"] == "A tiny but real experiment (small CNN on `single` records) for fast runner tests."
    assert record["flags"]["architecture"] == "tiny-cnn" and record["flags"]["n_folds"] == 2
    assert record["dataset"] == {
        **record["dataset"], "dir": single_dir, "spec": "single", "kind": "single", "n_frames": 1,
        "step": 1, "channels": 1, "history_depth": 1}
    assert len(record["dataset"]["manifest_sha256"]) == 64
    assert record["model"]["architecture"] == "tiny-cnn" and record["model"]["weights"] is None
    assert record["model"]["n_params"] > 0
    scores = result["scores"]
    assert record["cv"]["tta"] == pytest.approx(scores.loc["all", "tta_mean"])
    assert record["cv"]["no_tta"] == pytest.approx(scores.loc["all", "tta_0"])
    assert record["cv"]["tta_number"] == 2
    assert set(record["cv"]["per_fold"]) == {"0", "1"}
    assert record["cv"]["per_fold"]["1"]["tta"] == pytest.approx(scores.loc["1", "tta_mean"])
    assert {k: v["epochs"] for k, v in record["folds"].items()} == {"0": 1, "1": 1}
    assert {"train_fold_0", "val_fold_1", "test_fold_1", "total"} <= set(record["timings"])
    assert record["runtime"] == {**record["runtime"], "replicas": 1, "device": "CPU", "precision": "float32"}
    assert record["versions"]["tensorflow"] and record["versions"]["tpuflow"]
    head = subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert record["git"]["commit"] == head
    assert record["run_py"]["source"] == open(tiny_experiment.__file__).read()
    assert record["lb"] == {"private": None, "public": None}


def test_record_round_trips_and_rejects_missing_fields(tiny_run, tmp_path):
    out, _ = tiny_run
    record = run_record.read_record(str(out))
    path = str(tmp_path / "copy.json")
    run_record.write_record(path, record)
    assert run_record.read_record(path) == record
    del record["folds"], record["dataset"]["manifest_sha256"]
    with pytest.raises(ValueError, match=r"refusing to write an experiment record without "
                                         r"\['dataset.manifest_sha256', 'folds'\]"):
        run_record.write_record(path, record)
    with open(path, "w") as f:
        json.dump(record, f)
    with pytest.raises(ValueError, match=rf"{path}: experiment record lacks field\(s\)"):
        run_record.read_record(path)


def test_curves_have_one_row_per_epoch(tiny_run):
    out, _ = tiny_run
    for k in (0, 1):
        table = pd.read_csv(out / "curves" / f"fold_{k}.csv")
        assert list(table["epoch"]) == [1]
        assert {"loss", "rmse", "val_loss", "val_rmse_rounded", "learning_rate"} <= set(table.columns)
        assert open(out / "curves" / f"fold_{k}.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_score_only_run_updates_cv_and_keeps_training_facts_and_lb(cv_dir, single_dir, tmp_path):
    out = tmp_path / "run-rescore"
    _run(_cfg(cv_dir, single_dir, out, n_folds=1, lr=0.01))
    run_record.attach_lb(str(out), 9.5, 9.8)
    trained = run_record.read_record(str(out))
    _run(_cfg(cv_dir, None, out, n_folds=1, job="score", tta_number=0, lr=0.5))
    record = run_record.read_record(str(out))
    assert record["lb"] == {"private": 9.5, "public": 9.8}
    assert record["flags"]["lr"] == 0.01  # the training run's flags
    assert record["jobs"] == ["score"]
    assert record["folds"] == trained["folds"] and record["dataset"] == trained["dataset"]
    assert record["cv"]["tta_number"] == 0 and record["cv"]["tta"] == record["cv"]["no_tta"]
    # The run's status and start are training's; each invocation is listed on its own.
    assert record["status"] == "complete" and record["started"] == trained["started"]
    assert record["timings"]["total"] == trained["timings"]["total"]  # training's wall time
    assert [(i["jobs"], i["folds"], i["status"]) for i in record["invocations"]] == [
        (["train", "val", "test", "score", "subm"], [0], "complete"), (["score"], [0], "complete")]
    assert record["invocations"][0]["started"] == trained["started"]
    assert all(i["ended"] >= i["started"] and i["wall_s"] > 0 and i["error"] is None for i in record["invocations"])
    # A score-only invocation that fails (scores.csv cannot be written) shows as failed, the run stays complete.
    os.remove(out / "scores.csv")
    os.mkdir(out / "scores.csv")
    with pytest.raises(OSError):
        _run(_cfg(cv_dir, None, out, n_folds=1, job="score", tta_number=0))
    record = run_record.read_record(str(out))
    assert record["status"] == "complete" and record["error"] is None and record["started"] == trained["started"]
    assert record["folds"] == trained["folds"] and len(record["invocations"]) == 3
    failed = record["invocations"][-1]
    assert failed["jobs"] == ["score"] and failed["status"] == "failed" and "scores.csv" in failed["error"]
    row = leaderboard.build_table([(str(out / "record.json"), record)]).iloc[0]
    assert (row["status"], row["last_invocation"]) == ("complete", "score: failed")


def test_failed_run_is_marked_failed(cv_dir, single_dir, tmp_path):
    out = tmp_path / "run-fail"

    def broken_parse(serialized, cfg):
        raise RuntimeError("parse broke")

    with pytest.raises(ValueError, match="parse broke"):
        experiment.run(_cfg(cv_dir, single_dir, out), tiny_experiment.init_model, broken_parse)
    assert not (out / run_record.RECORD_NAME).exists()  # refused before anything started

    def failing_model(cfg):
        raise RuntimeError("model broke")

    with pytest.raises(RuntimeError, match="model broke"):
        experiment.run(_cfg(cv_dir, single_dir, out), failing_model, tiny_experiment.parse_example)
    record = run_record.read_record(str(out))
    assert record["status"] == "failed" and record["error"] == "RuntimeError: model broke"
    assert [(i["status"], i["error"]) for i in record["invocations"]] == [("failed", "RuntimeError: model broke")]


@pytest.mark.parametrize("damage", ["text_npy", "missing_ids", "wrong_shape"])
def test_an_invocation_failing_on_its_inputs_is_recorded_failed(tiny_run, cv_dir, tmp_path, damage):
    """Refused before its record was updated (a bad prediction file), an invocation still shows:
    last_invocation never reads `complete` after a failure, and the run stays complete."""
    out = tmp_path / "run-tiny"
    shutil.copytree(tiny_run[0], out)
    preds = out / "preds"
    if damage == "text_npy":
        (preds / "y_pred_val_fold_1_tta_0.npy").write_text("7.0\n8.0\n")
    elif damage == "missing_ids":
        os.remove(preds / "ids_val_fold_0.npy")
    else:
        np.save(preds / "y_pred_val_fold_0_tta_1.npy", np.zeros((3, 1), np.float32))
    before = run_record.read_record(str(out))
    with pytest.raises(Exception) as caught:
        _run(_cfg(cv_dir, None, out, job="score_subm"))
    record = run_record.read_record(str(out))
    assert len(record["invocations"]) == len(before["invocations"]) + 1
    failed = record["invocations"][-1]
    assert (failed["jobs"], failed["folds"], failed["status"]) == (["score", "subm"], [0, 1], "failed")
    assert str(caught.value)[:100] in failed["error"] and failed["ended"] >= failed["started"]
    assert (record["status"], record["cv"]) == ("complete", before["cv"])
    row = leaderboard.build_table([(str(out / "record.json"), record)]).iloc[0]
    assert (row["status"], row["last_invocation"]) == ("complete", "score_subm: failed")
