"""tpuflow.storage and tpuflow.storage.sync on local disk and on a real Cloud Storage emulator."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from tpuflow import storage
from tpuflow.storage import sync

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KiB = 1024


@pytest.fixture(params=["local", "gs", "mem"])
def root(request, tmp_path):
    """A fresh empty directory: a local one, a prefix in a fresh emulator bucket, or one in memory."""
    if request.param == "local":
        return str(tmp_path / "root")
    if request.param == "mem":
        return f"mem://{uuid.uuid4().hex}/root"
    return request.getfixturevalue("gcs_emulator").create_bucket() + "/root"


def _rel(root: str, paths: list[str]) -> list[str]:
    return [p[len(root) + 1:] for p in paths]


# ---------------------------------------------------------------------------------------------
# Primitives, the same on both kinds of path


def test_write_read_list_remove(root):
    storage.makedirs(root)
    storage.write_bytes(storage.join(root, "a.bin"), b"\x00\x01\x02")
    storage.write_text(storage.join(root, "sub", "b.txt"), "héllo")
    storage.write_json(storage.join(root, "sub", "c.json"), {"k": [1, 2]})
    storage.save_npy(storage.join(root, "d.npy"), np.arange(6).reshape(2, 3))

    assert storage.read_bytes(storage.join(root, "a.bin")) == b"\x00\x01\x02"
    assert storage.read_text(storage.join(root, "sub", "b.txt")) == "héllo"
    assert storage.read_json(storage.join(root, "sub", "c.json")) == {"k": [1, 2]}
    np.testing.assert_array_equal(storage.load_npy(storage.join(root, "d.npy")),
                                  np.arange(6).reshape(2, 3))
    assert storage.exists(storage.join(root, "a.bin"))
    assert storage.exists(storage.join(root, "sub")) and storage.isdir(storage.join(root, "sub"))
    assert not storage.isdir(storage.join(root, "a.bin"))
    assert not storage.exists(storage.join(root, "nope"))
    assert storage.listdir(root) == ["a.bin", "d.npy", "sub"]
    assert storage.listdir(storage.join(root, "sub")) == ["b.txt", "c.json"]
    assert sorted(storage.list_files(root)) == ["a.bin", "d.npy", "sub/b.txt", "sub/c.json"]

    storage.remove(storage.join(root, "sub"))
    storage.remove(storage.join(root, "a.bin"))
    storage.remove(storage.join(root, "never-existed"))
    assert storage.listdir(root) == ["d.npy"]


def test_glob_matches_components_like_local(root):
    for name in ["fold.0.tfrecord-00000-of-00002", "fold.0.tfrecord-00001-of-00002",
                 "fold.1.tfrecord-00000-of-00001", "fold.4.tfrecord-00000-of-00001",
                 "test.tfrecord-00000-of-00001", "runs/r1/preds/y.npy", "runs/r2/preds/y.npy",
                 "runs/r2/log.txt"]:
        storage.write_bytes(storage.join(root, name), b"x")
    assert _rel(root, storage.glob(storage.join(root, "fold.[0-3].tfrecord*"))) == [
        "fold.0.tfrecord-00000-of-00002", "fold.0.tfrecord-00001-of-00002",
        "fold.1.tfrecord-00000-of-00001"]
    assert _rel(root, storage.glob(storage.join(root, "*.tfrecord-0000?-of-00001"))) == [
        "fold.1.tfrecord-00000-of-00001", "fold.4.tfrecord-00000-of-00001",
        "test.tfrecord-00000-of-00001"]
    assert _rel(root, storage.glob(storage.join(root, "runs", "*", "preds"))) == [
        "runs/r1/preds", "runs/r2/preds"]
    assert _rel(root, storage.glob(storage.join(root, "runs", "*"))) == ["runs/r1", "runs/r2"]
    assert _rel(root, storage.glob(storage.join(root, "*", "r2", "*.txt"))) == ["runs/r2/log.txt"]
    assert storage.glob(storage.join(root, "runs", "r1")) == [storage.join(root, "runs", "r1")]
    assert storage.glob(storage.join(root, "*.csv")) == []


def test_atomic_path_failure_leaves_nothing_and_keeps_old(root):
    target = storage.join(root, "preds", "y.npy")
    storage.save_npy(target, np.zeros(3))
    with pytest.raises(RuntimeError, match="writer crashed"):
        with storage.atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half a file")
            raise RuntimeError("writer crashed")
    assert not os.path.exists(tmp)
    np.testing.assert_array_equal(storage.load_npy(target), np.zeros(3))  # the old one, whole
    with pytest.raises(RuntimeError):
        with storage.atomic_path(storage.join(root, "new.csv")):
            raise RuntimeError("writer crashed")
    assert not storage.exists(storage.join(root, "new.csv"))
    assert storage.listdir(storage.join(root, "preds")) == ["y.npy"]  # no temporary left


def test_atomic_path_keeps_extension_for_writers_that_check_it(root):
    target = storage.join(root, "m.npy")
    with storage.atomic_path(target) as tmp:
        assert tmp.endswith("-m.npy")
        np.save(tmp, np.ones(2))  # would write tmp + ".npy" if the name did not end in .npy
    np.testing.assert_array_equal(storage.load_npy(target), np.ones(2))


def test_copy_between_schemes_keeps_the_bytes(root, tmp_path):
    data = os.urandom(3 * KiB)
    storage.write_bytes(f"{root}/a.bin", data)
    hops = [str(tmp_path / "local.bin"), f"mem://{uuid.uuid4().hex}/m.bin", f"mem://{uuid.uuid4().hex}/n.bin",
            f"{root}/b.bin"]
    for src, dst in zip([f"{root}/a.bin", *hops], hops):
        storage.copy(src, dst)
    assert [storage.read_bytes(p) for p in hops] == [data] * 4
    assert storage.file_sha256(f"{root}/b.bin") == storage.file_sha256(hops[0])


def test_a_path_of_an_unknown_scheme_is_one_error_naming_the_known_ones():
    known = r"\(known: local paths, gs://, mem://\)"
    with pytest.raises(ValueError, match=rf"'s3://b/x': no file system for s3:// paths {known}"):
        storage.read_bytes("s3://b/x")


def test_missing_paths_raise_naming_the_path(root):
    missing = storage.join(root, "no", "such.json")
    with pytest.raises(FileNotFoundError, match="such.json"):
        storage.read_json(missing)
    with pytest.raises(FileNotFoundError, match="no"):
        storage.listdir(storage.join(root, "no"))


def test_copy_between_local_and_gs(gcs_emulator, tmp_path):
    bucket = gcs_emulator.create_bucket()
    src = tmp_path / "w.bin"
    src.write_bytes(os.urandom(3000))
    storage.copy(str(src), bucket + "/a/w.bin")
    storage.copy(bucket + "/a/w.bin", bucket + "/b/w.bin")
    storage.copy(bucket + "/b/w.bin", str(tmp_path / "back" / "w.bin"))
    assert (tmp_path / "back" / "w.bin").read_bytes() == src.read_bytes()


def test_gcs_errors_name_bucket_and_object(gcs_emulator):
    from google.api_core import exceptions as gexc

    with pytest.raises(storage.BucketNotFoundError, match="'no-such-bucket' does not exist"):
        storage.read_bytes("gs://no-such-bucket/x.json")
    with pytest.raises(storage.BucketNotFoundError, match="no-such-bucket"):
        storage.write_bytes("gs://no-such-bucket/x.json", b"{}")
    # The emulator grants everything, so a denial is raised here as the service would send it.
    with pytest.raises(PermissionError, match="gs://b/secret/o.npy"):
        with storage.gcs_errors("gs://b/secret/o.npy", "read the object"):
            raise gexc.Forbidden("caller does not have storage.objects.get access")
    with pytest.raises(ValueError, match="plain bucket name"):
        storage.split_gcs("gs:///x")


def test_local_use_imports_neither_tensorflow_nor_cloud_client(tmp_path):
    code = ("import sys, tpuflow.storage as s; s.write_json(sys.argv[1], {'a': 1}); "
            "s.read_json(sys.argv[1]); s.glob(sys.argv[1]); "
            "bad = [m for m in ('tensorflow', 'google.cloud.storage') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.json")], check=True,
                   env={**os.environ, "PYTHONPATH": os.path.join(REPO, "lib")})


# ---------------------------------------------------------------------------------------------
# Sync


def _make_dataset(path, sizes=(70 * KiB, 33 * KiB, 0, 5 * KiB)) -> dict[str, bytes]:
    """A fake dataset dir: binary shards (one empty), a nested file and a manifest."""
    rng = np.random.default_rng(0)
    files = {f"fold.{i}.tfrecord-00000-of-00001": rng.bytes(n) for i, n in enumerate(sizes)}
    files["extra/unique_labels_sorted.bin"] = rng.bytes(100)
    files["manifest.json"] = b'{"shards": 4}'
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return files


def _tree_bytes(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_sync_round_trip_then_nothing_to_do(gcs_emulator, tmp_path):
    remote = gcs_emulator.create_bucket() + "/datasets/d1"
    files = _make_dataset(tmp_path / "d1")
    (tmp_path / "d1" / ".tmp-abc-manifest.json").write_bytes(b"{")  # a killed writer's leftover

    up = sync.sync(str(tmp_path / "d1"), remote, workers=4)
    assert up.transferred == sorted(files) and up.skipped == []
    assert up.bytes_transferred == sum(map(len, files.values()))
    listed = storage.list_files(remote)
    assert sorted(listed) == sorted(files)
    assert all(listed[n].size == len(files[n]) for n in files)
    # Manifest last: its object generation (a write timestamp) is newer than every shard's.
    from google.cloud import storage as gcs
    generations = {b.name.rsplit("/", 1)[-1]: b.generation
                   for b in gcs.Client().list_blobs(remote[5:].split("/")[0])}
    assert generations["manifest.json"] > max(
        g for n, g in generations.items() if n != "manifest.json")

    down = sync.sync(remote, str(tmp_path / "copy"), workers=4)
    assert down.transferred == sorted(files)
    assert _tree_bytes(tmp_path / "copy") == files

    again_up = sync.sync(str(tmp_path / "d1"), remote)
    again_down = sync.sync(remote, str(tmp_path / "copy"))
    for report in (again_up, again_down):
        assert report.transferred == [] and report.planned == []
        assert report.skipped == sorted(files) and report.bytes_transferred == 0


def test_corrupted_remote_object_is_detected_and_resent(gcs_emulator, tmp_path):
    remote = gcs_emulator.create_bucket() + "/d"
    files = _make_dataset(tmp_path / "d")
    sync.sync(str(tmp_path / "d"), remote)
    shard = "fold.1.tfrecord-00000-of-00001"
    good = files[shard]
    storage.write_bytes(f"{remote}/{shard}", good[::-1])  # same size, other bytes

    dry = sync.sync(str(tmp_path / "d"), remote, dry_run=True)
    assert dry.planned == [sync.Transfer(shard, len(good), "checksum differs")]
    assert dry.transferred == [] and storage.read_bytes(f"{remote}/{shard}") == good[::-1]

    report = sync.sync(str(tmp_path / "d"), remote)
    assert report.transferred == [shard]
    assert storage.read_bytes(f"{remote}/{shard}") == good


def test_download_checksum_mismatch_fails_cleanly_and_withholds_manifest(gcs_emulator, tmp_path):
    remote = gcs_emulator.create_bucket() + "/d"
    _make_dataset(tmp_path / "d")
    sync.sync(str(tmp_path / "d"), remote)
    shard = "fold.0.tfrecord-00000-of-00001"
    stored = gcs_emulator.stored_file(f"{remote}/{shard}")
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF  # bit rot at rest: the recorded CRC32C no longer matches the bytes
    stored.write_bytes(bytes(data))

    with pytest.raises(storage.ChecksumMismatchError, match=shard):
        storage.read_bytes(f"{remote}/{shard}")
    with pytest.raises(sync.SyncError) as err:
        sync.sync(remote, str(tmp_path / "copy"), retries=2)
    message = str(err.value)
    assert f"{remote}/{shard}" in message and "do not match" in message
    assert "manifest.json" in message  # said to be held back
    copied = _tree_bytes(tmp_path / "copy")
    assert shard not in copied and "manifest.json" not in copied
    assert not any(".tmp-" in name for name in copied)  # no partial file left behind
    assert len(copied) == 4  # the other shards did arrive


def test_interrupted_upload_resumes_from_saved_session(gcs_emulator, tmp_path):
    remote = gcs_emulator.create_bucket() + "/big"
    chunk = 256 * KiB
    (tmp_path / "d").mkdir()
    big = os.urandom(4 * chunk + 1000)
    (tmp_path / "d" / "weights.h5").write_bytes(big)
    (tmp_path / "d" / "small.json").write_bytes(b"{}")
    state = str(tmp_path / "state")

    # A first sync "dies" after two chunks: same class and state file a real run uses.
    first = sync.ResumableUpload(
        str(tmp_path / "d" / "weights.h5"), remote + "/weights.h5",
        crc32c=storage.file_crc32c(str(tmp_path / "d" / "weights.h5")), chunk_size=chunk,
        state_dir=state)
    first.start()
    assert first.send_chunk() == chunk and first.send_chunk() == chunk
    assert not storage.exists(remote + "/weights.h5")  # a partial upload is never visible
    assert len(os.listdir(state)) == 1
    assert os.stat(os.path.join(state, os.listdir(state)[0])).st_mode & 0o077 == 0

    report = sync.sync(str(tmp_path / "d"), remote, resumable_threshold=chunk,
                       chunk_size=chunk, state_dir=state)
    assert report.resumed == ["weights.h5"]
    assert report.transferred == ["small.json", "weights.h5"]
    assert report.bytes_transferred == len(big) - 2 * chunk + 2  # only the rest was sent
    assert storage.read_bytes(remote + "/weights.h5") == big
    assert os.listdir(state) == []


def test_changed_file_does_not_resume_stale_session(gcs_emulator, tmp_path):
    remote = gcs_emulator.create_bucket() + "/big"
    chunk = 256 * KiB
    path = tmp_path / "d" / "w.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(3 * chunk))
    state = str(tmp_path / "state")
    first = sync.ResumableUpload(str(path), remote + "/w.bin",
                                 crc32c=storage.file_crc32c(str(path)),
                                 chunk_size=chunk, state_dir=state)
    first.start()
    first.send_chunk()
    new = os.urandom(3 * chunk)
    path.write_bytes(new)

    report = sync.sync(str(tmp_path / "d"), remote, resumable_threshold=chunk,
                       chunk_size=chunk, state_dir=state)
    assert report.resumed == [] and report.bytes_transferred == len(new)
    assert storage.read_bytes(remote + "/w.bin") == new


def test_sync_bad_input(gcs_emulator, tmp_path):
    bucket = gcs_emulator.create_bucket()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x")
    with pytest.raises(ValueError, match="two local paths"):
        sync.sync(str(tmp_path / "d"), str(tmp_path / "e"))
    with pytest.raises(ValueError, match="two remote paths"):
        sync.sync(bucket + "/a", bucket + "/b")
    with pytest.raises(FileNotFoundError, match="does not exist.*nowhere"):
        sync.sync(str(tmp_path / "nowhere"), bucket + "/x")
    with pytest.raises(storage.BucketNotFoundError, match="'missing-bucket'"):
        sync.sync(str(tmp_path / "d"), "gs://missing-bucket/x")
    with pytest.raises(FileNotFoundError, match="no objects under this prefix.*empty"):
        sync.sync(bucket + "/empty", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_upload_and_errors(gcs_emulator, tmp_path):
    remote = gcs_emulator.create_bucket() + "/cli"
    files = _make_dataset(tmp_path / "d")

    def cli(*args):
        return subprocess.run([sys.executable, os.path.join(REPO, "tools", "gcs_sync.py"), *args],
                              capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": os.path.join(REPO, "lib")})

    dry = cli(f"--src={tmp_path / 'd'}", f"--dst={remote}", "--dry_run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would copy ") == len(files) + 1  # one line per file, then summary
    assert storage.list_files(remote) == {}
    done = cli(f"--src={tmp_path / 'd'}", f"--dst={remote}", "--workers=2", "--progress=on")
    assert done.returncode == 0, done.stderr
    assert f"copied {len(files)} files" in done.stdout and "MiB/s" in done.stderr
    missing = cli(f"--src={tmp_path / 'd'}", "--dst=gs://absent-bucket/p")
    assert missing.returncode == 1
    assert "bucket 'absent-bucket' does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


# ---------------------------------------------------------------------------------------------
# TensorFlow's own gs:// file system, through an HTTPS proxy to the emulator

_TF_READER = r"""
import json, os, sys
import tensorflow as tf
from tpuflow.storage import sync as storage_sync

