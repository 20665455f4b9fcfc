"""Exported SavedModels, loaded by plain TensorFlow in a process where tpuflow cannot be imported,
give the runner's predictions for a fold and for the fold ensemble with TTA."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tiny_experiment
import tiny_sequence_experiment
from tpuflow.inputs import records
from tpuflow.training import experiment, export

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

# Runs in a fresh interpreter: tpuflow is made unimportable, only TensorFlow and NumPy are used.
SERVE = """
import sys
sys.modules["tpuflow"] = None  # any import of tpuflow now fails
import numpy as np, tensorflow as tf
export_dir, tfrec, out, n_frames = sys.argv[1], sys.argv[2:-2], sys.argv[-2], None
spec = {"image": tf.io.VarLenFeature(tf.string)}
frames = [tf.sparse.to_dense(tf.io.parse_single_example(s, spec)["image"]) for s in tf.data.TFRecordDataset(tfrec)]
batch = tf.stack(frames)
if batch.shape[1] == 1:
    batch = batch[:, 0]
model = tf.saved_model.load(export_dir)
np.save(out, model.serve(batch)["wind_speed"].numpy())
"""


@pytest.fixture(scope="module")
def trained_run(cv_dir, single_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "run-export"
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), quick=True, dim=16,
                                 batch_size=8, weights=None, verbose=0, n_folds=2, tta="orig,flip_lr,rot45_crop",
                                 job="train_test")
    experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)
    return out


def _serve(export_dir, tfrec_files, out):
    proc = subprocess.run([sys.executable, "-c", SERVE, str(export_dir), *tfrec_files, str(out), "x"],
                          capture_output=True, text=True, env=ENV, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out)


def _export(run_dir, export_dir, *flags):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_model.py"), f"--run_dir={run_dir}",
                           f"--export_dir={export_dir}", f"--experiment_py={HERE}/tiny_experiment.py", *flags],
                          capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("folds", [[0], [0, 1]], ids=["fold0", "ensemble"])
def test_exported_model_matches_the_runner_without_tpuflow(folds, trained_run, single_dir, tmp_path):
    export_dir = tmp_path / "serving"
    flags = [f"--folds={folds[0]}"] if len(folds) == 1 else []
    stdout = _export(trained_run, export_dir, *flags)
    assert f"Exported folds {folds} x TTA views ['orig', 'flip_lr', 'rot45_crop']" in stdout
    test_files = records.record_files(single_dir, None)
    served = _serve(export_dir, test_files, tmp_path / "served.npy")
    runner = np.mean([np.load(trained_run / "preds" / f"y_pred_test_fold_{k}_tta_{t}.npy")[:, 0]
                      for k in folds for t in range(3)], axis=0)
    assert served.shape == runner.shape
    np.testing.assert_allclose(served, runner, rtol=1e-4, atol=1e-3)
    info = json.load(open(export_dir / "tpuflow_export.json"))
    assert info["folds"] == folds and info["views"] == ["orig", "flip_lr", "rot45_crop"]


def test_export_of_an_untrained_fold_fails_naming_it_and_keeps_an_earlier_export(trained_run, tmp_path):
    export_dir = tmp_path / "serving"
    export.export_run(str(trained_run), str(export_dir), folds=[0], views=["orig"],
                      run_py=os.path.join(HERE, "tiny_experiment.py"))
    before = sorted(os.listdir(export_dir))
    with pytest.raises(FileNotFoundError, match=r"model-best-f3-e\*.weights.h5 \(or .orbax\), found 0"):
        export.export_run(str(trained_run), str(export_dir), folds=[3], run_py=os.path.join(HERE, "tiny_experiment.py"))
    assert sorted(os.listdir(export_dir)) == before


def test_sequence_classification_ensemble_matches_the_runner(cv_dir, history_dirs, tmp_path):
    run_dir = tmp_path / "run-seq-cls"
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=history_dirs["sequence"], output_dir=str(run_dir),
                                 quick=True, dim=16, batch_size=8, weights=None, verbose=0, n_folds=2, tta="d4",
                                 tta_number=2, task="classification", job="train_test")
    experiment.run(cfg, tiny_sequence_experiment.init_model, tiny_sequence_experiment.parse_example)
    export.export_run(str(run_dir), str(tmp_path / "serving"), run_py=os.path.join(HERE, "tiny_sequence_experiment.py"))
    served = _serve(tmp_path / "serving", records.record_files(history_dirs["sequence"], None), tmp_path / "s.npy")
    labels = np.load(os.path.join(cv_dir, "unique_labels_sorted.npy"))
    runner = np.mean([np.load(run_dir / "preds" / f"y_pred_test_fold_{k}_tta_{t}.npy") @ labels
                      for k in range(2) for t in range(3)], axis=0)
    np.testing.assert_allclose(served, runner, rtol=1e-4, atol=1e-3)


class _FakeArchive:
    def __init__(self, text):
        self.text = text

    def write_out(self, path, verbose=False):
        os.makedirs(path)
        with open(os.path.join(path, "saved_model.pb"), "w") as f:
            f.write(self.text)


def test_export_dir_is_replaced_whole_with_its_info_and_restored_if_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "serving"
    export._write(_FakeArchive("old"), {"folds": [0]}, str(target))
    assert (target / "saved_model.pb").read_text() == "old"
    assert json.load(open(target / export.EXPORT_INFO)) == {"folds": [0]}  # written before the rename
    export._write(_FakeArchive("new"), {"folds": [0, 1]}, str(target))
    assert (target / "saved_model.pb").read_text() == "new"
    assert json.load(open(target / export.EXPORT_INFO)) == {"folds": [0, 1]}
    real_rename = os.rename

    def failing_rename(src, dst):
        if str(dst) == str(target) and os.path.basename(src) == "model":
            raise OSError(28, "No space left on device", str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        export._write(_FakeArchive("newer"), {"folds": [1]}, str(target))
    assert (target / "saved_model.pb").read_text() == "new"  # the earlier export is back
    assert sorted(os.listdir(tmp_path)) == ["serving"]  # no temporaries left


class _FakeTree(_FakeArchive):
    def write_out(self, path, verbose=False):
        super().write_out(path, verbose)
        os.makedirs(os.path.join(path, "variables"))
        with open(os.path.join(path, "variables", f"{self.text}.data"), "w") as f:
            f.write(self.text)


def test_gs_export_dir_is_overwritten_and_stale_files_deleted(gcs_emulator):
    from tpuflow import storage
    target = gcs_emulator.create_bucket() + "/serving"
    export._write(_FakeTree("old"), {"folds": [0]}, target)
    export._write(_FakeTree("new"), {"folds": [1]}, target)
    assert sorted(storage.list_files(target)) == sorted([export.EXPORT_INFO, "saved_model.pb", "variables/new.data"])
    assert storage.read_json(storage.join(target, export.EXPORT_INFO)) == {"folds": [1]}
