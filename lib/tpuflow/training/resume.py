"""Preemption-safe folds: backups of each fold's training (every epoch, and within epochs) and a
per-fold done file; the preemption notice (SIGTERM) honoured.

Preemptible TPUs (and shared machines) die mid-run. Re-running the same command then

- skips what a fold already finished (`done.json`: training, val and test predictions), and
- resumes a fold whose training was cut off at its last backup (the last completed epoch, or a
  step within the next with `--backup_every_steps`/`--backup_every_minutes`), with its weights,
  optimizer state (learning rate and loss scale included) and the state of the callbacks that
  decide what happens next: the best monitored value so far (so a resumed fold never replaces a
  better checkpoint with a worse one) and the plateau counters of the LR reduction.

Layout, per fold: `<output_dir>/backup/fold_<k>/` holding `state.json` (written last, atomically)
that names `epoch-<EEE>.weights.h5` and `epoch-<EEE>.optimizer.npz` (within an epoch: the files of
`epoch-<EEE>-step-<SSSSSS>`, with the training metrics so far, and the last epoch's), and
`done.json`. Backups and
done files carry a fingerprint of the settings that shape training (the result sections of
`tpuflow.training.config`); one from other settings is ignored (with a message) rather than mixed into this
run. Backups written before flag values were renamed carry the fingerprint of the old spellings,
which is accepted for the same settings. Keras' own `BackupAndRestore` is not used:
it restores weights and the epoch but neither the optimizer state nor other callbacks' state.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import shutil
import signal
import tempfile
import threading
import time
from typing import Iterator

import keras
import numpy as np

from tpuflow import storage
from tpuflow.results import checkpoint_names, prediction_names
from tpuflow.training import config, hosts

STATE = "state.json"
DONE = "done.json"


fingerprint = config.fingerprint


def _say(message: str, warning: bool = False) -> None:
    (logging.warning if warning else logging.info)(message)
    print(("WARNING: " if warning else "") + message, flush=True)


class FoldProgress:
    """Which of a fold's jobs (train, val, test) are already done, noted as each finishes."""

    def __init__(self, cfg, fold: int, has_checkpoint: bool):
        self.cfg, self.fold, self.has_checkpoint = cfg, fold, has_checkpoint
        self.path = storage.join(checkpoint_names.backup_dir(cfg.output_dir, fold), DONE)
        self.fingerprint, self.accepted = fingerprint(cfg), config.fingerprints(cfg)
        self.done = self._read() if cfg.resume else set()

    def _read(self, quiet: bool = False) -> set[str]:
        if not storage.exists(self.path):
            return set()
        try:
            written = storage.read_json(self.path)
            done = set(written["done"])
        except (ValueError, KeyError, TypeError) as err:
            if not quiet:
                _say(f"{self.path}: unreadable ({err}); fold {self.fold} is redone", warning=True)
            return set()
        if written.get("fingerprint") not in self.accepted:
            if not quiet:
                _say(f"{self.path}: written for other settings; fold {self.fold} is redone")
            return set()
        return done

    def _outputs_exist(self, job: str) -> bool:
        if job == "train":
            return self.has_checkpoint
        paths = [prediction_names.path(self.cfg.data_preds_dir, job, self.fold, t)
                 for t in range(self.cfg.tta_number + 1)]
        return all(storage.exists(p) for p in [*paths, prediction_names.ids_path(self.cfg.data_preds_dir, job, self.fold)])

    def todo(self, jobs: set[str]) -> list[str]:
        """The fold jobs of `jobs` still to run, in order; a retrained fold redoes its predictions."""
        wanted = [j for j in ("train", "val", "test") if j in jobs]
        todo = [j for j in wanted if j not in self.done or not self._outputs_exist(j)]
        if "train" in todo:
            todo = wanted
            self.done = set()
            storage.remove(self.path)
        if wanted and not todo:
            _say(f"Fold {self.fold}: {'+'.join(wanted)} already complete, skipping")
        return todo

    def mark(self, job: str) -> None:
        """Notes `job` as done (atomically), after its outputs are written; once training is
        noted, the fold's backup is no longer needed (removed after the done file: no gap).

        A mark only adds: what the done file already holds for these settings stays (a prediction
        run under --noresume, which did not read it, must not drop the fold's training). A done file
        of other settings is replaced (`todo` said the fold is redone)."""
        self.done |= self._read(quiet=True) | {job}
        storage.write_json(self.path, {"fingerprint": self.fingerprint, "done": sorted(self.done)})
        if job == "train":
            clear_backup(checkpoint_names.backup_dir(self.cfg.output_dir, self.fold))


