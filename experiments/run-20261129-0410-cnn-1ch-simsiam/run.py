"""CNN on the current frame, fine-tuned from a backbone pretrained with SimSiam on all frames
(train and test, no labels).

Pretrain first (once per backbone and resolution), from the repository root:
    python tools/pretrain_simsiam.py --data_dir=data --backbone=EfficientNetB0 --dim=366 \
        --output_dir=pretrained/simsiam-EfficientNetB0-366

Usage:
    python run.py --weights=/path/to/backbone.weights.h5  # another pretraining run
"""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="single", weights="../../pretrained/simsiam-EfficientNetB0-366/backbone.weights.h5")


def init_model(cfg):
    """Pretrained backbone features of one frame ((dim, dim, 1)) -> wind speed."""
    return models.image_model(cfg, channels=1)


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
