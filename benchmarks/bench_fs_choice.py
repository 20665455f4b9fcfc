"""Our file-system layer against the well-kept libraries, on the Cloud Storage emulator: the
figures behind `tpuflow.storage`'s choice (see its docstring).

Usage: python benchmarks/bench_fs_choice.py [--ops=50] [--kib=256]  (from the repository root, PYTHONPATH=lib)

Times the same operations, --ops times each, through `tpuflow.storage` (google-cloud-storage,
the baseline), `gcsfs` (fsspec) and `etils.epath` (on gcsfs: EPATH_USE_TF=false, since its
TensorFlow backend would import TensorFlow into the storage layer): write an object, read it,
ask whether it exists, list its directory, glob. Prints milliseconds per operation and the ratio
to the baseline, then whether each can create an object only if none exists and replace or delete
it only at a known generation (the run-dir lock's preconditions). The emulator is a
single-threaded Python server: the ratios compare client overheads, not Cloud Storage.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time

os.environ.setdefault("EPATH_USE_TF", "false")
# gcsfs's default class probes each bucket's type over gRPC, which waits 60 s on the emulator
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from absl import app, flags  # noqa: E402
from bench_gcs_sync import _start_emulator  # noqa: E402  (run from benchmarks/)

from tpuflow import storage  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("ops", 50, "Repetitions of each operation.")


def _timed(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e3


def _ours(root: str, data: bytes) -> dict:
    return {"write": lambda i: storage.write_bytes(f"{root}/o-{i}", data),
            "read": lambda i: storage.read_bytes(f"{root}/o-{i}"),
            "exists": lambda i: storage.exists(f"{root}/o-{i}"),
            "listdir": lambda i: storage.listdir(root),
            "glob": lambda i: storage.glob(f"{root}/o-1*")}


def _gcsfs(root: str, data: bytes) -> dict:
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", project="bench", cache_timeout=0)  # no listing cache: same work as ours
    return {"write": lambda i: fs.pipe_file(f"{root}/o-{i}", data),
            "read": lambda i: fs.cat_file(f"{root}/o-{i}"),
            "exists": lambda i: fs.exists(f"{root}/o-{i}"),
            "listdir": lambda i: fs.ls(root, refresh=True),
            "glob": lambda i: fs.glob(f"{root}/o-1*", refresh=True)}


def _epath(root: str, data: bytes) -> dict:
    from etils import epath

    base = epath.Path(root)
    return {"write": lambda i: (base / f"o-{i}").write_bytes(data),
            "read": lambda i: (base / f"o-{i}").read_bytes(),
            "exists": lambda i: (base / f"o-{i}").exists(),
            "listdir": lambda i: list(base.iterdir()),
            "glob": lambda i: list(base.glob("o-1*"))}


def _preconditions() -> dict[str, str]:
    """What each client's write and delete accept (read off their signatures): the lock needs
    create-if-absent, replace-at-generation (its heartbeat) and delete-at-generation (a takeover)."""
    import inspect

    import gcsfs.core
    from google.cloud.storage import Blob

    ours = all("if_generation_match" in inspect.signature(f).parameters
               for f in (Blob.upload_from_string, Blob.delete, Blob.download_as_bytes))
    pipe = inspect.signature(gcsfs.core.GCSFileSystem._pipe_file).parameters
    create = "mode" in pipe  # mode="create": ifGenerationMatch=0
    replace = any("generation" in name for name in pipe)
    return {"tpuflow.storage": "create, replace and delete at a generation" if ours else "missing",
            "gcsfs": f"create-if-absent {'yes' if create else 'no'}, replace-at-generation "
                     f"{'yes' if replace else 'no'} (pipe_file takes no generation)",
            "etils.epath": "none (a pathlib API: write_bytes and unlink take no precondition)"}


def main(argv: list[str]) -> None:
    del argv
    data = os.urandom(FLAGS.kib * 1024)
    with tempfile.TemporaryDirectory() as tmp:
        proc = _start_emulator(os.path.join(tmp, "emu"))
        try:
            storage.client().create_bucket("bench")
            base = None
            print(f"{FLAGS.ops} x each op, {FLAGS.kib} KiB objects, ms per op (ratio to tpuflow.storage)")
            for name, make in (("tpuflow.storage", _ours), ("gcsfs", _gcsfs), ("etils.epath", _epath)):
                try:
                    ops = make(f"gs://bench/{name}", data)
                except ImportError as err:
                    print(f"  {name:16s} not installed ({err.name}: pip install gcsfs etils)")
                    continue
                ms = {op: _timed(fn, FLAGS.ops) for op, fn in ops.items()}
                base = base or ms
                print(f"  {name:16s} " + "  ".join(f"{op} {v:6.2f} ({v / base[op]:.2f}x)" for op, v in ms.items()))
            for name, answer in (_preconditions() if importlib.util.find_spec("gcsfs") else {}).items():
                print(f"  generation preconditions, {name}: {answer}")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    app.run(main)
