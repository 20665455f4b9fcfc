"""Ensemble weight search over out-of-fold predictions (NumPy/SciPy only: no TensorFlow).

Four methods, all metric-agnostic (each asks the metric for a loss, lower is better):
  pairwise  the reference: walk the inputs best first, blending the running result r with the
            next prediction p as c*r + (1-c)*p for c on `GRID`, keeping c only if it beats the
            best score so far. For RMSE the blend's squared error is a quadratic in c whose
            coefficients come from one dot product (r.p) and sums made once, so a step reads
            p once instead of 112 times; grid points the quadratic cannot tell apart (within
            its rounding bound) are scored exactly as the loop scores them, so the choice is
            the loop's, bit for bit.
  forward   greedy forward selection with replacement ("grow-by-one", Caruana et al. 2004),
            optionally bagged: the mean of the weights found on random subsets of the inputs.
  backward  start from the mean of all inputs, remove the one whose removal helps most
            ("remove-by-one"); the best set seen wins.
  optimize  non-negative weights summing to 1 from L-BFGS-B, on the smooth loss of the task
            (squared error for values, log loss for probabilities).
For RMSE, forward/backward/optimize work on the Gram matrix of the residuals (any blend with
weights summing to 1 has squared error w'Gw), so a step costs O(M^2), not a pass over the data.
`Problem` restricts the inputs to some folds without copying them, which makes the nested
estimate (fit on k-1 folds, score the held-out one) as cheap as k fits.

The `tpuflow.ensemble` package (NumPy/SciPy/pandas only, no TensorFlow): this weight
search, `data` (saved predictions -> one matrix per split) and `report` (a method run
and its outputs). May import `tpuflow.results` and `tpuflow.storage`.
"""
from __future__ import annotations

import dataclasses
import math
import sys
from typing import Callable, Sequence

import numpy as np

GRID = np.arange(0, 1.11, 0.01)  # the reference's 112 values of c (floating-point arange keeps 1.11)
_GRID_POWERS = np.stack([GRID * GRID, GRID, np.ones_like(GRID)])
_ONE = int(np.flatnonzero(GRID == 1.0)[0])  # c = 1: the new prediction is dropped
METHODS = ("pairwise", "forward", "backward", "optimize")
_LOG_EPS = 1e-15


# ----------------------------------------------------------------------------------------- metrics
@dataclasses.dataclass(frozen=True)
class Metric:
    """A score that is a function of the mean of a per-row loss, so fold sums add up.

    kind: 'values' (regression) or 'probs' ((n, k) class probabilities, y = class index).
    """
    name: str
    kind: str
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


def _true_class(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(y)), y]


METRICS = {
    # The exact expression of a plain loop (`np.sqrt(np.mean((y - p) ** 2))`, as sklearn's
    # mean_squared_error computes it): `pairwise` reproduces the loop's choices with it.
    "rmse_raw": Metric("rmse_raw", "values", False, lambda y, p: (y - p) ** 2, np.sqrt),
    # The competition's score: predictions rounded to integers first.
    "rmse_rounded": Metric("rmse_rounded", "values", False, lambda y, p: (y - np.rint(p)) ** 2, np.sqrt),
    "logloss": Metric("logloss", "probs", False,
                      lambda y, p: -np.log(np.clip(_true_class(y, p), _LOG_EPS, 1.0)), lambda m: m),
    "accuracy": Metric("accuracy", "probs", True,
                       lambda y, p: (np.argmax(p, axis=-1) == y).astype(np.float64), lambda m: m),
}


# Old names still read, with a warning: `rmse` was the RMSE of raw predictions here, but the
# rounded (competition) score in run.py; each now has a name of its own.
OLD_NAMES = {"rmse": "rmse_raw"}


def get_metric(name: str, kind: str | None = None, flag: str = "--metric") -> Metric:
    """The metric called `name`; an error naming the flag if it is unknown or does not fit `kind`."""
    if name in OLD_NAMES:
        print(f"WARNING: {flag}={name} is the old name of {flag}={OLD_NAMES[name]}; read as {OLD_NAMES[name]}",
              file=sys.stderr, flush=True)
        name = OLD_NAMES[name]
    if name not in METRICS:
        raise ValueError(f"{flag}={name}: unknown metric; use one of {sorted(METRICS)}")
    metric = METRICS[name]
    if kind is not None and metric.kind != kind:
        other = sorted(m for m, v in METRICS.items() if v.kind == kind)
        raise ValueError(f"{flag}={name} scores {metric.kind} but the inputs are {kind}; use one of {other}")
    return metric


