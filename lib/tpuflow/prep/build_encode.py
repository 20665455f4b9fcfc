"""Frames into record bytes: the worker side of a build and the one place records are assembled.

- `chunk_tasks` cuts every storm into chunks of consecutive frames (skipping chunks with nothing
  to write): the work units of the local pass (`tpuflow.prep.builder`) and of Beam
  (`tpuflow.prep.beam_build`);
- `run_chunk`, in a worker, reads and decodes each frame of a chunk once (the decode also
  validates frames stored as they are) and encodes the images of every spec whose kind computes
  them (`stacked`/`mean`, each kind's `pixels` in `tpuflow.prep.kinds`):
  JPEG with RGB channels and no subsampling (the channels are different frames; see
  `encode_image`) or PNG (lossless);
- `RecordAssembler`, in the parent, takes the chunk results in storm order and assembles the
  records (the other kinds', `single`/`sequence`, hold the source JPEG bytes: no re-encoding, bit-exact).

No TensorFlow: records are serialised by `tpuflow.prep.recordio`.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from tpuflow import storage
from tpuflow.prep import frames, recordio

ENCODINGS = ("jpeg", "png")
MEAN_ROUNDINGS = ("round", "truncate")


def decode_frame(data: bytes, path: str) -> np.ndarray:
    """A frame as uint8 (H, W), decoded as every reader of it decodes it, or an error naming it.

    Accepted: 8-bit grayscale JPEG or PNG, and colour JPEG, read as its luma (Y) plane: what a
    JPEG decoder asked for one channel gives, with the accurate integer IDCT (PIL's, and
    TensorFlow's `decode_jpeg(channels=1, dct_method="INTEGER_ACCURATE")`, which records and
    assembly use: `tpuflow.inputs.records.decode_image`). Any other mode or depth (16-bit, palette,
    alpha, colour PNG, CMYK) is refused: each library maps it to 8-bit grayscale its own way, so
    the kinds built from it would disagree.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode = im.format, im.mode
            if fmt == "JPEG" and mode in ("L", "RGB"):
                im.draft("L", im.size)  # the decoder's own grayscale output: the Y plane
            if im.mode == "L" and fmt in ("JPEG", "PNG"):
                return np.asarray(im)
    except Exception as err:  # PIL raises several types for damaged files
        raise ValueError(f"{path}: unreadable image ({err})") from err
    raise ValueError(f"{path}: a {fmt} frame of mode {mode} is not read alike by every kind; frames "
                     "must be 8-bit grayscale JPEG or PNG, or colour JPEG (read as its luma): convert it")


def encode_image(pixels: np.ndarray, encoding: str, quality: int) -> bytes:
    """(H, W, C) uint8 -> JPEG or PNG bytes.

    A 3-channel JPEG is stored as RGB, not YCbCr (`keep_rgb`), and without subsampling: the
    channels are three different frames, so each is coded on its own like a grayscale frame.
    The usual YCbCr transform would mix them into two chroma planes, which JPEG quantises more
    coarsely (and 4:2:0 would also halve their resolution): at quality 95 on 366x366 frames,
    YCbCr 4:4:4 leaves a mean error of 2-4 levels per channel, RGB about 0.6, for 40% more bytes.
    """
    buf = io.BytesIO()
    image = Image.fromarray(pixels)
    if encoding == "jpeg":
        image.save(buf, format="JPEG", quality=quality, subsampling=0, keep_rgb=True)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def _size(shape) -> str:
    return f"{shape[1]}x{shape[0]}"  # width x height, as image tools print sizes


@dataclasses.dataclass(frozen=True)
class ChunkTask:
    """Frames [start, stop) of one storm, for a worker. Paths cover [read_from, stop): the chunk
    plus the history it needs: pixels from `pixel_from` for the images, source bytes from
    `raw_from` (sent back for `single`/`sequence` records). `images` lists, per stacked/mean
    spec, the positions whose image to encode."""
    storm_id: str
    paths: tuple[str, ...]
    read_from: int
    pixel_from: int
    start: int
    stop: int
    raw_from: int
    images: tuple[tuple[frames.DatasetSpec, tuple[int, ...]], ...]
    encoding: str
    quality: int
    mean_rounding: str = "round"


