"""Every experiment file loads, builds its model on records of its kind and runs every job quickly;
an experiment pointed at records of another kind fails at once, naming both."""
import glob
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import jax_env
from tpuflow.prep import builder, frames
from tpuflow.results import run_card, scoring
from tpuflow.training import config, experiment, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_FILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "*", "run.py")))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
# One experiment keeps its default backbone (EfficientNetB0), the others use a small one for speed.
DEFAULT_BACKBONE_RUN = "run-20261121-1300-cnn-1ch"


def _name(run_py: str) -> str:
    return os.path.basename(os.path.dirname(run_py))


def load_experiment(run_py: str):
    """Imports a run.py as a module (its `__main__` guard keeps it from running)."""
    spec = importlib.util.spec_from_file_location(_name(run_py).replace("-", "_"), run_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_experiments_of_every_kind():
    kinds = {load_experiment(p).DEFAULTS["dataset_kind"] for p in RUN_FILES}
    assert kinds == set(frames.KINDS)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
@pytest.mark.parametrize("run_py", RUN_FILES, ids=_name)
def test_experiment_runs_every_job_quickly(run_py, backend, cv_dir, kind_dirs, tmp_path, request):
    """The same run.py, unchanged, under either Keras backend (picked by --backend before Keras
    loads; the environment says the other one, so the flag must win)."""
    defaults = load_experiment(run_py).DEFAULTS
    out = tmp_path / _name(run_py)
    cmd = [sys.executable, run_py, "--job=train_val_test_score_subm", "--quick", f"--data_dir={cv_dir}",
           f"--data_tfrec_dir={kind_dirs[defaults['dataset_kind']]}", f"--output_dir={out}", "--dim=32",
           "--weights=None", "--n_folds=1", "--tta_number=1", f"--backend={backend}"]
    if _name(run_py) != DEFAULT_BACKBONE_RUN or backend != "tensorflow":  # EfficientNetB0: once is enough
        cmd.append("--backbone=MobileNetV3Small")
    if str(defaults.get("weights", "")).endswith("backbone.weights.h5"):  # fine-tuned from SimSiam
        cmd.append(f"--weights={request.getfixturevalue('simsiam_backbone')}")
    other = "jax" if backend == "tensorflow" else "tensorflow"
    proc = subprocess.run(cmd, capture_output=True, text=True, env=jax_env.env({**ENV, "KERAS_BACKEND": other}, backend))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CV rmse" in proc.stdout
    assert f"Backend {backend} (--backend={backend})" in proc.stdout
    assert "2/2 - " in proc.stdout  # not a terminal: one line per epoch, not a progress bar
    if str(defaults.get("weights", "")).endswith("backbone.weights.h5"):
        assert "backbone.weights.h5: loaded into MobileNetV3Small\n" in proc.stdout  # nothing skipped
    if defaults.get("mixup_prob"):
        assert run_card.read_card(str(out))["flags"]["mixup_prob"] == defaults["mixup_prob"]
    fmt = pd.read_csv(os.path.join(cv_dir, "submission_format.csv"))
    sub = pd.read_csv(out / f"{out.name}.csv")
    assert sub["image_id"].tolist() == fmt["image_id"].tolist()

    card = run_card.read_card(str(out))
    assert card["status"] == "complete" and card["experiment_id"] == out.name
    assert card["model"]["architecture"] == defaults.get("architecture", experiment.architecture_of(out.parent / _name(run_py)))
    assert card["dataset"]["kind"] == defaults["dataset_kind"]
    assert card["folds"]["0"]["epochs"] == 1
    assert card["runtime"]["backend"] == backend and card["versions"]["jax"]
    assert card["run_py"]["source"] == open(run_py).read()
    assert (out / "curves" / "fold_0.csv").exists() and (out / "curves" / "fold_0.png").exists()

    if defaults.get("task") == "classification":  # probabilities, mapped back to wind speeds
        labels = np.load(os.path.join(cv_dir, "unique_labels_sorted.npy"))
        probs = np.load(out / "preds" / "y_pred_val_fold_0_tta_0.npy")
        assert probs.shape[1] == len(labels)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-4)
        values = scoring.to_values(probs, labels)
        assert labels.min() <= values.min() and values.max() <= labels.max()
        assert sub["wind_speed"].between(labels.min(), labels.max()).all()


