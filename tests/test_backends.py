"""Keras on JAX or TensorFlow: the backend choice, data parallelism over 2 CPU devices under JAX
(every example predicted exactly once, in record order), checkpoints that cross backends, and
the errors for a bad backend, a TPU that is not there and a checkpoint of another model.

Keras fixes its backend per process, so runs under the other backend are subprocesses."""
import hashlib
import shutil
import socket
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import jax_env
import tiny_experiment
from tpuflow import backend
from tpuflow.inputs import pipeline, records
from tpuflow.training import experiment, export, hosts, runner

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "tiny_experiment.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.pathsep.join(
    [os.path.join(os.path.dirname(HERE), "lib"), HERE, os.environ.get("PYTHONPATH", "")])}
ENV.pop("KERAS_BACKEND", None)


def _run(args, env=None, **kwargs):
    env = env or ENV
    backend_name = "jax" if "--backend=jax" in args or env.get("KERAS_BACKEND") == "jax" else "tensorflow"
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=jax_env.env(env, backend_name), **kwargs)


@pytest.mark.parametrize("argv, environ, expected", [
    ([], {}, ("tensorflow", "auto: no TPU visible to JAX, TensorFlow by default")),
    ([], {"KERAS_BACKEND": "jax"}, ("jax", "KERAS_BACKEND=jax")),
    (["--backend=tensorflow"], {"KERAS_BACKEND": "jax"}, ("tensorflow", "--backend=tensorflow")),
    (["--job=train", "--backend", "jax"], {}, ("jax", "--backend=jax")),
    (["--backend=auto"], {"KERAS_BACKEND": "jax"}, ("jax", "KERAS_BACKEND=jax")),
])
def test_backend_precedence_flag_then_environment_then_default(argv, environ, expected):
    assert backend.resolve(argv, environ) == expected


@pytest.mark.parametrize("argv, environ, named", [
    (["--backend=torch"], {}, "--backend=torch: unknown backend; choose one of auto, jax, tensorflow"),
    ([], {"KERAS_BACKEND": "torch"}, "KERAS_BACKEND=torch: tpuflow runs on jax or tensorflow"),
])
def test_unknown_backend_is_named_with_the_choices(argv, environ, named):
    with pytest.raises(backend.BackendError, match=named):
        backend.resolve(argv, environ)


def test_unknown_backend_fails_in_one_line_before_any_work(tmp_path):
    started = time.time()
    proc = _run([TINY, "--backend=torch", f"--output_dir={tmp_path}"])
    assert proc.returncode != 0
    assert "ERROR: --backend=torch: unknown backend; choose one of auto, jax, tensorflow" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.listdir(tmp_path)
    assert time.time() - started < 30


def test_tpu_asked_for_but_not_seen_by_jax_fails_naming_backend_and_devices(cv_dir, single_dir, tmp_path):
    out = tmp_path / "run"
    started = time.time()
    proc = _run([TINY, "--backend=jax", "--tpu_ip_or_name=local", "--job=train", "--quick",
                 f"--data_dir={cv_dir}", f"--data_tfrec_dir={single_dir}", f"--output_dir={out}"])
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert ("tiny_experiment.py: error: --tpu_ip_or_name=local: the jax backend sees no TPU, only 1 cpu device(s) "
            "(jax ") in proc.stderr
    assert time.time() - started < 60  # start-up and imports only: no model was built
    assert not list(out.glob("*.weights.h5"))