# ----------------------------------------------------------------------------------------- problem
class _FoldStats:
    """Per-fold sums shared by a problem and its nested sub-problems (each computed once)."""

    def __init__(self, val: np.ndarray, y: np.ndarray, fold_slices: Sequence[slice]):
        self.val, self.y, self.fold_slices = val, y, tuple(fold_slices)
        self._sums: dict[str, np.ndarray] = {}
        self._grams: list[np.ndarray] | None = None
        self._moments: np.ndarray | None = None
        self.yy = np.array([_dot(y[s], y[s]) for s in self.fold_slices])

    def metric_sums(self, metric: Metric) -> np.ndarray:
        """(M, F): the sum of the metric's row loss of every input over every fold."""
        if metric.name not in self._sums:
            if metric.name == "rmse_raw":  # sum (p-y)^2 = p.p - 2 p.y + y.y: no pass of its own
                m = self.moments()
                sums = np.maximum(m[:, :, 0] - 2 * m[:, :, 1] + self.yy[None, :], 0.0)
            else:
                sums = np.empty((len(self.val), len(self.fold_slices)))
                starts = [s.start for s in self.fold_slices]
                for i in range(len(self.val)):
                    sums[i] = np.add.reduceat(metric.row_loss(self.y, self.val[i]), starts)
            self._sums[metric.name] = sums
        return self._sums[metric.name]

    def moments(self) -> np.ndarray:
        """(M, F, 2): p.p and p.y of every (values) input over every fold, in float64."""
        if self._moments is None:
            self._moments = np.empty((len(self.val), len(self.fold_slices), 2))
            row = np.empty(self.val.shape[1])
            for i in range(len(self.val)):
                np.copyto(row, self.val[i])
                for f, s in enumerate(self.fold_slices):
                    self._moments[i, f] = _dot(row[s], row[s]), _dot(row[s], self.y[s])
        return self._moments

    def residual_grams(self, chunk: int = 4096) -> list[np.ndarray]:
        """Per fold, the (M, M) Gram matrix of the residuals val - y, in float64."""
        if self._grams is None:
            m = len(self.val)
            buf = np.empty((m, chunk))
            grams = []
            for s in self.fold_slices:
                g = np.zeros((m, m))
                for a in range(s.start, s.stop, chunk):
                    b = min(a + chunk, s.stop)
                    e = buf[:, : b - a]
                    np.subtract(self.val[:, a:b], self.y[a:b], out=e)
                    g += np.dot(e, e.T)
                grams.append(g)
            self._grams = grams
        return self._grams


