"""CNN on frames [t-2s, t-s, t] stacked as channels (`stacked` records): recent history in one image.

Usage:
    python run.py --job=train_val_test_score_subm --tpu_ip_or_name=node-1
    python run.py --job=score_subm --tta_number=9      # from cached predictions
"""
import keras

from tpuflow import experiment, models, records

DEFAULTS = dict(
    architecture="cnn-3ch-ind", dataset_kind="stacked",
    data_dir="../../data", data_tfrec_dir="../../data/data-tfrec-stacked-frames003-step002",
    backbone="EfficientNetB0", weights="imagenet", dim=366,
    n_epochs=15, batch_size=128, lr=1e-3, aug_prob=0.5, tta_number=9,
)


def init_model(cfg):
    """Backbone features of one (dim, dim, 3) history image -> wind speed."""
    image = keras.Input((cfg.dim, cfg.dim, 3), name="history")
    features = models.image_features(image, cfg.backbone, cfg.weights)
    return keras.Model(image, models.head(features, cfg.task, cfg.n_classes))


def parse_example(serialized, cfg):
    """A `stacked` record -> ((dim, dim, 3) image in [0, 255], target)."""
    example = records.parse_image(serialized, channels=3, dim=cfg.dim, invert=cfg.invert)
    return example["image"], experiment.target(example, cfg)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
