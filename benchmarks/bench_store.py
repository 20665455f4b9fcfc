"""Usage: python benchmarks/bench_store.py [--size=366] [--storms=4] [--dim=366]
    [--kinds=single,stacked:s5,mean:s10,sequence:n24:s1] [--batch_size=8] [--input_batches=6] [--repeats=3]
    [--spec_file=data_prep/reference_specs.txt] [--workers=2] [--frame_cache=memory]

Prebuilt records against the same examples assembled from one frame store, both measured in this run on the
same synthetic storms (`--size` px frames, `--storms` storms of 20-40 frames):

- bytes on disk: the datasets of `--spec_file` (the reference's 15) written by the one-pass
  builder, against one store (`create_tfrecords.py --specs=frames`), and each against the source
  frames' bytes; and the build time of each;
- input examples/s per kind, prebuilt records (`pipeline.train_dataset`) against assembled
  ones (`Assembly.train_dataset`), as training runs them: read, decode, assemble, resize to `--dim`,
  draw each example's augmentation (a transform index), batch; with each pipeline's peak
  resident memory above what the process held before it was made. The augmentation itself runs
  on the accelerator, in the compiled training step (`training.loop.train_model`), so it is not part of
  the input rate: its own cost per example is printed apart, measured on this machine's CPU
  compiled by XLA (on an accelerator it is one more gather-and-select kernel of the step). Assembly reads
  through the decoded-frame cache (`--frame_cache`, `tpuflow.inputs.frame_cache`): its build time is
  printed apart from the steady rate, its bytes are part of the assembly's peak. Use enough storms
  that the cache outgrows the CPU's caches, as the real data's does (16 storms of 366 px: ~60 MiB).

The store is held in host memory (its size is the source frames': 272 MB for the competition's
frames), so its figure is part of the assembly's peak. Timings depend on the machine's load (printed).
"""
from __future__ import annotations

import functools
import os
import tempfile
import time

import numpy as np

from tpuflow.inputs import assembly, ondevice, pipeline, records  # first: --backend
from tpuflow.prep import build_plan, builder, frames, shard_names, split, store, synthetic
from tpuflow.training.throughput import PeakMemory, kind_parser

import keras  # noqa: E402,I001 (after tpuflow, which picks Keras' backend)
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 366, "Synthetic frame size (px); the reference's frames are 366 px")
flags.DEFINE_integer("storms", 4, "Synthetic storms (20-40 frames each)")
flags.DEFINE_integer("dim", 366, "Model input size (examples are resized to it)")
flags.DEFINE_list("kinds", ["single", "stacked:s5", "mean:s10", "sequence:n24:s1"], "Kinds to time")
flags.DEFINE_string("spec_file", os.path.join(os.path.dirname(__file__), "..", "data_prep", "reference_specs.txt"),
                    "Datasets whose bytes are compared with the store ('': skip the bytes comparison)")
flags.DEFINE_enum("frame_cache", "memory", ["auto", "memory", "off"], "The assembly's decoded-frame cache")
flags.DEFINE_integer("batch_size", 8, "Batch size of the timed pipelines")
flags.DEFINE_integer("input_batches", 6, "Timed batches per pipeline and repeat (after one warm-up batch)")
flags.DEFINE_integer("repeats", 3, "Timings per pipeline, alternating prebuilt and assembled; the medians are compared")
flags.DEFINE_float("aug_prob", 0.5, "Training augmentation probability")
flags.DEFINE_integer("workers", 2, "Builder worker processes")
flags.DEFINE_string("work_dir", None, "Where to write the data (default: system temp)")


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


