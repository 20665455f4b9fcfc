"""Paths and file I/O for local disks (and, later, `gs://`): the one place outputs are written.

Every write goes to a temporary name first and is renamed into place, so a crash never leaves
a half-written shard, prediction or submission where a complete one is expected.
"""
from __future__ import annotations

import contextlib
import glob as _glob
import io
import json
import os
import shutil
import tempfile
from typing import Iterator

import numpy as np


def is_gcs(path: str) -> bool:
    """True for a Cloud Storage path (`gs://bucket/...`)."""
    return str(path).startswith("gs://")


def join(*parts: str) -> str:
    """Joins path parts; works for local paths and `gs://` URLs alike."""
    return os.path.join(*[str(p) for p in parts])


def exists(path: str) -> bool:
    return os.path.exists(path)


def isdir(path: str) -> bool:
    return os.path.isdir(path)


def makedirs(path: str) -> None:
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names (not paths) of the entries in a directory, sorted."""
    return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
    """Paths matching a shell pattern, sorted."""
    return sorted(_glob.glob(pattern))


def remove(path: str) -> None:
    """Removes a file or a directory tree; a missing path is not an error."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str):
    return json.loads(read_text(path))


def load_npy(path: str) -> np.ndarray:
    return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary local file path; on success it becomes `path`, on error it vanishes.

    Use it for writers that want a filename (np.save, DataFrame.to_csv, savefig, Keras).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # The temporary name keeps the final suffix: some writers insist on it (Keras `.weights.h5`).
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Writes bytes atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_bytes(path, buf.getvalue())
