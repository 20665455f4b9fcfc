"""The run card: one JSON file per run dir, the single source of truth about a run.

`<output_dir>/run_card.json` holds what is needed to compare, find and reproduce a run: the
experiment id (the run dir's name), the resolved flags of the training run, the dataset (spec,
kind, frames, step, history depth, SHA-256 of its manifest), the model (architecture, backbone,
weights, parameters), CV scores (over all folds and per fold, with and without TTA), epochs
trained and best epoch per fold, wall time per stage, replicas/device/precision, library and
TensorFlow versions, the git commit and a copy of the experiment's `run.py`, and leaderboard
scores attached later (`tools/leaderboard.py --set_lb`).

It is written atomically when a run starts (`status: running`), after every fold, and at the end
(`complete`, or `failed` with the error), so a preempted or crashed run still says how far it
got. A later invocation on the same run dir (e.g. `--job=score` from cached predictions) updates
the card: it keeps what it does not recompute (training flags, epochs, leaderboard scores).

The top-level `status`, `error` and `started` belong to the run: `started` is when the first
invocation on the run dir began, and only an invocation over all the run's folds that trains
(or the first one) sets `status`/`error`; `jobs` and `updated` are the latest invocation's. Every invocation is appended to `invocations` (jobs,
folds, started, ended, wall_s, status, error), whatever it fails on (one refused before its
card was updated, e.g. on a bad prediction file, is appended as `failed` by `mark_failed`), so a
failed score-only or subset invocation shows there without turning a complete run into a failed
one. `quick` is true for a smoke run (`--quick`): the leaderboard and the ensemble leave it out
unless asked. (Cards written before `invocations` and `quick` existed lack them; both are
optional.)

Run dirs made before the card had its name hold `record.json` (and pretraining dirs
`pretrain_record.json`): this module, the one place cards are found and written, reads such a file
as the card, and its next write writes the card under today's name and then removes the old
file, so a dir never shows two cards.

Reading, checking and editing cards needs no TensorFlow (the leaderboard starts in a second):
the runner hands `RunCard` the facts that need it (versions, model, devices).
"""
from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import os
import platform
import subprocess
import time
from typing import Callable

import pandas as pd

from tpuflow import storage
from tpuflow.prep import frames, shard_names
from tpuflow.results import checkpoint_names

CARD_NAME = "run_card.json"
PRETRAIN_CARD_NAME = "pretrain_card.json"
# Today's card names -> the names runs made before the rename wrote (read, replaced on writing).
OLD_NAMES = {CARD_NAME: "record.json", PRETRAIN_CARD_NAME: "pretrain_record.json"}
SCHEMA_VERSION = 1

# Every card has these top-level fields (values may be null/empty while a run is going on).
FIELDS = ("schema_version", "experiment_id", "status", "error", "started", "updated", "description",
          "jobs", "flags", "dataset", "model", "cv", "folds", "timings", "runtime", "versions",
          "git", "run_py", "lb")
DATASET_FIELDS = ("dir", "spec", "kind", "n_frames", "step", "channels", "history_depth", "manifest_sha256")
MODEL_FIELDS = ("architecture", "task", "backbone", "weights", "dim", "n_params")
RUNTIME_FIELDS = ("replicas", "strategy", "device", "precision", "backend", "backend_reason", "processes", "devices",
                  "steps_per_execution")
CV_FIELDS = ("metric", "tta_number", "tta", "no_tta", "baseline", "per_fold")


def card_path(run_dir: str, name: str = CARD_NAME) -> str:
    """Where a run dir's card is written (`find_card`: where it is read)."""
    return storage.join(run_dir, name)


def find_card(run_dir: str, name: str = CARD_NAME) -> str | None:
    """The run dir's card file: `run_card.json`, else the `record.json` of a run made before the
    rename (likewise for `PRETRAIN_CARD_NAME`); None if it has neither."""
    for path in (card_path(run_dir, name), card_path(run_dir, OLD_NAMES[name])):
        if storage.exists(path):
            return path
    return None


