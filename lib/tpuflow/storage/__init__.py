"""Paths and file I/O for local disks and Cloud Storage (`gs://bucket/prefix`): the one place
outputs are written.

Local writes go to a temporary name first and are renamed into place, so a crash never leaves
a half-written shard, prediction or submission where a complete one is expected. Cloud Storage
objects need no such dance: an object becomes visible only when its upload has completed, and a
failed upload leaves the previous object (or none), so every `gs://` write here is atomic too.
A Cloud Storage "directory" is only a name prefix: it exists while some object lies under it.

`google-cloud-storage` is imported only when a `gs://` path is first used, and TensorFlow never
is: tools such as the ensemble run without it. (Inside `tf.data`, TFRecords are read through
TensorFlow's own `gs://` file system, which is what TPUs need; this module is for the rest.)

Directory sync (upload/download a tree, verified and resumable) lives in `tpuflow.storage.sync`,
which imports this module (never the other way round).

The `tpuflow.storage` package, the bottom layer: these paths and file I/O, `sync`
(directory trees to and from Cloud Storage), `lock` (one writer per run dir) and
`tables` (the project's tables read with their checks). Imports no other tpuflow
package and no TensorFlow.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import fnmatch
import glob as _glob
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import tempfile
import threading
from typing import Iterator

import numpy as np

# A dataset directory's index (kind, counts, checksums): written last, so that a directory holding
# one is complete; `sync` copies it after every other file for the same reason.
MANIFEST = "manifest.json"

_GS = "gs://"
_WILDCARD = re.compile(r"[*?\[]")
_READ_BLOCK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)
_TMP_PREFIX = ".tmp-"  # atomic_path's temporaries: never listed as files of a tree
TMP_PREFIX = _TMP_PREFIX  # for writers that clean up what a killed run left


class ChecksumMismatchError(OSError):
    """A transfer's bytes did not match the checksum recorded for them (after all retries)."""


class BucketNotFoundError(FileNotFoundError):
    """The bucket of a `gs://` path does not exist."""


# ---------------------------------------------------------------------------------------------
# Paths


def is_gcs(path: str) -> bool:
    """True for a Cloud Storage path (`gs://bucket/...`)."""
    return str(path).startswith(_GS)


def split_gcs(path: str) -> tuple[str, str]:
    """`(bucket, object_name)` of a `gs://bucket/name` path (the name may be empty)."""
    path = str(path)
    if not is_gcs(path):
        raise ValueError(f"not a Cloud Storage path (gs://bucket/...): {path!r}")
    bucket, _, name = path[len(_GS):].partition("/")
    if not bucket or _WILDCARD.search(bucket):
        raise ValueError(f"Cloud Storage path needs a plain bucket name: {path!r}")
    return bucket, name


def join(*parts: str) -> str:
    """Joins path parts; works for local paths and `gs://` URLs alike."""
    parts = tuple(str(p) for p in parts)
    if parts and is_gcs(parts[0]):
        return posixpath.join(*parts)
    return os.path.join(*parts)


# ---------------------------------------------------------------------------------------------
# Cloud Storage client and error translation

_client_lock = threading.Lock()
_clients: dict[str, object] = {}


def client():
    """The shared `google.cloud.storage.Client`, made on first use.

    Credentials come from the standard Google environment (Application Default Credentials,
    or anonymous ones when `STORAGE_EMULATOR_HOST` points at an emulator); this module never
    prints or logs them. One client per emulator host, so a test that starts an emulator gets
    a client that talks to it. The client is shared by the sync worker threads.
    """
    key = os.environ.get("STORAGE_EMULATOR_HOST", "")
    with _client_lock:
        if key not in _clients:
            from google.cloud import storage as gcs  # lazy: local use never imports it

            _clients[key] = gcs.Client()
        return _clients[key]


def _bucket(name: str):
    return client().bucket(name)


def _bucket_exists(name: str) -> bool:
    from google.api_core import exceptions as gexc

    try:
        return _bucket(name).exists()
    except gexc.Forbidden:  # may read objects without bucket metadata rights: assume it exists
        return True