class Preempted(Exception):
    """The preemption notice (SIGTERM, SIGINT) was honoured: the fold was backed up and the run
    stopped; the same command resumes it. `run.py` exits with `cli.PREEMPTED_EXIT`."""


class PreemptionNotice:
    """SIGTERM and SIGINT, while installed (`with NOTICE:`, main thread only). During training
    (`training` set by `FoldBackup`) a signal only raises the flag `requested`: the step under way
    finishes, `FoldBackup` writes a backup and raises `Preempted`. Outside training, or on a second
    signal, `Preempted` is raised at once (every output is written atomically: nothing is left
    half-written) - but on one of several hosts, where a host stopping alone would leave the others
    waiting in a collective: there the flag is honoured by every host together at the next `check`
    (each prediction batch, each fold's start and end) or training step."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested, self.training, self._previous = None, False, {}

    def __enter__(self):
        self.requested = None
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous, self.training = {}, False

    def _handle(self, signum, frame):
        first, self.requested = self.requested is None, signal.Signals(signum).name
        if first:
            _say(f"{self.requested} received: " + ("finishing the step, backing up, then stopping"
                                                    if self.training else "stopping"), warning=True)
        if not first or not (self.training or hosts.process_info()[1] > 1):
            raise Preempted(f"{self.requested}: stopped outside training; re-run the same command to resume")

    def check(self) -> None:
        """Outside training: stops every host alike if any has had the notice (a collective: call
        it at the same point on every host; one host: as the notice itself)."""
        if not self.training and hosts.agree(self.requested)[0]:
            raise Preempted(f"{self.requested or 'another host'}: stopped outside training; re-run the same "
                            "command to resume")


NOTICE = PreemptionNotice()


class FoldBackup(keras.callbacks.Callback):
    """Backs up a fold's training at every epoch end and, with `--backup_every_steps` or
    `--backup_every_minutes`, within the epoch (after the step that reaches the interval, and on
    the preemption notice); `restore` resumes from the last backup.

    `tracked` maps a name to (callback, attribute names) whose values are saved and put back at
    train begin (after the callbacks' own `on_train_begin` resets): put this callback last. A
    tracked "checkpoint" has a `path` attribute: the fold's best checkpoint (`best_checkpoints`),
    and a `wait` method (its asynchronous save complete: the state names only finished ones).
    `trainer`: the model `fit` runs (its state is synchronised before a backup within the epoch
    under JAX; its metrics are saved with it, so a resumed epoch logs the loss of the whole epoch).
    `devices`: where the run trains (a backup within an epoch resumes exactly only there; elsewhere
    the fold resumes at the epoch boundary).

    A backup within an epoch keeps the last epoch-boundary backup beside it (`boundary` in the
    state): the fallback when it cannot be used (damaged, or made on another device count).
    """

    def __init__(self, cfg, fold: int, tracked: dict[str, tuple[keras.callbacks.Callback, tuple[str, ...]]],
                 trainer: keras.Model | None = None, devices: str = ""):
        super().__init__()
        self.cfg, self.fold, self.tracked = cfg, fold, tracked
        self.trainer, self.devices = trainer, devices
        self.dir = checkpoint_names.backup_dir(cfg.output_dir, fold)
        self.fingerprint, self.accepted = fingerprint(cfg), config.fingerprints(cfg)
        self.every_steps = cfg.backup_every_steps or 0
        self.every_s = 60.0 * (cfg.backup_every_minutes or 0)
        self.offset = 0  # steps of the current epoch done before this fit (a fold resumed within it)
        self.boundary: dict | None = None  # the last epoch-boundary backup (entry of the state)
        self._pending: dict | None = None
        self._metrics: list | None = None  # a resumed epoch's metric sums so far
        self._since, self._last, self._epoch = 0, time.monotonic(), 0
        self._uncommitted: tuple[dict, dict] | None = None  # a backup made, its state not yet written
        self.orbax = OrbaxWriter() if orbax_writes(self.dir) else None
        self.array_dir = checkpoint_names.backup_dir(hosts.shared_dir(cfg.output_dir), fold)
        self._stop = False  # the preemption notice, agreed by every host

    def restore(self, model: keras.Model) -> tuple[int, int]:
        """Loads the last usable backup into `model`; returns (epochs done, steps of the next
        epoch done); (0, 0): start afresh.

        A backup that cannot be read is reported, naming the file, and the previous one (the epoch
        boundary before a backup within an epoch) is used, else the fold restarts cleanly from the
        weights and optimizer state the model had before (a partial load is undone)."""
        state_path = storage.join(self.dir, STATE)
        if not self.cfg.resume or not storage.exists(state_path):
            clear_backup(self.dir)
            return 0, 0
        before = model.get_weights(), [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
        try:
            state = storage.read_json(state_path)
            if state.get("fingerprint") not in self.accepted:
                _say(f"{state_path}: backup of other settings; fold {self.fold} starts afresh")
                clear_backup(self.dir)
                return 0, 0
            entries = [_entry(state), *([state["boundary"]] if state.get("boundary") else [])]
            if entries[0]["steps_done"] and state.get("devices", self.devices) != self.devices:
                _say(f"{state_path}: the backup within epoch {entries[0]['epochs_done'] + 1} was made on "
                     f"{state.get('devices')} and resumes exactly only there (this run: {self.devices}); "
                     f"fold {self.fold} resumes at the last epoch boundary", warning=True)
                entries = entries[1:]
        except Exception as err:  # an unreadable state file: as a damaged backup
            entries, state = [], None
            _say(f"{state_path}: corrupt backup ({type(err).__name__}: {err}); fold {self.fold} restarts "
                 "from scratch", warning=True)
        for i, entry in enumerate(entries):
            try:
                self._load(entry, state, model)
            except CorruptBackup as err:
                fallback = "the previous backup is used" if i + 1 < len(entries) else \
                    f"fold {self.fold} restarts from scratch"
                _say(f"{err}; {fallback}", warning=True)
                model.set_weights(before[0])
                _assign(model.optimizer.variables, before[1], "the initial optimizer state")
                continue
            self._pending, self.offset = state["callbacks"], entry["steps_done"]
            self.boundary = entry if not entry["steps_done"] else state.get("boundary")
            self.prune([entry, self.boundary])  # what a kill left half-made
            epochs, steps = entry["epochs_done"], entry["steps_done"]
            within = f", step {steps} of epoch {epochs + 1}" if steps else ""
            _say(f"Resuming fold {self.fold} at epoch {epochs + 1}{within} (backup of epoch {epochs}{within} "
                 f"in {self.dir})")
            return epochs, steps
        clear_backup(self.dir)
        return 0, 0

    def _load(self, entry: dict, state: dict, model: keras.Model) -> None:
        """One backup's weights, optimizer (and metric) state into `model`; checks the state's
        callback values; a `CorruptBackup` naming the file that cannot be read."""
        paths = self._paths(entry)
        path = paths.get("orbax") or paths["weights"]
        try:
            if entry.get("format") == "orbax":
                self._metrics = orbax_load(path, model, bool(entry["steps_done"]))
                path = storage.join(self.dir, STATE)
                self._check_callbacks(state)
                return
            with storage.local_copy(path) as local:
                model.load_weights(local)
            path = paths["optimizer"]
            _assign(model.optimizer.variables, _read_arrays(path), path)
            if entry["steps_done"]:
                path = paths["metrics"]
                self._metrics = _read_arrays(path)
            path = storage.join(self.dir, STATE)
            self._check_callbacks(state)
        except Exception as err:  # any unreadable part: name it; the caller falls back
            raise CorruptBackup(f"{path}: corrupt backup ({type(err).__name__}: {err})") from err

    def _check_callbacks(self, state: dict) -> None:
        for name, (_, attrs) in self.tracked.items():
            missing = sorted(set(attrs) - set(state["callbacks"][name]))
            if missing:
                raise KeyError(f"no {missing} for callback {name!r}")
        if "checkpoint" in self.tracked:
            state["callbacks"]["checkpoint"]["path"] = self._reconcile_checkpoint(
                state["callbacks"]["checkpoint"]["path"])

    def _paths(self, entry: dict) -> dict[str, str]:
        stem = storage.join(self.dir, entry["stem"])
        if entry.get("format") == "orbax":  # all hosts' arrays in one place: host 0's run dir
            return {"orbax": storage.join(self.array_dir, entry["stem"]) + ".orbax"}
        paths = {"weights": stem + ".weights.h5", "optimizer": stem + ".optimizer.npz"}
        return {**paths, "metrics": stem + ".metrics.npz"} if entry["steps_done"] else paths

    def _reconcile_checkpoint(self, noted: str | None) -> str | None:
        """The fold's best checkpoint as of the backup (None: a backup within the first epoch).

        A kill between the best-checkpoint save and the backup leaves a checkpoint newer than the
        backup (the old one possibly deleted already): keep the noted one if it is there (and
        drop the newer one, whose epoch is redone), else the newer one.
        """
        found = best_checkpoints(self.cfg.output_dir, self.fold)
        if noted is None:  # no epoch had ended: any checkpoint is of an epoch redone
            for other in found:
                remove_checkpoint(other)
            return None
        if not found:
            raise FileNotFoundError(f"no {checkpoint_names.GLOB.format(fold=self.fold)} in {self.cfg.output_dir}")
        keep = noted if noted in found else found[-1]
        for other in found:
            if other != keep:
                remove_checkpoint(other)
        return keep

    def on_train_begin(self, logs=None):
        NOTICE.training = True
        if self._pending is not None:
            for name, (callback, attrs) in self.tracked.items():
                for attr in attrs:
                    setattr(callback, attr, self._pending[name][attr])
            self._pending = None
        self._since, self._last = 0, time.monotonic()

    def on_train_end(self, logs=None):
        """A fold resumed within an epoch trains in two fits (the rest of that epoch, then the
        others): the state reached here is put back after the next fit's resets."""
        NOTICE.training = False
        self.commit()
        self._pending = self._callback_state()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self._metrics is not None:  # a resumed epoch: add the metric sums of its steps before
            self._add_metrics(self._metrics)  # (Keras builds the metrics on the first step)
            self._metrics = None
        steps = self.offset + batch + 1  # of this epoch (batch: the last step of the call)
        self._since += 1
        due, self._stop = hosts.agree(
            (self.every_steps and self._since >= self.every_steps) or
            (self.every_s and time.monotonic() - self._last >= self.every_s), NOTICE.requested)
        if (due or self._stop) and steps < self.params["steps"] + self.offset:
            self._save(self._epoch, steps)  # the last step of an epoch: its end backs it up
            self._stop_if_asked()

    def _add_metrics(self, saved: list[np.ndarray]) -> None:
        """Keras' training metrics are sums (totals and counts): those of the steps before the
        backup are added to the resumed ones, as an uninterrupted epoch has them."""
        trainer = self._train_model()
        if hasattr(trainer, "jax_state_sync"):
            trainer.jax_state_sync()
        variables = trainer.metrics_variables
        if len(variables) != len(saved):
            raise ValueError(f"{self.dir}: the backup has {len(saved)} metric arrays, the model {len(variables)}")
        for variable, value in zip(variables, saved):
            variable.assign(variable + value)

    def on_epoch_end(self, epoch, logs=None):
        self.offset = 0
        self._save(epoch + 1, 0)
        self._stop_if_asked()

    def _stop_if_asked(self) -> None:
        if self._stop or hosts.agree(NOTICE.requested)[0]:  # every host alike
            NOTICE.training = False
            self.commit()
            raise Preempted(f"{NOTICE.requested or 'another host'}: fold {self.fold} backed up in {self.dir}; "
                            "re-run the same command to resume")

    def _train_model(self) -> keras.Model:
        return self.trainer or self.model

    def _callback_state(self) -> dict:
        return {name: {a: _plain(getattr(cb, a)) for a in attrs} for name, (cb, attrs) in self.tracked.items()}

    def _save(self, epochs: int, steps: int) -> None:
        """Writes the backup after `epochs` epochs and `steps` steps of the next; the state file
        last (atomically), then the older backups go (the last epoch boundary's stays). Orbax
        (`self.orbax`) writes in the background: its state file is written once it is complete,
        at the next backup or when training stops (at its end, or on the notice)."""
        trainer = self._train_model()
        if steps and hasattr(trainer, "jax_state_sync"):  # JAX keeps the state apart during an epoch
            trainer.jax_state_sync()
        self.commit()
        entry = {"epochs_done": epochs, "steps_done": steps, "format": "orbax" if self.orbax else "h5",
                 "stem": posixpath.basename(checkpoint_names.backup_stem(self.dir, epochs, steps))}
        paths = self._paths(entry)
        if self.orbax:
            arrays = {"weights": self.model.weights, "optimizer": self.model.optimizer.variables,
                      "metrics": trainer.metrics_variables if steps else []}
            self.orbax.save(paths["orbax"], {k: [v.value for v in vs] for k, vs in arrays.items()})
        else:
            storage.save_weights(self.model, paths["weights"])
            _write_arrays(paths["optimizer"], self.model.optimizer.variables)
            if steps:
                _write_arrays(paths["metrics"], trainer.metrics_variables)
        self._uncommitted = entry, self._callback_state()
        if not self.orbax:
            self.commit()
        self._since, self._last = 0, time.monotonic()

    def commit(self) -> None:
        """Writes the state file of the last backup made (once Orbax has finished writing it),
        then removes the older backups."""
        if self._uncommitted is None:
            return
        if self.orbax:
            self.orbax.wait()
        if "checkpoint" in self.tracked:  # the state may name only a finished best checkpoint
            self.tracked["checkpoint"][0].wait()
        entry, callbacks = self._uncommitted
        boundary = self.boundary if entry["steps_done"] else None
        storage.write_json(storage.join(self.dir, STATE), {
            "fingerprint": self.fingerprint, "fold": self.fold, **entry, "boundary": boundary,
            "devices": self.devices, "callbacks": callbacks})
        self._uncommitted = None
        if not entry["steps_done"]:
            self.boundary = entry
        self.prune([entry, boundary])

    def prune(self, entries: list[dict | None]) -> None:
        """Removes every backup file but those of `entries` (half-made ones included): this host's
        (host 0's dir holds the Orbax backups of all)."""
        keep = {p for e in entries if e for p in self._paths(e).values()}
        for old in storage.glob(storage.join(self.dir, checkpoint_names.BACKUP_GLOB)):
            if old not in keep:
                storage.remove(old)


def clear_backup(directory: str) -> None:
    """Removes a fold's epoch backup (its done file stays)."""
    for name in storage.glob(storage.join(directory, checkpoint_names.BACKUP_GLOB)) + [storage.join(directory, STATE)]:
        storage.remove(name)


class CorruptBackup(Exception):
    """A backup file that cannot be read back; the message names it."""


def _assign(variables, values: list[np.ndarray], source: str) -> None:
    if len(values) != len(variables) or any(tuple(v.shape) != x.shape for v, x in zip(variables, values)):
        raise ValueError(f"{source}: {len(values)} arrays do not match the {len(variables)} variables")
    for variable, value in zip(variables, values):
        variable.assign(value)


ORBAX_MISSING = ("orbax-checkpoint is not installed: backups under the JAX backend are written with it "
                 "(pip install 'tpuflow[orbax]')")


def require_orbax():
    """The `orbax.checkpoint` module; an error naming the extra to install if it is missing (a
    ValueError: one line, before any training)."""
    try:
        import orbax.checkpoint as ocp  # noqa: PLC0415 (JAX runs only)
    except ImportError as err:
        raise ValueError(ORBAX_MISSING) from err
    return ocp


def orbax_checkpointer():
    """Orbax's checkpointer (asynchronous: writes in the background once the arrays are copied
    from the devices; coordinated across the hosts of a multi-host run)."""
    return require_orbax().StandardCheckpointer()


def orbax_writes(directory: str) -> bool:
    """Whether a fold's arrays go through Orbax: under JAX, but for a `gs://` run dir of a multi-host
    run (Orbax writes it through a local staging dir, which only one host can upload whole: there
    the `.weights.h5` files of each host are written)."""
    return keras.backend.backend() == "jax" and (storage.is_local(directory) or hosts.process_info()[1] == 1)


class OrbaxWriter:
    """Asynchronous Orbax saves to a local or `gs://` directory; `wait` returns once every save
    made is complete where it belongs. Locally Orbax writes a temporary directory and renames it
    when complete; a `gs://` one is written to a local staging dir and uploaded by `wait` through
    `tpuflow.storage` (verified uploads, the emulator in the tests), the caller writing what names
    it (a state file) after `wait`."""

    def __init__(self):
        self.checkpointer = orbax_checkpointer()
        self._uploads: list[tuple[str, str]] = []  # (staging dir, gs:// destination)

    def save(self, path: str, tree) -> None:
        if not storage.is_local(path):
            staging = tempfile.mkdtemp(prefix="tpuflow-orbax-")
            self._uploads.append((staging, path))
            path = os.path.join(staging, posixpath.basename(path))
        self.checkpointer.save(path, tree, force=True)

    def wait(self) -> None:
        self.checkpointer.wait_until_finished()
        while self._uploads:
            staging, path = self._uploads.pop(0)
            try:
                storage.remove(path)  # a half-uploaded one (a kill) under the same name
                local = os.path.join(staging, posixpath.basename(path))
                for relative in storage.list_files(local):
                    storage.upload_file(os.path.join(local, relative), storage.join(path, relative))
            finally:
                shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _local_tree(path: str) -> Iterator[str]:
    """A local directory holding the tree `path` (itself, or a downloaded copy of a `gs://` one)."""
    if storage.is_local(path):
        yield path
        return
    staging = tempfile.mkdtemp(prefix="tpuflow-orbax-")
    try:
        local = os.path.join(staging, posixpath.basename(path))
        for relative, info in storage.list_files(path).items():
            os.makedirs(os.path.dirname(os.path.join(local, relative)), exist_ok=True)
            storage.download_file(storage.join(path, relative), os.path.join(local, relative), info)
        yield local
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def orbax_load(path: str, model: keras.Model, metrics: bool = False) -> list | None:
    """The arrays of an Orbax backup or best checkpoint (local or `gs://`) into `model`: its
    weights, and the optimizer state if saved (under either backend, laid out as `model`'s
    variables are now: another device count reads it too); returns the metric sums (`metrics`: a
    backup within an epoch). Arrays of another model: a ValueError naming the first that differs."""
    import jax  # noqa: PLC0415 (Orbax reads into JAX arrays, whichever backend trains)
    host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    checkpointer = orbax_checkpointer()
    with _local_tree(path) as local:
        saved = checkpointer.metadata(local).item_metadata.tree
        optimizer = getattr(model, "optimizer", None)  # none: a model only predicting
        now = {"weights": model.weights, "optimizer": optimizer.variables if optimizer else []}
        now = {group: variables for group, variables in now.items() if group in saved}
        for group, variables in now.items():
            _check_shapes(variables, saved[group], group)

        def target(group: str):  # each array laid out as the variable it goes to is (else on the host)
            layouts = [getattr(v.value, "sharding", host) for v in now.get(group, [])]
            return [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=layouts[i] if i < len(layouts) else host)
                    for i, a in enumerate(saved[group])]

        restored = checkpointer.restore(local, {group: target(group) for group in saved})
    for group, variables in now.items():
        _assign(variables, [np.asarray(a) for a in restored[group]], f"{path} ({group})")
    return [np.asarray(a) for a in restored["metrics"]] if metrics else None


