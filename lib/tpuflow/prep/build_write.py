"""Writing a build's output and checking it against its manifest (no TensorFlow).

Every shard, of the local pass, of Beam and of the frame store, is written by `write_shard`:
under a temporary name, renamed when complete (a shard redone against a manifest only if it
comes out with the sha256 its manifest holds). `ShardWriter` spills a (dataset, prefix)'s records as they
arrive in storm order and writes its shards in the shuffled record order at the end of the
pass, so the bytes do not depend on the number of workers. `manifest` (spec, encoding, counts,
sha256 per shard, the build key) is written last; `verify_dataset` checks shards against it.
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable, Iterator

from tpuflow import __version__, storage
from tpuflow.prep import build_encode, recordio, shard_names


def write_shard(path: str, records: Iterable[bytes], expected: str | None = None) -> str:
    """Writes one TFRecord shard under a temporary name, renamed (on gs://, uploaded) only when
    complete and, when `expected` is given (a shard redone against its manifest), only if its
    sha256 is that; returns its sha256. Every builder writes its shards through here."""
    with storage.atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as f:
        writer = recordio.RecordWriter(f)
        for record in records:
            writer.write(record)
        if expected is not None and writer.sha256() != expected:  # raised before the rename
            raise ValueError(f"{path}: rebuilt shard differs from its manifest (source frames "
                             "changed since the build?); pass --overwrite to rebuild the dataset")
    return writer.sha256()


class ShardWriter:
    """Writes the examples of one (dataset, prefix) to the shards still to write.

    Examples arrive in storm order but are numbered in the shuffled record order
    (`build_plan.example_order`); the example -> shard assignment is fixed by `recordio.shard_bounds` over
    those numbers. Each record is appended to a spill file (`.tmp-order-<prefix>` beside the
    shards; a local temporary file for gs://) as it arrives; once the pass is over, `finish`
    copies every wanted shard's records out of it in example order, to a temporary name that is
    renamed when complete. Memory holds only offsets; the disk holds the dataset once more
    until the shards are out. A shard redone against a manifest must come out with the noted
    sha256 (else the sources changed since).
    """

    def __init__(self, plan: build_encode.DatasetPlan, prefix: str, count: int, n_shards: int):
        self.plan = plan
        self.prefix = prefix
        self.bounds = recordio.shard_bounds(count, n_shards)
        self.names = [shard_names.shard_name(prefix, i, n_shards) for i in range(n_shards)]
        self.sha256: dict[str, str] = {}
        self.finished: list[str] = []
        self._where: dict[int, tuple[int, int]] = {}  # example index -> (offset, length) in the spill
        self._spill = None

    def write(self, index: int, record: bytes) -> None:
        """Keeps the example at `index` (any order) until `finish`."""
        if self._spill is None:
            if not storage.is_local(self.plan.out_dir):
                self._spill = tempfile.TemporaryFile(prefix=storage.TMP_PREFIX + "order-")
            else:
                os.makedirs(self.plan.out_dir, exist_ok=True)
                path = os.path.join(self.plan.out_dir, f"{storage.TMP_PREFIX}order-{self.prefix}")
                self._spill = open(path, "w+b", buffering=1 << 20)
                os.remove(path)  # the open file stays; nothing is left if the process dies
        self._where[index] = (self._spill.tell(), len(record))
        self._spill.write(record)

    def finish(self) -> None:
        """Writes every wanted shard from the spill, in example order, and drops the spill."""
        for shard, name in enumerate(self.names):
            if name not in self.plan.todo:
                continue
            a, b = self.bounds[shard]
            lost = [i for i in range(a, b) if i not in self._where]
            if lost:
                raise RuntimeError(f"{name}: examples {lost[:5]} were never computed")
            expected = self.plan.old["sha256"].get(name) if self.plan.old else None
            self.sha256[name] = write_shard(storage.join(self.plan.out_dir, name),
                                            self._records(a, b), expected)
            self.finished.append(name)
        self.abort()

    def _records(self, a: int, b: int) -> Iterator[bytes]:
        """Records [a, b) of the example order, read back from the spill."""
        for i in range(a, b):
            offset, length = self._where[i]
            self._spill.seek(offset)
            yield self._spill.read(length)
        self._spill.seek(0, os.SEEK_END)

    def abort(self) -> None:
        """Drops the spilled records."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
            self._where = {}


def manifest(plan: build_encode.DatasetPlan, encoding: str, n_folds: int, image_size: list, counts: dict,
             n_shards: dict, sha256: dict) -> dict:
    spec = plan.spec
    shards = {}
    for prefix, n in n_shards.items():
        for i, (a, b) in enumerate(recordio.shard_bounds(counts[prefix], n)):
            shards[shard_names.shard_name(prefix, i, n)] = b - a
    pixels = spec.rules.computes_pixels
    return {
        "build": plan.key, "spec": spec.to_string(), "kind": spec.kind, "n_frames": spec.n_frames,
        "step": spec.step, "channels": spec.channels, "images_per_example": spec.images_per_example,
        "encoding": plan.key["encoding"], "quality": plan.key["quality"],
        "jpeg_color": "RGB channels, no YCbCr, no subsampling" if pixels and encoding == "jpeg" else None,
        "image_size": image_size, "n_folds": n_folds, "counts": counts, "shards": shards,
        "mean_rounding": plan.key["mean_rounding"],
        "record_order": {"folds": f"shuffled (seed {plan.key['order_seed']})", "test": "test_cv.csv rows"},
        "sha256": dict(sorted(sha256.items())), "sources": plan.key["sources"],
        "tpuflow_version": __version__,
    }


def verify_dataset(tfrec_dir: str) -> dict[str, str]:
    """Checks every shard listed in a dataset's manifest against its sha256.

    Returns {shard name: 'ok' | 'missing' | 'damaged'}; shard files the manifest does not list
    are reported as 'unlisted'.
    """
    manifest = storage.read_json(storage.join(tfrec_dir, shard_names.MANIFEST))
    status = {}
    for name, digest in manifest["sha256"].items():
        path = storage.join(tfrec_dir, name)
        status[name] = ("missing" if not storage.exists(path)
                        else "ok" if storage.file_sha256(path) == digest else "damaged")
    for path in shard_names.shard_files(tfrec_dir):
        status.setdefault(os.path.basename(path), "unlisted")
    return status
