"""Usage: python benchmarks/bench_build.py [--n_storms=8] [--frames=60] [--workers=0] [--work_dir=/tmp]
                                          [--nodirect_runner]

Builds the reference batch of 15 datasets (data_prep/reference_specs.txt) from synthetic
366x366 storms two ways, in one run:

(a) baseline, the straightforward way the reference scripts worked: one dataset at a time, in
    one process; for every example, read (and for stacked/mean decode) every frame it needs,
    write an intermediate per-example file (a copy of each frame for single/sequence, the
    encoded image for stacked/mean), then pack those files into TFRecords with TensorFlow;
(b) `tpuflow.prep.builder`: one pass over the storms for many datasets, `--workers` processes.

(b) runs once per kind (that kind's datasets in one pass) and once for the whole batch;
(c) `tpuflow.prep.beam_build` on Beam's DirectRunner (multi-process, `--workers` worker processes)
    builds the whole batch too, and must write the same shards as (b).
Printed: examples/s (examples of all datasets of the kind), MB/s of records written, peak
resident memory (parent; and the largest worker for (b)) and the ratio (a)/(b) of wall times,
per kind and in total. Every dataset of (a) is checked against (b): the same examples in the
same order with byte-identical images (hence identical decoded pixels), and the whole-batch
pass must give the same shard checksums as the per-kind passes.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from tpuflow import storage
from tpuflow.inputs import frame_cache
from tpuflow.prep import build_encode, build_plan, builder, frames, recordio, shard_names, split, synthetic

FLAGS = flags.FLAGS
# Peak memory of the DirectRunner (launcher + workers) per byte of records written, measured
# (~6x in the launcher, which groups every record by shard, plus the workers), with headroom.
DIRECT_RUNNER_BYTES_PER_RECORD_BYTE = 10
flags.DEFINE_integer("n_storms", 8, "Training storms (one more test-only storm is added)")
flags.DEFINE_integer("frames", 60, "Frames per storm")
flags.DEFINE_integer("size", 366, "Frame size in pixels")
flags.DEFINE_integer("workers", 0, "Worker processes of the one-pass builder (0: all cores)")
flags.DEFINE_string("work_dir", None, "Scratch dir (default: system temp); needs a few GB")
flags.DEFINE_string("spec_file", os.path.join(os.path.dirname(__file__), "..", "data_prep",
                                              "reference_specs.txt"), "Specs to build")
flags.DEFINE_bool("direct_runner", True, "Also build the whole batch on Beam's DirectRunner (c)")
flags.DEFINE_string("child", None, "Internal: run one measured build (json) and print json")

KINDS = ("single", "stacked", "mean", "sequence")


# ---------------------------------------------------------------------------------------------
# (a) the baseline


def _stage_example(spec, paths, t, stage_dir, image_id, encoding, quality) -> None:
    """Stage 1 of the baseline: one example's intermediate file(s), reading every frame it needs."""
    slots = frames.frame_indices(spec, t)
    if spec.kind in ("single", "sequence"):
        os.makedirs(os.path.join(stage_dir, image_id))
        for k, (i,) in enumerate(slots):
            shutil.copyfile(paths[i], os.path.join(stage_dir, image_id, f"{k:03d}.jpg"))
        return
    import numpy as np

    channels = []
    for run in slots:
        stack = np.stack([build_encode.decode_frame(storage.read_bytes(paths[i]), paths[i]) for i in run])
        channels.append(np.floor(stack.mean(axis=0) + 0.5).astype(np.uint8))
    with open(os.path.join(stage_dir, image_id + ".img"), "wb") as f:
        f.write(build_encode.encode_image(np.stack(channels, axis=-1), encoding, quality))


def baseline_dataset(data_dir: str, spec, out_dir: str, stage_dir: str, shards_per_fold: int,
                     encoding: str, quality: int) -> None:
    """One dataset the reference's way: per-example files, then packing with TensorFlow."""
    import tensorflow as tf

    table = build_plan.load_frame_table(data_dir)
    for _, storm in table.groupby("storm_id", sort=True):
        paths = storm["image_path"].tolist()
        for t, image_id in enumerate(storm["image_id"]):
            _stage_example(spec, paths, t, stage_dir, image_id, encoding, quality)
    os.makedirs(out_dir, exist_ok=True)
    table["example_index"] = build_plan.example_order(table, 0)  # the builder's record order
    for prefix, rows in table.groupby("prefix", sort=True):
        rows = rows.sort_values("example_index")
        n = min(shards_per_fold, len(rows))
        for i, (a, b) in enumerate(recordio.shard_bounds(len(rows), n)):
            with tf.io.TFRecordWriter(os.path.join(out_dir, shard_names.shard_name(prefix, i, n))) as w:
                for row in rows.iloc[a:b].itertuples():
                    if spec.kind in ("single", "sequence"):
                        folder = os.path.join(stage_dir, row.image_id)
                        images = [storage.read_bytes(os.path.join(folder, name))
                                  for name in sorted(os.listdir(folder))]
                    else:
                        images = [storage.read_bytes(os.path.join(stage_dir, row.image_id + ".img"))]
                    features = {**build_encode.example_features(row), "image": images}
                    w.write(tf.train.Example(features=tf.train.Features(feature={
                        k: _tf_feature(tf, v) for k, v in features.items()})).SerializeToString())


