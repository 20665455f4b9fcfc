"""CNN-Conv3D: time-distributed backbone feature maps of every frame, then 3D convolutions over them.

The backbone keeps its last spatial feature maps (no pooling); a Conv3D layer mixes them across
neighbouring frames and positions before global pooling.
"""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="sequence")


def init_model(cfg):
    """(n, dim, dim, 1) frames -> backbone maps per frame -> Conv3D over (time, h, w) -> wind speed."""
    import keras  # noqa: PLC0415 (here, not at the top: `run.py --help` then starts without Keras)

    frames = keras.Input((cfg.n_frames, cfg.dim, cfg.dim, 1), name="frames")
    maps = models.sequence_features(frames, cfg.backbone, cfg.weights, pooling=None)
    pooled = keras.layers.GlobalAveragePooling3D()(keras.layers.Conv3D(256, 3, padding="same", activation="relu")(maps))
    return keras.Model(frames, models.head(pooled, cfg.task, cfg.n_classes))


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
