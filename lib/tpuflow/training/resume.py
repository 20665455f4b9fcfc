"""Preemption-safe folds: a per-epoch backup of each fold's training and a per-fold done record.

Preemptible TPUs (and shared machines) die mid-run. Re-running the same command then

- skips what a fold already finished (`done.json`: training, val and test predictions), and
- resumes a fold whose training was cut off at the last completed epoch, with its weights,
  optimizer state (learning rate and loss scale included) and the state of the callbacks that
  decide what happens next: the best monitored value so far (so a resumed fold never replaces a
  better checkpoint with a worse one) and the plateau counters of the LR reduction.

Layout, per fold: `<output_dir>/backup/fold_<k>/` holding `state.json` (written last, atomically)
that names `epoch-<EEE>.weights.h5` and `epoch-<EEE>.optimizer.npz`, and `done.json`. Backups and
done records carry a fingerprint of the settings that shape training (the result sections of
`tpuflow.training.config`); one from other settings is ignored (with a message) rather than mixed into this
run. Backups written before flag values were renamed carry the fingerprint of the old spellings,
which is accepted for the same settings. Keras' own `BackupAndRestore` is not used:
it restores weights and the epoch but neither the optimizer state nor other callbacks' state.
"""
from __future__ import annotations

import io
import logging

import keras
import numpy as np

from tpuflow import storage
from tpuflow.results import checkpoint_names, prediction_names
from tpuflow.training import config

STATE = "state.json"
DONE = "done.json"


fingerprint = config.fingerprint


def _say(message: str, warning: bool = False) -> None:
    (logging.warning if warning else logging.info)(message)
    print(("WARNING: " if warning else "") + message, flush=True)


class FoldProgress:
    """Which of a fold's jobs (train, val, test) are already done, recorded as each finishes."""

    def __init__(self, cfg, fold: int, has_checkpoint: bool):
        self.cfg, self.fold, self.has_checkpoint = cfg, fold, has_checkpoint
        self.path = storage.join(checkpoint_names.backup_dir(cfg.output_dir, fold), DONE)
        self.fingerprint, self.accepted = fingerprint(cfg), config.fingerprints(cfg)
        self.done = self._read() if cfg.resume else set()

    def _read(self, quiet: bool = False) -> set[str]:
        if not storage.exists(self.path):
            return set()
        try:
            record = storage.read_json(self.path)
            done = set(record["done"])
        except (ValueError, KeyError, TypeError) as err:
            if not quiet:
                _say(f"{self.path}: unreadable ({err}); fold {self.fold} is redone", warning=True)
            return set()
        if record.get("fingerprint") not in self.accepted:
            if not quiet:
                _say(f"{self.path}: recorded for other settings; fold {self.fold} is redone")
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
        """Records `job` as done (atomically), after its outputs are written; once training is
        recorded, the fold's backup is no longer needed (removed after the record: no gap).

        A mark only adds: what the record already holds for these settings stays (a prediction
        run under --noresume, which did not read it, must not drop the fold's training). A record
        of other settings is replaced (`todo` said the fold is redone)."""
        self.done |= self._read(quiet=True) | {job}
        storage.write_json(self.path, {"fingerprint": self.fingerprint, "done": sorted(self.done)})
        if job == "train":
            clear_backup(checkpoint_names.backup_dir(self.cfg.output_dir, self.fold))


