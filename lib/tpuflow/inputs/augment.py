"""Test-time augmentation (TTA) transforms and the training augmentation (on the accelerator).

The reference solution's ten TTA transforms, by index ``t`` (README, "Experiments"):

====  ==========================================================
t     transform
====  ==========================================================
0     original
1     left-right flip
2     up-down flip
3-5   rotation by 90 / 180 / 270 degrees
6-9   rotation by 45 / 135 / 225 / 315 degrees, then a central
      crop of 0.7 resized (bilinear) back to the input size
====  ==========================================================

Each transform has a name (a *view*): TTA sets are lists of views, ``ref`` (the ten above, the
default), ``d4`` (the eight symmetries of the square: the identity, both flips, the three quarter
turns and the two transposes) or any comma-separated list of names starting with ``orig``
(:func:`tta_views`). The index t in prediction file names is the position in the run's set; the
run records the names, so an index always means one view.

"Rotation by theta" is counter-clockwise as the image is displayed (row 0 at
the top), the same direction as ``np.rot90`` and ``tf.image.rot90``; the
quarter turns use ``tf.image.rot90`` and agree with the general rotation
(:func:`rotate`) at 90 degrees.

Every transform keeps the input shape (static when the input's is), so a
batch can still be formed with ``drop_remainder=True`` for TPU.  Quarter
turns of a non-square image would swap its height and width, so they are
refused for images whose height and width are known to differ.

Where it runs: ``tensorflow-addons`` (the reference's rotation) is end-of-life
and fails to import with Keras 3, so the host's 45-degree rotations use the core
op ``ImageProjectiveTransformV3``, which has no XLA kernel (and takes ~50 ms for
24 frames of 366 px on a host CPU). Training augmentation and prediction's TTA
views therefore run on the accelerator: the same transforms as gathers with
fixed indices and weights that XLA compiles under the TensorFlow and JAX
backends, derived from the host transforms above (quarter turns, flips and
transposes: the host transform applied to an image of pixel indices; the
45-degree views: the same rotation parameters, crop and resize rule).
Prediction (:func:`tta_model`) reads, decodes and sends each example once for
all its views. Training (:func:`train_model`) draws a transform index per
example on the host (:func:`draw`, cheap and seeded, so a resumed fold sees the
same batches) and the compiled step applies it (:func:`device_augment`); the
host transforms remain the reference the device is tested against and the
per-view passes `pipeline.predict_dataset(..., tta_index=t)` make.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tpuflow.inputs import mixup

N_TRANSFORMS = 10
"""Number of TTA transforms, the original (index 0) included."""

CROP_FRACTION = 0.7
"""Central fraction kept after a 45-degree rotation (drops the empty corners)."""

REFERENCE_VIEWS = ("orig", "flip_lr", "flip_ud", "rot90", "rot180", "rot270",
                   "rot45_crop", "rot135_crop", "rot225_crop", "rot315_crop")
"""The reference's ten views, by TTA index (the default set)."""

D4_VIEWS = ("orig", "flip_lr", "flip_ud", "rot90", "rot180", "rot270", "transpose", "transverse")
"""The dihedral group of the square: `transpose` mirrors about the main diagonal (x[j, i]),
`transverse` about the anti-diagonal."""

VIEWS = REFERENCE_VIEWS + D4_VIEWS[6:]
"""Every view name, for explicit lists."""

TTA_SETS = {"ref": REFERENCE_VIEWS, "d4": D4_VIEWS}

# Quarter turns (counter-clockwise) applied by tta indices 3, 4, 5.
_QUARTER_TURNS = {3: 1, 4: 2, 5: 3}
# Angles in degrees (counter-clockwise) of tta indices 6..9.
_DIAGONAL_ANGLES = {6: 45.0, 7: 135.0, 8: 225.0, 9: 315.0}


def _check_rank(image: tf.Tensor) -> int:
    rank = image.shape.rank
    if rank not in (3, 4):
        raise ValueError(
            f"image must have shape (H, W, C) or (N, H, W, C); got shape {image.shape}"
        )
    return rank


def _spatial_size(image: tf.Tensor) -> list[int] | tf.Tensor:
    """(H, W) as Python ints when static (keeps output shapes static), else a tensor."""
    height, width = image.shape[-3], image.shape[-2]
    if height is not None and width is not None:
        return [height, width]
    return tf.shape(image)[-3:-1]


