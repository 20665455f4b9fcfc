"""Builds and syncs that cannot clobber, hang or leak: one writer per --out_dir, a size estimate
before any work, build_all.sh's conflicting flags, data dirs whose train/ lives on another disk,
--help; gcs_sync.py and symlinks, dead endpoints and bad credentials."""
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}
SCRIPT = os.path.join(ROOT, "data_prep", "create_tfrecords.py")


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=ENV, **kwargs)


def _copy(cv_dir, dst) -> str:
    shutil.copytree(cv_dir, dst, ignore=shutil.ignore_patterns("data-tfrec-*", "data-frames"))
    return str(dst)


def test_help_lists_the_flags():
    out = _cli("--help")
    assert out.returncode == 0, out.stderr
    assert "--out_dir" in out.stdout and "--specs" in out.stdout and "--runner" in out.stdout
    assert "unknown flags" not in out.stdout + out.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="a FIFO frame holds the first build")
def test_a_second_build_into_the_same_out_dir_is_refused_naming_the_first(cv_dir, tmp_path):
    held = _copy(cv_dir, tmp_path / "held")
    frame = os.path.join(held, pd.read_csv(os.path.join(held, "train_cv.csv"))["image_path"].iloc[0])
    os.remove(frame)
    os.mkfifo(frame)  # the first build blocks hashing this frame, holding the out dir
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, SCRIPT, f"--data_dir={held}", f"--out_dir={out}", "--specs=single",
                              "--workers=1"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / "build.lock").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (out / "build.lock").exists(), "the first build never took the lock"
        second = _cli(f"--data_dir={cv_dir}", f"--out_dir={out}", "--specs=stacked:s2", "--workers=1")
        assert second.returncode == 1
        line, = second.stderr.strip().splitlines()
        assert f"--out_dir={out} is in use by another build (pid {first.pid} on host " in line
        assert "--specs=single" in line  # the first build's command
        assert first.poll() is None and not list(out.glob("data-tfrec-*"))
    finally:
        first.kill()
        first.wait()
    again = _cli(f"--data_dir={cv_dir}", f"--out_dir={out}", "--specs=single", "--workers=1")
    assert again.returncode == 0, again.stderr  # a dead build's lock is taken over
    assert "Taking over the build dir from a dead build" in again.stdout
    assert not (out / "build.lock").exists()


@pytest.mark.parametrize("flag", ["--specs=single", "--spec_file=mine.txt", "--out_dir=elsewhere",
                                  "--data_dir=other", "--explain=abc_001"])
def test_build_all_refuses_flags_that_conflict_with_its_spec_list(tmp_path, flag):
    called = tmp_path / "called"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ntouch {called}\n")
    fake.chmod(0o755)
    out = subprocess.run(["bash", os.path.join(ROOT, "data_prep", "build_all.sh"), "DATA", "OUT", "--workers=1", flag],
                         capture_output=True, text=True, env={**os.environ, "PYTHON": str(fake)})
    assert out.returncode == 2 and not called.exists()
    line, = out.stderr.strip().splitlines()
    assert f"{flag.split('=')[0]} conflicts with build_all.sh's own" in line and "reference_specs.txt" in line


def test_a_data_dir_whose_frames_live_on_another_disk_builds(cv_dir, tmp_path):
    """train/ and test/ as symlinks to another directory (and one frame a symlink out of it):
    the same records as from the plain data dir; only the CSVs' paths are checked."""
    data = _copy(cv_dir, tmp_path / "data")
    disk = tmp_path / "other_disk"
    disk.mkdir()
    for folder in ("train", "test"):
        shutil.move(os.path.join(data, folder), disk / folder)
        os.symlink(disk / folder, os.path.join(data, folder))
    frame = disk / pd.read_csv(os.path.join(data, "train_cv.csv"))["image_path"].iloc[3]
    shutil.move(frame, tmp_path / "moved.jpg")
    os.symlink(tmp_path / "moved.jpg", frame)
    for directory in (disk / "train", disk / "test"):
        directory.chmod(0o555)  # read-only inputs
    args = ["--specs=single,stacked:s2", "--shards_per_fold=2", "--workers=1"]
    plain = _cli(f"--data_dir={cv_dir}", f"--out_dir={tmp_path / 'plain'}", *args)
    linked = _cli(f"--data_dir={data}", *args)
    assert plain.returncode == 0 and linked.returncode == 0, linked.stderr
    for name in ("data-tfrec-single-frames001-step001", "data-tfrec-stacked-frames003-step002"):
        files = sorted(os.listdir(tmp_path / "plain" / name))
        assert files == sorted(os.listdir(os.path.join(data, name)))
        for f in files:
            if f != "manifest.json":
                assert (tmp_path / "plain" / name / f).read_bytes() == open(os.path.join(data, name, f), "rb").read()


