"""Writes fold-sharded TFRecord datasets from the CV split: many specs in one pass over the frames.

Usage:
    python data_prep/create_tfrecords.py --data_dir=data --specs=single,stacked:s5,sequence:n24:s1
    python data_prep/create_tfrecords.py --data_dir=data --spec_file=data_prep/reference_specs.txt
    python data_prep/create_tfrecords.py --data_dir=data --specs=stacked:s5 --explain=abc_010,abc_000

Specs: `single`, `stacked:s<step>`, `mean:s<step>`, `sequence:n<frames>:s<step>`; each becomes
`<out_dir>/data-tfrec-<kind>-frames<NNN>-step<SSS>/` with fold.<k>.tfrecord-*, test.tfrecord-*
and manifest.json. Each source frame is read and decoded once per storm, whatever the number of
specs. A re-run skips datasets that are complete and rewrites only missing or damaged shards.
`frames` (e.g. `--specs=frames`) writes the frame store `<out_dir>/data-frames/` instead: every
source frame once, as its original bytes, from which experiments read any kind with `--view`.
`--explain` prints which source frames each channel or step of the given examples uses, and
builds nothing.
"""
from absl import flags

from tpuflow import builder, cli, frames, storage, store, validate

flags.DEFINE_string("data_dir", "data", "Dir with train_cv.csv and test_cv.csv (create_cv_split.py)")
flags.DEFINE_string("out_dir", None, "Root for the dataset dirs (default: --data_dir)")
flags.DEFINE_list("specs", ["single"], "Dataset specs, comma-separated")
flags.DEFINE_string("spec_file", None, "File with one spec per line (# comments); replaces --specs")
flags.DEFINE_integer("shards_per_fold", builder.SHARDS_PER_FOLD,
                     "Files per fold (readers interleave shards; TPU hosts read them in parallel); "
                     "for the frame store (frames), its number of files")
flags.DEFINE_enum("encoding", "jpeg", list(builder.ENCODINGS),
                  "Encoding of stacked/mean images: jpeg (4:4:4) or png (lossless)")
flags.DEFINE_integer("quality", 95, "JPEG quality of stacked/mean images")
flags.DEFINE_enum("mean_rounding", "round", list(builder.MEAN_ROUNDINGS),
                  "mean images: round to the nearest level, or truncate as the reference does")
flags.DEFINE_integer("order_seed", 0, "Seed of the shuffled record order within each fold")
flags.DEFINE_string("image_dir", None, "Dir that image_path is relative to and frames must stay "
                    "inside (default: --data_dir)")
flags.DEFINE_string("wind_speed_range", "0,250", "LOW,HIGH: plausible wind speeds (knots)")
flags.DEFINE_integer("workers", 0, "Worker processes (0: all cores)")
flags.DEFINE_integer("chunk_frames", 128, "Frames of a storm per work unit (bounds memory)")
flags.DEFINE_bool("overwrite", False, "Replace an existing dataset built with other specs/inputs")
flags.DEFINE_list("explain", [], "Image ids: print the source frames of their examples and exit")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    lines = storage.read_text(FLAGS.spec_file).splitlines() if FLAGS.spec_file else FLAGS.specs
    want_store = any(line.split("#", 1)[0].strip() == store.KIND for line in lines)
    specs = frames.parse_specs([line for line in lines if line.split("#", 1)[0].strip() != store.KIND])
    if want_store and not FLAGS.explain:  # the frame store: every frame once (tpuflow.store)
        store.build_store(FLAGS.data_dir, FLAGS.out_dir or FLAGS.data_dir,
                          shards=FLAGS.shards_per_fold, workers=FLAGS.workers or None,
                          overwrite=FLAGS.overwrite, image_dir=FLAGS.image_dir,
                          wind_speed_range=validate.parse_range(FLAGS.wind_speed_range))
        if not specs:
            return
    if FLAGS.explain:
        for line in builder.explain_examples(FLAGS.data_dir, specs, FLAGS.explain):
            print(line)
        return
    builder.build_datasets(FLAGS.data_dir, FLAGS.out_dir or FLAGS.data_dir, specs,
                           shards_per_fold=FLAGS.shards_per_fold, encoding=FLAGS.encoding,
                           quality=FLAGS.quality, workers=FLAGS.workers or None,
                           overwrite=FLAGS.overwrite, chunk_frames=FLAGS.chunk_frames,
                           mean_rounding=FLAGS.mean_rounding, order_seed=FLAGS.order_seed,
                           image_dir=FLAGS.image_dir,
                           wind_speed_range=validate.parse_range(FLAGS.wind_speed_range))


if __name__ == "__main__":
    cli.run_main(main)