@dataclasses.dataclass
class ChunkResult:
    raw: list[bytes]  # source bytes of positions [task.raw_from, task.stop)
    shape: tuple[int, int]
    images: dict  # spec -> encoded images, one per requested position


def run_chunk(task: ChunkTask) -> ChunkResult:
    """Reads and decodes every frame of a chunk once and encodes its stacked/mean images.

    Frames of the chunk are all decoded (validating them: a damaged JPEG fails here, naming its
    file, not hours later in training); history frames only when an image needs them.
    """
    lo, pixel_from = task.read_from, task.pixel_from
    data = [storage.read_bytes(p) for p in task.paths]
    decoded = {i: decode_frame(data[i - lo], task.paths[i - lo]) for i in range(pixel_from, task.stop)}
    shape = decoded[task.start].shape
    for i, frame in decoded.items():
        if frame.shape != shape:
            raise ValueError(f"{task.paths[i - lo]} (storm {task.storm_id!r}): frame size "
                             f"{_size(frame.shape)} differs from {_size(shape)} of "
                             f"{task.paths[task.start - lo]}")
    images = {}
    steps = [spec.step for spec, _ in task.images if spec.rules.averages]
    if steps:  # running sums of the chunk's frames: every mean is one subtraction
        dtype = np.uint16 if max(steps) <= 257 else np.uint32
        cumsum = np.zeros((task.stop - pixel_from + 1, *shape), dtype)
        np.cumsum(np.stack([decoded[i] for i in range(pixel_from, task.stop)]), axis=0,
                  dtype=dtype, out=cumsum[1:])
    else:
        cumsum = None
    for spec, positions in task.images:
        starts, stops = frames.storm_ranges(spec, task.stop)
        images[spec] = [encode_image(spec.rules.pixels(decoded, cumsum, starts[t], stops[t], pixel_from,
                                                       task.mean_rounding), task.encoding, task.quality)
                        for t in positions]
    return ChunkResult(data[task.raw_from - lo:], shape, images)


@dataclasses.dataclass
class Chunk:
    """Parent-side bookkeeping of a ChunkTask: per position, the example's prefix, index in
    the prefix and features but the image; per spec, the positions to write."""
    rows: dict  # position -> (prefix, example index, features without `image`)
    wanted: dict  # spec -> list of positions in [start, stop)
    storm_length: int


@dataclasses.dataclass
class DatasetPlan:
    """One spec's output: its directory, key, and the shards still to write (all on a fresh
    build; the missing or damaged ones when resuming from a manifest). Made by
    `build_plan.plan_dataset`; it lives here, the lowest of the build modules, so that the
    encoding and writing sides take it without importing the planner."""
    spec: frames.DatasetSpec
    out_dir: str
    key: dict
    old: dict | None  # the matching manifest being repaired, if any
    todo: set[str]


def chunk_tasks(table: pd.DataFrame, plans: Sequence[DatasetPlan],
                wants: Callable[[frames.DatasetSpec, str, int], bool], chunk_frames: int,
                encoding: str, quality: int,
                mean_rounding: str = "round") -> Iterator[tuple[ChunkTask, Chunk]]:
    """The chunks to compute, in storm and time order, skipping chunks with nothing to write
    (`wants(spec, prefix, example index)` says whether an example's shard is to be written)."""
    copy_specs = [p.spec for p in plans if not p.spec.rules.computes_pixels]
    raw_span = max([s.history_span for s in copy_specs], default=0)
    for storm_id, storm in table.groupby("storm_id", sort=True):
        paths = storm["image_path"].tolist()
        previous_done = False
        for start in range(0, len(storm), chunk_frames):
            stop = min(start + chunk_frames, len(storm))
            rows = {t: (r.prefix, r.example_index, example_features(r))
                    for t, r in zip(range(start, stop), storm.iloc[start:stop].itertuples())}
            wanted = {}
            for plan in plans:
                keep = [t for t, (prefix, index, _) in rows.items() if wants(plan.spec, prefix, index)]
                if keep:
                    wanted[plan.spec] = keep
            if not wanted:
                previous_done = False
                continue
            images = tuple((s, tuple(ts)) for s, ts in wanted.items() if s.rules.computes_pixels)
            pixel_from = min([start] + [int(frames.storm_ranges(s, t + 1)[0][t].min())
                                        for s, ts in images for t in ts[:1]])
            if not copy_specs:
                raw_from = stop
            else:
                raw_from = start if previous_done else max(0, start - raw_span)
            read_from = min(pixel_from, raw_from, start)
            task = ChunkTask(str(storm_id), tuple(paths[read_from:stop]), read_from, pixel_from,
                             start, stop, raw_from, images, encoding, quality, mean_rounding)
            previous_done = True
            yield task, Chunk(rows, wanted, len(storm))


