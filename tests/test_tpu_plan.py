"""tools/tpu_plan.py: the run's own steps AOT-compiled for TPU targets by JAX's TPU compiler
(libtpu, the `tpu-aot` extra) on this CPU; and libtpu installed changes nothing for the rest.

Each plan runs the tool in its own process (Keras' JAX backend, JAX on the CPU); libtpu is never
started as a device, so no lock file is taken and xdist workers can compile side by side.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tpuflow import backend
from tpuflow.prep import shard_names, store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "tpu_plan.py")
TINY = os.path.join(ROOT, "tests", "tiny_experiment.py")
TINY_SEQUENCE = os.path.join(ROOT, "tests", "tiny_sequence_experiment.py")
needs_compiler = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                    reason="JAX's TPU compiler not installed (the tpu-aot extra)")


@pytest.fixture(scope="module")
def store_dir(cv_dir, tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("store"))
    store.build_store(cv_dir, root, shards=2, workers=2, log=lambda m: None)
    return os.path.join(root, shard_names.STORE_DIR)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", *backend.TPU_ENV)}
    return {**env, "PYTHONPATH": os.path.join(ROOT, "lib"), "TF_CPP_MIN_LOG_LEVEL": "3"}


def plan(tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "plan.json"
    done = subprocess.run([sys.executable, TOOL, f"--json={out}", "--weights=None", *flags],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    entries = json.loads(out.read_text())["targets"] if out.exists() else []
    return done, entries


@needs_compiler
def test_a_small_model_fits_v5e_and_v3_with_one_gradient_all_reduce(tmp_path, kind_dirs, cv_dir):
    """And a target libtpu cannot describe (v5e-1) is one line for that target, the others planned."""
    done, entries = plan(tmp_path, f"--experiment={TINY}", f"--data_dir={cv_dir}",
                         f"--data_tfrec_dir={kind_dirs['single']}", "--dim=16", "--batch_size=64",
                         "--target=v5e-1,v5e-4,v3-8")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    by_name = {e["target"]: e for e in entries}
    assert by_name["v5e-1"]["error"].startswith("--target=v5e-1: libtpu cannot describe topology v5e:1x1 (")
    assert "\n" not in by_name["v5e-1"]["error"]
    v5e, v3 = by_name["v5e-4"], by_name["v3-8"]
    assert (v5e["chips"], v5e["devices"], v3["chips"], v3["devices"]) == (4, 4, 4, 8)  # a v3 chip: 2 cores
    for e in (v5e, v3):
        assert e["fits"] and e["largest_fitting_global_batch"] == e["global_batch"] == 64
        assert 0 < e["hbm_needed_bytes"] < e["hbm_bytes_per_chip"]
        assert e["precision"] == "mixed_bfloat16"  # --mixed_precision=auto on a TPU
        assert e["gradient_all_reduces"] == 1 and e["batch_moving_collectives"] == 0, e["collectives"]
        assert e["flops_per_step"] > 0 and e["est_step_s"] > 0
        n_train = e["train_examples"]
        assert e["est_epoch_s"] == pytest.approx(n_train // 64 * e["est_step_s"])
        assert e["est_job_s"] > 5 * 15 * e["est_epoch_s"]  # 5 folds x 15 epochs, and TTA predictions
        assert e["input_ex_per_s_needed"] == pytest.approx(64 / e["est_step_s"])
    assert "v5e-4" in done.stdout and "v3-8" in done.stdout  # the table
    assert not any(p.name not in ("plan.json",) for p in tmp_path.iterdir())  # nothing else written


HUNGRY = """
from tpuflow.training import experiment, models
import keras


def init_model(cfg):  # cheap to compile, large activations: memory grows fast with the batch
    frame = keras.Input((cfg.dim, cfg.dim, 1))
    x = keras.layers.Conv2D(8192, 1, activation="relu")(frame)
    return keras.Model(frame, models.head(keras.layers.GlobalAveragePooling2D()(x), cfg.task, cfg.n_classes))


if __name__ == "__main__":
    experiment.main(init_model, dataset_kind="single", weights=None)