@contextlib.contextmanager
def gcs_errors(path: str, action: str) -> Iterator[None]:
    """Turns Cloud Storage API errors into built-in errors whose message names `path`.

    NotFound becomes `BucketNotFoundError` (naming the bucket) or `FileNotFoundError` (naming
    the object); Forbidden/Unauthorized become `PermissionError`; a download whose bytes fail
    the client's checksum check becomes `ChecksumMismatchError`. Callers can then treat local
    and remote paths the same way.
    """
    from google.api_core import exceptions as gexc
    from google.cloud.storage import exceptions as sexc

    try:
        yield
    except sexc.DataCorruption as e:
        raise ChecksumMismatchError(errno.EIO, f"bytes received do not match the object's "
                                    f"checksum (while trying to {action})", path) from e
    except gexc.NotFound as e:
        bucket, _ = split_gcs(path)
        if not _bucket_exists(bucket):
            raise BucketNotFoundError(
                errno.ENOENT, f"Cloud Storage bucket {bucket!r} does not exist (while trying to "
                f"{action})", path) from e
        raise FileNotFoundError(errno.ENOENT, f"no such Cloud Storage object (while trying to "
                                f"{action})", path) from e
    except (gexc.Forbidden, gexc.Unauthorized) as e:
        raise PermissionError(
            errno.EACCES, f"permission denied to {action} ({e.code} {e.message}); check the "
            "account's IAM roles on the bucket or run `gcloud auth application-default login`",
            path) from e


DEFAULT_TIMEOUT_S = 30.0  # how long a first request may take before Cloud Storage counts as unreachable


def endpoint() -> str:
    """The Cloud Storage endpoint the client talks to (an emulator's, when one is set)."""
    return os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


