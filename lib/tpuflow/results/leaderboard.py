"""The experiment database: every run's card as one row, ranked by CV per metric, with leaderboard scores.

Run dirs are found under the given roots (local or `gs://`): a root that holds `run_card.json` is a
run dir itself, otherwise each of its sub-dirs holding one is. Cards lacking fields are
reported (by path and field), never silently left out. Smoke runs (`--quick`) are left out unless
asked (`smoke_runs`). CVs scored with different metrics (`rmse_rounded`, `rmse_raw`) are never
ranked against each other: the table is ranked within each metric (`metric`, `rank`).

The reference solution's own database (`experiment_database.csv`) can be imported beside the
cards (`import_reference`): its columns are mapped to ours (`REFERENCE_COLUMNS`), the ones we
have no name for are kept under their own.
"""
from __future__ import annotations

import csv
import io

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tpuflow import storage  # noqa: E402
from tpuflow.results import run_card  # noqa: E402

# The experiment database's columns, in order; per-fold columns (CV_fold_<k>, epochs_fold_<k>)
# follow `rank` for as many folds as the cards have, columns imported under their own names last.
LEAD_COLUMNS = ("experiment_id", "LB_private", "LB_public", "CV_tta", "CV_no_tta", "metric", "rank")
COLUMNS = ("task", "architecture", "resolution", "channels", "inverted", "kind", "n_frames", "step",
           "hist_depth", "backbone", "weights", "batch_size", "lr", "max_epochs", "aug_prob",
           "tta_number", "description", "status", "last_invocation", "quick", "dataset", "n_params", "replicas",
           "device", "backend", "precision", "wall_time_s", "updated", "run_dir")
# `status` is the run's (its training's); `last_invocation` the latest command on its run dir,
# e.g. `score: failed` for a failed rescoring of a complete run. `metric`: what the CV columns
# score; `rank`: the place by the sorting column among the runs of that metric.
# What the terminal table shows (the CSV has everything).
SHOWN = ("experiment_id", "status", "metric", "rank", "LB_private", "LB_public", "CV_tta", "CV_no_tta",
         "architecture", "backbone", "kind", "hist_depth", "resolution", "epochs")
OLD_METRICS = {"rmse": "rmse_rounded"}  # run.py's old spelling (docs/conventions.md)

# The reference's experiment_database.csv: its column -> ours (CV_14k_f<k>, n_epochs_f<k>: per fold).
REFERENCE_COLUMNS = {
    "experiment_id": "experiment_id", "LB_private": "LB_private", "LB_public": "LB_public",
    "CV_70k_tta9": "CV_tta", "CV_70k": "CV_no_tta", "task": "task", "architecture": "architecture",
    "image_resolution": "resolution", "image_n_channels": "channels", "image_inverted": "inverted",
    "n_frames": "n_frames", "step": "step", "historical_depth": "hist_depth", "backbone": "backbone",
    "backbone_weights": "weights", "batch_size": "batch_size", "learning_rate": "lr",
    "max_n_epochs": "max_epochs", "tta_number": "tta_number", "experiment_description": "description",
}
REFERENCE_FOLD_COLUMNS = (("CV_14k_f", "CV_fold_"), ("n_epochs_f", "epochs_fold_"))
REFERENCE_NUMERIC = ("LB_private", "LB_public", "CV_tta", "CV_no_tta", "resolution", "channels", "n_frames", "step",
                     "hist_depth", "batch_size", "lr", "max_epochs", "tta_number")
REFERENCE_VALUES = {"task": {"regr": "regression", "clas": "classification"},
                    "inverted": {"yes": True, "no": False}}
# The reference's architectures -> the dataset kind they read (the others read sequences).
REFERENCE_KINDS = {"cnn-1ch": "single", "cnn-3ch-ind": "stacked", "cnn-3ch-mean": "mean"}
# The reference's run.py scored rounded predictions (its `rmse`: docs/conventions.md).
REFERENCE_METRIC = "rmse_rounded"


