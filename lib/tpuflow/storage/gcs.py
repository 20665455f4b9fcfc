"""Cloud Storage (`gs://bucket/prefix`), through `google-cloud-storage`.

Objects need no temporary-name dance: an object becomes visible only when its upload has
completed, and a failed upload leaves the previous object (or none), so every write here is
atomic. A "directory" is only a name prefix: it exists while some object lies under it.
`google-cloud-storage` is imported only when a `gs://` path is first used. (Inside `tf.data`,
TFRecords are read through TensorFlow's own `gs://` file system, which is what TPUs need.)
"""
from __future__ import annotations

import contextlib
import errno
import os
import threading
from typing import Iterator

from tpuflow.storage.fs import (WILDCARD, BucketNotFoundError, ChecksumMismatchError, FileInfo,
                                FileSystem, atomic_local, crc32c_of, glob_names, local_matches)

_GS = "gs://"
DEFAULT_TIMEOUT_S = 30.0  # how long a first request may take before Cloud Storage counts as unreachable


def split_gcs(path: str) -> tuple[str, str]:
    """`(bucket, object_name)` of a `gs://bucket/name` path (the name may be empty)."""
    path = str(path)
    if not path.startswith(_GS):
        raise ValueError(f"not a Cloud Storage path (gs://bucket/...): {path!r}")
    bucket, _, name = path[len(_GS):].partition("/")
    if not bucket or WILDCARD.search(bucket):
        raise ValueError(f"Cloud Storage path needs a plain bucket name: {path!r}")
    return bucket, name


# ---------------------------------------------------------------------------------------------
# Client and error translation

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


