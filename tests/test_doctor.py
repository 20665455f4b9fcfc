"""tools/doctor.py's host-memory estimate models the pipeline (serialized records in the shuffle
buffer, decoded batches after it, serialized records in the cache), its input-rate check times
the runner's pipeline against the model's step, and a run.py's relative default data paths
resolve against its folder, as `experiment.main` resolves them."""
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

import tiny_experiment
from tpuflow.inputs import pipeline, records
from tpuflow.prep import shard_names, store
from tpuflow.training import experiment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _doctor():
    spec = importlib.util.spec_from_file_location("tpuflow_doctor_tool", os.path.join(ROOT, "tools", "doctor.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


doctor = _doctor()


def test_memory_counts_serialized_records_in_the_buffer_and_the_cache(cv_dir, single_dir, tmp_path):
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(tmp_path), dim=16,
                                 batch_size=8, buffer_size=5, use_cache=True)
    manifest = records.read_manifest(single_dir)
    report = doctor.Report()
    doctor.check_memory(report, cfg, tiny_experiment, manifest)
    (status, name, text), = report.lines
    train = records.record_files(single_dir, [k for k in range(int(manifest["n_folds"])) if k != cfg.initial_fold])
    record_bytes = pipeline.mean_record_bytes(train)
    cache = sum(tf.io.gfile.stat(p).length for p in train)
    assert name == "host memory" and status in (doctor.OK, doctor.SKIP), text
    assert f"shuffle buffer 5 records (--buffer_size=5, at most 1.0 GiB) x {doctor._size(record_bytes)}" in text
    assert f"{doctor.DECODED_BATCHES} decoded batches of 8 x {doctor._size(16 * 16 * 4)}" in text  # float32 1ch
    assert f"serialized training records = {doctor._size(cache)}" in text and "--use_cache" in text


def test_a_run_pys_relative_default_paths_resolve_against_its_folder():
    run_py = os.path.join(ROOT, "experiments", "run-20261121-1300-cnn-1ch", "run.py")
    names = sorted(set(experiment.experiment_defaults(experiment.load_run_py(run_py).DEFAULTS, os.path.dirname(run_py)))
                   | {"output_dir", *experiment.SCRIPT_RELATIVE})
    saved = {n: doctor.FLAGS[n].default for n in names}
    try:
        experiment.apply_tool_defaults([f"--experiment={os.path.relpath(run_py)}"])
        assert doctor.FLAGS["data_dir"].default == os.path.join(ROOT, "data")
        assert doctor.FLAGS["data_tfrec_dir"].default == os.path.join(ROOT, "data",
                                                                      "data-tfrec-single-frames001-step001")
        assert doctor.FLAGS["output_dir"].default == os.path.dirname(run_py)
    finally:
        for name, value in saved.items():
            doctor.FLAGS.set_default(name, value)


def test_help_lists_the_doctors_flags_beside_the_experiments_by_section(tmp_path):
    """The doctor takes a run.py's flags (declared once, in the configuration's sections) and its own."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "lib"), HERE])}
    run_py = os.path.join(ROOT, "experiments", "run-20261121-1330-cnn-lstm", "run.py")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "doctor.py"), f"--experiment={run_py}",
                           "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.index("\nmodel (") < out.index("--dim  (default: 366)") < out.index("\ntraining (")
    assert "--dataset_kind  (default: 'sequence')" in out  # the experiment's default
    assert out.index("\ndoctor.py:\n") < out.index("--experiment  (") < out.index("--model_steps  (default: 3)")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def store_dir(cv_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("store"))
    store.build_store(cv_dir, root, shards=2, workers=1, log=lambda m: None)
    return os.path.join(root, shard_names.STORE_DIR)


@pytest.mark.parametrize("source", ["records", "frame store"])
def test_the_input_rate_check_times_the_runners_pipeline_and_the_models_step(source, cv_dir, single_dir, store_dir,
                                                                             tmp_path):
    """The doctor's "input vs model" line: the experiment's parser over the source the runner would
    read (records or examples assembled from a frame store), against its model's training step."""
    data = ([f"--data_tfrec_dir={single_dir}"] if source == "records" else
            [f"--frame_store={store_dir}", "--assemble=single"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.join(ROOT, "lib"), HERE])}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "doctor.py"),
                           f"--experiment={os.path.join(HERE, 'tiny_experiment.py')}", f"--data_dir={cv_dir}", *data,
                           "--dim=16", "--batch_size=8", "--weights=None", "--input_batches=3", "--model_steps=2",
                           f"--output_dir={tmp_path}"], capture_output=True, text=True, env=env, cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    line = next(line for line in out.splitlines() if "input vs model" in line)
    rates = re.search(r"input ([\d.]+) examples/s, model ([\d.]+) examples/s, ratio ([\d.]+): (\w+)-bound", line)
    assert rates, line
    data_rate, model_rate, ratio = (float(rates.group(i)) for i in (1, 2, 3))
    assert data_rate > 0 and model_rate > 0 and ratio == pytest.approx(data_rate / model_rate, rel=0.05, abs=0.01)
    assert rates.group(4) == ("model" if data_rate >= model_rate else "input")
    assert ("--frame_store" in out) == (source == "frame store") and "VERDICT: READY" in out
