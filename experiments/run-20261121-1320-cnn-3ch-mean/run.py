"""CNN on three channels, each the mean of a range of past frames (`mean` records): smoothed history.

Usage:
    python run.py --job=train_val_test_score_subm --tpu_ip_or_name=node-1
    python run.py --job=score_subm --tta_number=9      # from cached predictions
"""
from tpuflow import experiment, models

DEFAULTS = dict(
    architecture="cnn-3ch-mean", dataset_kind="mean",
    data_dir="../../data", data_tfrec_dir="../../data/data-tfrec-mean-frames003-step002",
    backbone="EfficientNetB0", weights="imagenet", dim=366,
    n_epochs=15, batch_size=128, lr=1e-3, aug_prob=0.5, tta_number=9,
)


def init_model(cfg):
    """Backbone features of three frame-run means as channels ((dim, dim, 3)) -> wind speed."""
    return models.image_model(cfg, channels=3)


def parse_example(serialized, cfg):
    """A `mean` record -> ((dim, dim, 3) image in [0, 255], target)."""
    return experiment.parse_image_example(serialized, cfg, channels=3)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
