"""`forward`: greedy forward selection with replacement ("grow-by-one", Caruana et al. 2004),
optionally bagged: the mean of the weights found on random subsets of the inputs. For RMSE a step
costs O(M^2) through the residual Gram matrix (`problem.Objective`).
"""
from __future__ import annotations

import numpy as np

from tpuflow.ensemble.metrics import Metric
from tpuflow.ensemble.problem import Fit, Objective, Params, Problem, finish

RANKS = False
PATIENCE = 20  # additions without a new best before a run stops


def fit(problem: Problem, sort_metric: Metric | None = None, params: Params = Params()) -> Fit:
    """Greedy forward selection with replacement; `params.bags` > 0 averages the weights of that
    many runs, each on a random `bag_fraction` of the inputs (Caruana's bagged ensemble selection).

    A run starts from the `init` best inputs, adds the input that lowers the loss most (it may
    be one already in), stops after `steps` additions or `PATIENCE` without a new best, and
    keeps the best mix seen. So it is never worse than the best input of its subset.
    """
    steps, init, bags, bag_fraction, seed = params.steps, params.init, params.bags, params.bag_fraction, params.seed
    if steps < 1 or init < 1:
        raise ValueError(f"--steps={steps} and --init={init} must be >= 1")
    obj = Objective(problem)
    singles = problem.single_losses()
    if bags <= 0:
        w, trace = _forward_run(obj, singles, np.arange(problem.m), steps, init)
        return finish(problem, "forward", w, trace, "predictions added")
    if not 0 < bag_fraction <= 1:
        raise ValueError(f"--bag_fraction={bag_fraction} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    size = max(1, int(round(bag_fraction * problem.m)))
    total, trace = np.zeros(problem.m), []
    for b in range(bags):
        subset = np.sort(rng.choice(problem.m, size, replace=False))
        total += _forward_run(obj, singles, subset, steps, init)[0]
        trace.append(obj.weights_loss(total / (b + 1)))
    return finish(problem, "forward", total / bags, trace, "bags averaged")


def _forward_run(obj: Objective, singles: np.ndarray, cand: np.ndarray, steps: int,
                 init: int) -> tuple[np.ndarray, list[float]]:
    v = np.zeros(obj.problem.m)
    v[cand[np.argsort(singles[cand], kind="stable")[:init]]] = 1
    best_loss, best_v = obj.weights_loss(v / v.sum()), v.copy()
    trace, since = [best_loss], 0
    for _ in range(steps):
        losses = obj.candidates(v, +1, cand)
        i = int(np.argmin(losses))
        v[cand[i]] += 1
        trace.append(float(losses[i]))
        if losses[i] < best_loss:
            best_loss, best_v, since = float(losses[i]), v.copy(), 0
        else:
            since += 1
            if since >= PATIENCE:
                break
    return best_v / best_v.sum(), trace
