"""Writes fold-sharded TFRecord datasets from the CV split.

Usage:
    python data_prep/create_tfrecords.py --data_dir=data --out_dir=data --specs=single,stacked:s5
    python data_prep/create_tfrecords.py --data_dir=data --out_dir=data --spec_file=specs.txt

Specs: `single`, `stacked:s<step>`, `mean:s<step>`, `sequence:n<frames>:s<step>`; each becomes
`<out_dir>/data-tfrec-<kind>-frames<NNN>-step<SSS>/` with fold.<k>.tfrecord-*, test.tfrecord-*
and manifest.json.
"""
from absl import app, flags

from tpuflow import builder, frames, storage

flags.DEFINE_string("data_dir", "data", "Dir with train_cv.csv and test_cv.csv (create_cv_split.py)")
flags.DEFINE_string("out_dir", None, "Root for the dataset dirs (default: --data_dir)")
flags.DEFINE_list("specs", ["single"], "Dataset specs, comma-separated")
flags.DEFINE_string("spec_file", None, "File with one spec per line (# comments); replaces --specs")
flags.DEFINE_integer("shards_per_fold", 1, "Files per fold (TPU hosts read shards in parallel)")
flags.DEFINE_enum("encoding", "jpeg", list(builder.ENCODINGS), "Encoding of stacked/mean images")
flags.DEFINE_integer("quality", 95, "JPEG quality of stacked/mean images")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    lines = storage.read_text(FLAGS.spec_file).splitlines() if FLAGS.spec_file else FLAGS.specs
    specs = frames.parse_specs(lines)
    out_dir = FLAGS.out_dir or FLAGS.data_dir
    manifests = builder.build_datasets(FLAGS.data_dir, out_dir, specs, FLAGS.shards_per_fold,
                                       FLAGS.encoding, FLAGS.quality)
    for spec, manifest in zip(specs, manifests):
        print(f"{storage.join(out_dir, spec.name)}: {manifest['counts']}")


if __name__ == "__main__":
    app.run(main)
