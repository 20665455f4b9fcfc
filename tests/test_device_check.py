"""The one-call accelerator check (`benchmarks/device_check.py`) where TensorFlow cannot be imported,
as on the lent GPU machines: experiments load, their models build, train a step with the device
augmentation (and mixup) and predict their TTA views, under Keras on JAX, at tiny sizes."""
import glob
import json
import os
import subprocess
import sys

import jax_env
from test_layout import TF_FREE_MODULES, _imports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "device_check.py")
# Imported first in every process (a `sitecustomize` on PYTHONPATH): `import tensorflow` fails.
BLOCKER = '''import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
            raise ImportError("TensorFlow is not installed here (blocked by the test)")
sys.meta_path.insert(0, _NoTensorFlow())
'''


def _env(tmp_path) -> dict:
    site = tmp_path / "no_tensorflow"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join([str(site), os.path.join(ROOT, "lib")])
    return jax_env.env({**os.environ, "PYTHONPATH": path, "KERAS_BACKEND": "jax", "OUT": str(tmp_path / "out"),
                        "TF_CPP_MIN_LOG_LEVEL": "3"}, "jax")


def test_every_experiment_loads_without_tensorflow():
    """What a run.py imports at module level is TensorFlow-free (test_layout follows those modules)."""
    for run_py in sorted(glob.glob(os.path.join(ROOT, "experiments", "*", "run.py"))):
        for imported, lazy, _, line in _imports(run_py):
            where = f"{os.path.relpath(run_py, ROOT)}:{line}"
            assert lazy or imported.split(".")[0] != "tensorflow", where
            assert lazy or not imported.startswith("tpuflow") or imported in TF_FREE_MODULES, \
                f"{where}: imports {imported}, which is not held TensorFlow-free (tests/test_layout.py)"


def test_device_check_tiny_runs_with_tensorflow_blocked(tmp_path):
    env = _env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert blocked.returncode != 0 and "blocked by the test" in blocked.stderr
    (tmp_path / "out").mkdir()
    proc = subprocess.run([sys.executable, SCRIPT, "--tiny", "--experiments=cnn-lstm,cnn-1ch-mixup",
                           "--precisions=mixed_bfloat16", "--steps=1", "--plan_json=" + str(tmp_path / "plan.json")],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "tensorflow not imported" in proc.stdout
    assert "--plan_json=" in proc.stdout  # a missing plan file is a warning, not the end of the check
    results = json.loads((tmp_path / "out" / "device_check.json").read_text())["results"]
    by_name = {r["experiment"].split("-", 3)[-1]: r for r in results}
    assert set(by_name) == {"cnn-lstm", "cnn-1ch-mixup"}
    for name, r in by_name.items():
        assert "error" not in r, r
        assert r["precision"] == "mixed_bfloat16" and r["augmentation"] is True
        assert r["train"]["train_ex_per_s"] > 0 and r["train"]["flops_per_step"] > 0 and r["train"]["aug_s"] > 0
        assert r["tta"]["tta_ex_per_s"] > 0 and r["est_epoch_s"] > 0 and r["peak_tflops"] is None  # a CPU
        assert f"{r['experiment']:34s} mixed_bfloat16  VGG16 32px" in proc.stdout
    assert by_name["cnn-lstm"]["frames"] == 3 and by_name["cnn-lstm"]["mixup"] is None
    assert by_name["cnn-1ch-mixup"]["mixup"] == "mixup"


def test_unknown_experiment_names_the_known_ones(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--experiments=no-such-model"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: --experiments: 'no-such-model' names 0 experiments; known: " in proc.stderr
    assert "run-20261121-1330-cnn-lstm" in proc.stderr
