"""Usage: python data_prep/make_synthetic.py --out_dir=DIR [--n_storms=40] [--size=366] [--seed=0] [--overwrite]

Writes built-in synthetic tropical storms in the raw competition layout (the four CSVs,
`train/` and `test/` JPEG frames), so the whole pipeline can run without the real data.
The logic lives in `tpuflow.prep.synthetic`; this script only maps flags to its config.
"""
from __future__ import annotations

import json
import sys

from absl import app, flags

from tpuflow import cli
from tpuflow.prep.synthetic import SyntheticConfig, make_synthetic

_DEFAULTS = SyntheticConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Directory to create (must be absent or empty unless --overwrite).")
flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --out_dir once the new data is complete.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Random seed: same seed and flags -> identical files.")
flags.DEFINE_integer("n_storms", _DEFAULTS.n_storms, "Storms with training frames.")
flags.DEFINE_integer("n_test_only_storms", _DEFAULTS.n_test_only_storms, "Storms that appear only in the test set.")
flags.DEFINE_integer("min_frames", _DEFAULTS.min_frames, "Fewest frames per storm.")
flags.DEFINE_integer("max_frames", _DEFAULTS.max_frames, "Most frames per storm (<= 1000).")
flags.DEFINE_integer("size", _DEFAULTS.size, "Image height and width in pixels (real data: 366).")
flags.DEFINE_float("tail_storm_fraction", _DEFAULTS.tail_storm_fraction,
                   "Fraction of training storms whose later frames go to the test set.")
flags.DEFINE_float("test_tail_fraction", _DEFAULTS.test_tail_fraction,
                   "Fraction of such a storm's frames (its last ones) that go to the test set.")
flags.DEFINE_float("structure_noise_kt", _DEFAULTS.structure_noise_kt,
                   "Per-frame error (kt, std) of the intensity a frame's structure shows.")
flags.DEFINE_float("pixel_noise", _DEFAULTS.pixel_noise, "Per-pixel noise (std, brightness 0..1).")
flags.DEFINE_integer("jpeg_quality", _DEFAULTS.jpeg_quality, "JPEG quality 1..100.")
flags.mark_flag_as_required("out_dir")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = SyntheticConfig(
        seed=FLAGS.seed,
        n_storms=FLAGS.n_storms,
        n_test_only_storms=FLAGS.n_test_only_storms,
        min_frames=FLAGS.min_frames,
        max_frames=FLAGS.max_frames,
        size=FLAGS.size,
        tail_storm_fraction=FLAGS.tail_storm_fraction,
        test_tail_fraction=FLAGS.test_tail_fraction,
        structure_noise_kt=FLAGS.structure_noise_kt,
        pixel_noise=FLAGS.pixel_noise,
        jpeg_quality=FLAGS.jpeg_quality,
    )
    bar = cli.Progress("rendering storms", FLAGS.n_storms + FLAGS.n_test_only_storms, stream=sys.stderr)
    summary = make_synthetic(FLAGS.out_dir, config, overwrite=FLAGS.overwrite,
                             progress=lambda done, total: bar.update())
    print(json.dumps(summary, indent=2, sort_keys=True))


if __name__ == "__main__":
    cli.run_main(main)
