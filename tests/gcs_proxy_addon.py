"""mitmproxy addon for the tests: sends TensorFlow's Cloud Storage requests to the emulator.

TensorFlow's `gs://` file system has the service's endpoints built in (www.googleapis.com for
metadata and listing, storage.googleapis.com for reads) and ignores STORAGE_EMULATOR_HOST, but
its libcurl honours HTTPS_PROXY. This addon, loaded by `mitmdump -s`, rewrites those requests to
plain HTTP on the emulator (whose routes mirror both endpoints) and refuses every other host,
so nothing leaves the machine.
"""
import os

from mitmproxy import http

_GOOGLE_HOSTS = {"www.googleapis.com", "storage.googleapis.com"}


class ToEmulator:
    def __init__(self) -> None:
        self.port = int(os.environ["GCS_EMULATOR_PORT"])

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.pretty_host not in _GOOGLE_HOSTS:
            flow.response = http.Response.make(502, b"test proxy: host not allowed")
            return
        flow.request.scheme = "http"
        flow.request.host = "127.0.0.1"
        flow.request.port = self.port


addons = [ToEmulator()]
