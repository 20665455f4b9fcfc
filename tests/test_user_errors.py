"""Errors a person can act on: one line naming the flag, file or row, before any long work; exit
status 2 for usage, 1 for data; a traceback only with --debug."""
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import tiny_experiment
from tpuflow import cli
from tpuflow.inputs import records
from tpuflow.results import run_card, scoring
from tpuflow.training import experiment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "lib"), HERE])}


def _cfg(cv_dir, single_dir, out, **kw):
    base = dict(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), quick=True, dim=16,
                batch_size=8, tta_number=0, weights=None, verbose=0)
    return experiment.make_config(**{**base, **kw})


def _run(cfg, init_model=tiny_experiment.init_model):
    return experiment.run(cfg, init_model, tiny_experiment.parse_example)


def _stderr_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) <= 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# The command line: exit status, one line, --debug


def test_run_py_usage_error_is_one_line_exit_2_and_data_error_exit_1(cv_dir, single_dir, tmp_path):
    tiny = os.path.join(HERE, "tiny_experiment.py")
    usage = subprocess.run([sys.executable, tiny, "--n_folds=0", f"--output_dir={tmp_path / 'a'}"],
                           capture_output=True, text=True, env=ENV)
    assert usage.returncode == 2
    assert _stderr_line(usage) == ("tiny_experiment.py: error: --n_folds=0: must be >= 1 (folds to run, "
                                   "from --initial_fold)")
    empty = tmp_path / "no-records"
    empty.mkdir()
    data = subprocess.run([sys.executable, tiny, f"--data_dir={cv_dir}", f"--data_tfrec_dir={empty}",
                           f"--output_dir={tmp_path / 'b'}"], capture_output=True, text=True, env=ENV)
    assert data.returncode == 1
    assert str(empty) in _stderr_line(data) and "manifest" in _stderr_line(data)
    assert "Running on" not in data.stdout  # before any work
    debug = subprocess.run([*data.args, "--debug"], capture_output=True, text=True, env=ENV)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr


@pytest.mark.parametrize("run", ["run-20261121-1300-cnn-1ch", "run-20261121-1330-cnn-lstm"])
def test_run_py_help_lists_the_experiments_flags_by_section_with_its_defaults(run, tmp_path):
    """Answered by `experiment.main` (importing tpuflow never exits): the defaults the run.py
    passes to main, its data paths relative to it; nothing is written."""
    run_py = os.path.join(ROOT, "experiments", run, "run.py")
    proc = subprocess.run([sys.executable, run_py, "--help"], capture_output=True, text=True, env=ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    titles = [line.split()[0] for line in out.splitlines() if re.match(r"^[a-z]+ \(.*\):$|^other:$", line)]
    assert titles == ["data", "model", "training", "jobs", "runtime", "outputs", "other:"]
    assert out.index("\nmodel (") < out.index("--backbone  (default: 'EfficientNetB0')") < out.index("\ntraining (")
    assert out.index("\ndata (") < out.index("--view  (") < out.index("\nmodel (")  # not under "other"
    assert out.index("\nruntime (") < out.index("--frame_cache  (") < out.index("\noutputs (")
    assert "--dim  (default: 366)" in out and "--weights  (default: 'imagenet')" in out
    assert f"--dataset_kind  (default: '{'sequence' if 'lstm' in run else 'single'}')" in out
    assert "--output_dir  (default: '" + os.path.dirname(run_py) + "')" in out
    assert "--data_dir  (default: '" + os.path.join(ROOT, "data") + "')" in out  # relative to run.py
    assert "--helpfull" in out and "--alsologtostderr" not in out
    assert list(tmp_path.iterdir()) == []


def test_create_cv_split_flag_errors_name_the_flag(raw_dir, tmp_path):
    script = os.path.join(ROOT, "data_prep", "create_cv_split.py")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for flags, expected in ((["--n_folds=0"], "--n_folds=0: must be >= 2"),
                            (["--n_folds=-3"], "--n_folds=-3: must be >= 2"),
                            (["--n_folds=1"], "--n_folds=1: must be >= 2"),
                            ([f"--out_dir={afile}"], f"--out_dir={afile}: is a file, not a directory")):
        proc = subprocess.run([sys.executable, script, f"--data_dir={raw_dir}", *flags], capture_output=True,
                              text=True, env=ENV)
        assert proc.returncode == 2, proc.stderr
        assert _stderr_line(proc).startswith(f"create_cv_split.py: error: {expected}")


def test_ensemble_out_dir_that_is_a_file_is_named(cv_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "ensemble.py"), f"--data_dir={cv_dir}",
                           f"--model_dirs={tmp_path}/run-*", f"--out_dir={afile}"], capture_output=True, text=True,
                          env=ENV)
    assert proc.returncode == 2
    assert _stderr_line(proc) == f"ensemble.py: error: --out_dir={afile}: is a file, not a directory"


