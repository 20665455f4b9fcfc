"""What every ensemble method works on and returns: `Problem` (the inputs restricted to some folds,
without copying them, with per-fold sums made once and shared by the nested fits), `Fit` (the
weights and how to apply them), `Params` (the methods' settings), and what several methods share:
`Objective` (losses of blends through the residual Gram matrix for RMSE) and `finish`.

For RMSE the Gram matrix of the residuals gives the squared error of any blend with weights
summing to 1 as w'Gw, so a step costs O(M^2), not a pass over the data.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from tpuflow.ensemble.metrics import Metric


class FoldStats:
    """Per-fold sums shared by a problem and its nested sub-problems (each computed once)."""

    def __init__(self, val: np.ndarray, y: np.ndarray, fold_slices: Sequence[slice]):
        self.val, self.y, self.fold_slices = val, y, tuple(fold_slices)
        self._sums: dict[str, np.ndarray] = {}
        self._grams: list[np.ndarray] | None = None
        self._moments: np.ndarray | None = None
        self.yy = np.array([dot(y[s], y[s]) for s in self.fold_slices])

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
                    self._moments[i, f] = dot(row[s], row[s]), dot(row[s], self.y[s])
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
                 used: Sequence[int] | None = None, stats: FoldStats | None = None):
        self.val, self.metric = val, metric
        self.stats = stats or FoldStats(val, y, fold_slices)
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


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """a.b without BLAS: OpenBLAS threads a 70k-term dot product, and on a busy machine waiting
    for its helper thread costs ~1 ms a call, 20x the product itself."""
    return float(np.einsum("i,i->", a, b))


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


class Objective:
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


def finish(problem: Problem, method: str, w: np.ndarray, trace: list[float], trace_x: str) -> Fit:
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
