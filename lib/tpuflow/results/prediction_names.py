"""Names of a run's saved predictions, made and read back in one place (no TensorFlow).

In `<output_dir>/preds/`: `y_pred_{val,test}_fold_<k>_tta_<t>.npy`, one row per example in
record order, with the ids beside them (`ids_val_fold_<k>.npy`; `ids_test.npy`, the same for
every fold), and `tta_views.json`, the view of every TTA index t. The runner writes them, resume
checks them, scoring and the ensemble tool read them.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from tpuflow import storage

VIEWS = "tta_views.json"
_NAME = re.compile(r"^y_pred_(val|test)_fold_(\d+)_tta_(\d+)\.npy$")


class PredictionName(NamedTuple):
    split: str  # val or test
    fold: int
    tta: int


def name(split: str, fold: int, tta: int) -> str:
    """`y_pred_<split>_fold_<k>_tta_<t>.npy`."""
    return f"y_pred_{split}_fold_{fold}_tta_{tta}.npy"


def path(preds_dir: str, split: str, fold: int, tta: int) -> str:
    return storage.join(preds_dir, name(split, fold, tta))


def parse(file_name: str) -> PredictionName | None:
    """(split, fold, TTA index) of a prediction file's name (`name`); None for other files."""
    found = _NAME.match(file_name)
    return PredictionName(found[1], int(found[2]), int(found[3])) if found else None


def ids_name(split: str, fold: int) -> str:
    """`ids_val_fold_<k>.npy`; `ids_test.npy` for test (one order for every fold)."""
    return "ids_test.npy" if split == "test" else f"ids_{split}_fold_{fold}.npy"


def ids_path(preds_dir: str, split: str, fold: int) -> str:
    return storage.join(preds_dir, ids_name(split, fold))


def views_path(preds_dir: str) -> str:
    """`tta_views.json`: the view name of every TTA index of the predictions in `preds_dir`."""
    return storage.join(preds_dir, VIEWS)
