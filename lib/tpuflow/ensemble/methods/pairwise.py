"""`pairwise`, the reference: walk the inputs best first (by `--sort_metric`), blending the running
result r with the next prediction p as c*r + (1-c)*p for c on `GRID`, keeping c only if it beats
the best score so far.

For RMSE the blend's squared error is a quadratic in c whose coefficients come from one dot
product (r.p) and sums made once, so a step reads p once instead of 112 times; grid points the
quadratic cannot tell apart (within its rounding bound) are scored exactly as the loop scores
them, so the choice is the loop's, bit for bit.
"""
from __future__ import annotations

import math

import numpy as np

from tpuflow.ensemble.metrics import Metric
from tpuflow.ensemble.problem import Fit, Params, Problem, dot

RANKS = True  # walks the inputs ranked by --sort_metric
GRID = np.arange(0, 1.11, 0.01)  # the reference's 112 values of c (floating-point arange keeps 1.11)
_GRID_POWERS = np.stack([GRID * GRID, GRID, np.ones_like(GRID)])
_ONE = int(np.flatnonzero(GRID == 1.0)[0])  # c = 1: the new prediction is dropped


def pairwise_weights(order: np.ndarray, cs: np.ndarray, m: int) -> np.ndarray:
    """The weight of every input after the walk: each step scales all earlier weights by c."""
    w = np.zeros(m)
    w[order[0]] = 1.0
    for j, c in zip(order[1:], cs):
        w *= c
        w[j] = 1 - c
    return w


def sort_order(problem: Problem, sort_metric: Metric) -> np.ndarray:
    """Inputs best first by `sort_metric` on the used rows; ties keep the input order."""
    return np.argsort(problem.single_losses(sort_metric), kind="stable")


def fit(problem: Problem, sort_metric: Metric, params: Params | None = None) -> Fit:
    """The reference greedy pairwise search (see the module docstring); exact for every metric.

    RMSE takes the quadratic fast path; other metrics run the plain loop over the grid.
    """
    order = sort_order(problem, sort_metric)
    if problem.metric.name == "rmse_raw":
        cs, trace, r = _pairwise_rmse(problem, order)
    else:
        cs, trace, r = _pairwise_loop(problem, order)
    return Fit("pairwise", pairwise_weights(order, cs, problem.m), trace, "predictions walked (best first)",
               r, order, cs)


def _pairwise_loop(problem: Problem, order: np.ndarray) -> tuple[np.ndarray, list[float], np.ndarray]:
    """The reference algorithm as written: 112 scorings per step."""
    loss = problem.loss
    r = problem.row(order[0])
    best = loss(r)
    cs, trace = np.ones(len(order) - 1), [best]
    for step, j in enumerate(order[1:]):
        p = problem.row(j)
        for c in GRID:
            s = loss(c * r + (1 - c) * p)
            if s < best:
                best, cs[step] = s, c
        if cs[step] != 1.0:
            r = cs[step] * r + (1 - cs[step]) * p
        trace.append(best)
    return cs, trace, r


def _pairwise_rmse(problem: Problem, order: np.ndarray) -> tuple[np.ndarray, list[float], np.ndarray]:
    """The reference loop for RMSE, one pass over each prediction.

    |c*r + (1-c)*p - y|^2 = c^2*|r-p|^2 + 2c*(r-p).(p-y) + |p-y|^2, from r.p (the one dot
    product a step needs), p.p and p.y (per-fold sums made once, shared by the nested fits),
    r.r and r.y (updated as scalars). The quadratic's values differ from the loop's own scores
    by rounding only, bounded by `rel`; grid points within that bound of the minimum are scored
    exactly as the loop scores them (rare: near-equal grid points, duplicated inputs), so the
    chosen c is always the loop's. r is updated with the loop's very expression,
    c*r + (1-c)*p, so it stays bit-identical to the loop's running blend.
    """
    y, n = problem.y, problem.n
    r, p = np.empty(n), np.empty(n)  # the running blend and the next prediction, in float64
    problem.row_into(order[0], r)
    moments = problem.moments().tolist()
    yy, rr, ry = dot(y, y), dot(r, r), dot(r, y)
    best: float | None = problem.metric.score(y, r)  # the loop's exact score of r, or None if stale
    cs, trace = np.ones(len(order) - 1), [best]
    # Error bound E on |quadratic - loop's squared error|, relative to rr + pp + yy: a dot
    # product of n terms is off by at most n*eps of its terms' magnitude (a few of them enter
    # f), the scalar updates add a few eps per step, the loop's own score ~log2(n)*eps. The
    # loop's minimum is then within 3E of the quadratic's.
    rel = 3 * 8 * (n + len(order) + 16) * np.finfo(np.float64).eps
    coef = np.empty(3)
    for step, j in enumerate(order[1:]):
        problem.row_into(j, p)
        rp = dot(r, p)
        pp, py = moments[j]
        coef[0], coef[1], coef[2] = rr - 2 * rp + pp, 2 * (rp - pp - ry + py), pp - 2 * py + yy
        f = np.dot(coef, _GRID_POWERS)
        k = int(np.argmin(f))
        near = np.flatnonzero(f <= f[k] + rel * (rr + pp + yy))
        if len(near) > 1:
            if best is None:
                best = problem.metric.score(y, r)
            k = _exact_choice(problem, near, r, p, best)
        if k == _ONE:
            trace.append(trace[-1])
            continue
        c = GRID[k]
        d = 1 - c
        np.multiply(r, c, out=r)
        np.multiply(p, d, out=p)  # p is not needed after this step
        np.add(r, p, out=r)
        rr, ry = c * c * rr + 2 * c * d * rp + d * d * pp, c * ry + d * py
        cs[step], best = c, None
        trace.append(math.sqrt(max(f[k], 0.0) / n))
    return cs, trace, r.copy()


def _exact_choice(problem: Problem, near: np.ndarray, r: np.ndarray, p: np.ndarray, best: float) -> int:
    """Among grid points the quadratic cannot separate, the loop's pick: the first with the
    lowest exact score, if that beats `best` (the exact score of r, which c = 1 reproduces)."""
    scores = [best if k == _ONE else problem.metric.score(problem.y, GRID[k] * r + (1 - GRID[k]) * p)
              for k in near]
    i = int(np.argmin(scores))
    return int(near[i]) if scores[i] < best else _ONE
