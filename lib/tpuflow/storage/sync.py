"""Upload or download a directory tree to or from Cloud Storage: parallel, verified, resumable.

`sync(src, dst)` copies every file of `src` that `dst` lacks or holds with another size or
checksum (CRC32C, MD5 as fallback), in parallel threads. Every transfer is verified by
checksum (see `storage.upload_file` / `storage.download_file`) and retried a few times on a
mismatch before a `ChecksumMismatchError` names the object. Files named `manifest.json` go only
after every other file has succeeded, so a reader never sees a dataset manifest before its
shards. Big uploads use resumable sessions whose URL is kept in a small state file, so a second
`sync` after a crash or preemption continues where the first stopped instead of starting over.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import json
import os
import sys
import threading
import time

from tpuflow import storage
from tpuflow.storage import MANIFEST

DEFAULT_STATE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "tpuflow", "gcs_sync")
_MiB = 1 << 20
_RESUMABLE_QUANTUM = 256 * 1024  # the service wants chunks in multiples of 256 KiB


class SyncError(OSError):
    """Some transfers of a sync failed; the message lists each failed object and why."""


class TransientUploadError(OSError):
    """A resumable-upload request hit a network error or a retryable status (408, 429, 5xx)."""


@dataclasses.dataclass(frozen=True)
class Transfer:
    """One planned copy: the file's relative name, size and why it is copied."""
    name: str
    size: int
    reason: str  # "new", "size differs" or "checksum differs"


@dataclasses.dataclass
class SyncReport:
    """What a sync did (or, with dry_run, would do)."""
    src: str
    dst: str
    direction: str  # "upload" or "download"
    planned: list[Transfer]
    skipped: list[str]
    outside: list[str] = dataclasses.field(default_factory=list)  # symlinks out of the source: not copied
    transferred: list[str] = dataclasses.field(default_factory=list)
    resumed: list[str] = dataclasses.field(default_factory=list)
    bytes_transferred: int = 0
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would copy" if self.dry_run else "copied"
        done = self.planned if self.dry_run else self.transferred
        size = sum(t.size for t in self.planned) if self.dry_run else self.bytes_transferred
        text = (f"{self.direction} {self.src} -> {self.dst}: {verb} {len(done)} files "
                f"({size / _MiB:.1f} MiB), {len(self.skipped)} already up to date")
        if self.resumed:
            text += f", {len(self.resumed)} resumed"
        return text


class _Progress:
    """Progress on stderr: on a terminal one line redrawn at most ten times a second; in a log a
    plain line every ten seconds and at the end."""

    def __init__(self, total_files: int, total_bytes: int, enabled: bool):
        self.total_files, self.total_bytes, self.enabled = total_files, total_bytes, enabled
        self.tty = sys.stderr.isatty()
        self.files = self.bytes = 0
        self._start = self._last = time.monotonic()
        self._lock = threading.Lock()

    def add(self, nbytes: int = 0, files: int = 0) -> None:
        with self._lock:
            self.bytes += nbytes
            self.files += files
            now = time.monotonic()
            every = 0.1 if self.tty else 10.0
            if self.enabled and (now - self._last > every or self.files == self.total_files):
                self._last = now
                rate = self.bytes / _MiB / max(now - self._start, 1e-6)
                sys.stderr.write(f"{'' if self.tty else 'synced '}{self.files}/{self.total_files} files  "
                                 f"{self.bytes / _MiB:.1f}/{self.total_bytes / _MiB:.1f} MiB  "
                                 f"{rate:.1f} MiB/s " + ("\r" if self.tty else "\n"))
                sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")


# ---------------------------------------------------------------------------------------------
# Resumable uploads that survive the process


