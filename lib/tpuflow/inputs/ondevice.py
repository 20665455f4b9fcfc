"""Training augmentation, mixup's blend and the TTA views on the accelerator: `keras.ops` and NumPy
only, no TensorFlow, so that the model's training and prediction steps build and run with Keras on
JAX where TensorFlow is not installed (a GPU or TPU host with `jax` alone;
`benchmarks/device_check.py`).

The views and transforms are those of `tpuflow.inputs.augment` (the host's, in TensorFlow, by TTA
index and by name: see its docstring), made here from fixed NumPy constants that XLA compiles
under the TensorFlow and JAX backends, with no gather over the image (a TPU runs a per-pixel
gather one element at a time): quarter turns, flips and transposes as reversals and a transpose;
the 45-degree views as matmuls with bilinear weight matrices, read off along diagonals with pads
and reshapes, then the central crop resized back by two more matmuls (`_diagonal_tables`).
`tests/test_tta_device.py` and `tests/test_augment.py` check them against the host transforms.
The constants both sides share (view names, sets, angles) live here, so that neither side
needs the other's framework.
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


def check_square(height: int, width: int) -> None:
    """The training augmentation turns images by quarter turns: a non-square one is an error naming
    the flag."""
    if height != width:
        raise ValueError(f"--aug_prob: the training augmentation (quarter turns) needs square images; got "
                         f"{height}x{width} (use --aug_prob=0)")


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
    view: ("diagonal", ...) of `_diagonal_tables`."""
    degrees = _diagonal_degrees(name)
    if degrees is None:
        index = np.arange(height * width, dtype=np.int32).reshape(height, width)
        return _symmetry(_PIXEL_MOVES[name](index), index, name)
    return _diagonal_tables(degrees, height, width)


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


def _diagonal_tables(degrees: float, height: int, width: int) -> tuple:
    """A rotation by a diagonal angle, its central crop and the crop's resize back, as matrices:
    the host's sampling (`augment.rotate`: bilinear, points outside weighted 0; then
    `tf.image.central_crop` and `tf.image.resize`) without a per-pixel gather, which a TPU runs
    one element at a time.

    At 45 degrees (and 135, 225, 315) the source row of output pixel (i, j) depends on i + j
    alone and its source column on j - i alone (or the other way round), so bilinear sampling is
    separable in those coordinates: S[p, q] = sum over r, c of Wp[p, r] X[r, c] Wq[q, c], two
    matmuls, with p = a + b and q = b - a (+ h - 1) for crop pixel (a, b). The crop is then read
    off S's diagonals with pads and reshapes (`_diagonal_view`); the resize is two more matmuls.
    Returns ("diagonal", transpose (X = the image's transpose: the source row follows q), Wp
    (Q, lines), Wq (Q, lines) with q reversed, crop (h, w), rows (height, h), columns (width, w)),
    Q = h + w - 1."""
    top, left = (int((n - n * CROP_FRACTION) / 2) for n in (height, width))  # `tf.image.central_crop`'s rule
    h, w = height - 2 * top, width - 2 * left
    p = np.float32(rotation_params(degrees, np.float32((width - 1) / 2), np.float32((height - 1) / 2)))
    cos, sin, shift_x, shift_y = (np.float64(v) for v in (p[0], p[3], p[2], p[5]))
    span = np.arange(h + w - 1, dtype=np.float64)
    u = top + left + span  # i + j along p
    v = left - top + span - (h - 1)  # j - i along q
    # in_x = cos * x - sin * y + shift_x and in_y = sin * x + cos * y + shift_y, x = (u + v) / 2, y = (u - v) / 2
    transpose = cos != sin  # 45, 225: the row follows u, the column v; 135, 315: the other way round
    if transpose:
        along_p, along_q = _bilinear_lines(cos * u + shift_x, width), _bilinear_lines(sin * v + shift_y, height)
    else:
        along_p, along_q = _bilinear_lines(cos * u + shift_y, height), _bilinear_lines(cos * v + shift_x, width)
    rows, cols = (_line_matrix(*_resize_lines(n_in, n_out), n_in) for n_in, n_out in ((h, height), (w, width)))
    return "diagonal", transpose, along_p, along_q[::-1].copy(), (h, w), rows, cols


