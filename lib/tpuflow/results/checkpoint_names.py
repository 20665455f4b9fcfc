"""The names of a fold's best checkpoint and of its per-epoch backup, made and read back in one
place (no TensorFlow).

`model-best-f<fold>-e<EEE>-<score:.4f>.weights.h5` (TensorFlow backend; under JAX the Orbax
directory `...-<score:.4f>.orbax`): the fold, the epoch it was saved at (counted from 1) and the
validation score (`--metric`) of that epoch, so that a run dir listing shows how good each fold's
model is. The backup of a fold (`tpuflow.training.resume`) lives in
`backup/fold_<k>/` as `epoch-<EEE>.weights.h5` and `epoch-<EEE>.optimizer.npz` (EEE: epochs done;
within an epoch `epoch-<EEE>-step-<SSSSSS>.*`, SSSSSS: steps of the next epoch done, plus its
`.metrics.npz`; under JAX one Orbax directory `epoch-<EEE>[-step-<SSSSSS>].orbax`).
"""
from __future__ import annotations

import re
from typing import NamedTuple

from tpuflow import storage

GLOB = "model-best-f{fold}-e*"  # .format(fold=k): a fold's checkpoints (and anything named alike: see `find`)
SUFFIXES = {"h5": ".weights.h5", "orbax": ".orbax"}  # by format
_NAME = re.compile(r"(?:^|/)model-best-f(\d+)-e(\d+)-([^/]+?)(\.weights\.h5|\.orbax)$")
BACKUP_GLOB = "epoch-*"  # a fold backup's weights and optimizer files (in `backup_dir`)


class CheckpointName(NamedTuple):
    fold: int
    epoch: int
    val_score: float


def name(fold: int, epoch: int, val_score: float, fmt: str = "h5") -> str:
    """`model-best-f<k>-e<EEE>-<val score:.4f>.weights.h5` (`fmt` "orbax": `.orbax`), epoch counted from 1."""
    return f"model-best-f{fold}-e{epoch:03d}-{val_score:.4f}{SUFFIXES[fmt]}"


def is_orbax(path: str) -> bool:
    """A best checkpoint written by Orbax (a directory) rather than Keras' `.weights.h5`."""
    return path.rstrip("/").endswith(SUFFIXES["orbax"])


def find(output_dir: str, fold: int | str) -> list[str]:
    """The best checkpoints of `fold` (`"*"`: of every fold) in `output_dir`, of either format,
    sorted; what only looks like one (Orbax's temporary `*.orbax-checkpoint-tmp-*` of a save cut
    short) is not one."""
    return [p for p in storage.glob(storage.join(output_dir, GLOB.format(fold=fold))) if _NAME.search(p)]


def parse(path: str) -> CheckpointName:
    """Fold, epoch and validation score from a checkpoint's name (or path); an error naming it
    if it is not one."""
    found = _NAME.search(path)
    if not found:
        raise ValueError(f"{path}: not a best-checkpoint name (model-best-f<k>-e<EEE>-<score>.weights.h5 or .orbax)")
    return CheckpointName(int(found.group(1)), int(found.group(2)), float(found.group(3)))


def backup_dir(output_dir: str, fold: int) -> str:
    """`<output_dir>/backup/fold_<k>`: the fold's per-epoch backup and its done file."""
    return storage.join(output_dir, "backup", f"fold_{fold}")


def backup_stem(directory: str, epochs: int, steps: int = 0) -> str:
    """The name, less its suffix, of the backup after `epochs` epochs and `steps` steps of the next."""
    return storage.join(directory, f"epoch-{epochs:03d}" + (f"-step-{steps:06d}" if steps else ""))


def backup_files(directory: str, epochs: int, steps: int = 0) -> tuple[str, str]:
    """The weights and optimizer files of the backup after `epochs` epochs (and `steps` steps)."""
    stem = backup_stem(directory, epochs, steps)
    return stem + ".weights.h5", stem + ".optimizer.npz"
