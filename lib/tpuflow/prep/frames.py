"""Which source frames make each example: the dataset kinds' rules, as pure Python/NumPy.

Kept apart from serialisation (no TensorFlow here) so the TFRecord builder, the `--explain`
option of `data_prep/create_tfrecords.py` and the tests all share one definition of the rules
(README, "The flow"; each kind's module in `tpuflow.prep.kinds` holds its rule), for the
current frame at position t and step s:

- `single`:   the frame itself (1 slot);
- `stacked`:  frames [t-2s, t-s, t] (3 slots);
- `mean`:     slot c (0, 1, 2, oldest first) = mean of the frames t-(3-c)s+1 .. t-(2-c)s that
              exist; a range wholly before the first frame is the first frame alone;
- `sequence`: n frames ending at t, every s-th, current frame last.

Positions are 0-based indices into one storm's frames ordered by `relative_time` (train and test
together, see `order_storm_frames`). Positions below 0 take the first frame; no position after t
is ever used, so an example never sees the future.

Every slot is described as a half-open range [start, stop) of positions: one position for
`single`/`stacked`/`sequence`, the averaged run for `mean`. The builder averages `mean` ranges
with cumulative sums, and reads the other kinds by index.
"""
from __future__ import annotations

import dataclasses
import operator
import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from tpuflow.prep import kinds, shard_names

KINDS = kinds.NAMES

# Name of the per-storm 0-based position column added by `order_storm_frames`.
POSITION_COLUMN = "frame_pos"

_SPEC_TOKEN = re.compile(r"^([ns])(\d+)$")


def _as_int(value: object, what: str, where: str) -> int:
    """`value` as a plain int (numpy ints included; bools and floats refused)."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: {what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{where}: {what} must be an integer, got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One dataset variant: which frames make an example, hence one TFRecord directory.

    `n_frames` is the number of frame slots per example. It is fixed by the kind for `single`
    (1), `stacked` and `mean` (3): leave it out (None) or give that value. `sequence` needs it.
    `step` is the spacing s in frames; `single` uses no history, so its step must be 1.
    After construction `n_frames` is always an int, so equal specs compare and hash equal.
    """

    kind: str
    n_frames: int | None = None
    step: int = 1

    def __post_init__(self) -> None:
        where = f"DatasetSpec(kind={self.kind!r}, n_frames={self.n_frames!r}, step={self.step!r})"
        rules = kinds.REGISTRY.get(self.kind)
        if rules is None:
            raise ValueError(f"{where}: unknown kind {self.kind!r}; expected one of {tuple(kinds.REGISTRY)}")
        step = _as_int(self.step, "step", where)
        if step < 1:
            raise ValueError(f"{where}: step must be >= 1")
        fixed = rules.fixed_depth
        if fixed is None:
            if self.n_frames is None:
                raise ValueError(f"{where}: kind {self.kind!r} needs n_frames")
            n = _as_int(self.n_frames, "n_frames", where)
            if n < 1:
                raise ValueError(f"{where}: n_frames must be >= 1")
        else:
            n = fixed if self.n_frames is None else _as_int(self.n_frames, "n_frames", where)
            if n != fixed:
                raise ValueError(f"{where}: kind {self.kind!r} always has n_frames={fixed}")
        if not rules.uses_history and step != 1:
            raise ValueError(f"{where}: kind {self.kind!r} uses no history; step must be 1")
        # Normalise (frozen dataclass: set through object) so DatasetSpec('stacked', step=5)
        # equals DatasetSpec('stacked', 3, 5).
        object.__setattr__(self, "n_frames", n)
        object.__setattr__(self, "step", step)

    @property
    def rules(self) -> kinds.base.Kind:
        """The kind's rules and facts (`tpuflow.prep.kinds`)."""
        return kinds.REGISTRY[self.kind]

    @property
    def depth(self) -> int:
        """Frame slots per example: 1, 3, 3 or n."""
        return int(self.n_frames)  # type: ignore[arg-type]

    @property
    def channels(self) -> int:
        """Channels of each encoded image: a `sequence` frame is one grayscale image per slot."""
        return self.rules.channels(self.depth)

    @property
    def images_per_example(self) -> int:
        """Encoded images in an example's `image` bytes list: n for `sequence`, else 1."""
        return self.rules.images_per_example(self.depth)

    @property
    def history_span(self) -> int:
        """How far back (in positions) the oldest frame used can be: frames to keep when streaming."""
        return self.rules.history_span(self.depth, self.step)

    @property
    def name(self) -> str:
        """Directory name, e.g. `data-tfrec-stacked-frames003-step005`."""
        return shard_names.dataset_dir(self.kind, self.depth, self.step)

    def to_string(self) -> str:
        """Compact form read back by `parse`: `single`, `stacked:s5`, `sequence:n24:s1`."""
        return self.rules.to_string(self.depth, self.step)

    def __str__(self) -> str:
        return self.to_string()

    @classmethod
    def parse(cls, text: str) -> "DatasetSpec":
        """Reads the compact form: `<kind>[:n<frames>][:s<step>]` (step defaults to 1).

        Accepts what `to_string` writes, plus a redundant `n3` for `stacked`/`mean`.
        Bad text raises ValueError naming the text.
        """
        if not isinstance(text, str):
            raise ValueError(f"dataset spec must be a string, got {text!r}")
        parts = text.strip().split(":")
        kind, tokens = parts[0], parts[1:]
        values: dict[str, int] = {}
        for token in tokens:
            match = _SPEC_TOKEN.match(token)
            if match is None or match.group(1) in values:
                raise ValueError(
                    f"bad dataset spec {text!r}: part {token!r} is not n<int> or s<int> "
                    "(each at most once); e.g. 'stacked:s5', 'sequence:n24:s1'")
            values[match.group(1)] = int(match.group(2))
        try:
            return cls(kind, values.get("n"), values.get("s", 1))
        except ValueError as err:
            raise ValueError(f"bad dataset spec {text!r}: {err}") from None


