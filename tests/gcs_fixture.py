"""A real Cloud Storage emulator (`gcp-storage-emulator`) for the test session.

The emulator runs as a subprocess on 127.0.0.1 on a free port, keeping its objects on disk in a
temporary directory; `STORAGE_EMULATOR_HOST` points `google-cloud-storage` at it (with anonymous
credentials and a fake project), so `tpuflow.storage` talks to it exactly as to the service.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import pathlib
import shutil
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


def stop_process(proc: subprocess.Popen) -> None:
    """Stops a subprocess started here: terminate, then kill if it lingers."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(data_dir: pathlib.Path, log, port: int | None = None
                   ) -> tuple[subprocess.Popen, str]:
    """Starts an emulator keeping its data in `data_dir` (on a free port by default) and waits
    until it answers; returns the process and its `http://127.0.0.1:PORT` URL."""
    port = port or _free_port()
    host = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, str(pathlib.Path(__file__).with_name("gcs_emulator.py")), "-d", str(data_dir), "start",
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
            proc, host = start_emulator(root / "data", log)
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
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def tf_gcs_proxy_env(gcs_emulator, tmp_path_factory):
    """Environment for a TensorFlow subprocess whose `gs://` file system reads the emulator.

    Starts `mitmdump` (from the `mitmproxy` package) as an HTTPS proxy on 127.0.0.1 with the
    `gcs_proxy_addon` rewrite; TensorFlow trusts its CA through CURL_CA_BUNDLE and skips
    Google sign-in through GOOGLE_AUTH_TOKEN_FOR_TESTING (a fake token the emulator ignores).
    """
    if importlib.util.find_spec("mitmproxy") is None:
        pytest.skip("needs mitmproxy (pip install 'mitmproxy>=11') to proxy TensorFlow's gs://")
    mitmdump = os.path.join(os.path.dirname(sys.executable), "mitmdump")
    mitmdump = mitmdump if os.path.exists(mitmdump) else shutil.which("mitmdump")
    root = tmp_path_factory.mktemp("gcs-proxy")
    port = _free_port()
    log = open(root / "mitmdump.log", "wb")
    proc = subprocess.Popen(
        [mitmdump, "--listen-host", "127.0.0.1", "--listen-port", str(port),
         "--set", f"confdir={root}", "--set", "connection_strategy=lazy", "--quiet",
         "-s", str(pathlib.Path(__file__).with_name("gcs_proxy_addon.py"))],
        stdout=log, stderr=log,
        env={**os.environ, "GCS_EMULATOR_PORT": gcs_emulator.host.rsplit(":", 1)[1]})
    ca = root / "mitmproxy-ca-cert.pem"
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            if ca.exists():
                break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        stop_process(proc)
        log.close()
        raise RuntimeError(f"mitmdump did not start; see {root / 'mitmdump.log'}")
    try:
        yield {"HTTPS_PROXY": f"http://127.0.0.1:{port}", "https_proxy": f"http://127.0.0.1:{port}",
               "CURL_CA_BUNDLE": str(ca), "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-test-token",
               "NO_PROXY": "", "no_proxy": ""}
    finally:
        stop_process(proc)
        log.close()