"""


@needs_compiler
def test_an_absurd_batch_is_refused_naming_the_largest_that_fits(tmp_path, kind_dirs, cv_dir):
    run_py = tmp_path / "hungry" / "run.py"
    run_py.parent.mkdir()
    run_py.write_text(HUNGRY)
    done, entries = plan(tmp_path, f"--experiment={run_py.parent}", f"--data_dir={cv_dir}",
                         f"--data_tfrec_dir={kind_dirs['single']}", "--dim=16", "--batch_size=1048576",
                         "--aug_prob=0", "--tta_number=0", "--target=v5e-4")
    assert done.returncode == 0, done.stderr[-2000:]
    (e,) = entries
    largest = e["largest_fitting_global_batch"]
    assert not e["fits"] and 1000 < largest < 1048576 and largest % 4 == 0
    assert f"global batch 1048576 does not fit 16 GiB of HBM per chip; the largest that fits is {largest}" in done.stdout
    assert e["figures_at_global_batch"] == largest and e["hbm_needed_bytes"] <= e["hbm_bytes_per_chip"]
    assert e["hbm_needed_bytes"] > 0.9 * e["hbm_bytes_per_chip"]  # within the search's resolution of full
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hungry", "plan.json"]  # no run dir written


@needs_compiler
def test_a_sequence_model_with_cutmix_and_tta_assembled_from_a_frame_store(tmp_path, store_dir, cv_dir):
    rates = tmp_path / "rates.json"
    rates.write_text(json.dumps({"cores": 2, "rates": {"sequence:n6:s1": 100.0}}))
    done, entries = plan(tmp_path, f"--experiment={TINY_SEQUENCE}", f"--data_dir={cv_dir}",
                         f"--frame_store={store_dir}", "--assemble=sequence:n6:s1", "--dim=16", "--batch_size=32",
                         "--mixup_prob=0.5", "--mixup_mode=cutmix", "--tta=d4", "--target=v5e-4",
                         f"--host_rates={rates}")
    assert done.returncode == 0, done.stderr[-2000:]
    (e,) = entries
    assert e["fits"] and e["tta_views"] == 8 and e["tta_batch"] == 4  # 32 // 8 views, whole per device
    assert e["est_step_s"] > 0 and e["est_predict_step_s"] > 0 and e["est_job_s"] > 0
    assert e["gradient_all_reduces"] == 1 and e["batch_moving_collectives"] == 0, e["collectives"]
    assert e["input_spec"] == "sequence:n6:s1" and e["host_ex_per_s_per_core"] == 100.0
    assert e["host_cores_needed"] == -(-e["input_ex_per_s_needed"] // 100)


def one_layer_run_py(layer: str, name: str, preamble: str = "") -> str:
    """A run.py whose model is a pooled frame beside one custom layer `layer` (its class source),
    named `name`: a model a TPU target cannot compile, for the error-naming tests."""
    cls = layer.split("class ", 1)[1].split("(", 1)[0]
    return f"""
from tpuflow.training import experiment, models
import keras
{preamble}
{layer}

def init_model(cfg):
    frame = keras.Input((cfg.dim, cfg.dim, 1))
    x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(frame), {cls}(name="{name}")(frame)])
    return keras.Model(frame, models.head(x, cfg.task, cfg.n_classes))


if __name__ == "__main__":
    experiment.main(init_model, dataset_kind="single", weights=None)
"""


NO_TPU_KERNEL = one_layer_run_py("""
class Eigen(keras.layers.Layer):  # a nonsymmetric eigendecomposition: CPU only in JAX
    def call(self, x):
        return keras.ops.real(keras.ops.eig(x[:, :4, :4, 0])[0])
""", "my_eigen")


@needs_compiler
def test_a_layer_the_target_cannot_compile_is_named(tmp_path, kind_dirs, cv_dir):
    run_py = tmp_path / "eigen" / "run.py"
    run_py.parent.mkdir()
    run_py.write_text(NO_TPU_KERNEL)
    done, entries = plan(tmp_path, f"--experiment={run_py}", f"--data_dir={cv_dir}",
                         f"--data_tfrec_dir={kind_dirs['single']}", "--dim=16", "--batch_size=16", "--target=v5e-4")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (e,) = entries
    assert e["error"].startswith("--target=v5e-4: the training step does not compile for v5e:2x2: "
                                 "functional/my_eigen: ") and "'eig'" in e["error"], e["error"]


NO_TPU_LOWERING = one_layer_run_py("""
class IntGram(keras.layers.Layer):
    def call(self, x):
        q = keras.ops.cast(x[:, :4, :4, 0] * 255, "int64")
        return keras.ops.cast(keras.ops.matmul(q, q), "float32")[:, 0, :]
""", "my_gram", preamble="""import jax
jax.config.update("jax_enable_x64", True)  # int64 stays int64: XLA:TPU cannot rewrite an s64 matmul
""")


@needs_compiler
def test_an_op_the_tpu_compiler_cannot_lower_is_named_by_its_layer(tmp_path, kind_dirs, cv_dir):
    """JAX lowers the s64 matmul; the TPU compiler refuses it, naming the HLO with its op_name
    metadata, from which the layer is named (the path the eig test above does not take)."""
    run_py = tmp_path / "gram" / "run.py"
    run_py.parent.mkdir()
    run_py.write_text(NO_TPU_LOWERING)
    done, entries = plan(tmp_path, f"--experiment={run_py}", f"--data_dir={cv_dir}",
                         f"--data_tfrec_dir={kind_dirs['single']}", "--dim=16", "--batch_size=16", "--target=v5e-4")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (e,) = entries
    assert e["error"].startswith("--target=v5e-4: the training step does not compile for v5e:2x2: "
                                 "functional/my_gram/dot_general: UNIMPLEMENTED: "), e["error"]
    assert "\n" not in e["error"]


def test_an_unknown_target_is_named_with_the_known_ones(tmp_path):
    done, _ = plan(tmp_path, f"--experiment={TINY}", "--target=v5e-8,v9-1")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--target=v5e-8,v9-1: unknown target(s) ['v9-1']; known: v3-8, v3-32, v4-8" in done.stderr
    assert list(tmp_path.iterdir()) == []


def _without(tmp_path, absent: str) -> tuple[dict, str]:
    """(environment where `absent` cannot be imported, the line naming the extra): a
    `sitecustomize` ahead on the path puts None in `sys.modules` for it, as Python does for a
    blocked module, so `import` fails and `importlib.util.find_spec` returns None (whether it is
    installed here or not)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(f"import sys\nsys.modules[{absent!r}] = None\n")
    missing = " and ".join(m for m in ("jax", "libtpu") if m == absent or importlib.util.find_spec(m) is None)
    return ({**_env(), "PYTHONPATH": os.pathsep.join([str(blocker), os.path.join(ROOT, "lib")])},
            f"tpu_plan.py: error: {missing} not installed: the plan needs JAX's TPU compiler; pip install '.[tpu-aot]'")


