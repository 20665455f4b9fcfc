"""Runs an ensemble method over loaded inputs and writes what a user keeps from it.

Outputs (in `out_dir`, named after the run): `submission_<name>.csv` (submission order, rounded
integers by default), `report_<name>.json` (inputs, method, weights, scores, timings),
`weights_<name>.csv` (one row per (experiment, TTA)) and `plot_<name>.png` (weights by
experiment; score as predictions are added). Every file is rendered in memory first and then
written atomically, so a failure leaves earlier outputs as they were.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time

import numpy as np
import pandas as pd

from tpuflow import ensemble, storage
from tpuflow.ensemble.data import Inputs


@dataclasses.dataclass(frozen=True)
class Run:
    """One ensemble: the fit on all out-of-fold rows, its nested estimate and its test blend."""
    inputs: Inputs
    method: str
    metric: ensemble.Metric
    sort_metric: ensemble.Metric | None
    params: ensemble.Params
    fit: ensemble.Fit
    nested: ensemble.Nested | None
    test_pred: np.ndarray
    single_scores: dict[str, np.ndarray]  # metric name -> (M,) score of every input
    scores: dict[str, dict]  # metric name -> ensemble and best-single scores, fit and nested
    timings: dict[str, float]


def default_sort_metric(metric: ensemble.Metric) -> ensemble.Metric:
    """The reference ranks by the competition score (rounded RMSE) while it blends on RMSE."""
    return ensemble.METRICS["rmse_rounded"] if metric.form == "values" else metric


def run(inputs: Inputs, method: str, metric: str, sort_metric: str | None = None,
        params: ensemble.Params = ensemble.Params(), nested: bool = True,
        timings: dict[str, float] | None = None) -> Run:
    """Fits `method` on every out-of-fold row, estimates it nested (fit on k-1 folds, score the
    held-out one, per fold) and blends the test predictions. Names are checked before any work."""
    ranks = ensemble.method(method).RANKS
    fit_metric = ensemble.get_metric(metric, inputs.form, "--metric")
    rank = (ensemble.get_metric(sort_metric, inputs.form, "--sort_metric") if sort_metric
            else default_sort_metric(fit_metric))
    if nested and len(inputs.folds) < 2:
        raise ValueError(f"train_cv.csv has {len(inputs.folds)} fold: a nested estimate needs two (or pass --nonested)")
    timings = dict(timings or {})
    tic = time.perf_counter()
    problem = ensemble.Problem(inputs.val, inputs.y, inputs.fold_slices, fit_metric)
    form_metrics = [m for m in ensemble.METRICS.values() if m.form == inputs.form]
    single = {m.name: np.asarray(m.finish(problem.fold_sums(m) / problem.n), dtype=np.float64)
              for m in form_metrics}
    timings["scores"] = time.perf_counter() - tic

    tic = time.perf_counter()
    result = ensemble.fit(problem, method, rank, params)
    timings["fit"] = time.perf_counter() - tic
    held = None
    if nested:
        tic = time.perf_counter()
        held = ensemble.nested(problem, method, rank, params)
        timings["nested"] = time.perf_counter() - tic
    tic = time.perf_counter()
    test_pred = result.apply(inputs.test)
    timings["apply_test"] = time.perf_counter() - tic
    scores = _scores(inputs, form_metrics, single, result, held)
    return Run(inputs, method, fit_metric, rank if ranks else None, params, result, held,
               test_pred, single, scores, timings)


def _scores(inputs: Inputs, metrics: list[ensemble.Metric], single: dict[str, np.ndarray], result: ensemble.Fit,
            held: ensemble.Nested | None) -> dict:
    """Per metric: the ensemble and the best single input, on the fit rows and nested."""
    y, out = inputs.y, {}
    for m in metrics:
        best = int(np.argmax(single[m.name]) if m.greater_is_better else np.argmin(single[m.name]))
        entry = {"ensemble_fit": m.score(y, result.fit_pred),
                 "best_single_fit": float(single[m.name][best]),
                 "best_single_name": inputs.names[best]}
        if held is not None:
            entry["ensemble_nested"] = m.score(y, held.held_out)
            entry["ensemble_nested_per_fold"] = [m.score(y[s], held.held_out[s]) for s in inputs.fold_slices]
            entry["best_single_nested"] = m.score(y, held.single_held_out)
            entry["best_single_nested_per_fold"] = [m.score(y[s], held.single_held_out[s]) for s in inputs.fold_slices]
        out[m.name] = entry
    return out


def submission_frame(run_: Run, round_values: bool = True) -> pd.DataFrame:
    """Test blend in submission order; probabilities become the expected label."""
    inputs, pred = run_.inputs, run_.test_pred
    if inputs.form == "probs":
        pred = np.dot(pred, inputs.labels)
    values = np.rint(pred).astype(np.int64) if round_values else pred
    return pd.DataFrame({inputs.id_col: inputs.test_ids, inputs.value_col: values})


def weights_frame(run_: Run) -> pd.DataFrame:
    inputs = run_.inputs
    frame = pd.DataFrame({"name": inputs.names, "model_dir": inputs.model_dirs, "tta": inputs.ttas,
                          "weight": run_.fit.weights})
    for name, values in run_.single_scores.items():
        frame[name] = values
    return frame


def report(run_: Run, paths: dict[str, str], data_dir: str) -> dict:
    """Everything needed to understand and reproduce the run, JSON-ready."""
    inputs, fit = run_.inputs, run_.fit
    by_model = pd.Series(fit.weights, index=list(inputs.model_dirs)).groupby(level=0, sort=False).sum()
    rep = {
        "method": run_.method, "metric": run_.metric.name,
        "sort_metric": None if run_.sort_metric is None else run_.sort_metric.name,
        "params": dataclasses.asdict(run_.params), "data_dir": data_dir,
        "model_dirs": list(dict.fromkeys(inputs.model_dirs)), "form": inputs.form,
        "n_inputs": len(inputs.names), "n_rows": int(len(inputs.y)), "n_test": int(len(inputs.test_ids)),
        "folds": list(inputs.folds), "scores": run_.scores, "fallback_to_best_single": fit.fallback,
        "weights_by_model": {k: float(v) for k, v in by_model.items()},
        "inputs": weights_frame(run_).to_dict(orient="records"),
        "trace": {"x": fit.trace_x, "score": _as_scores(run_.metric, fit.trace)},
        "timings_s": {k: round(v, 4) for k, v in run_.timings.items()}, "outputs": paths,
    }
    if fit.order is not None:
        rep["pairwise"] = {"order": [inputs.names[i] for i in fit.order], "c": [1.0] + fit.cs.tolist()}
    if run_.nested is not None:
        rep["nested_best_single"] = [inputs.names[i] for i in run_.nested.chosen]
    return rep


def _as_scores(metric: ensemble.Metric, losses: list[float]) -> list[float]:
    return [-v if metric.greater_is_better else v for v in losses]


def plot_png(run_: Run) -> bytes:
    """Two panels: weight per experiment (summed over TTAs), and the fit score along the method's steps."""
    # Imported here, and without pyplot: the rest of the tool does not pay for it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    inputs, fit = run_.inputs, run_.fit
    labels = [name.rsplit(":tta", 1)[0] for name in inputs.names]
    by_model = pd.Series(fit.weights, index=labels).groupby(level=0, sort=False).sum()
    by_model = by_model[by_model != 0].sort_values()
    names = [str(k)[-40:] for k in by_model.index]
    height = max(4.0, 0.22 * len(by_model) + 1.5)
    fig = Figure(figsize=(13, height))
    FigureCanvasAgg(fig)
    ax_w, ax_s = fig.subplots(1, 2)
    ax_w.barh(names, by_model.to_numpy(), color="tab:blue")
    ax_w.axvline(0, color="black", linewidth=0.8)
    ax_w.set_xlabel("weight (sum over TTAs)")
    ax_w.set_title(f"{run_.method}: {len(by_model)} of {len(set(inputs.model_dirs))} experiments used")
    ax_w.tick_params(axis="y", labelsize=7)
    trace = _as_scores(run_.metric, fit.trace)
    ax_s.plot(np.arange(len(trace)), trace, marker=".", markersize=3, label="ensemble (fit rows)")
    entry = run_.scores[run_.metric.name]
    ax_s.axhline(entry["best_single_fit"], color="tab:gray", linestyle="--", label="best single (fit rows)")
    if "ensemble_nested" in entry:
        ax_s.axhline(entry["ensemble_nested"], color="tab:red", linestyle=":", label="ensemble (nested)")
    ax_s.set_xlabel(fit.trace_x)
    ax_s.set_ylabel(run_.metric.name)
    ax_s.legend()
    ax_s.grid(alpha=0.3)
    # Margins in inches (tight_layout would cost 0.15 s): room for the experiment names at 7 pt.
    fig.subplots_adjust(left=max(0.06, (0.055 * max(map(len, names), default=0) + 0.3) / 13), right=0.98,
                        wspace=0.25, top=1 - 0.4 / height, bottom=0.6 / height)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def write_outputs(run_: Run, out_dir: str, name: str, data_dir: str, round_values: bool = True,
                  plot: bool = True) -> dict[str, str]:
    """Renders every output in memory, writes each to a temporary name beside its target, and
    renames them into place only once all are written: a failure leaves earlier outputs as
    they were, and no half-written file. Returns the paths."""
    tic = time.perf_counter()
    paths = {"submission": storage.join(out_dir, f"submission_{name}.csv"),
             "weights": storage.join(out_dir, f"weights_{name}.csv")}
    blobs = {"submission": submission_frame(run_, round_values).to_csv(index=False).encode(),
             "weights": weights_frame(run_).to_csv(index=False).encode()}
    if plot:
        paths["plot"] = storage.join(out_dir, f"plot_{name}.png")
        blobs["plot"] = plot_png(run_)
    paths["report"] = storage.join(out_dir, f"report_{name}.json")
    run_.timings["render"] = time.perf_counter() - tic
    blobs["report"] = (json.dumps(report(run_, paths, data_dir), indent=2, sort_keys=True, default=str) + "\n").encode()
    with contextlib.ExitStack() as stack:
        # Renames happen as the stack unwinds, last entered first: the report goes in first,
        # and a failed rename stops the ones after it.
        for key, blob in blobs.items():
            with open(stack.enter_context(storage.atomic_path(paths[key])), "wb") as f:
                f.write(blob)
    return paths