def _bilinear_lines(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) float32: bilinear weights of the n source lines at each coordinate (in
    float32, as the host computes it); lines outside get no weight."""
    coords = coords.astype(np.float32)
    low = np.floor(coords)
    frac = coords - low
    matrix = np.zeros((len(coords), n), np.float32)
    for line, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = (line >= 0) & (line < n)
        matrix[np.flatnonzero(inside), line[inside].astype(np.int64)] += weight[inside]
    return matrix


def _line_matrix(low: np.ndarray, high: np.ndarray, weight: np.ndarray, n_in: int) -> np.ndarray:
    """The (n_out, n_in) matrix of `_resize_lines`' two lines and weights."""
    matrix = np.zeros((len(low), n_in), np.float32)
    rows = np.arange(len(low))
    np.add.at(matrix, (rows, low), 1 - weight)
    np.add.at(matrix, (rows, high), weight)
    return matrix


def _resize_lines(n_in: int, n_out: int) -> tuple:
    """`tf.image.resize` (bilinear, half-pixel centres): for each output line, its two source
    lines and the second one's weight."""
    centre = (np.arange(n_out, dtype=np.float32) + 0.5) * np.float32(n_in / n_out) - 0.5
    floor = np.floor(centre)
    low = np.maximum(floor, 0).astype(np.int32)
    high = np.minimum(np.ceil(centre), n_in - 1).astype(np.int32)
    return low, high, (centre - floor).astype(np.float32)


def _diagonal_view(images, stages: tuple):
    """`_diagonal_tables`' view of (B, H, W, D) float images: four matmuls, pads, reshapes and
    static slices (no gather), so the batch dimension stays where it is sharded."""
    _, transpose, along_p, along_q, (h, w), rows, cols = stages
    depth, lines = images.shape[-1], len(along_p)
    source = ops.swapaxes(images, 1, 2) if transpose else images
    s = ops.einsum("pr,brcd->bpcd", ops.convert_to_tensor(along_p), source)
    s = ops.einsum("bpcd,qc->bdpq", s, ops.convert_to_tensor(along_q))  # (B, D, Q, Q), q reversed
    # Row p shifted right by p (pad each row by Q, flatten, drop the tail, rows one longer):
    # crop pixel (a, b) then sits in row a + b, column w - 1 + 2a.
    s = ops.reshape(ops.pad(s, ((0, 0), (0, 0), (0, 0), (0, lines))), (-1, depth, 2 * lines * lines))
    s = ops.reshape(s[..., : lines * (2 * lines - 1)], (-1, depth, lines, 2 * lines - 1))
    s = ops.reshape(s[..., w - 1: w - 1 + 2 * h], (-1, depth, lines, h, 2))[..., 0]  # (B, D, a + b, a)
    # Row a shifted left by a: flatten, pad, rows one longer: crop pixel (a, b) at (a, b).
    s = ops.pad(ops.reshape(ops.swapaxes(s, 2, 3), (-1, depth, h * lines)), ((0, 0), (0, 0), (0, h)))
    crop = ops.reshape(s, (-1, depth, h, lines + 1))[..., :w]
    out = ops.einsum("ia,bdaw->bdiw", ops.convert_to_tensor(rows), crop)
    return ops.einsum("bdiw,jw->bijd", out, ops.convert_to_tensor(cols))


def _frames_as_depth(images):
    """(B, H, W, C) as is; (B, N, H, W, C) as (B, H, W, N * C) (every frame moves alike)."""
    if len(images.shape) == 4:
        return images
    _, frames, height, width, channels = images.shape
    return ops.reshape(ops.transpose(images, (0, 2, 3, 1, 4)), (-1, height, width, frames * channels))


def _depth_as_frames(images, shape: tuple):
    if len(shape) == 4:
        return images
    _, frames, height, width, channels = shape
    return ops.transpose(ops.reshape(images, (-1, height, width, frames, channels)), (0, 3, 1, 2, 4))


_DIAGONAL_TURNS = {"rot135_crop": "rot90", "rot225_crop": "rot180", "rot315_crop": "rot270"}
"""A square image's 45-degree views beyond the first as that one turned by a quarter turn (the
rotation about the centre, the central crop and its resize all commute with quarter turns)."""


