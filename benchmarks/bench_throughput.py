"""Usage: python benchmarks/bench_throughput.py [--backbone=EfficientNetB0] [--dim=128] [--batch_size=32]
    [--kinds=single,stacked:s2,mean:s2,sequence:n6:s1] [--mixed_precision=mixed_float16] [--profile=/tmp/trace]
    [--storms=12] [--buffer=2048] [--model_steps=0: input only]

Is the input pipeline or the model the bottleneck? For each dataset kind, on this machine:

- input: training-pipeline examples/s (read, decode, resize, draw each example's augmentation,
  batch: `pipeline.train_dataset`, exactly what `model.fit` consumes), on the host CPU;
- model: training examples/s of the model an experiment of the kind trains (`models.image_model`,
  the backbone on each image; for sequences `models.sequence_transformer_model`, cnn-trans: the
  backbone on every frame in one batch, then a Transformer encoder) behind the training
  augmentation, which runs in the step (`loop.train_model`), fed from one in-memory batch,
  so no input work is counted;
- their ratio: input/model > 1 means the accelerator (or CPU) running the model is the limit
  (model-bound); < 1 means it waits for data (input-bound: cache, fewer augmentations, more hosts);
- pipeline memory: the peak resident memory of the process while the input batches are drawn,
  above what it held before the pipeline was made (sampled every 5 ms), next to what the
  pipeline's shuffle buffer would hold if it kept decoded float32 examples, as it once did.

For the heaviest kind, 366 px `sequence:n24:s1`, give enough storms to fill the buffer, e.g.
`--size=366 --dim=366 --kinds=sequence:n24:s1 --storms=70 --batch_size=16 --input_batches=5
--model_steps=0`.

Data are built-in synthetic storms (`--size` px) written to a temporary directory. The model runs
under the same strategy as training (all GPUs if any). `--profile=<dir>` also writes a TensorBoard
trace of a few input batches and model steps (open it: tensorboard --logdir <dir>, Profile tab).
"""
from __future__ import annotations

import os
import tempfile

from tpuflow.inputs import pipeline, records  # first: --backend
from tpuflow.prep import builder, frames, split, synthetic
from tpuflow.training import loop, models, runtime
from tpuflow.training.throughput import PeakMemory, input_rate, kind_config, kind_parser, model_rate

import keras  # noqa: E402,I001 (after tpuflow, which picks Keras' backend)
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("kinds", ["single", "stacked:s2", "mean:s2", "sequence:n6:s1"], "Dataset kinds to measure")
flags.DEFINE_string("backbone", "EfficientNetB0", "keras.applications backbone of the model")
flags.DEFINE_integer("dim", 128, "Model input size (records are resized to it)")
flags.DEFINE_integer("size", 128, "Size of the synthetic frames written to the records")
flags.DEFINE_integer("batch_size", 32, "Global batch size")
flags.DEFINE_float("aug_prob", 0.5, "Training augmentation probability")
flags.DEFINE_integer("input_batches", 30, "Timed input-pipeline batches per kind (after one warm-up batch)")
flags.DEFINE_integer("model_steps", 5, "Timed model training steps per kind (after two warm-up steps)")
flags.DEFINE_string("mixed_precision", None, "Model precision: mixed_float16, mixed_bfloat16, auto or None")
flags.DEFINE_string("profile", None, "Directory for a TensorBoard trace of a few batches and steps")
flags.DEFINE_string("work_dir", None, "Where to write the temporary records (default: system temp)")
flags.DEFINE_enum("backend", "auto", ["auto", "jax", "tensorflow"], "Keras backend (applied before Keras loads)")
flags.DEFINE_integer("storms", 12, "Synthetic storms (20-40 frames each)")
flags.DEFINE_integer("buffer", 2048, "Shuffle buffer (the experiments' default --buffer_size)")


def build_model(spec: frames.DatasetSpec, dim: int, backbone: str) -> keras.Model:
    """The model training uses for the kind (see the module doc), without pretrained weights."""
    cfg = kind_config(spec, dim, backbone)
    if spec.kind == "sequence":
        return models.sequence_transformer_model(cfg)
    return models.image_model(cfg, channels=spec.channels)