class Problem:
    """The inputs restricted to the rows of some folds, without copying the predictions.

    val: (M, n[, k]) all out-of-fold rows; y: (n,); fold_slices: each fold's columns. `used`
    selects folds by position (default: all).
    """

    def __init__(self, val: np.ndarray, y: np.ndarray, fold_slices: Sequence[slice], metric: Metric,
                 used: Sequence[int] | None = None, stats: _FoldStats | None = None):
        self.val, self.metric = val, metric
        self.stats = stats or _FoldStats(val, y, fold_slices)
        self.used = tuple(range(len(fold_slices)) if used is None else used)
        self.segments = _merge([self.stats.fold_slices[f] for f in self.used])
        self.y = np.concatenate([y[s] for s in self.segments]) if len(self.segments) > 1 else y[self.segments[0]]
        self.n = len(self.y)
        self.m = len(val)

    def without_fold(self, f: int) -> "Problem":
        """The same inputs on every used fold but `f` (the fit rows of a nested estimate)."""
        return Problem(self.val, self.stats.y, self.stats.fold_slices, self.metric,
                       [g for g in self.used if g != f], self.stats)

    def row_into(self, i: int, out: np.ndarray) -> np.ndarray:
        """Copies input i's used rows into `out` as float64 (the loop's blend is in float64)."""
        pos = 0
        for s in self.segments:
            size = s.stop - s.start
            np.copyto(out[pos:pos + size], self.val[i, s])
            pos += size
        return out

    def row(self, i: int) -> np.ndarray:
        return self.row_into(i, np.empty((self.n,) + self.val.shape[2:]))

    def fold_sums(self, metric: Metric) -> np.ndarray:
        """(M,) the sum of the metric's row loss of every input over the used rows."""
        return self.stats.metric_sums(metric)[:, list(self.used)].sum(axis=1)

    def single_losses(self, metric: Metric | None = None) -> np.ndarray:
        """(M,) loss of every input alone on the used rows."""
        metric = metric or self.metric
        return np.asarray(metric.loss_from_mean(self.fold_sums(metric) / self.n), dtype=np.float64)

    def moments(self) -> np.ndarray:
        """(M, 2): p.p and p.y of every input over the used rows."""
        return self.stats.moments()[:, list(self.used)].sum(axis=1)

    def residual_gram(self) -> np.ndarray:
        grams = self.stats.residual_grams()
        return sum(grams[f] for f in self.used)

    def blend(self, weights: np.ndarray) -> np.ndarray:
        """sum_i w_i * input_i on the used rows, skipping zero weights."""
        nz = np.flatnonzero(weights)
        out = np.zeros((self.n,) + self.val.shape[2:])
        row = np.empty_like(out)
        for i in nz:
            out += weights[i] * self.row_into(i, row)
        return out

    def loss(self, pred: np.ndarray) -> float:
        return self.metric.loss(self.y, pred)


def _merge(slices: list[slice]) -> tuple[slice, ...]:
    out: list[slice] = []
    for s in slices:
        if out and out[-1].stop == s.start:
            out[-1] = slice(out[-1].start, s.stop)
        else:
            out.append(s)
    return tuple(out)


# ----------------------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class Fit:
    """Fitted weights (M,), and for `pairwise` the walk (order, c per step) that defines the blend.

    trace: the fit loss after each step (predictions added, removed, bags, ...), `trace_x` says what
    a step is. fit_pred: the blend on the fit rows.
    """
    method: str
    weights: np.ndarray
    trace: list[float]
    trace_x: str
    fit_pred: np.ndarray
    order: np.ndarray | None = None
    cs: np.ndarray | None = None
    fallback: bool = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The blend of `x` ((M, m[, k]): same inputs, other rows) as the fit defines it.

        pairwise replays its walk, c*r + (1-c)*p in the same order, in float64, so the test
        blend is exactly what the reference loop would produce (not the weights' dot product,
        which can differ in the last bits and flip a rounding).
        """
        if self.order is None:
            nz = np.flatnonzero(self.weights)
            out = np.zeros(x.shape[1:])
            for i in nz:
                out += self.weights[i] * x[i].astype(np.float64)
            return out
        r = x[self.order[0]].astype(np.float64)
        tmp = np.empty_like(r)
        for j, c in zip(self.order[1:], self.cs):
            if c != 1.0:  # c = 1 leaves r as it is: 1*r + 0*p == r for finite p
                np.copyto(tmp, x[j])
                np.multiply(tmp, 1 - c, out=tmp)
                np.multiply(r, c, out=r)
                np.add(r, tmp, out=r)
        return r


def pairwise_weights(order: np.ndarray, cs: np.ndarray, m: int) -> np.ndarray:
    """The weight of every input after the walk: each step scales all earlier weights by c."""
    w = np.zeros(m)
    w[order[0]] = 1.0
    for j, c in zip(order[1:], cs):
        w *= c
        w[j] = 1 - c
    return w


# ----------------------------------------------------------------------------------------- pairwise
def sort_order(problem: Problem, sort_metric: Metric) -> np.ndarray:
    """Inputs best first by `sort_metric` on the used rows; ties keep the input order."""
    return np.argsort(problem.single_losses(sort_metric), kind="stable")


def pairwise(problem: Problem, sort_metric: Metric) -> Fit:
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
    yy, rr, ry = _dot(y, y), _dot(r, r), _dot(r, y)
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
        rp = _dot(r, p)
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


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a.b without BLAS: OpenBLAS threads a 70k-term dot product, and on a busy machine waiting
    for its helper thread costs ~1 ms a call, 20x the product itself."""
    return float(np.einsum("i,i->", a, b))


