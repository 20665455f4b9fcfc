"""The ensemble methods, registered by name: one module per method, each with `fit(problem,
sort_metric, params) -> Fit` and `RANKS` (whether it walks the inputs ranked by `--sort_metric`).
Adding a method: a module here and its line in `_REGISTERED`; `--method` offers it then.

`fit` runs a method by name on the used folds; `nested` is the honest estimate, each fold
predicted by a fit on the others (`Problem.without_fold` makes it as cheap as k fits).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from tpuflow.ensemble.metrics import Metric
from tpuflow.ensemble.methods import backward, forward, optimize, pairwise
from tpuflow.ensemble.problem import Fit, Params, Problem

_REGISTERED = (pairwise, forward, backward, optimize)  # `--method`'s choices, in this order
_BY_NAME = {module.__name__.rsplit(".", 1)[1]: module for module in _REGISTERED}
METHODS = tuple(_BY_NAME)


def method(name: str):
    """The module of the method `name`; an error naming the flag if there is none."""
    if name not in _BY_NAME:
        raise ValueError(f"--method={name}: unknown method; use one of {list(METHODS)}")
    return _BY_NAME[name]


def fit(problem: Problem, name: str, sort_metric: Metric | None = None, params: Params = Params()) -> Fit:
    """Runs one method by name. sort_metric: the ranking of a method that ranks (default: the
    problem's metric)."""
    return method(name).fit(problem, sort_metric or problem.metric, params)


@dataclasses.dataclass(frozen=True)
class Nested:
    """The honest estimate: each fold predicted by a fit on the other folds.

    held_out: (n[, k]) predictions of every used row; single_held_out: the same for the input
    that scores best on the other folds (chosen[f] for fold position f).
    """
    held_out: np.ndarray
    single_held_out: np.ndarray
    chosen: list[int]
    fits: list[Fit]


def nested(problem: Problem, name: str, sort_metric: Metric | None = None, params: Params = Params()) -> Nested:
    """Fits on k-1 folds and predicts the held-out fold, for every used fold."""
    if len(problem.used) < 2:
        raise ValueError("a nested estimate needs at least two folds")
    held = np.empty((problem.n,) + problem.val.shape[2:])
    single = np.empty_like(held)
    chosen, fits, pos = [], [], 0
    for f in problem.used:
        s = problem.stats.fold_slices[f]
        sub = problem.without_fold(f)
        result = fit(sub, name, sort_metric, params)
        rows = slice(pos, pos + s.stop - s.start)
        held[rows] = result.apply(problem.val[:, s])
        best = int(np.argmin(sub.single_losses()))
        single[rows] = problem.val[best, s]
        chosen.append(best)
        fits.append(result)
        pos = rows.stop
    return Nested(held, single, chosen, fits)