# ---------------------------------------------------------------------------------------------
# Cloud Storage: no file from outside --src, no hang on a dead endpoint or bad credentials


def _sync(*args, env=None):  # (the emulator's environment is set after ENV was made)
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gcs_sync.py"), *args], capture_output=True,
                          text=True, env={**os.environ, **ENV, **(env or {})}, timeout=120)


def test_sync_skips_a_symlink_out_of_src_naming_it(gcs_emulator, tmp_path):
    remote = gcs_emulator.create_bucket() + "/d"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (tmp_path / "secret").write_text("private")
    os.symlink(tmp_path / "secret", src / "leak")
    os.symlink(src / "a.txt", src / "alias.txt")  # a symlink within --src is copied
    done = _sync(f"--src={src}", f"--dst={remote}")
    assert done.returncode == 0, done.stderr
    assert f"skipped {src / 'leak'}: a symlink to {tmp_path / 'secret'}, outside --src" in done.stderr
    from tpuflow import storage
    assert sorted(storage.list_files(remote)) == ["a.txt", "alias.txt"]


def _silent_server():
    """A socket that takes connections (the kernel's backlog) and never answers."""
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    return server


@pytest.mark.parametrize("case", ["dead", "silent", "malformed_credentials", "missing_credentials"])
def test_sync_fails_within_its_timeout_naming_the_endpoint(tmp_path, case):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    env = {"HOME": str(tmp_path), "GOOGLE_CLOUD_PROJECT": "p", "STORAGE_EMULATOR_HOST": "",
           "GOOGLE_APPLICATION_CREDENTIALS": "", "NO_GCE_CHECK": "True"}
    server = None
    if case == "dead":
        server = _silent_server()
        port = server.getsockname()[1]
        server.close()  # nothing listens there now
        env["STORAGE_EMULATOR_HOST"] = endpoint = f"http://127.0.0.1:{port}"
    elif case == "silent":
        server = _silent_server()
        env["STORAGE_EMULATOR_HOST"] = endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    else:
        endpoint = "https://storage.googleapis.com"
        if case == "malformed_credentials":
            (tmp_path / "key.json").write_text("{not json")
            env["GOOGLE_APPLICATION_CREDENTIALS"] = str(tmp_path / "key.json")
    env = {k: v for k, v in env.items() if v}
    clean = {k: v for k, v in ENV.items() if k not in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    start = time.monotonic()
    try:
        out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "gcs_sync.py"), f"--src={src}",
                              "--dst=gs://some-bucket/x", "--timeout_s=3"], capture_output=True, text=True,
                             env={**clean, **env}, timeout=120)
    finally:
        if server is not None:
            server.close()
    assert time.monotonic() - start < 20 and out.returncode == 1
    line, = out.stderr.strip().splitlines()
    assert f"Cloud Storage at {endpoint} (bucket 'some-bucket')" in line
    assert {"dead": "cannot be reached", "silent": "did not answer within 3 s",
            "malformed_credentials": "key.json is not a valid json file",
            "missing_credentials": "no usable credentials"}[case] in line


def test_a_gs_run_dir_on_a_dead_endpoint_fails_at_once(tmp_path, monkeypatch):
    from tpuflow.storage import lock
    server = _silent_server()
    port = server.getsockname()[1]
    server.close()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "p")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=rf"Cloud Storage at http://127.0.0.1:{port} \(bucket 'b'\) cannot be reached"):
        lock.RunLock("gs://b/runs/r1").acquire()
    assert time.monotonic() - start < 10


