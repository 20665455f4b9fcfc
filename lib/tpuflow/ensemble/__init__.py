"""Ensemble weight search over out-of-fold predictions (NumPy/SciPy only: no TensorFlow).

The package face: it hands on the names its users need (`tools/ensemble.py`, `report`) and holds
no method. The methods are a registry (`tpuflow.ensemble.methods`, one module each: `pairwise`
the reference's greedy walk, `forward`, `backward`, `optimize`); all are metric-agnostic (each
asks the metric for a loss, lower is better). The rest of the package: `metrics`, `problem` (the
inputs restricted to some folds, what a fit returns), `data` (saved predictions -> one matrix
per split) and `report` (a method run and its outputs). May import `tpuflow.results` and
`tpuflow.storage`.
"""
from __future__ import annotations

from tpuflow.ensemble.methods import METHODS, Nested, fit, method, nested
from tpuflow.ensemble.metrics import METRICS, OLD_NAMES, Metric, get_metric
from tpuflow.ensemble.problem import Fit, Params, Problem

__all__ = ["METHODS", "METRICS", "OLD_NAMES", "Fit", "Metric", "Nested", "Params", "Problem", "fit", "get_metric",
           "method", "nested"]
