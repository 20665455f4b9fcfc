"""The experiment database: every run's record as one row, sorted by CV, with leaderboard scores.

Run dirs are found under the given roots (local or `gs://`): a root that holds `record.json` is a
run dir itself, otherwise each of its sub-dirs holding one is. Records lacking fields are
reported (by path and field), never silently left out.
"""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tpuflow import storage  # noqa: E402
from tpuflow.results import run_record  # noqa: E402

# The experiment database's columns, in order; per-fold columns (CV_fold_<k>, epochs_fold_<k>)
# follow CV_no_tta for as many folds as the records have.
LEAD_COLUMNS = ("experiment_id", "LB_private", "LB_public", "CV_tta", "CV_no_tta")
COLUMNS = ("task", "architecture", "resolution", "channels", "inverted", "kind", "n_frames", "step",
           "hist_depth", "backbone", "weights", "batch_size", "lr", "max_epochs", "aug_prob",
           "tta_number", "description", "status", "last_invocation", "dataset", "n_params", "replicas",
           "device", "backend", "precision", "wall_time_s", "updated", "run_dir")
# `status` is the run's (its training's); `last_invocation` the latest command on its run dir,
# e.g. `score: failed` for a failed rescoring of a complete run.
# What the terminal table shows (the CSV has everything).
SHOWN = ("experiment_id", "status", "LB_private", "LB_public", "CV_tta", "CV_no_tta", "architecture",
         "backbone", "kind", "hist_depth", "resolution", "epochs")


def find_records(roots: list[str]) -> list[str]:
    """Record paths under the roots: `<root>/record.json` or `<root>/*/record.json`, sorted."""
    found = []
    for root in roots:
        own = run_record.record_path(root)
        if storage.exists(own):
            found.append(own)
        else:
            found += storage.glob(storage.join(root, "*", run_record.RECORD_NAME))
    return sorted(set(found))


def load_records(roots: list[str]) -> tuple[list[tuple[str, dict]], list[str]]:
    """([(path, record)] of the valid records, ["<path>: <problem>"] of the others)."""
    good, problems = [], []
    for path in find_records(roots):
        try:
            good.append((path, run_record.read_record(path)))
        except (ValueError, OSError) as err:  # JSON errors are ValueErrors
            problems.append(str(err) if path in str(err) else f"{path}: {err}")
    return good, problems


def record_row(path: str, record: dict) -> dict:
    """One database row from a record."""
    flags, dataset, model = record["flags"], record["dataset"] or {}, record["model"] or {}
    cv, lb = record["cv"] or {}, record["lb"] or {}
    last = (record.get("invocations") or [None])[-1]  # older records have no invocations
    row = {
        "experiment_id": record["experiment_id"], "LB_private": lb.get("private"),
        "LB_public": lb.get("public"), "CV_tta": cv.get("tta"), "CV_no_tta": cv.get("no_tta"),
    }
    for fold, scores in sorted(cv.get("per_fold", {}).items(), key=lambda kv: int(kv[0])):
        row[f"CV_fold_{fold}"] = scores["tta"]
    for fold, info in sorted(record["folds"].items(), key=lambda kv: int(kv[0])):
        row[f"epochs_fold_{fold}"] = info["epochs"]
    row.update({
        "task": flags.get("task"), "architecture": model.get("architecture", flags.get("architecture")),
        "resolution": flags.get("dim"), "channels": dataset.get("channels"), "inverted": flags.get("invert"),
        "kind": dataset.get("kind"), "n_frames": dataset.get("n_frames"), "step": dataset.get("step"),
        "hist_depth": dataset.get("history_depth"), "backbone": flags.get("backbone"),
        "weights": model.get("weights", flags.get("weights")), "batch_size": flags.get("batch_size"),
        "lr": flags.get("lr"), "max_epochs": flags.get("n_epochs"), "aug_prob": flags.get("aug_prob"),
        "tta_number": cv.get("tta_number", flags.get("tta_number")), "description": record["description"],
        "status": record["status"],
        "last_invocation": f"{'_'.join(last['jobs'])}: {last['status']}" if last else None,
        "dataset": dataset.get("spec"), "n_params": model.get("n_params"),
        "replicas": (record["runtime"] or {}).get("replicas"), "device": (record["runtime"] or {}).get("device"),
        "backend": (record["runtime"] or {}).get("backend"), "precision": (record["runtime"] or {}).get("precision"),
        "wall_time_s": record["timings"].get("total"), "updated": record["updated"],
        "run_dir": path.rsplit("/", 1)[0],
    })
    return row