class FoldBackup(keras.callbacks.Callback):
    """Backs up a fold's training at every epoch end; `restore` resumes from the last backup.

    `tracked` maps a name to (callback, attribute names) whose values are saved and put back at
    train begin (after the callbacks' own `on_train_begin` resets): put this callback last. A
    tracked "checkpoint" has a `path` attribute: the fold's best checkpoint, matched by
    `checkpoint_glob` (relative to the output dir).
    """

    def __init__(self, cfg, fold: int, tracked: dict[str, tuple[keras.callbacks.Callback, tuple[str, ...]]],
                 checkpoint_glob: str):
        super().__init__()
        self.cfg, self.fold, self.tracked, self.checkpoint_glob = cfg, fold, tracked, checkpoint_glob
        self.dir = checkpoint_names.backup_dir(cfg.output_dir, fold)
        self.fingerprint, self.accepted = fingerprint(cfg), config.fingerprints(cfg)
        self._pending: dict | None = None

    def restore(self, model: keras.Model) -> int:
        """Loads the last backup into `model`; returns the epochs already done (0: start afresh).

        A backup that cannot be read is reported, naming the file, and the fold restarts cleanly
        from the weights and optimizer state the model had before (a partial load is undone).
        """
        state_path = storage.join(self.dir, STATE)
        if not self.cfg.resume or not storage.exists(state_path):
            clear_backup(self.dir)
            return 0
        before = model.get_weights(), [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
        try:
            state = self._load(state_path, model)
        except CorruptBackup as err:
            _say(f"{err}; fold {self.fold} restarts from scratch", warning=True)
            model.set_weights(before[0])
            _assign(model.optimizer.variables, before[1], "the initial optimizer state")
            clear_backup(self.dir)
            return 0
        if state is None:
            _say(f"{state_path}: backup of other settings; fold {self.fold} starts afresh")
            clear_backup(self.dir)
            return 0
        self._pending = state["callbacks"]
        epochs = int(state["epochs_done"])
        _say(f"Resuming fold {self.fold} at epoch {epochs + 1} (backup of epoch {epochs} in {self.dir})")
        return epochs

    def _load(self, state_path: str, model: keras.Model) -> dict | None:
        """Weights and optimizer state into `model`; the state record, or None for other settings."""
        path = state_path
        try:
            state = storage.read_json(state_path)
            if state.get("fingerprint") not in self.accepted:
                return None
            weights_path, optimizer_path = checkpoint_names.backup_files(self.dir, int(state["epochs_done"]))
            path = weights_path
            with storage.local_copy(weights_path) as local:
                model.load_weights(local)
            path = optimizer_path
            with np.load(io.BytesIO(storage.read_bytes(optimizer_path)), allow_pickle=False) as saved:
                values = [saved[f"v{i}"] for i in range(len(saved.files))]
            _assign(model.optimizer.variables, values, optimizer_path)
            path = state_path
            for name, (_, attrs) in self.tracked.items():
                missing = sorted(set(attrs) - set(state["callbacks"][name]))
                if missing:
                    raise KeyError(f"no {missing} for callback {name!r}")
            if "checkpoint" in self.tracked:
                state["callbacks"]["checkpoint"]["path"] = self._reconcile_checkpoint(
                    state["callbacks"]["checkpoint"]["path"])
        except Exception as err:  # any unreadable part: name it; the caller restarts the fold
            raise CorruptBackup(f"{path}: corrupt backup ({type(err).__name__}: {err})") from err
        return state

    def _reconcile_checkpoint(self, recorded: str | None) -> str:
        """The fold's best checkpoint as of the backup.

        A kill between the best-checkpoint save and the backup leaves a checkpoint newer than the
        backup (the old one possibly deleted already): keep the recorded one if it is there (and
        drop the newer one, whose epoch is redone), else the newer one.
        """
        found = sorted(storage.glob(storage.join(self.cfg.output_dir, self.checkpoint_glob)))
        if not found:
            raise FileNotFoundError(f"no {self.checkpoint_glob} in {self.cfg.output_dir}")
        keep = recorded if recorded in found else found[-1]
        for other in found:
            if other != keep:
                storage.remove(other)
        return keep

    def restored(self, name: str, attr: str, default):
        """A tracked value of the backup being resumed (`default` when starting afresh): for state
        needed before training starts, such as the input position."""
        return (self._pending or {}).get(name, {}).get(attr, default)

    def on_train_begin(self, logs=None):
        if self._pending is not None:
            for name, (callback, attrs) in self.tracked.items():
                for attr in attrs:
                    setattr(callback, attr, self._pending[name][attr])
            self._pending = None

    def on_epoch_end(self, epoch, logs=None):
        epochs = epoch + 1
        weights_path, optimizer_path = checkpoint_names.backup_files(self.dir, epochs)
        storage.save_weights(self.model, weights_path)
        buf = io.BytesIO()
        np.savez(buf, **{f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(self.model.optimizer.variables)})
        storage.write_bytes(optimizer_path, buf.getvalue())
        callbacks = {name: {a: _plain(getattr(cb, a)) for a in attrs} for name, (cb, attrs) in self.tracked.items()}
        storage.write_json(storage.join(self.dir, STATE), {
            "fingerprint": self.fingerprint, "fold": self.fold, "epochs_done": epochs, "callbacks": callbacks})
        for old in storage.glob(storage.join(self.dir, checkpoint_names.BACKUP_GLOB)):  # the state now names the new files
            if old not in (weights_path, optimizer_path):
                storage.remove(old)


def clear_backup(directory: str) -> None:
    """Removes a fold's epoch backup (its done record stays)."""
    for name in storage.glob(storage.join(directory, checkpoint_names.BACKUP_GLOB)) + [storage.join(directory, STATE)]:
        storage.remove(name)


class CorruptBackup(Exception):
    """A backup file that cannot be read back; the message names it."""


def _assign(variables, values: list[np.ndarray], source: str) -> None:
    if len(values) != len(variables) or any(tuple(v.shape) != x.shape for v, x in zip(variables, values)):
        raise ValueError(f"{source}: {len(values)} arrays do not match the {len(variables)} optimizer variables")
    for variable, value in zip(variables, values):
        variable.assign(value)


def _plain(value):
    """JSON-ready callback state (NumPy scalars to Python; inf stays inf)."""
    return value.item() if isinstance(value, np.generic) else value
