"""`backward`: start from the mean of all inputs and remove the one whose removal helps most
("remove-by-one"); the best set seen wins. For RMSE a step costs O(M^2) (`problem.Objective`).
"""
from __future__ import annotations

import numpy as np

from tpuflow.ensemble.metrics import Metric
from tpuflow.ensemble.problem import Fit, Objective, Params, Problem, finish

RANKS = False


def fit(problem: Problem, sort_metric: Metric | None = None, params: Params | None = None) -> Fit:
    """Remove-by-one: from the mean of all inputs, drop the input whose removal gives the
    lowest loss, down to one input; the best set seen (the larger one on ties) wins."""
    obj = Objective(problem)
    v = np.ones(problem.m)
    best_loss = obj.weights_loss(v / problem.m)
    best_v, trace = v.copy(), [best_loss]
    while v.sum() > 1:
        cand = np.flatnonzero(v)
        losses = obj.candidates(v, -1, cand)
        i = int(np.argmin(losses))
        v[cand[i]] = 0
        trace.append(float(losses[i]))
        if losses[i] < best_loss:
            best_loss, best_v = float(losses[i]), v.copy()
    return finish(problem, "backward", best_v / best_v.sum(), trace, "predictions removed")