def summary(run_: Run) -> str:
    """A few lines for the terminal: honest and in-sample scores side by side, then the weights."""
    inputs, entry_names = run_.inputs, list(run_.scores)
    lines = [f"{run_.method}: {len(inputs.names)} predictions from {len(set(inputs.model_dirs))} experiments, "
             f"{len(inputs.y)} out-of-fold rows, {len(inputs.folds)} folds; fit on {run_.metric.name}"
             + (f", ranked by {run_.sort_metric.name}" if run_.sort_metric is not None else "")]
    header = f"{'':40s}" + "".join(f"{m:>14s}" for m in entry_names)
    lines.append(header)
    rows = [("ensemble, fit on all rows (flattered)", "ensemble_fit"),
            ("ensemble, nested (honest)", "ensemble_nested"),
            ("best single, all rows", "best_single_fit"),
            ("best single, nested", "best_single_nested")]
    for label, key in rows:
        if key in run_.scores[entry_names[0]]:
            lines.append(f"{label:40s}" + "".join(f"{run_.scores[m][key]:14.5f}" for m in entry_names))
    if run_.nested is not None:
        folds = run_.scores[run_.metric.name]["ensemble_nested_per_fold"]
        lines.append(f"nested {run_.metric.name} per fold: " + ", ".join(f"{v:.4f}" for v in folds))
    w = run_.fit.weights
    top = np.argsort(-np.abs(w), kind="stable")[:8]
    lines.append(f"weights: {np.count_nonzero(w)} of {len(w)} non-zero; largest: "
                 + ", ".join(f"{inputs.names[i]}={w[i]:.4f}" for i in top if w[i] != 0))
    if run_.fit.fallback:
        lines.append("note: the mix scored worse than the best single input on the fit rows; that input is used")
    lines.append("timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in run_.timings.items()))
    return "\n".join(lines)
