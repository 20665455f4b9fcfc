"""Speed of `storage.sync.sync` against a local Cloud Storage emulator.

Usage: python benchmarks/bench_gcs_sync.py [--files=200] [--kib=256] [--workers=8]

Prints, for one tree of random files: the upload with one worker (the baseline, a plain
sequential copy loop), the upload with --workers, and a re-sync of the unchanged tree (sizes
and CRC32C compared, nothing sent), each with its ratio to the baseline. The emulator is a
single-threaded Python server, so absolute figures say nothing about Cloud Storage itself; the
ratios show what parallelism and skipping buy on the client side.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from absl import app, flags

from tpuflow import storage
from tpuflow.storage import sync

FLAGS = flags.FLAGS
flags.DEFINE_integer("files", 200, "Files in the tree.")
flags.DEFINE_integer("kib", 256, "Size of each file in KiB.")
flags.DEFINE_integer("workers", 8, "Parallel transfers of the measured run.")


def _start_emulator(data_dir: str) -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "-d", data_dir,
                             "start", "--host", "127.0.0.1", "--port", str(port), "-q"])
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(os.environ["STORAGE_EMULATOR_HOST"], timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("emulator did not start")


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        proc = _start_emulator(os.path.join(tmp, "emu"))
        try:
            storage.client().create_bucket("bench")
            tree = os.path.join(tmp, "tree")
            for i in range(FLAGS.files):
                storage.write_bytes(os.path.join(tree, f"shard-{i:05d}"),
                                    os.urandom(FLAGS.kib * 1024))
            mib = FLAGS.files * FLAGS.kib / 1024

            def timed(dst: str, workers: int) -> tuple[float, sync.SyncReport]:
                start = time.perf_counter()
                report = sync.sync(tree, dst, workers=workers, progress=False)
                return time.perf_counter() - start, report

            base, _ = timed("gs://bench/sequential", 1)
            par, _ = timed("gs://bench/parallel", FLAGS.workers)
            again, report = timed("gs://bench/parallel", FLAGS.workers)
            assert report.transferred == [] and len(report.skipped) == FLAGS.files
            print(f"tree: {FLAGS.files} files, {mib:.1f} MiB")
            print(f"upload, 1 worker (baseline): {base:.2f} s  {mib / base:.1f} MiB/s")
            print(f"upload, {FLAGS.workers} workers: {par:.2f} s  {mib / par:.1f} MiB/s  "
                  f"ratio {base / par:.2f}x")
            print(f"re-sync, nothing to send: {again:.2f} s  ratio {base / again:.2f}x")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    app.run(main)