class ResumableUpload:
    """Upload of one big local file to one object through a resumable session.

    The session URL is saved in a state file (in `state_dir`, mode 0600, never printed: the URL
    alone lets anyone write that object until the session expires) together with the file's
    size, mtime and CRC32C. `start()` reuses a saved session when the file is unchanged and asks
    the service how many bytes it already holds; `send_chunk()` then sends the rest, one chunk
    per call. The session carries the CRC32C, so the service refuses to complete an object
    whose bytes differ, and the object only becomes visible when the last chunk is in.
    """

    def __init__(self, local: str, dst: str, *, crc32c: str, chunk_size: int, state_dir: str):
        if chunk_size <= 0 or chunk_size % _RESUMABLE_QUANTUM:
            raise ValueError(f"chunk_size must be a positive multiple of 256 KiB, got {chunk_size}")
        self.local, self.dst, self.crc32c, self.chunk_size = local, dst, crc32c, chunk_size
        self.size = os.path.getsize(local)
        self.offset = 0  # bytes the service has confirmed
        self.resumed = False
        self.result: storage.FileInfo | None = None
        key = hashlib.sha256(f"{os.path.abspath(local)}\n{dst}".encode()).hexdigest()[:32]
        self.state_path = os.path.join(state_dir, key + ".json")
        self._url: str | None = None
        import requests  # a dependency of google-cloud-storage

        # The session URL authenticates the upload by itself, so plain requests suffice.
        self._http = requests.Session()

    def close(self) -> None:
        """Releases the HTTP connection pool (a long sync uploads many big files)."""
        self._http.close()

    def _fingerprint(self) -> dict:
        return {"object": self.dst, "size": self.size, "crc32c": self.crc32c,
                "mtime_ns": os.stat(self.local).st_mtime_ns}

    def start(self) -> None:
        """Resumes the saved session for this file if it is still valid, else opens a new one."""
        saved = self._load_state()
        if saved is not None:
            self._url = saved
            self._query_offset()
            if self._url is not None:
                self.resumed = self.offset > 0 or self.result is not None
                return
        self._url = storage.filesystem(self.dst).resumable_session(self.dst, self.size, self.crc32c)
        self.offset = 0
        self._save_state()

    @property
    def done(self) -> bool:
        return self.result is not None

    def send_chunk(self) -> int:
        """Sends the next chunk; returns how many new bytes the service confirmed."""
        end = min(self.offset + self.chunk_size, self.size)
        with open(self.local, "rb") as f:
            f.seek(self.offset)
            data = f.read(end - self.offset)
        headers = {"Content-Range": f"bytes {self.offset}-{end - 1}/{self.size}"
                   if end > self.offset else f"bytes */{self.size}"}
        before = self.offset
        self._handle(self._put(data, headers, timeout=(30, 600)))
        return self.offset - before

    def _put(self, data: bytes | None, headers: dict, timeout: tuple[int, int]):
        import requests

        try:
            return self._http.put(self._url, data=data, headers=headers, timeout=timeout)
        except requests.RequestException as e:
            # Not chained and not quoted: requests' messages carry the session URL.
            raise TransientUploadError(errno.EIO, f"network error during resumable upload "
                                       f"({type(e).__name__})", self.dst) from None

    def _query_offset(self) -> None:
        """Asks the service how much of the session it holds (or drops an expired session)."""
        response = self._put(None, {"Content-Range": f"bytes */{self.size}"}, timeout=(30, 60))
        if response.status_code in (404, 410):  # expired or unknown session: start afresh
            self._drop_state()
            self._url = None
            return
        self._handle(response)

    def _handle(self, response) -> None:
        if response.status_code == 308:  # incomplete: Range says what the service holds
            held = response.headers.get("Range")
            self.offset = int(held.rsplit("-", 1)[1]) + 1 if held else 0
            return
        if response.status_code in (200, 201):
            meta = response.json()
            self._drop_state()
            self.offset = self.size
            self.result = storage.FileInfo(meta["name"], int(meta["size"]), meta.get("crc32c"),
                                           meta.get("md5Hash"))
            if self.result.crc32c != self.crc32c:
                raise storage.ChecksumMismatchError(
                    errno.EIO, f"uploaded object has CRC32C {self.result.crc32c}, local file "
                    f"{self.local} has {self.crc32c}", self.dst)
            return
        message = response.text[:300]
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise TransientUploadError(errno.EAGAIN, f"HTTP {response.status_code}: {message}",
                                       self.dst)  # the session stays saved for a retry
        self._drop_state()
        if response.status_code == 400 and "crc32c" in message.lower():
            raise storage.ChecksumMismatchError(
                errno.EIO, f"the service refused the upload of {self.local}: {message}", self.dst)
        if response.status_code in (401, 403):
            raise PermissionError(errno.EACCES, f"permission denied to upload "
                                  f"({response.status_code})", self.dst)
        raise OSError(errno.EIO, f"resumable upload failed with HTTP {response.status_code}: "
                      f"{message}", self.dst)

    def _load_state(self) -> str | None:
        try:
            with open(self.state_path) as f:
                state = json.load(f)
        except (OSError, ValueError):
            return None
        if {k: state.get(k) for k in self._fingerprint()} != self._fingerprint():
            self._drop_state()  # the file changed since: its old session is useless
            return None
        return state["url"]

    def _save_state(self) -> None:
        os.makedirs(os.path.dirname(self.state_path), mode=0o700, exist_ok=True)
        with storage.atomic_path(self.state_path) as tmp:
            os.chmod(tmp, 0o600)
            with open(tmp, "w") as f:
                json.dump({**self._fingerprint(), "url": self._url}, f)

    def _drop_state(self) -> None:
        if os.path.exists(self.state_path):
            os.remove(self.state_path)


