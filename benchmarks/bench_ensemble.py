"""Usage: python benchmarks/bench_ensemble.py [--work_dir=/tmp] [--keep] [--models=51] [--tta=10] [--repeats=5]

Speed of tools/ensemble.py on synthetic predictions shaped like the reference solution (51
experiments x 10 TTA, 5 folds, 70,257 train rows, 44,377 test rows: 5,100 .npy files):
  1. the reference pairwise search as a plain loop (112 NumPy RMSE evaluations per step) and
     the vectorised one, in the same run: both times, the ratio, and a check that they give
     identical c per step, weights and submission;
  2. forward, backward and optimize on the same inputs (and the residual Gram matrix they share);
  3. the whole command, as a user runs it (Python start, loading 5,100 files, fit, nested
     estimate, outputs), with and without the nested estimate.
Times are the best of --repeats runs (the machine may be shared); the loop runs once.
"""
from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

# As tools/ensemble.py: one BLAS thread unless told otherwise, set before NumPy loads.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from absl import app, flags  # noqa: E402

from tpuflow import ensemble  # noqa: E402
from tpuflow.ensemble import data as ensemble_data  # noqa: E402
from tpuflow.ensemble.methods import pairwise  # noqa: E402
from tpuflow.results import prediction_names  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", None, "Where to write the synthetic experiments (default: system temp).")
flags.DEFINE_bool("keep", False, "Keep (and reuse) the synthetic experiments in --work_dir.")
flags.DEFINE_integer("models", 51, "Experiments.")
flags.DEFINE_integer("tta", 10, "Predictions per experiment (TTA count).")
flags.DEFINE_integer("folds", 5, "Folds.")
flags.DEFINE_integer("n_train", 70257, "Out-of-fold rows.")
flags.DEFINE_integer("n_test", 44377, "Test rows.")
flags.DEFINE_integer("repeats", 5, "Timed repeats of the fast parts (best is reported).")
flags.DEFINE_bool("loop", True, "Time the plain loop (about 10 s at the default size).")


def make_experiments(root: str, models: int, tta: int, folds: int, n_train: int, n_test: int,
                     datasets: int = 15) -> str:
    """train_cv.csv, submission_format.csv and `models` experiment dirs of float32 (n, 1) predictions.

    Errors: a shared part (hard examples), a per-experiment bias and noise, a per-TTA noise;
    test rows get their own noise per fold. Rows are saved in the order of one of `datasets`
    record sets (as the reference's 51 models used 15 datasets), not in train_cv.csv order.
    """
    rng = np.random.default_rng(0)
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir, exist_ok=True)
    storms = rng.integers(0, 500, n_train)
    train = pd.DataFrame({"image_id": [f"s{s:03d}_{i:06d}" for i, s in enumerate(storms)],
                          "fold_id": storms % folds, "wind_speed": rng.integers(15, 186, n_train)})
    fmt = pd.DataFrame({"image_id": [f"t{i:06d}" for i in range(n_test)], "wind_speed": 0})
    train.to_csv(os.path.join(data_dir, "train_cv.csv"), index=False)
    fmt.to_csv(os.path.join(data_dir, "submission_format.csv"), index=False)
    y = train["wind_speed"].to_numpy(np.float64)
    common = rng.normal(0, 6, n_train)
    fold_rows = [np.flatnonzero(train["fold_id"].to_numpy() == f) for f in range(folds)]
    record_orders = [([rng.permutation(len(rows)) for rows in fold_rows], rng.permutation(n_test))
                     for _ in range(datasets)]
    ids, test_ids = train["image_id"].to_numpy(), fmt["image_id"].to_numpy()
    for m in range(models):
        preds = os.path.join(root, f"run-{m:03d}", "preds")
        os.makedirs(preds, exist_ok=True)
        val_perms, test_perm = record_orders[m % datasets]
        base = y + common + rng.normal(0, 1) + rng.normal(0, rng.uniform(2, 5), n_train)
        val = (base + rng.normal(0, 1.5, (tta, n_train))).astype(np.float32)
        test_base = 90 + rng.normal(0, 30, n_test)
        np.save(prediction_names.ids_path(preds, "test", 0), test_ids[test_perm].astype(str))
        for f, (rows, perm) in enumerate(zip(fold_rows, val_perms)):
            np.save(prediction_names.ids_path(preds, "val", f), ids[rows][perm].astype(str))
            test = (test_base + rng.normal(0, 2, (tta, n_test))).astype(np.float32)
            for t in range(tta):
                np.save(prediction_names.path(preds, "val", f, t), val[t, rows][perm][:, None])
                np.save(prediction_names.path(preds, "test", f, t), test[t, test_perm][:, None])
    return data_dir


