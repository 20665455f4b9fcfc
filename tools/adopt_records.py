"""Adopts a record directory without a manifest (built by the reference's scripts): checks that
every record parses as a record of the dataset's kind and writes `manifest.json`, so that
experiments can train on it. With `--data_dir`, every record's id, label and fold are checked
against its `train_cv.csv`/`test_cv.csv` and a sample of examples against the spec's frames.

Usage:
    python tools/adopt_records.py --tfrec_dir=data/data-tfrec-frames024-step001-lstm --data_dir=data
    python tools/adopt_records.py --tfrec_dir=data/some-records --spec=stacked:s5 --data_dir=data

Shards are `fold.<k>.tfrecord*` and `test.tfrecord*`. `--spec` may be left out when the directory
has this project's name (`data-tfrec-<kind>-frames<NNN>-step<SSS>`) or the reference's
(`data-tfrec-1d`: single; `data-tfrec-frames<NNN>-step<SSS>-ind|mean|lstm`: stacked, mean, sequence).
"""
from absl import flags

from tpuflow import cli

cli.quiet_native_logs()  # before TensorFlow loads

from tpuflow.inputs import adopt  # noqa: E402
from tpuflow.prep import frames  # noqa: E402

flags.DEFINE_string("tfrec_dir", None, "Record directory to adopt", required=True)
flags.DEFINE_string("spec", None, "Dataset spec: single, stacked:s<step>, mean:s<step>, sequence:n<frames>:s<step> "
                    "(None: from the directory's name)")
flags.DEFINE_string("data_dir", None, "Data dir the records were built from (train_cv.csv, test_cv.csv, frames): "
                    "check every record's id, label and fold, and a sample of examples' frames, against it")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        spec = frames.DatasetSpec.parse(FLAGS.spec) if FLAGS.spec else None
    except ValueError as err:
        raise cli.UsageError(f"--spec={FLAGS.spec}: {err}") from None
    adopt.adopt_dataset(FLAGS.tfrec_dir, spec, data_dir=FLAGS.data_dir)


if __name__ == "__main__":
    cli.run_main(main)
