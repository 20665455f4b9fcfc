"""`single`: the current frame itself, one grayscale image (1 slot); records copy its source bytes."""
from __future__ import annotations

from tpuflow.prep.kinds import base


class Single(base.Kind):
    name = "single"
    fixed_depth = 1
    uses_history = False
    defaults = {"data_tfrec_dir": "../../data/data-tfrec-single-frames001-step001", "batch_size": 128}


KIND = Single()
