"""The validation score is logged under the name of its RMSE (`val_rmse_rounded` or `val_rmse_raw`),
`--monitor=val_score` follows whichever `--metric` picks, and curves of runs made before (a
`val_rmse` column) still resume and plot."""
import pandas as pd

import tiny_experiment
from tpuflow.results import checkpoint_names, run_card
from tpuflow.training import curves, experiment, runner


def test_a_raw_rmse_run_logs_and_monitors_val_rmse_raw_under_the_old_monitor_name(cv_dir, single_dir, tmp_path,
                                                                                  capsys):
    out = tmp_path / "run-raw"
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), quick=True,
                                 dim=16, batch_size=8, tta_number=0, n_folds=1, weights=None, verbose=0,
                                 job="train", metric="rmse_raw", monitor="val_rmse")
    assert "--monitor=val_rmse is the old name of --monitor=val_score" in capsys.readouterr().err
    experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)
    table = pd.read_csv(out / "curves" / "fold_0.csv")
    assert "val_rmse_raw" in table and not {"val_rmse", "val_rmse_rounded"} & set(table.columns)
    best = checkpoint_names.parse(runner.fold_checkpoints(str(out), 0)[0])
    assert round(best.val_score, 4) == round(float(table["val_rmse_raw"].min()), 4)
    fold = run_card.read_card(str(out))["folds"]["0"]
    assert fold["best_val_rmse_raw"] == best.val_score and "best_val_rmse_rounded" not in fold


def test_a_resumed_fold_reads_an_old_val_rmse_column_under_the_scores_name(tmp_path):
    csv_path, png_path = curves.curve_paths(str(tmp_path), 0)
    (tmp_path / "curves").mkdir()
    pd.DataFrame({"epoch": [1, 2, 3], "loss": [9.0, 8.0, 7.5], "rmse": [3.0, 2.8, 2.7],
                  "val_rmse": [4.0, 3.5, 3.9]}).to_csv(csv_path, index=False)  # as runs made before wrote it
    callback = curves.TrainingCurves(str(tmp_path), 0, "old run", score="val_rmse_rounded")
    callback.on_train_begin()
    callback.on_epoch_begin(2)  # resumed after epoch 2: the old epoch 3 is redone
    callback.on_epoch_end(2, {"loss": 7.0, "rmse": 2.6, "val_rmse_rounded": 3.2})
    table = pd.read_csv(csv_path)
    assert list(table.columns) == ["epoch", "loss", "rmse", "val_rmse_rounded"]
    assert list(table["val_rmse_rounded"]) == [4.0, 3.5, 3.2]
    assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_training_and_validation_rmse_share_a_panel_whatever_the_scores_name():
    assert {curves.panel(c) for c in ("rmse", "val_rmse_rounded", "val_rmse_raw", "val_rmse")} == {"rmse"}
    assert [curves.panel(c) for c in ("loss", "val_loss", "learning_rate")] == ["loss", "loss", "learning_rate"]
    old = pd.DataFrame({"epoch": [1, 2], "rmse": [3.0, 2.5], "val_rmse": [4.0, 3.0], "val_loss": [1.0, 0.9]})
    assert curves.plot_curves(old, "old run").startswith(b"\x89PNG")