# ---------------------------------------------------------------------------------------------
# Size: a typo or a build that cannot fit is refused before any work; a full disk is one line


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB file system (tmpfs), where this machine lets the tests mount one."""
    where = tmp_path / "small_disk"
    where.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_a_spec_far_longer_than_any_storm_is_refused_naming_it(cv_dir, tmp_path):
    out = _cli(f"--data_dir={cv_dir}", f"--out_dir={tmp_path / 'out'}", "--specs=single,sequence:n2400:s1")
    assert out.returncode == 1
    line, = out.stderr.strip().splitlines()
    assert "dataset spec 'sequence:n2400:s1': each example spans 2400 frames, more than 8x the longest storm" in line
    assert not (tmp_path / "out").exists()


def test_a_build_that_cannot_fit_is_refused_before_writing_naming_the_estimate(cv_dir, small_disk):
    args = [f"--data_dir={cv_dir}", f"--out_dir={small_disk}", "--workers=1", "--shards_per_fold=1"]
    out = _cli(*args, "--specs=single,sequence:n60:s1")
    assert out.returncode == 1
    line, = out.stderr.strip().splitlines()
    assert f"{small_disk}: the build needs about" in line and "sequence:n60:s1: " in line
    assert re.search(rf"but {small_disk} has 5\d\d kB free", line)
    assert os.listdir(small_disk) == []
    fits = _cli(*args, "--specs=single")  # the estimate refuses no build that fits
    assert fits.returncode == 0, fits.stderr


# ---------------------------------------------------------------------------------------------
# A killed Beam build leaves no worker behind


def _descendants(pid: int) -> set[int]:
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            parents[int(stat.split("/")[2])] = int(open(stat).read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier}
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_killed_direct_runner_build_leaves_no_worker(cv_dir, tmp_path, sig):
    pytest.importorskip("apache_beam")
    build = subprocess.Popen([sys.executable, SCRIPT, "--runner=DirectRunner", f"--data_dir={cv_dir}",
                              f"--out_dir={tmp_path / 'out'}", "--specs=single,sequence:n6:s1", "--workers=2"],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    deadline = time.time() + 120
    while time.time() < deadline and build.poll() is None and len(seen) < 2:
        seen |= _descendants(build.pid)
        time.sleep(0.05)
    try:
        assert build.poll() is None and len(seen) >= 2, "the build ended before its workers were seen"
        time.sleep(0.5)
        seen |= _descendants(build.pid)
        build.send_signal(sig)
        build.wait(60)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in seen):
            time.sleep(0.05)
        survivors = [p for p in seen if _alive(p)]
    finally:
        for pid in seen | ({build.pid} if build.poll() is None else set()):
            if _alive(pid):  # don't leave them to the machine if the check fails
                os.kill(pid, signal.SIGKILL)
    assert not survivors, "Beam workers outlived the killed build"
    assert build.returncode != 0 and "Traceback" not in build.stderr, build.stderr[-2000:]
    assert not (tmp_path / "out" / "build.lock").exists()


# ---------------------------------------------------------------------------------------------
# Every kind reads a frame alike: grayscale and colour JPEGs; other modes refused by name


def _colour_storm(data) -> str:
    """Rewrites the frames of one storm as colour JPEGs (channels that differ); returns its id."""
    import numpy as np
    from PIL import Image
    train = pd.read_csv(os.path.join(data, "train_cv.csv"))
    storm = train["storm_id"].value_counts().index[0]
    for path in train.loc[train["storm_id"] == storm, "image_path"]:
        gray = np.asarray(Image.open(os.path.join(data, path)).convert("L")).astype(np.int32)
        rgb = np.stack([gray, 255 - gray, (gray * 7) % 256], -1).astype(np.uint8)
        Image.fromarray(rgb).save(os.path.join(data, path), format="JPEG", quality=90)
    return storm


def test_every_kind_records_and_assembled_decode_a_frame_alike(cv_dir, tmp_path):
    """single, stacked:s1, mean:s1 and sequence:n3:s1 all hold frames t-2, t-1, t: records and
    assembled examples must give the same pixels for them, for grayscale and colour JPEG frames alike."""
    import numpy as np
    from tpuflow.inputs import assembly, records
    from tpuflow.prep import builder, frames, shard_names, store
    data = _copy(cv_dir, tmp_path / "data")
    colour = _colour_storm(data)
    specs = frames.parse_specs(["single", "stacked:s1", "mean:s1", "sequence:n3:s1"])
    store.build_store(data, data, shards=2, workers=1, log=lambda _: None)
    builder.build_datasets(data, data, specs, shards_per_fold=1, encoding="png", workers=1, log=lambda _: None)
    frame_store = store.load_store(os.path.join(data, shard_names.STORE_DIR))
    got = {}
    for spec in specs:
        d = os.path.join(data, spec.name)
        for serialized in tf_records(records.record_files(d, range(5)) + records.record_files(d, None)):
            ex = records.parse_common(serialized)
            images = [records.decode_image(e, spec.channels).numpy() for e in ex["image"]]
            pixels = np.concatenate(images, -1) if spec.kind == "sequence" else images[0]
            got.setdefault(ex["image_id"].numpy().decode(), {})[spec.kind] = pixels
        assembled = assembly.Assembly(frame_store, spec)
        ids, _, _ = assembled.labels(np.arange(len(frame_store.table)))
        for row, image_id in enumerate(ids):
            pixels = assembled.example_numpy(row)
            got[image_id]["assembled " + spec.kind] = np.moveaxis(pixels[..., 0], 0, -1) if spec.kind == "sequence" else pixels
    storms = dict(zip(frame_store.table["image_id"], frame_store.table["storm_id"]))
    assert colour in storms.values()
    for image_id, by_kind in got.items():
        three = by_kind["stacked"]
        for kind, pixels in by_kind.items():
            expected = three[..., 2:] if kind.endswith("single") else three
            assert np.array_equal(pixels, expected), f"{image_id} (storm {storms[image_id]}): {kind} differs"


def tf_records(files):
    import tensorflow as tf
    return tf.data.TFRecordDataset(files)


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_a_frame_of_another_mode_is_refused_naming_it(cv_dir, tmp_path, mode):
    import numpy as np
    from PIL import Image
    data = _copy(cv_dir, tmp_path / "data")
    frame = os.path.join(data, pd.read_csv(os.path.join(data, "train_cv.csv"))["image_path"].iloc[5])
    if mode == "I;16":
        Image.fromarray(np.full((24, 24), 40000, np.uint16)).save(frame, format="PNG")
    else:
        Image.new("RGBA", (24, 24), (10, 20, 30, 128)).save(frame, format="PNG")
    assert Image.open(frame).mode == mode
    out = _cli(f"--data_dir={data}", f"--out_dir={tmp_path / 'out'}", "--specs=single", "--workers=1")
    assert out.returncode == 1
    line, = out.stderr.strip().splitlines()
    assert f"{frame}: a PNG frame of mode {mode} is not read alike by every kind" in line
    assert not list((tmp_path / "out").glob("*/*.tfrecord-*"))


def test_a_full_disk_stops_a_build_with_one_line_naming_the_file(cv_dir, small_disk):
    """One shard file per example: a disk page each, which the estimate (bytes) does not see, so
    the disk fills up while the shards are written."""
    out = _cli(f"--data_dir={cv_dir}", f"--out_dir={small_disk}", "--workers=1", "--shards_per_fold=64",
               "--specs=single")
    assert out.returncode == 1
    line, = out.stderr.strip().splitlines()
    assert re.fullmatch(rf"create_tfrecords.py: error: {small_disk}/data-tfrec-single-frames001-step001/"
                        r"\S+\.tfrecord-\d+-of-\d+: No space left on device", line), line
    assert os.listdir(small_disk) == []  # no partial shard, no lock


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE")
def test_a_write_failing_half_way_through_a_checkpoint_is_one_line(cv_dir, single_dir, tmp_path):
    """A file size limit makes a checkpoint's write fail half-way (as a disk filling up under
    it would): one line naming the file, exit status 1, no HDF5 crash (exit 139) or tracebacks."""
    import resource

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "tiny_experiment.py"), f"--data_dir={cv_dir}",
                           f"--data_tfrec_dir={single_dir}", f"--output_dir={out}", "--dim=16", "--batch_size=8",
                           "--tta_number=0", "--n_folds=1", "--n_epochs=1", "--steps_per_epoch=1", "--verbose=0",
                           "--job=train_val"], env={**ENV, "PYTHONPATH": ENV["PYTHONPATH"] + os.pathsep + os.path.join(ROOT, "tests")},
                          capture_output=True, text=True, preexec_fn=limited, timeout=600)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    line, = proc.stderr.strip().splitlines()
    assert re.fullmatch(rf"tiny_experiment.py: error: {out}/\S+\.weights\.h5: File too large", line), line
    assert not [f for _, _, files in os.walk(out) for f in files if f.startswith(".tmp-")]
