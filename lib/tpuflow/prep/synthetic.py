"""Built-in synthetic tropical storms, written in the raw competition layout.

Why: the pipeline needs data that anyone can make offline in seconds, shaped exactly like the
real competition (four CSVs, `train/` and `test/` JPEG frames, storms on an irregular timeline,
train and test sharing storms) and learnable the way the real data is: one frame says a lot
about the wind speed, and the frames before it say more. Each frame is an infrared-like vortex
whose structure (central dense overcast, eye, spiral-band tightness, cold-cloud-top brightness)
is drawn from the current wind speed plus a fresh per-frame error, so a single frame is a
noisy reading and averaging a storm's recent frames reduces the noise.

Conventions: cold cloud tops are bright (as in the competition's images); the ocean is dark.
Pure NumPy + Pillow, no TensorFlow, so data preparation never waits for a TF import.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import os
import string
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from tpuflow import storage
from tpuflow.prep.split import FEATURE_COLUMNS, LABEL_COLUMNS  # what the reader of this layout expects

MIN_WIND_KT = 15
MAX_WIND_KT = 185
STEP_SECONDS = 1800  # the real data's usual 30 min between frames
_TEXTURE_KNOTS = 16  # knots per side of the cloud-texture bank (twice the frame): ~8 cloud blobs per frame width


@dataclass(frozen=True)
class SyntheticConfig:
    """What to generate. Same config (seed included) -> byte-identical output.

    n_storms storms have training frames; a `tail_storm_fraction` of them also have their last
    `test_tail_fraction` of frames in the test set; `n_test_only_storms` more storms appear only
    in the test set. `structure_noise_kt` is the per-frame error (knots, standard deviation) of
    the intensity the frame's structure is drawn from: the floor of a single-frame model's error,
    which history can average down. `pixel_noise` is per-pixel noise on a 0..1 brightness scale.
    """

    seed: int = 0
    n_storms: int = 40
    n_test_only_storms: int = 8
    min_frames: int = 15
    max_frames: int = 80
    size: int = 366
    tail_storm_fraction: float = 0.5
    test_tail_fraction: float = 0.25
    structure_noise_kt: float = 10.0
    pixel_noise: float = 0.04
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        checks = [
            ("n_storms", self.n_storms >= 1, "must be >= 1"),
            ("n_test_only_storms", self.n_test_only_storms >= 0, "must be >= 0"),
            ("min_frames", self.min_frames >= 2, "must be >= 2 (a tail storm needs train and test frames)"),
            ("max_frames", self.min_frames <= self.max_frames <= 1000,
             "must be in [min_frames, 1000] (frame numbers have 3 digits)"),
            ("size", self.size >= 16, "must be >= 16 pixels"),
            ("tail_storm_fraction", 0.0 <= self.tail_storm_fraction <= 1.0, "must be in [0, 1]"),
            ("test_tail_fraction", 0.0 < self.test_tail_fraction < 1.0, "must be in (0, 1)"),
            ("structure_noise_kt", self.structure_noise_kt >= 0.0, "must be >= 0"),
            ("pixel_noise", self.pixel_noise >= 0.0, "must be >= 0"),
            ("jpeg_quality", 1 <= self.jpeg_quality <= 100, "must be in [1, 100]"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"SyntheticConfig.{name}={getattr(self, name)!r} {why}")
        if self.n_storms + self.n_test_only_storms > 26 ** 3:
            raise ValueError("SyntheticConfig: more storms than 3-letter storm ids (17576)")


@dataclass(frozen=True)
class Storm:
    """One storm's timeline: frame k has relative_time[k] seconds and wind[k] knots.

    The first `n_train` frames are training frames, the rest test frames (all of them for a
    test-only storm, which has n_train == 0).
    """

    storm_id: str
    ocean: int
    relative_time: np.ndarray
    wind: np.ndarray
    n_train: int

    def image_id(self, frame: int) -> str:
        return f"{self.storm_id}_{frame:03d}"


def _storm_ids(rng: np.random.Generator, n: int) -> list[str]:
    """n distinct lowercase 3-letter codes, like the competition's storm ids."""
    codes = rng.choice(26 ** 3, size=n, replace=False)
    letters = string.ascii_lowercase
    return [letters[c // 676] + letters[c // 26 % 26] + letters[c % 26] for c in codes]


def _timeline(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    """Seconds since the first frame: mostly 30 min steps, some 1-3 step gaps, a little jitter."""
    steps = np.ones(n_frames - 1, dtype=np.int64)
    gaps = rng.random(n_frames - 1) < 0.08
    steps[gaps] += rng.integers(1, 4, size=int(gaps.sum()))
    seconds = steps * STEP_SECONDS
    jitter = rng.random(n_frames - 1) < 0.05
    seconds[jitter] += rng.integers(-300, 301, size=int(jitter.sum()))
    return np.concatenate([[0], np.cumsum(seconds)])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _wind_track(rng: np.random.Generator, hours: np.ndarray, peak: float) -> np.ndarray:
    """Integer knots at the given times: smooth rise to `peak`, decay, wobbles of a few knots.

    Intensification and decay run at realistic rates (at most ~1-3 kt/h), so the frames of a
    short storm show a window of its life around the peak rather than a compressed lifetime.
    """
    duration = max(float(hours[-1]), 1.0)
    start, end = rng.uniform(18, 35), rng.uniform(15, 40)
    t_peak = duration * rng.uniform(0.3, 0.75)
    # smoothstep's steepest slope is 1.5 / width: widths chosen so the steepest rate is as drawn
    rise_width = 1.5 * max(peak - start, 1.0) / rng.uniform(0.8, 3.0)
    fall_width = 1.5 * max(peak - end, 1.0) / rng.uniform(0.5, 2.0)
    rise = peak - (peak - start) * _smoothstep((t_peak - hours) / rise_width)
    fall = peak - (peak - end) * _smoothstep((hours - t_peak) / fall_width)
    track = np.where(hours <= t_peak, rise, fall)
    for _ in range(3):  # wobbles with periods of half a day to two days
        period = rng.uniform(12, 48)
        track = track + rng.uniform(1, 3) * np.sin(2 * np.pi * hours / period + rng.uniform(0, 2 * np.pi))
    return np.clip(np.rint(track), MIN_WIND_KT, MAX_WIND_KT).astype(np.int64)


def plan_storms(config: SyntheticConfig) -> list[Storm]:
    """The storms' ids, oceans, timelines, winds and train/test split (no pixels).

    Training storms come first, then test-only storms. Each storm draws from its own random
    stream, so a storm's timeline does not depend on how many storms are generated.
    """
    n_total = config.n_storms + config.n_test_only_storms
    master = np.random.default_rng([config.seed, 0])
    ids = _storm_ids(master, n_total)
    n_tail = int(round(config.tail_storm_fraction * config.n_storms))
    tail_storms = set(master.choice(config.n_storms, size=n_tail, replace=False).tolist())
    storms = []
    for index, storm_id in enumerate(ids):
        rng = np.random.default_rng([config.seed, 1, index])
        # Right-skewed peaks (most storms stay weak, a few reach 120-185 kt), and strong storms
        # tend to live longer, as in the real data.
        peak_fraction = float(rng.beta(0.8, 3.5))
        length_fraction = min(1.0, 0.6 * float(rng.random()) + 0.6 * peak_fraction)
        n_frames = int(round(config.min_frames + (config.max_frames - config.min_frames) * length_fraction))
        relative_time = _timeline(rng, n_frames)
        wind = _wind_track(rng, relative_time / 3600.0, MIN_WIND_KT + 10 + 160 * peak_fraction)
        if index >= config.n_storms:
            n_train = 0
        elif index in tail_storms:
            n_test = min(max(1, int(round(config.test_tail_fraction * n_frames))), n_frames - 1)
            n_train = n_frames - n_test
        else:
            n_train = n_frames
        storms.append(Storm(storm_id, int(rng.integers(1, 3)), relative_time, wind, n_train))
    return storms


class _Renderer:
    """Draws frames of one size; precomputes what every frame shares so a frame is cheap.

    Shared: the pixel grid, and banks of smooth cloud texture and of pixel noise twice the
    frame size, from which each frame takes random windows (drawing a fresh field per frame
    would cost more than all the drawing, and a matrix product per frame would contend for
    BLAS threads with everything else running on the machine).
    """

    def __init__(self, size: int, pixel_noise: float, rng: np.random.Generator):
        self.size = size
        self.pixel_noise = pixel_noise
        centres = (np.arange(size, dtype=np.float32) + 0.5) / (size / 2.0) - 1.0
        self.y, self.x = np.meshgrid(centres, centres, indexing="ij")  # -1..1, image centre at 0
        self.texture = self._smooth_field(rng, 2 * size)
        self.noise = rng.standard_normal((2 * size, 2 * size), dtype=np.float32)

    @staticmethod
    def _smooth_field(rng: np.random.Generator, n: int) -> np.ndarray:
        """n x n random field with standard deviation 0.8 and blobs about n/13 across (clouds)."""
        n_knots = _TEXTURE_KNOTS
        pixels = np.linspace(0.0, 1.0, n, dtype=np.float32)
        knots = np.linspace(-0.05, 1.05, n_knots, dtype=np.float32)
        width = np.float32(knots[1] - knots[0])
        basis = np.exp(-np.square((pixels[:, None] - knots[None, :]) / width))
        basis /= basis.sum(axis=1, keepdims=True)  # rows sum to 1: a weighted mean of knot values
        field = basis @ rng.standard_normal((n_knots, n_knots)).astype(np.float32) @ basis.T
        return field * np.float32(0.8 / field.std())

    def _window(self, bank: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        i, j = (int(v) for v in rng.integers(0, self.size + 1, size=2))
        return bank[i : i + self.size, j : j + self.size]

    def frame(self, intensity_kt: float, arms: int, scale: float, rng: np.random.Generator) -> np.ndarray:
        """One uint8 frame for a storm whose structure shows `intensity_kt`.

        Stronger storms: bigger and colder (brighter) central dense overcast with a sharper
        edge, tighter and more organised spiral bands, and above ~65 kt a dark eye that grows
        deeper and sharper. Nuisances (independent of the wind): spiral rotation, centre offset,
        storm scale, cloud texture, gain/offset and pixel noise.
        """
        # Log scale: most storms are weak, so structure must change visibly between 20 and 60 kt.
        s = float(np.clip(np.log(max(intensity_kt, MIN_WIND_KT) / MIN_WIND_KT) / np.log(MAX_WIND_KT / MIN_WIND_KT), 0.0, 1.0))
        organised = float(np.clip((intensity_kt - 20.0) / 45.0, 0.0, 1.0))
        eye = float(np.clip((intensity_kt - 65.0) / 60.0, 0.0, 1.0))
        ox, oy = (float(v) for v in rng.normal(0.0, 0.03, size=2))
        dx, dy = self.x - ox, self.y - oy
        r = np.sqrt(dx * dx + dy * dy) * (1.0 / scale)
        theta = np.arctan2(dy, dx)

        def inside(radius: float, edge: float) -> np.ndarray:  # smooth disc: 1 inside, 0 outside
            return 0.5 + 0.5 * np.tanh((radius - r) * (0.5 / edge))

        overcast = (0.4 + 0.6 * s) * inside(0.05 + 0.3 * s, 0.07 - 0.04 * s)
        tightness = 1.0 + 5.0 * s
        phase = float(rng.uniform(0.0, 2.0 * np.pi))
        bands = 0.5 + 0.5 * np.cos(arms * theta + tightness * np.log(r + 0.05) + phase)
        envelope = np.exp(-np.square(r * (1.0 / (0.3 + 0.45 * s))))
        texture = self._window(self.texture, rng)
        clouds = np.maximum(overcast, (0.2 + 0.45 * organised) * bands * bands * envelope)
        clouds = clouds * (1.0 + 0.15 * texture) + (0.08 + 0.17 * (1.0 - organised)) * np.maximum(texture - 0.3, 0.0)
        if eye > 0.0:
            clouds = clouds * (1.0 - 0.85 * eye * inside(0.075 - 0.03 * eye, 0.03 - 0.02 * eye))
        gain, bias = float(rng.normal(1.0, 0.06)), float(rng.normal(0.0, 0.03))
        image = gain * (0.08 + clouds) + bias
        if self.pixel_noise > 0:
            image = image + self.pixel_noise * self._window(self.noise, rng)
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _jpeg(pixels: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _csv(columns: tuple[str, ...], rows: list[tuple]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buf.getvalue()


def _write_dataset(directory: str, storms: list[Storm], config: SyntheticConfig,
                   progress: Callable[[int, int], None] | None = None) -> int:
    """Renders every frame and writes the raw layout under `directory`; returns frames written.
    `progress(storms done, storms)` is called after each storm."""
    renderer = _Renderer(config.size, config.pixel_noise, np.random.default_rng([config.seed, 3]))
    train_features, train_labels, test_features, submission = [], [], [], []
    for subdir in ("train", "test"):
        storage.makedirs(storage.join(directory, subdir))
    for index, storm in enumerate(storms):
        rng = np.random.default_rng([config.seed, 2, index])
        arms = int(rng.integers(2, 4))
        scale = float(rng.uniform(0.85, 1.15))
        for frame, (seconds, wind) in enumerate(zip(storm.relative_time, storm.wind)):
            intensity = wind + config.structure_noise_kt * rng.standard_normal()
            pixels = renderer.frame(intensity, arms, scale, rng)
            image_id = storm.image_id(frame)
            row = (image_id, storm.storm_id, int(seconds), storm.ocean)
            if frame < storm.n_train:
                subdir = "train"
                train_features.append(row)
                train_labels.append((image_id, int(wind)))
            else:
                subdir = "test"
                test_features.append(row)
                submission.append((image_id, 0))
            storage.write_bytes(storage.join(directory, subdir, image_id + ".jpg"), _jpeg(pixels, config.jpeg_quality))
        if progress:
            progress(index + 1, len(storms))
    storage.write_text(storage.join(directory, "training_set_features.csv"), _csv(FEATURE_COLUMNS, train_features))
    storage.write_text(storage.join(directory, "training_set_labels.csv"), _csv(LABEL_COLUMNS, train_labels))
    storage.write_text(storage.join(directory, "test_set_features.csv"), _csv(FEATURE_COLUMNS, test_features))
    storage.write_text(storage.join(directory, "submission_format.csv"), _csv(LABEL_COLUMNS, submission))
    return len(train_features) + len(test_features)


def make_synthetic(out_dir: str, config: SyntheticConfig = SyntheticConfig(), overwrite: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Writes a synthetic dataset in the raw competition layout to `out_dir`; returns a summary.

    The dataset is built in `<out_dir>.tmp-<pid>` and renamed into place, so `out_dir` is either
    absent/untouched or complete. An existing non-empty `out_dir` is an error unless
    `overwrite`, in which case it is replaced only once the new dataset is complete.
    """
    if not storage.is_local(out_dir):
        raise ValueError(f"make_synthetic writes local directories only, got out_dir={out_dir!r}")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"out_dir {out_dir} exists and is not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(f"out_dir {out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    started = time.perf_counter()
    storms = plan_storms(config)
    tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
    storage.remove(tmp_dir)
    try:
        n_frames = _write_dataset(tmp_dir, storms, config, progress)
        if os.path.isdir(out_dir) and os.listdir(out_dir):
            old_dir = f"{out_dir}.old-{os.getpid()}"
            os.replace(out_dir, old_dir)
            os.replace(tmp_dir, out_dir)
            storage.remove(old_dir)
        else:
            os.replace(tmp_dir, out_dir)  # also replaces an empty directory
    finally:
        storage.remove(tmp_dir)
    seconds = time.perf_counter() - started
    train_wind = np.concatenate([s.wind[: s.n_train] for s in storms])
    return {
        "out_dir": out_dir,
        "config": dataclasses.asdict(config),
        "n_storms_train": config.n_storms,
        "n_storms_tail_in_test": sum(1 for s in storms if 0 < s.n_train < len(s.wind)),
        "n_storms_test_only": config.n_test_only_storms,
        "n_train_frames": int(train_wind.size),
        "n_test_frames": n_frames - int(train_wind.size),
        "train_wind_min": int(train_wind.min()),
        "train_wind_median": float(np.median(train_wind)),
        "train_wind_mean": round(float(train_wind.mean()), 2),
        "train_wind_std": round(float(train_wind.std()), 2),
        "train_wind_max": int(train_wind.max()),
        "seconds": round(seconds, 3),
        "ms_per_frame": round(1000.0 * seconds / n_frames, 3),
    }