def parse_specs(lines: Iterable[str]) -> list[DatasetSpec]:
    """Specs from flag values or spec-file lines: blank lines and `#` comments are skipped.

    Two entries naming the same directory are an error: they would write the same records twice.
    """
    specs: list[DatasetSpec] = []
    seen: dict[str, str] = {}
    for raw in lines:
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        spec = DatasetSpec.parse(text)
        if spec.name in seen:
            raise ValueError(f"dataset spec {text!r} repeats {seen[spec.name]!r} ({spec.name})")
        seen[spec.name] = text
        specs.append(spec)
    return specs


def _check_position(t: object, where: str) -> int:
    t = _as_int(t, "frame position t", where)
    if t < 0:
        raise ValueError(f"{where}: frame position t must be >= 0, got {t}")
    return t


def frame_indices(spec: DatasetSpec, t: int) -> list[list[int]]:
    """Source positions for the example at position t: one list per slot, oldest slot first.

    `single`/`stacked`/`sequence` slots hold one position; a `mean` slot holds its whole run.
    This is the plain, one-example statement of the rules; `storm_ranges` is its vectorised twin.
    """
    t = _check_position(t, "frame_indices")
    slots = spec.rules.runs(t, spec.depth, spec.step)
    assert all(0 <= i <= t for run in slots for i in run), (spec, t, slots)
    return slots