def find_cards(roots: list[str]) -> list[str]:
    """Card paths under the roots: `<root>/run_card.json` or `<root>/*/run_card.json` (or an older
    run's `record.json` where its dir has no `run_card.json`), sorted."""
    found = []
    for root in roots:
        own = run_card.find_card(root)
        if own:
            found.append(own)
            continue
        cards = {path.rsplit("/", 1)[0]: path for name in (run_card.OLD_NAMES[run_card.CARD_NAME], run_card.CARD_NAME)
                 for path in storage.glob(storage.join(root, "*", name))}  # today's name wins
        found += cards.values()
    return sorted(set(found))


def load_cards(roots: list[str]) -> tuple[list[tuple[str, dict]], list[str]]:
    """([(path, card)] of the valid cards, ["<path>: <problem>"] of the others)."""
    good, problems = [], []
    for path in find_cards(roots):
        try:
            good.append((path, run_card.read_card(path)))
        except (ValueError, OSError) as err:  # JSON errors are ValueErrors
            problems.append(str(err) if path in str(err) else f"{path}: {err}")
    return good, problems


def smoke_runs(items: list[tuple[str, dict]]) -> list[str]:
    """The experiment ids of the smoke runs (`--quick`) among the cards."""
    return [card["experiment_id"] for _, card in items if run_card.is_quick(card)]


def card_row(path: str, card: dict) -> dict:
    """One database row from a card."""
    flags, dataset, model = card["flags"], card["dataset"] or {}, card["model"] or {}
    cv, lb = card["cv"] or {}, card["lb"] or {}
    last = (card.get("invocations") or [None])[-1]  # older cards have no invocations
    metric = cv.get("metric")
    row = {
        "experiment_id": card["experiment_id"], "LB_private": lb.get("private"),
        "LB_public": lb.get("public"), "CV_tta": cv.get("tta"), "CV_no_tta": cv.get("no_tta"),
        "metric": OLD_METRICS.get(metric, metric),
    }
    for fold, scores in sorted(cv.get("per_fold", {}).items(), key=lambda kv: int(kv[0])):
        row[f"CV_fold_{fold}"] = scores["tta"]
    for fold, info in sorted(card["folds"].items(), key=lambda kv: int(kv[0])):
        row[f"epochs_fold_{fold}"] = info["epochs"]
    row.update({
        "task": flags.get("task"), "architecture": model.get("architecture", flags.get("architecture")),
        "resolution": flags.get("dim"), "channels": dataset.get("channels"), "inverted": flags.get("invert"),
        "kind": dataset.get("kind"), "n_frames": dataset.get("n_frames"), "step": dataset.get("step"),
        "hist_depth": dataset.get("history_depth"), "backbone": flags.get("backbone"),
        "weights": model.get("weights", flags.get("weights")), "batch_size": flags.get("batch_size"),
        "lr": flags.get("lr"), "max_epochs": flags.get("n_epochs"), "aug_prob": flags.get("aug_prob"),
        "tta_number": cv.get("tta_number", flags.get("tta_number")), "description": card["description"],
        "status": card["status"],
        "last_invocation": f"{'_'.join(last['jobs'])}: {last['status']}" if last else None,
        "quick": run_card.is_quick(card),
        "dataset": dataset.get("spec"), "n_params": model.get("n_params"),
        "replicas": (card["runtime"] or {}).get("replicas"), "device": (card["runtime"] or {}).get("device"),
        "backend": (card["runtime"] or {}).get("backend"), "precision": (card["runtime"] or {}).get("precision"),
        "wall_time_s": card["timings"].get("total"), "updated": card["updated"],
        "run_dir": path.rsplit("/", 1)[0],
    })
    return row


