"""`sequence`: n frames ending at t, every s-th, current frame last, each its own grayscale image;
records copy the frames' source bytes."""
from __future__ import annotations

from tpuflow.prep.kinds import base


class Sequence(base.Kind):
    name = "sequence"
    image_per_slot = True
    slot_label = "step"
    # 12 frames an example
    defaults = {"data_tfrec_dir": "../../data/data-tfrec-sequence-frames012-step002", "batch_size": 32}


KIND = Sequence()
