"""Several hosts, one model (a multi-host TPU slice under JAX): who reads what, and predictions
gathered so that every example is predicted exactly once, in record order, on every host.

- Training: each host reads its own share of the record shards (every n-th file) and feeds its
  share of the global batch; `keras.distribution.DataParallel` (with its own dataset sharding
  off) assembles the hosts' parts into the global batch.
- Prediction: the padded, ordered prediction dataset of global batches is split so that host i
  feeds rows [i*b, (i+1)*b) of every global batch of n*b rows; the model's output for the global
  batch is gathered from all hosts back into record order. (Each host decodes every record for
  prediction; only training is split by file.)

- Run dir: host 0 writes the run dir, host k its own copy under it (`host_dir`); Orbax backups
  and best checkpoints are written by all hosts together into host 0's (`shared_dir`), so no
  host keeps its own.
- Decisions within a step loop (back up now? stop for a preemption notice?) are taken on every
  host alike (`agree`): a collective save or a host stopping alone would leave the others waiting.
  So is a preemption notice outside training (`resume.PreemptionNotice.check`, before each
  prediction batch and at each fold's start and end).

With one process (one host, any number of devices) all of this is the identity.
"""
from __future__ import annotations

from typing import Callable

import posixpath

import keras
import numpy as np

from tpuflow import storage


def process_info() -> tuple[int, int]:
    """(this process's index, number of processes): (0, 1) unless JAX runs on several hosts."""
    if keras.backend.backend() != "jax":
        return 0, 1
    import jax  # noqa: PLC0415
    return jax.process_index(), jax.process_count()


def host_dir(run_dir: str, index: int) -> str:
    """Host `index`'s copy of the run dir: `<run dir>/host_<k>` (host 0: the run dir itself)."""
    return storage.join(run_dir, f"host_{index}") if index else run_dir


def shared_dir(output_dir: str) -> str:
    """The run dir host 0 writes, from this host's output dir (`host_dir`)."""
    index = process_info()[0]
    return posixpath.dirname(output_dir.rstrip("/")) if index and output_dir.rstrip("/").endswith(f"host_{index}") \
        else output_dir


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag, True on every host if it is True on any (one small collective; one host: as given)."""
    if process_info()[1] == 1:
        return tuple(bool(f) for f in flags)
    from jax.experimental import multihost_utils  # noqa: PLC0415
    gathered = np.asarray(multihost_utils.process_allgather(np.array([bool(f) for f in flags], np.int32)))
    return tuple(bool(f) for f in gathered.reshape(-1, len(flags)).any(axis=0))


def host_batch(global_batch: int, count: int) -> int:
    """The rows of each global batch that one host feeds."""
    if global_batch % count:
        raise ValueError(f"global batch {global_batch} does not split over {count} hosts")
    return global_batch // count


def host_slices(dataset, global_batch: int, index: int, count: int):
    """This host's rows of every global batch of a batched `tf.data` dataset, order kept."""
    if count == 1:
        return dataset
    return dataset.rebatch(host_batch(global_batch, count)).shard(count, index)


def predict(model: keras.Model, dataset, global_batch: int, check: Callable[[], None] = lambda: None) -> np.ndarray:
    """`model.predict` over a dataset of global batches: one host predicts as Keras does; on
    several, each predicts its slice of every global batch and the slices are gathered from all
    hosts (NumPy, record order, the same on every host). Keras' own `predict` cannot return
    outputs that span other hosts' devices. `check` is called before each batch on several hosts
    (the preemption notice, agreed by all: `resume.NOTICE.check`)."""
    index, count = process_info()
    if count == 1:
        return np.asarray(model.predict(dataset, verbose=0))
    from jax.experimental import multihost_utils  # noqa: PLC0415
    outputs = []
    for batch in host_slices(dataset, global_batch, index, count).as_numpy_iterator():
        check()
        outputs.append(np.asarray(multihost_utils.process_allgather(np.asarray(model.predict_on_batch(batch)),
                                                                    tiled=True)))
    return np.concatenate(outputs)
