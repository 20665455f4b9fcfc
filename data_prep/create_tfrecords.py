r"""Writes fold-sharded TFRecord datasets from the CV split: many specs in one pass over the frames.

Usage:
    python data_prep/create_tfrecords.py --data_dir=data --specs=single,stacked:s5,sequence:n24:s1
    python data_prep/create_tfrecords.py --data_dir=data --spec_file=data_prep/reference_specs.txt
    python data_prep/create_tfrecords.py --data_dir=data --specs=stacked:s5 --explain=abc_010,abc_000

Specs: `single`, `stacked:s<step>`, `mean:s<step>`, `sequence:n<frames>:s<step>`; each becomes
`<out_dir>/data-tfrec-<kind>-frames<NNN>-step<SSS>/` with fold.<k>.tfrecord-*, test.tfrecord-*
and manifest.json. Each source frame is read and decoded once per storm, whatever the number of
specs. A re-run skips datasets that are complete and rewrites only missing or damaged shards.
`frames` (e.g. `--specs=frames`) writes the frame store `<out_dir>/data-frames/` instead: every
source frame once, as its original bytes, from which experiments read any kind with
`--frame_store=DIR --assemble=SPEC`.
`--explain` prints which source frames each channel or step of the given examples uses, and
builds nothing.

`--runner=DirectRunner|DataflowRunner|FlinkRunner|SparkRunner` builds the same datasets, byte for
byte, on Apache Beam (`pip install tpuflow[beam]`; docs/data.md, "Building on Apache Beam"); flags this
script does not define are Beam's pipeline options, e.g.
    python data_prep/create_tfrecords.py --runner=DataflowRunner --data_dir=gs://b/raw \
        --out_dir=gs://b/records --spec_file=data_prep/reference_specs.txt \
        --project=my-project --region=us-central1 --temp_location=gs://b/tmp --setup_file=./setup.py
"""
import logging
import sys

from absl import app, flags

from tpuflow import cli, storage
from tpuflow.prep import build_encode, build_plan, builder, frames, store, validate
from tpuflow.storage import lock

flags.DEFINE_string("data_dir", "data", "Dir with train_cv.csv and test_cv.csv (create_cv_split.py)")
flags.DEFINE_string("out_dir", None, "Root for the dataset dirs (default: --data_dir)")
flags.DEFINE_list("specs", ["single"], "Dataset specs, comma-separated")
flags.DEFINE_string("spec_file", None, "File with one spec per line (# comments); replaces --specs")
flags.DEFINE_integer("shards_per_fold", build_plan.SHARDS_PER_FOLD,
                     "Files per fold (readers interleave shards; TPU hosts read them in parallel); "
                     "for the frame store (frames), its number of files")
flags.DEFINE_enum("encoding", "jpeg", list(build_encode.ENCODINGS),
                  "Encoding of stacked/mean images: jpeg (4:4:4) or png (lossless)")
flags.DEFINE_integer("quality", 95, "JPEG quality of stacked/mean images")
flags.DEFINE_enum("mean_rounding", "round", list(build_encode.MEAN_ROUNDINGS),
                  "mean images: round to the nearest level, or truncate as the reference does")
flags.DEFINE_integer("order_seed", 0, "Seed of the shuffled record order within each fold")
flags.DEFINE_string("image_dir", None, "Dir that image_path is relative to and frames must stay "
                    "inside (default: --data_dir)")
flags.DEFINE_string("wind_speed_range", "0,250", "LOW,HIGH: plausible wind speeds (knots)")
flags.DEFINE_integer("workers", 0, "Worker processes (0: all cores)")
flags.DEFINE_integer("chunk_frames", 128, "Frames of a storm per work unit (bounds memory)")
flags.DEFINE_bool("overwrite", False, "Replace an existing dataset built with other specs/inputs")
flags.DEFINE_list("explain", [], "Image ids: print the source frames of their examples and exit")
flags.DEFINE_string("runner", "local", "local (this machine's processes) or a Beam runner: "
                    "DirectRunner, DataflowRunner, FlinkRunner, SparkRunner; other flags are "
                    "then Beam's pipeline options")
FLAGS = flags.FLAGS
BEAM_ARGS: list[str] = []  # the command line's flags that are not ours: Beam's pipeline options


