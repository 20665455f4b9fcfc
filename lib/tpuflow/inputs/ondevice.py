"""Training augmentation, mixup's blend and the TTA views on the accelerator: `keras.ops` and NumPy
only, no TensorFlow, so that the model's training and prediction steps build and run with Keras on
JAX where TensorFlow is not installed (a GPU or TPU host with `jax` alone;
`benchmarks/device_check.py`).

The views and transforms are those of `tpuflow.inputs.augment` (the host's, in TensorFlow, by TTA
index and by name: see its docstring), made here as gathers with fixed indices and weights that
XLA compiles under the TensorFlow and JAX backends: quarter turns, flips and transposes as
reversals and a transpose; the 45-degree views as four bilinear taps per pixel (the host
rotation's sampling), then its central crop resized back. `tests/test_tta_device.py` and
`tests/test_augment.py` check them against the host transforms. The constants both sides share
(view names, sets, angles) live here, so that neither side needs the other's framework.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

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

MIXUP_MODES = ("mixup", "cutmix")
"""`--mixup_mode`s (`tpuflow.inputs.mixup`)."""

DIAGONAL_ANGLES = {6: 45.0, 7: 135.0, 8: 225.0, 9: 315.0}
"""Angles in degrees (counter-clockwise) of TTA indices 6..9."""

# How each pixel-moving view moves an (H, W) array (rotations counter-clockwise as displayed, as
# `np.rot90` and `tf.image.rot90` turn): the host transforms of `augment.apply_view`, in NumPy.
_PIXEL_MOVES = {
    "orig": lambda a: a, "flip_lr": lambda a: a[:, ::-1], "flip_ud": lambda a: a[::-1],
    "rot90": lambda a: np.rot90(a, 1), "rot180": lambda a: np.rot90(a, 2), "rot270": lambda a: np.rot90(a, 3),
    "transpose": lambda a: a.T, "transverse": lambda a: np.rot90(a.T, 2),
}


def rotation_params(degrees: float, cx, cy) -> list:
    """The 8 projective parameters (`ImageProjectiveTransformV3`'s, output pixel -> input point) of
    a counter-clockwise rotation by `degrees` about the centre (cx, cy) (numbers or tensors); see
    `augment.rotate`."""
    theta = math.radians(degrees)
    cos, sin = math.cos(theta), math.sin(theta)
    return [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]


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


def check_prob(prob: float) -> None:
    """A training augmentation probability outside [0, 1] is an error naming the flag."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"--aug_prob={prob!r}: must be within [0, 1]")


def check_mixup(alpha: float, prob: float, mode: str) -> None:
    """Mixup settings that cannot work: clear errors naming the flag, before any work."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"--mixup_prob={prob}: must be within [0, 1]")
    if alpha <= 0:
        raise ValueError(f"--mixup_alpha={alpha}: must be > 0")
    if mode not in MIXUP_MODES:
        raise ValueError(f"--mixup_mode={mode!r}: expected one of {MIXUP_MODES}")


# --- the same views on the accelerator (prediction) ---------------------------------------------


def _diagonal_degrees(name: str) -> float | None:
    index = REFERENCE_VIEWS.index(name) if name in REFERENCE_VIEWS else None
    return DIAGONAL_ANGLES.get(index)


@functools.lru_cache(maxsize=64)
def _device_stages(name: str, height: int, width: int) -> tuple:
    """How the view `name` of an (height, width) image is made on the device, as NumPy constants.
    A view that moves whole pixels is a symmetry of the square: ("d4", transpose, flip rows, flip
    columns), found by moving an image of pixel indices as the host transform does
    (`_PIXEL_MOVES`) and matching it (so reversals and a transpose, not gathers). A 45-degree
    view: ("taps", 4 source pixels and bilinear weights per output pixel: `augment.rotate`'s
    sampling, points outside weighted 0) then ("crop_resize", crop offsets and sizes, and for each
    output row and column `tf.image.resize`'s two source lines and weight)."""
    degrees = _diagonal_degrees(name)
    if degrees is None:
        index = np.arange(height * width, dtype=np.int32).reshape(height, width)
        return (_symmetry(_PIXEL_MOVES[name](index), index, name),)
    top, left = (int((n - n * CROP_FRACTION) / 2) for n in (height, width))  # `tf.image.central_crop`'s rule
    p = np.float32(rotation_params(degrees, np.float32((width - 1) / 2), np.float32((height - 1) / 2)))
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
    crop = (height - 2 * top, width - 2 * left)
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


def _box_mask(boxes, height: int, width: int):
    """(B, H, W) float mask on the device: 0 inside each box, 1 outside."""
    rows = ops.arange(height, dtype="float32")[None, :, None]
    cols = ops.arange(width, dtype="float32")[None, None, :]
    top, bottom, left, right = (boxes[:, i, None, None] for i in range(4))
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return 1.0 - ops.cast(inside, "float32")


def device_blend(images, inputs: dict, block: int | None = None):
    """The images of a batch mixed as `mixup.draw_mix` drew (`inputs` holds its keys), with
    `keras.ops` (on the accelerator, after the training augmentation): mixup lam * x + (1 - lam)
    * x_partner, cutmix the partner's pixels inside the box; every frame of a sequence alike.
    `block`: `mixup.draw_mix`'s (None: the whole batch). A TensorFlow replica's step sees one block; a
    JAX step sees the global batch, each device's block gathered on its own (no copy between
    devices)."""
    shape = tuple(images.shape)
    block = block or shape[0]
    if shape[0] == block:
        partners = ops.take(images, inputs["partner"], axis=0)
    else:
        blocks = ops.reshape(images, (-1, block) + shape[1:])
        offsets = ops.reshape(inputs["partner"], (-1, block))
        partners = ops.reshape(ops.vectorized_map(lambda pair: ops.take(pair[0], pair[1], axis=0),
                                                  (blocks, offsets)), shape)
    if "box" in inputs:
        keep = _box_mask(inputs["box"], shape[-3], shape[-2])
        keep = ops.reshape(keep, (-1,) + (1,) * (len(shape) - 4) + (shape[-3], shape[-2], 1))
    else:
        keep = ops.reshape(inputs["lam"], (-1,) + (1,) * (len(shape) - 1))
    return keep * images + (1.0 - keep) * partners


class TrainAugment(keras.layers.Layer):
    """A training batch's inputs (dict: "image" and "transform", each example's transform index
    (`augment.draw`), and/or mixup's "partner", "lam", "box" (`mixup.draw_mix`)) -> the
    images the model trains on: each example's transform, then the mixup blend (the order the
    host ran them in before: the partner of a mixed example is itself augmented). float32."""

    def __init__(self, block: int | None = None, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.block = block  # mixup's (`device_blend`)

    def get_config(self):
        return {**super().get_config(), "block": self.block}

    def call(self, inputs):
        images = ops.cast(inputs["image"], "float32")
        if "transform" in inputs:
            images = device_augment(images, inputs["transform"])
        return device_blend(images, inputs, self.block) if "partner" in inputs else images

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
