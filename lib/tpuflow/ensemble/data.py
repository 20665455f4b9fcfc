"""Loads the saved predictions of many experiments into one matrix per split (NumPy/pandas only).

Each experiment dir holds `preds/y_pred_{val,test}_fold_<k>_tta_<t>.npy` with the matching ids
(`ids_val_fold_<k>.npy`, `ids_test.npy`). Every (experiment, TTA) pair becomes one ensemble input:
its val predictions are put in out-of-fold order (fold by fold, each fold in `train_cv.csv` order,
so a fold is a contiguous block of columns: nested scores slice it without copying), its test
predictions are averaged over folds and put in `submission_format.csv` order. Order is checked
against the ids, never assumed.
"""
from __future__ import annotations

import dataclasses
import io
import os
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from tpuflow import storage
from tpuflow.results import prediction_names, run_card, scoring
from tpuflow.storage import tables

PROBS_TO_VALUES = scoring.PROBS_TO_VALUES


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Everything the ensemble methods need, one row of `val`/`test` per (experiment, TTA).

    val: (M, n) values or (M, n, k) class probabilities, out-of-fold rows (dtype of the files:
      float32 predictions stay float32, which halves the memory the searches stream through);
    test: (M, n_test[, k]) float64, mean over folds, in submission order;
    y: (n,) float64 targets (values) or int64 class indices (probabilities);
    fold_slices: the columns of `val` that belong to each fold in `folds`;
    form: 'values' or 'probs', what every input holds (the metrics of that form score it).
    """
    names: tuple[str, ...]
    model_dirs: tuple[str, ...]
    ttas: tuple[int, ...]
    val: np.ndarray
    test: np.ndarray
    y: np.ndarray
    folds: tuple[int, ...]
    fold_slices: tuple[slice, ...]
    oof_ids: np.ndarray
    test_ids: np.ndarray
    form: str
    labels: np.ndarray | None
    id_col: str
    value_col: str


def expand_model_dirs(spec: str | Sequence[str]) -> list[str]:
    """Comma-separated dirs or shell globs -> the experiment dirs, in the order given (globs sorted).

    A glob that matches nothing, a dir without `preds/` or a dir given twice is an error: a
    silently shorter ensemble would look like a worse one.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise ValueError("--model_dirs: no experiment dirs given")
    dirs: list[str] = []
    for item in items:
        matches = storage.glob(item) if any(ch in item for ch in "*?[") else [item]
        if not matches:
            raise ValueError(f"--model_dirs: '{item}' matches no dir")
        for d in matches:
            d = d.rstrip("/")
            if not storage.isdir(storage.join(d, "preds")):
                raise FileNotFoundError(f"--model_dirs: {storage.join(d, 'preds')} is not a dir")
            if d in dirs:
                raise ValueError(f"--model_dirs: {d} is listed twice")
            dirs.append(d)
    return dirs


def smoke_runs(model_dirs: Sequence[str]) -> list[str]:
    """The dirs whose run card says they are smoke runs (`--quick`: their predictions mean nothing).
    Dirs without a card (e.g. the reference's own runs) are not."""
    return [d for d in model_dirs if run_card.is_quick(run_card.load(d) or {})]