def test_sequence_model_on_single_frames_fails_at_once_naming_both(cv_dir, single_dir, tmp_path):
    lstm = next(p for p in RUN_FILES if p.endswith("cnn-lstm/run.py"))
    proc = subprocess.run([sys.executable, lstm, "--quick", f"--data_dir={cv_dir}",
                           f"--data_tfrec_dir={single_dir}", f"--output_dir={tmp_path}/out",
                           "--weights=None"],  # the kind mismatch, not the (offline) ImageNet download
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode != 0
    assert (f"reads 'sequence' records (--dataset_kind), but --data_tfrec_dir={single_dir} holds "
            "'single' records") in proc.stderr
    assert not os.path.exists(tmp_path / "out")  # nothing was started


@pytest.mark.parametrize("kind", ["stacked", "mean", "sequence"])
def test_single_frame_experiment_refuses_history_records(kind, cv_dir, kind_dirs, tmp_path):
    cfg = experiment.make_config(dataset_kind="single", data_dir=cv_dir, data_tfrec_dir=kind_dirs[kind],
                                 output_dir=str(tmp_path), job="train")
    with pytest.raises(ValueError, match=f"reads 'single' records .* holds '{kind}' records"):
        runner.check_inputs(cfg, {"train"})


def test_packed_sequence_model_refuses_frame_count_not_divisible_by_three(cv_dir, tmp_path):
    spec = frames.DatasetSpec.parse("sequence:n4:s1")
    builder.build_datasets(cv_dir, str(tmp_path), [spec])
    tfrec = str(tmp_path / spec.name)
    lstm = load_experiment(next(p for p in RUN_FILES if p.endswith("cnn-lstm/run.py")))
    cfg = experiment.make_config(**{**lstm.DEFAULTS, "data_dir": cv_dir, "data_tfrec_dir": tfrec,
                                    "output_dir": str(tmp_path / "out"), "dim": 16, "weights": None})
    inputs = runner.check_inputs(cfg, {"train"})
    cfg = config.resolve(cfg, inputs.manifest)  # frames per example, from the manifest
    with pytest.raises(ValueError, match=rf"cannot read the records of --data_tfrec_dir={tfrec} "
                                         r"\(sequence:n4:s1\): pack3 needs a multiple of 3 frames"):
        runner.check_parse(cfg, inputs, lambda s: lstm.parse_example(s, cfg))


def test_experiment_rejects_unknown_job(tmp_path):
    proc = subprocess.run([sys.executable, RUN_FILES[0], "--job=train_tset", f"--output_dir={tmp_path}"],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode != 0
    assert "unknown word(s) ['tset']" in proc.stderr
    assert not os.listdir(tmp_path)


def test_verbosity_defaults_to_one_line_per_epoch_off_a_terminal():
    assert not sys.stdout.isatty()  # pytest captures output
    assert experiment.make_config().verbose == 2
    assert experiment.make_config(verbose=0).verbose == 0



@pytest.mark.parametrize("run_py", RUN_FILES, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_help_lists_the_experiments_defaults_before_keras_is_imported(run_py):
    """`run.py --help` (asked often, answered at once): `models` loads on first use and the zoo
    imports Keras inside `init_model`, so neither Keras nor TensorFlow is imported to answer it."""
    probe = ("import runpy, sys\n"
             f"sys.argv = [{run_py!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({run_py!r}, run_name='__main__')\n"
             "except SystemExit as done:\n"
             "    assert not done.code, done.code\n"
             "print('imported:', sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--dataset_kind  (default: " in proc.stdout and "\nmodel (" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "imported: []"
