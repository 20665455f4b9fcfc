"""A run's input source: prebuilt records, or examples assembled from a frame store, behind one face.

The runner (and the TPU plan) ask a source for what they need and never which one they have:

- `manifest`: the dataset's facts (kind, spec, frames per example, folds, examples per fold and
  split, image size, the CSVs it was built from), read from manifest files only;
- `name`: the flags that name it, for messages;
- `check(jobs)`: everything the jobs will read is there and was built from `--data_dir`'s CSVs;
- `ids(fold)`, `labels(fold)`: a validation fold's (None: the test split's) ids, or (ids, wind
  speeds, class indices), in the order `predict_dataset` gives its examples;
- `first_example(fold)`: one input of the fold as an experiment's `parse_example` takes it;
- `train_dataset(...)`: endless training batches from a given epoch and step on, this host's share;
- `predict_dataset(fold, parse, batch)`: the fold's (or test's) inputs, padded to whole batches.

`open_source(cfg)` picks one: `--frame_store` with `--assemble` (`FrameStoreSource`), else
`--data_tfrec_dir` (`RecordSource`).
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from tpuflow import cli
from tpuflow.inputs import assembly, mixup, pipeline, records
from tpuflow.prep import store


class RecordSource:
    """Prebuilt TFRecords (`--data_tfrec_dir`). A resumed fold draws a new shuffle rather than
    replaying the order it had; several hosts each read their share of the shards."""

    def __init__(self, cfg):
        self.dir, self.data_dir = cfg.data_tfrec_dir, cfg.data_dir
        self.name = f"--data_tfrec_dir={self.dir}"
        self.manifest = records.read_manifest(self.dir)
        if store.is_store(self.manifest):
            raise cli.UsageError(f"{self.name} is a frame store: pass --frame_store={self.dir} "
                                 "--assemble=<spec> (e.g. --assemble=stacked:s5) to read examples of one kind from it")
        self._ids = {}

    def check(self, jobs) -> None:
        store.check_sources(self.manifest, self.dir, self.data_dir)
        records.record_files(self.dir, range(int(self.manifest["n_folds"])))
        if "test" in jobs:
            records.record_files(self.dir, None)

    def ids(self, fold: int | None) -> np.ndarray:
        if fold not in self._ids:  # read once: predictions count their examples by it
            self._ids[fold] = records.read_ids(self._files(fold))
        return self._ids[fold]

    def labels(self, fold: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return records.read_labels(self._files(fold))

    def first_example(self, fold: int) -> tf.Tensor:
        return next(iter(tf.data.TFRecordDataset(self._files(fold)[0]).take(1)))

    def train_dataset(self, cfg, folds, parse, batch: int, *, fold: int, epoch: int, step: int, steps: int,
                      block: int | None = None, host: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
        """Training batches of `folds` (`batch`: this host's rows of each), mixed as `cfg` says;
        `steps` (per epoch) is not needed here: a resumed epoch gets a new shuffle."""
        seed = cfg.seed + fold + 1000 * epoch + (7919 * step if step else 0)
        files = pipeline.host_files(records.record_files(self.dir, folds), *host)
        ds = pipeline.train_dataset(files, parse, batch, shuffle_buffer=cfg.buffer_size, aug_prob=cfg.aug_prob,
                                    cache=cfg.use_cache, seed=seed)
        return mixup.maybe_mix(ds, cfg, seed=seed, block=block, start=0, host=host[0])

    def predict_dataset(self, fold: int | None, parse, batch: int) -> tf.data.Dataset:
        return pipeline.predict_dataset(self._files(fold), parse, batch, len(self.ids(fold)))

    def _files(self, fold: int | None) -> list[str]:
        return records.record_files(self.dir, None if fold is None else [fold])


class FrameStoreSource:
    """Examples of one spec (`--assemble`) assembled at read time from a frame store
    (`--frame_store`; `tpuflow.inputs.assembly`). Training is one global shuffle, resumed at the
    position reached (the very batches an uninterrupted run sees); several hosts each read their
    rows of every global batch."""

    def __init__(self, cfg):
        self.dir, self.data_dir, self.frame_cache = cfg.frame_store, cfg.data_dir, cfg.frame_cache
        self.spec = assembly.parse_spec(cfg.assemble)
        self.name = f"--frame_store={self.dir} --assemble={self.spec}"
        self.manifest = assembly.manifest_of(self.spec, store.read_manifest(self.dir), self.dir)

    @functools.cached_property
    def assembly(self) -> assembly.Assembly:
        """The store, loaded (once per process) and checked against `--data_dir`'s CSVs."""
        return assembly.open_assembly(self.dir, str(self.spec), self.data_dir, self.frame_cache)

    def check(self, jobs) -> None:
        self.assembly  # noqa: B018 (loads and checks the store)

    def ids(self, fold: int | None) -> np.ndarray:
        return self.labels(fold)[0]

    def labels(self, fold: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.assembly.labels(self.assembly.split_rows(fold))

    def first_example(self, fold: int) -> dict:
        return self.assembly.first_example(fold)

    def train_dataset(self, cfg, folds, parse, batch: int, *, fold: int, epoch: int, step: int, steps: int,
                      block: int | None = None, host: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
        """Training batches of `folds` from step `step` of epoch `epoch` (`steps` per epoch) on;
        `batch`: this host's rows of each global batch. Mixing resumes at that position too."""
        position = (epoch * steps + step) * cfg.global_batch_size
        ds = self.assembly.train_dataset(folds, parse, batch, seed=cfg.seed, fold=fold, start=position,
                                         aug_prob=cfg.aug_prob, host=host)
        return mixup.maybe_mix(ds, cfg, seed=cfg.seed + fold, block=block, start=position // cfg.global_batch_size,
                               host=host[0])

    def predict_dataset(self, fold: int | None, parse, batch: int) -> tf.data.Dataset:
        return self.assembly.predict_dataset(self.assembly.split_rows(fold), parse, batch)


def open_source(cfg) -> RecordSource | FrameStoreSource:
    """The run's input source (see module doc); a missing or half-given one is a usage error."""
    if cfg.frame_store or cfg.assemble:
        if not (cfg.frame_store and cfg.assemble):
            raise cli.UsageError("--frame_store and --assemble go together: the store, and the examples to "
                                 "assemble from it (e.g. --frame_store=data/data-frames --assemble=stacked:s5)")
        return FrameStoreSource(cfg)
    if not cfg.data_tfrec_dir:
        raise cli.UsageError("--data_tfrec_dir (records) or --frame_store with --assemble is required: the "
                             "dataset's kind, frames and counts come from it")
    return RecordSource(cfg)