def _rotation_transform(degrees: float, height: int | tf.Tensor, width: int | tf.Tensor) -> tf.Tensor:
    """The 8 projective parameters of a counter-clockwise rotation about the centre.

    ``ImageProjectiveTransformV3`` maps each OUTPUT pixel (x = column, y = row,
    pixel centres at integer coordinates) to the INPUT point it samples, so the
    parameters are those of the inverse rotation.  With y pointing down, a
    displayed counter-clockwise rotation by theta sends an input offset
    (dx, dy) from the centre to (dx cos + dy sin, -dx sin + dy cos); its inverse,
    applied to the output offset, is (dx cos - dy sin, dx sin + dy cos).
    """
    cx = (tf.cast(width, tf.float32) - 1.0) / 2.0
    cy = (tf.cast(height, tf.float32) - 1.0) / 2.0
    params = _rotation_params(degrees, cx, cy)
    return tf.reshape(tf.stack([tf.cast(p, tf.float32) for p in params]), [1, 8])


def _rotation_params(degrees: float, cx, cy) -> list:
    """`_rotation_transform`'s 8 parameters about the centre (cx, cy) (numbers or tensors)."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    return [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]


def rotate(image: tf.Tensor, degrees: float) -> tf.Tensor:
    """Rotates ``image`` counter-clockwise by ``degrees`` about its centre.

    Bilinear interpolation, points falling outside the input are filled with 0,
    output shape equals input shape.  ``image`` is (H, W, C) or (N, H, W, C)
    (every frame rotated the same way); computed in float32 and cast back to
    the input dtype (rounded and saturated for integer dtypes).
    """
    image = tf.convert_to_tensor(image)
    rank = _check_rank(image)
    size = _spatial_size(image)
    batch = image if rank == 4 else image[tf.newaxis]
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(batch, tf.float32),
        transforms=_rotation_transform(degrees, size[0], size[1]),
        output_shape=tf.convert_to_tensor(size, tf.int32),
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )
    rotated = tf.ensure_shape(rotated, batch.shape)
    return _cast_like(rotated if rank == 4 else rotated[0], image.dtype)


def _cast_like(image: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    if dtype.is_integer:
        return tf.saturate_cast(tf.round(image), dtype)
    return tf.cast(image, dtype)


def _rotate_crop_resize(image: tf.Tensor, degrees: float) -> tf.Tensor:
    """Rotation then a central crop of CROP_FRACTION, resized back (bilinear)."""
    size = _spatial_size(image)
    cropped = tf.image.central_crop(rotate(tf.cast(image, tf.float32), degrees), CROP_FRACTION)
    resized = tf.image.resize(cropped, size, method="bilinear")
    return _cast_like(resized, image.dtype)


def _quarter_turns(image: tf.Tensor, k: int) -> tf.Tensor:
    height, width = image.shape[-3], image.shape[-2]
    if k % 2 == 1 and height is not None and width is not None and height != width:
        raise ValueError(
            f"a {90 * k}-degree rotation needs a square image to keep its shape; "
            f"got shape {image.shape}"
        )
    return tf.image.rot90(image, k=k)


def _transpose(image: tf.Tensor) -> tf.Tensor:
    rank = image.shape.rank
    return tf.transpose(image, [1, 0, 2] if rank == 3 else [0, 2, 1, 3])


def tta_views(spec: str, tta_number: int | None = None) -> tuple[str, ...]:
    """The views of a TTA set: ``ref``, ``d4`` or names joined by ``,`` (the first must be
    ``orig``: index 0 is the un-augmented score everywhere), limited to the first
    ``tta_number + 1`` (a larger number takes the whole set). Errors name the flag."""
    names = TTA_SETS.get(spec) or tuple(n.strip() for n in spec.split(",") if n.strip())
    unknown = [n for n in names if n not in VIEWS]
    if unknown or not names:
        raise ValueError(f"--tta={spec!r}: unknown view(s) {unknown}; use ref, d4 or a comma list "
                         f"of {', '.join(VIEWS)}")
    if names[0] != "orig":
        raise ValueError(f"--tta={spec!r}: the first view must be 'orig' (TTA index 0 is the original)")
    if len(set(names)) != len(names):
        raise ValueError(f"--tta={spec!r}: a view is listed twice")
    if tta_number is not None and tta_number < 0:
        raise ValueError(f"--tta_number={tta_number}: must be >= 0")
    return names if tta_number is None else names[: tta_number + 1]


def apply_view(image: tf.Tensor, name: str) -> tf.Tensor:
    """Applies the named view (see :data:`VIEWS`); same shapes and rules as :func:`apply_tta`."""
    if name in REFERENCE_VIEWS:
        return apply_tta(image, REFERENCE_VIEWS.index(name))
    if name not in VIEWS:
        raise ValueError(f"unknown view {name!r}; expected one of {VIEWS}")
    image = tf.convert_to_tensor(image)
    _check_rank(image)
    height, width = image.shape[-3], image.shape[-2]
    if height is not None and width is not None and height != width:
        raise ValueError(f"view {name!r} needs a square image to keep its shape; got shape {image.shape}")
    if name == "transpose":
        return _transpose(image)
    return tf.image.rot90(_transpose(image), k=2)  # transverse


def apply_tta(image: tf.Tensor, tta_index: int | str) -> tf.Tensor:
    """Applies TTA transform ``tta_index`` (0..9, see the module docstring), or a view by name.

    ``image`` is (H, W, C) or (N, H, W, C): for a sequence the same transform is
    applied to every frame.  The output has the input's shape and dtype.
    ``tta_index`` is a Python int (fixed when a ``tf.data`` map is traced).
    """
    if isinstance(tta_index, str):
        return apply_view(image, tta_index)
    if isinstance(tta_index, bool) or not isinstance(tta_index, int) or not 0 <= tta_index < N_TRANSFORMS:
        raise ValueError(f"tta_index must be an int in 0..{N_TRANSFORMS - 1}; got {tta_index!r}")
    image = tf.convert_to_tensor(image)
    _check_rank(image)
    if tta_index == 0:
        return image
    if tta_index == 1:
        return tf.image.flip_left_right(image)
    if tta_index == 2:
        return tf.image.flip_up_down(image)
    if tta_index in _QUARTER_TURNS:
        return _quarter_turns(image, _QUARTER_TURNS[tta_index])
    return _rotate_crop_resize(image, _DIAGONAL_ANGLES[tta_index])


def check_prob(prob: float) -> None:
    """A training augmentation probability outside [0, 1] is an error naming the flag."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"--aug_prob={prob!r}: must be within [0, 1]")


