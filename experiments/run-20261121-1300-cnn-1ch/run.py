"""CNN on the current frame alone (1 channel): regression of wind speed on a keras.applications backbone.

Usage:
    python run.py --job=train_val_test_score_subm --tpu_ip_or_name=node-1
    python run.py --job=score_subm --tta_number=9      # from cached predictions
"""
import keras

from tpuflow import experiment, models, records

DEFAULTS = dict(
    architecture="cnn-1ch", dataset_kind="single",
    data_dir="../../data", data_tfrec_dir="../../data/data-tfrec-single-frames001-step001",
    backbone="EfficientNetB0", weights="imagenet", dim=366,
    n_epochs=15, batch_size=128, lr=1e-3, aug_prob=0.5, tta_number=9,
)


def init_model(cfg):
    """Backbone features of one (dim, dim, 1) frame -> wind speed."""
    frame = keras.Input((cfg.dim, cfg.dim, 1), name="frame")
    features = models.image_features(frame, cfg.backbone, cfg.weights)
    return keras.Model(frame, models.head(features, cfg.task, cfg.n_classes))


def parse_example(serialized, cfg):
    """A `single` record -> ((dim, dim, 1) image in [0, 255], target)."""
    example = records.parse_image(serialized, channels=1, dim=cfg.dim, invert=cfg.invert)
    return example["image"], experiment.target(example, cfg)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
