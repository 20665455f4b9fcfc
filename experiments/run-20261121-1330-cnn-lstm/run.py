"""CNN-LSTM: a time-distributed backbone over the sequence packed as 3-frame images, then an LSTM.

The n frames of a `sequence` record (oldest first, current last) are packed three at a time as
the channels of one image, so the backbone runs n/3 times per example; the LSTM reads the n/3
feature vectors in time order. n must be a multiple of 3.
"""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="sequence", data_tfrec_dir="../../data/data-tfrec-sequence-frames024-step001", batch_size=64)


def init_model(cfg):
    """(n/3, dim, dim, 3) packed frames -> backbone features per step -> LSTM -> wind speed."""
    import keras  # noqa: PLC0415 (here, not at the top: `run.py --help` then starts without Keras)

    frames = keras.Input((cfg.n_frames // 3, cfg.dim, cfg.dim, 3), name="packed_frames")
    features = models.sequence_features(frames, cfg.backbone, cfg.weights)
    return keras.Model(frames, models.head(keras.layers.LSTM(256)(features), cfg.task, cfg.n_classes))


def parse_example(serialized, cfg):
    """A `sequence` record of n frames -> ((n/3, dim, dim, 3) in [0, 255], target)."""
    return experiment.parse_sequence_example(serialized, cfg, pack3=True)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