def draw(prob: float, shape=(), seed: tf.Tensor | None = None) -> tf.Tensor:
    """Training augmentation draws (host, cheap): int32 transform indices of `shape`, each 0 with
    probability 1 - ``prob``, else one of TTA transforms 1..9 uniformly. ``seed``, if given, is a
    shape-[2] integer tensor for a stateless, reproducible draw; without it the global stateful
    generator is used. The device applies them (:func:`device_augment`): the same transform to
    every frame of a sequence."""
    check_prob(prob)
    shape = [*shape, 2]
    draws = tf.random.uniform(shape) if seed is None else tf.random.stateless_uniform(shape, seed=seed)
    n_choices = N_TRANSFORMS - 1
    choice = 1 + tf.minimum(tf.cast(draws[..., 1] * n_choices, tf.int32), n_choices - 1)
    return tf.where(draws[..., 0] < prob, choice, 0)


# --- the same views on the accelerator (prediction) ---------------------------------------------


def _diagonal_degrees(name: str) -> float | None:
    index = REFERENCE_VIEWS.index(name) if name in REFERENCE_VIEWS else None
    return _DIAGONAL_ANGLES.get(index)


@functools.lru_cache(maxsize=64)
def _device_stages(name: str, height: int, width: int) -> tuple:
    """How the view `name` of an (height, width) image is made on the device, as NumPy constants.
    A view that moves whole pixels is a symmetry of the square: ("d4", transpose, flip rows, flip
    columns), found by applying the host transform to an image of pixel indices and matching it
    (so reversals and a transpose, not gathers). A 45-degree view: ("taps", 4 source pixels and
    bilinear weights per output pixel: `rotate`'s sampling, points outside weighted 0) then
    ("crop_resize", crop offsets and sizes, and for each output row and column
    `tf.image.resize`'s two source lines and weight)."""
    degrees = _diagonal_degrees(name)
    with tf.init_scope():  # NumPy results, even when called while a function is traced
        index = tf.reshape(tf.range(height * width, dtype=tf.int32), [height, width, 1])
        if degrees is None:
            return (_symmetry(apply_view(index, name).numpy()[..., 0], index.numpy()[..., 0], name),)
        rows = tf.image.central_crop(index, CROP_FRACTION).numpy()[..., 0]
    p = np.float32(_rotation_params(degrees, np.float32((width - 1) / 2), np.float32((height - 1) / 2)))
    y, x = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    in_x = (p[0] * x + p[1] * y + p[2]).reshape(-1)  # float32, as the host op computes it
    in_y = (p[3] * x + p[4] * y + p[5]).reshape(-1)
    x0, y0 = np.floor(in_x), np.floor(in_y)
    fx, fy = in_x - x0, in_y - y0
    idx, weights = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = (y0 + dy).astype(np.int64), (x0 + dx).astype(np.int64)
            inside = (yy >= 0) & (yy < height) & (xx >= 0) & (xx < width)
            idx.append(np.where(inside, yy * width + xx, 0))
            weights.append(np.where(inside, wy * wx, 0.0))
    taps = ("taps", np.stack(idx, 1).astype(np.int32), np.stack(weights, 1).astype(np.float32))
    top, left = divmod(int(rows[0, 0]), width)
    crop = rows.shape[:2]
    return taps, ("crop_resize", top, left, crop, _resize_lines(crop[0], height), _resize_lines(crop[1], width))


