"""What every dataset kind declares (`Kind`), with the rule most kinds share: one source frame per
slot, every `step`-th frame back from the current one, positions below 0 taking the first frame.

A kind module subclasses `Kind`, overriding only what differs, and is registered by name in
`tpuflow.prep.kinds`; the frame rules, the builder, the assembly, the parsers and the experiments' defaults
ask it instead of testing the kind's name. No TensorFlow: records are built without it.
"""
from __future__ import annotations

import numpy as np


class Kind:
    """One dataset kind's rules and facts (class attributes; instances are stateless)."""

    name: str = ""
    # frame slots per example when the rule fixes them; None: the spec gives `n_frames`
    fixed_depth: int | None = None
    # False: the example is the current frame alone, so `step` must be 1
    uses_history: bool = True
    # records hold images computed from decoded frames (`image`); else the frames' source bytes
    computes_pixels: bool = False
    # each slot is the mean of a run of frames (built from running sums; `mean_rounding` applies)
    averages: bool = False
    # each slot is its own grayscale image, the input (n, H, W, 1); else one image of `depth` channels
    image_per_slot: bool = False
    # `explain`'s name for a slot
    slot_label: str = "ch"
    # an experiment's defaults for this kind: the records it reads, and a batch that fits one
    # accelerator's memory at 366 px
    defaults: dict = {}
    # kinds whose records look alike (same slots and channels): `inputs.adopt` checks a sample against each
    look_alike: tuple[str, ...] = ()

    def channels(self, depth: int) -> int:
        """Channels of each encoded image."""
        return 1 if self.image_per_slot else depth

    def images_per_example(self, depth: int) -> int:
        """Encoded images in an example's `image` bytes list."""
        return depth if self.image_per_slot else 1

    def history_span(self, depth: int, step: int) -> int:
        """How far back (in positions) the oldest frame used can be."""
        return (depth - 1) * step

    def runs(self, t: int, depth: int, step: int) -> list[list[int]]:
        """Source positions for the example at position t: one list per slot, oldest first."""
        return [[max(t - (depth - 1 - k) * step, 0)] for k in range(depth)]

    def ranges(self, t: np.ndarray, depth: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised `runs`: half-open [starts, stops) of every slot (columns) for every t (rows)."""
        k = np.arange(depth, dtype=np.int64)[None, :]
        starts = np.maximum(t - (depth - 1 - k) * step, 0)
        return starts, starts + 1

    def pixels(self, decoded: dict, cumsum: np.ndarray | None, starts: np.ndarray, stops: np.ndarray,
               pixel_from: int, rounding: str) -> np.ndarray:
        """(H, W, depth) uint8 image of one example from the chunk's frames (`decoded`: position ->
        (H, W) frame; `cumsum`: running sums from `pixel_from`, for averaging kinds): only for
        kinds that compute pixels."""
        raise NotImplementedError(f"kind {self.name!r} copies its frames' bytes")

    def to_string(self, depth: int, step: int) -> str:
        """Compact spec form read back by `DatasetSpec.parse`: `single`, `stacked:s5`, `sequence:n24:s1`."""
        return ":".join([self.name] + ([f"n{depth}"] if self.fixed_depth is None else [])
                        + ([f"s{step}"] if self.uses_history else []))