def _exact_choice(problem: Problem, near: np.ndarray, r: np.ndarray, p: np.ndarray, best: float) -> int:
    """Among grid points the quadratic cannot separate, the loop's pick: the first with the
    lowest exact score, if that beats `best` (the exact score of r, which c = 1 reproduces)."""
    scores = [best if k == _ONE else problem.metric.score(problem.y, GRID[k] * r + (1 - GRID[k]) * p)
              for k in near]
    i = int(np.argmin(scores))
    return int(near[i]) if scores[i] < best else _ONE


# ----------------------------------------------------------------------------------------- objectives
class _Objective:
    """Losses of candidate blends for forward/backward: the mean of a multiset of inputs (counts
    `v`, total K) plus or minus one input m, i.e. (sum_v + sign*p_m) / (K + sign), for every m.

    RMSE uses the residual Gram matrix; other metrics blend on the data.
    """

    def __init__(self, problem: Problem):
        self.problem = problem
        self.gram = problem.residual_gram() if problem.metric.name == "rmse_raw" else None
        self.diag = None if self.gram is None else np.diag(self.gram).copy()

    def candidates(self, v: np.ndarray, sign: int, cand: np.ndarray) -> np.ndarray:
        k = v.sum() + sign
        if self.gram is not None:
            g = np.dot(self.gram, v)
            sq = np.dot(v, g) + 2 * sign * g[cand] + self.diag[cand]
            return np.sqrt(np.maximum(sq, 0.0) / (k * k * self.problem.n))
        base = self.problem.blend(v)
        row = np.empty_like(base)
        return np.array([self.problem.loss((base + sign * self.problem.row_into(i, row)) / k) for i in cand])

    def weights_loss(self, w: np.ndarray) -> float:
        if self.gram is not None:
            return math.sqrt(max(float(np.dot(w, np.dot(self.gram, w))), 0.0) / self.problem.n)
        return self.problem.loss(self.problem.blend(w))


