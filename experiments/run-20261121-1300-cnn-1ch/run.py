"""CNN on the current frame alone (1 channel): regression of wind speed on a keras.applications backbone.

Usage (README, "Adding an experiment"):
    python run.py --tpu_ip_or_name=node-1
"""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="single")


def init_model(cfg):
    """Backbone features of one frame ((dim, dim, 1)) -> wind speed."""
    return models.image_model(cfg, channels=1)


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
