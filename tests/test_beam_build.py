"""Builds on Apache Beam (`create_tfrecords.py --runner=...`, `tpuflow.prep.beam_build`): the same
bytes and manifests as the local builder on the DirectRunner in multi-process mode, for the
demo's specs, the frame store and three of the reference's specs; a worker that fails and is
retried; a failed pipeline and its re-run; a Beam run completing a local build; gs:// in and out."""
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

from tpuflow import storage
from tpuflow.prep import beam_build, build_plan, build_write, builder, frames, shard_names, store

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = ["single", "stacked:s2", "mean:s2", "sequence:n6:s1"]  # the Makefile's demo, with `frames`
REFERENCE = ["stacked:s5", "mean:s10", "sequence:n24:s1"]  # three of data_prep/reference_specs.txt
SPECS = frames.parse_specs(DEMO + REFERENCE)
OPTIONS = dict(shards_per_fold=2, chunk_frames=4)  # history crosses chunks (storms of 6-14 frames)
IN_MEMORY = ["--direct_running_mode=in_memory"]  # one process: cheap, for the failure tests


def _quiet(_):
    pass


def _tree(root) -> dict:
    """{relative path: bytes} of every file under `root` (shards, manifests, leftovers)."""
    return {os.path.relpath(p, root): open(p, "rb").read()
            for p in sorted(glob.glob(os.path.join(root, "**", "*"), recursive=True))
            if os.path.isfile(p)}


@pytest.fixture(scope="module")
def local_root(cv_dir, tmp_path_factory):
    """The local builder's output: the datasets and the frame store."""
    root = str(tmp_path_factory.mktemp("local"))
    builder.build_datasets(cv_dir, root, SPECS, workers=1, log=_quiet, **OPTIONS)
    store.build_store(cv_dir, root, shards=OPTIONS["shards_per_fold"], workers=1, log=_quiet)
    return root


@pytest.fixture(scope="module")
def direct_root(cv_dir, tmp_path_factory):
    """The same from the command line on the DirectRunner, 2 worker processes (Beam's flags
    passed through, one of them with its value as the next argument)."""
    root = str(tmp_path_factory.mktemp("direct"))
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "data_prep", "create_tfrecords.py"),
         "--runner=DirectRunner", f"--data_dir={cv_dir}", f"--out_dir={root}",
         f"--specs={','.join(DEMO + REFERENCE + ['frames'])}", "--shards_per_fold=2",
         "--chunk_frames=4", "--direct_running_mode=multi_processing", "--direct_num_workers", "2"],
        capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return root


def test_direct_runner_writes_the_local_builders_bytes_and_manifests(local_root, direct_root):
    local, direct = _tree(local_root), _tree(direct_root)
    assert sorted(local) == sorted(direct)
    assert len([p for p in local if p.endswith(shard_names.MANIFEST)]) == len(SPECS) + 1
    assert not [p for p in direct if os.path.basename(p).startswith(storage.TMP_PREFIX)]
    for path in local:
        assert direct[path] == local[path], path
    for spec in SPECS:  # every shard checks out against the manifest (sha256 per shard)
        assert set(build_write.verify_dataset(os.path.join(direct_root, spec.name)).values()) == {"ok"}


class FailOnce(beam_build.StormRecords):
    """A worker that dies in the middle of one storm, after it has emitted some of its records,
    the first time only (a file counts the attempts)."""
    attempts_file = None

    def process(self, element):
        for n, out in enumerate(super().process(element)):
            yield out
            if n == 3 and element[0] == 1:
                with open(self.attempts_file, "a") as f:
                    f.write("attempt\n")
                if open(self.attempts_file).read().count("attempt") == 1:
                    raise RuntimeError("injected worker failure")


class FailAlways(beam_build.StormRecords):
    def process(self, element):
        for n, out in enumerate(super().process(element)):
            yield out
            if n == 3 and element[0] == 1:
                raise RuntimeError("injected worker failure")


def test_a_retried_worker_leaves_the_output_identical(cv_dir, local_root, tmp_path):
    """Beam's bundle-based DirectRunner retries a failed bundle as a cluster does: the records
    of the failed attempt are dropped, the retry writes them again, once."""
    FailOnce.attempts_file = str(tmp_path / "attempts")
    out = str(tmp_path / "out")
    specs = frames.parse_specs(DEMO)
    beam_build.build(cv_dir, out, specs, True, BundleBasedDirectRunner(), log=_quiet,
                     storm_records=FailOnce, **OPTIONS)
    assert open(FailOnce.attempts_file).read().count("attempt") == 2  # failed, then retried
    local = _tree(local_root)
    assert _tree(out) == {p: b for p, b in local.items()
                          if p.split(os.sep)[0] in [s.name for s in specs] + [shard_names.STORE_DIR]}


