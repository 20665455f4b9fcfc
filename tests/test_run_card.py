"""The run card written by real short runs: every field, round trip, updates by later
invocations, failures, and the per-fold training curves."""
import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

import tiny_experiment
from tpuflow.results import leaderboard, run_card
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
    out = tmp_path_factory.mktemp("card") / "run-tiny"
    result = _run(_cfg(cv_dir, single_dir, out))
    return out, result


def test_card_has_every_field(tiny_run, single_dir):
    out, result = tiny_run
    card = run_card.read_card(str(out))
    assert run_card.missing_fields(card) == []
    assert card["experiment_id"] == "run-tiny" and card["status"] == "complete"
    assert card["error"] is None
    assert card["description"] == "A tiny but real experiment (small CNN on `single` records) for fast runner tests."
    assert card["flags"]["architecture"] == "tiny-cnn" and card["flags"]["n_folds"] == 2
    assert card["dataset"] == {
        **card["dataset"], "dir": single_dir, "spec": "single", "kind": "single", "n_frames": 1,
        "step": 1, "channels": 1, "history_depth": 1}
    assert len(card["dataset"]["manifest_sha256"]) == 64
    assert card["model"]["architecture"] == "tiny-cnn" and card["model"]["weights"] is None
    assert card["model"]["n_params"] > 0
    scores = result["scores"]
    assert card["cv"]["tta"] == pytest.approx(scores.loc["all", "tta_mean"])
    assert card["cv"]["no_tta"] == pytest.approx(scores.loc["all", "tta_0"])
    assert card["cv"]["tta_number"] == 2
    assert set(card["cv"]["per_fold"]) == {"0", "1"}
    assert card["cv"]["per_fold"]["1"]["tta"] == pytest.approx(scores.loc["1", "tta_mean"])
    assert {k: v["epochs"] for k, v in card["folds"].items()} == {"0": 1, "1": 1}
    assert {"train_fold_0", "val_fold_1", "test_fold_1", "total"} <= set(card["timings"])
    assert card["runtime"] == {**card["runtime"], "replicas": 1, "device": "CPU", "precision": "float32"}
    assert card["versions"]["tensorflow"] and card["versions"]["tpuflow"]
    head = subprocess.run(["git", "-C", HERE, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert card["git"]["commit"] == head
    assert card["run_py"]["source"] == open(tiny_experiment.__file__).read()
    assert card["lb"] == {"private": None, "public": None}


def test_card_round_trips_and_rejects_missing_fields(tiny_run, tmp_path):
    out, _ = tiny_run
    card = run_card.read_card(str(out))
    path = str(tmp_path / "copy.json")
    run_card.write_card(path, card)
    assert run_card.read_card(path) == card
    del card["folds"], card["dataset"]["manifest_sha256"]
    with pytest.raises(ValueError, match=r"refusing to write a run card without "
                                         r"\['dataset.manifest_sha256', 'folds'\]"):
        run_card.write_card(path, card)
    with open(path, "w") as f:
        json.dump(card, f)
    with pytest.raises(ValueError, match=rf"{path}: run card lacks field\(s\)"):
        run_card.read_card(path)


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
    run_card.attach_lb(str(out), 9.5, 9.8)
    trained = run_card.read_card(str(out))
    _run(_cfg(cv_dir, None, out, n_folds=1, job="score", tta_number=0, lr=0.5))
    card = run_card.read_card(str(out))
    assert card["lb"] == {"private": 9.5, "public": 9.8}
    assert card["flags"]["lr"] == 0.01  # the training run's flags
    assert card["jobs"] == ["score"]
    assert card["folds"] == trained["folds"] and card["dataset"] == trained["dataset"]
    assert card["cv"]["tta_number"] == 0 and card["cv"]["tta"] == card["cv"]["no_tta"]
    # The run's status and start are training's; each invocation is listed on its own.
    assert card["status"] == "complete" and card["started"] == trained["started"]
    assert card["timings"]["total"] == trained["timings"]["total"]  # training's wall time
    assert [(i["jobs"], i["folds"], i["status"]) for i in card["invocations"]] == [
        (["train", "val", "test", "score", "subm"], [0], "complete"), (["score"], [0], "complete")]
    assert card["invocations"][0]["started"] == trained["started"]
    assert all(i["ended"] >= i["started"] and i["wall_s"] > 0 and i["error"] is None for i in card["invocations"])
    # A score-only invocation that fails (scores.csv cannot be written) shows as failed, the run stays complete.
    os.remove(out / "scores.csv")
    os.mkdir(out / "scores.csv")
    with pytest.raises(OSError):
        _run(_cfg(cv_dir, None, out, n_folds=1, job="score", tta_number=0))
    card = run_card.read_card(str(out))
    assert card["status"] == "complete" and card["error"] is None and card["started"] == trained["started"]
    assert card["folds"] == trained["folds"] and len(card["invocations"]) == 3
    failed = card["invocations"][-1]
    assert failed["jobs"] == ["score"] and failed["status"] == "failed" and "scores.csv" in failed["error"]
    row = leaderboard.build_table([(str(out / "run_card.json"), card)]).iloc[0]
    assert (row["status"], row["last_invocation"]) == ("complete", "score: failed")


def test_failed_run_is_marked_failed(cv_dir, single_dir, tmp_path):
    out = tmp_path / "run-fail"

    def broken_parse(serialized, cfg):
        raise RuntimeError("parse broke")

    with pytest.raises(ValueError, match="parse broke"):
        experiment.run(_cfg(cv_dir, single_dir, out), tiny_experiment.init_model, broken_parse)
    assert not (out / run_card.CARD_NAME).exists()  # refused before anything started

    def failing_model(cfg):
        raise RuntimeError("model broke")

    with pytest.raises(RuntimeError, match="model broke"):
        experiment.run(_cfg(cv_dir, single_dir, out), failing_model, tiny_experiment.parse_example)
    card = run_card.read_card(str(out))
    assert card["status"] == "failed" and card["error"] == "RuntimeError: model broke"
    assert [(i["status"], i["error"]) for i in card["invocations"]] == [("failed", "RuntimeError: model broke")]


@pytest.mark.parametrize("damage", ["text_npy", "missing_ids", "wrong_shape"])
def test_an_invocation_failing_on_its_inputs_is_recorded_failed(tiny_run, cv_dir, tmp_path, damage):
    """Refused before its card was updated (a bad prediction file), an invocation still shows:
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
    before = run_card.read_card(str(out))
    with pytest.raises(Exception) as caught:
        _run(_cfg(cv_dir, None, out, job="score_subm"))
    card = run_card.read_card(str(out))
    assert len(card["invocations"]) == len(before["invocations"]) + 1
    failed = card["invocations"][-1]
    assert (failed["jobs"], failed["folds"], failed["status"]) == (["score", "subm"], [0, 1], "failed")
    assert str(caught.value)[:100] in failed["error"] and failed["ended"] >= failed["started"]
    assert (card["status"], card["cv"]) == ("complete", before["cv"])
    row = leaderboard.build_table([(str(out / "run_card.json"), card)]).iloc[0]
    assert (row["status"], row["last_invocation"]) == ("complete", "score_subm: failed")
