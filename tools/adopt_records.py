"""Adopts a record directory without a manifest (built by the reference's scripts): checks that
every record parses as a record of the dataset's kind and writes `manifest.json`, so that
experiments can train on it.

Usage:
    python tools/adopt_records.py --tfrec_dir=data/data-tfrec-frames024-step001-lstm --spec=sequence:n24:s1
    python tools/adopt_records.py --tfrec_dir=data/data-tfrec-stacked-frames003-step005

Shards are `fold.<k>.tfrecord*` and `test.tfrecord*`. `--spec` may be left out when the directory
has this project's name (`data-tfrec-<kind>-frames<NNN>-step<SSS>`).
"""
from absl import flags

from tpuflow import cli

cli.quiet_native_logs()  # before TensorFlow loads

from tpuflow.inputs import adopt  # noqa: E402
from tpuflow.prep import frames  # noqa: E402

flags.DEFINE_string("tfrec_dir", None, "Record directory to adopt", required=True)
flags.DEFINE_string("spec", None, "Dataset spec: single, stacked:s<step>, mean:s<step>, sequence:n<frames>:s<step>")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}")
    try:
        spec = frames.DatasetSpec.parse(FLAGS.spec) if FLAGS.spec else None
    except ValueError as err:
        raise cli.UsageError(f"--spec={FLAGS.spec}: {err}") from None
    adopt.adopt_dataset(FLAGS.tfrec_dir, spec)


if __name__ == "__main__":
    cli.run_main(main)
