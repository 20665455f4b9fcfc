"""Usage: python benchmarks/bench_tta.py [--size=366] [--dim=366] [--storms=2]
    [--kinds=single,sequence:n6:s1] [--batch_size=16] [--tta=10] [--repeats=3] [--nojit_compile]

Prediction of `--tta` TTA views, as `runner.predict_split` runs it: one pass (each example read
and decoded once; `augment.tta_model` makes the views in the compiled predict step) against one
pass per view (`pipeline.predict_dataset(..., tta_index=t)`: views made on the host, each example
read and decoded `--tta` times), on the same prebuilt records of synthetic storms (and on a view
of a frame store for each kind), in one run. The model is a global average pool, so what is
timed is input and view making, not a network. Prints views/s of each and the ratio.
Without an accelerator the "device" work runs on the same CPUs as the input pipeline, compiled
by XLA as an accelerator's would be (`--nojit_compile`: Keras' CPU default, uncompiled).
"""
from __future__ import annotations

import os
import tempfile
import time

from tpuflow import augment, builder, frames, hosts, pipeline, records, shard_names, split, store, synthetic, views  # first: --backend

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 366, "Synthetic frame size (px)")
flags.DEFINE_integer("dim", 366, "Model input size")
flags.DEFINE_integer("storms", 2, "Synthetic storms (20-40 frames each)")
flags.DEFINE_list("kinds", ["single", "sequence:n6:s1"], "Kinds to time")
flags.DEFINE_integer("batch_size", 16, "Batch size")
flags.DEFINE_integer("tta", 10, "TTA views (1..10)")
flags.DEFINE_integer("repeats", 3, "Timings of each path, alternating; the medians are compared")
flags.DEFINE_boolean("jit_compile", True, "Compile the predict steps with XLA (both paths), as on an accelerator")


def probe(shape) -> keras.Model:
    """A weight-free model: the mean of each example (so the timing is the input and the views)."""
    inputs = keras.Input(shape)
    pool = keras.layers.GlobalAveragePooling3D() if len(shape) == 4 else keras.layers.GlobalAveragePooling2D()
    model = keras.Model(inputs, pool(inputs))
    model.jit_compile = FLAGS.jit_compile
    return model


def timed(model, ds) -> float:
    started = time.perf_counter()
    hosts.predict(model, ds, FLAGS.batch_size)
    return time.perf_counter() - started


def main(argv):
    del argv
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' work slows every figure); "
          f"backend {keras.backend.backend()}")
    specs = [frames.DatasetSpec.parse(k) for k in FLAGS.kinds]
    names = augment.REFERENCE_VIEWS[: FLAGS.tta]
    with tempfile.TemporaryDirectory() as work:
        raw = os.path.join(work, "raw")
        synthetic.make_synthetic(raw, synthetic.SyntheticConfig(seed=0, size=FLAGS.size, n_storms=FLAGS.storms,
                                                                n_test_only_storms=0, min_frames=20, max_frames=40))
        split.write_cv_split(raw, *split.create_cv_split(raw, n_folds=2, seed=33))
        builder.build_datasets(raw, work, specs, workers=2, log=lambda m: None)
        store.build_store(raw, work, workers=2, log=lambda m: None)
        frame_store = store.load_store(os.path.join(work, shard_names.STORE_DIR))
        for spec in specs:
            if spec.kind == "sequence":
                parse = lambda s, spec=spec: (records.parse_sequence(s, spec.depth, FLAGS.dim)["image"], 0)  # noqa: E731
                shape = (spec.depth, FLAGS.dim, FLAGS.dim, 1)
            else:
                parse = lambda s, spec=spec: (records.parse_image(s, spec.channels, FLAGS.dim)["image"], 0)  # noqa: E731
                shape = (FLAGS.dim, FLAGS.dim, spec.channels)
            model = probe(shape)
            predictor = augment.tta_model(model, names)
            files = records.record_files(os.path.join(work, spec.name), [0, 1])
            n = len(records.read_ids(files))
            view = views.View(frame_store, spec, frame_cache="memory")
            rows = view.split_rows(0)
            sources = {"records": (n, lambda t: pipeline.predict_dataset(files, parse, FLAGS.batch_size, n, t)),
                       "view": (len(rows), lambda t: view.predict_dataset(rows, parse, FLAGS.batch_size, t))}
            for source, (count, dataset) in sources.items():
                timed(predictor, dataset(0))  # warm-up: traces and compiles both paths
                timed(model, dataset(1))
                ones, tens = [], []
                for _ in range(FLAGS.repeats):  # alternated, so that a change of load hits both
                    ones.append(timed(predictor, dataset(0)))
                    tens.append(sum(timed(model, dataset(t)) for t in range(len(names))))
                one, passes = float(np.median(ones)), float(np.median(tens))
                total = count * len(names)
                print(f"kind={spec} {source}: {count} examples x {len(names)} TTA views: one pass (views on the "
                      f"device) {total / one:.1f} views/s, {len(names)} passes (views on the host) "
                      f"{total / passes:.1f} views/s, one/ten {passes / one:.2f}x (medians of {FLAGS.repeats})",
                      flush=True)


if __name__ == "__main__":
    app.run(main)