def _check_shapes(variables, saved, group: str) -> None:
    if len(variables) != len(saved):
        raise ValueError(f"does not fit this model: it holds {len(saved)} {group} arrays, the model has "
                         f"{len(variables)}")
    for variable, array in zip(variables, saved):
        if tuple(variable.shape) != tuple(array.shape):
            raise ValueError(f"saved from a model of another shape: {variable.path} is {tuple(variable.shape)} "
                             f"in this model but {tuple(array.shape)} in the checkpoint")


def best_checkpoints(output_dir: str, fold: int | str) -> list[str]:
    """A fold's best checkpoints (`checkpoint_names.find`): in this host's run dir (`.weights.h5`),
    else in host 0's (Orbax, written there by all hosts together)."""
    for directory in dict.fromkeys([output_dir, hosts.shared_dir(output_dir)]):
        found = checkpoint_names.find(directory, fold)
        if found:
            return found
    return []


def remove_checkpoint(path: str) -> None:
    """Removes a best checkpoint; one in host 0's run dir that all hosts wrote (Orbax) only by host 0."""
    if not checkpoint_names.is_orbax(path) or hosts.process_info()[0] == 0:
        storage.remove(path)


def _entry(state: dict) -> dict:
    """The latest backup a state file names (files written before backups within epochs: at an epoch end)."""
    epochs, steps = int(state["epochs_done"]), int(state.get("steps_done", 0))
    stem = state.get("stem") or posixpath.basename(checkpoint_names.backup_stem("", epochs))
    return {"epochs_done": epochs, "steps_done": steps, "stem": stem, "format": state.get("format", "h5")}


def _write_arrays(path: str, variables) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)})
    storage.write_bytes(path, buf.getvalue())


def _read_arrays(path: str) -> list[np.ndarray]:
    with np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False) as saved:
        return [saved[f"v{i}"] for i in range(len(saved.files))]


def _plain(value):
    """JSON-ready callback state (NumPy scalars to Python; inf stays inf)."""
    return value.item() if isinstance(value, np.generic) else value
