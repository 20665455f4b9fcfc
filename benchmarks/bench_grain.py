"""Usage: pip install grain; python benchmarks/bench_grain.py [--size=366] [--dim=366] [--storms=3]
    [--kinds=stacked:s5,sequence:n24:s1] [--batch_size=8] [--batches=8]

tf.data or Grain for assembling examples from the frame store? Both give a global shuffle and exact resume
(Grain: `MapDataset.shuffle` and its iterator state; tf.data here: `index_shuffle` over example
positions). This measures what decides between them on a TPU host: input examples/s of the same
examples (same frames assembled by `assembly.Assembly`, resized to `--dim`, batched), in one run:

- tf.data: `Assembly.train_dataset` (decode and assembly as TensorFlow ops on tf.data's threads);
- Grain: `MapDataset.range(N).shuffle(seed).map(assemble).batch()`, read with Grain's threads,
  where assemble decodes the example's frames with PIL and averages/stacks/resizes them in NumPy.

Grain is not a tpuflow dependency: this benchmark exists to justify the choice.
"""
from __future__ import annotations

import io
import os
import tempfile
import time

import numpy as np
from PIL import Image

from tpuflow.inputs import assembly, records  # first: --backend
from tpuflow.prep import frames, shard_names, split, store, synthetic
from tpuflow.training.throughput import input_rate

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 366, "Synthetic frame size (px)")
flags.DEFINE_integer("dim", 366, "Model input size")
flags.DEFINE_integer("storms", 3, "Synthetic storms (20-40 frames each)")
flags.DEFINE_list("kinds", ["stacked:s5", "sequence:n24:s1"], "Specs to time")
flags.DEFINE_integer("batch_size", 8, "Batch size")
flags.DEFINE_integer("batches", 8, "Timed batches (after one warm-up batch)")
flags.DEFINE_integer("threads", 2, "Grain read threads (tf.data: AUTOTUNE)")


def grain_dataset(assembled: assembly.Assembly, rows: np.ndarray, dim: int, batch: int, threads: int):
    import grain.python as grain

    def assemble(row):
        starts, stops = assembled.starts[row], assembled.stops[row]
        decoded = {}
        for r in range(starts.min(), stops.max()):
            if assembled.spec.kind == "mean" or r in starts:
                with Image.open(io.BytesIO(assembled.store.frames[r])) as im:
                    decoded[r] = np.asarray(im.convert("L"), np.int32)
        slots = [sum(decoded[r] for r in range(a, b)) // (b - a) for a, b in zip(starts, stops)]
        resized = [np.asarray(Image.fromarray(s.astype(np.uint8)).resize((dim, dim), Image.BILINEAR)) for s in slots]
        label = assembled.store.table["label"].iat[row]
        return np.stack(resized, axis=0 if assembled.spec.kind == "sequence" else -1), label

    ds = grain.MapDataset.range(len(rows)).shuffle(seed=0).repeat().map(lambda i: assemble(rows[i]))
    ds = ds.batch(batch).to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * batch))
    return iter(ds)


def main(argv):
    del argv
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' work slows every figure)")
    with tempfile.TemporaryDirectory() as work:
        raw = os.path.join(work, "raw")
        synthetic.make_synthetic(raw, synthetic.SyntheticConfig(seed=0, size=FLAGS.size, n_storms=FLAGS.storms,
                                                                n_test_only_storms=0, min_frames=20, max_frames=40))
        split.write_cv_split(raw, *split.create_cv_split(raw, n_folds=2, seed=33))
        store.build_store(raw, work, workers=2, log=lambda m: None)
        frame_store = store.load_store(os.path.join(work, shard_names.STORE_DIR))
        for text in FLAGS.kinds:
            spec = frames.DatasetSpec.parse(text)
            assembled = assembly.Assembly(frame_store, spec, frame_cache="off")
            if spec.kind == "sequence":
                parse = lambda ex: (records.parse_sequence(ex, spec.depth, FLAGS.dim)["image"], ex["label"])  # noqa: E731
            else:
                parse = lambda ex: (records.parse_image(ex, spec.channels, FLAGS.dim)["image"], ex["label"])  # noqa: E731
            tf_rate = input_rate(assembled.train_dataset([1], parse, FLAGS.batch_size, seed=0, fold=0),
                                 FLAGS.batches, FLAGS.batch_size)
            it = grain_dataset(assembled, assembled.train_rows([1]), FLAGS.dim, FLAGS.batch_size, FLAGS.threads)
            next(it)
            started = time.perf_counter()
            for _ in range(FLAGS.batches):
                next(it)
            grain_rate = FLAGS.batches * FLAGS.batch_size / (time.perf_counter() - started)
            print(f"assembled={spec}: tf.data {tf_rate:.1f} ex/s, Grain {grain_rate:.1f} ex/s, "
                  f"tf.data/Grain {tf_rate / grain_rate:.2f}x", flush=True)


if __name__ == "__main__":
    app.run(main)
