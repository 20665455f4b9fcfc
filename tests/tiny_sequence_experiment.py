"""A tiny but real sequence experiment (frames packed three per image, a small CNN per step, then
the mean over steps) for fast tests of sequence paths (export)."""
from tpuflow.training import experiment, models  # first, as in every run.py: picks Keras' backend, quiets TensorFlow's logs

import keras  # noqa: E402


def init_model(cfg):
    frames = keras.Input((cfg.n_frames // 3, cfg.dim, cfg.dim, 3))
    x = keras.layers.Rescaling(1 / 255)(frames)
    x = keras.layers.TimeDistributed(keras.layers.Conv2D(4, 3, strides=2, activation="relu"))(x)
    x = keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D())(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(frames, models.head(x, cfg.task, cfg.n_classes))


def parse_example(serialized, cfg):
    return experiment.parse_sequence_example(serialized, cfg, pack3=True)