def _symmetry(moved: np.ndarray, index: np.ndarray, name: str) -> tuple:
    """The ("d4", transpose, flip rows, flip columns) that moves the pixels of `index` as `moved`."""
    for transpose in (False, True):
        base = index.T if transpose else index
        for flip_rows in (False, True):
            for flip_cols in (False, True):
                candidate = base[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]
                if candidate.shape == moved.shape and (candidate == moved).all():
                    return "d4", transpose, flip_rows, flip_cols
    raise ValueError(f"view {name!r} moves pixels in a way no symmetry of the square does")


def _resize_lines(n_in: int, n_out: int) -> tuple:
    """`tf.image.resize` (bilinear, half-pixel centres): for each output line, its two source
    lines and the second one's weight."""
    centre = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5
    floor = np.floor(centre)
    low = np.maximum(floor, 0).astype(np.int32)
    high = np.minimum(np.ceil(centre), n_in - 1).astype(np.int32)
    return low, high, (centre - floor).astype(np.float32)


def device_view(images, name: str):
    """The view `name` of a float batch (B, H, W, C) or (B, N, H, W, C) (static H, W, C), with
    `keras.ops` only (compiles with XLA under either backend): within float rounding of
    `apply_view` on each example."""
    *_, height, width, channels = images.shape
    if name == "orig":
        return images
    stages = _device_stages(name, height, width)
    if stages[0][0] == "d4":
        _, transpose, flip_rows, flip_cols = stages[0]
        images = ops.swapaxes(images, -3, -2) if transpose else images
        images = ops.flip(images, axis=-3) if flip_rows else images
        return ops.flip(images, axis=-2) if flip_cols else images
    # Pixels first, (H * W, batch, C): every gather takes whole rows along the leading axis,
    # which XLA does fast.
    pixels = ops.transpose(ops.reshape(images, (-1, height * width, channels)), (1, 0, 2))
    (_, idx, weights), (_, top, left, (h, w), (r0, r1, rw), (c0, c1, cw)) = stages
    taken = ops.reshape(ops.take(pixels, idx.reshape(-1), axis=0), (height * width, 4, -1, channels))
    image = ops.reshape(ops.sum(taken * weights[:, :, None, None], axis=1), (height, width, -1, channels))
    image = image[top:top + h, left:left + w]  # (h, w, batch, C)
    for low, high, weight in ((r0, r1, rw), (c0, c1, cw)):  # resize the rows, then the columns
        weight = weight[:, None, None, None]
        image = ops.take(image, low, axis=0) * (1 - weight) + ops.take(image, high, axis=0) * weight
        image = ops.transpose(image, (1, 0, 2, 3))  # the other spatial axis first
    flat = ops.reshape(ops.transpose(image, (2, 0, 1, 3)), (-1, height * width, channels))  # (batch, H * W, C)
    return ops.reshape(flat, (-1, *images.shape[1:]))


class TTAViews(keras.layers.Layer):
    """(B, ...) float images -> (B * len(views), ...): every view of each example, example-major
    (example 0's views, then example 1's...). float32 whatever the mixed-precision policy."""

    def __init__(self, views, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.views = tuple(views)
        for name in self.views:
            if name not in VIEWS:
                raise ValueError(f"unknown view {name!r}; expected one of {VIEWS}")

    def call(self, images):
        views = ops.stack([device_view(images, name) for name in self.views], axis=1)
        return ops.reshape(views, (-1, *images.shape[1:]))

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


def tta_model(model: keras.Model, views) -> keras.Model:
    """`model` behind `TTAViews`: one batch of B examples in, the predictions of their
    B * len(views) views out (example-major); shares `model`'s weights and its XLA setting
    (`jit_compile`: the views are gathers XLA fuses; uncompiled on a CPU they are slower than
    the host transforms). Build it where `model` was built (inside its distribution scope)."""
    inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype="float32")
    predictor = keras.Model(inputs, model(TTAViews(views)(inputs)), name=f"{model.name}_tta")
    predictor.jit_compile = model.jit_compile
    return predictor


