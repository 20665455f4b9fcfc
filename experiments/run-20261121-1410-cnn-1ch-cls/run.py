"""CNN on the current frame as classification: softmax over the sorted unique wind speeds, label smoothing.

Predictions are class probabilities; scores, submission and ensembles use their expected wind
speed (probabilities times `unique_labels_sorted.npy`).
"""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="single", task="classification", label_smoothing=0.1)


def init_model(cfg):
    """Backbone features of one frame ((dim, dim, 1)) -> probabilities of the n_classes wind speeds."""
    return models.image_model(cfg, channels=1)


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
