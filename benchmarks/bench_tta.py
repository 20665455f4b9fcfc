"""Usage: python benchmarks/bench_tta.py [--size=366] [--dim=366] [--storms=2]
    [--kinds=single,sequence:n6:s1] [--batch_size=16] [--tta=10] [--repeats=3] [--nojit_compile]

Prediction input rate for `--tta` TTA views, as `runner.predict_split` runs it: one pass (each
example read, decoded and parsed once; `ondevice.tta_model` makes its views on the accelerator)
against one pass per view (`pipeline.predict_dataset(..., tta_index=t)`: each example read and
decoded `--tta` times, the view made on the host), on the same prebuilt records of synthetic
storms and on examples assembled from a frame store for each kind, in one run: views/s the host delivers,
each pipeline timed alone (`--repeats` times, alternating; medians and the range of ratios).

There is no accelerator here, so what the device does is printed apart: the cost per example
of making the views in the compiled predict step (XLA on this CPU, a model that is a global
average pool, less the same model without views), and the end-to-end rate of both paths on
this CPU standing in for the accelerator (`--nojit_compile`: Keras' CPU default, uncompiled).
That last figure is not the input rate: the one-pass path then spends most of its time making
the views on the same two cores that read the input (~20-55 ms per 6-frame 366 px example for
ten views, against ~2 ms of input assembled from the store, ~6 ms for records), which an accelerator does in
its own step.
"""
from __future__ import annotations

import os
import tempfile
import time

from tpuflow.inputs import assembly, augment, ondevice, pipeline, records  # first: --backend
from tpuflow.prep import builder, frames, shard_names, split, store, synthetic
from tpuflow.training import hosts

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
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


def read(ds) -> float:
    """Seconds to take every batch of a fresh pipeline (the input alone)."""
    started = time.perf_counter()
    for _ in ds:
        pass
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
            predictor = ondevice.tta_model(model, names)
            files = records.record_files(os.path.join(work, spec.name), [0, 1])
            n = len(records.read_ids(files))
            assembled = assembly.Assembly(frame_store, spec, frame_cache="memory")
            rows = assembled.split_rows(0)
            sources = {"records": (n, lambda t: pipeline.predict_dataset(files, parse, FLAGS.batch_size, n, t)),
                       "assembled": (len(rows), lambda t: assembled.predict_dataset(rows, parse, FLAGS.batch_size, t))}
            for source, (count, dataset) in sources.items():
                total = count * len(names)
                read(dataset(0)), read(dataset(1))  # warm-up: traces both paths (and builds the assembly's cache)
                ones, tens = [], []
                for _ in range(FLAGS.repeats):  # alternated, so that a change of load hits both
                    ones.append(read(dataset(0)))
                    tens.append(sum(read(dataset(t)) for t in range(len(names))))
                one, passes = float(np.median(ones)), float(np.median(tens))
                ratios = sorted(t / o for o, t in zip(ones, tens))
                print(f"kind={spec} {source}: {count} examples x {len(names)} TTA views: input one pass {total / one:.1f} "
                      f"views/s, {len(names)} passes {total / passes:.1f} views/s, one/ten {passes / one:.2f}x "
                      f"(medians of {FLAGS.repeats}; ratios {ratios[0]:.2f}-{ratios[-1]:.2f}x)", flush=True)
                batches = tf.data.Dataset.from_tensor_slices(tf.concat(list(dataset(0)), 0)).batch(FLAGS.batch_size)
                timed(predictor, batches), timed(model, dataset(1))  # warm-up: compiles both predict steps
                device = [timed(predictor, batches) - timed(model, batches) for _ in range(FLAGS.repeats)]
                ends, tens = [], []
                for _ in range(FLAGS.repeats):
                    ends.append(timed(predictor, dataset(0)))
                    tens.append(sum(timed(model, dataset(t)) for t in range(len(names))))
                end, passes = float(np.median(ends)), float(np.median(tens))
                print(f"kind={spec} {source}: on this CPU standing in for the accelerator: the device's {len(names)} "
                      f"views {max(0.0, float(np.median(device))) / pipeline.padded_count(count, FLAGS.batch_size) * 1e3:.1f} ms per example; "
                      f"end to end one pass "
                      f"{total / end:.1f} views/s, {len(names)} passes {total / passes:.1f} views/s, one/ten "
                      f"{passes / end:.2f}x", flush=True)


if __name__ == "__main__":
    app.run(main)