def _cause(err: BaseException, innermost: bool = True) -> str:
    """A connection error's innermost cause (or an error itself), in a few words."""
    while innermost and (err.__cause__ is not None or err.__context__ is not None):
        err = err.__cause__ or err.__context__
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def check_reachable(path: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Fails within `timeout_s` seconds, with one error naming the endpoint and the bucket, when
    the bucket of `path` cannot be reached: a dead or silent endpoint, missing or malformed
    credentials, or no such bucket. Call it before long work on a `gs://` path: the client's own
    retries would otherwise spend minutes in silence before a long traceback.

    The probe (one bucket lookup, not retried) runs in a daemon thread that is abandoned at the
    deadline, so nothing in the client (token refresh, DNS, a socket that never answers) can
    hang the caller.
    """
    bucket, _ = split_gcs(path)
    answer: dict = {}

    def probe():
        from google.api_core import exceptions as gexc

        try:
            answer["exists"] = _bucket(bucket).exists(timeout=timeout_s, retry=None)
        except gexc.Forbidden:  # may read objects without bucket metadata rights: it answered
            answer["exists"] = True
        except BaseException as err:  # handed to the caller below
            answer["error"] = err

    thread = threading.Thread(target=probe, name="gcs-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    where = f"Cloud Storage at {endpoint()} (bucket {bucket!r})"
    if thread.is_alive():
        raise TimeoutError(errno.ETIMEDOUT, f"{where} did not answer within {timeout_s:g} s "
                           "(--timeout_s); check the network, the endpoint and the credentials", path)
    err = answer.get("error")
    if err is None and not answer["exists"]:
        raise BucketNotFoundError(errno.ENOENT, f"Cloud Storage bucket {bucket!r} does not exist "
                                  f"(at {endpoint()})", path)
    if err is None:
        return
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc

    if isinstance(err, (auth_exc.DefaultCredentialsError, auth_exc.RefreshError,
                        auth_exc.MalformedError, gexc.Unauthorized)):
        raise PermissionError(errno.EACCES, f"no usable credentials for {where} ({_cause(err, innermost=False)}); "
                              "run `gcloud auth application-default login` or fix "
                              "GOOGLE_APPLICATION_CREDENTIALS", path) from err
    if isinstance(err, (OSError, auth_exc.TransportError, gexc.GoogleAPIError)):  # requests' errors are OSErrors
        raise ConnectionError(errno.ECONNREFUSED, f"{where} cannot be reached ({_cause(err)})", path) from err
    raise err


def _blobs(bucket: str, prefix: str, path: str):
    """All objects whose name starts with `prefix`, as a list (errors name `path`)."""
    with gcs_errors(path, "list objects"):
        return list(client().list_blobs(bucket, prefix=prefix))


def _has_objects_under(bucket: str, prefix: str, path: str) -> bool:
    with gcs_errors(path, "list objects"):
        return any(True for _ in client().list_blobs(bucket, prefix=prefix, max_results=1))


def _dir_prefix(name: str) -> str:
    """The object-name prefix of a "directory" (`''` for the bucket root)."""
    name = name.strip("/")
    return name + "/" if name else ""


# ---------------------------------------------------------------------------------------------
# Queries


def exists(path: str) -> bool:
    """True for an existing file or directory; on Cloud Storage, an object or a non-empty prefix.

    A `gs://` path in a bucket that does not exist raises `BucketNotFoundError` (most likely a
    typo, better reported than answered with False).
    """
    if not is_gcs(path):
        return os.path.exists(path)
    bucket, name = split_gcs(path)
    if not name.strip("/"):
        return _bucket_exists(bucket)
    if not name.endswith("/"):
        with gcs_errors(path, "look up the object"):
            if _bucket(bucket).blob(name).exists():
                return True
    return _has_objects_under(bucket, _dir_prefix(name), path)


def isdir(path: str) -> bool:
    """True for a directory; on Cloud Storage, a prefix with objects under it (or a bucket)."""
    if not is_gcs(path):
        return os.path.isdir(path)
    bucket, name = split_gcs(path)
    if not name.strip("/"):
        return _bucket_exists(bucket)
    return _has_objects_under(bucket, _dir_prefix(name), path)


def makedirs(path: str) -> None:
    """Creates a local directory tree; a no-op on Cloud Storage, where prefixes need no creating."""
    if not is_gcs(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names (not paths) of the entries in a directory, sorted; subdirectories without a slash."""
    if not is_gcs(path):
        return sorted(os.listdir(path))
    bucket, name = split_gcs(path)
    prefix = _dir_prefix(name)
    with gcs_errors(path, "list the directory"):
        pages = client().list_blobs(bucket, prefix=prefix, delimiter="/")
        names = {b.name[len(prefix):] for b in pages}
        names |= {p[len(prefix):].rstrip("/") for p in pages.prefixes}
    names.discard("")  # a "folder placeholder" object named like the prefix itself
    if not names and prefix:
        raise FileNotFoundError(errno.ENOENT, "no Cloud Storage objects under this prefix", path)
    return sorted(names)


def glob(pattern: str) -> list[str]:
    """Paths matching a shell pattern (`*`, `?`, `[..]`, none crossing a `/`), sorted.

    On Cloud Storage the objects under the literal part of the pattern are listed and matched
    component by component, so `gs://b/data/fold.[0-3].tfrecord*` and `gs://b/runs/*/preds`
    both work; "directories" (prefixes) match like local ones do.
    """
    if not is_gcs(pattern):
        return sorted(_glob.glob(pattern))
    bucket, name = split_gcs(pattern)
    wildcard = _WILDCARD.search(name)
    if wildcard is None:
        return [pattern] if exists(pattern) else []
    parts = name.split("/")
    found = set()
    for blob in _blobs(bucket, name[:wildcard.start()], pattern):
        head = blob.name.split("/")[:len(parts)]
        if len(head) == len(parts) and head[-1] and all(
                fnmatch.fnmatchcase(h, p) for h, p in zip(head, parts)):
            found.add("/".join(head))
    return sorted(f"{_GS}{bucket}/{n}" for n in found)


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """One file of a tree: its path relative to the tree root ('/'-separated), size and, for
    Cloud Storage objects, the checksums the service recorded (base64, as the API gives them)."""
    name: str
    size: int
    crc32c: str | None = None
    md5: str | None = None


def list_files(root: str) -> dict[str, FileInfo]:
    """Every file under a directory (local) or prefix (`gs://`), keyed by relative name.

    A missing local directory or an empty prefix gives an empty dict; a missing bucket raises.
    Temporaries of `atomic_path` left by a killed writer are not files of the tree.
    """
    if not is_gcs(root):
        files = {}
        for directory, _, names in os.walk(root):
            for n in names:
                if n.startswith(_TMP_PREFIX):
                    continue
                full = os.path.join(directory, n)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                files[rel] = FileInfo(rel, os.path.getsize(full))
        return files
    bucket, name = split_gcs(root)
    prefix = _dir_prefix(name)
    return {b.name[len(prefix):]: FileInfo(b.name[len(prefix):], int(b.size), b.crc32c, b.md5_hash)
            for b in _blobs(bucket, prefix, root) if not b.name.endswith("/")}


# ---------------------------------------------------------------------------------------------
# Checksums (base64 strings, the form Cloud Storage reports)


def file_digest(path: str, digest):
    """Feeds a file's bytes (local, in blocks, or gs://) into `digest` (anything with `update`:
    hashlib's, google_crc32c.Checksum) and returns it."""
    if is_gcs(path):
        digest.update(read_bytes(path))
        return digest
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_READ_BLOCK), b""):
            digest.update(block)
    return digest


