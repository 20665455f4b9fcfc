"""Which Keras backend runs (JAX or TensorFlow), decided before Keras is imported.

Keras fixes its backend when it is first imported, from the `KERAS_BACKEND` environment
variable, so the choice is made then: importing `tpuflow` only arms `choose_before_keras`, which
chooses (`apply`) when Keras or TensorFlow is first imported (`run.py` files import tpuflow before
Keras); importing tpuflow itself probes nothing. Order of precedence:

1. `--backend=jax|tensorflow` on the command line (`auto`, the default, defers to what follows);
2. the `KERAS_BACKEND` environment variable;
3. JAX if JAX sees a TPU (today's TPU VMs run Keras on JAX; TensorFlow there is CPU-only);
4. TensorFlow.

Nothing here imports Keras or TensorFlow; JAX is imported only to look for a TPU, and only when
`libtpu` is installed (otherwise JAX cannot see one) and the machine shows a TPU's signs
(`tpu_signs`): libtpu is also installed where nothing runs on a TPU (the `tpu-aot` extra compiles
for TPUs on a CPU), and asking JAX there would start libtpu, take its lock file and slow every
import.
"""
from __future__ import annotations

import glob
import importlib.abc
import importlib.util
import os
import sys

CHOICES = ("auto", "jax", "tensorflow")
BACKENDS = ("jax", "tensorflow")
FLAG = "--backend"

# Set by `apply`: the backend chosen and why (for the start-up line and the run card).
chosen: str | None = None
reason: str | None = None
_error: "BackendError | None" = None


class BackendError(ValueError):
    """A backend name tpuflow cannot run on, or a choice made too late (Keras already imported)."""


def flag_value(argv: list[str]) -> str | None:
    """The value of the last `--backend=X` / `--backend X` in `argv` (None if absent)."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(FLAG + "="):
            value = arg.split("=", 1)[1]
        elif arg == FLAG and i + 1 < len(argv):
            value = argv[i + 1]
    return value


_JAX_PLATFORMS = {"tpu": "tpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "cpu": "cpu"}


def jax_platform(devices) -> str:
    """'tpu', 'gpu' or 'cpu': JAX's devices' platform, 'cuda' and 'rocm' as 'gpu' (a TPU VM's are all TPU)."""
    return _JAX_PLATFORMS.get(devices[0].platform, devices[0].platform)


TPU_DEVICE_GLOBS = ("/dev/accel*", "/dev/vfio/[0-9]*")  # a TPU VM's chips (v2-v4: accel, v5e on: vfio)
TPU_ENV = ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "TPU_WORKER_ID")  # set on Cloud TPU VMs and Kaggle TPUs


def tpu_signs(environ=None) -> str | None:
    """What says this machine may have a TPU (a device file or a TPU variable), or None; cheap:
    nothing is started."""
    environ = os.environ if environ is None else environ
    found = [v for v in TPU_ENV if environ.get(v)] + [p for g in TPU_DEVICE_GLOBS for p in sorted(glob.glob(g))[:1]]
    return ", ".join(found) or None


def jax_sees_tpu() -> bool:
    """True if JAX is installed with libtpu, the machine shows a TPU's signs and JAX lists TPU
    devices (imports JAX only then)."""
    if importlib.util.find_spec("jax") is None or importlib.util.find_spec("libtpu") is None:
        return False
    if not tpu_signs():  # libtpu without a TPU (the tpu-aot compiler): never start it
        return False
    import jax  # noqa: PLC0415 (only where a TPU is possible)
    try:
        return jax_platform(jax.devices()) == "tpu"
    except RuntimeError:  # libtpu present but no TPU attached (or held by another process)
        return False


def tpu_compiler_missing() -> str | None:
    """What to install for JAX's TPU compiler (jax and libtpu: the `tpu-aot` extra), in one line;
    None when both are there."""
    missing = [m for m in ("jax", "libtpu") if importlib.util.find_spec(m) is None]
    return (f"{' and '.join(missing)} not installed: the plan needs JAX's TPU compiler; "
            "pip install '.[tpu-aot]' (jax[tpu])") if missing else None


def resolve(argv: list[str], environ: dict) -> tuple[str, str]:
    """(backend, reason) from the flag, the environment and the machine; BackendError if unknown."""
    flag = flag_value(argv)
    if flag is not None and flag not in CHOICES:
        raise BackendError(f"{FLAG}={flag}: unknown backend; choose one of {', '.join(CHOICES)}")
    if flag in BACKENDS:
        return flag, f"{FLAG}={flag}"
    env = environ.get("KERAS_BACKEND")
    if env:
        if env not in BACKENDS:
            raise BackendError(f"KERAS_BACKEND={env}: tpuflow runs on {' or '.join(BACKENDS)}; "
                               f"set KERAS_BACKEND or pass {FLAG}={'|'.join(CHOICES)}")
        return env, f"KERAS_BACKEND={env}"
    if jax_sees_tpu():
        return "jax", "auto: JAX sees a TPU"
    return "tensorflow", "auto: no TPU visible to JAX, TensorFlow by default"


def apply(argv: list[str] | None = None) -> None:
    """Resolves the backend from `argv` (default: sys.argv) and the environment and sets
    `KERAS_BACKEND` for Keras to read. An error is kept for `require` (so that tools that never
    load Keras, e.g. the leaderboard, still start); Keras imported earlier keeps its backend,
    and `require` reports a mismatch."""
    global chosen, reason, _error
    try:
        chosen, reason = resolve(sys.argv[1:] if argv is None else argv, os.environ)
    except BackendError as err:
        _error = err
        return
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = chosen


def require() -> str:
    """The backend in force; BackendError if the choice was invalid or Keras was imported before
    tpuflow with another backend."""
    if _error is not None:
        raise _error
    keras = sys.modules.get("keras")
    if keras is not None and chosen is not None and keras.backend.backend() != chosen:
        raise BackendError(f"Keras was imported with the {keras.backend.backend()} backend before tpuflow "
                           f"could select {chosen} ({reason}): import tpuflow before keras, or set "
                           f"KERAS_BACKEND={chosen}")
    return chosen


class _BeforeKeras(importlib.abc.MetaPathFinder):
    """Chooses the backend when Keras or TensorFlow is first imported (and drops TensorFlow's C++
    start-up logs from then on, `cli.quiet_native_logs`), then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name in ("keras", "tensorflow") and self in sys.meta_path:
            sys.meta_path.remove(self)
            from tpuflow import cli  # noqa: PLC0415
            cli.quiet_native_logs()
            apply()
        return None  # the usual finders import it


def choose_before_keras() -> None:
    """Arms the choice (see the module doc); with Keras already imported, chooses now, so that
    `require` can name the mismatch."""
    if "keras" in sys.modules:
        apply()
    elif not any(isinstance(f, _BeforeKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeKeras())
