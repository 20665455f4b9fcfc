"""Usage: python benchmarks/bench_tta.py [--size=366] [--dim=366] [--storms=2]
    [--kinds=single,sequence:n6:s1] [--batch_size=16] [--tta=10]

Prediction input for `--tta` TTA views: one pass (`pipeline.predict_tta_dataset`: each record
read and decoded once, all views made from it) against one pass per view
(`pipeline.predict_dataset` once per TTA index, the runner's former loop), on the same prebuilt
records of synthetic storms, in one run. Prints view-examples/s of each and the ratio.
Input only (no model): what changes between the two is the reading and decoding.
"""
from __future__ import annotations

import os
import tempfile
import time

from tpuflow import builder, frames, pipeline, records, split, synthetic  # first: --backend

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 366, "Synthetic frame size (px)")
flags.DEFINE_integer("dim", 366, "Model input size")
flags.DEFINE_integer("storms", 2, "Synthetic storms (20-40 frames each)")
flags.DEFINE_list("kinds", ["single", "sequence:n6:s1"], "Kinds to time")
flags.DEFINE_integer("batch_size", 16, "Batch size")
flags.DEFINE_integer("tta", 10, "TTA views (1..10)")


def drain(ds: tf.data.Dataset) -> float:
    started = time.perf_counter()
    for _ in ds:
        pass
    return time.perf_counter() - started


def main(argv):
    del argv
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' work slows every figure)")
    specs = [frames.DatasetSpec.parse(k) for k in FLAGS.kinds]
    with tempfile.TemporaryDirectory() as work:
        raw = os.path.join(work, "raw")
        synthetic.make_synthetic(raw, synthetic.SyntheticConfig(seed=0, size=FLAGS.size, n_storms=FLAGS.storms,
                                                                n_test_only_storms=0, min_frames=20, max_frames=40))
        split.write_cv_split(raw, *split.create_cv_split(raw, n_folds=2, seed=33))
        builder.build_datasets(raw, work, specs, workers=2, log=lambda m: None)
        for spec in specs:
            if spec.kind == "sequence":
                parse = lambda s, spec=spec: (records.parse_sequence(s, spec.depth, FLAGS.dim)["image"], 0)  # noqa: E731
            else:
                parse = lambda s, spec=spec: (records.parse_image(s, spec.channels, FLAGS.dim)["image"], 0)  # noqa: E731
            files = records.record_files(os.path.join(work, spec.name), [0, 1])
            n = len(records.read_ids(files))
            one = drain(pipeline.predict_tta_dataset(files, parse, FLAGS.batch_size, n, FLAGS.tta))
            passes = sum(drain(pipeline.predict_dataset(files, parse, FLAGS.batch_size, n, t)) for t in range(FLAGS.tta))
            views = n * FLAGS.tta
            print(f"kind={spec}: {n} examples x {FLAGS.tta} TTA views: one pass {views / one:.1f} views/s, "
                  f"{FLAGS.tta} passes {views / passes:.1f} views/s, one/ten {passes / one:.2f}x", flush=True)


if __name__ == "__main__":
    app.run(main)
