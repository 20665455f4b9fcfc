"""Checks of the raw and split CSVs: labels, times and frame paths (no TensorFlow).

Why: a bad value caught here costs a one-line error; caught later it costs a silently wrong
dataset (a wind speed of 110.7 truncated to 110, a negative label learnt as a class, a frame read
from outside the data dir and packed into records that the sync tool may then upload).
Rows are named as CSV line numbers (the header is line 1), as a text editor shows them.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from tpuflow import storage

# Wind speeds (knots) accepted by default: the strongest tropical cyclones ever observed peak near
# 185-190 kt and the competition's labels span 15-185; a wider range needs --wind_speed_range.
WIND_SPEED_RANGE = (0, 250)


def csv_row(position: int) -> int:
    """CSV line number of the 0-based data row `position`."""
    return position + 2


def shown(value) -> str:
    """A CSV cell as its text, quoted: '110.7', '-30', 'fast' (no numpy reprs, no '.0')."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return repr(str(value))


def parse_range(text: str | tuple) -> tuple[int, int]:
    """'LOW,HIGH' (or a pair) -> (low, high) integers with low <= high."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        low, high = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"--wind_speed_range={text!r}: expected LOW,HIGH (two whole numbers)") from None
    if low > high:
        raise ValueError(f"--wind_speed_range={text!r}: LOW must not exceed HIGH")
    return low, high


def numeric_column(df: pd.DataFrame, column: str, path: str) -> pd.Series:
    """The column as numbers; an error naming the file, row and value if one is not a number."""
    values = pd.to_numeric(df[column], errors="coerce")
    bad = np.flatnonzero(values.isna().to_numpy())
    if len(bad):
        row = int(bad[0])
        cell = df[column].iloc[row]
        what = "is empty" if pd.isna(cell) else f"{shown(cell)} is not a number"
        raise ValueError(f"{path}: row {csv_row(row)}: {column} {what} ({len(bad)} such row(s))")
    return values


def wind_speeds(df: pd.DataFrame, path: str, column: str = "wind_speed",
                value_range: tuple[int, int] = WIND_SPEED_RANGE) -> np.ndarray:
    """Whole-number wind speeds within `value_range` as int64; any other value is an error
    naming the file, row and value (110.7 is not silently truncated, -30 is not a label)."""
    values = numeric_column(df, column, path).to_numpy(dtype=np.float64)
    low, high = value_range
    whole = values == np.round(values)
    inside = (values >= low) & (values <= high)
    bad = np.flatnonzero(~(whole & inside))
    if len(bad):
        row = int(bad[0])
        value = df[column].iloc[row]
        why = "is not a whole number" if not whole[row] else \
            f"is outside the plausible range {low}..{high} (widen it with --wind_speed_range)"
        raise ValueError(f"{path}: row {csv_row(row)}: {column} {shown(value)} {why} "
                         f"({len(bad)} bad row(s))")
    return values.astype(np.int64)


def resolve_frame_paths(image_paths: pd.Series, data_dir: str, csv_path: str) -> list[str]:
    """Each `image_path` (relative to `data_dir`, or absolute) as a normalised path inside `data_dir`.

    A path is judged as the CSV writes it, `..` normalised away, symlinks not followed: a data dir
    whose `train/` or `test/` is a symlink to another disk (big data elsewhere, read-only inputs)
    is a usual layout and builds. A path that leaves the data dir as written (`../`, an absolute
    path elsewhere) is an error naming the CSV row: frames outside it would be read and packed
    into records.
    """
    root = storage.normpath(data_dir)
    roots = [root, storage.realpath(data_dir)]  # an absolute path may use either
    out = []
    for row, value in enumerate(image_paths):
        path = str(value)
        resolved = storage.normpath(storage.join(root, path))  # an absolute path stays itself
        if not any(resolved.startswith(r.rstrip("/") + "/") for r in roots):
            raise ValueError(f"{csv_path}: row {csv_row(row)}: image_path {path!r} resolves to "
                             f"{resolved}, outside the data dir {root} (frames must live inside it)")
        out.append(resolved)
    return out
