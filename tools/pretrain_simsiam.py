"""SimSiam self-supervised pretraining of a backbone on all frames (train and test, no labels).

Usage:
    python tools/pretrain_simsiam.py --data_dir=data --output_dir=pretrained/simsiam-EfficientNetB0 \
        --backbone=EfficientNetB0 --dim=366 --n_epochs=50
    python tools/pretrain_simsiam.py --data_tfrec_dir=data/data-tfrec-single-frames001-step001 ...
    # then, in any experiment with that backbone:
    python run.py --weights=../../pretrained/simsiam-EfficientNetB0/backbone.weights.h5

Reads the raw frames (`--data_dir`: train/*.jpg and test/*.jpg) or a `single` record dataset (all
folds and test). Writes backbone.weights.h5, curves/pretrain.{csv,png}, tensorboard/pretrain/
and pretrain_record.json under --output_dir (local or gs://).
"""
from __future__ import annotations

import dataclasses

from absl import app, flags

from tpuflow import cli

cli.quiet_native_logs()  # before TensorFlow loads

from tpuflow.training import pretrain  # noqa: E402

flags.DEFINE_string("data_dir", None, "Raw data dir: every train/*.jpg and test/*.jpg frame")
flags.DEFINE_string("data_tfrec_dir", None, "Or a `single` record dataset (all folds and test)")
flags.DEFINE_string("output_dir", None, "Where the backbone weights, curves and record go", required=True)
flags.DEFINE_string("backbone", "EfficientNetB0", "keras.applications backbone name")
flags.DEFINE_string("weights", None, "Starting backbone weights: None, imagenet or a file")
flags.DEFINE_integer("dim", 366, "Frame height and width fed to the backbone")
flags.DEFINE_integer("n_epochs", 50, "Epochs")
flags.DEFINE_integer("batch_size", 64, "Batch size")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch (0: frames / batch size)")
flags.DEFINE_float("lr", 0.05, "Base learning rate at batch 256 (scaled linearly; cosine decay)")
flags.DEFINE_integer("proj_dim", 512, "Projector output width")
flags.DEFINE_integer("pred_dim", 128, "Predictor bottleneck width")
flags.DEFINE_integer("seed", 33, "Seed")
flags.DEFINE_boolean("quick", False, "Quick run: 1 epoch of 2 steps (tests)")
flags.DEFINE_integer("verbose", None, "Keras verbosity (default: 1 on a terminal, else 2)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    names = [f.name for f in dataclasses.fields(pretrain.PretrainConfig)]
    pretrain.pretrain(pretrain.PretrainConfig.resolve(**{n: FLAGS[n].value for n in names}))


if __name__ == "__main__":
    cli.run_main(main)
