"""SimSiam self-supervised pretraining of a backbone on all frames (train and test, no labels).

Usage:
    python tools/pretrain_simsiam.py --data_dir=data --output_dir=pretrained/simsiam-EfficientNetB0 \
        --backbone=EfficientNetB0 --dim=366 --n_epochs=50
    python tools/pretrain_simsiam.py --data_tfrec_dir=data/data-tfrec-single-frames001-step001 ...
    # then, in any experiment with that backbone:
    python run.py --weights=../../pretrained/simsiam-EfficientNetB0/backbone.weights.h5

Reads the raw frames (`--data_dir`: train/*.jpg and test/*.jpg) or a `single` record dataset (all
folds and test). Writes backbone.weights.h5, curves/pretrain.{csv,png}, tensorboard/pretrain/
and pretrain_card.json under --output_dir (local or gs://).
"""
from __future__ import annotations

from absl import app, flags

from tpuflow import cli

cli.quiet_native_logs()  # before TensorFlow loads

from tpuflow.training import config, pretrain  # noqa: E402

NAMES = config.define_flags([pretrain.PretrainConfig])  # the run's settings it shares, with its defaults
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    pretrain.pretrain(pretrain.PretrainConfig.resolve(**{n: FLAGS[n].value for n in NAMES}))


if __name__ == "__main__":
    cli.run_main(main, help_groups={"pretraining": NAMES})
