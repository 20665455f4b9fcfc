"""Usage: python benchmarks/bench_encoding.py [--size=366] [--storms=3] [--frames=30] [--step=5]

What do the `stacked`/`mean` encodings cost and how exact are they? On synthetic storms
(`--size` px frames), every frame's `stacked:s<step>` and `mean:s<step>` image is encoded as

- jpeg: this project's default, RGB channels, no chroma subsampling, quality 95;
- jpeg-420: the usual YCbCr 4:2:0 JPEG at quality 95 (what the reference's files hold);
- png: lossless;

and decoded again. Printed per kind and encoding: bytes per image, the ratio to jpeg-420's
size, and the mean absolute error per channel (levels of 0-255) against the exact pixels.
For `mean` it also prints the error of each `--mean_rounding` against the exact float mean
(round: 0.25 levels on average, no bias; truncate, the reference's `np.uint8(mean)`: 0.5 darker).
"""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
from absl import app, flags
from PIL import Image

from tpuflow.prep import build_encode, frames, synthetic

FLAGS = flags.FLAGS
flags.DEFINE_integer("size", 366, "Frame size in pixels")
flags.DEFINE_integer("storms", 3, "Synthetic storms")
flags.DEFINE_integer("frames", 30, "Frames per storm")
flags.DEFINE_integer("step", 5, "Step of the stacked/mean specs")


def encode(pixels: np.ndarray, how: str) -> bytes:
    if how == "jpeg-420":
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=95, subsampling=2)  # YCbCr 4:2:0
        return buf.getvalue()
    return build_encode.encode_image(pixels, how, 95)


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as work:
        synthetic.make_synthetic(work, synthetic.SyntheticConfig(
            seed=0, size=FLAGS.size, n_storms=FLAGS.storms, n_test_only_storms=0,
            min_frames=FLAGS.frames, max_frames=FLAGS.frames, tail_storm_fraction=0.0))
        storms = {}
        for name in sorted(os.listdir(os.path.join(work, "train"))):
            data = open(os.path.join(work, "train", name), "rb").read()
            storms.setdefault(name.rsplit("_", 1)[0], []).append(build_encode.decode_frame(data, name))
    results = {}
    rounding_error = {"round": [], "truncate": []}
    for kind in ("stacked", "mean"):
        spec = frames.DatasetSpec(kind, step=FLAGS.step)
        for storm in storms.values():
            stack = np.stack(storm).astype(np.float64)
            for t in range(len(storm)):
                runs = frames.frame_indices(spec, t)
                exact_float = np.stack([stack[list(run)].mean(axis=0) for run in runs], axis=-1)
                if kind == "mean":
                    for how in rounding_error:
                        q = np.floor(exact_float + 0.5) if how == "round" else np.floor(exact_float)
                        rounding_error[how].append((np.abs(q - exact_float).mean(), (q - exact_float).mean()))
                pixels = np.floor(exact_float + 0.5).astype(np.uint8)
                for how in ("jpeg", "jpeg-420", "png"):
                    data = encode(pixels, how)
                    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64)
                    err = np.abs(decoded - pixels).reshape(-1, 3).mean(axis=0)
                    results.setdefault((kind, how), []).append((len(data), err))
    print(f"{len(storms)} storms x {FLAGS.frames} frames of {FLAGS.size} px, step {FLAGS.step}")
    for kind in ("stacked", "mean"):
        ref = np.mean([b for b, _ in results[kind, "jpeg-420"]])
        for how in ("jpeg", "jpeg-420", "png"):
            sizes = np.mean([b for b, _ in results[kind, how]])
            err = np.mean([e for _, e in results[kind, how]], axis=0)
            print(f"{kind:8s} {how:9s} {sizes / 1024:7.1f} KiB/image  x{sizes / ref:4.2f} of jpeg-420  "
                  f"mean abs error per channel {' '.join(f'{e:.2f}' for e in err)}")
    for how, values in rounding_error.items():
        abs_err, bias = np.mean(values, axis=0)
        print(f"mean_rounding={how:8s} error vs the float mean: {abs_err:.3f} levels, bias {bias:+.3f}")


if __name__ == "__main__":
    app.run(main)