def mean_ranges(step: int, n_frames_in_storm: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-open runs [starts, stops) averaged by each `mean` slot, for every t of a storm.

    Returns two int64 arrays of shape (T, 3), oldest slot first, with the clamping rule applied:
    runs are cut at position 0, and a run wholly before it becomes [0, 1).
    """
    return storm_ranges(DatasetSpec("mean", step=step), n_frames_in_storm)


def storm_ranges(spec: DatasetSpec, n_frames_in_storm: int) -> tuple[np.ndarray, np.ndarray]:
    """Half-open position runs [starts, stops) for every slot of every t = 0..T-1 of a storm.

    Returns two int64 arrays of shape (T, spec.depth). For every kind but `mean` each run is a
    single position (stops == starts + 1), so one code path can serve all kinds.
    """
    n = _as_int(n_frames_in_storm, "n_frames_in_storm", "storm_ranges")
    if n < 0:
        raise ValueError(f"n_frames_in_storm must be >= 0, got {n}")
    return spec.rules.ranges(np.arange(n, dtype=np.int64)[:, None], spec.depth, spec.step)


def storm_indices(spec: DatasetSpec, n_frames_in_storm: int) -> np.ndarray:
    """Source position of every slot for every t: int64 array (T, depth); not for `mean`."""
    if spec.rules.averages:
        raise ValueError(f"{spec}: {spec.kind!r} slots average runs of frames; use mean_ranges")
    return storm_ranges(spec, n_frames_in_storm)[0]


def order_storm_frames(df: pd.DataFrame) -> pd.DataFrame:
    """Frames sorted by storm then `relative_time`, with a 0-based per-storm position column.

    Pass train and test rows together: they share one timeline, so a test frame's history may be
    train frames. Returns a new frame (index reset) with `POSITION_COLUMN` added. Raises
    ValueError on missing columns, non-numeric or missing times, repeated image ids, or two
    frames of one storm at the same time (naming the storm and image ids), because any of those
    would make "the previous frame" ambiguous.
    """
    needed = ["image_id", "storm_id", "relative_time"]
    missing = [col for col in needed if col not in df.columns]
    if missing:
        raise ValueError(f"order_storm_frames: missing columns {missing}; have {list(df.columns)}")
    if not pd.api.types.is_numeric_dtype(df["relative_time"]):
        raise ValueError(
            f"order_storm_frames: relative_time must be numeric (got dtype "
            f"{df['relative_time'].dtype}); string times would sort in the wrong order")
    no_time = df.loc[df["relative_time"].isna(), "image_id"].tolist()
    if no_time:
        raise ValueError(f"order_storm_frames: relative_time missing for image ids {no_time[:10]}")
    repeated = df.loc[df["image_id"].duplicated(keep=False), "image_id"]
    if len(repeated):
        raise ValueError(
            f"order_storm_frames: image ids appear more than once: {sorted(set(repeated))[:10]}")
    clash = df[df.duplicated(["storm_id", "relative_time"], keep=False)]
    if len(clash):
        details = [
            f"storm {storm!r} at relative_time {time}: {sorted(group['image_id'])}"
            for (storm, time), group in clash.groupby(["storm_id", "relative_time"], sort=True)
        ]
        raise ValueError("order_storm_frames: frames share a time within a storm: "
                         + "; ".join(details[:10]))
    out = df.sort_values(["storm_id", "relative_time"], kind="mergesort").reset_index(drop=True)
    out[POSITION_COLUMN] = out.groupby("storm_id", sort=False).cumcount().astype(np.int64)
    return out


def _slot_source(spec: DatasetSpec, ids: Sequence[str], run: list[int]) -> str:
    if spec.rules.averages and len(run) > 1:
        return f"mean({ids[run[0]]}..{ids[run[-1]]})"
    return ids[run[0]]


def explain(spec: DatasetSpec, storm_frame_ids: Sequence[str], t: int) -> str:
    """One readable line saying which frames make the example at position t of a storm.

    `storm_frame_ids` are the storm's image ids in position order (see `order_storm_frames`).
    Slots are `ch<c>` (or `step<k>` for `sequence`); neighbouring slots with the same source are
    merged, e.g. `step0..21<-abc_000` for a short storm:

        abc_010 [stacked:s5] ch0<-abc_000 ch1<-abc_005 ch2<-abc_010
    """
    t = _check_position(t, "explain")
    if t >= len(storm_frame_ids):
        raise ValueError(f"explain: position {t} is past the storm's {len(storm_frame_ids)} frames")
    label = spec.rules.slot_label
    sources = [_slot_source(spec, storm_frame_ids, run) for run in frame_indices(spec, t)]
    parts = []
    first = 0
    for k in range(1, len(sources) + 1):
        if k == len(sources) or sources[k] != sources[first]:
            slots = f"{first}" if k - 1 == first else f"{first}..{k - 1}"
            parts.append(f"{label}{slots}<-{sources[first]}")
            first = k
    return f"{storm_frame_ids[t]} [{spec}] " + " ".join(parts)