def test_one_line_messages_for_user_errors_and_none_for_bugs():
    assert cli.user_message(OSError(28, "No space left on device", "/runs/x/a.npy")) == \
        "/runs/x/a.npy: No space left on device"
    assert cli.user_message(ValueError("--dim=7: too\n small")) == "--dim=7: too small"
    assert cli.user_message(TypeError("'NoneType' object is not subscriptable")) is None


# ---------------------------------------------------------------------------------------------
# run.py flags, checked before any long work


@pytest.mark.parametrize("flag,value,expected", [
    ("n_folds", 0, "--n_folds=0: must be >= 1"),
    ("n_folds", -2, "--n_folds=-2: must be >= 1"),
    ("n_epochs", 0, "--n_epochs=0: must be >= 1"),
    ("cpu_replicas", 0, "--cpu_replicas=0: must be >= 1"),
    ("dim", 0, "--dim=0: must be >= 1"),
    ("initial_fold", -1, "--initial_fold=-1: must be >= 0"),
])
def test_bad_run_flag_is_a_usage_error_naming_it(flag, value, expected, tmp_path):
    with pytest.raises(cli.UsageError) as caught:
        experiment.make_config(output_dir=str(tmp_path), **{flag: value})
    assert str(caught.value).startswith(expected)


@pytest.mark.parametrize("flag,value,expected", [
    ("lr", 0.0, "--lr=0.0: must be > 0"),
    ("lr", -0.001, "--lr=-0.001: must be > 0"),
    ("lr_factor", 1.5, "--lr_factor=1.5: must be within (0, 1)"),
    ("label_smoothing", 1.0, "--label_smoothing=1.0: must be within [0, 1)"),
    ("buffer_size", 0, "--buffer_size=0: must be >= 1"),
    ("tpu_timeout_s", 0.0, "--tpu_timeout_s=0.0: must be > 0"),
    ("lr_patience", -1, "--lr_patience=-1: must be >= 0"),
    ("mixup_alpha", 0.0, "--mixup_alpha=0.0: must be > 0"),
    ("verbose", 3, "--verbose=3: must be within [0, 2]"),
])
def test_every_numeric_flag_out_of_range_is_refused_when_configured(flag, value, expected, tmp_path):
    with pytest.raises(cli.UsageError) as caught:
        experiment.make_config(output_dir=str(tmp_path), **{flag: value})
    assert str(caught.value).startswith(expected)


def test_every_numeric_run_flag_has_a_range():
    numeric = {n for n in experiment.OUR_FLAGS if experiment.FLAGS[n].flag_type() in ("int", "float")}
    assert numeric == set(experiment.FLAG_RANGES)


