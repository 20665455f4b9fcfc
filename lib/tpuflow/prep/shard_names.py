"""Names of a dataset's files and directories, made and read back in one place (no TensorFlow).

The builder, the frame store and the Beam pipeline write, and the readers, `adopt` and the
resume checks read, these names:

- a dataset directory `data-tfrec-<kind>-frames<NNN>-step<SSS>` (`dataset_dir`), the frame store
  `data-frames` (`STORE_DIR`);
- in it, shards `<prefix>.tfrecord-<i:05d>-of-<n:05d>` (TFDS-style, sortable) for the prefixes
  `fold.<k>`, `test` and, in the store, `frames`, so `fold.[0123].tfrecord*` selects training
  folds; records adopted from the reference are one `fold.<k>.tfrecord` per fold;
- `manifest.json` beside them (written last).
"""
from __future__ import annotations

import os
import re
from typing import Iterable, NamedTuple

from tpuflow import storage

MANIFEST = storage.MANIFEST  # storage syncs it last, so it is defined there; named here with the rest
TEST = "test"
STORE_PREFIX = "frames"  # the frame store's shards (`tpuflow.prep.store`)
STORE_DIR = "data-frames"  # the frame store's directory under --out_dir
_BUILT = ("fold.*.tfrecord-*", "test.tfrecord-*", "frames.tfrecord-*")  # what a build writes
_SHARD = re.compile(r"^(fold\.(\d+)|test)\.tfrecord(?:-(\d{5})-of-(\d{5}))?.*$")
_DATASET_DIR = re.compile(r"data-tfrec-(single|stacked|mean|sequence)-frames(\d+)-step(\d+)")
# The reference's dataset directories: `data-tfrec-1d` (single frames) and
# `data-tfrec-frames<NNN>-step<SSS>-<ind|mean|lstm>` (its scripts' suffixes for our kinds).
_REFERENCE_DIR = re.compile(r"data-tfrec-(?:1d|frames(\d+)-step(\d+)-(ind|mean|lstm))")
_REFERENCE_KINDS = {"ind": "stacked", "mean": "mean", "lstm": "sequence"}


class ShardName(NamedTuple):
    prefix: str  # `fold.<k>` or `test`
    fold: int | None  # None for test
    index: int | None  # None for an adopted shard without `-<i>-of-<n>`
    count: int | None


def fold_prefix(fold: int) -> str:
    """`fold.<k>`: the prefix of fold k's shards and its key in a manifest's counts."""
    return f"fold.{fold}"


def prefixes(folds: Iterable[int] | None = None) -> list[str]:
    """The prefixes of the given folds, or `[test]` when `folds` is None."""
    return [TEST] if folds is None else [fold_prefix(k) for k in folds]


def prefix_fold(prefix: str) -> int | None:
    """The fold of a `fold.<k>` prefix; None for `test`; an error naming it otherwise."""
    if prefix == TEST:
        return None
    found = re.fullmatch(r"fold\.(\d+)", prefix)
    if not found:
        raise ValueError(f"{prefix!r}: not a shard prefix (fold.<k> or test)")
    return int(found.group(1))


def shard_name(prefix: str, index: int, count: int) -> str:
    """`fold.0` -> `fold.0.tfrecord-00001-of-00004` (TFDS-style, sortable)."""
    return f"{prefix}.tfrecord-{index:05d}-of-{count:05d}"


def parse_shard_name(name: str) -> ShardName | None:
    """Prefix, fold and shard number of a fold or test shard's file name (this project's or an
    adopted `fold.<k>.tfrecord`); None for other files."""
    found = _SHARD.match(name)
    if not found:
        return None
    fold, index, count = (None if g is None else int(g) for g in found.group(2, 3, 4))
    return ShardName(found.group(1), fold, index, count)


def shard_glob(prefix: str) -> str:
    """The glob of a prefix's shards, built or adopted (`fold.0.tfrecord`)."""
    return f"{prefix}.tfrecord*"


def shard_files(directory: str) -> list[str]:
    """Sorted paths of the shard files a build writes (any prefix) found in `directory`."""
    if not storage.exists(directory):
        return []
    return sorted(p for pattern in _BUILT for p in storage.glob(storage.join(directory, pattern)))


def dataset_dir(kind: str, depth: int, step: int) -> str:
    """A dataset's directory name, e.g. `data-tfrec-stacked-frames003-step005`."""
    return f"data-tfrec-{kind}-frames{depth:03d}-step{step:03d}"


def parse_dataset_dir(path: str) -> tuple[str, int, int] | None:
    """(kind, frames, step) from a dataset directory's name (or path); None for another name."""
    found = _DATASET_DIR.fullmatch(os.path.basename(path.rstrip("/")))
    return (found.group(1), int(found.group(2)), int(found.group(3))) if found else None


def parse_reference_dir(path: str) -> tuple[str, int, int] | None:
    """(kind, frames, step) from the name the reference's scripts give a dataset directory
    (`data-tfrec-1d`, `data-tfrec-frames024-step001-lstm`, ...); None for another name."""
    found = _REFERENCE_DIR.fullmatch(os.path.basename(path.rstrip("/")))
    if found is None:
        return None
    return ("single", 1, 1) if found.group(3) is None else \
        (_REFERENCE_KINDS[found.group(3)], int(found.group(1)), int(found.group(2)))