def example_features(row) -> dict:
    """The features of one frame's record but its `image`: the reference's (image_id, label,
    label_le) plus storm, fold, frame and time."""
    return {
        "image_id": row.image_id,
        "label": int(row.wind_speed), "label_le": int(row.wind_speed_le),
        "storm_id": str(row.storm_id), "fold_id": int(row.fold_id),
        "frame_id": int(row.frame_id), "relative_time": int(row.relative_time),
    }


class RecordAssembler:
    """Turns computed chunks, given in storm and time order, into records; the one place that
    assembles them, for the local pass and the Beam pipeline (`tpuflow.prep.beam_build`).

    `single`/`sequence` records take the source bytes of their frames: it keeps those of the
    current storm's last `history_span` frames, for the `sequence` history of the next chunk.
    """

    def __init__(self, plans: Sequence[DatasetPlan]):
        self.copy_span = max([p.spec.history_span for p in plans if not p.spec.rules.computes_pixels],
                             default=0)
        self.storm_id = None
        self.raw: dict[int, bytes] = {}
        self.indices: dict = {}

    def records(self, task: ChunkTask, chunk: Chunk, result: ChunkResult
                ) -> Iterator[tuple[frames.DatasetSpec, str, int, bytes]]:
        """(spec, shard prefix, example index, serialised record) of every wanted example of
        the chunk; consume all of it before the next chunk."""
        if task.storm_id != self.storm_id:
            self.storm_id, self.raw, self.indices = task.storm_id, {}, {}
        raw = self.raw
        raw.update(zip(range(task.raw_from, task.stop), result.raw))
        for spec, positions in chunk.wanted.items():
            copies = not spec.rules.computes_pixels
            if copies and spec not in self.indices:
                self.indices[spec] = frames.storm_indices(spec, chunk.storm_length)
            encoded = iter(result.images.get(spec, ()))
            for t in positions:
                prefix, index, features = chunk.rows[t]
                images = [raw[i] for i in self.indices[spec][t]] if copies else [next(encoded)]
                yield spec, prefix, index, recordio.encode_example({**features, "image": images})
        for i in [i for i in raw if i < task.stop - self.copy_span]:
            del raw[i]


class FrameSize:
    """The frames' size so far (`shape`, first seen in `first`; or a manifest's): a chunk of
    another size is `size_mismatch`'s one-line error, naming both frames. The local pass and
    Beam's storm loop check every chunk with it."""

    def __init__(self, shape=None):
        self.shape, self.first = (None if shape is None else list(shape)), None

    def check(self, task: ChunkTask, result: ChunkResult) -> None:
        path = task.paths[task.start - task.read_from]
        if self.shape is None:
            self.shape, self.first = list(result.shape), path
        elif list(result.shape) != self.shape:
            raise size_mismatch(path, task.storm_id, result.shape, self.shape, self.first)


def size_mismatch(path: str, storm_id: str, shape, image_size, first_path: str | None) -> ValueError:
    """The error for a frame whose size differs from the dataset's (`image_size`, of `first_path`)."""
    return ValueError(f"{path} (storm {storm_id!r}): frame size {_size(shape)} differs from "
                      f"{_size(image_size)} of {first_path or 'the dataset in its manifest'}")
