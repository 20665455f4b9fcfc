"""The file-system interface every URL scheme implements, and what its implementations share.

`tpuflow.storage` picks one `FileSystem` per path by its scheme (`storage.SCHEMES`: none is the
local disk, `gs://` Cloud Storage, `mem://` memory for tests) and hands every call on; nothing
outside the package asks which scheme a path has. A scheme is one module defining a subclass of
`FileSystem` as `FILESYSTEM`, plus its line in `storage.SCHEMES`.

The operations come in three groups: queries and whole-file reads and writes (atomic on every
scheme); single-file transfers to and from this machine (`put_file`, `get_file`, verified); and
the versioned ones the run-dir lock is built on (`create_new`, `read_versioned`, `replace_at`,
`delete_at`: on Cloud Storage, generation preconditions).
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import fnmatch
import hashlib
import io
import os
import posixpath
import re
import tempfile
from typing import Iterator

TMP_PREFIX = ".tmp-"  # atomic_path's temporaries: never listed as files of a tree
_READ_BLOCK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)
WILDCARD = re.compile(r"[*?\[]")
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://")


class ChecksumMismatchError(OSError):
    """A transfer's bytes did not match the checksum noted for them (after all retries)."""


class BucketNotFoundError(FileNotFoundError):
    """The bucket of a remote path (`gs://bucket/...`) does not exist."""


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """One file of a tree: its path relative to the tree root ('/'-separated), size and, for
    Cloud Storage objects, the checksums the service keeps (base64, as the API gives them)."""
    name: str
    size: int
    crc32c: str | None = None
    md5: str | None = None


def scheme(path: str) -> str:
    """The URL scheme of `path` (`gs` for `gs://b/x`), `''` for a plain local path."""
    found = _SCHEME.match(str(path))
    return found.group(1) if found else ""


def glob_names(names, pattern: str) -> set[str]:
    """The '/'-separated prefixes of `names` that match `pattern` component by component (no
    wildcard crossing a `/`), as object stores glob: "directories" match as files do."""
    parts = pattern.split("/")
    found = set()
    for name in names:
        head = name.split("/")[:len(parts)]
        if len(head) == len(parts) and head[-1] and all(fnmatch.fnmatchcase(h, p) for h, p in zip(head, parts)):
            found.add("/".join(head))
    return found


def feed(f, digest):
    """Feeds a binary file's bytes, in blocks, into `digest` (anything with `update`: hashlib's,
    google_crc32c.Checksum) and returns it."""
    for block in iter(lambda: f.read(_READ_BLOCK), b""):
        digest.update(block)
    return digest


def crc32c_of(f) -> str:
    """CRC32C of a binary file's bytes, base64-encoded like Cloud Storage's `crc32c` field."""
    import google_crc32c  # installed with google-cloud-storage

    return base64.b64encode(feed(f, google_crc32c.Checksum()).digest()).decode("ascii")


def md5_of(f) -> str:
    """MD5 of a binary file's bytes, base64-encoded like Cloud Storage's `md5Hash` field."""
    return base64.b64encode(feed(f, hashlib.md5()).digest()).decode("ascii")


def local_matches(path: str, remote: FileInfo) -> bool:
    """True if a local file has the remote object's size and checksum (CRC32C, else MD5).

    Every Cloud Storage object has a CRC32C; MD5 is the fallback for objects without one.
    """
    if os.path.getsize(path) != remote.size:
        return False
    if not remote.crc32c and not remote.md5:
        return True  # no checksum to compare beyond the size
    with open(path, "rb") as f:
        return crc32c_of(f) == remote.crc32c if remote.crc32c else md5_of(f) == remote.md5


@contextlib.contextmanager
def atomic_local(path: str) -> Iterator[str]:
    """A temporary file beside the local `path`, renamed into place on success, removed on error."""
    base = os.path.basename(str(path).rstrip("/"))
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + base, dir=directory)
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


class FileSystem:
    """One URL scheme's files. The defaults here suit a remote store (paths are URLs joined with
    '/', files reach this machine as temporary copies); the local disk overrides them."""

    local = False  # paths are this machine's: os, open() and the disk's free space apply
    resumable = False  # has `resumable_session` (big uploads that survive the process)

    # -- paths

    def join(self, *parts: str) -> str:
        last = max(i for i, p in enumerate(parts) if i == 0 or scheme(p))  # a URL starts over
        return posixpath.join(*parts[last:])

    def normpath(self, path: str) -> str:
        """`..` and doubled slashes resolved, no trailing slash."""
        head = path[:len(scheme(path)) + 3]
        return head + posixpath.normpath(path[len(head):])

    def realpath(self, path: str) -> str:
        return self.normpath(path)

    def check_reachable(self, path: str, timeout_s: float) -> None:
        """Fails within `timeout_s` with one error if the store behind `path` cannot be reached."""

    def bucket(self, path: str) -> str | None:
        """The bucket `path` lies in, as a URL (`gs://name`); None where there are no buckets."""
        return None

    # -- whole files (subclasses: exists, isdir, listdir, glob, list_files, remove, read_bytes, write_bytes)

    def makedirs(self, path: str) -> None:
        """Nothing to do where a directory is only a name prefix."""

    def size(self, path: str) -> int:
        return len(self.read_bytes(path))

    @contextlib.contextmanager
    def open_read(self, path: str) -> Iterator[io.BufferedIOBase]:
        yield io.BytesIO(self.read_bytes(path))

    @contextlib.contextmanager
    def atomic_path(self, path: str) -> Iterator[str]:
        """A local temporary file, uploaded to `path` (`put_file`) once written."""
        base = os.path.basename(str(path).rstrip("/"))
        fd, tmp = tempfile.mkstemp(prefix="tpuflow-", suffix="-" + base)
        os.close(fd)
        try:
            yield tmp
            self.put_file(tmp, path)
        finally:
            os.remove(tmp)

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        fd, tmp = tempfile.mkstemp(prefix="tpuflow-", suffix="-" + os.path.basename(path))
        os.close(fd)
        try:
            self.get_file(path, tmp)
            yield tmp
        finally:
            os.remove(tmp)

    # -- transfers to and from this machine

    def put_file(self, local: str, dst: str, crc32c: str | None = None) -> FileInfo:
        with open(local, "rb") as f:
            self.write_bytes(dst, f.read())
        return FileInfo(posixpath.basename(dst), os.path.getsize(local))

    def get_file(self, src: str, local: str, expected: FileInfo | None = None) -> FileInfo:
        data = self.read_bytes(src)
        with atomic_local(local) as tmp, open(tmp, "wb") as f:
            f.write(data)
        return FileInfo(posixpath.basename(src), len(data))

    def copy_within(self, src: str, dst: str) -> None:
        """Copies between two paths of this file system (a server-side copy where there is one)."""
        self.write_bytes(dst, self.read_bytes(src))