def split_beam_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv with only this script's flags, the other flags with their values)."""
    ours, theirs, i = argv[:1], [], 1
    while i < len(argv):
        arg = argv[i]
        name = arg.lstrip("-").split("=", 1)[0]
        known = name in FLAGS or (name.startswith("no") and name[2:] in FLAGS)
        if not arg.startswith("--") or known or arg == "--":
            ours.append(arg)
        else:
            theirs.append(arg)
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                theirs.append(argv[i + 1])  # `--project my-project`
                i += 1
        i += 1
    return ours, theirs


def main(argv):
    del argv
    if FLAGS.runner != "local" and not FLAGS.explain:
        if FLAGS.runner not in build_plan.BEAM_RUNNERS:
            raise cli.UsageError(f"--runner={FLAGS.runner!r}: expected local or one of "
                                 f"{build_plan.BEAM_RUNNERS}")
    elif BEAM_ARGS:
        raise cli.UsageError(f"unknown flags {BEAM_ARGS} (" + (
            "--explain reads one example here, without Beam" if FLAGS.explain
            else "Beam's pipeline options need a Beam --runner") + ")")
    lines = storage.read_text(FLAGS.spec_file).splitlines() if FLAGS.spec_file else FLAGS.specs
    want_store = any(line.split("#", 1)[0].strip() == store.KIND for line in lines)
    specs = frames.parse_specs([line for line in lines if line.split("#", 1)[0].strip() != store.KIND])
    if FLAGS.explain:
        for line in build_plan.explain_examples(FLAGS.data_dir, specs, FLAGS.explain):
            print(line)
        return
    out_dir = FLAGS.out_dir or FLAGS.data_dir
    storage.check_reachable(FLAGS.data_dir)  # a dead endpoint or bad credentials: one line, in seconds
    common = dict(workers=FLAGS.workers or None, overwrite=FLAGS.overwrite, image_dir=FLAGS.image_dir,
                  wind_speed_range=validate.parse_range(FLAGS.wind_speed_range))
    # one build per output dir: a second one would rewrite the first's shards under it
    with lock.RunLock(out_dir, name=lock.BUILD_LOCK, flag="--out_dir"):
        build(specs, want_store, out_dir, common)


def build(specs: list[frames.DatasetSpec], want_store: bool, out_dir: str, common: dict) -> None:
    """Builds the datasets of `specs` (and the frame store) into `out_dir`, locally or on Beam;
    `common`: the builders' shared options."""
    if FLAGS.runner != "local":
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
        # the DirectRunner relays every worker's log lines; keep their errors only
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)
        try:
            from tpuflow.prep import beam_build
        except ImportError as err:
            raise cli.UsageError(f"--runner={FLAGS.runner} needs Apache Beam ({err}): pip install "
                                 "'tpuflow[beam]'") from err
        beam_build.build(FLAGS.data_dir, out_dir, specs, want_store, FLAGS.runner, BEAM_ARGS,
                         shards_per_fold=FLAGS.shards_per_fold, encoding=FLAGS.encoding,
                         quality=FLAGS.quality, chunk_frames=FLAGS.chunk_frames,
                         mean_rounding=FLAGS.mean_rounding, order_seed=FLAGS.order_seed, **common)
        return
    if want_store:  # the frame store: every frame once (tpuflow.prep.store)
        store.build_store(FLAGS.data_dir, out_dir, shards=FLAGS.shards_per_fold, **common)
    if specs:
        builder.build_datasets(FLAGS.data_dir, out_dir, specs, shards_per_fold=FLAGS.shards_per_fold,
                               encoding=FLAGS.encoding, quality=FLAGS.quality,
                               chunk_frames=FLAGS.chunk_frames, mean_rounding=FLAGS.mean_rounding,
                               order_seed=FLAGS.order_seed, **common)


if __name__ == "__main__":
    if cli.help_requested() or "--helpfull" in sys.argv:  # ours, not Beam's pipeline options
        app.usage(shorthelp="--helpfull" not in sys.argv, writeto_stdout=True, exitcode=0)
    sys.argv, BEAM_ARGS[:] = split_beam_args(sys.argv)
    cli.run_main(main)
