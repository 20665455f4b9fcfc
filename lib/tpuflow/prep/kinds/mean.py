"""`mean`: three channels, slot c (oldest first) the mean of the frames t-(3-c)s+1 .. t-(2-c)s that
exist; a run wholly before the first frame is the first frame alone. Computed from running sums."""
from __future__ import annotations

import numpy as np

from tpuflow.prep.kinds import base


class Mean(base.Kind):
    name = "mean"
    fixed_depth = 3
    computes_pixels = True
    averages = True
    defaults = {"data_tfrec_dir": "../../data/data-tfrec-mean-frames003-step002", "batch_size": 128}
    look_alike = ("stacked", "mean")

    def history_span(self, depth, step):
        return 3 * step - 1

    def runs(self, t, depth, step):
        slots = []
        for c in range(3):
            lo, hi = t - (3 - c) * step + 1, t - (2 - c) * step
            slots.append([i for i in range(lo, hi + 1) if i >= 0] or [0])  # wholly before: the first frame
        return slots

    def ranges(self, t, depth, step):
        c = np.arange(3, dtype=np.int64)[None, :]
        lo = t - (3 - c) * step + 1
        hi = t - (2 - c) * step  # inclusive
        # A run ending before 0 (hi < 0) also starts before 0, so it becomes [0, 1).
        return np.maximum(lo, 0), np.maximum(hi + 1, 1)

    def pixels(self, decoded, cumsum, starts, stops, pixel_from, rounding):
        return mean_image(cumsum, starts - pixel_from, stops - pixel_from, rounding)


def mean_image(cumsum: np.ndarray, starts: np.ndarray, stops: np.ndarray,
               rounding: str = "round") -> np.ndarray:
    """(H, W, 3) uint8 channel means of the frame runs [starts[c], stops[c]), rounded half up
    (`round`) or truncated (`truncate`, the reference's `np.uint8(mean)`: 0.5 level darker on
    average, a bias the model learns but does not need).

    `cumsum[i]` is the sum of the first i frames, kept modulo 2**16 (or 2**32): a difference of
    two entries is still the exact sum of a run as long as that sum fits the type, which holds
    for runs of up to 257 frames (2**16 > 257 * 255). That keeps the sums at 2 bytes a pixel.
    """
    out = np.empty((*cumsum.shape[1:], 3), np.uint8)
    for c in range(3):  # one channel at a time, in uint32: 5x faster than one int64 expression
        n = int(stops[c] - starts[c])
        sums = (cumsum[stops[c]] - cumsum[starts[c]]).astype(np.uint32)
        out[..., c] = (2 * sums + n) // (2 * n) if rounding == "round" else sums // n
    return out


KIND = Mean()
