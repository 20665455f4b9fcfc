"""CNN on the current frame with batch-wise mixup: each training example is blended with another of
its batch (weight ~ Beta(0.4, 0.4)), wind speeds blended alike.

Usage:
    python run.py --mixup_mode=cutmix                   # paste a box instead of blending
"""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="single", mixup_prob=0.5)


def init_model(cfg):
    """Backbone features of one frame ((dim, dim, 1)) -> wind speed."""
    return models.image_model(cfg, channels=1)


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
