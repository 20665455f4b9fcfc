"""`mem://name/...`: files in this process's memory, an object store without a network, for
tests of code that must work on any scheme (nothing is written to disk, nothing is shared between
processes). Like Cloud Storage, a "directory" is a name prefix and every object has a generation."""
from __future__ import annotations

import errno
import threading

from tpuflow.storage.fs import TMP_PREFIX, WILDCARD, FileInfo, FileSystem, glob_names


class MemoryFileSystem(FileSystem):
    def __init__(self):
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, int]] = {}  # path -> (bytes, generation)
        self._generations = 0

    def clear(self) -> None:
        with self._lock:
            self._objects.clear()

    @staticmethod
    def _dir(path: str) -> str:
        return path.rstrip("/") + "/"

    def _under(self, path: str) -> list[str]:
        prefix = self._dir(path)
        with self._lock:
            return sorted(p for p in self._objects if p.startswith(prefix))

    def exists(self, path: str) -> bool:
        return path in self._objects or self.isdir(path)

    def isdir(self, path: str) -> bool:
        return bool(self._under(path))

    def listdir(self, path: str) -> list[str]:
        prefix = self._dir(path)
        names = sorted({p[len(prefix):].split("/")[0] for p in self._under(path)})
        if not names:
            raise FileNotFoundError(errno.ENOENT, "no such directory in memory", path)
        return names

    def glob(self, pattern: str) -> list[str]:
        if WILDCARD.search(pattern) is None:
            return [pattern] if self.exists(pattern) else []
        with self._lock:
            names = list(self._objects)
        return sorted(glob_names(names, pattern))

    def list_files(self, root: str) -> dict[str, FileInfo]:
        prefix = self._dir(root)
        files = {}
        for p in self._under(root):
            rel = p[len(prefix):]
            if not rel.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
                files[rel] = FileInfo(rel, len(self._objects[p][0]))
        return files

    def remove(self, path: str) -> None:
        doomed = self._under(path) + [path]
        with self._lock:
            for p in doomed:
                self._objects.pop(p, None)

    def read_bytes(self, path: str) -> bytes:
        try:
            return self._objects[path][0]
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "no such file in memory", path) from None

    def write_bytes(self, path: str, data: bytes) -> None:
        with self._lock:
            self._put(path, data)

    def _put(self, path: str, data: bytes) -> int:
        self._generations += 1
        self._objects[path] = (bytes(data), self._generations)
        return self._generations

    # -- versioned

    def create_new(self, path: str, data: bytes) -> int | None:
        with self._lock:
            return None if path in self._objects else self._put(path, data)

    def read_versioned(self, path: str) -> tuple[bytes, int] | None:
        with self._lock:
            return self._objects.get(path)

    def replace_at(self, path: str, data: bytes, version: int) -> int | None:
        with self._lock:
            current = self._objects.get(path)
            return self._put(path, data) if current is not None and current[1] == version else None

    def delete_at(self, path: str, version: int) -> None:
        with self._lock:
            current = self._objects.get(path)
            if current is not None and current[1] == version:
                del self._objects[path]


FILESYSTEM = MemoryFileSystem()