def load_inputs(data_dir: str, model_dirs: Sequence[str], *, target_col: str = "wind_speed",
                labels_path: str | None = None, probs_to_values: str | None = None,
                progress: Callable[[int, int, str], None] | None = None) -> Inputs:
    """Reads and checks every prediction file of `model_dirs` against `train_cv.csv` and `submission_format.csv`.

    probs_to_values: None keeps (n, k) class probabilities as they are; 'expectation' (sum of
    probability x label) or 'argmax' turns them into values with `unique_labels_sorted.npy`, so
    classifiers can be blended with regressors. progress(done, total, model_dir) is called after
    each experiment dir.
    """
    if probs_to_values not in (None, *PROBS_TO_VALUES):
        raise ValueError(f"--probs_to_values={probs_to_values}: use one of {PROBS_TO_VALUES}")
    train = tables.read_table(storage.join(data_dir, "train_cv.csv"), ("image_id", "fold_id", target_col))
    fmt_path = storage.join(data_dir, "submission_format.csv")
    fmt = tables.read_table(fmt_path, ("image_id",))
    if fmt.shape[1] < 2:
        raise ValueError(f"{fmt_path}: needs a value column after image_id")
    value_col = [c for c in fmt.columns if c != "image_id"][0]
    for path, frame in ((storage.join(data_dir, "train_cv.csv"), train), (fmt_path, fmt)):
        repeated = frame["image_id"][frame["image_id"].duplicated()]
        if len(repeated):
            raise ValueError(f"{path}: image_id {repeated.iloc[0]!r} appears more than once")
    folds = tuple(int(f) for f in np.sort(train["fold_id"].unique()))
    fold_rows = [np.flatnonzero(train["fold_id"].to_numpy() == f) for f in folds]
    bounds = np.cumsum([0] + [len(r) for r in fold_rows])
    fold_slices = tuple(slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]))
    oof_rows = np.concatenate(fold_rows)
    oof_ids = train["image_id"].to_numpy()[oof_rows].astype(str)
    test_ids = fmt["image_id"].to_numpy().astype(str)
    targets = train[target_col].to_numpy()[oof_rows]

    plans = [_plan_model(d, folds) for d in model_dirs]
    total = sum(len(ttas) for _, ttas, _ in plans)
    if total < 2:
        raise ValueError(f"--model_dirs: {total} prediction(s) found; an ensemble needs at least two")
    labels = tables.load_unique_labels(data_dir, path=labels_path)
    loader = _Loader(total, len(oof_ids), len(test_ids), fold_slices, probs_to_values, labels)
    val_orders = [_IdOrder(oof_ids[s], f"fold {f} of train_cv.csv") for f, s in zip(folds, fold_slices)]
    test_orders = _IdOrder(test_ids, "submission_format.csv")
    names, dirs, ttas_all = [], [], []
    for i, (preds_dir, ttas, views) in enumerate(plans):
        model_dir = model_dirs[i]
        val_order = [match(prediction_names.ids_path(preds_dir, "val", f)) for f, match in zip(folds, val_orders)]
        test_order = test_orders(prediction_names.ids_path(preds_dir, "test", 0))
        for t in ttas:
            loader.add(preds_dir, folds, t, val_order, test_order)
            names.append(f"{_label(model_dir, model_dirs)}:tta{t}" + (f":{views[t]}" if views else ""))
            dirs.append(model_dir)
            ttas_all.append(t)
        if progress is not None:
            progress(i + 1, len(plans), model_dir)
    form = loader.first[0]
    if form == "probs" and (labels is None or len(labels) != loader.val.shape[2]):
        raise ValueError(f"{loader.first[2]}: {loader.val.shape[2]} class probabilities need "
                         f"unique_labels_sorted.npy with as many labels (see --labels)")
    y = _targets(targets, form, labels, target_col)
    return Inputs(tuple(names), tuple(dirs), tuple(ttas_all), loader.val, loader.test, y, folds,
                  fold_slices, oof_ids, test_ids, form, labels, "image_id", value_col)