# Runs under JAX with 2 CPU devices (XLA_FLAGS before JAX starts: a subprocess).
DATA_PARALLEL_CHECK = r"""
import numpy as np, keras, tensorflow as tf
import tiny_experiment
from tpuflow.inputs import ondevice, pipeline, records; from tpuflow.training import experiment, hosts, runtime

assert keras.backend.backend() == "jax"
try:
    runtime.jax_placement("local")
    raise AssertionError("a TPU was found on a CPU machine")
except runtime.TPUUnreachableError as err:
    assert "the jax backend sees no TPU, only 2 cpu device(s)" in str(err), err
fallback = runtime.jax_placement("local", tpu_fallback=True)  # warns and goes on with the CPUs
assert (fallback.platform, fallback.replicas, fallback.name) == ("cpu", 2, "DataParallel"), fallback

settings = dict(data_dir={cv!r}, data_tfrec_dir={rec!r}, output_dir={out!r}, quick=True, dim=16, cpu_replicas=2,
                tta_number=0, verbose=0, n_folds=1, job="train_val")
try:  # a global batch that does not split over the devices is an error naming both numbers
    experiment.run(experiment.make_config(batch_size=5, **settings), tiny_experiment.init_model,
                   tiny_experiment.parse_example)
    raise AssertionError("batch 5 on 2 devices was accepted")
except ValueError as err:
    assert "--batch_size=5 (global) is not divisible by the 2 replicas" in str(err), err
cfg = experiment.make_config(batch_size=3, batch_size_per_replica=True, mixup_prob=1.0, **settings)  # per-device blocks
cfg = experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)["config"]
assert cfg.global_batch_size == 6, cfg.global_batch_size
distribution = keras.distribution.distribution()
assert isinstance(distribution, keras.distribution.DataParallel), distribution
assert distribution.device_mesh.devices.size == 2

# Exactly once, in record order: a weight-free model whose output identifies the example.
inp = keras.Input((16, 16, 1))
probe = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))
predictor = ondevice.tta_model(probe, ["orig", "flip_lr", "rot90"])  # views on the device
parse = lambda s: tiny_experiment.parse_example(s, cfg)
files = records.record_files({rec!r}, [0])
ids = records.read_ids(files)
assert len(ids) % 6, "choose a batch that does not divide the fold"
pred = hosts.predict(predictor, pipeline.predict_dataset(files, parse, cfg.global_batch_size, len(ids)),
                     cfg.global_batch_size)[:len(ids) * 3].reshape(len(ids), 3)  # the path predict_split takes
expected = np.array([float(tf.reduce_mean(tf.cast(parse(s)[0], tf.float32))) for s in tf.data.TFRecordDataset(files)])
np.testing.assert_allclose(pred, np.repeat(expected[:, None], 3, axis=1), rtol=1e-5)  # mean: every view alike
saved = np.load({out!r} + "/preds/y_pred_val_fold_0_tta_0.npy")
assert saved.shape == (len(ids), 1), saved.shape
print("DATA PARALLEL OK")
"""


