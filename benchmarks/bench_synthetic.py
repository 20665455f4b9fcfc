"""Usage: python benchmarks/bench_synthetic.py [--sizes=64,366] [--frames=600] [--work_dir=/tmp]

Speed of the synthetic storm generator, in ms per frame (render + JPEG + write, end to end
through `make_synthetic`), against a baseline measured in the same run: encoding and writing
the same number of already-made frames (a fixed noise image) the same way. The ratio says
what drawing the storms costs on top of the unavoidable JPEG and file work.
"""
from __future__ import annotations

import io
import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from tpuflow import storage
from tpuflow.prep.synthetic import SyntheticConfig, make_synthetic

FLAGS = flags.FLAGS
flags.DEFINE_list("sizes", ["64", "366"], "Image sizes to measure.")
flags.DEFINE_integer("frames", 600, "About how many frames to generate per size.")
flags.DEFINE_string("work_dir", None, "Where to write the temporary datasets (default: system temp).")


def _baseline_ms_per_frame(directory: str, size: int, n_frames: int) -> float:
    """JPEG-encode and atomically write n_frames copies of one noise frame: the I/O floor."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size), dtype=np.uint8)
    started = time.perf_counter()
    for i in range(n_frames):
        buf = io.BytesIO()
        Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=90)
        storage.write_bytes(os.path.join(directory, f"{i:05d}.jpg"), buf.getvalue())
    return 1000.0 * (time.perf_counter() - started) / n_frames


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory(dir=FLAGS.work_dir) as work:
        for size in (int(s) for s in FLAGS.sizes):
            # ~40 frames per storm on average with these settings.
            config = SyntheticConfig(seed=0, size=size, n_storms=max(1, FLAGS.frames // 40), n_test_only_storms=0,
                                     min_frames=20, max_frames=60)
            summary = make_synthetic(os.path.join(work, f"synthetic-{size}"), config)
            n_frames = summary["n_train_frames"] + summary["n_test_frames"]
            baseline = _baseline_ms_per_frame(storage.join(work, f"baseline-{size}"), size, n_frames)
            print(f"size={size} frames={n_frames} synthetic={summary['ms_per_frame']:.2f} ms/frame "
                  f"baseline(jpeg+write)={baseline:.2f} ms/frame ratio={summary['ms_per_frame'] / baseline:.2f}")


if __name__ == "__main__":
    app.run(main)
