"""CNN on the current frame with batch-wise mixup: each training example is blended with another of
its batch (weight ~ Beta(0.4, 0.4)), wind speeds blended alike.

Usage:
    python run.py --job=train_val_test_score_subm --tpu_ip_or_name=node-1
    python run.py --mixup_mode=cutmix                   # paste a box instead of blending
"""
from tpuflow import experiment, models

DEFAULTS = dict(
    architecture="cnn-1ch-mixup", dataset_kind="single",
    data_dir="../../data", data_tfrec_dir="../../data/data-tfrec-single-frames001-step001",
    backbone="EfficientNetB0", weights="imagenet", dim=366,
    n_epochs=15, batch_size=128, lr=1e-3, aug_prob=0.5, tta_number=9,
    mixup_prob=0.5, mixup_alpha=0.4, mixup_mode="mixup",
)


def init_model(cfg):
    """Backbone features of one frame ((dim, dim, 1)) -> wind speed."""
    return models.image_model(cfg, channels=1)


def parse_example(serialized, cfg):
    """A `single` record -> ((dim, dim, 1) image in [0, 255], target)."""
    return experiment.parse_image_example(serialized, cfg, channels=1)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
