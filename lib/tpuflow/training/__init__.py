"""Training: the run configuration, the fold loop, models, checkpoints, resume, export.

Backend-neutral Keras; TensorFlow for `tf.data`, `tf.summary` and SavedModel export; JAX only
inside the device and host functions of `runtime` and `hosts` (never at import). The last stage
before the results: may import every other subpackage except `tpuflow.ensemble`.
"""
from __future__ import annotations

import importlib.util
import sys


def __getattr__(name: str):
    """`models` on first use: a run.py's first line (`from tpuflow.training import experiment, models`)
    hands it a module that loads (with Keras, 3-5 s) when an attribute is first read, so
    `run.py --help` answers without importing Keras."""
    if name != "models":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if f"{__name__}.models" in sys.modules:  # being imported the usual way (its attribute is set once it is)
        return sys.modules[f"{__name__}.models"]
    spec = importlib.util.find_spec(f"{__name__}.models")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = globals()["models"] = module
    spec.loader.exec_module(module)
    return module