class _Loader:
    """Fills the (M, n[, k]) matrices one input at a time, allocating them at the first file."""

    def __init__(self, total: int, n: int, n_test: int, fold_slices: tuple[slice, ...],
                 probs_to_values: str | None, labels: np.ndarray | None):
        self.total, self.n, self.n_test, self.fold_slices = total, n, n_test, fold_slices
        self.probs_to_values, self.labels = probs_to_values, labels
        self.val: np.ndarray | None = None
        self.test: np.ndarray | None = None
        self.count = 0
        self.first: tuple[str, tuple[int, ...], str] | None = None  # (form, trailing shape, path)
        self.npy = _NpyReader()

    def add(self, preds_dir: str, folds: tuple[int, ...], tta: int, val_order: list[np.ndarray | None],
            test_order: np.ndarray | None) -> None:
        """Reads one (experiment, TTA): every fold's val rows into place, the fold mean of its test rows."""
        i = self.count
        for f, s, order in zip(folds, self.fold_slices, val_order):
            path = prediction_names.path(preds_dir, "val", f, tta)
            arr = self._read(path, s.stop - s.start)
            if self.val is None:
                self.val = np.empty((self.total, self.n) + arr.shape[1:],
                                    np.float32 if arr.dtype == np.float32 else np.float64)
                self.test = np.zeros((self.total, self.n_test) + arr.shape[1:], np.float64)
            elif arr.dtype != self.val.dtype and self.val.dtype == np.float32:
                self.val = self.val.astype(np.float64)  # a wider file: keep its precision
            if order is None:
                self.val[i, s] = arr
            else:  # `take` writes into `out` only from the same dtype
                np.take(arr.astype(self.val.dtype, copy=False), order, axis=0, out=self.val[i, s],
                        mode="clip")  # valid indices: unbuffered
        # Every fold's test rows share one saved order (ids_test.npy): sum first, reorder once.
        total = self.test[i] if test_order is None else np.zeros_like(self.test[i])
        for f in folds:
            total += self._read(prediction_names.path(preds_dir, "test", f, tta), self.n_test)
        if test_order is not None:
            np.take(total, test_order, axis=0, out=self.test[i], mode="clip")
        self.test[i] /= len(folds)
        self.count += 1

    def _read(self, path: str, rows: int) -> np.ndarray:
        try:
            arr = self.npy.read(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: missing") from None
        except ValueError as e:
            raise ValueError(f"{path}: not a plain .npy array ({e})") from None
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim not in (1, 2) or arr.dtype.kind not in "fiu":
            raise ValueError(f"{path}: expected (n,), (n, 1) or (n, k) numbers, got {arr.dtype} {arr.shape}")
        if len(arr) != rows:
            raise ValueError(f"{path}: {len(arr)} rows, expected {rows}")
        # A finite sum proves every value finite without a mask; otherwise look closer (the
        # sum of large finite values can overflow too).
        bad = ~np.isfinite(arr) if arr.dtype.kind == "f" and not np.isfinite(arr.sum()) else None
        if bad is not None and bad.any():
            row = int(np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))[0])
            raise ValueError(f"{path}: {int(bad.sum())} NaN/inf value(s), first in row {row}")
        form = "probs" if arr.ndim == 2 else "values"
        if form == "probs" and self.probs_to_values is not None:
            arr, form = _probs_to_values(arr, self.labels, self.probs_to_values, path), "values"
        if self.first is None:
            self.first = (form, arr.shape[1:], path)
        elif form != self.first[0]:
            raise ValueError(f"--model_dirs mixes regression values and class probabilities: {path} has "
                             f"{'probabilities' if form == 'probs' else 'values'}, {self.first[2]} has not; "
                             "pass --probs_to_values to turn probabilities into values")
        elif arr.shape[1:] != self.first[1]:
            raise ValueError(f"{path}: {arr.shape[1:]} columns per row, {self.first[2]} has {self.first[1]}")
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float64)
        return arr


class _NpyReader:
    """np.load for thousands of files of one layout: a header already seen is not parsed again
    (parsing costs more than reading a 50k-row file from the page cache)."""

    def __init__(self):
        self.headers: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}

    def read(self, path: str) -> np.ndarray:
        data = storage.read_bytes(path)
        if data[:6] != b"\x93NUMPY" or len(data) < 10:
            raise ValueError("no .npy header")
        size = 2 if data[6] == 1 else 4
        start = 8 + size + int.from_bytes(data[8:8 + size], "little")
        header = data[:start]
        if header not in self.headers:
            buf = io.BytesIO(data)
            version = np.lib.format.read_magic(buf)
            if version not in ((1, 0), (2, 0)):
                return np.load(io.BytesIO(data), allow_pickle=False)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(buf)
            if dtype.hasobject:
                raise ValueError("object arrays are not predictions")
            self.headers[header] = (shape, fortran, dtype)
        shape, fortran, dtype = self.headers[header]
        count = int(np.prod(shape))
        if len(data) - start != count * dtype.itemsize:
            raise ValueError(f"{len(data) - start} data bytes for shape {shape} of {dtype} (truncated?)")
        return np.frombuffer(data, dtype, count, start).reshape(shape, order="F" if fortran else "C")


