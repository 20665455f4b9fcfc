"""The metrics an ensemble is fitted and scored with: each a function of the mean of a per-row loss,
so that sums over folds add up (the nested estimate and the RMSE fast paths rely on it)."""
from __future__ import annotations

import dataclasses
import sys
from typing import Callable

import numpy as np

LOG_EPS = 1e-15


@dataclasses.dataclass(frozen=True)
class Metric:
    """A score that is a function of the mean of a per-row loss, so fold sums add up.

    form: 'values' (regression) or 'probs' ((n, k) class probabilities, y = class index).
    """
    name: str
    form: str
    greater_is_better: bool
    row_loss: Callable[[np.ndarray, np.ndarray], np.ndarray]
    finish: Callable[[float], float]

    def score(self, y: np.ndarray, pred: np.ndarray) -> float:
        return float(self.finish(np.mean(self.row_loss(y, pred))))

    def loss(self, y: np.ndarray, pred: np.ndarray) -> float:
        """The score as something to minimise."""
        s = self.score(y, pred)
        return -s if self.greater_is_better else s

    def loss_from_mean(self, mean_row_loss: np.ndarray) -> np.ndarray:
        s = self.finish(mean_row_loss)
        return -s if self.greater_is_better else s


def true_class(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(y)), y]


METRICS = {
    # The exact expression of a plain loop (`np.sqrt(np.mean((y - p) ** 2))`, as sklearn's
    # mean_squared_error computes it): `pairwise` reproduces the loop's choices with it.
    "rmse_raw": Metric("rmse_raw", "values", False, lambda y, p: (y - p) ** 2, np.sqrt),
    # The competition's score: predictions rounded to integers first.
    "rmse_rounded": Metric("rmse_rounded", "values", False, lambda y, p: (y - np.rint(p)) ** 2, np.sqrt),
    "logloss": Metric("logloss", "probs", False,
                      lambda y, p: -np.log(np.clip(true_class(y, p), LOG_EPS, 1.0)), lambda m: m),
    "accuracy": Metric("accuracy", "probs", True,
                       lambda y, p: (np.argmax(p, axis=-1) == y).astype(np.float64), lambda m: m),
}


# Old names still read, with a warning: `rmse` was the RMSE of raw predictions here, but the
# rounded (competition) score in run.py; each now has a name of its own.
OLD_NAMES = {"rmse": "rmse_raw"}


def get_metric(name: str, form: str | None = None, flag: str = "--metric") -> Metric:
    """The metric called `name`; an error naming the flag if it is unknown or does not fit the
    inputs' `form` ('values' or 'probs')."""
    if name in OLD_NAMES:
        print(f"WARNING: {flag}={name} is the old name of {flag}={OLD_NAMES[name]}; read as {OLD_NAMES[name]}",
              file=sys.stderr, flush=True)
        name = OLD_NAMES[name]
    if name not in METRICS:
        raise ValueError(f"{flag}={name}: unknown metric; use one of {sorted(METRICS)}")
    metric = METRICS[name]
    if form is not None and metric.form != form:
        other = sorted(m for m, v in METRICS.items() if v.form == form)
        raise ValueError(f"{flag}={name} scores {metric.form} but the inputs are {form}; use one of {other}")
    return metric
