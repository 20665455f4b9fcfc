"""CNN on the current frame, fine-tuned from a backbone pretrained with SimSiam on all frames
(train and test, no labels).

Pretrain first (once per backbone and resolution), from the repository root:
    python tools/pretrain_simsiam.py --data_dir=data --backbone=EfficientNetB0 --dim=366 \
        --output_dir=pretrained/simsiam-EfficientNetB0-366

Usage:
    python run.py --job=train_val_test_score_subm --tpu_ip_or_name=node-1
    python run.py --weights=/path/to/backbone.weights.h5  # another pretraining run
"""
from tpuflow import experiment, models

DEFAULTS = dict(
    architecture="cnn-1ch-simsiam", dataset_kind="single",
    data_dir="../../data", data_tfrec_dir="../../data/data-tfrec-single-frames001-step001",
    backbone="EfficientNetB0", weights="../../pretrained/simsiam-EfficientNetB0-366/backbone.weights.h5", dim=366,
    n_epochs=15, batch_size=128, lr=1e-3, aug_prob=0.5, tta_number=9,
)


def init_model(cfg):
    """Pretrained backbone features of one frame ((dim, dim, 1)) -> wind speed."""
    return models.image_model(cfg, channels=1)


def parse_example(serialized, cfg):
    """A `single` record -> ((dim, dim, 1) image in [0, 255], target)."""
    return experiment.parse_image_example(serialized, cfg, channels=1)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