def import_reference(path: str) -> pd.DataFrame:
    """The reference solution's `experiment_database.csv` as database rows (status `imported`).

    Its columns are renamed to ours (`REFERENCE_COLUMNS`, per-fold CV and epochs), its values
    spelled ours (`regr` -> `regression`, `yes` -> True), the dataset kind read from its
    architecture; columns we have no name for (e.g. `ensemble_id`, `aug_number`) are kept under
    their own. A malformed file is an error naming the file and the line."""
    try:
        lines = list(csv.reader(io.StringIO(storage.read_text(path))))
    except (csv.Error, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable experiment database CSV ({err})") from None
    if not lines:
        raise ValueError(f"{path}: empty (expected the reference's experiment_database.csv)")
    for number, fields in enumerate(lines[1:], start=2):
        if fields and len(fields) != len(lines[0]):
            raise ValueError(f"{path} line {number}: {len(fields)} fields, but its header has {len(lines[0])}")
    raw = pd.DataFrame([f for f in lines[1:] if f], columns=lines[0])
    if "experiment_id" not in raw.columns:
        raise ValueError(f"{path}: no experiment_id column (columns: {list(raw.columns)}); expected the "
                         f"reference's experiment_database.csv ({', '.join(list(REFERENCE_COLUMNS)[:5])}, ...)")
    renamed = {}
    for column in raw.columns:
        fold = next((ours + column[len(theirs):] for theirs, ours in REFERENCE_FOLD_COLUMNS
                     if column.startswith(theirs) and column[len(theirs):].isdigit()), None)
        renamed[column] = REFERENCE_COLUMNS.get(column) or fold or column
    table = raw.rename(columns=renamed).replace("", None)
    for i, row in table.iterrows():
        where = f"{path} line {i + 2} ({row['experiment_id']})"
        if not row["experiment_id"]:
            raise ValueError(f"{path} line {i + 2}: empty experiment_id")
        for column in [*REFERENCE_NUMERIC, *(c for c in table.columns if c.startswith(("CV_fold_", "epochs_fold_")))]:
            value = row.get(column)
            if value is not None:
                try:
                    float(value)
                except ValueError:
                    theirs = next(k for k, v in renamed.items() if v == column)
                    raise ValueError(f"{where}: {theirs}={value!r} is not a number") from None
        for column, spelled in REFERENCE_VALUES.items():
            if row.get(column) is not None and row[column] not in spelled:
                theirs = next(k for k, v in renamed.items() if v == column)
                raise ValueError(f"{where}: {theirs}={row[column]!r}: expected one of {sorted(spelled)}")
    twice = table["experiment_id"][table["experiment_id"].duplicated()].tolist()
    if twice:
        raise ValueError(f"{path}: experiment id(s) {twice} on more than one line")
    numeric = [c for c in table.columns if c in REFERENCE_NUMERIC or c.startswith(("CV_fold_", "epochs_fold_"))]
    table[numeric] = table[numeric].apply(pd.to_numeric)
    for column, spelled in REFERENCE_VALUES.items():
        if column in table.columns:
            table[column] = table[column].map(spelled, na_action="ignore")
    table["kind"] = table.get("architecture", pd.Series(None, index=table.index)).map(
        lambda a: REFERENCE_KINDS.get(a, "sequence" if isinstance(a, str) else None))
    scored = table.reindex(columns=["CV_tta", "CV_no_tta"]).notna().any(axis=1)
    table["metric"] = scored.map({True: REFERENCE_METRIC, False: None})
    table["status"], table["quick"], table["run_dir"] = "imported", False, path
    return table


def build_table(items: list[tuple[str, dict]], sort_by: str = "CV_tta",
                imported: list[pd.DataFrame] = ()) -> pd.DataFrame:
    """The experiment database, best (lowest) `sort_by` first, runs without a score last; by a CV
    column, ranked within each CV metric (`metric`, `rank`), the most common metric first.
    `imported`: rows from `import_reference`."""
    table = pd.concat([pd.DataFrame([card_row(path, card) for path, card in items]), *imported],
                      ignore_index=True)
    if table.empty:
        return pd.DataFrame(columns=[*LEAD_COLUMNS, *COLUMNS])
    table = table.reindex(columns=[*dict.fromkeys([*LEAD_COLUMNS, *COLUMNS, *table.columns])])
    folds = sorted({c for c in table.columns if c.startswith(("CV_fold_", "epochs_fold_"))},
                   key=lambda c: (c.startswith("epochs"), int(c.rsplit("_", 1)[1])))
    extra = [c for c in table.columns if c not in (*LEAD_COLUMNS, *COLUMNS, *folds)]
    table = table[[*LEAD_COLUMNS, *folds, *COLUMNS, *extra]]
    table[["LB_private", "LB_public"]] = table[["LB_private", "LB_public"]].astype(float)
    if sort_by not in table.columns:
        raise ValueError(f"--sort_by={sort_by!r}: not a column; choose from {list(table.columns)}")
    per_metric = sort_by.startswith("CV")  # LB scores are the competition's, whatever the CV metric
    groups = table["metric"].map(table["metric"].value_counts()).fillna(0) if per_metric else 0
    table = table.assign(_group=-groups).sort_values(["_group", "metric", sort_by, "experiment_id"] if per_metric
                                                     else [sort_by, "experiment_id"], na_position="last", kind="stable")
    ranked = table[sort_by].notna() & (table["metric"].notna() if per_metric else True)
    table["rank"] = (table[ranked].groupby("metric" if per_metric else "_group").cumcount() + 1).astype("Int64")
    return table.drop(columns="_group").reset_index(drop=True)


def metrics_note(table: pd.DataFrame) -> str | None:
    """One line saying that the CVs of different metrics are ranked apart (None: one metric)."""
    counts = table["metric"].value_counts()
    if len(counts) < 2:
        return None
    return ("CV scored with different metrics, ranked within each (never against each other): "
            + ", ".join(f"{metric} {n} run(s)" for metric, n in counts.items()))


def format_table(table: pd.DataFrame) -> str:
    """The terminal table: the main columns, epochs per fold joined as e.g. `6/5/6`."""
    shown = table.copy()
    shown["rank"] = shown["rank"].map(lambda r: "-" if pd.isna(r) else str(int(r)))
    epoch_columns = [c for c in shown.columns if c.startswith("epochs_fold_")]
    shown["epochs"] = shown[epoch_columns].apply(
        lambda r: "/".join(str(int(v)) for v in r if pd.notna(v)), axis=1) if epoch_columns else ""
    return shown[list(SHOWN)].to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-")


def set_lb(roots: list[str], experiment_id: str, private: float | None, public: float | None) -> str:
    """Attaches leaderboard scores to the one run with this id; returns its card path.

    An id found in no run, or in several run dirs, is an error naming what was found.
    """
    items, _ = load_cards(roots)
    matches = [path for path, card in items if card["experiment_id"] == experiment_id]
    if not matches:
        known = sorted(card["experiment_id"] for _, card in items)
        raise KeyError(f"--set_lb: no run with experiment id {experiment_id!r} under {roots}; known ids: {known}")
    if len(matches) > 1:
        raise ValueError(f"--set_lb: experiment id {experiment_id!r} is in several run dirs {matches}; "
                         "pass only one of them in --runs")
    return run_card.attach_lb(matches[0], private, public)


def plot(table: pd.DataFrame, title: str = "") -> bytes:
    """PNG bytes: CV (with TTA) against history depth, one colour per architecture, and the best
    CV of each architecture; of the runs of the most common CV metric only (the title names it)."""
    scored = table.dropna(subset=["CV_tta"])
    metric = scored["metric"].value_counts().index[0] if scored["metric"].notna().any() else None
    if metric is not None:
        scored = scored[scored["metric"] == metric]
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
    fig.suptitle(title or f"{len(scored)} scored experiments" + (f" (CV: {metric})" if metric else ""))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()
