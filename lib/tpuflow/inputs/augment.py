"""Test-time augmentation (TTA) transforms on the host (TensorFlow), and the training augmentation's
draws; the accelerator makes the same transforms (`tpuflow.inputs.ondevice`).

The reference solution's ten TTA transforms, by index ``t`` (docs/backends.md, "Augmentation and TTA
views on the accelerator"):

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
(`ondevice.tta_views`). The index t in prediction file names is the position in the run's set; the
run saves the names, so an index always means one view.

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
views therefore run on the accelerator, in `tpuflow.inputs.ondevice` (no
TensorFlow there): the same transforms as gathers with fixed indices and weights
that XLA compiles under the TensorFlow and JAX backends. Training draws a
transform index per example on the host (:func:`draw`, cheap and seeded, so a
resumed fold sees the same batches) and the compiled step applies it
(`ondevice.device_augment`); the host transforms here remain the reference the
device is tested against and the per-view passes
`pipeline.predict_dataset(..., tta_index=t)` make. The view names and the crop are `ondevice`'s,
imported here for the host's callers.
"""

from __future__ import annotations

import tensorflow as tf

from tpuflow.inputs.ondevice import (CROP_FRACTION, DIAGONAL_ANGLES, N_TRANSFORMS, REFERENCE_VIEWS,  # noqa: F401
                                     VIEWS, check_prob, rotation_params)

# Quarter turns (counter-clockwise) applied by tta indices 3, 4, 5.
_QUARTER_TURNS = {3: 1, 4: 2, 5: 3}


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
    params = rotation_params(degrees, cx, cy)
    return tf.reshape(tf.stack([tf.cast(p, tf.float32) for p in params]), [1, 8])


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
    return _rotate_crop_resize(image, DIAGONAL_ANGLES[tta_index])


def draw(prob: float, shape=(), seed: tf.Tensor | None = None) -> tf.Tensor:
    """Training augmentation draws (host, cheap): int32 transform indices of `shape`, each 0 with
    probability 1 - ``prob``, else one of TTA transforms 1..9 uniformly. ``seed``, if given, is a
    shape-[2] integer tensor for a stateless, reproducible draw; without it the global stateful
    generator is used. The device applies them (`ondevice.device_augment`): the same transform to
    every frame of a sequence."""
    check_prob(prob)
    shape = [*shape, 2]
    draws = tf.random.uniform(shape) if seed is None else tf.random.stateless_uniform(shape, seed=seed)
    n_choices = N_TRANSFORMS - 1
    choice = 1 + tf.minimum(tf.cast(draws[..., 1] * n_choices, tf.int32), n_choices - 1)
    return tf.where(draws[..., 0] < prob, choice, 0)
