"""One writer per run dir: `<run dir>/run.lock`, naming its owner, kept fresh by a heartbeat.
A dataset build takes the same lock on its `--out_dir` (`build.lock`, `BUILD_LOCK`).

Two `run.py` processes on one `--output_dir` (the same experiment started twice, say with another
`--lr`) would redo and overwrite each other's folds and leave a run card describing neither. The
first to create the lock file owns the run dir until it exits; a second fails at once with an
error naming the owner (pid, host, start time, command).

Creation is atomic (`storage.create_new`): locally the lock is written under a temporary name and
hard-linked into place (`link` fails if the name exists); on Cloud Storage it is uploaded with the
precondition `if_generation_match=0` ("only if no such object"). A crashed or preempted owner leaves its lock
behind; it is stale, and taken over by the next run (which then resumes the run dir), when
- the owner ran on this host and its process is gone (pid not running, or reused by another
  process: the start time differs), or
- the owner is elsewhere (another VM, a `gs://` run dir shared by several) and its heartbeat,
  rewritten every `HEARTBEAT_S` seconds, is older than `STALE_S`.
A takeover removes exactly the stale lock it judged (`storage.delete_at` its version; Cloud
Storage: a delete pinned to that object's generation), then creates its own as above: of two runs
taking over at once, one wins. The heartbeat rewrites the lock only at the version it last wrote
(`storage.replace_at`), so a run whose lock was taken over notices.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid

from tpuflow import storage

LOCK_NAME = "run.lock"
BUILD_LOCK = "build.lock"  # create_tfrecords.py's --out_dir: two builds would overwrite each other's shards
HEARTBEAT_S = 30.0
STALE_S = 300.0  # ten missed heartbeats: a preempted VM, not a slow one


class RunDirLocked(OSError):
    """Another live run owns the run dir; the message names it."""


def _process_start(pid: int) -> str | None:
    """Start time of a local process (clock ticks since boot, from /proc), to tell a reused pid
    from the owner; None where /proc is not available."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def describe(owner: dict) -> str:
    """'pid 123 on host h, started <time>, heartbeat 4 s ago: python run.py --lr=3e-3'."""
    age = time.time() - float(owner.get("heartbeat", 0))
    return (f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}, "
            f"heartbeat {age:.0f} s ago: {owner.get('command')}")


class RunLock:
    """The lock of one run dir: `acquire` (or `with`), `release`; a heartbeat thread meanwhile."""

    def __init__(self, run_dir: str, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
                 name: str = LOCK_NAME, flag: str = "--output_dir"):
        self.run_dir, self.path, self.flag = run_dir, storage.join(run_dir, name), flag
        self.what = "build" if name == BUILD_LOCK else "run"
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.owner = {"token": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
                      "pid_start": _process_start(os.getpid()),
                      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      "command": shlex.join([os.path.basename(sys.executable), *sys.argv])[:500]}
        self._version = None  # of our lock file, as the storage scheme tells versions apart
        self._made_dir = False
        self._stop = threading.Event()
        self._thread = None
        self.lost = None  # set by the heartbeat if another run took the lock over

    # -- public

    def acquire(self) -> RunLock:
        """Takes the lock (over a stale one, saying so); RunDirLocked if a live run holds it."""
        storage.check_reachable(self.run_dir)  # a dead endpoint or bad credentials: one line, in seconds
        self._made_dir = storage.is_local(self.run_dir) and not os.path.isdir(self.run_dir)
        storage.makedirs(self.run_dir)
        for _ in range(3):  # a lock released or taken over between our attempts: try again
            if self._create():
                break
            current = self._read()
            if current is None:
                continue
            reason = self.stale_reason(current)
            if reason is None:
                raise RunDirLocked(f"{self.flag}={self.run_dir} is in use by another {self.what} ({describe(current)}); "
                                   f"wait for it, or use another {self.flag}. If that {self.what} is dead, {self.path} "
                                   f"is taken over once its heartbeat is {self.stale_s:.0f} s old (or delete it)")
            print(f"Taking over the {self.what} dir from a dead {self.what} ({reason}): {describe(current)}", flush=True)
            self._remove(current)
        else:
            raise RunDirLocked(f"{self.path}: could not take the run-dir lock (other runs keep taking it)")
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stops the heartbeat and removes the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        current = self._read()
        if current is not None and current.get("token") == self.owner["token"]:
            self._remove(current)
        if self._made_dir and not os.listdir(self.run_dir):  # a run that failed its input checks
            os.rmdir(self.run_dir)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def stale_reason(self, owner: dict) -> str | None:
        """Why a lock's owner is dead (None: it may be alive)."""
        if owner.get("host") == self.owner["host"] and isinstance(owner.get("pid"), int):
            pid = owner["pid"]
            if not _pid_alive(pid):
                return f"process {pid} is gone"
            start = _process_start(pid)
            if owner.get("pid_start") and start and start != owner["pid_start"]:
                return f"pid {pid} now belongs to another process"
            return None
        age = time.time() - float(owner.get("heartbeat", 0))
        if age > self.stale_s:
            return f"no heartbeat for {age:.0f} s"
        return None

    # -- storage

    def _content(self) -> bytes:
        return (json.dumps({**self.owner, "heartbeat": time.time()}, sort_keys=True) + "\n").encode()

    def _create(self) -> bool:
        """Creates the lock file if there is none; True if we now own it."""
        version = storage.create_new(self.path, self._content())
        if version is None:
            return False
        self._version = version
        return True

    def _read(self) -> dict | None:
        """The lock's owner, as its file says (with its `_version`), None if there is no lock."""
        try:
            found = storage.read_versioned(self.path)
        except FileNotFoundError:
            return None
        if found is None:
            return None
        data, version = found
        try:
            owner = json.loads(data)
        except ValueError:  # a lock we cannot read: owned by something we cannot judge alive
            owner = {"pid": None, "host": "?", "heartbeat": self._mtime(), "command": "(unreadable lock file)"}
        owner["_version"] = version
        return owner

    def _mtime(self) -> float:
        try:
            return os.path.getmtime(self.path) if storage.is_local(self.path) else 0.0
        except OSError:
            return 0.0

    def _remove(self, owner: dict) -> None:
        """Removes the lock `owner` was read from, and nothing newer."""
        storage.delete_at(self.path, owner["_version"])

    # -- heartbeat

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._refresh()
            except Exception as err:  # a failed heartbeat must not kill the run: retried next time
                print(f"WARNING: {self.path}: heartbeat not written ({err})", file=sys.stderr, flush=True)

    def _refresh(self) -> None:
        """Rewrites the lock with a new heartbeat, only while it is still ours."""
        version = storage.replace_at(self.path, self._content(), self._version)
        if version is None:
            self._lost()
            return
        self._version = version

    def _lost(self) -> None:
        self.lost = f"{self.path}: another run took over this run dir's lock"
        print(f"WARNING: {self.lost}", file=sys.stderr, flush=True)
        self._stop.set()

    def check(self) -> None:
        """Raises RunDirLocked if another run has taken the lock over (call between folds)."""
        if self.lost:
            raise RunDirLocked(self.lost)