def test_jax_data_parallel_over_two_cpu_devices_predicts_every_example_once(cv_dir, single_dir, tmp_path):
    script = DATA_PARALLEL_CHECK.format(cv=cv_dir, rec=single_dir, out=str(tmp_path / "run"))
    env = {**ENV, "KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = _run(["-c", script], env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "DATA PARALLEL OK" in proc.stdout
    assert "Backend jax (KERAS_BACKEND=jax): 2 CPU device(s) in 1 process(es) (DataParallel)" in proc.stdout


@pytest.fixture(scope="module")
def trained(cv_dir, single_dir, tmp_path_factory):
    """One fold of the tiny experiment trained and predicted under each backend: {backend: run dir}."""
    runs = {}
    for name in ("jax", "tensorflow"):
        out = tmp_path_factory.mktemp(f"trained_{name}") / "run"
        proc = _run([TINY, f"--backend={name}", "--job=train_val", "--quick", "--n_folds=1", "--tta_number=1",
                     f"--data_dir={cv_dir}", f"--data_tfrec_dir={single_dir}", f"--output_dir={out}"])
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = out
    return runs


@pytest.mark.parametrize("trained_under, predicted_under", [("jax", "tensorflow"), ("tensorflow", "jax")])
def test_checkpoint_trained_under_one_backend_predicts_the_same_under_the_other(
        trained, trained_under, predicted_under, cv_dir, single_dir, tmp_path):
    out = trained[trained_under]
    preds = tmp_path / "preds"
    proc = _run([TINY, f"--backend={predicted_under}", "--job=val", "--quick", "--n_folds=1", "--tta_number=1",
                 f"--data_dir={cv_dir}", f"--data_tfrec_dir={single_dir}", f"--output_dir={out}",
                 f"--data_preds_dir={preds}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"Backend {predicted_under}" in proc.stdout
    for t in (0, 1):
        name = f"y_pred_val_fold_0_tta_{t}.npy"
        np.testing.assert_allclose(np.load(preds / name), np.load(out / "preds" / name), rtol=1e-4, atol=1e-3)
    assert sorted(np.load(preds / "ids_val_fold_0.npy").tolist()) == sorted(records.read_ids(
        records.record_files(single_dir, [0])).tolist())


def test_jax_best_checkpoint_is_orbax_and_exports_under_tensorflow(trained, single_dir, tmp_path):
    """Under JAX the best checkpoint is an Orbax directory; `tools/export_model.py` (TensorFlow)
    converts it on load into a SavedModel serving the JAX run's predictions."""
    from test_export import _serve  # noqa: PLC0415
    jax_run, tf_run = trained["jax"], trained["tensorflow"]
    assert [p.name for p in jax_run.glob("model-best-f0-*")][0].endswith(".orbax")
    assert [p.name for p in tf_run.glob("model-best-f0-*")][0].endswith(".weights.h5")
    info = export.export_run(str(jax_run), str(tmp_path / "serving"), views=["orig"], run_py=TINY)
    assert info["checkpoints"] == [str(runner.best_checkpoint(str(jax_run), 0))]
    files = records.record_files(single_dir, [0])
    served = _serve(tmp_path / "serving", files, tmp_path / "served.npy")
    order = {i: n for n, i in enumerate(np.load(jax_run / "preds" / "ids_val_fold_0.npy").tolist())}
    predicted = np.load(jax_run / "preds" / "y_pred_val_fold_0_tta_0.npy")[:, 0]
    expected = predicted[[order[i] for i in records.read_ids(files).tolist()]]
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-3)


def test_checkpoint_of_another_model_is_named_with_both_shapes_and_nothing_is_overwritten(
        trained, cv_dir, single_dir):
    out = trained["jax"]
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), job="val",
                                 quick=True, n_folds=1, tta_number=1, verbose=0, dim=16,
                                 task="classification")  # a head of n_classes outputs, not 1
    with pytest.raises(experiment.cli.UsageError, match=r"--task=classification \(trained with regression\)"):
        experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)  # the run card says so
    # Checkpoints brought from elsewhere (no run card or config.json to compare with): Keras' error, named.
    out = out.parent / "copied"
    shutil.copytree(trained["jax"], out)
    (out / "run_card.json").unlink()
    (out / "config.json").unlink()
    checkpoint = runner.best_checkpoint(str(out), 0)
    before = {out / p.relative_to(trained["jax"]): h for p, h in before.items()
              if p.name not in ("run_card.json", "config.json")}
    with pytest.raises(runner.CheckpointMismatch) as err:
        experiment.run(cfg.replace(output_dir=str(out), data_preds_dir=str(out / "preds")),
                       tiny_experiment.init_model, tiny_experiment.parse_example)
    message = str(err.value)
    assert message.startswith(f"{checkpoint}: saved from a model of another shape: ")
    n_classes = len(np.load(os.path.join(cv_dir, "unique_labels_sorted.npy")))  # as the run resolved it
    assert f"is (4, {n_classes}) in this model but (4, 1) in the checkpoint" in message
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()
             and p.name != "run_card.json" and p.name != "config.json"}
    assert after == {p: h for p, h in before.items() if p.name not in ("run_card.json", "config.json")}