@pytest.mark.parametrize("absent", ["libtpu", "jax"])
def test_a_missing_compiler_names_the_extra_to_install(tmp_path, absent):
    env, line = _without(tmp_path, absent)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = subprocess.run([sys.executable, TOOL, f"--experiment={TINY}", "--target=v5e-4", f"--json={cwd / 'p.json'}"],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert [ln for ln in done.stderr.splitlines() if "error" in ln] == [line + " (jax[tpu])"]
    assert list(cwd.iterdir()) == []  # nothing written


def test_the_doctors_preflight_without_the_compiler_names_the_extra(tmp_path):
    """The doctor reports the plan's own line (checked without jax; without libtpu it is the
    same path: the plan above says which is missing)."""
    env, line = _without(tmp_path, "jax")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    doctor = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "doctor.py"), f"--experiment={TINY}",
                             "--target=v5e-4"], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert doctor.returncode == 1 and "Traceback" not in doctor.stderr, doctor.stderr[-2000:]
    assert f"[FAIL] tpu plan: tools/tpu_plan.py failed (exit 1): {line}" in doctor.stdout
    assert "VERDICT: NOT READY (1 problem(s))" in doctor.stdout
    assert list(cwd.iterdir()) == []  # nothing written


def test_importing_tpuflow_where_libtpu_is_installed_starts_nothing():
    """Importing tpuflow chooses nothing and imports no JAX; Keras' import chooses, and with no
    TPU's signs the backend is TensorFlow and no JAX backend is started (libtpu not started, its
    lock file not taken), however libtpu got installed. (Keras 3 itself imports jax, and jax finds
    the libtpu module, under its TensorFlow backend wherever jax is installed: that starts nothing.)"""
    code = ("import sys, tpuflow; from tpuflow import backend; print(backend.chosen, 'jax' in sys.modules); "
            "import keras; from jax._src import xla_bridge; "
            "print(backend.chosen, keras.backend.backend(), xla_bridge.backends_are_initialized())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.stdout.split() == ["None", "False", "tensorflow", "tensorflow", "False"], done.stderr[-2000:]


def test_tpu_signs_are_the_tpu_variables_or_device_files():
    assert backend.tpu_signs({"TPU_ACCELERATOR_TYPE": "v5litepod-8"}) == "TPU_ACCELERATOR_TYPE"
    assert backend.tpu_signs({}) == (", ".join(p for g in backend.TPU_DEVICE_GLOBS
                                               for p in sorted(__import__("glob").glob(g))[:1]) or None)


@needs_compiler
def test_doctor_with_a_target_is_ready_only_where_the_run_fits(tmp_path, kind_dirs, cv_dir):
    doctor = os.path.join(ROOT, "tools", "doctor.py")
    done = subprocess.run([sys.executable, doctor, f"--experiment={TINY}", f"--data_dir={cv_dir}",
                           f"--data_tfrec_dir={kind_dirs['single']}", "--dim=16", "--batch_size=8", "--weights=None",
                           "--input_batches=1", "--model_steps=1", "--target=v5e-4"],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "[  ok] tpu plan v5e-4: fits: " in done.stdout and "1 gradient all-reduce(s)" in done.stdout
    assert "VERDICT: READY" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_program_without_the_compilers_estimate_is_timed_by_its_roofline():
    """The compiler may give no step time (a negative `optimal_seconds`, seen for an LSTM's
    program; XLA:CPU gives none at all): the roofline of the program's FLOPs and bytes stands in."""
    import jax  # noqa: PLC0415
    from tpuflow.training import tpu_plan  # noqa: PLC0415
    compiled = jax.jit(lambda x: (x @ x).sum()).lower(jax.ShapeDtypeStruct((64, 64), "float32")).compile()
    target = tpu_plan.TARGETS["v3-8"]  # 2 cores share a chip's peak and bandwidth
    program = tpu_plan._program(compiled, target, 2)
    assert program["est_source"] == "roofline" and program["est_step_s"] > 0
    assert program["est_step_s"] == max(program["flops_per_device"] / (target.peak_flops_per_chip / 2),
                                        program["bytes_accessed_per_device"] / (target.hbm_bytes_per_s / 2))
