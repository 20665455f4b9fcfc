"""Training augmentation on the accelerator (`loop.train_model`): one real training step under
the TensorFlow and JAX backends (JAX in a subprocess: Keras fixes its backend per process) with
aug_prob=1 and cutmix, from real records; the step trains the real model's weights through its
optimizer, the callbacks see the real model, and the compiled device transforms equal the host's."""
import os
import subprocess
import sys

import jax_env

HERE = os.path.dirname(os.path.abspath(__file__))

CHECK = r"""
import numpy as np
import keras
import tensorflow as tf
from tpuflow.inputs import augment, mixup, ondevice, pipeline, records; from tpuflow.training import experiment, loop


class Seen(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model_seen, self.logs = self.model, logs


def check(single_dir):
    keras.utils.set_random_seed(0)
    cfg = experiment.make_config(dim=16)
    parse = lambda s: experiment.parse_image_example(s, cfg, channels=1)
    inputs = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(2, 3)(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(x)))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse",
                  metrics=[keras.metrics.RootMeanSquaredError(name="rmse")], jit_compile=True)
    trainer = loop.train_model(model, True, "cutmix")
    assert trainer.optimizer is model.optimizer and trainer.jit_compile
    assert [id(v) for v in trainer.trainable_variables] == [id(v) for v in model.trainable_variables]
    files = records.record_files(single_dir, [0, 1])
    ds = mixup.mix_dataset(pipeline.train_dataset(files, parse, 8, shuffle_buffer=16, aug_prob=1.0, seed=0),
                           alpha=1.0, prob=1.0, mode="cutmix", seed=0)
    batch = next(iter(ds))[0]
    assert set(batch) == {"image", "transform", "partner", "lam", "box"}, batch.keys()
    assert batch["transform"].numpy().min() >= 1  # aug_prob=1: every example transformed
    before = [np.array(w) for w in model.get_weights()]
    seen = Seen()
    history = loop.fit(trainer, model, ds, callbacks=[seen], epochs=1, steps_per_epoch=1, verbose=0,
                            shuffle=False)
    assert seen.model_seen is model and np.isfinite(seen.logs["loss"]) and "rmse" in seen.logs
    assert history is model.history and len(history.history["loss"]) == 1
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    # What the compiled step feeds the model: each example's own transform, then the blend.
    feed = keras.Model(trainer.inputs, trainer.layers[-2].output)
    feed.jit_compile = True
    fed = feed.predict({k: v.numpy() for k, v in batch.items()}, verbose=0, batch_size=8)
    host = np.stack([augment.apply_tta(e, int(t)).numpy() for e, t in zip(batch["image"], batch["transform"])])
    want = np.asarray(ondevice.device_blend(tf.constant(host), batch))
    np.testing.assert_allclose(fed, want, atol=1e-3, rtol=0)
    print("OK", keras.backend.backend())
"""


def _scope():
    scope = {}
    exec(CHECK, scope)  # noqa: S102 (the same check runs under JAX below)
    return scope


def test_one_augmented_training_step_under_tensorflow(single_dir):
    _scope()["check"](single_dir)


def test_one_augmented_training_step_under_jax(single_dir):
    script = CHECK + f"check({single_dir!r})\n"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join(
        [os.path.join(os.path.dirname(HERE), "lib"), HERE, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=jax_env.env(env, "jax"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK jax" in proc.stdout, proc.stdout


SHARDED = r"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tpuflow.inputs import ondevice

assert len(jax.devices()) == 2, jax.devices()
by_example = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))
transform = np.array([6, 7, 8, 9], np.int32)  # the 45-degree gathers, one per example
for shape in ((4, 16, 16, 3), (4, 2, 16, 16, 3)):
    images = np.random.default_rng(0).random(shape, dtype=np.float32)
    step = jax.jit(ondevice.device_augment).lower(jax.device_put(images, by_example),
                                                 jax.device_put(transform, by_example)).compile()
    hlo = step.as_text()
    assert "gather(" in hlo and "all-gather" not in hlo, [l for l in hlo.splitlines() if "all-gather" in l]
    got = step(jax.device_put(images, by_example), jax.device_put(transform, by_example))
    np.testing.assert_allclose(np.asarray(got), np.asarray(ondevice.device_augment(images, transform)), atol=1e-6)
# Mixup's partners, drawn within each device's 2 examples, are gathered there too.
mix = {"partner": np.array([1, 0, 0, 1], np.int32), "lam": np.full(4, 0.25, np.float32)}
blend = lambda x, m: ondevice.device_blend(x, m, 2)
placed = [jax.device_put(v, by_example) for v in (images, mix)]
step = jax.jit(blend).lower(*placed).compile()
assert "all-gather" not in step.as_text(), [l for l in step.as_text().splitlines() if "all-gather" in l]
want = 0.25 * images + 0.75 * images[[1, 0, 2, 3]]
np.testing.assert_allclose(np.asarray(step(*placed)), want, atol=1e-6)
print("OK local")
"""


def test_device_augment_gathers_stay_on_each_device_with_the_batch_sharded():
    """Data parallelism shards the batch over the devices: the compiled per-example transforms
    must gather from each device's own examples, not copy the global batch's pixels to every
    device first (an all-gather). Two XLA:CPU devices stand in for the accelerator's."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "jax",
           "XLA_FLAGS": " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                               "--xla_force_host_platform_device_count=2"])),
           "PYTHONPATH": os.pathsep.join([os.path.join(os.path.dirname(HERE), "lib"),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True,
                          env=jax_env.env(env, "jax"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK local" in proc.stdout, proc.stdout