def test_output_dir_that_is_a_file_is_named(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(cli.UsageError, match=f"--output_dir={afile}: is a file, not a directory"):
        experiment.make_config(output_dir=str(afile))


def _zoo(name):
    path = os.path.join(ROOT, "experiments", name, "run.py")
    spec = importlib.util.spec_from_file_location(f"zoo_{name.replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dim_too_small_for_the_backbone_names_dim(cv_dir, single_dir, tmp_path):
    zoo = _zoo("run-20261121-1300-cnn-1ch")
    cfg = _cfg(cv_dir, single_dir, tmp_path / "run", dim=7, backbone="MobileNetV3Small", job="train",
               dataset_kind=zoo.DEFAULTS["dataset_kind"])  # its records' parser
    with pytest.raises(cli.UsageError, match=r"--dim=7 --backbone=MobileNetV3Small: the model cannot be built"):
        experiment.run(cfg, zoo.init_model, experiment.parse_by_kind)
    assert run_card.read_card(str(tmp_path / "run"))["status"] == "failed"


def test_n_classes_that_do_not_match_the_labels_fail_before_training(cv_dir, single_dir, tmp_path):
    n_labels = len(np.load(os.path.join(cv_dir, "unique_labels_sorted.npy")))
    cfg = _cfg(cv_dir, single_dir, tmp_path / "run", task="classification", n_classes=3, job="train")
    with pytest.raises(cli.UsageError, match=rf"--n_classes=3: the data has {n_labels} classes .*"
                                             rf"unique_labels_sorted.npy\); use 0 or {n_labels}"):
        _run(cfg)
    assert not (tmp_path / "run" / "run_card.json").exists()  # nothing started


def test_a_run_whose_every_epoch_is_nan_says_it_diverged(cv_dir, single_dir, tmp_path):
    cfg = _cfg(cv_dir, single_dir, tmp_path / "run", lr=1e30, n_folds=1, job="train_val_score")
    with pytest.raises(ValueError, match=r"fold 0: training diverged: val_rmse_rounded was NaN or infinite after every one "
                                         r"of 1 epoch\(s\), so there is no checkpoint \(try a lower --lr=1e\+30\)"):
        _run(cfg)
    card = run_card.read_card(str(tmp_path / "run"))
    assert card["status"] == "failed" and "diverged" in card["error"]


def test_corrupt_shard_is_named_from_the_manifest_checksums(cv_dir, single_dir, tmp_path):
    damaged = tmp_path / "records"
    shutil.copytree(single_dir, damaged)
    shard = records.record_files(str(damaged), [1])[0]
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a record: its CRC fails
    open(shard, "wb").write(bytes(data))
    with pytest.raises(ValueError) as caught:
        _run(_cfg(cv_dir, str(damaged), tmp_path / "run", n_folds=1, job="train"))
    assert str(caught.value).startswith(f"corrupt record file(s): {shard} (damaged); rebuild with "
                                        "data_prep/create_tfrecords.py")


def test_records_built_from_another_split_than_data_dirs_csvs_are_refused_before_training(cv_dir, single_dir,
                                                                                          tmp_path):
    other = tmp_path / "other-split"
    shutil.copytree(cv_dir, other, ignore=shutil.ignore_patterns("train", "test"))
    train_cv = pd.read_csv(other / "train_cv.csv")
    train_cv["fold_id"] = train_cv["fold_id"].replace({0: 1, 1: 0})  # folds 0 and 1 swapped
    train_cv.to_csv(other / "train_cv.csv", index=False)
    with pytest.raises(ValueError) as caught:
        _run(_cfg(str(other), single_dir, tmp_path / "run", n_folds=1, job="train"))
    assert str(caught.value).startswith(f"{single_dir} was built from another train_cv.csv (sha256 ")
    assert f"than {other / 'train_cv.csv'} (sha256 " in str(caught.value)
    assert not (tmp_path / "run" / "run_card.json").exists()  # before any work


@pytest.mark.parametrize("write", [
    lambda path: np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True),  # pickled
    lambda path: np.savetxt(path, np.arange(3.0)),  # text under a .npy name
], ids=["pickled", "text"])
def test_a_pickled_or_text_npy_in_a_runs_preds_is_named(write, tmp_path):
    preds = tmp_path / "preds"
    preds.mkdir()
    np.save(preds / "ids_val_fold_0.npy", np.array(["a_000", "a_001", "a_002"]))
    bad = preds / "y_pred_val_fold_0_tta_0.npy"
    write(str(bad))
    with pytest.raises(ValueError) as caught:
        scoring.load_predictions(str(preds), "val", range(1), 0)
    message = cli.user_message(caught.value)
    assert message.startswith(f"{bad}: not a plain .npy array (") and "allow_pickle=False" in message


def test_imagenet_weights_that_cannot_be_downloaded_are_one_line_before_any_work(cv_dir, single_dir, tmp_path):
    from tpuflow.training import models
    try:
        models.check_weights("imagenet", "EfficientNetB0")
    except ValueError:
        pass
    else:
        pytest.skip("ImageNet weights can be downloaded here (network or Keras cache)")
    with pytest.raises(ValueError) as caught:  # the tiny model uses no backbone: refused before any work all the same
        _run(_cfg(cv_dir, single_dir, tmp_path / "run", weights="imagenet", backbone="EfficientNetB0"))
    line = cli.user_message(caught.value)
    assert line.startswith("--weights=imagenet: the ImageNet weights of EfficientNetB0 cannot be downloaded")
    assert "--weights=/path/to/file.h5" in line
    assert not (tmp_path / "run" / "run_card.json").exists()


@pytest.mark.parametrize("name,content", [("notes.weights.h5", b"not hdf5 at all"),
                                          ("backbone.npy", b"\x89HDF\r\n\x1a\n but no weights extension")])
def test_a_weights_file_that_is_not_a_weights_file_names_the_flag_and_file(name, content, cv_dir, single_dir,
                                                                           tmp_path):
    bad = tmp_path / name
    bad.write_bytes(content)
    with pytest.raises(ValueError) as caught:
        _run(_cfg(cv_dir, single_dir, tmp_path / "run", weights=str(bad), job="train"))
    assert cli.user_message(caught.value).startswith(f"--weights={bad}: not a weights file")
    assert not (tmp_path / "run" / "run_card.json").exists()  # before any work


def test_an_unreachable_tpu_is_one_line_naming_the_flag(cv_dir, single_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"grpc://127.0.0.1:{s.getsockname()[1]}"  # closed once the socket is
    with pytest.raises(OSError) as caught:  # an I/O error the user can act on: one line, exit 1
        _run(_cfg(cv_dir, single_dir, tmp_path / "run", tpu_ip_or_name=address, tpu_timeout_s=2.0))
    assert cli.user_message(caught.value).startswith(f"--tpu_ip_or_name={address}: TPU address ")


def test_prediction_ids_that_do_not_match_the_fold_are_shown():
    train_cv = pd.DataFrame({"image_id": ["a_1", "a_2", "b_1", "c_1"], "wind_speed": [30, 40, 50, 60],
                             "fold_id": [0, 0, 1, 1]})
    preds = {0: (np.array(["a_1", "z_9"]), np.zeros((1, 2)))}
    with pytest.raises(ValueError) as caught:
        scoring.cv_scores(train_cv, preds)
    assert str(caught.value) == ("val predictions of fold 0 (ids_val_fold_0.npy, 2 ids) do not match fold 0 of "
                                 "train_cv.csv (2 ids): 1 predicted id(s) not in the fold, e.g. ['z_9']; 1 id(s) "
                                 "of the fold not predicted, e.g. ['a_2']; were the records built from another "
                                 "split?")


def test_tools_print_one_line_errors_naming_the_culprit(tmp_path):
    """adopt_records and export_model: data errors exit 1, usage errors 2, no traceback, no TF logs."""
    not_records = tmp_path / "not-records"
    not_records.mkdir()
    (not_records / "notes.txt").write_text("x")
    adopt = os.path.join(ROOT, "tools", "adopt_records.py")
    data = subprocess.run([sys.executable, adopt, f"--tfrec_dir={not_records}", "--spec=single"],
                          capture_output=True, text=True, env=ENV)
    assert data.returncode == 1, data.stderr[-3000:]
    assert _stderr_line(data) == (f"adopt_records.py: error: {not_records}: no fold.<k>.tfrecord* or "
                                  "test.tfrecord* files")
    usage = subprocess.run([sys.executable, adopt, f"--tfrec_dir={not_records}", "--spec=nonsense"],
                           capture_output=True, text=True, env=ENV)
    assert usage.returncode == 2, usage.stderr[-3000:]
    assert _stderr_line(usage).startswith("adopt_records.py: error: --spec=nonsense: ")
    missing = tmp_path / "no-such-run"
    export = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export_model.py"), f"--run_dir={missing}",
                             f"--export_dir={tmp_path / 'serving'}"], capture_output=True, text=True, env=ENV)
    assert export.returncode == 1, export.stderr[-3000:]
    line = _stderr_line(export)
    assert line.startswith("export_model.py: error: ") and str(missing) in line
    debug = subprocess.run([*export.args, "--debug"], capture_output=True, text=True, env=ENV)
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
