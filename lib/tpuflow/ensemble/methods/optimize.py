"""`optimize`: non-negative weights summing to 1 from L-BFGS-B, on the smooth loss of the task
(squared error for values, log loss for probabilities).
"""
from __future__ import annotations

import numpy as np

from tpuflow.ensemble.metrics import LOG_EPS, Metric, true_class
from tpuflow.ensemble.problem import Fit, Objective, Params, Problem, finish

RANKS = False


def fit(problem: Problem, sort_metric: Metric | None = None, params: Params = Params()) -> Fit:
    """Non-negative weights summing to 1 that minimise the task's smooth loss, by L-BFGS-B.

    The weights are w = u / sum(u) with bounds u >= 0, so the simplex needs no equality
    constraint and every step is O(M^2) (squared error through the residual Gram matrix) or
    O(M n) (log loss through each input's probability of the true class).
    """
    m, n = problem.m, problem.n
    if problem.metric.form == "values":
        gram = problem.residual_gram() / n

        def value_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            g = np.dot(gram, w)
            return float(np.dot(w, g)), 2 * g
    else:
        q = np.stack([true_class(problem.y, problem.row(i)) for i in range(m)])

        def value_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            b = np.maximum(np.dot(w, q), LOG_EPS)
            return float(-np.mean(np.log(b))), -np.dot(q, 1.0 / b) / n

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        total = u.sum()
        w = u / total
        f, g = value_grad(w)
        return f, (g - np.dot(w, g)) / total

    from scipy import optimize as sp_optimize  # here: the other methods start faster without it

    res = sp_optimize.minimize(fun, np.full(m, 1.0 / m), jac=True, method="L-BFGS-B",
                               bounds=[(0.0, None)] * m, options={"maxiter": params.max_iter, "ftol": 1e-15, "gtol": 1e-12})
    w = res.x / res.x.sum()
    # Trace: the loss of the largest weights alone, renormalised, as they are added.
    obj, ranked = Objective(problem), np.argsort(-w, kind="stable")
    trace = []
    for k in range(1, int(np.count_nonzero(w)) + 1):
        part = np.zeros(m)
        part[ranked[:k]] = w[ranked[:k]]
        trace.append(obj.weights_loss(part / part.sum()))
    return finish(problem, "optimize", w, trace, "largest weights added")