def load(run_dir: str) -> dict | None:
    """A run dir's card as written, unchecked (None: the dir has none)."""
    path = find_card(run_dir)
    return None if path is None else storage.read_json(path)


def save(path: str, card: dict) -> str:
    """Writes a card atomically to `path` (a card file) and returns where it went: a card read from
    an old name (`record.json`) goes to today's name beside it, and the old file is then removed."""
    head, _, name = path.rpartition("/")
    today = {old: new for new, old in OLD_NAMES.items()}.get(name, name)
    path = storage.join(head, today)
    storage.write_json(path, card)
    if today in OLD_NAMES and storage.exists(storage.join(head, OLD_NAMES[today])):
        storage.remove(storage.join(head, OLD_NAMES[today]))
    return path


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def missing_fields(card: dict) -> list[str]:
    """Names of required fields the card lacks ('dataset.kind' for nested ones), sorted."""
    missing = [f for f in FIELDS if f not in card]
    for section, names in (("dataset", DATASET_FIELDS), ("model", MODEL_FIELDS), ("cv", CV_FIELDS)):
        value = card.get(section)
        if isinstance(value, dict):  # cv is null until scored; dataset null for score-only runs
            missing += [f"{section}.{n}" for n in names if n not in value]
    return sorted(missing)


def read_card(path: str) -> dict:
    """A card from `path` (a card file or a run dir); an error naming the file and every
    missing field if it is incomplete."""
    if not path.endswith(".json"):
        path = find_card(path) or card_path(path)
    card = storage.read_json(path)
    if not isinstance(card, dict):
        raise ValueError(f"{path}: not a run card (a JSON object expected)")
    missing = missing_fields(card)
    if missing:
        raise ValueError(f"{path}: run card lacks field(s) {missing}")
    return card


def write_card(path: str, card: dict) -> str:
    """Writes a complete card atomically (refuses one with missing fields); returns where (`save`)."""
    missing = missing_fields(card)
    if missing:
        raise ValueError(f"{path}: refusing to write a run card without {missing}")
    return save(path, card)


def dataset_info(tfrec_dir: str, manifest: dict) -> dict:
    """What the card keeps of a dataset: its spec fields, history depth and manifest hash."""
    spec = frames.DatasetSpec.parse(manifest["spec"])
    raw = storage.read_bytes(storage.join(tfrec_dir, shard_names.MANIFEST))
    return {"dir": tfrec_dir, "spec": spec.to_string(), "kind": spec.kind, "n_frames": spec.depth,
            "step": spec.step, "channels": spec.channels,
            "history_depth": spec.history_span + 1,  # frames of the storm's timeline one example spans
            "manifest_sha256": hashlib.sha256(raw).hexdigest()}


def cv_summary(table: pd.DataFrame, metric: str, tta_number: int) -> dict:
    """The CV fields from a `runner.score` table (rows: folds and 'all'; columns tta_*); `folds`
    lists the folds the CV covers."""
    def row(name):
        return {"no_tta": float(table.loc[name, "tta_0"]), "tta": float(table.loc[name, "tta_mean"])}
    folds = sorted(int(k) for k in table.index if k != "all")
    return {"metric": metric, "tta_number": tta_number, "folds": folds, **row("all"),
            "baseline": float(table.loc["all", "baseline"]),
            "per_fold": {k: row(k) for k in table.index if k != "all"}}


def cv_folds(run_dir: str) -> list[int] | None:
    """The folds the CV in a run dir's card covers (None: no card or not scored yet)."""
    cv = (load(run_dir) or {}).get("cv")
    if not isinstance(cv, dict):
        return None
    return [int(k) for k in cv.get("folds", cv.get("per_fold", {}))]


def is_quick(card: dict) -> bool:
    """Whether a card is a smoke run's (`--quick`; older cards say so in their flags only)."""
    return bool(card.get("quick", (card.get("flags") or {}).get("quick")))


