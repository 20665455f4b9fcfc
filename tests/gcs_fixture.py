"""A real Cloud Storage emulator (`gcp-storage-emulator`) for the test session.

The emulator runs as a subprocess on 127.0.0.1 on a free port, keeping its objects on disk in a
temporary directory; `STORAGE_EMULATOR_HOST` points `google-cloud-storage` at it (with anonymous
credentials and a fake project), so `tpuflow.storage` talks to it exactly as to the service.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


@dataclasses.dataclass
class GcsEmulator:
    """Handle on the running emulator: its URL, data directory and a bucket factory."""
    host: str
    data_dir: pathlib.Path
    _counter: itertools.count = dataclasses.field(default_factory=itertools.count)

    def create_bucket(self, name: str | None = None) -> str:
        """Creates a fresh bucket and returns its `gs://name` root."""
        from google.cloud import storage as gcs

        name = name or f"test-bucket-{next(self._counter)}"
        gcs.Client().create_bucket(name)
        return f"gs://{name}"

    def stored_file(self, gcs_path: str) -> pathlib.Path:
        """Where the emulator keeps an object's bytes (to simulate corruption at rest)."""
        bucket, _, name = gcs_path[len("gs://"):].partition("/")
        return self.data_dir / ".cloudstorage" / bucket / name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: pathlib.Path, log) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    host = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "-d", str(data_dir), "start",
         "--host", "127.0.0.1", "--port", str(port), "-q"], stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(host + "/", timeout=1) as response:
                if response.read() == b"OK":
                    return proc, host
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"gcp-storage-emulator did not start on {host}")


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    """Starts the emulator for the session, sets the Google environment for it, yields a
    `GcsEmulator`, and stops it (restoring the environment) at the end."""
    pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator")
    root = tmp_path_factory.mktemp("gcs-emulator")
    log = open(root / "emulator.log", "wb")
    for attempt in range(3):  # the free port may be taken between probe and bind
        try:
            proc, host = _start(root / "data", log)
            break
        except RuntimeError:
            if attempt == 2:
                raise
    env = {"STORAGE_EMULATOR_HOST": host, "GOOGLE_CLOUD_PROJECT": "tpuflow-test"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield GcsEmulator(host, root / "data")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