def test_a_failed_pipeline_leaves_nothing_and_its_rerun_completes(cv_dir, local_root, tmp_path):
    """Beam's FnApiRunner does not retry a failed bundle: the pipeline fails, and removes what
    it wrote; the re-run writes the same bytes as the local builder."""
    out = str(tmp_path / "out")
    specs = frames.parse_specs(["single", "sequence:n6:s1"])
    with pytest.raises(Exception, match="injected worker failure"):
        beam_build.build(cv_dir, out, specs, True, "DirectRunner", IN_MEMORY, log=_quiet,
                         storm_records=FailAlways, **OPTIONS)
    assert _tree(out) == {}
    beam_build.build(cv_dir, out, specs, True, "DirectRunner", IN_MEMORY, log=_quiet, **OPTIONS)
    local = _tree(local_root)
    assert _tree(out) == {p: b for p, b in local.items()
                          if p.split(os.sep)[0] in [s.name for s in specs] + [shard_names.STORE_DIR]}


def test_beam_completes_a_local_build(cv_dir, local_root, tmp_path):
    """Either builder resumes the other's output: missing or damaged shards are rewritten (and
    must come out with the manifest's sha256), the manifest is kept."""
    out = str(tmp_path / "out")
    spec = frames.DatasetSpec.parse("mean:s2")
    for name in (spec.name, shard_names.STORE_DIR):
        shutil.copytree(os.path.join(local_root, name), os.path.join(out, name))
    os.remove(os.path.join(out, spec.name, "fold.1.tfrecord-00000-of-00002"))
    with open(os.path.join(out, spec.name, "test.tfrecord-00001-of-00002"), "r+b") as f:
        f.write(b"damage")
    os.remove(os.path.join(out, shard_names.STORE_DIR, "frames.tfrecord-00001-of-00002"))
    manifests = beam_build.build(cv_dir, out, [spec], True, "DirectRunner", IN_MEMORY, log=_quiet,
                                 **OPTIONS)
    local = _tree(local_root)
    assert _tree(out) == {p: b for p, b in local.items() if p.split(os.sep)[0] in (spec.name, shard_names.STORE_DIR)}
    assert manifests[0] == json.loads(local[os.path.join(spec.name, shard_names.MANIFEST)])


def test_a_storm_of_another_frame_size_is_named_as_locally_and_nothing_is_left(cv_dir, tmp_path):
    """The frame size is checked across storms, which different workers compute."""
    data = str(tmp_path / "data")
    shutil.copytree(cv_dir, data)
    table = build_plan.load_frame_table(data)
    last = table[table["storm_id"] == table["storm_id"].max()]
    for path in last["image_path"]:
        Image.new("L", (20, 24)).save(path, format="JPEG")
    error = (rf"{last['image_path'].iloc[0]} \(storm '{last['storm_id'].iloc[0]}'\): frame size "
             rf"20x24 differs from 24x24 of {table['image_path'].iloc[0]}")
    out = str(tmp_path / "out")
    with pytest.raises(Exception, match=error):
        beam_build.build(data, out, frames.parse_specs(["single"]), False, "DirectRunner", IN_MEMORY,
                         log=_quiet, **OPTIONS)
    assert _tree(out) == {}


def test_gcs_data_and_output(cv_dir, local_root, gcs_emulator):
    """Frames read from and shards written to Cloud Storage (the emulator), by the workers,
    through `tpuflow.storage`: the same objects as the local files."""
    bucket = gcs_emulator.create_bucket()
    data, out = bucket + "/raw", bucket + "/records"
    for path in glob.glob(os.path.join(cv_dir, "**", "*"), recursive=True):
        if os.path.isfile(path):
            storage.write_bytes(storage.join(data, os.path.relpath(path, cv_dir)),
                                open(path, "rb").read())
    specs = frames.parse_specs(["single", "stacked:s2"])
    beam_build.build(data, out, specs, True, "DirectRunner", IN_MEMORY, log=_quiet, **OPTIONS)
    for name in [s.name for s in specs] + [shard_names.STORE_DIR]:
        listed = sorted(storage.listdir(storage.join(out, name)))
        assert listed == sorted(os.listdir(os.path.join(local_root, name)))
        for file in listed:
            assert storage.read_bytes(storage.join(out, name, file)) == \
                open(os.path.join(local_root, name, file), "rb").read(), file


def test_beam_flags_need_a_beam_runner_and_misspelt_flags_are_refused(cv_dir, tmp_path):
    script = os.path.join(ROOT, "data_prep", "create_tfrecords.py")
    base = [sys.executable, script, f"--data_dir={cv_dir}", f"--out_dir={tmp_path}"]
    local = subprocess.run(base + ["--project=p"], capture_output=True, text=True)
    assert local.returncode == 2 and "need a Beam --runner" in local.stderr
    typo = subprocess.run(base + ["--runner=DirectRunner", "--shard_per_fold=2"],
                          capture_output=True, text=True)
    assert typo.returncode == 2 and "--shard_per_fold" in typo.stderr.splitlines()[-2]
    assert not os.listdir(tmp_path)
    with pytest.raises(ValueError, match="needs --temp_location"):  # before any work
        beam_build.pipeline_options("DataflowRunner", ["--project=p", "--region=us-central1"], 1)