# --- training augmentation on the accelerator ---------------------------------------------------

@functools.lru_cache(maxsize=16)
def _train_stages(height: int, width: int) -> tuple:
    """Per-transform constants of :func:`device_augment` for (height, width) images: (10, 3) d4 flags
    (transpose, flip rows, flip columns; transforms 1..5, the rest identity), and for the four
    45-degree transforms 6..9 the bilinear taps of `_device_stages` kept for the crop's pixels only
    (source pixel indices (4, h * w * 4), weights (4, h * w, 4)), the crop size and the resize lines
    they share (the crop and the resize do not depend on the angle)."""
    if height != width:
        raise ValueError(f"--aug_prob: the training augmentation (quarter turns) needs square images; got "
                         f"{height}x{width} (use --aug_prob=0)")
    flags = np.zeros((N_TRANSFORMS, 3), bool)
    for t in range(1, 6):
        flags[t] = _device_stages(REFERENCE_VIEWS[t], height, width)[0][1:]
    idx, weights = [], []
    for t in range(6, N_TRANSFORMS):
        (_, taps, tap_weights), (_, top, left, (h, w), rows, cols) = _device_stages(REFERENCE_VIEWS[t], height, width)
        crop = (np.arange(top, top + h)[:, None] * width + np.arange(left, left + w)).reshape(-1)
        idx.append(taps[crop].reshape(-1))
        weights.append(tap_weights[crop])
    return flags, np.stack(idx), np.stack(weights), (h, w), rows, cols


def device_augment(images, transform):
    """Each example of a float batch (B, H, W, C) or (B, N, H, W, C) (static shape) with its own
    TTA transform `transform` (B,) int (0: unchanged), every frame alike; `keras.ops` only, so
    XLA compiles it under either backend. Within float rounding of `apply_tta` on each example.

    Static shapes mean every example pays for both kinds of move: the symmetries of the square
    are three per-example selects (transpose, flip rows, flip columns); the 45-degree ones one
    gather of 4 taps per pixel of the crop, from per-example rows of four precomputed tap tables,
    then the crop's resize (two line gathers), kept where the transform is 6..9."""
    shape = tuple(images.shape)
    batch, (height, width, channels) = shape[0], shape[-3:]
    flags, idx, weights, (h, w), (r0, r1, rw), (c0, c1, cw) = _train_stages(height, width)
    transform = ops.cast(transform, "int32")

    def per_example(mask):  # (B,) bool -> broadcastable over an example
        return ops.reshape(mask, (-1,) + (1,) * (len(shape) - 1))

    flag = ops.take(ops.convert_to_tensor(flags), transform, axis=0)  # (B, 3)
    moved = ops.where(per_example(flag[:, 0]), ops.swapaxes(images, -3, -2), images)
    moved = ops.where(per_example(flag[:, 1]), ops.flip(moved, axis=-3), moved)
    moved = ops.where(per_example(flag[:, 2]), ops.flip(moved, axis=-2), moved)
    # 45 degrees: pixels (B, H * W, frames * C), each example gathering its taps from its own
    # pixels. The batch stays a dimension of the gather (vmap: a batched gather; pfor: batch_dims)
    # so that, with the batch sharded over devices, XLA keeps each gather on its device; one flat
    # gather over the whole batch with offset indices made it all-gather every pixel first.
    frames_last = images if len(shape) == 4 else ops.transpose(images, (0, 2, 3, 1, 4))
    depth = channels * (1 if len(shape) == 4 else shape[1])
    pixels = ops.reshape(frames_last, (batch, height * width, depth))
    angle = ops.clip(transform - 6, 0, 3)
    taps = ops.take(ops.convert_to_tensor(idx), angle, axis=0)  # (B, h * w * 4)
    taken = ops.vectorized_map(lambda example: ops.take(example[0], example[1], axis=0), (pixels, taps))
    taken = ops.reshape(taken, (batch, h * w, 4, depth))
    tap_weights = ops.take(ops.convert_to_tensor(weights), angle, axis=0)[..., None]  # (B, h * w, 4, 1)
    image = ops.reshape(ops.sum(taken * tap_weights, axis=2), (batch, h, w, depth))
    for axis, low, high, weight in ((1, r0, r1, rw), (2, c0, c1, cw)):  # resize the rows, then the columns
        weight = ops.reshape(weight, (-1, 1, 1) if axis == 1 else (-1, 1))
        image = ops.take(image, low, axis=axis) * (1 - weight) + ops.take(image, high, axis=axis) * weight
    if len(shape) == 5:
        image = ops.transpose(ops.reshape(image, (batch, height, width, shape[1], channels)), (0, 3, 1, 2, 4))
    return ops.where(per_example(transform >= 6), ops.reshape(image, shape), moved)


