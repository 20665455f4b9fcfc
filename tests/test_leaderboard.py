"""The leaderboard over records written by real short runs: sorting, CSV export, --set_lb,
incomplete records reported, the command line."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import tiny_experiment
from tpuflow.results import leaderboard, run_record
from tpuflow.training import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "leaderboard.py")
ENV = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}
RUNS = {"run-a": dict(lr=1e-3), "run-b": dict(lr=3e-2, n_folds=2), "run-c": dict(task="classification", dim=12)}


@pytest.fixture(scope="module")
def runs_dir(cv_dir, single_dir, tmp_path_factory) -> str:
    """Three short real runs (different flags) under one dir."""
    root = tmp_path_factory.mktemp("lb") / "runs"
    for name, flags in RUNS.items():
        cfg = experiment.make_config(**{
            **dict(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(root / name), quick=True,
                   dim=16, batch_size=8, tta_number=1, n_folds=1, weights=None, verbose=0,
                   dataset_kind="single", architecture="tiny-cnn"), **flags})
        experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)
    return str(root)


def test_table_sorts_by_cv_and_exports_every_column(runs_dir, tmp_path):
    items, problems = leaderboard.load_records([runs_dir])
    assert problems == [] and len(items) == 3
    table = leaderboard.build_table(items)
    assert sorted(table["experiment_id"]) == sorted(RUNS)
    assert table["CV_tta"].is_monotonic_increasing
    for _, row in table.iterrows():
        record = run_record.read_record(row["run_dir"])
        assert row["CV_tta"] == pytest.approx(record["cv"]["tta"])
        assert row["CV_no_tta"] == pytest.approx(record["cv"]["no_tta"])
    by_id = table.set_index("experiment_id")
    assert by_id.loc["run-b", "lr"] == 3e-2 and by_id.loc["run-c", "task"] == "classification"
    assert by_id.loc["run-c", "resolution"] == 12 and by_id.loc["run-a", "hist_depth"] == 1
    assert by_id.loc["run-b", "epochs_fold_1"] == 1 and pd.isna(by_id.loc["run-a", "epochs_fold_1"])
    path = tmp_path / "db.csv"
    path.write_text(table.to_csv(index=False))
    back = pd.read_csv(path)
    assert list(back.columns) == [
        "experiment_id", "LB_private", "LB_public", "CV_tta", "CV_no_tta", "CV_fold_0", "CV_fold_1",
        "epochs_fold_0", "epochs_fold_1", *leaderboard.COLUMNS]
    assert list(back["experiment_id"]) == list(table["experiment_id"])
    assert "run-a" in leaderboard.format_table(table)
    assert leaderboard.plot(table)[:8] == b"\x89PNG\r\n\x1a\n"


def test_set_lb_updates_the_record_and_unknown_id_is_an_error(runs_dir, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    path = leaderboard.set_lb([str(copy)], "run-b", 6.25, None)
    assert path == str(copy / "run-b" / "record.json")
    assert run_record.read_record(path)["lb"] == {"private": 6.25, "public": None}
    table = leaderboard.build_table(leaderboard.load_records([str(copy)])[0], sort_by="LB_private")
    assert table.loc[0, "experiment_id"] == "run-b" and table.loc[0, "LB_private"] == 6.25
    with pytest.raises(KeyError, match=r"no run with experiment id 'run-z' .* known ids: \['run-a', 'run-b', 'run-c'\]"):
        leaderboard.set_lb([str(copy)], "run-z", 1.0, 1.0)
    with pytest.raises(ValueError, match="'run-a' is in several run dirs"):
        leaderboard.set_lb([str(copy), runs_dir], "run-a", 1.0, 1.0)


def test_record_with_missing_fields_is_reported(runs_dir, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    broken = copy / "run-a" / "record.json"
    record = json.loads(broken.read_text())
    del record["cv"], record["model"]["backbone"]
    broken.write_text(json.dumps(record))
    items, problems = leaderboard.load_records([str(copy)])
    assert len(items) == 2
    assert problems == [f"{broken}: experiment record lacks field(s) ['cv', 'model.backbone']"]


def test_command_line(runs_dir, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    csv, png = tmp_path / "db.csv", tmp_path / "cv.png"
    proc = subprocess.run([sys.executable, TOOL, f"--runs={copy}", f"--out_csv={csv}", f"--plot={png}",
                           "--set_lb=run-c:7.5:7.75"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "run-c/record.json: LB private 7.5, public 7.75" in proc.stdout
    assert pd.read_csv(csv).set_index("experiment_id").loc["run-c", "LB_public"] == 7.75
    assert png.read_bytes()[:4] == b"\x89PNG"

    (copy / "run-a" / "record.json").write_text("{}")
    proc = subprocess.run([sys.executable, TOOL, f"--runs={copy}"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1
    assert "run-b" in proc.stdout and "incomplete record:" in proc.stderr and "run-a" in proc.stderr

    for bad, message in (("--set_lb=run-q:1:2", "no run with experiment id 'run-q'"),
                         ("--set_lb=run-a:x:2", "private score 'x' is not a number"),
                         (f"--runs={tmp_path}/nowhere", "no such dir")):
        args = [f"--runs={copy}", bad] if bad.startswith("--set_lb") else [bad]
        proc = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, env=ENV)
        assert proc.returncode != 0 and message in proc.stderr, (bad, proc.stderr)
