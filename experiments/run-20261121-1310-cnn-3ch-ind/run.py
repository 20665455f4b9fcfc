"""CNN on frames [t-2s, t-s, t] stacked as channels (`stacked` records): recent history in one image."""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="stacked")


def init_model(cfg):
    """Backbone features of frames [t-2s, t-s, t] as channels ((dim, dim, 3)) -> wind speed."""
    return models.image_model(cfg, channels=3)


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