def _move(images, stages: tuple):
    """A ("d4", transpose, flip rows, flip columns) move of (..., H, W, C) images."""
    _, transpose, flip_rows, flip_cols = stages
    images = ops.swapaxes(images, -3, -2) if transpose else images
    images = ops.flip(images, axis=-3) if flip_rows else images
    return ops.flip(images, axis=-2) if flip_cols else images


def device_views(images, names) -> list:
    """The views `names` of a float batch (B, H, W, C) or (B, N, H, W, C) (static H, W, C), with
    `keras.ops` only (compiles with XLA under either backend): each within float rounding of
    `apply_view` on each example. A square image's 45-degree view is made once, the other
    diagonal views turn it."""
    *_, height, width, _ = images.shape
    made = {"orig": images}

    def view(name):
        if name not in made:
            if height == width and name in _DIAGONAL_TURNS:
                made[name] = _move(view("rot45_crop"), _device_stages(_DIAGONAL_TURNS[name], height, width))
            else:
                stages = _device_stages(name, height, width)
                made[name] = _move(images, stages) if stages[0] == "d4" else _depth_as_frames(
                    _diagonal_view(_frames_as_depth(images), stages), tuple(images.shape))
        return made[name]

    return [view(name) for name in names]


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
        views = ops.stack(device_views(images, self.views), axis=1)
        return ops.reshape(views, (-1, *images.shape[1:]))

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


def tta_model(model: keras.Model, views) -> keras.Model:
    """`model` behind `TTAViews`: one batch of B examples in, the predictions of their
    B * len(views) views out (example-major); shares `model`'s weights and its XLA setting
    (`jit_compile`: uncompiled on a CPU the views are slower than the host transforms). Build
    it where `model` was built (inside its distribution scope)."""
    inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]), dtype="float32")
    predictor = keras.Model(inputs, model(TTAViews(views)(inputs)), name=f"{model.name}_tta")
    predictor.jit_compile = model.jit_compile
    return predictor


# --- training augmentation on the accelerator ---------------------------------------------------

@functools.lru_cache(maxsize=16)
def _train_stages(height: int, width: int) -> tuple:
    """Constants of :func:`device_augment` for square (height, width) images: the (10, 3) d4 flags
    (transpose, flip rows, flip columns) each transform applies after its base image (the image
    for 0..5; its 45-degree view for 6..9, which then turns by 0, 1, 2, 3 quarters: 135 degrees
    is 45 then 90), and the 45-degree view's `_diagonal_tables`."""
    check_square(height, width)
    flags = np.zeros((N_TRANSFORMS, 3), bool)
    for t in range(1, N_TRANSFORMS):
        turn = REFERENCE_VIEWS[t] if t < 6 else _DIAGONAL_TURNS.get(REFERENCE_VIEWS[t])
        flags[t] = _device_stages(turn, height, width)[1:] if turn else False
    return flags, _device_stages(REFERENCE_VIEWS[6], height, width)


def device_augment(images, transform):
    """Each example of a float batch (B, H, W, C) or (B, N, H, W, C) (static shape) with its own
    TTA transform `transform` (B,) int (0: unchanged), every frame alike; `keras.ops` only, so
    XLA compiles it under either backend. Within float rounding of `apply_tta` on each example.

    Static shapes mean every example pays for the 45-degree view (`_diagonal_view`: matmuls),
    kept where the transform is 6..9, then for three per-example selects (transpose, flip rows,
    flip columns) that make the quarter turns and flips."""
    shape = tuple(images.shape)
    height, width = shape[-3:-1]
    flags, diagonal = _train_stages(height, width)
    transform = ops.cast(transform, "int32")

    def per_example(mask):  # (B,) bool -> broadcastable over an example
        return ops.reshape(mask, (-1,) + (1,) * (len(shape) - 1))

    turned = _depth_as_frames(_diagonal_view(_frames_as_depth(images), diagonal), shape)
    moved = ops.where(per_example(transform >= 6), turned, images)
    flag = ops.take(ops.convert_to_tensor(flags), transform, axis=0)  # (B, 3)
    moved = ops.where(per_example(flag[:, 0]), ops.swapaxes(moved, -3, -2), moved)
    moved = ops.where(per_example(flag[:, 1]), ops.flip(moved, axis=-3), moved)
    return ops.where(per_example(flag[:, 2]), ops.flip(moved, axis=-2), moved)


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