local, remote = sys.argv[1], sys.argv[2]
os.makedirs(local)
written = []
for shard in range(2):
    with tf.io.TFRecordWriter(os.path.join(local, f"fold.{shard}.tfrecord-00000-of-00001")) as w:
        for i in range(5):
            record = f"shard{shard}-record{i}-".encode() * 40
            w.write(record)
            written.append(record.decode())
storage_sync.sync(local, remote)  # uploaded by tpuflow, read below by TensorFlow's gs://
files = tf.io.gfile.glob(remote + "/fold.*.tfrecord*")
dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
    tf.data.TFRecordDataset, cycle_length=2, num_parallel_calls=2, deterministic=True)
read = [r.decode() for r in dataset.as_numpy_iterator()]
print(json.dumps({"files": files, "written": written, "read": read}))
"""


def test_tf_data_reads_records_from_gs(gcs_emulator, tf_gcs_proxy_env, tmp_path):
    pytest.importorskip("tensorflow")
    remote = gcs_emulator.create_bucket() + "/data"
    result = subprocess.run(
        [sys.executable, "-c", _TF_READER, str(tmp_path / "records"), remote],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, **tf_gcs_proxy_env, "TF_CPP_MIN_LOG_LEVEL": "2",
             "PYTHONPATH": os.path.join(REPO, "lib")})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["files"] == [f"{remote}/fold.0.tfrecord-00000-of-00001",
                            f"{remote}/fold.1.tfrecord-00000-of-00001"]
    assert sorted(out["read"]) == sorted(out["written"]) and len(out["read"]) == 10


def test_resumable_upload_survives_a_service_outage(tmp_path, monkeypatch):
    from gcs_fixture import start_emulator, stop_process

    chunk = 256 * KiB
    (tmp_path / "d").mkdir()
    big = os.urandom(3 * chunk)
    (tmp_path / "d" / "w.bin").write_bytes(big)
    state = str(tmp_path / "state")
    log = open(tmp_path / "emulator.log", "wb")
    proc, host = start_emulator(tmp_path / "emu", log)  # a private one, to stop and restart
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
        storage.client().create_bucket("outage")
        upload = sync.ResumableUpload(
            str(tmp_path / "d" / "w.bin"), "gs://outage/p/w.bin",
            crc32c=storage.file_crc32c(str(tmp_path / "d" / "w.bin")), chunk_size=chunk,
            state_dir=state)
        upload.start()
        upload.send_chunk()
        stop_process(proc)
        with pytest.raises(sync.TransientUploadError, match="network error") as err:
            upload.send_chunk()
        assert "upload_id" not in str(err.value)  # the session URL is a secret: never shown
        proc, _ = start_emulator(tmp_path / "emu", log, port=int(host.rsplit(":", 1)[1]))

        report = sync.sync(str(tmp_path / "d"), "gs://outage/p",
                           resumable_threshold=chunk, chunk_size=chunk, state_dir=state)
        assert report.resumed == ["w.bin"] and report.bytes_transferred == 2 * chunk
        assert storage.read_bytes("gs://outage/p/w.bin") == big
    finally:
        stop_process(proc)
        log.close()


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "out.json"
    storage.write_json(str(path), {"a": 1})
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