def file_crc32c(path: str) -> str:
    """CRC32C of a local file, base64-encoded like Cloud Storage's `crc32c` field."""
    import google_crc32c  # installed with google-cloud-storage

    return base64.b64encode(file_digest(path, google_crc32c.Checksum()).digest()).decode("ascii")


def file_sha256(path: str) -> str:
    """sha256 of a file's bytes (hex), as `sha256sum` prints it: the builder's checksums."""
    return file_digest(path, hashlib.sha256()).hexdigest()


def file_md5(path: str) -> str:
    """MD5 of a local file, base64-encoded like Cloud Storage's `md5Hash` field."""
    return base64.b64encode(file_digest(path, hashlib.md5()).digest()).decode("ascii")


def local_matches(path: str, remote: FileInfo) -> bool:
    """True if a local file has the remote object's size and checksum (CRC32C, else MD5).

    Every Cloud Storage object has a CRC32C; MD5 is the fallback for objects without one.
    """
    if os.path.getsize(path) != remote.size:
        return False
    if remote.crc32c:
        return file_crc32c(path) == remote.crc32c
    if remote.md5:
        return file_md5(path) == remote.md5
    return True  # nothing recorded to compare beyond the size


# ---------------------------------------------------------------------------------------------
# Removal


def remove(path: str) -> None:
    """Removes a file or a directory tree (on Cloud Storage, an object and everything under its
    prefix); a missing path is not an error."""
    if not is_gcs(path):
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        return
    from google.api_core import exceptions as gexc

    bucket, name = split_gcs(path)
    if not name.strip("/"):
        raise ValueError(f"refusing to remove a whole bucket: {path!r}")
    targets = _blobs(bucket, _dir_prefix(name), path)
    if not name.endswith("/"):
        targets.append(_bucket(bucket).blob(name))
    for blob in targets:
        with gcs_errors(f"{_GS}{bucket}/{blob.name}", "delete the object"):
            try:
                blob.delete()
            except gexc.NotFound:
                pass


# ---------------------------------------------------------------------------------------------
# Reading


def read_bytes(path: str) -> bytes:
    """The whole content of a file or object (downloads are checked against the object's CRC32C)."""
    if not is_gcs(path):
        with open(path, "rb") as f:
            return f.read()
    bucket, name = split_gcs(path)
    with gcs_errors(path, "read the object"):
        return _bucket(bucket).blob(name).download_as_bytes(checksum="crc32c")


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str):
    return json.loads(read_text(path))


def load_npy(path: str) -> np.ndarray:
    """A plain .npy array; a pickled object array, a text file or a damaged one is an error naming
    `path` (pickles are never loaded: they run code)."""
    try:
        return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)
    except (ValueError, EOFError) as err:
        raise ValueError(f"{path}: not a plain .npy array ({' '.join(str(err).split()) or type(err).__name__}); "
                         "write it with numpy.save(path, array, allow_pickle=False)") from err


# ---------------------------------------------------------------------------------------------
# Writing


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary local file path; on success it becomes `path`, on error it vanishes.

    Use it for writers that want a filename (np.save, DataFrame.to_csv, savefig, Keras). The
    temporary name ends with the target's base name, so writers that check or add an extension
    (Keras `.weights.h5`, np.save `.npy`) keep the exact name. For a `gs://` target the file is
    uploaded (atomically, see the module docstring) and then deleted.
    """
    base = os.path.basename(str(path).rstrip("/"))
    if is_gcs(path):
        split_gcs(path)  # fail on a malformed path before the caller does any work
        fd, tmp = tempfile.mkstemp(prefix="tpuflow-", suffix="-" + base)
        os.close(fd)
        try:
            yield tmp
            upload_file(tmp, path)
        finally:
            os.remove(tmp)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix="-" + base, dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual mode
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:
        if err.filename or not err.errno:
            raise
        # e.g. a full disk: the bare "[Errno 28] No space left on device" names no file
        raise type(err)(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_RECORD_ROOM = 1 << 20  # bytes a checkpoint leaves free: a full disk still gets its `failed` record


class _WeightsImage(io.BytesIO):
    """An in-memory `.weights.h5` file: Keras writes HDF5 into an `io.BytesIO` (its H5IOStore
    takes one) once the name passes `save_weights`' suffix check."""

    def __str__(self) -> str:
        return "in-memory.weights.h5"