def make_records(work: str, specs: list[frames.DatasetSpec], size: int) -> dict:
    """Synthetic storms -> CV split -> records of every kind; {spec: training files}."""
    raw = os.path.join(work, "raw")
    synthetic.make_synthetic(raw, synthetic.SyntheticConfig(seed=0, size=size, n_storms=FLAGS.storms,
                                                            n_test_only_storms=0, min_frames=20, max_frames=40))
    split.write_cv_split(raw, *split.create_cv_split(raw, n_folds=5, seed=33))
    builder.build_datasets(raw, work, specs)
    return {spec: records.record_files(os.path.join(work, spec.name), range(5)) for spec in specs}


def main(argv: list[str]) -> None:
    del argv
    specs = [frames.DatasetSpec.parse(k) for k in FLAGS.kinds]
    placement = runtime.get_runtime()  # Keras' backend: --backend or KERAS_BACKEND
    precision = runtime.set_precision(FLAGS.mixed_precision, placement)
    batch = runtime.global_batch_size(FLAGS.batch_size, placement.replicas, per_replica=False)
    print(f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (others' work slows both figures)")
    print(runtime.describe(placement, precision, batch))
    print(f"model: {FLAGS.backbone} at {FLAGS.dim} px, batch {batch}, {precision}; input: {FLAGS.size} px "
          f"frames resized to {FLAGS.dim}, aug_prob {FLAGS.aug_prob}")
    with tempfile.TemporaryDirectory(dir=FLAGS.work_dir) as work:
        files = make_records(work, specs, FLAGS.size)
        for spec in specs:
            with PeakMemory() as memory:
                ds = pipeline.train_dataset(files[spec], kind_parser(spec, FLAGS.dim), batch, shuffle_buffer=FLAGS.buffer,
                                            aug_prob=FLAGS.aug_prob, seed=0)
                data_rate = input_rate(ds, FLAGS.input_batches, batch)
            n_records = sum(1 for _ in tf.data.TFRecordDataset(files[spec]))
            held = min(FLAGS.buffer, n_records, pipeline.SHUFFLE_BYTES // pipeline.mean_record_bytes(files[spec]))
            float_example = (spec.depth if spec.kind == "sequence" else 1) * FLAGS.dim ** 2 * spec.channels * 4
            print(f"kind={spec} pipeline memory: peak {memory.peak / 2**30:.2f} GiB above the "
                  f"{memory.base / 2**30:.2f} GiB before it (buffer {held} of {n_records} records); "
                  f"the old buffer of {min(FLAGS.buffer, n_records)} decoded float32 examples would hold "
                  f"{min(FLAGS.buffer, n_records) * float_example / 2**30:.1f} GiB "
                  f"(ratio {min(FLAGS.buffer, n_records) * float_example / max(memory.peak, 1):.1f}x)", flush=True)
            if FLAGS.model_steps <= 0:
                print(f"kind={spec} input={data_rate:.1f} ex/s (model not measured: --model_steps=0)", flush=True)
                continue
            with placement.scope():
                model = build_model(spec, FLAGS.dim, FLAGS.backbone)
                model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
                model = loop.train_model(model, FLAGS.aug_prob > 0)  # the step includes the device augmentation
            one_batch = next(iter(ds))
            step_rate = model_rate(model, one_batch, FLAGS.model_steps, batch)
            ratio = data_rate / step_rate
            verdict = "model-bound" if ratio >= 1 else "input-bound"
            print(f"kind={spec} input={data_rate:.1f} ex/s model={step_rate:.1f} ex/s "
                  f"input/model={ratio:.2f} -> {verdict}", flush=True)
            if FLAGS.profile:
                trace_dir = os.path.join(FLAGS.profile, str(spec).replace(":", "_"))
                tf.profiler.experimental.start(trace_dir)
                input_rate(ds, 3, batch)
                model.fit(tf.data.Dataset.from_tensors(one_batch).repeat(), steps_per_epoch=3, epochs=1, verbose=0,
                          shuffle=False)
                tf.profiler.experimental.stop()
                print(f"  trace: {trace_dir} (tensorboard --logdir {FLAGS.profile})", flush=True)
            keras.backend.clear_session()


if __name__ == "__main__":
    app.run(main)
