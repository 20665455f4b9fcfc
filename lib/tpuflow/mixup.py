"""Mixup and cutmix: batch-level mixing of training examples, as a `tf.data` batch map.

Each example of a batch is, with probability `prob`, mixed with a partner drawn from the same
batch (a random permutation) with weight lam ~ Beta(alpha, alpha):

- mixup: inputs lam * x + (1 - lam) * x_partner;
- cutmix: a box covering a fraction 1 - lam of the image is pasted from the partner (lam is then
  the exact fraction of pixels kept);

and the target becomes lam * y + (1 - lam) * y_partner: a mixed wind speed for regression, a
mixed one-hot vector for classification. A sequence (B, T, H, W, C) gets the same lam (and the
same box) on every frame. Unmixed examples keep lam = 1.

It runs after `batch(drop_remainder=True)`, so every shape is static: the same map works whatever
Keras backend trains (TensorFlow or JAX read batches from `tf.data`), and on a TPU host it costs
one elementwise blend per batch. Draws are stateless, seeded per batch from `seed`.
"""
from __future__ import annotations

import tensorflow as tf

MODES = ("mixup", "cutmix")


def _beta(shape, alpha: float, seed) -> tf.Tensor:
    """Beta(alpha, alpha) draws from two stateless Gamma draws."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    a = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
    b = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def _box_mask(lam: tf.Tensor, height: int, width: int, seed) -> tf.Tensor:
    """(B, H, W) float mask: 0 inside a box of area ~ (1 - lam) * H * W (clipped at the border,
    centre uniform over the image), 1 outside."""
    batch = lam.shape[0]
    cut = tf.sqrt(1.0 - lam)
    cut_h, cut_w = cut * height, cut * width
    centre = tf.random.stateless_uniform([batch, 2], seed, 0.0, 1.0) * [height, width]
    top = tf.clip_by_value(tf.round(centre[:, 0] - cut_h / 2), 0, height)
    bottom = tf.clip_by_value(tf.round(centre[:, 0] + cut_h / 2), 0, height)
    left = tf.clip_by_value(tf.round(centre[:, 1] - cut_w / 2), 0, width)
    right = tf.clip_by_value(tf.round(centre[:, 1] + cut_w / 2), 0, width)
    rows = tf.range(height, dtype=tf.float32)[tf.newaxis, :, tf.newaxis]
    cols = tf.range(width, dtype=tf.float32)[tf.newaxis, tf.newaxis, :]
    inside_rows = (rows >= top[:, None, None]) & (rows < bottom[:, None, None])
    inside_cols = (cols >= left[:, None, None]) & (cols < right[:, None, None])
    return 1.0 - tf.cast(inside_rows & inside_cols, tf.float32)


def mix_batch(x: tf.Tensor, y: tf.Tensor, seed, *, alpha: float, prob: float,
              mode: str = "mixup") -> tuple[tf.Tensor, tf.Tensor]:
    """Mixes a batch: `x` (B, H, W, C) or (B, T, H, W, C), `y` (B,) or (B, K); see the module
    docstring. `seed` is a shape-[2] integer tensor; B must be static (batched with
    drop_remainder=True)."""
    if mode not in MODES:
        raise ValueError(f"mixup mode {mode!r}: expected one of {MODES}")
    batch = x.shape[0]
    if batch is None:
        raise ValueError("mix_batch needs a static batch size (batch with drop_remainder=True)")
    s_perm, s_lam, s_apply, s_box = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    partner = tf.argsort(tf.random.stateless_uniform([batch], s_perm))
    lam = _beta([batch], alpha, s_lam)
    lam = tf.where(tf.random.stateless_uniform([batch], s_apply) < prob, lam, 1.0)
    x_partner = tf.gather(x, partner)
    height, width = x.shape[-3], x.shape[-2]
    if mode == "mixup":
        keep = tf.reshape(lam, [batch] + [1] * (x.shape.rank - 1))
        mixed = keep * x + (1.0 - keep) * x_partner
    else:
        mask = _box_mask(lam, height, width, s_box)  # (B, H, W)
        lam = tf.reduce_mean(mask, axis=[1, 2])  # the fraction actually kept (box clipped, rounded)
        mask = tf.reshape(mask, [batch] + [1] * (x.shape.rank - 4) + [height, width, 1])
        mixed = mask * x + (1.0 - mask) * x_partner
    y = tf.cast(y, tf.float32)
    lam_y = tf.reshape(lam, [batch] + [1] * (y.shape.rank - 1))
    return tf.cast(mixed, x.dtype), lam_y * y + (1.0 - lam_y) * tf.gather(y, partner)


def mix_dataset(ds: tf.data.Dataset, *, alpha: float, prob: float, mode: str = "mixup",
                seed: int | None = None) -> tf.data.Dataset:
    """Applies `mix_batch` to every (x, y) batch of `ds` with a fresh stateless seed per batch."""
    check(alpha, prob, mode)
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda xy, s: mix_batch(xy[0], xy[1], s, alpha=alpha, prob=prob, mode=mode),
        num_parallel_calls=tf.data.AUTOTUNE)


def check(alpha: float, prob: float, mode: str) -> None:
    """Clear errors naming the flag, before any work."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"--mixup_prob={prob}: must be within [0, 1]")
    if alpha <= 0:
        raise ValueError(f"--mixup_alpha={alpha}: must be > 0")
    if mode not in MODES:
        raise ValueError(f"--mixup_mode={mode!r}: expected one of {MODES}")


def maybe_mix(ds: tf.data.Dataset, cfg, seed: int | None = None) -> tf.data.Dataset:
    """The runner's hook: mixes the training batches when `--mixup_prob` > 0, else returns `ds`."""
    if not cfg.mixup_prob:
        return ds
    return mix_dataset(ds, alpha=cfg.mixup_alpha, prob=cfg.mixup_prob, mode=cfg.mixup_mode,
                       seed=seed).prefetch(tf.data.AUTOTUNE)