def plain_loop(val: np.ndarray, y: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The reference search as written: every c of the grid scored on the data."""
    grid = np.arange(0, 1.11, 0.01)
    r = val[order[0]]
    best = np.sqrt(np.mean((y - r) ** 2))
    cs = []
    for j in order[1:]:
        p, coef = val[j], 1.0
        for c in grid:
            score = np.sqrt(np.mean((y - (c * r + (1 - c) * p)) ** 2))
            if score < best:
                best, coef = score, c
        r = coef * r + (1 - coef) * p
        cs.append(coef)
    return np.array(cs)


def plain_apply(test: np.ndarray, order: np.ndarray, cs: np.ndarray) -> np.ndarray:
    t = test[order[0]]
    for j, c in zip(order[1:], cs):
        t = c * t + (1 - c) * test[j]
    return t


def best_of(fn, repeats: int) -> tuple[float, float, object]:
    """(best wall seconds, best CPU seconds of this process and its children, last result)."""
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        tic, cpu = time.perf_counter(), _cpu()
        out = fn()
        walls.append(time.perf_counter() - tic)
        cpus.append(_cpu() - cpu)
    return min(walls), min(cpus), out


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_command(data_dir: str, root: str, out_dir: str, extra: list[str]) -> str:
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "ensemble.py")
    cmd = [sys.executable, tool, f"--data_dir={data_dir}", f"--model_dirs={root}/run-*", f"--out_dir={out_dir}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def main(argv: list[str]) -> None:
    del argv
    root = os.path.join(FLAGS.work_dir or tempfile.gettempdir(), "bench_ensemble")
    marker = os.path.join(root, f"done-{FLAGS.models}-{FLAGS.tta}-{FLAGS.folds}-{FLAGS.n_train}-{FLAGS.n_test}")
    try:
        if not os.path.exists(marker):
            shutil.rmtree(root, ignore_errors=True)
            tic = time.perf_counter()
            make_experiments(root, FLAGS.models, FLAGS.tta, FLAGS.folds, FLAGS.n_train, FLAGS.n_test)
            open(marker, "w").close()
            files = FLAGS.models * FLAGS.tta * FLAGS.folds * 2
            print(f"wrote {files} prediction files in {time.perf_counter() - tic:.1f}s")
        data_dir = os.path.join(root, "data")
        dirs = ensemble_data.expand_model_dirs(os.path.join(root, "run-*"))
        t_load, c_load, inputs = best_of(lambda: ensemble_data.load_inputs(data_dir, dirs), 1)
        m, n = inputs.val.shape
        print(f"inputs: {m} predictions x {n} rows ({inputs.val.dtype}), test {inputs.test.shape[1]} rows; "
              f"load {t_load:.2f}s wall, {c_load:.2f}s CPU (in-process, warm page cache)")
        problem = ensemble.Problem(inputs.val, inputs.y, inputs.fold_slices, ensemble.METRICS["rmse_raw"])
        t_sums, _, order = best_of(lambda: pairwise.sort_order(problem, ensemble.METRICS["rmse_rounded"]), 1)
        t_moments, _, _ = best_of(problem.moments, 1)
        t_fast, c_fast, (cs, _, _) = best_of(lambda: pairwise._pairwise_rmse(problem, order), FLAGS.repeats)
        print(f"pairwise search, vectorised: {1e3 * t_fast:.1f} ms wall, {1e3 * c_fast:.1f} ms CPU (best of "
              f"{FLAGS.repeats}); {int(np.sum(cs != 1))} of {m - 1} steps kept. Shared with the report and the "
              f"nested fits, made once: input scores for the sort {t_sums:.2f}s, per-fold p.p and p.y {t_moments:.2f}s")
        if FLAGS.loop:
            t_loop, c_loop, cs_loop = best_of(lambda: plain_loop(inputs.val, inputs.y, order), 1)
            fit = pairwise.fit(problem, ensemble.METRICS["rmse_rounded"])
            same_cs = np.array_equal(cs_loop, cs) and np.array_equal(fit.cs, cs)
            same_w = np.array_equal(pairwise.pairwise_weights(order, cs_loop, m), fit.weights)
            sub_loop, sub_fast = plain_apply(inputs.test, order, cs_loop), fit.apply(inputs.test)
            same_sub = np.array_equal(sub_loop, sub_fast) and np.array_equal(np.rint(sub_loop), np.rint(sub_fast))
            print(f"pairwise search, plain loop: {t_loop:.2f} s wall, {c_loop:.2f} s CPU; ratio loop/vectorised = "
                  f"{t_loop / t_fast:.0f}x wall, {c_loop / c_fast:.0f}x CPU; identical c: {same_cs}, "
                  f"weights: {same_w}, test blend and submission: {same_sub}")
        t_gram, c_gram, _ = best_of(problem.residual_gram, 1)
        print(f"residual Gram matrix (made once, shared by forward/backward/optimize on RMSE): "
              f"{t_gram:.2f}s wall, {c_gram:.2f}s CPU")
        for method in ("forward", "backward", "optimize"):
            t, c, result = best_of(lambda: ensemble.fit(problem, method), FLAGS.repeats)
            print(f"{method}: {1e3 * t:.1f} ms wall, {1e3 * c:.1f} ms CPU (after the Gram matrix), "
                  f"{np.count_nonzero(result.weights)} non-zero weights, fit RMSE {problem.loss(result.fit_pred):.4f}")
        with tempfile.TemporaryDirectory() as out:
            for extra in (["--nonested", "--noplot"], ["--noplot"], []):
                t, c, stdout = best_of(lambda: run_command(data_dir, root, out, extra), 2)
                print(f"whole command {' '.join(extra) or '(defaults: nested, plot)'}: {t:.2f}s wall, {c:.2f}s CPU "
                      f"(best of 2); its own timings: {stdout.splitlines()[-2].removeprefix('timings: ')}")
    finally:
        if not FLAGS.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
