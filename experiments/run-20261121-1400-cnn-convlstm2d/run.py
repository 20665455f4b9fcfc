"""CNN-ConvLSTM2D: time-distributed backbone feature maps of every frame, then a convolutional LSTM.

The backbone keeps its last spatial feature maps (no pooling); ConvLSTM2D reads them in time
order, keeping the spatial layout in its state, and its last state is pooled.
"""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="sequence")


def init_model(cfg):
    """(n, dim, dim, 1) frames -> backbone maps per frame -> ConvLSTM2D -> wind speed."""
    import keras  # noqa: PLC0415 (here, not at the top: `run.py --help` then starts without Keras)

    frames = keras.Input((cfg.n_frames, cfg.dim, cfg.dim, 1), name="frames")
    maps = models.sequence_features(frames, cfg.backbone, cfg.weights, pooling=None)
    state = keras.layers.ConvLSTM2D(128, 3, padding="same")(maps)
    return keras.Model(frames, models.head(keras.layers.GlobalAveragePooling2D()(state), cfg.task, cfg.n_classes))


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
