"""A tiny but real experiment (small CNN on `single` records) for fast runner tests."""
from tpuflow.training import experiment, models  # first, as in every run.py: picks Keras' backend, quiets TensorFlow's logs

import keras  # noqa: E402


def init_model(cfg):
    frame = keras.Input((cfg.dim, cfg.dim, 1))
    x = keras.layers.Rescaling(1 / 255)(frame)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(frame, models.head(x, cfg.task, cfg.n_classes))


def parse_example(serialized, cfg):
    return experiment.parse_image_example(serialized, cfg, channels=1)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, dim=16, batch_size=8, weights=None)
