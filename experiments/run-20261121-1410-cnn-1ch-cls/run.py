"""CNN on the current frame as classification: softmax over the sorted unique wind speeds, label smoothing.

Predictions are class probabilities; scores, submission and ensembles use their expected wind
speed (probabilities times `unique_labels_sorted.npy`).

Usage:
    python run.py --job=train_val_test_score_subm --tpu_ip_or_name=node-1
    python run.py --job=score_subm --tta_number=9      # from cached predictions
"""
from tpuflow import experiment, models

DEFAULTS = dict(
    architecture="cnn-1ch-cls", dataset_kind="single", task="classification", label_smoothing=0.1,
    data_dir="../../data", data_tfrec_dir="../../data/data-tfrec-single-frames001-step001",
    backbone="EfficientNetB0", weights="imagenet", dim=366,
    n_epochs=15, batch_size=128, lr=1e-3, aug_prob=0.5, tta_number=9,
)


def init_model(cfg):
    """Backbone features of one frame ((dim, dim, 1)) -> probabilities of the n_classes wind speeds."""
    return models.image_model(cfg, channels=1)


def parse_example(serialized, cfg):
    """A `single` record -> ((dim, dim, 1) image in [0, 255], target)."""
    return experiment.parse_image_example(serialized, cfg, channels=1)


if __name__ == "__main__":
    experiment.main(init_model, parse_example, **DEFAULTS)