def _tf_feature(tf, value):
    values = value if isinstance(value, list) else [value]
    if isinstance(values[0], (bytes, str)):
        return tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[v.encode() if isinstance(v, str) else v for v in values]))
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


# ---------------------------------------------------------------------------------------------
# Measured runs, each in a fresh process so that peak memory is its own


def _child(job: dict) -> dict:
    """Runs one measured build and returns times, bytes written and peak memory."""
    specs = [frames.DatasetSpec.parse(s) for s in job["specs"]]
    times = {}
    if job["mode"] == "onepass":
        started = time.perf_counter()
        builder.build_datasets(job["data_dir"], job["out_dir"], specs, job["shards_per_fold"],
                               workers=job["workers"], log=lambda _: None)
        times["all"] = time.perf_counter() - started
    elif job["mode"] == "beam":
        from tpuflow.prep import beam_build

        started = time.perf_counter()
        beam_build.build(job["data_dir"], job["out_dir"], specs, False, "DirectRunner",
                         [f"--direct_num_workers={job['workers']}"], job["shards_per_fold"],
                         workers=job["workers"], log=lambda _: None)
        times["all"] = time.perf_counter() - started
    else:
        import tensorflow  # noqa: F401  (imported before the clock starts: a one-off cost)

        os.makedirs(job["out_dir"], exist_ok=True)
        for spec in specs:
            stage = tempfile.mkdtemp(dir=job["out_dir"], prefix="stage-")
            started = time.perf_counter()
            baseline_dataset(job["data_dir"], spec, os.path.join(job["out_dir"], spec.name), stage,
                             job["shards_per_fold"], "jpeg", 95)
            times[spec.to_string()] = time.perf_counter() - started
            shutil.rmtree(stage)
    # VmHWM: this process's peak since its exec (ru_maxrss would include the forking parent's).
    with open("/proc/self/status") as f:
        hwm_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return {"times": times, "bytes": _tree_bytes(job["out_dir"]), "rss_self_mb": hwm_kb / 1024,
            "rss_child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def _tree_bytes(root: str) -> int:
    return sum(os.path.getsize(p) for d, _, _ in os.walk(root) for p in shard_names.shard_files(d))


def _measure(job: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, f"--child={json.dumps(job)}"],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measured run {job['mode']} {job['specs']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _read_dataset(directory: str) -> dict:
    """{shard prefix: [(image_id, [image bytes...]), ...]} in record order."""
    from tensorflow.core.example import example_pb2

    out = {}
    for name in sorted(os.listdir(directory)):
        shard = shard_names.parse_shard_name(name)
        if shard is None:
            continue
        prefix = shard.prefix
        with open(os.path.join(directory, name), "rb") as f:
            for record in recordio.read_records(f, name):
                ex = example_pb2.Example.FromString(record).features.feature
                out.setdefault(prefix, []).append((ex["image_id"].bytes_list.value[0],
                                                   list(ex["image"].bytes_list.value)))
    return out


# ---------------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    del argv
    if FLAGS.child:
        print(json.dumps(_child(json.loads(FLAGS.child))))
        return
    specs = frames.parse_specs(storage.read_text(FLAGS.spec_file).splitlines())
    workers = FLAGS.workers or os.cpu_count()
    work = tempfile.mkdtemp(dir=FLAGS.work_dir, prefix="build-bench-")
    try:
        data = os.path.join(work, "data")
        config = synthetic.SyntheticConfig(seed=0, size=FLAGS.size, n_storms=FLAGS.n_storms,
                                           n_test_only_storms=1, min_frames=FLAGS.frames,
                                           max_frames=FLAGS.frames)
        synthetic.make_synthetic(data, config)
        split.write_cv_split(data, *split.create_cv_split(data, n_folds=5, seed=33))
        table = build_plan.load_frame_table(data)
        n_frames = len(table)
        source_mb = table["image_path"].map(os.path.getsize).sum() / 2**20
        print(f"{n_frames} frames of {FLAGS.size}x{FLAGS.size} in {table['storm_id'].nunique()} "
              f"storms ({source_mb:.0f} MB of JPEG); {len(specs)} datasets; one-pass workers={workers}")
        base = {"data_dir": data, "shards_per_fold": 2, "workers": workers}
        rows, kind_sha = [], {}
        for kind in KINDS:
            group = [s for s in specs if s.kind == kind]
            if not group:
                continue
            names = [s.to_string() for s in group]
            ours_dir, ref_dir = os.path.join(work, f"ours-{kind}"), os.path.join(work, f"ref-{kind}")
            ours = _measure({**base, "mode": "onepass", "specs": names, "out_dir": ours_dir})
            ref = {"times": {}, "bytes": 0, "rss_self_mb": 0.0}
            for spec in group:  # one dataset at a time, checked, then deleted (disk)
                one = _measure({**base, "mode": "baseline", "specs": [spec.to_string()],
                                "out_dir": ref_dir})
                ref["times"].update(one["times"])
                ref["bytes"] += one["bytes"]
                ref["rss_self_mb"] = max(ref["rss_self_mb"], one["rss_self_mb"])
                same = _read_dataset(os.path.join(ref_dir, spec.name)) == \
                    _read_dataset(os.path.join(ours_dir, spec.name))
                print(f"  {spec}: baseline {one['times'][spec.to_string()]:.1f} s; same examples, "
                      f"same order, byte-identical images: {same}")
                if not same:
                    raise SystemExit(f"{spec}: baseline and one-pass records differ")
                shutil.rmtree(ref_dir)
            for spec in group:
                kind_sha[spec.name] = records_sha(os.path.join(ours_dir, spec.name))
            shutil.rmtree(ours_dir)
            rows.append((kind, len(group) * n_frames, sum(ref["times"].values()), ref["bytes"],
                         ref["rss_self_mb"], ours["times"]["all"], ours["bytes"],
                         ours["rss_self_mb"], ours["rss_child_mb"]))
        all_dir = os.path.join(work, "ours-all")
        ours = _measure({**base, "mode": "onepass", "specs": [s.to_string() for s in specs],
                         "out_dir": all_dir})
        same = all(records_sha(os.path.join(all_dir, s.name)) == kind_sha[s.name] for s in specs)
        print(f"  whole batch in one pass: same shard checksums as the per-kind passes: {same}")
        if not same:
            raise SystemExit("whole-batch and per-kind passes differ")
        rows.append(("total", len(specs) * n_frames, sum(r[2] for r in rows), sum(r[3] for r in rows),
                     max(r[4] for r in rows), ours["times"]["all"], ours["bytes"],
                     ours["rss_self_mb"], ours["rss_child_mb"]))
        _report(rows)
        if FLAGS.direct_runner:
            _report_beam(base, specs, n_frames, ours, os.path.join(work, "beam-all"), kind_sha)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _report_beam(base: dict, specs, n_frames: int, ours: dict, out_dir: str, kind_sha: dict) -> None:
    """(c): the whole batch on the DirectRunner against the local one-pass build (b)."""
    need, free = DIRECT_RUNNER_BYTES_PER_RECORD_BYTE * ours["bytes"], frame_cache.available_bytes()
    if need > free / 2:  # it groups every record in memory: on a big batch it would be OOM-killed
        print(f"  (c) skipped: the DirectRunner would hold ~{need / 2**30:.1f} GiB for "
              f"{ours['bytes'] / 2**30:.1f} GiB of records, more than half the {free / 2**30:.1f} GiB "
              "available; use fewer --n_storms/--frames, or --nodirect_runner")
        return
    beam = _measure({**base, "mode": "beam", "specs": [s.to_string() for s in specs],
                     "out_dir": out_dir})
    same = all(records_sha(os.path.join(out_dir, s.name)) == kind_sha[s.name] for s in specs)
    print(f"  whole batch on Beam's DirectRunner: same shard checksums as the one-pass builder: {same}")
    if not same:
        raise SystemExit("DirectRunner and one-pass builds differ")
    n = len(specs) * n_frames
    print(f"{'whole batch':22s} {'examples/s':>10s} {'MB/s':>6s} {'peak MB parent + largest child':>31s}")
    for name, run in (("one-pass (local)", ours), ("Beam DirectRunner", beam)):
        t = run["times"]["all"]
        print(f"{name:22s} {n / t:10.0f} {run['bytes'] / 2**20 / t:6.0f} "
              f"{run['rss_self_mb']:14.0f} + {run['rss_child_mb']:14.0f}")
    print(f"DirectRunner / one-pass wall time: {beam['times']['all'] / ours['times']['all']:.1f}x")


def records_sha(directory: str) -> dict:
    return storage.read_json(os.path.join(directory, shard_names.MANIFEST))["sha256"]


def _report(rows) -> None:
    print(f"{'kind':9s} {'examples':>8s} | {'baseline ex/s':>13s} {'MB/s':>6s} {'peak MB':>7s} | "
          f"{'one-pass ex/s':>13s} {'MB/s':>6s} {'peak MB parent+worker':>21s} | {'ratio':>6s}")
    for kind, n, t_ref, b_ref, m_ref, t_ours, b_ours, m_parent, m_worker in rows:
        print(f"{kind:9s} {n:8d} | {n / t_ref:13.0f} {b_ref / 2**20 / t_ref:6.0f} {m_ref:7.0f} | "
              f"{n / t_ours:13.0f} {b_ours / 2**20 / t_ours:6.0f} {m_parent:11.0f} + {m_worker:7.0f} | "
              f"{t_ref / t_ours:5.1f}x")


if __name__ == "__main__":
    app.run(main)