def new_invocation(cfg, started: str | None = None) -> dict:
    """The `invocations` entry of an invocation starting now (or at `started`): running."""
    return {"jobs": list(cfg.jobs), "folds": list(range(cfg.initial_fold, cfg.initial_fold + cfg.n_folds)),
            "started": started or _now(), "ended": None, "wall_s": None, "status": "running", "error": None}


def git_info(path: str) -> dict:
    """Commit of the git checkout holding `path` and whether it had uncommitted changes (nulls
    outside a checkout or without git)."""
    where = os.path.dirname(os.path.abspath(path))
    try:
        commit = subprocess.run(["git", "-C", where, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "-C", where, "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


class RunCard:
    """The card of one invocation of an experiment, updated as the run goes.

    `init_model` is the experiment's model function: its source file is the `run.py` copied into
    the card and located in git, and its module docstring's first line is the description.
    `versions`: what is installed (`runtime.versions()`).
    """

    def __init__(self, cfg, manifest: dict, init_model: Callable, versions: dict):
        self.cfg, self.path, self.start = cfg, card_path(cfg.output_dir), time.time()
        previous = load(cfg.output_dir) or {}
        trains = "train" in cfg.jobs
        run_py = inspect.getsourcefile(init_model)
        module_doc = inspect.getmodule(init_model).__doc__ or ""
        fresh = {
            "schema_version": SCHEMA_VERSION, "experiment_id": cfg.experiment_id, "status": "running",
            "error": None, "started": _now(), "updated": _now(),
            "description": module_doc.strip().split("\n")[0],
            "jobs": list(cfg.jobs), "flags": cfg.to_dict(),
            "dataset": dataset_info(cfg.frame_store or cfg.data_tfrec_dir, manifest) if manifest else None,
            "model": None, "cv": None, "folds": {}, "timings": {}, "runtime": None,
            "versions": dict(versions), "git": git_info(run_py),
            "run_py": {"path": os.path.abspath(run_py), "source": storage.read_text(run_py)},
            "lb": {"private": None, "public": None},
        }
        self.card = dict(fresh)
        mine = set(range(cfg.initial_fold, cfg.initial_fold + cfg.n_folds))
        subset = not set(cv_folds(cfg.output_dir) or []) <= mine
        # Only training over all the run's folds (or a first invocation) speaks for the whole run.
        self.owns_status = not previous or (trains and not subset)
        if previous:
            self.card["started"] = previous.get("started") or fresh["started"]
            if not self.owns_status:
                self.card.update(status=previous.get("status"), error=previous.get("error"))
        self.invocation = new_invocation(cfg, fresh["started"])
        self.card["invocations"] = [*(previous.get("invocations") or []), self.invocation]
        if previous and not trains:  # keep what this invocation does not redo
            keep = ("flags", "dataset", "model", "cv", "runtime", "git", "run_py", "description")
            self.card.update({k: previous[k] for k in keep if previous.get(k) is not None})
            self.card["dataset"] = fresh["dataset"] or self.card["dataset"]
        # Folds skipped by a resumed run keep their facts; leaderboard scores belong to the id;
        # a CV over more folds than this invocation runs stays (see `finish`).
        for key in ("folds", "timings", "lb", "cv_subsets"):
            if isinstance(previous.get(key), dict):
                self.card[key] = dict(previous[key])
        if isinstance(previous.get("cv"), dict) and subset:
            self.card["cv"] = previous["cv"]
        self.card["quick"] = is_quick(self.card)  # the training's, like the flags
        self.write()

    def write(self) -> None:
        self.card["updated"] = _now()
        write_card(self.path, self.card)

    def set_model(self, model: dict, runtime: dict) -> None:
        """The model's facts (`MODEL_FIELDS`) and where it runs (`RUNTIME_FIELDS`), from the runner."""
        self.card["model"] = {k: model[k] for k in MODEL_FIELDS}
        self.card["runtime"] = {**{k: runtime[k] for k in RUNTIME_FIELDS}, "host": platform.node()}
        self.write()

    def fold_done(self, fold: int, history, best_checkpoint: str, timings: dict) -> None:
        """After a fold: epochs trained (from the fit History; None if the fold was not trained
        now), the best epoch and its validation score under `--metric` (from the kept checkpoint's
        name: `best_val_rmse_rounded` or `best_val_rmse_raw`), timings so far."""
        if history is not None:
            # A resumed fold's History starts at the resumed epoch: count from epoch 1. An empty
            # History: the run was killed after its last epoch's backup, so all epochs ran.
            epochs = history.epoch[-1] + 1 if history.epoch else history.params["epochs"]
            best = checkpoint_names.parse(best_checkpoint)
            self.card["folds"][str(fold)] = {
                "epochs": epochs, "epochs_this_run": len(history.epoch),
                "best_epoch": best.epoch, f"best_val_{self.cfg.metric}": best.val_score,
                "checkpoint": best_checkpoint.rsplit("/", 1)[-1],
            }
        self.card["timings"].update({k: round(v, 3) for k, v in timings.items()})
        self.write()

    def finish(self, result: dict) -> None:
        """The end of a successful invocation: CV scores (if scored), timings, status complete."""
        if "scores" in result:
            summary = cv_summary(result["scores"], self.cfg.metric, self.cfg.tta_number)
            summary["tta_views"] = list(self.cfg.tta_views)  # what each TTA index means
            if result.get("subset"):  # fewer folds than the run's CV: kept beside it, never over it
                self.card.setdefault("cv_subsets", {})[result["subset"].lstrip(".")] = summary
            else:
                self.card["cv"] = summary
        self.card["timings"].update({k: round(v, 3) for k, v in result["timings"].items()})
        wall_s = round(time.time() - self.start, 3)
        self.invocation.update(status="complete", ended=_now(), wall_s=wall_s)
        if self.owns_status:
            self.card["timings"]["total"] = wall_s
            self.card["status"] = "complete"
        self.write()



def mark_failed(run_dir: str, error: BaseException, invocation: dict | None = None, status: str = "failed") -> None:
    """Marks the failing invocation `failed` (or `status`: `preempted`) with the error, and the run
    itself if that invocation spoke for it (a complete run stays complete). `invocation`
    (`new_invocation`, made when the invocation began): the entry to append if the invocation
    failed before it was written down, e.g. on a bad prediction file; an entry still `running` that
    began earlier is another's (killed)."""
    path = find_card(run_dir)
    if path is None:
        return
    card = storage.read_json(path)
    message, now = f"{type(error).__name__}: {error}"[:2000], _now()
    invocations = card.setdefault("invocations", [])
    last = invocations[-1] if invocations else None
    mine = isinstance(last, dict) and last.get("status") == "running" and (
        invocation is None or str(last.get("started")) >= invocation["started"])
    if not mine and invocation is not None:
        last = {**invocation}
        invocations.append(last)
    changed = mine or invocation is not None
    if changed:
        last.update(status=status, error=message, ended=now)
    if card.get("status") == "running":
        card.update(status=status, error=message)
        changed = True
    if changed:
        card["updated"] = now
        try:
            save(path, card)
        except OSError:
            if not storage.is_local(path):
                raise
            # A full disk has no room for the temporary copy: rewrite in place, in the blocks the
            # card already has (a torn write here loses only a card that said `running`).
            with open(path, "r+b") as f:
                f.write((json.dumps(card, indent=2, sort_keys=True, default=str) + "\n").encode())
                f.truncate()


def attach_lb(path: str, private: float | None, public: float | None) -> str:
    """Attaches leaderboard scores to the card at `path` (a card file or a run dir; atomic
    rewrite); returns the card's path. (By experiment id over many run dirs: `leaderboard.set_lb`.)"""
    path = path if path.endswith(".json") else find_card(path) or card_path(path)
    card = read_card(path)
    card["lb"] = {"private": private, "public": public}
    card["updated"] = _now()
    return write_card(path, card)