def forward(problem: Problem, steps: int = 100, init: int = 1, bags: int = 0, bag_fraction: float = 0.5,
            seed: int = 0, patience: int = 20) -> Fit:
    """Greedy forward selection with replacement; bags > 0 averages the weights of `bags` runs,
    each on a random `bag_fraction` of the inputs (Caruana's bagged ensemble selection).

    A run starts from the `init` best inputs, adds the input that lowers the loss most (it may
    be one already in), stops after `steps` additions or `patience` without a new best, and
    keeps the best mix seen. So it is never worse than the best input of its subset.
    """
    if steps < 1 or init < 1:
        raise ValueError(f"--steps={steps} and --init={init} must be >= 1")
    obj = _Objective(problem)
    singles = problem.single_losses()
    if bags <= 0:
        w, trace = _forward_run(obj, singles, np.arange(problem.m), steps, init, patience)
        return _finish(problem, "forward", w, trace, "predictions added")
    if not 0 < bag_fraction <= 1:
        raise ValueError(f"--bag_fraction={bag_fraction} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    size = max(1, int(round(bag_fraction * problem.m)))
    total, trace = np.zeros(problem.m), []
    for b in range(bags):
        subset = np.sort(rng.choice(problem.m, size, replace=False))
        total += _forward_run(obj, singles, subset, steps, init, patience)[0]
        trace.append(obj.weights_loss(total / (b + 1)))
    return _finish(problem, "forward", total / bags, trace, "bags averaged")


def _forward_run(obj: _Objective, singles: np.ndarray, cand: np.ndarray, steps: int, init: int,
                 patience: int) -> tuple[np.ndarray, list[float]]:
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
            if since >= patience:
                break
    return best_v / best_v.sum(), trace


def backward(problem: Problem) -> Fit:
    """Remove-by-one: from the mean of all inputs, drop the input whose removal gives the
    lowest loss, down to one input; the best set seen (the larger one on ties) wins."""
    obj = _Objective(problem)
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
    return _finish(problem, "backward", best_v / best_v.sum(), trace, "predictions removed")


def optimize(problem: Problem, max_iter: int = 1000) -> Fit:
    """Non-negative weights summing to 1 that minimise the task's smooth loss, by L-BFGS-B.

    The weights are w = u / sum(u) with bounds u >= 0, so the simplex needs no equality
    constraint and every step is O(M^2) (squared error through the residual Gram matrix) or
    O(M n) (log loss through each input's probability of the true class).
    """
    m, n = problem.m, problem.n
    if problem.metric.kind == "values":
        gram = problem.residual_gram() / n

        def value_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            g = np.dot(gram, w)
            return float(np.dot(w, g)), 2 * g
    else:
        q = np.stack([_true_class(problem.y, problem.row(i)) for i in range(m)])

        def value_grad(w: np.ndarray) -> tuple[float, np.ndarray]:
            b = np.maximum(np.dot(w, q), _LOG_EPS)
            return float(-np.mean(np.log(b))), -np.dot(q, 1.0 / b) / n

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        total = u.sum()
        w = u / total
        f, g = value_grad(w)
        return f, (g - np.dot(w, g)) / total

    from scipy import optimize as sp_optimize  # here: the other methods start faster without it

    res = sp_optimize.minimize(fun, np.full(m, 1.0 / m), jac=True, method="L-BFGS-B",
                               bounds=[(0.0, None)] * m, options={"maxiter": max_iter, "ftol": 1e-15, "gtol": 1e-12})
    w = res.x / res.x.sum()
    # Trace: the loss of the largest weights alone, renormalised, as they are added.
    obj, ranked = _Objective(problem), np.argsort(-w, kind="stable")
    trace = []
    for k in range(1, int(np.count_nonzero(w)) + 1):
        part = np.zeros(m)
        part[ranked[:k]] = w[ranked[:k]]
        trace.append(obj.weights_loss(part / part.sum()))
    return _finish(problem, "optimize", w, trace, "largest weights added")


def _finish(problem: Problem, method: str, w: np.ndarray, trace: list[float], trace_x: str) -> Fit:
    """Wraps weights into a Fit; if the mix scores worse on the fit rows than the best input
    alone (possible where the metric is not the loss the method minimised), uses that input."""
    pred = problem.blend(w)
    best = int(np.argmin(problem.single_losses()))
    single = problem.row(best)
    if problem.loss(pred) > problem.loss(single):
        w = np.zeros(problem.m)
        w[best] = 1.0
        return Fit(method, w, trace, trace_x, single, fallback=True)
    return Fit(method, w, trace, trace_x, pred)


@dataclasses.dataclass(frozen=True)
class Params:
    """Method settings (flags of tools/ensemble.py); each method reads its own."""
    steps: int = 100  # forward: most additions per run
    init: int = 1  # forward: best inputs to start from
    bags: int = 0  # forward: > 0 averages that many runs on random subsets
    bag_fraction: float = 0.5  # forward: share of the inputs in a bag
    seed: int = 0  # forward: bag sampling
    max_iter: int = 1000  # optimize: L-BFGS-B iterations


def fit(problem: Problem, method: str, sort_metric: Metric | None = None, params: Params = Params()) -> Fit:
    """Runs one method by name. sort_metric: pairwise's ranking (default: the problem's metric)."""
    if method == "pairwise":
        return pairwise(problem, sort_metric or problem.metric)
    if method == "forward":
        return forward(problem, params.steps, params.init, params.bags, params.bag_fraction, params.seed)
    if method == "backward":
        return backward(problem)
    if method == "optimize":
        return optimize(problem, params.max_iter)
    raise ValueError(f"--method={method}: unknown method; use one of {list(METHODS)}")


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


def nested(problem: Problem, method: str, sort_metric: Metric | None = None, params: Params = Params()) -> Nested:
    """Fits on k-1 folds and predicts the held-out fold, for every used fold."""
    if len(problem.used) < 2:
        raise ValueError("a nested estimate needs at least two folds")
    held = np.empty((problem.n,) + problem.val.shape[2:])
    single = np.empty_like(held)
    chosen, fits, pos = [], [], 0
    for f in problem.used:
        s = problem.stats.fold_slices[f]
        sub = problem.without_fold(f)
        result = fit(sub, method, sort_metric, params)
        rows = slice(pos, pos + s.stop - s.start)
        held[rows] = result.apply(problem.val[:, s])
        best = int(np.argmin(sub.single_losses()))
        single[rows] = problem.val[best, s]
        chosen.append(best)
        fits.append(result)
        pos = rows.stop
    return Nested(held, single, chosen, fits)