def test_each_host_reads_its_own_share_of_the_training_shards(single_dir):
    files = records.record_files(single_dir, [1, 2, 3, 4])  # fold 0's training files: 8 shards
    shares = [pipeline.host_files(files, i, 3) for i in range(3)]
    assert sorted(sum(shares, [])) == sorted(files) and all(shares)
    ids = [records.read_ids(share).tolist() for share in shares]
    assert sorted(sum(ids, [])) == sorted(records.read_ids(files).tolist())  # each example on one host
    with pytest.raises(ValueError, match="2 training record file.s. cannot be shared by 3 hosts"):
        pipeline.host_files(files[:2], 0, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_jax_processes_train_one_model_and_predict_every_example_once(cv_dir, single_dir, tmp_path):
    """Two hosts on 127.0.0.1 (JAX's multi-process CPU collectives), one CPU device each: one
    data-parallel model, each host reading its share of the shards; both hosts end with the same
    weights and the predictions of a single-process run of the same checkpoint. They share one
    --output_dir: host 0 writes (and locks) it, host 1 writes its copy under it, never the same files."""
    port = _free_port()
    procs = []
    for index in range(2):
        env = jax_env.env({**ENV, "KERAS_DISTRIBUTION_JOB_ADDRESSES": f"127.0.0.1:{port}",
                           "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": str(index)}, "jax")
        procs.append(subprocess.Popen(
            [sys.executable, TINY, "--backend=jax", "--distributed", "--job=train_val", "--n_folds=1", "--n_epochs=1",
             "--steps_per_epoch=2", "--buffer_size=64", "--tta_number=1", "--batch_size=6", f"--data_dir={cv_dir}", f"--data_tfrec_dir={single_dir}",
             f"--output_dir={tmp_path / 'run'}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
        assert "Backend jax (--backend=jax): 2 CPU device(s) in 2 process(es) (DataParallel)" in log
        assert "global batch 6 = 3 per device" in log
    host0, host1 = tmp_path / "run", tmp_path / "run" / "host_1"
    assert (host0 / "run_card.json").exists() and (host1 / "run_card.json").exists()
    ids = records.read_ids(records.record_files(single_dir, [0])).tolist()
    assert len(ids) % 6  # the last global batch is padded
    for t in (0, 1):
        name = f"preds/y_pred_val_fold_0_tta_{t}.npy"
        assert np.load(host0 / name).shape == (len(ids), 1)
        np.testing.assert_array_equal(np.load(host0 / name), np.load(host1 / name))
    single = tmp_path / "single_preds"  # the same checkpoint, predicted by one process (TensorFlow here)
    experiment.run(experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(host0),
                                          data_preds_dir=str(single), job="val", n_folds=1, n_epochs=1,
                                          steps_per_epoch=2, buffer_size=64, tta_number=1, verbose=0, dim=16,
                                          batch_size=6),  # the training's settings
                   tiny_experiment.init_model, tiny_experiment.parse_example)
    for t in (0, 1):
        name = f"y_pred_val_fold_0_tta_{t}.npy"
        np.testing.assert_allclose(np.load(single / name), np.load(host0 / "preds" / name), rtol=1e-4, atol=1e-3)


def test_doctor_names_a_missing_tpu_and_says_not_ready():
    proc = _run([os.path.join(os.path.dirname(HERE), "tools", "doctor.py"), "--backend=jax", "--tpu_ip_or_name=local"])
    assert proc.returncode == 1, proc.stdout + proc.stderr[-2000:]
    assert "[  ok] backend: jax (--backend=jax)" in proc.stdout
    assert "[FAIL] devices: TPUUnreachableError: --tpu_ip_or_name=local: the jax backend sees no TPU" in proc.stdout
    assert "[skip] dataset: no --data_tfrec_dir" in proc.stdout
    assert "VERDICT: NOT READY (1 problem(s)): devices: TPUUnreachableError" in proc.stdout
