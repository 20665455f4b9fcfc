"""CNN-Transformer: a time-distributed backbone over every frame of the sequence, then a Transformer encoder.

Each of the n frames of a `sequence` record gets backbone features; two self-attention layers
with learned position embeddings combine them, so the model can weigh any past frame.
"""
from tpuflow.training import experiment, models

DEFAULTS = dict(dataset_kind="sequence")


def init_model(cfg):
    """(n, dim, dim, 1) frames -> backbone features per frame -> Transformer encoder -> wind speed."""
    return models.sequence_transformer_model(cfg)


if __name__ == "__main__":
    experiment.main(init_model, **DEFAULTS)