def _plan_model(model_dir: str, folds: tuple[int, ...]) -> tuple[str, list[int], list[str] | None]:
    """The TTA indices of one experiment and their saved view names (None for runs made before
    views were saved); every (split, fold, TTA) file must be there, and have a view name."""
    preds_dir = storage.join(model_dir, "preds")
    if not storage.isdir(preds_dir):
        raise FileNotFoundError(f"{preds_dir}: missing")
    found = {p for p in map(prediction_names.parse, storage.listdir(preds_dir)) if p}
    ttas = sorted({t for _, _, t in found})
    if not ttas:
        raise FileNotFoundError(f"{preds_dir}: no y_pred_val_fold_<k>_tta_<t>.npy files")
    extra = sorted({f for _, f, _ in found} - set(folds))
    if extra:
        raise ValueError(f"{preds_dir}: predictions for fold(s) {extra} that train_cv.csv does not have")
    for part in ("val", "test"):
        for f in folds:
            for t in range(max(ttas) + 1):
                if (part, f, t) not in found:
                    raise FileNotFoundError(f"{prediction_names.path(preds_dir, part, f, t)}: "
                                            f"missing (found TTA 0..{max(ttas)} elsewhere in {preds_dir})")
    views = scoring.read_views(preds_dir)
    if views is not None and max(ttas) >= len(views):
        raise ValueError(f"{prediction_names.views_path(preds_dir)}: names {len(views)} TTA views, but {preds_dir} "
                         f"holds TTA 0..{max(ttas)}: predictions of another TTA set were left there")
    return preds_dir, ttas, views


class _IdOrder:
    """Positions that put saved rows into the order of `expected`, checked against the saved ids.

    Experiments trained on the same records save the same id order, so an order is worked out
    once per distinct ids file content, with a hash index of `expected` built once.
    """

    def __init__(self, expected: np.ndarray, what: str):
        self.expected, self.what = expected, what
        self.index = pd.Index(expected)
        self.seen: dict[bytes, np.ndarray | None] = {}

    def __call__(self, ids_path: str) -> np.ndarray | None:
        """None when the rows are already in order."""
        if not storage.exists(ids_path):
            raise FileNotFoundError(f"{ids_path}: missing (ids are needed to check the row order)")
        ids = storage.load_npy(ids_path)  # a pickled or text file is an error naming it
        if ids.ndim != 1:
            raise ValueError(f"{ids_path}: expected a 1-D array of ids, got shape {ids.shape}")
        ids = ids.astype(str)
        key = ids.tobytes()
        if key not in self.seen:
            self.seen[key] = self._order(ids, ids_path)
        return self.seen[key]

    def _order(self, ids: np.ndarray, ids_path: str) -> np.ndarray | None:
        n = len(self.expected)
        if len(ids) == n and np.array_equal(ids, self.expected):
            return None
        pos = self.index.get_indexer(ids)  # where each saved row belongs
        if len(ids) != n or (pos < 0).any() or (np.bincount(pos[pos >= 0], minlength=n) != 1).any():
            missing = np.setdiff1d(self.expected, ids)[:3].tolist()
            unexpected = np.setdiff1d(ids, self.expected)[:3].tolist()
            dup = len(ids) - len(np.unique(ids))
            raise ValueError(f"{ids_path}: its {len(ids)} ids ({dup} repeated) are not the {n} rows of "
                             f"{self.what} (missing e.g. {missing}, unexpected e.g. {unexpected})")
        order = np.empty(n, dtype=np.intp)
        order[pos] = np.arange(n)
        return order


def _probs_to_values(probs: np.ndarray, labels: np.ndarray | None, how: str, path: str) -> np.ndarray:
    try:
        return scoring.to_values(probs, labels, how)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _targets(targets: np.ndarray, form: str, labels: np.ndarray | None, target_col: str) -> np.ndarray:
    """Values for regression inputs; class indices (via unique_labels_sorted.npy) for probabilities."""
    targets = targets.astype(np.float64)
    if not np.isfinite(targets).all():
        raise ValueError(f"train_cv.csv: column {target_col} has missing or non-finite values")
    if form == "values":
        return targets
    idx = np.clip(np.searchsorted(labels, targets), 0, len(labels) - 1)
    if not np.array_equal(labels[idx], targets):
        bad = targets[labels[idx] != targets][:3].tolist()
        raise ValueError(f"train_cv.csv: {target_col} values {bad} are not in unique_labels_sorted.npy")
    return idx.astype(np.int64)


def _label(model_dir: str, model_dirs: Sequence[str]) -> str:
    """The dir's base name, or its full path where two experiments share a base name."""
    base = os.path.basename(model_dir)
    return base if sum(os.path.basename(d) == base for d in model_dirs) == 1 else model_dir