# ---------------------------------------------------------------------------------------------
# Planning and running a sync


def _plan(src_files, dst_files, local_root, direction, workers) -> tuple[list[Transfer], list[str]]:
    """Which files to copy and which already match (hashing local files in parallel)."""
    def decide(name: str) -> Transfer | None:
        source = src_files[name]
        target = dst_files.get(name)
        if target is None:
            return Transfer(name, source.size, "new")
        if target.size != source.size:
            return Transfer(name, source.size, "size differs")
        remote = target if direction == "upload" else source
        if storage.local_matches(os.path.join(local_root, name), remote):
            return None
        return Transfer(name, source.size, "checksum differs")

    names = sorted(src_files)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        decisions = list(pool.map(decide, names))
    planned = [d for d in decisions if d is not None]
    skipped = [n for n, d in zip(names, decisions) if d is None]
    # Manifests last: a reader that finds one may trust every shard it lists to be there.
    planned.sort(key=lambda t: (_basename(t.name) == MANIFEST, t.name))
    return planned, skipped


def _outside(root: str, files: dict) -> list[str]:
    """The names of `files` (under the local `root`) that symlinks lead out of `root`."""
    real_root = os.path.realpath(root).rstrip(os.sep) + os.sep
    return [name for name in sorted(files)
            if not os.path.realpath(os.path.join(root, *name.split("/"))).startswith(real_root)]