class GcsFileSystem(FileSystem):
    resumable = True

    def check_reachable(self, path: str, timeout_s: float) -> None:
        check_reachable(path, timeout_s)

    def bucket(self, path: str) -> str:
        return _GS + split_gcs(path)[0]

    def bucket_location(self, path: str) -> str:
        """The bucket's location (`US-CENTRAL1`, `US`), as the service names it."""
        return client().get_bucket(split_gcs(path)[0]).location.upper()

    def exists(self, path: str) -> bool:
        bucket, name = split_gcs(path)
        if not name.strip("/"):
            return _bucket_exists(bucket)
        if not name.endswith("/"):
            with gcs_errors(path, "look up the object"):
                if _bucket(bucket).blob(name).exists():
                    return True
        return _has_objects_under(bucket, _dir_prefix(name), path)

    def isdir(self, path: str) -> bool:
        bucket, name = split_gcs(path)
        if not name.strip("/"):
            return _bucket_exists(bucket)
        return _has_objects_under(bucket, _dir_prefix(name), path)

    def listdir(self, path: str) -> list[str]:
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

    def glob(self, pattern: str) -> list[str]:
        bucket, name = split_gcs(pattern)
        wildcard = WILDCARD.search(name)
        if wildcard is None:
            return [pattern] if self.exists(pattern) else []
        found = glob_names((b.name for b in _blobs(bucket, name[:wildcard.start()], pattern)), name)
        return sorted(f"{_GS}{bucket}/{n}" for n in found)

    def list_files(self, root: str) -> dict[str, FileInfo]:
        bucket, name = split_gcs(root)
        prefix = _dir_prefix(name)
        return {b.name[len(prefix):]: FileInfo(b.name[len(prefix):], int(b.size), b.crc32c, b.md5_hash)
                for b in _blobs(bucket, prefix, root) if not b.name.endswith("/")}

    def size(self, path: str) -> int:
        bucket, name = split_gcs(path)
        with gcs_errors(path, "look up the object"):
            blob = _bucket(bucket).get_blob(name)
        if blob is None:
            raise FileNotFoundError(errno.ENOENT, "no such Cloud Storage object", path)
        return int(blob.size)

    def remove(self, path: str) -> None:
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

    def read_bytes(self, path: str) -> bytes:
        """Downloads are checked against the object's CRC32C."""
        bucket, name = split_gcs(path)
        with gcs_errors(path, "read the object"):
            return _bucket(bucket).blob(name).download_as_bytes(checksum="crc32c")

    @contextlib.contextmanager
    def atomic_path(self, path: str) -> Iterator[str]:
        split_gcs(path)  # fail on a malformed path before the caller does any work
        with super().atomic_path(path) as tmp:
            yield tmp

    def write_bytes(self, path: str, data: bytes) -> None:
        bucket, name = split_gcs(path)
        with gcs_errors(path, "write the object"):
            # checksum="crc32c": the service rejects the upload if the bytes arrive altered.
            _bucket(bucket).blob(name).upload_from_string(data, checksum="crc32c")

    def put_file(self, local: str, dst: str, crc32c: str | None = None) -> FileInfo:
        """Uploads one local file and verifies it by CRC32C.

        The checksum goes with the upload, so the service refuses altered bytes (no corrupt object
        ever becomes visible); the checksum the service then reports is compared once more.
        """
        from google.api_core import exceptions as gexc

        bucket, name = split_gcs(dst)
        if not os.path.isfile(local):
            raise FileNotFoundError(errno.ENOENT, "no such local file to upload", local)
        if not crc32c:
            with open(local, "rb") as f:
                crc32c = crc32c_of(f)
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

    def get_file(self, src: str, local: str, expected: FileInfo | None = None) -> FileInfo:
        """Downloads one object to a local file, verified before it is renamed into place.

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
            with atomic_local(local) as tmp:
                # Checked here, against the listing, rather than by the client, so the bytes that
                # land are compared with exactly the checksum the skip decision used.
                _bucket(bucket).blob(name).download_to_filename(tmp, checksum=None)
                if not local_matches(tmp, expected):
                    raise ChecksumMismatchError(
                        errno.EIO, f"downloaded bytes do not match the object's size "
                        f"{expected.size} and CRC32C {expected.crc32c} (MD5 {expected.md5})", src)
        return expected

    def copy_within(self, src: str, dst: str) -> None:
        sb, sn = split_gcs(src)
        db, dn = split_gcs(dst)
        with gcs_errors(src, f"copy the object to {dst}"):
            _bucket(sb).copy_blob(_bucket(sb).blob(sn), _bucket(db), dn)  # server-side copy

    def resumable_session(self, dst: str, size: int, crc32c: str) -> str:
        """A resumable upload session's URL for `size` bytes whose CRC32C the service will check."""
        bucket, name = split_gcs(dst)
        blob = _bucket(bucket).blob(name)
        blob.crc32c = crc32c  # the service checks the finished object against it
        with gcs_errors(dst, "start a resumable upload"):
            return blob.create_resumable_upload_session(size=size, checksum=None)

    # -- versioned: generation preconditions

    def create_new(self, path: str, data: bytes) -> int | None:
        """Uploaded with `if_generation_match=0`: "only if no such object"."""
        from google.api_core import exceptions as gexc

        bucket, name = split_gcs(path)
        blob = _bucket(bucket).blob(name)
        with gcs_errors(path, "create the object"):
            try:
                blob.upload_from_string(data, if_generation_match=0)
            except gexc.PreconditionFailed:
                return None
        return blob.generation

    def read_versioned(self, path: str) -> tuple[bytes, int] | None:
        bucket, name = split_gcs(path)
        with gcs_errors(path, "read the object"):
            blob = _bucket(bucket).get_blob(name)
            if blob is None:
                return None
            generation = blob.generation  # (a download may reset the blob's metadata)
            return blob.download_as_bytes(if_generation_match=generation), generation

    def replace_at(self, path: str, data: bytes, version: int) -> int | None:
        from google.api_core import exceptions as gexc

        bucket, name = split_gcs(path)
        blob = _bucket(bucket).blob(name)
        with gcs_errors(path, "replace the object"):
            try:
                blob.upload_from_string(data, if_generation_match=version)
            except gexc.PreconditionFailed:
                return None
        return blob.generation

    def delete_at(self, path: str, version: int) -> None:
        from google.api_core import exceptions as gexc

        bucket, name = split_gcs(path)
        with gcs_errors(path, "delete the object"):
            try:
                _bucket(bucket).blob(name).delete(if_generation_match=version)
            except (gexc.PreconditionFailed, gexc.NotFound):
                pass  # replaced or removed meanwhile: not the version judged


FILESYSTEM = GcsFileSystem()
