"""TTA views made on the accelerator (`ondevice.tta_model`): each example is read and decoded once,
its ten views are made by the compiled predictor, and the predictions equal those of the ten
host-made passes (`pipeline.predict_dataset(..., tta_index=t)`) for prebuilt records and assembled
examples alike, under the TensorFlow and JAX backends (Keras fixes its backend per process: JAX in a
subprocess)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import jax_env
import view_tolerance
from tpuflow.inputs import augment, ondevice
from tpuflow.prep import builder, frames, store

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("stacked:s2", "sequence:n3:s1")
# Pixel values are 0..255 and views agree within 1e-4 of them (float32 rounding of the same
# bilinear weights); the tiny model's outputs then agree within this tolerance.
ATOL, RTOL = 1e-5, 1e-5

CHECK = r"""
import os, sys
import numpy as np
import keras
from tpuflow.inputs import assembly, augment, ondevice, pipeline, records; from tpuflow.prep import frames, shard_names, store; from tpuflow.training import hosts

def check(root, kind, source, dim=16):
    spec = frames.DatasetSpec.parse(kind)
    if spec.kind == "sequence":
        parse = lambda s: (records.parse_sequence(s, spec.depth, dim)["image"], 0)
        body = [keras.layers.Conv3D(4, 3, padding="same"), keras.layers.GlobalAveragePooling3D()]
        shape = (spec.depth, dim, dim, 1)
    else:
        parse = lambda s: (records.parse_image(s, spec.channels, dim)["image"], 0)
        body = [keras.layers.Conv2D(4, 3, padding="same"), keras.layers.GlobalAveragePooling2D()]
        shape = (dim, dim, spec.channels)
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for layer in body:
        x = layer(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    names, batch_of = augment.REFERENCE_VIEWS, [None]
    if source == "assembled":
        assembled = assembly.Assembly(store.load_store(os.path.join(root, shard_names.STORE_DIR)), spec, frame_cache="memory")
        rows = assembled.split_rows(1)
        n = len(rows)
        dataset = lambda t=0: assembled.predict_dataset(rows, parse, batch_of[0], t)
    else:
        files = records.record_files(os.path.join(root, spec.name), [1])
        n = len(records.read_ids(files))
        dataset = lambda t=0: pipeline.predict_dataset(files, parse, batch_of[0], n, t)
    batch = batch_of[0] = next(b for b in (7, 6, 5, 4) if n % b)  # not dividing the split: padding is trimmed
    one = hosts.predict(ondevice.tta_model(model, names), dataset(), batch)
    assert len(one) == -(-n // batch) * batch * len(names), one.shape
    one = one[: n * len(names)].reshape(n, len(names), 2)
    for t in range(len(names)):
        host = hosts.predict(model, dataset(t), batch)[:n]
        np.testing.assert_allclose(one[:, t], host, atol=ATOL, rtol=RTOL, err_msg=f"{kind} {source} TTA {t}")
    print("OK", keras.backend.backend(), kind, source, n)
"""


@pytest.fixture(scope="module")
def built(cv_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tta_device"))
    store.build_store(cv_dir, root, shards=2, workers=2, log=lambda m: None)
    builder.build_datasets(cv_dir, root, [frames.DatasetSpec.parse(k) for k in KINDS], shards_per_fold=1,
                           workers=2, log=lambda m: None)
    return root


def _check():
    scope = {"ATOL": ATOL, "RTOL": RTOL}
    exec(CHECK, scope)  # noqa: S102 (the same check runs under JAX below)
    return scope["check"]


# Each backend checks images and sequences, one from records and one assembled from the frame store (all four pairs).
TENSORFLOW = [("stacked:s2", "records"), ("sequence:n3:s1", "assembled")]
JAX = [("stacked:s2", "assembled"), ("sequence:n3:s1", "records")]


@pytest.mark.parametrize("kind, source", TENSORFLOW)
def test_device_views_predict_what_ten_host_passes_predict(built, kind, source):
    _check()(built, kind, source)


# The views and the training transforms move pixels without a gather over the image: a TPU runs a
# per-pixel gather one element at a time (the 45-degree views were once 0.67 s per example on v3-8).
NO_IMAGE_GATHER = r"""
import jax, jax.extend, jax.numpy as jnp
def gathers(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "gather":
            yield eqn.invars[0].aval.size
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from gathers(sub)
x = jnp.zeros((2, 3, 16, 16, 1))
for name, fn in (("views", lambda x: ondevice.TTAViews(ondevice.VIEWS)(x)),
                 ("augment", lambda x: ondevice.device_augment(x, jnp.array([7, 9])))):
    sizes = list(gathers(jax.make_jaxpr(fn)(x).jaxpr))
    assert all(size <= 3 * ondevice.N_TRANSFORMS for size in sizes), (name, sizes)
    print("OK no image gather", name)
"""


def test_device_views_under_jax(built):
    script = (CHECK + f"ATOL, RTOL = {ATOL}, {RTOL}\n" + "".join(f"check({built!r}, {k!r}, {s!r})\n" for k, s in JAX)
              + NO_IMAGE_GATHER)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "jax", "PYTHONPATH": os.pathsep.join(
        [os.path.join(os.path.dirname(HERE), "lib"), HERE, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=jax_env.env(env, "jax"), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("OK jax") == len(JAX), proc.stdout
    assert proc.stdout.count("OK no image gather") == 2, proc.stdout


def test_device_views_equal_the_host_transforms_pixel_for_pixel():
    """Every named view, images and sequences, square 366 px and odd sizes, and the 45-degree ones
    of non-square images: within float rounding (`view_tolerance`) of 0..255."""
    import tensorflow as tf
    rng = np.random.default_rng(0)
    for shape in [(2, 24, 24, 3), (1, 3, 17, 17, 1), (1, 366, 366, 1), (2, 20, 31, 2), (1, 2, 9, 14, 1)]:
        x = rng.uniform(0, 255, shape).astype(np.float32)
        height, width = shape[-3:-1]
        names = augment.VIEWS if height == width else [n for n in augment.VIEWS if "crop" in n]
        for name, got in zip(names, ondevice.device_views(tf.constant(x), names)):
            want = np.stack([augment.apply_view(tf.constant(e), name).numpy() for e in x])
            got = np.asarray(got)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=view_tolerance.atol(name, height, width), rtol=0,
                                       err_msg=f"{name} {shape}")