def build_table(items: list[tuple[str, dict]], sort_by: str = "CV_tta") -> pd.DataFrame:
    """The experiment database, best (lowest) `sort_by` first, runs without a score last."""
    rows = [record_row(path, record) for path, record in items]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*LEAD_COLUMNS, *COLUMNS])
    folds = sorted({c for c in table.columns if c.startswith(("CV_fold_", "epochs_fold_"))},
                   key=lambda c: (c.startswith("epochs"), int(c.rsplit("_", 1)[1])))
    table = table[[*LEAD_COLUMNS, *folds, *COLUMNS]]
    table[["LB_private", "LB_public"]] = table[["LB_private", "LB_public"]].astype(float)
    if sort_by not in table.columns:
        raise ValueError(f"--sort_by={sort_by!r}: not a column; choose from {list(table.columns)}")
    return table.sort_values([sort_by, "experiment_id"], na_position="last", kind="stable").reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    """The terminal view: the main columns, epochs per fold joined as e.g. `6/5/6`."""
    view = table.copy()
    epoch_columns = [c for c in view.columns if c.startswith("epochs_fold_")]
    view["epochs"] = view[epoch_columns].apply(
        lambda r: "/".join(str(int(v)) for v in r if pd.notna(v)), axis=1) if epoch_columns else ""
    return view[list(SHOWN)].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


def set_lb(roots: list[str], experiment_id: str, private: float | None, public: float | None) -> str:
    """Attaches leaderboard scores to the one run with this id; returns its record path.

    An id found in no run, or in several run dirs, is an error naming what was found.
    """
    items, _ = load_records(roots)
    matches = [path for path, record in items if record["experiment_id"] == experiment_id]
    if not matches:
        known = sorted(record["experiment_id"] for _, record in items)
        raise KeyError(f"--set_lb: no run with experiment id {experiment_id!r} under {roots}; known ids: {known}")
    if len(matches) > 1:
        raise ValueError(f"--set_lb: experiment id {experiment_id!r} is in several run dirs {matches}; "
                         "pass only one of them in --runs")
    run_record.attach_lb(matches[0], private, public)
    return matches[0]


def plot(table: pd.DataFrame, title: str = "") -> bytes:
    """PNG bytes: CV (with TTA) against history depth, one colour per architecture, and the best
    CV of each architecture."""
    scored = table.dropna(subset=["CV_tta"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for arch, group in scored.groupby(scored["architecture"].fillna("?")):
        left.scatter(group["hist_depth"], group["CV_tta"], label=arch, s=40)
    left.set_xlabel("history depth (frames of the timeline an example spans)")
    left.set_ylabel("CV RMSE (TTA mean)")
    left.grid(alpha=0.3)
    if not scored.empty:
        left.legend(fontsize=8)
        best = scored.groupby(scored["architecture"].fillna("?"))["CV_tta"].min().sort_values()
        right.barh(best.index[::-1], best.to_numpy()[::-1])
        right.set_xlim(0, float(np.nanmax(best.to_numpy())) * 1.1)
    right.set_xlabel("best CV RMSE (TTA mean)")
    right.set_title("by architecture")
    fig.suptitle(title or f"{len(scored)} scored experiments")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
