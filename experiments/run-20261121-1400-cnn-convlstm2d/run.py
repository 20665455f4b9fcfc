"""CNN-ConvLSTM2D: time-distributed backbone feature maps of every frame, then a convolutional LSTM.

The backbone keeps its last spatial feature maps (no pooling); ConvLSTM2D reads them in time
order, keeping the spatial layout in its state, and its last state is pooled.

Usage:
    python run.py --job=train_val_test_score_subm --tpu_ip_or_name=node-1
    python run.py --job=score_subm --tta_number=9      # from cached predictions
"""
from tpuflow import experiment, models
import keras  # after tpuflow, which picks Keras' backend (--backend)

DEFAULTS = dict(
    architecture="cnn-convlstm2d", dataset_kind="sequence",
    data_dir="../../data", data_tfrec_dir="../../data/data-tfrec-sequence-frames012-step002",
    backbone="EfficientNetB0", weights="imagenet", dim=366,
    n_epochs=15, batch_size=32, lr=1e-3, aug_prob=0.5, tta_number=9,
)


def init_model(cfg):
    """(n, dim, dim, 1) frames -> backbone maps per frame -> ConvLSTM2D -> wind speed."""
    frames = keras.Input((cfg.n_frames, cfg.dim, cfg.dim, 1), name="frames")
    maps = models.sequence_features(frames, cfg.backbone, cfg.weights, pooling=None)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ConvLSTM2D(128, 3, padding="same")(maps))
    return keras.Model(frames, models.head(x, cfg.task, cfg.n_classes))


def parse_example(serialized, cfg):
    """A `sequence` record of n frames -> ((n, dim, dim, 1) in [0, 255], oldest first, target)."""
    return experiment.parse_sequence_example(serialized, cfg)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
