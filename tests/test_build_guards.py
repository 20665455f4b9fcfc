"""Builds that cannot clobber, hang or leak: one writer per --out_dir, a size estimate before any
work, build_all.sh's conflicting flags, data dirs whose train/ lives on another disk, --help."""
import os
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
