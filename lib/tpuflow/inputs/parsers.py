"""The parsers of the dataset kinds: serialized record -> (model input, training target).

Each experiment reads its records with the parser of its `--dataset_kind` (`parse_by_kind`)
unless it brings its own (`cnn-lstm` packs frames three to an image); the benchmarks and the
doctor measure the same parsers.
"""
from __future__ import annotations

import tensorflow as tf

from tpuflow.inputs import records
from tpuflow.prep import kinds


def target(example: dict, cfg):
    """The training target of a parsed record: wind speed, or the one-hot class index."""
    if cfg.task == "classification":
        return tf.one_hot(example["label_le"], cfg.n_classes)
    return tf.cast(example["label"], tf.float32)


def parse_image_example(serialized, cfg, channels: int):
    """A one-image record (`single`: 1 channel, `stacked`/`mean`: 3) -> ((dim, dim, channels)
    image in [0, 255], target)."""
    example = records.parse_image(serialized, channels=channels, dim=cfg.dim, invert=cfg.invert)
    return example["image"], target(example, cfg)


def parse_sequence_example(serialized, cfg, pack3: bool = False):
    """A `sequence` record -> ((n, dim, dim, 1) frames, oldest first, or (n/3, dim, dim, 3) with
    `pack3`; target)."""
    example = records.parse_sequence(serialized, cfg.n_frames, cfg.dim, pack3=pack3, invert=cfg.invert)
    return example["image"], target(example, cfg)


def parse_by_kind(serialized, cfg):
    """The parser of `cfg.dataset_kind`: one image of its slots as channels (1 for `single`, 3 for
    `stacked`, `mean`), or the (n, dim, dim, 1) frames of a kind with an image per slot (`sequence`)."""
    if cfg.dataset_kind not in kinds.REGISTRY:
        raise ValueError(f"--dataset_kind={cfg.dataset_kind}: the experiment passes no parse_example, so the "
                         f"records' kind must be given (one of {', '.join(kinds.NAMES)})")
    rules = kinds.REGISTRY[cfg.dataset_kind]
    if rules.image_per_slot:
        return parse_sequence_example(serialized, cfg)
    return parse_image_example(serialized, cfg, channels=rules.channels(rules.fixed_depth or cfg.n_frames))
