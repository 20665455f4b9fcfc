"""`stacked`: frames [t-2s, t-s, t] as the three channels of one image, computed and re-encoded."""
from __future__ import annotations

import numpy as np

from tpuflow.prep.kinds import base


class Stacked(base.Kind):
    name = "stacked"
    fixed_depth = 3
    computes_pixels = True
    defaults = {"data_tfrec_dir": "../../data/data-tfrec-stacked-frames003-step002", "batch_size": 128}
    look_alike = ("stacked", "mean")

    def pixels(self, decoded, cumsum, starts, stops, pixel_from, rounding):
        return np.stack([decoded[i] for i in starts], axis=-1)


KIND = Stacked()