def _basename(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def sync(src: str, dst: str, *, workers: int = 8, dry_run: bool = False,
         progress: bool | None = None, retries: int = 3, resumable_threshold: int = 32 * _MiB,
         chunk_size: int = 16 * _MiB, state_dir: str = DEFAULT_STATE_DIR,
         timeout_s: float = storage.DEFAULT_TIMEOUT_S, log=None) -> SyncReport:
    """Makes `dst` hold every file of `src`; exactly one of them must be remote (`gs://bucket/prefix`).

    Files already present with the same size and checksum are skipped, so a second run copies
    nothing. Files `src` lacks are left alone at `dst` (nothing is deleted). Uploads of files of
    at least `resumable_threshold` bytes go through `ResumableUpload` in `chunk_size` pieces,
    resuming a session saved in `state_dir` by an earlier, interrupted sync. `progress=None`
    shows progress on stderr (see `_Progress`), `False` none. Raises `SyncError` listing every
    object that failed (after `retries` attempts each); manifests are then not copied.

    Before anything else the bucket is probed (`storage.check_reachable`): a dead or silent
    endpoint, bad credentials or a missing bucket fail within `timeout_s` seconds. An upload never
    follows a symlink out of `src`: such a file is left out, with one line naming it (`log`,
    default stderr), and listed in the report's `outside`.
    """
    if is_remote_src := not storage.is_local(src):
        if not storage.is_local(dst):
            raise ValueError(f"one side must be a local directory, got two remote paths: "
                             f"{src!r} -> {dst!r}")
    elif storage.is_local(dst):
        raise ValueError(f"one side must be a remote path (gs://bucket/prefix), got two "
                         f"local paths: {src!r} -> {dst!r}")
    if workers < 1 or retries < 1:
        raise ValueError(f"workers and retries must be >= 1, got {workers} and {retries}")
    if not timeout_s > 0:
        raise ValueError(f"--timeout_s={timeout_s}: expected a number of seconds > 0")
    direction = "download" if is_remote_src else "upload"
    local_root = dst if is_remote_src else src
    remote_root = src if is_remote_src else dst
    storage.bucket(remote_root)  # validates the bucket part
    if not is_remote_src and not os.path.isdir(src):
        raise FileNotFoundError(errno.ENOENT, "local directory to upload does not exist", src)
    if is_remote_src and os.path.exists(dst) and not os.path.isdir(dst):
        raise NotADirectoryError(errno.ENOTDIR, "download target is not a directory", dst)
    storage.check_reachable(remote_root, timeout_s)

    src_files = storage.list_files(src)
    outside = [] if is_remote_src else _outside(src, src_files)
    for name in outside:
        full = os.path.join(src, *name.split("/"))
        line = f"skipped {full}: a symlink to {os.path.realpath(full)}, outside --src"
        (log or (lambda text: print(text, file=sys.stderr, flush=True)))(line)
        del src_files[name]
    dst_files = storage.list_files(dst)
    if is_remote_src and not src_files:
        raise FileNotFoundError(errno.ENOENT, "no objects under this prefix", src)
    for name in src_files if is_remote_src else ():
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"refusing to download an object whose name would land outside "
                             f"{dst!r}: {storage.join(src, name)!r}")
    planned, skipped = _plan(src_files, dst_files, local_root, direction, workers)
    report = SyncReport(src, dst, direction, planned, skipped, outside, dry_run=dry_run)
    if dry_run or not planned:
        return report

    bar = _Progress(len(planned), sum(t.size for t in planned), True if progress is None else progress)
    lock = threading.Lock()

    def run(t: Transfer) -> None:
        local = os.path.join(local_root, *t.name.split("/"))
        remote = storage.join(remote_root, t.name)
        expected = src_files.get(t.name) if direction == "download" else None
        for attempt in range(1, retries + 1):
            try:
                if direction == "download":
                    storage.download_file(remote, local, expected)
                    sent, resumed = t.size, False
                else:
                    sent, resumed = _upload(local, remote, t, resumable_threshold, chunk_size,
                                            state_dir, retries, bar)
                break
            except storage.ChecksumMismatchError:
                if attempt == retries:
                    raise
                expected = None  # the object may have been replaced meanwhile: re-read it
        bar.add(sent if direction == "download" or t.size < resumable_threshold else 0, files=1)
        with lock:
            report.transferred.append(t.name)
            report.bytes_transferred += sent
            if resumed:
                report.resumed.append(t.name)

    def run_all(batch: list[Transfer]) -> None:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(run, t): t for t in batch}
            failed = []
            for future in concurrent.futures.as_completed(futures):
                if future.exception() is not None:
                    failed.append((futures[future], future.exception()))
        if failed:
            bar.close()
            failed.sort(key=lambda f: f[0].name)
            lines = "\n".join(f"  {storage.join(remote_root, t.name)}: {e}" for t, e in failed)
            held_back = [t.name for t in planned if _basename(t.name) == MANIFEST
                         and t not in batch]
            note = f" (not copied, so readers do not trust it: {held_back})" if held_back else ""
            raise SyncError(errno.EIO, f"{len(failed)} of {len(planned)} transfers failed"
                            f"{note}:\n{lines}") from failed[0][1]

    run_all([t for t in planned if _basename(t.name) != MANIFEST])
    run_all([t for t in planned if _basename(t.name) == MANIFEST])
    bar.close()
    report.transferred.sort()
    report.resumed.sort()
    return report


def _upload(local: str, remote: str, t: Transfer, threshold: int, chunk_size: int,
            state_dir: str, retries: int, bar: _Progress) -> tuple[int, bool]:
    """Uploads one file; returns (bytes sent, whether an earlier session was resumed).

    A resumable upload that hits a network error or a transient HTTP status asks the service
    where it stands and goes on from there, up to `retries` times.
    """
    crc32c = storage.file_crc32c(local)  # fresh: the file may have changed since planning
    if t.size < threshold or not storage.filesystem(remote).resumable:
        storage.upload_file(local, remote, crc32c)
        return t.size, False
    upload = ResumableUpload(local, remote, crc32c=crc32c, chunk_size=chunk_size,
                             state_dir=state_dir)
    resumed: bool | None = None  # known after the first successful start()
    sent = failures = 0
    must_start = True
    try:
        while must_start or not upload.done:
            try:
                if must_start:  # (re)loads the saved session and asks how many bytes it holds
                    upload.start()
                    resumed = upload.resumed if resumed is None else resumed
                    must_start = False
                    continue
                confirmed = upload.send_chunk()
            except TransientUploadError:
                failures += 1
                if failures >= retries:
                    raise
                time.sleep(min(2.0 ** failures, 30.0))
                must_start = True
                continue
            sent += confirmed
            bar.add(confirmed)
    finally:
        upload.close()
    return sent, bool(resumed)
