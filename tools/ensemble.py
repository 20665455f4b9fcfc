"""Blends the saved predictions of many experiments into one submission.

Usage: python tools/ensemble.py --data_dir=DATA --model_dirs='runs/run-*,other/run-x' --out_dir=OUT
           [--method=pairwise|forward|backward|optimize] [--metric=rmse_raw|rmse_rounded|logloss|accuracy]

Every (experiment, TTA) prediction is one input. `pairwise` is the reference greedy search
(best first, c*r + (1-c)*p over a 112-point grid); `forward`/`backward` grow or shrink an equal-
weight mix; `optimize` fits non-negative weights summing to 1. Scores are printed twice: fit on
all out-of-fold rows (flattering: the weights saw those rows) and nested (fit on k-1 folds,
scored on the held-out one), next to the best single prediction. Smoke runs (`--quick`, said
so in their run_card.json) are left out, on one line, unless `--include_quick`. Needs NumPy,
pandas, SciPy (and matplotlib for the plot) only: it runs on a laptop against predictions copied
from a TPU VM.
"""
from __future__ import annotations

import os
import sys
import time

# One BLAS thread unless told otherwise (before NumPy loads): the work is small or memory-bound,
# and on a busy machine (a TPU VM still training) waiting for BLAS helper threads that are not
# scheduled makes a 0.1 ms matrix-vector product take milliseconds.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from absl import app, flags  # noqa: E402

from tpuflow import cli, ensemble  # noqa: E402
from tpuflow.ensemble import data as ensemble_data, report as ensemble_report  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Dir with train_cv.csv and submission_format.csv (and "
                    "unique_labels_sorted.npy for class probabilities).")
flags.DEFINE_string("model_dirs", None, "Comma-separated experiment dirs or globs, each with preds/.")
flags.DEFINE_string("out_dir", None, "Where the submission, report, weights and plot go.")
flags.DEFINE_enum("method", "pairwise", list(ensemble.METHODS), "Weight search method.")
flags.DEFINE_enum("metric", "rmse_raw", [*sorted(ensemble.METRICS), *ensemble.OLD_NAMES], "What the method "
                  "minimises (or maximises): rmse_raw (RMSE of the blended values), rmse_rounded (of them rounded: "
                  "the competition's score), logloss or accuracy (probabilities); rmse: old name of rmse_raw.")
flags.DEFINE_string("sort_metric", "", "pairwise: ranking metric (default: rmse_rounded for values, "
                    "as the reference; else --metric).")
flags.DEFINE_string("name", "", "Output name suffix (default: ens_<method>).")
flags.DEFINE_bool("nested", True, "Also fit on k-1 folds and score the held-out fold, for every fold.")
flags.DEFINE_integer("steps", 100, "forward: most additions per run.")
flags.DEFINE_integer("init", 1, "forward: start from this many best inputs.")
flags.DEFINE_integer("bags", 0, "forward: > 0 averages the weights of this many runs on random subsets.")
flags.DEFINE_float("bag_fraction", 0.5, "forward: share of the inputs in each bag.")
flags.DEFINE_integer("seed", 0, "forward: seed of the bag sampling.")
flags.DEFINE_integer("max_iter", 1000, "optimize: L-BFGS-B iterations.")
flags.DEFINE_enum("probs_to_values", "", ["", *ensemble_data.PROBS_TO_VALUES],
                  "Turn (n, k) class probabilities into values (expectation or argmax label).")
flags.DEFINE_string("labels", "", "unique_labels_sorted.npy (default: in --data_dir).")
flags.DEFINE_string("target_col", "wind_speed", "Target column of train_cv.csv.")
flags.DEFINE_bool("round_submission", True, "Round submission values to integers (the reference task).")
flags.DEFINE_bool("plot", True, "Write plot_<name>.png.")
flags.DEFINE_bool("include_quick", False, "Also blend smoke runs (--quick), left out by default: their CV "
                  "means nothing.")
flags.mark_flags_as_required(["data_dir", "model_dirs", "out_dir"])


def _progress(done: int, total: int, model_dir: str) -> None:
    """One line per tenth of the experiments (every one on a terminal): loads can take a while."""
    if sys.stderr.isatty():
        print(f"\rloading predictions {done}/{total} {model_dir[-50:]:50s}", end="" if done < total else "\n",
              file=sys.stderr, flush=True)
    elif done == total or done % max(1, total // 10) == 0:
        print(f"loading predictions {done}/{total}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if os.path.exists(FLAGS.out_dir) and not os.path.isdir(FLAGS.out_dir):
        raise cli.UsageError(f"--out_dir={FLAGS.out_dir}: is a file, not a directory")
    tic = time.perf_counter()
    dirs = ensemble_data.expand_model_dirs(FLAGS.model_dirs)
    smoke = ensemble_data.smoke_runs(dirs)
    if smoke and not FLAGS.include_quick:
        if len(smoke) == len(dirs):
            raise cli.UsageError(f"--model_dirs: every run is a smoke run (--quick): {', '.join(smoke)}; "
                                 "pass --include_quick to blend them anyway")
        dirs = [d for d in dirs if d not in smoke]
        print(f"left out {len(smoke)} smoke run(s) (--quick): {', '.join(smoke)} (--include_quick blends them)")
    inputs = ensemble_data.load_inputs(FLAGS.data_dir, dirs, target_col=FLAGS.target_col,
                                       labels_path=FLAGS.labels or None,
                                       probs_to_values=FLAGS.probs_to_values or None, progress=_progress)
    params = ensemble.Params(FLAGS.steps, FLAGS.init, FLAGS.bags, FLAGS.bag_fraction, FLAGS.seed, FLAGS.max_iter)
    result = ensemble_report.run(inputs, FLAGS.method, FLAGS.metric, FLAGS.sort_metric or None, params,
                                 FLAGS.nested, {"load": time.perf_counter() - tic})
    paths = ensemble_report.write_outputs(result, FLAGS.out_dir, FLAGS.name or f"ens_{FLAGS.method}",
                                          FLAGS.data_dir, FLAGS.round_submission, FLAGS.plot)
    print(ensemble_report.summary(result))
    print(f"total {time.perf_counter() - tic:.2f}s; wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
    cli.run_main(main)
