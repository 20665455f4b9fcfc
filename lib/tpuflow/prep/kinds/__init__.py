"""The dataset kinds, registered by name: one module each (`single`, `stacked`, `mean`, `sequence`)
holding its frame rule, how its records and assembled examples are built, its parser's facts and an
experiment's defaults (`tpuflow.prep.kinds.base.Kind`). Adding a kind: a module and a line here.

The frame store (`tpuflow.prep.store`, manifest kind `frames`) is not a dataset kind: the examples
assembled from it are built with these rules.
"""
from __future__ import annotations

from tpuflow.prep.kinds import base, mean, sequence, single, stacked

REGISTRY: dict[str, base.Kind] = {k.name: k for k in (single.KIND, stacked.KIND, mean.KIND, sequence.KIND)}
NAMES = tuple(REGISTRY)


def get(name: str) -> base.Kind:
    """The kind registered as `name`, or a ValueError naming the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown kind {name!r}; expected one of {NAMES}")
    return REGISTRY[name]