class TrainAugment(keras.layers.Layer):
    """A training batch's inputs (dict: "image" and "transform", each example's transform index
    (:func:`draw`), and/or mixup's "partner", "lam", "box" (`mixup.draw_mix`)) -> the
    images the model trains on: each example's transform, then the mixup blend (the order the
    host ran them in before: the partner of a mixed example is itself augmented). float32."""

    def __init__(self, block: int | None = None, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.block = block  # mixup's (`mixup.device_blend`)

    def get_config(self):
        return {**super().get_config(), "block": self.block}

    def call(self, inputs):
        images = ops.cast(inputs["image"], "float32")
        if "transform" in inputs:
            images = device_augment(images, inputs["transform"])
        return mixup.device_blend(images, inputs, self.block) if "partner" in inputs else images

    def compute_output_shape(self, input_shape):
        return input_shape["image"]


def train_model(model: keras.Model, aug: bool, mix: str | None = None, block: int | None = None) -> keras.Model:
    """The model `fit` trains: `model` itself when training batches are plain images, else (with
    augmentation `aug`, or mixup mode `mix`: the datasets' inputs are then the dicts
    `TrainAugment` takes; `block`: mixup's, see `mixup.draw_mix`) `model` behind `TrainAugment`,
    sharing its weights and its optimizer and compiled like it (loss, metrics, XLA setting), so
    that checkpoints, backups and predictions stay `model`'s (see :func:`fit`). Build it where
    `model` was built (inside its distribution scope), after compiling `model`. Images the
    augmentation cannot turn (not square) are refused here, before any training."""
    if not aug and not mix:
        return model
    if aug:
        _train_stages(*model.inputs[0].shape[-3:-1])  # refuses a non-square image, naming the flag
    specs = {"image": (tuple(model.inputs[0].shape[1:]), "float32")}
    if aug:
        specs["transform"] = ((), "int32")
    if mix:
        specs.update(partner=((), "int32"), lam=((), "float32"))
        if mix == "cutmix":
            specs["box"] = ((4,), "float32")
    inputs = {key: keras.Input(shape=shape, dtype=dtype, name=key) for key, (shape, dtype) in specs.items()}
    trainer = keras.Model(inputs, model(TrainAugment(block)(inputs)), name=f"{model.name}_train")
    config = keras.saving.deserialize_keras_object(model.get_compile_config())
    trainer.compile(**{**config, "optimizer": model.optimizer})
    return trainer


class _StopWith(keras.callbacks.Callback):
    """Passes a callback's `model.stop_training` on to the trainer that `fit` runs."""

    def __init__(self, trainer):
        super().__init__()
        self.trainer = trainer

    def on_epoch_end(self, epoch, logs=None):  # no batch hook: that would make JAX's fit wait on every step
        self.trainer.stop_training = self.trainer.stop_training or self.model.stop_training


def fit(trainer: keras.Model, model: keras.Model, dataset, *, callbacks, epochs: int, steps_per_epoch: int,
        verbose, **kwargs) -> keras.callbacks.History:
    """`trainer.fit` (a :func:`train_model`) with `callbacks` seeing `model`: they save, back up
    and score the real model (the same weights and optimizer), and their History is returned."""
    if trainer is model:
        return model.fit(dataset, callbacks=callbacks, epochs=epochs, steps_per_epoch=steps_per_epoch,
                         verbose=verbose, **kwargs)
    model.stop_training, trainer.history = False, None  # the History is `model`'s (fit returns its own)
    pinned = keras.callbacks.CallbackList([*callbacks, _StopWith(trainer)], add_history=True,
                                          add_progbar=verbose != 0, verbose=verbose, epochs=epochs,
                                          steps=steps_per_epoch, model=model)
    trainer.fit(dataset, callbacks=pinned, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
                **kwargs)
    return model.history
