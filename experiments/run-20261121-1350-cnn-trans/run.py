"""CNN-Transformer: a time-distributed backbone over every frame of the sequence, then a Transformer encoder.

Each of the n frames of a `sequence` record gets backbone features; two self-attention layers
with learned position embeddings combine them, so the model can weigh any past frame.

Usage:
    python run.py --job=train_val_test_score_subm --tpu_ip_or_name=node-1
    python run.py --job=score_subm --tta_number=9      # from cached predictions
"""
from tpuflow import experiment, models
import keras  # after tpuflow, which picks Keras' backend (--backend)

DEFAULTS = dict(
    architecture="cnn-trans", dataset_kind="sequence",
    data_dir="../../data", data_tfrec_dir="../../data/data-tfrec-sequence-frames012-step002",
    backbone="EfficientNetB0", weights="imagenet", dim=366,
    n_epochs=15, batch_size=32, lr=1e-3, aug_prob=0.5, tta_number=9,
)


def init_model(cfg):
    """(n, dim, dim, 1) frames -> backbone features per frame -> Transformer encoder -> wind speed."""
    frames = keras.Input((cfg.n_frames, cfg.dim, cfg.dim, 1), name="frames")
    x = models.transformer_encoder(models.sequence_features(frames, cfg.backbone, cfg.weights))
    return keras.Model(frames, models.head(x, cfg.task, cfg.n_classes))


def parse_example(serialized, cfg):
    """A `sequence` record of n frames -> ((n, dim, dim, 1) in [0, 255], oldest first, target)."""
    return experiment.parse_sequence_example(serialized, cfg)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