def save_weights(model, path: str) -> None:
    """`model.save_weights(path)` (a Keras model), atomically, to a local or `gs://` path.

    HDF5 writes into memory and the bytes go to disk as any other file (`write_bytes`): HDF5
    left to write a file itself crashes the whole process (SIGSEGV, after screens of h5py
    tracebacks) when a write fails half-way (a full disk, a file size limit); here such a
    failure is one error naming the path.
    """
    image = _WeightsImage()
    model.save_weights(image)
    data = image.getvalue()
    if not is_gcs(path):  # leave room for the small files that record the failure (record.json)
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        stat = os.statvfs(directory)
        if stat.f_bavail * stat.f_frsize < len(data) + _RECORD_ROOM:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({stat.f_bavail * stat.f_frsize} bytes "
                          f"free, {len(data)} needed for the weights and {_RECORD_ROOM} kept for the run's "
                          "record)", str(path))
    write_bytes(path, data)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """Yields a local filename holding `path`'s bytes: the path itself when local, a downloaded
    (checksum-verified) temporary copy for `gs://`. For readers that need a real file (h5py)."""
    if not is_gcs(path):
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix="tpuflow-", suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        download_file(path, tmp)
        yield tmp
    finally:
        os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Writes bytes atomically (locally: temporary name, then rename)."""
    if is_gcs(path):
        bucket, name = split_gcs(path)
        with gcs_errors(path, "write the object"):
            # checksum="crc32c": the service rejects the upload if the bytes arrive altered.
            _bucket(bucket).blob(name).upload_from_string(data, checksum="crc32c")
        return
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_npy(path: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Verified single-file transfers (used by `copy` and by `storage.sync`)


def upload_file(local: str, dst: str, crc32c: str | None = None) -> FileInfo:
    """Uploads one local file to a `gs://` object and verifies it by CRC32C.

    The checksum goes with the upload, so the service refuses altered bytes (no corrupt object
    ever becomes visible); the checksum the service then reports is compared once more.
    """
    from google.api_core import exceptions as gexc

    bucket, name = split_gcs(dst)
    if not os.path.isfile(local):
        raise FileNotFoundError(errno.ENOENT, "no such local file to upload", local)
    crc32c = crc32c or file_crc32c(local)
    blob = _bucket(bucket).blob(name)
    blob.crc32c = crc32c
    with gcs_errors(dst, "upload the object"):
        try:
            blob.upload_from_filename(local, checksum=None)
        except gexc.BadRequest as e:
            if "crc32c" in str(e).lower():
                raise ChecksumMismatchError(errno.EIO, f"the service refused the upload of "
                                            f"{local}: {e.message}", dst) from e
            raise
    if blob.crc32c != crc32c:
        raise ChecksumMismatchError(errno.EIO, f"uploaded object has CRC32C {blob.crc32c}, "
                                    f"local file {local} has {crc32c}", dst)
    return FileInfo(name, int(blob.size), blob.crc32c, blob.md5_hash)


def download_file(src: str, local: str, expected: FileInfo | None = None) -> FileInfo:
    """Downloads one `gs://` object to a local file, verified before it is renamed into place.

    `expected` (from a listing) pins the checksum to compare with; by default the object's
    current metadata is used. On a mismatch no file is left at `local`.
    """
    bucket, name = split_gcs(src)
    with gcs_errors(src, "download the object"):
        if expected is None:
            blob = _bucket(bucket).get_blob(name)
            if blob is None:
                raise FileNotFoundError(errno.ENOENT, "no such Cloud Storage object", src)
            expected = FileInfo(name, int(blob.size), blob.crc32c, blob.md5_hash)
        with atomic_path(local) as tmp:
            # Checked here, against the listing, rather than by the client, so the bytes that
            # land are compared with exactly the checksum the skip decision used.
            _bucket(bucket).blob(name).download_to_filename(tmp, checksum=None)
            if not local_matches(tmp, expected):
                raise ChecksumMismatchError(
                    errno.EIO, f"downloaded bytes do not match the object's size "
                    f"{expected.size} and CRC32C {expected.crc32c} (MD5 {expected.md5})", src)
    return expected


def copy(src: str, dst: str) -> None:
    """Copies one file between any two of: local path, `gs://` object; verified and atomic."""
    if is_gcs(src) and is_gcs(dst):
        sb, sn = split_gcs(src)
        db, dn = split_gcs(dst)
        with gcs_errors(src, f"copy the object to {dst}"):
            _bucket(sb).copy_blob(_bucket(sb).blob(sn), _bucket(db), dn)  # server-side copy
    elif is_gcs(dst):
        upload_file(src, dst)
    elif is_gcs(src):
        download_file(src, dst)
    else:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
