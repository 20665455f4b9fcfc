"""The local disk: writes go to a temporary name and are renamed into place, so a crash never
leaves a half-written file where a complete one is expected."""
from __future__ import annotations

import contextlib
import glob as _glob
import hashlib
import os
import shutil
import uuid
from typing import Iterator

from tpuflow.storage.fs import TMP_PREFIX, FileInfo, FileSystem, atomic_local


def _version(data: bytes) -> str:
    """A lock file's version: its bytes' hash (the disk has no generation numbers)."""
    return hashlib.sha256(data).hexdigest()


class LocalFileSystem(FileSystem):
    local = True

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def normpath(self, path: str) -> str:
        return os.path.normpath(os.path.abspath(path))

    def realpath(self, path: str) -> str:
        return os.path.realpath(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def glob(self, pattern: str) -> list[str]:
        return sorted(_glob.glob(pattern))

    def list_files(self, root: str) -> dict[str, FileInfo]:
        files = {}
        for directory, _, names in os.walk(root):
            for n in names:
                if n.startswith(TMP_PREFIX):
                    continue
                full = os.path.join(directory, n)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                files[rel] = FileInfo(rel, os.path.getsize(full))
        return files

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def remove(self, path: str) -> None:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    @contextlib.contextmanager
    def open_read(self, path: str):
        with open(path, "rb") as f:
            yield f

    def atomic_path(self, path: str):
        return atomic_local(path)

    @contextlib.contextmanager
    def local_copy(self, path: str) -> Iterator[str]:
        yield path

    def write_bytes(self, path: str, data: bytes) -> None:
        with self.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)

    def put_file(self, local: str, dst: str, crc32c: str | None = None) -> FileInfo:
        self.copy_within(local, dst)
        return FileInfo(os.path.basename(dst), os.path.getsize(dst))

    def get_file(self, src: str, local: str, expected: FileInfo | None = None) -> FileInfo:
        return self.put_file(src, local)

    def copy_within(self, src: str, dst: str) -> None:
        with self.atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)

    # -- versioned (the run-dir lock)

    def create_new(self, path: str, data: bytes) -> str | None:
        """Written under a temporary name and hard-linked into place: `link` fails if it exists."""
        tmp = f"{path}.{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return _version(data)
        except FileExistsError:
            return None
        finally:
            os.remove(tmp)

    def read_versioned(self, path: str) -> tuple[bytes, str] | None:
        try:
            data = self.read_bytes(path)
        except FileNotFoundError:
            return None
        return data, _version(data)

    def replace_at(self, path: str, data: bytes, version: str) -> str | None:
        current = self.read_versioned(path)
        if current is None or current[1] != version:
            return None
        self.write_bytes(path, data)
        return _version(data)

    def delete_at(self, path: str, version: str) -> None:
        """Moved aside first, so that a newer file created meanwhile is put back, not deleted."""
        aside = f"{path}.removing-{uuid.uuid4().hex}"
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        if _version(self.read_bytes(aside)) != version:
            try:
                os.link(aside, path)
            except FileExistsError:
                pass
        os.remove(aside)


FILESYSTEM = LocalFileSystem()
