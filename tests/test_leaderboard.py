"""The leaderboard over run cards written by real short runs: sorting, CSV export, --set_lb,
incomplete cards reported, the command line."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

import tiny_experiment
from tpuflow.results import leaderboard, run_card
from tpuflow.training import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "leaderboard.py")
ENV = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}
RUNS = {"run-a": dict(lr=1e-3), "run-b": dict(lr=3e-2, n_folds=2), "run-c": dict(task="classification", dim=12),
        # not a smoke run, and scored on raw predictions
        "run-d": dict(quick=False, n_epochs=1, steps_per_epoch=1, buffer_size=64, metric="rmse_raw")}
SMOKE = ["run-a", "run-b", "run-c"]


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
    items, problems = leaderboard.load_cards([runs_dir])
    assert problems == [] and len(items) == 4
    table = leaderboard.build_table(items)
    assert sorted(table["experiment_id"]) == sorted(RUNS)
    assert list(table["metric"]) == ["rmse_rounded"] * 3 + ["rmse_raw"]  # ranked within each metric
    assert list(table["rank"]) == [1, 2, 3, 1] and table["CV_tta"][:3].is_monotonic_increasing
    assert leaderboard.smoke_runs(items) == SMOKE and list(table["quick"]) == [True] * 3 + [False]
    for _, row in table.iterrows():
        card = run_card.read_card(row["run_dir"])
        assert row["CV_tta"] == pytest.approx(card["cv"]["tta"])
        assert row["CV_no_tta"] == pytest.approx(card["cv"]["no_tta"])
    by_id = table.set_index("experiment_id")
    assert by_id.loc["run-b", "lr"] == 3e-2 and by_id.loc["run-c", "task"] == "classification"
    assert by_id.loc["run-c", "resolution"] == 12 and by_id.loc["run-a", "hist_depth"] == 1
    assert by_id.loc["run-b", "epochs_fold_1"] == 1 and pd.isna(by_id.loc["run-a", "epochs_fold_1"])
    path = tmp_path / "db.csv"
    path.write_text(table.to_csv(index=False))
    back = pd.read_csv(path)
    assert list(back.columns) == [
        "experiment_id", "LB_private", "LB_public", "CV_tta", "CV_no_tta", "metric", "rank", "CV_fold_0", "CV_fold_1",
        "epochs_fold_0", "epochs_fold_1", *leaderboard.COLUMNS]
    assert list(back["experiment_id"]) == list(table["experiment_id"])
    assert "run-a" in leaderboard.format_table(table)
    assert leaderboard.plot(table)[:8] == b"\x89PNG\r\n\x1a\n"


def test_set_lb_updates_the_record_and_unknown_id_is_an_error(runs_dir, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    path = leaderboard.set_lb([str(copy)], "run-b", 6.25, None)
    assert path == str(copy / "run-b" / "run_card.json")
    assert run_card.read_card(path)["lb"] == {"private": 6.25, "public": None}
    table = leaderboard.build_table(leaderboard.load_cards([str(copy)])[0], sort_by="LB_private")
    assert table.loc[0, "experiment_id"] == "run-b" and table.loc[0, "LB_private"] == 6.25
    with pytest.raises(KeyError, match=r"no run with experiment id 'run-z' .* known ids: \['run-a', 'run-b', 'run-c', 'run-d'\]"):
        leaderboard.set_lb([str(copy)], "run-z", 1.0, 1.0)
    with pytest.raises(ValueError, match="'run-a' is in several run dirs"):
        leaderboard.set_lb([str(copy), runs_dir], "run-a", 1.0, 1.0)


def test_run_dirs_from_before_the_card_had_its_name(runs_dir, cv_dir, tmp_path):
    """A run dir whose card is `record.json` (its name before the rename) is read as its card; the
    next invocation writes `run_card.json` with the same content and its update, and removes
    `record.json`: by --set_lb, by a score-only run, and by one that fails."""
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    before = {}
    for name in ("run-a", "run-b", "run-c"):
        (copy / name / "run_card.json").rename(copy / name / "record.json")
        before[name] = json.loads((copy / name / "record.json").read_text())
    items, problems = leaderboard.load_cards([str(copy)])
    assert problems == [] and sorted(card["experiment_id"] for _, card in items) == sorted(RUNS)
    assert leaderboard.find_cards([str(copy / "run-a")]) == [str(copy / "run-a" / "record.json")]

    def cards(name):
        return sorted(p for p in os.listdir(copy / name) if p.endswith(".json") and p != "config.json")

    path = leaderboard.set_lb([str(copy)], "run-b", 6.25, None)
    assert path == str(copy / "run-b" / "run_card.json") and cards("run-b") == ["run_card.json"]
    after = run_card.read_card(path)
    assert after == {**before["run-b"], "lb": {"private": 6.25, "public": None}, "updated": after["updated"]}

    def score(name):
        cfg = experiment.make_config(**{
            **dict(data_dir=cv_dir, data_tfrec_dir=None, output_dir=str(copy / name), quick=True, dim=16,
                   batch_size=8, tta_number=1, n_folds=1, weights=None, verbose=0, dataset_kind="single",
                   architecture="tiny-cnn", job="score"), **RUNS[name]})
        experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)

    score("run-a")
    assert cards("run-a") == ["run_card.json"]
    after = run_card.read_card(str(copy / "run-a"))
    assert after["invocations"][:-1] == before["run-a"]["invocations"] and after["jobs"] == ["score"]
    kept = ("experiment_id", "status", "started", "flags", "dataset", "model", "folds", "lb", "git", "run_py")
    assert {k: after[k] for k in kept} == {k: before["run-a"][k] for k in kept}
    assert after["cv"]["tta"] == pytest.approx(before["run-a"]["cv"]["tta"])

    os.remove(copy / "run-c" / "scores.csv")
    os.mkdir(copy / "run-c" / "scores.csv")  # the score-only invocation fails: marked failed in the card
    with pytest.raises(OSError):
        score("run-c")
    assert cards("run-c") == ["run_card.json"]
    after = run_card.read_card(str(copy / "run-c"))
    assert after["status"] == "complete" and after["invocations"][-1]["status"] == "failed"
    assert after["invocations"][:-1] == before["run-c"]["invocations"] and after["cv"] == before["run-c"]["cv"]


def test_record_with_missing_fields_is_reported(runs_dir, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    broken = copy / "run-a" / "run_card.json"
    card = json.loads(broken.read_text())
    del card["cv"], card["model"]["backbone"]
    broken.write_text(json.dumps(card))
    items, problems = leaderboard.load_cards([str(copy)])
    assert len(items) == 3
    assert problems == [f"{broken}: run card lacks field(s) ['cv', 'model.backbone']"]


def test_command_line(runs_dir, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(runs_dir, copy)
    csv, png = tmp_path / "db.csv", tmp_path / "cv.png"
    proc = subprocess.run([sys.executable, TOOL, f"--runs={copy}", f"--out_csv={csv}", f"--plot={png}",
                           "--set_lb=run-c:7.5:7.75", "--include_quick"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "run-c/run_card.json: LB private 7.5, public 7.75" in proc.stdout
    assert pd.read_csv(csv).set_index("experiment_id").loc["run-c", "LB_public"] == 7.75
    assert png.read_bytes()[:4] == b"\x89PNG"

    (copy / "run-a" / "run_card.json").write_text("{}")
    proc = subprocess.run([sys.executable, TOOL, f"--runs={copy}", "--include_quick"], capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 1
    assert "run-b" in proc.stdout and "incomplete run card:" in proc.stderr and "run-a" in proc.stderr

    for bad, message in (("--set_lb=run-q:1:2", "no run with experiment id 'run-q'"),
                         ("--set_lb=run-a:x:2", "private score 'x' is not a number"),
                         (f"--runs={tmp_path}/nowhere", "no such dir")):
        args = [f"--runs={copy}", bad] if bad.startswith("--set_lb") else [bad]
        proc = subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, env=ENV)
        assert proc.returncode != 0 and message in proc.stderr, (bad, proc.stderr)


def test_smoke_runs_are_left_out_and_metrics_ranked_apart(runs_dir, cv_dir, tmp_path):
    csv = tmp_path / "db.csv"
    proc = subprocess.run([sys.executable, TOOL, f"--runs={runs_dir}", f"--out_csv={csv}"], capture_output=True,
                          text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "left out 3 smoke run(s) (--quick): run-a, run-b, run-c (--include_quick lists them)" in proc.stdout
    assert list(pd.read_csv(csv)["experiment_id"]) == ["run-d"]
    proc = subprocess.run([sys.executable, TOOL, f"--runs={runs_dir}", "--include_quick"], capture_output=True,
                          text=True, env=ENV)
    assert ("CV scored with different metrics, ranked within each (never against each other): rmse_rounded 3 run(s), "
            "rmse_raw 1 run(s)") in proc.stdout


# The reference's experiment_database.csv layout (its helper scripts' columns), values made up.
REFERENCE_HEADER = ("experiment_id,LB_private,LB_public,CV_70k_tta9,CV_70k,CV_14k_f0,CV_14k_f1,CV_14k_f2,CV_14k_f3,"
                    "CV_14k_f4,n_epochs_f0,n_epochs_f1,n_epochs_f2,n_epochs_f3,n_epochs_f4,ensemble_id,task,"
                    "architecture,image_resolution,image_n_channels,image_inverted,n_frames,step,historical_depth,"
                    "backbone,backbone_weights,batch_size,learning_rate,max_n_epochs,aug_number,tta_number,"
                    "experiment_description")
REFERENCE_ROWS = [
    "run-20210101-0101,6.9,7.4,7.41,7.55,7.6,8.0,7.1,7.6,7.4,18,10,20,13,16,ens_both,regr,cnn-3ch-ind,366,3,yes,3,10,"
    "21,EfficientNet-B7,imagenet,192,0.001,20,9,9,Deeper history",
    "run-20210102-0202,,,7.08,7.15,7.3,7.5,6.8,7.3,6.9,15,9,14,14,15,ens_51_only,clas,cnn-lstm,366,3,yes,24,1,24,"
    "EfficientNet-B3,imagenet,64,0.0001,15,9,9,Classification",
]


def test_reference_experiment_database_is_imported_beside_the_runs(runs_dir, tmp_path):
    reference = tmp_path / "experiment_database.csv"
    reference.write_text("\n".join([REFERENCE_HEADER, *REFERENCE_ROWS]) + "\n")
    csv = tmp_path / "db.csv"
    proc = subprocess.run([sys.executable, TOOL, f"--runs={runs_dir}", f"--import_csv={reference}",
                           f"--out_csv={csv}"], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(csv).set_index("experiment_id")
    assert list(table.index) == ["run-20210102-0202", "run-20210101-0101", "run-d"]  # rmse_rounded first (2 runs)
    old = table.loc["run-20210101-0101"]
    assert (old["CV_tta"], old["CV_no_tta"], old["CV_fold_2"], old["epochs_fold_4"]) == (7.41, 7.55, 7.1, 16)
    assert (old["task"], old["kind"], old["hist_depth"], old["weights"], old["lr"], old["inverted"]) == (
        "regression", "stacked", 21, "imagenet", 0.001, True)
    assert (old["metric"], old["rank"], old["status"], old["run_dir"]) == ("rmse_rounded", 2, "imported", str(reference))
    assert (old["ensemble_id"], old["aug_number"]) == ("ens_both", 9)  # columns we have no name for: kept
    assert table.loc["run-20210102-0202", "task"] == "classification"
    assert table.loc["run-20210102-0202", "kind"] == "sequence"
    # A malformed file: one line naming the file and the line.
    for rows, message in (([REFERENCE_ROWS[0], REFERENCE_ROWS[1].replace("7.08", "seven")],
                           f"{reference} line 3 (run-20210102-0202): CV_70k_tta9='seven' is not a number"),
                          ([REFERENCE_ROWS[0] + ",extra"], f"{reference} line 2: 33 fields, but its header has 32"),
                          ([REFERENCE_ROWS[0].replace(",regr,", ",regression,")],
                           f"{reference} line 2 (run-20210101-0101): task='regression': expected one of"),
                          ([REFERENCE_ROWS[0]] * 2, "experiment id(s) ['run-20210101-0101'] on more than one line")):
        reference.write_text("\n".join([REFERENCE_HEADER, *rows]) + "\n")
        with pytest.raises(ValueError) as caught:
            leaderboard.import_reference(str(reference))
        assert message in str(caught.value)
    proc = subprocess.run([sys.executable, TOOL, f"--import_csv={reference}"], capture_output=True, text=True, env=ENV)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].endswith(str(caught.value)), proc.stderr
