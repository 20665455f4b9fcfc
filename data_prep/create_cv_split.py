"""Creates the grouped k-fold CV split of the raw competition data.

Usage:
    python data_prep/create_cv_split.py --data_dir=data [--out_dir=data] [--n_folds=5]
        [--split_method=group|group_shuffle|stratified] [--seed=33] [--wind_speed_range=0,250]

Writes train_cv.csv (+ image_path, frame_id, storm_id_le, wind_speed_le, fold_id), test_cv.csv
(placeholder labels, fold_id -1) and unique_labels_sorted.npy (class index -> wind speed).
"""
import os

from absl import flags

from tpuflow import cli
from tpuflow.prep import split, validate

flags.DEFINE_string("data_dir", "data", "Raw data dir: the competition CSVs, train/ and test/ JPEGs")
flags.DEFINE_string("out_dir", None, "Where to write the split (default: --data_dir)")
flags.DEFINE_integer("n_folds", 5, "Number of folds (storms are never split across folds)")
flags.DEFINE_integer("seed", 33, "Seed of the group_shuffle and stratified methods")
flags.DEFINE_enum("split_method", "group", list(split.METHODS),
                  "group: scikit-learn GroupKFold by storm, the reference's split (no seed); "
                  "group_shuffle: seeded GroupKFold(shuffle=True); stratified: seeded "
                  "StratifiedGroupKFold on binned wind speed")
flags.DEFINE_string("wind_speed_range", "0,250", "LOW,HIGH: plausible wind speeds (knots); "
                    "others are an error naming the row")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    if FLAGS.n_folds < 2:
        raise cli.UsageError(f"--n_folds={FLAGS.n_folds}: must be >= 2 (each fold is validated on by a model "
                             "trained on the others)")
    out_dir = FLAGS.out_dir or FLAGS.data_dir
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise cli.UsageError(f"--out_dir={out_dir}: is a file, not a directory")
    train, test, labels = split.create_cv_split(
        FLAGS.data_dir, FLAGS.n_folds, FLAGS.seed, method=FLAGS.split_method,
        wind_speed_range=validate.parse_range(FLAGS.wind_speed_range))
    split.write_cv_split(out_dir, train, test, labels)
    counts = train.groupby("fold_id").agg(frames=("image_id", "size"), storms=("storm_id", "nunique"))
    print(f"{len(train)} train frames, {len(test)} test frames, {len(labels)} distinct wind speeds -> {out_dir}")
    print(counts.to_string())


if __name__ == "__main__":
    cli.run_main(main)
