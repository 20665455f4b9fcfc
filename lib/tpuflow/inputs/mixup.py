"""Mixup and cutmix: batch-level mixing of training examples, as a `tf.data` batch map.

Each example of a batch is, with probability `prob`, mixed with a partner drawn from the same
device's share of the batch (a random permutation within each block of `block` examples: a
partner on another device would be out of reach of a TPU replica's step, and under JAX would
copy the batch between chips) with weight lam ~ Beta(alpha, alpha):

- mixup: inputs lam * x + (1 - lam) * x_partner;
- cutmix: a box covering a fraction 1 - lam of the image is pasted from the partner (lam is then
  the exact fraction of pixels kept);

and the target becomes lam * y + (1 - lam) * y_partner: a mixed wind speed for regression, a
mixed one-hot vector for classification. A sequence (B, T, H, W, C) gets the same lam (and the
same box) on every frame. Unmixed examples keep lam = 1.

The draws (partners, lam, boxes) and the mixed targets are made on the host by a `tf.data` map
after `batch(drop_remainder=True)` (static shapes; stateless, seeded per batch from `seed`); the
images are blended on the accelerator (`ondevice.device_blend`, inside `training.loop.train_model`), after the
training augmentation, so that a partner is mixed in as it was augmented: the order
augment-then-mix of the host pipeline this replaced, at the cost of one elementwise blend per
batch on the device. Whatever Keras backend trains, the same map and blend apply.
"""
from __future__ import annotations

import tensorflow as tf

from tpuflow.inputs.ondevice import MIXUP_MODES, check_mixup

def _beta(shape, alpha: float, seed) -> tf.Tensor:
    """Beta(alpha, alpha) draws from two stateless Gamma draws."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
    b = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def _boxes(lam: tf.Tensor, height: int, width: int, seed) -> tf.Tensor:
    """(B, 4) boxes (top, bottom, left, right) of area ~ (1 - lam) * H * W (clipped at the border,
    centre uniform over the image)."""
    batch = lam.shape[0]
    cut = tf.sqrt(1.0 - lam)
    cut_h, cut_w = cut * height, cut * width
    centre = tf.random.stateless_uniform([batch, 2], seed, 0.0, 1.0) * [height, width]
    top = tf.clip_by_value(tf.round(centre[:, 0] - cut_h / 2), 0, height)
    bottom = tf.clip_by_value(tf.round(centre[:, 0] + cut_h / 2), 0, height)
    left = tf.clip_by_value(tf.round(centre[:, 1] - cut_w / 2), 0, width)
    right = tf.clip_by_value(tf.round(centre[:, 1] + cut_w / 2), 0, width)
    return tf.stack([top, bottom, left, right], axis=1)


def draw_mix(x_spec: tf.TensorSpec, y: tf.Tensor, seed, *, alpha: float, prob: float,
             mode: str = "mixup", block: int | None = None) -> tuple[dict, tf.Tensor]:
    """A batch's mixing, drawn on the host: the inputs the device blends with ({"partner": each
    example's partner as its position within the example's block of `block` examples (int32;
    None: the whole batch is one block), "lam": its weight, and for cutmix "box": (top, bottom,
    left, right) in pixels}) and the mixed targets. `x_spec` is the images' spec, (B, H, W, C) or
    (B, T, H, W, C); `y` (B,) or (B, K); `seed` a shape-[2] integer tensor; B must be static
    (drop_remainder=True) and a multiple of `block`."""
    if mode not in MIXUP_MODES:
        raise ValueError(f"mixup mode {mode!r}: expected one of {MIXUP_MODES}")
    batch = x_spec.shape[0]
    if batch is None:
        raise ValueError("mixup needs a static batch size (batch with drop_remainder=True)")
    block = block or batch
    if batch % block:
        raise ValueError(f"mixup: a batch of {batch} does not split into blocks of {block} (one device's examples)")
    s_perm, s_lam, s_apply, s_box = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    offsets = tf.cast(tf.argsort(tf.random.stateless_uniform([batch // block, block], s_perm), axis=-1), tf.int32)
    partner = tf.reshape(offsets + tf.range(0, batch, block, dtype=tf.int32)[:, None], [-1])  # in the batch
    lam = _beta([batch], alpha, s_lam)
    lam = tf.where(tf.random.stateless_uniform([batch], s_apply) < prob, lam, 1.0)
    mix = {"partner": tf.reshape(offsets, [-1])}
    if mode == "cutmix":
        height, width = x_spec.shape[-3], x_spec.shape[-2]
        mix["box"] = _boxes(lam, height, width, s_box)
        top, bottom, left, right = tf.unstack(mix["box"], axis=1)
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the fraction actually kept
    mix["lam"] = lam
    y = tf.cast(y, tf.float32)
    lam_y = tf.reshape(lam, [batch] + [1] * (y.shape.rank - 1))
    return mix, lam_y * y + (1.0 - lam_y) * tf.gather(y, partner)


def mix_dataset(ds: tf.data.Dataset, *, alpha: float, prob: float, mode: str = "mixup",
                seed: int | None = None, block: int | None = None, start: int = 0,
                host: int = 0) -> tf.data.Dataset:
    """Draws the mixing of every (inputs, y) batch of `ds` with a fresh stateless seed per batch:
    the inputs become a dict ({"image"[, "transform"]} plus `draw_mix`'s keys) that
    `training.loop.train_model` blends on the device; the targets are mixed here. `block`: the examples
    one device trains on per step (partners are drawn among them; None: the whole batch). `start`:
    the batches already trained on, whose draws are skipped (a resumed stream draws as the
    uninterrupted one does). `host`: this host's index, folded into every draw (hosts mix their
    shares of a global batch independently)."""
    check_mixup(alpha, prob, mode)
    seeds = tf.data.Dataset.random(seed=seed).batch(2).skip(start)
    if host:
        seeds = seeds.map(lambda s: tf.random.experimental.stateless_fold_in(s, host))

    def mixed(xy, s):
        x, y = xy
        x = dict(x) if isinstance(x, dict) else {"image": x}
        mix, y = draw_mix(x["image"], y, s, alpha=alpha, prob=prob, mode=mode, block=block)
        return {**x, **mix}, y

    return tf.data.Dataset.zip((ds, seeds)).map(mixed, num_parallel_calls=tf.data.AUTOTUNE)


def maybe_mix(ds: tf.data.Dataset, cfg, seed: int | None = None, block: int | None = None,
              start: int = 0, host: int = 0) -> tf.data.Dataset:
    """The runner's hook: mixes the training batches when `--mixup_prob` > 0, else returns `ds`."""
    if not cfg.mixup_prob:
        return ds
    return mix_dataset(ds, alpha=cfg.mixup_alpha, prob=cfg.mixup_prob, mode=cfg.mixup_mode,
                       seed=seed, block=block, start=start, host=host).prefetch(tf.data.AUTOTUNE)
