"""CNN on three channels, each the mean of a range of past frames (`mean` records): smoothed history."""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="mean")


def init_model(cfg):
    """Backbone features of three frame-run means as channels ((dim, dim, 3)) -> wind speed."""
    return models.image_model(cfg, channels=3)


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
