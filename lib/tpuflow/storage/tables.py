"""The project's data tables, read with their checks in one place (NumPy/pandas only).

- CSV tables (the competition's CSVs, `train_cv.csv`, `submission_format.csv`): `read_table`
  checks the columns a caller needs, naming the file and what is missing.
- The class table `unique_labels_sorted.npy` (class index -> wind speed, written with the CV
  split): `load_unique_labels`.
"""
from __future__ import annotations

import io

import numpy as np
import pandas as pd

from tpuflow import storage

UNIQUE_LABELS = "unique_labels_sorted.npy"


def read_table(path: str, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """Reads a CSV table (local or gs://) and checks its columns, naming the file if one is missing."""
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: file not found")
    df = pd.read_csv(io.BytesIO(storage.read_bytes(path)))
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    if df.empty:
        raise ValueError(f"{path}: no rows")
    return df


def load_unique_labels(data_dir: str, required: bool = False, path: str | None = None) -> np.ndarray | None:
    """The sorted wind speeds of the classes (float64), from `<data_dir>/unique_labels_sorted.npy`
    or `path`; None if there is none, or with `required` an error naming the file."""
    path = path or storage.join(data_dir, UNIQUE_LABELS)
    if storage.exists(path):
        return storage.load_npy(path).astype(np.float64)
    if required:
        raise FileNotFoundError(f"{path}: needed for classification (run data_prep/create_cv_split.py)")
    return None