def main(argv):
    del argv
    quiet = lambda message: None  # noqa: E731
    all_specs = frames.parse_specs(open(FLAGS.spec_file).read().splitlines()) if FLAGS.spec_file else []
    kinds = [frames.DatasetSpec.parse(k) for k in FLAGS.kinds]
    specs = all_specs + [k for k in kinds if k not in all_specs]
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' work slows every figure)")
    with tempfile.TemporaryDirectory(dir=FLAGS.work_dir) as work:
        raw = os.path.join(work, "raw")
        synthetic.make_synthetic(raw, synthetic.SyntheticConfig(seed=0, size=FLAGS.size, n_storms=FLAGS.storms,
                                                                n_test_only_storms=0, min_frames=20, max_frames=40))
        split.write_cv_split(raw, *split.create_cv_split(raw, n_folds=2 if FLAGS.storms < 5 else 5, seed=33))
        table = build_plan.load_frame_table(raw)
        source = sum(os.path.getsize(p) for p in table["image_path"])
        started = time.perf_counter()
        builder.build_datasets(raw, work, specs, workers=FLAGS.workers, log=quiet)
        prebuilt_s = time.perf_counter() - started
        started = time.perf_counter()
        store.build_store(raw, work, workers=FLAGS.workers, log=quiet)
        store_s = time.perf_counter() - started
        store_dir = os.path.join(work, shard_names.STORE_DIR)
        sizes = {s: dir_bytes(os.path.join(work, s.name)) for s in specs}
        reference = sum(sizes[s] for s in all_specs)
        print(f"{len(table)} frames of {FLAGS.size} px in {FLAGS.storms} storms: {source / 2**20:.1f} MiB of source frames")
        for s in all_specs:
            print(f"  prebuilt {str(s):16s} {sizes[s] / 2**20:8.1f} MiB  {sizes[s] / source:6.1f}x the source frames")
        if all_specs:
            print(f"bytes: {len(all_specs)} prebuilt datasets {reference / 2**20:.1f} MiB ({reference / source:.1f}x the "
                  f"source frames); one store {dir_bytes(store_dir) / 2**20:.1f} MiB ({dir_bytes(store_dir) / source:.3f}x "
                  f"the source frames); prebuilt/store {reference / dir_bytes(store_dir):.1f}x")
        print(f"build: one-pass builder of {len(specs)} datasets {prebuilt_s:.1f} s, store {store_s:.1f} s "
              f"(builder/store {prebuilt_s / store_s:.1f}x; {FLAGS.workers} workers)")
        if FLAGS.frame_cache != "off":
            print(f"assembled from the decoded-frame cache (--frame_cache={FLAGS.frame_cache}): each frame "
                  "decoded once per process (build time apart), then every slot is a copy")
        n_folds = int(table.loc[table["split"] == "train", "fold_id"].max()) + 1
        train_folds = list(range(1, n_folds))
        for spec in kinds:
            parse = kind_parser(spec, FLAGS.dim)
            files = records.record_files(os.path.join(work, spec.name), train_folds)
            with PeakMemory() as prebuilt_memory:
                prebuilt_rates = [batch_rate(pipeline.train_dataset(files, parse, FLAGS.batch_size,
                                                                    aug_prob=FLAGS.aug_prob, seed=0))]
            with PeakMemory() as assembled_memory:
                assembled = assembly.Assembly(store.load_store(store_dir), spec, frame_cache=FLAGS.frame_cache)
                cache = assembled.cache  # built here, timed apart: the first epoch pays it once per process
                assembled_ds = functools.partial(assembled.train_dataset, train_folds, parse, FLAGS.batch_size,
                                                 seed=0, fold=0, aug_prob=FLAGS.aug_prob)
                assembled_rates = [batch_rate(assembled_ds())]
            for _ in range(FLAGS.repeats - 1):  # alternated, so that a change of load hits both
                prebuilt_rates.append(batch_rate(pipeline.train_dataset(files, parse, FLAGS.batch_size,
                                                                        aug_prob=FLAGS.aug_prob, seed=0)))
                assembled_rates.append(batch_rate(assembled_ds()))
            prebuilt_rate, assembled_rate = np.median(prebuilt_rates), np.median(assembled_rates)
            del assembled, assembled_ds
            cached = (f"cache {cache.nbytes / 2**20:.0f} MiB built in {cache.build_s:.1f} s" if cache else "no cache")
            print(f"kind={spec}: input prebuilt {prebuilt_rate:.1f} ex/s, assembled {assembled_rate:.1f} ex/s, "
                  f"assembled/prebuilt {assembled_rate / prebuilt_rate:.2f}x (medians of {FLAGS.repeats}: prebuilt "
                  f"{', '.join(f'{r:.0f}' for r in prebuilt_rates)}, assembled "
                  f"{', '.join(f'{r:.0f}' for r in assembled_rates)}; "
                  f"{cached}); peak memory prebuilt {prebuilt_memory.peak / 2**20:.0f} MiB, assembled "
                  f"{assembled_memory.peak / 2**20:.0f} MiB (the cache included)", flush=True)
            del cache
            print(f"kind={spec}: device augmentation (aug_prob {FLAGS.aug_prob}) on this CPU, XLA-compiled: "
                  f"{device_cost(pipeline.train_dataset(files, parse, FLAGS.batch_size, aug_prob=FLAGS.aug_prob, seed=0)) * 1e3:.2f} ms per example", flush=True)


def device_cost(ds) -> float:
    """Seconds per example of the training augmentation the device runs (`ondevice.TrainAugment` on
    a batch of `ds`, compiled with XLA), less a compiled pass-through of the same batch (moving
    the batch in and out is not the augmentation's cost); medians of --repeats timings."""
    inputs, _ = next(iter(ds))
    if not isinstance(inputs, dict):
        return 0.0
    batch = {k: v.numpy() for k, v in inputs.items()}
    costs = []
    for layer in (ondevice.TrainAugment(), keras.layers.Identity()):
        feeds = {k: keras.Input(v.shape[1:], dtype=v.dtype.name, name=k) for k, v in batch.items()}
        model = keras.Model(feeds, layer(feeds) if layer.name.startswith("train") else layer(feeds["image"]))
        model.jit_compile = True
        model.predict_on_batch(batch)  # compiles
        times = []
        for _ in range(max(3, FLAGS.repeats)):
            started = time.perf_counter()
            for _ in range(5):
                model.predict_on_batch(batch)
            times.append((time.perf_counter() - started) / 5)
        costs.append(np.median(times))
    return max(0.0, costs[0] - costs[1]) / FLAGS.batch_size


def batch_rate(ds) -> float:
    """Examples/s of --input_batches batches of a fresh pipeline, after one warm-up batch (fills
    its buffers and traces its maps); the pipeline is gone before the next is made."""
    it = iter(ds)
    next(it)
    started = time.perf_counter()
    for _ in range(FLAGS.input_batches):
        next(it)
    return FLAGS.input_batches * FLAGS.batch_size / (time.perf_counter() - started)


if __name__ == "__main__":
    app.run(main)
