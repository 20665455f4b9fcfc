"""Assembly: examples of any dataset kind assembled at read time from the frame store.

`--frame_store=DIR --assemble=sequence:n24:s1` (the builder's spec grammar; old spelling:
`--data_tfrec_dir=DIR --view=...`) on an experiment gives the examples the prebuilt records of that
spec hold (`tpuflow.inputs.source.FrameStoreSource` is the runner's face of it; "view" means a TTA view
only):
which frames make a slot comes from `frames.storm_ranges` (the builder's rules: history across
train and test, first-frame padding, never a future frame), labels, ids and folds from the
store's table. `single`, `stacked` and `sequence` slots are the source frames' pixels exactly;
a `mean` slot is the exact mean of its run rounded half up (the builder's default
`--mean_rounding=round`) with no JPEG round trip, so it equals a PNG-encoded prebuilt `mean`.

Frames are decoded once per process into the store's decoded-frame cache (`tpuflow.inputs.frame_cache`,
`--frame_cache`) when it fits, so a slot is a copy rather than a JPEG decode; otherwise each
slot is decoded as it is read. Either way the examples are the same to the bit.

An assembled example is a dict {image_id, image (uint8 at the frames' size: (H, W, C) for the
image kinds, (n, H, W, 1) for `sequence`), label, label_le}; `records.parse_image` and
`records.parse_sequence` take it in place of a serialized record and resize it to `--dim`, so an
experiment's `parse_example` reads prebuilt records and assembled examples alike.

Training order is a global shuffle over every training example: example position p of the
endless stream is the training example `index_shuffle(p mod N)` of a permutation seeded by
(seed, fold, p div N), and its augmentation draw (a transform index, applied on the device) is
seeded by (seed, p). The stream from position `start` on is therefore exactly the stream an
uninterrupted run sees after `start` examples: a resumed fold (at the position of its backup) gets the very
batches it would have got. With several hosts, host i of n reads positions i, i + n, ...: its
rows of every global batch.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from tpuflow.inputs import augment, frame_cache as frame_cache_lib, pipeline, records
from tpuflow.prep import frames, store

AUTOTUNE = tf.data.AUTOTUNE


def parse_spec(text: str) -> frames.DatasetSpec:
    """The spec of the examples to assemble; bad text is an error naming --assemble."""
    try:
        return frames.DatasetSpec.parse(text)
    except ValueError as err:
        raise ValueError(f"--assemble={text!r}: {err}") from None


class Assembly:
    """One spec's examples over a loaded store: which store rows make each example's slots."""

    def __init__(self, frame_store: store.FrameStore, spec: frames.DatasetSpec, rounding: str = "round",
                 frame_cache: str = "auto"):
        self.store, self.spec, self.rounding, self.frame_cache = frame_store, spec, rounding, frame_cache
        if frame_cache not in frame_cache_lib.MODES:  # before any long work
            raise ValueError(f"--frame_cache={frame_cache!r}: expected one of {', '.join(frame_cache_lib.MODES)}")
        table = frame_store.table
        if spec.rules.uses_history:  # slots of one example must share a size to be stacked
            sizes = table.groupby("storm_id", sort=False)[["height", "width"]].nunique()
            mixed = sizes[(sizes > 1).any(axis=1)].index.tolist()
            if mixed:
                storm = table[table["storm_id"] == mixed[0]]
                first = storm.iloc[0]
                other = storm[(storm["height"] != first.height) | (storm["width"] != first.width)].iloc[0]
                raise ValueError(
                    f"--assemble={spec}: the store {frame_store.dir} cannot serve it: frame sizes "
                    f"differ within storm {mixed[0]!r} ({other.image_id} is {other.width}x"
                    f"{other.height}, {first.image_id} is {first.width}x{first.height})")
        starts, stops = [], []
        for _, rows in table.groupby("storm_id", sort=False).indices.items():
            a, b = frames.storm_ranges(spec, len(rows))
            starts.append(a + rows[0])  # rows of a storm are contiguous, in position order
            stops.append(b + rows[0])
        self.starts = np.concatenate(starts)  # (N, depth) store rows, per example row
        self.stops = np.concatenate(stops)

    # --- which examples ----------------------------------------------------------------------

    def train_rows(self, folds) -> np.ndarray:
        """Rows of the training examples of `folds` (storm order; the stream shuffles them)."""
        t = self.store.table
        return np.flatnonzero((t["split"] == "train").to_numpy() & t["fold_id"].isin(list(folds)).to_numpy())

    def split_rows(self, fold: int | None) -> np.ndarray:
        """Rows of a validation fold, or of the test split (None), in their CSV's row order (the
        test split: test_cv.csv's, i.e. submission_format.csv's)."""
        t = self.store.table
        mask = (t["split"] == "test") if fold is None else ((t["split"] == "train") & (t["fold_id"] == fold))
        rows = np.flatnonzero(mask.to_numpy())
        return rows[np.argsort(t["csv_row"].to_numpy()[rows], kind="stable")]

    def labels(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image ids, wind speeds, class indices) of `rows`, in that order."""
        t = self.store.table.iloc[rows]
        return t["image_id"].to_numpy().astype(str), t["label"].to_numpy(), t["label_le"].to_numpy()

    # --- assembling --------------------------------------------------------------------------

    def example_numpy(self, row: int) -> np.ndarray:
        """The example's uint8 pixels at the frames' size (inspection, tests): the pipeline's own
        assembly, run eagerly."""
        self._ready()
        return self.assemble(tf.constant(row, tf.int64))["image"].numpy()

    def _decode(self, encoded: tf.Tensor) -> tf.Tensor:
        """One source frame -> (H, W) uint8, decoded as records are (`records.decode_image`: the
        accurate IDCT the builder's `stacked`/`mean` images were computed with)."""
        return records.decode_image(encoded, 1)[..., 0]

    def _ready(self) -> None:
        """Makes, eagerly, what the map functions capture: the per-example tensors and either the
        decoded-frame cache or the encoded frames."""
        self._tensors  # noqa: B018
        if self.cache is None:
            self._encoded  # noqa: B018

    @functools.cached_property
    def cache(self) -> frame_cache_lib.FrameCache | None:
        """The store's decoded-frame cache for this assembly's decoding (`tpuflow.inputs.frame_cache`; shared by
        the assemblies of one loaded store that decode alike), or None when `frame_cache` says not to."""
        sums = self.spec.rules.averages
        longest = int((self.stops - self.starts).max()) if len(self.starts) else 0
        what = f"--assemble={self.spec}"
        shape = frame_cache_lib.use_cache(self.frame_cache, self.store.table, sums, longest, what)
        if shape is None:
            return None
        key = sums
        if key not in self.store.decoded:
            self.store.decoded[key] = frame_cache_lib.build(self.store.frames, self._decode, shape, sums, what=what)
        return self.store.decoded[key]

    @functools.cached_property
    def _encoded(self) -> tf.Variable:
        """Store row -> encoded frame: the frames as one string variable on the host CPU, read by row
        in tf.data's threads (no Python in the read path). A variable, as the decoded-frame cache is,
        so that the map functions capture a handle rather than the frames; it holds them once (a
        lookup table held its keys and a second copy of the frames: benchmarks/bench_scale.py)."""
        with tf.device("/CPU:0"):
            return tf.Variable(tf.constant(list(self.store.frames), dtype=tf.string), trainable=False)

    @functools.cached_property
    def _tensors(self) -> dict:
        """Per-example slot runs and per-row columns as tensors, made eagerly (captured by maps)."""
        table = self.store.table
        return {"starts": tf.constant(self.starts), "stops": tf.constant(self.stops),
                "image_id": tf.constant(table["image_id"].to_numpy().astype(str)),
                "label": tf.constant(table["label"].to_numpy()), "label_le": tf.constant(table["label_le"].to_numpy())}

    def assemble(self, row: tf.Tensor, cached: bool = True) -> dict:
        """A store row (the example's current frame) -> assembled example (see module doc). With
        the decoded-frame cache, slots are copied from it; without, each distinct frame is decoded
        once per example (history padding repeats frames); `cached=False` always decodes."""
        t = self._tensors
        starts, stops = t["starts"][row], t["stops"][row]
        if cached and self.cache is not None:  # decoded once per process: slots are gathers
            if self.spec.rules.averages:
                # floor((2 sum + n) / 2n) in float32, much faster than integer division and exact:
                # 2 sum + n < 2**18 is a float32 integer, and a quotient not whole is >= 1/2n from one
                total = tf.cast(self.cache.run_sums(starts, stops), tf.float32)
                n = tf.reshape(tf.cast(stops - starts, tf.float32), [-1, 1, 1])
                slots = tf.floor((2 * total + n) / (2 * n) if self.rounding == "round" else total / n)
                slots = tf.cast(slots, tf.uint8)
            else:
                slots = self.cache.frames(starts)
        elif self.spec.rules.averages:  # slot c: the mean of frames [starts[c], stops[c]), one run
            low = tf.reduce_min(starts)
            decoded = tf.map_fn(self._decode, self._encoded.sparse_read(tf.range(low, tf.reduce_max(stops))),
                                fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
            sums = tf.concat([tf.zeros_like(decoded[:1], tf.int32),
                              tf.cumsum(tf.cast(decoded, tf.int32), axis=0)], axis=0)
            total = tf.gather(sums, stops - low) - tf.gather(sums, starts - low)
            n = tf.reshape(tf.cast(stops - starts, tf.int32), [-1, 1, 1])
            slots = (2 * total + n) // (2 * n) if self.rounding == "round" else total // n
            slots = tf.cast(slots, tf.uint8)
        elif self.spec.depth == 1:  # one frame: no loop
            slots = self._decode(self._encoded.sparse_read(starts[0]))[None]
        else:
            used, slot_of = tf.unique(starts)
            decoded = tf.map_fn(self._decode, self._encoded.sparse_read(used),
                                fn_output_signature=tf.TensorSpec([None, None], tf.uint8))
            slots = tf.gather(decoded, slot_of)  # (depth, H, W)
        image = slots[..., None] if self.spec.rules.image_per_slot else tf.transpose(slots, [1, 2, 0])
        return {"image_id": t["image_id"][row], "image": image, "label": t["label"][row],
                "label_le": t["label_le"][row]}

    def first_example(self, fold: int) -> dict:
        """The first assembled example of a fold, eagerly (the runner's parse check): decoded as
        read, so that checking a run's input never waits for the decoded-frame cache."""
        self._tensors, self._encoded  # noqa: B018
        return self.assemble(tf.constant(self.split_rows(fold)[0], tf.int64), cached=False)

    # --- datasets ----------------------------------------------------------------------------

    def train_order(self, folds, *, seed: int, fold: int, start: int = 0,
                    host: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
        """Endless (store row, augmentation seed) of the global shuffle, from example position
        `start` on; `host`: (this host's index, number of hosts), each reading every n-th position
        (its share of every global batch; see module doc)."""
        rows = tf.constant(self.train_rows(folds), tf.int64)
        n = int(rows.shape[0])
        index, n_hosts = host

        def pick(p):
            order = tf.random.experimental.index_shuffle(
                p % n, seed=tf.stack([tf.constant(seed * 1_000_003 + fold, tf.int64), p // n]), max_index=n - 1)
            return tf.gather(rows, order), tf.stack([tf.constant(seed, tf.int64), p])

        return tf.data.Dataset.range(start + index, np.iinfo(np.int64).max, n_hosts).map(pick)

    def train_dataset(self, folds, parse_fn, batch_size: int, *, seed: int, fold: int, start: int = 0,
                      aug_prob: float = 0.0, host: tuple[int, int] = (0, 1)) -> tf.data.Dataset:
        """Endless batches of (inputs, target) for `model.fit`: `train_order`'s examples,
        assembled, parsed, batched (`batch_size`: this host's share of the global batch), float32;
        with `aug_prob` > 0 the inputs are {"image", "transform"}: each example's transform index,
        drawn from its seed (seeded by position), applied on the device (`training.loop.train_model`).
        Host memory: the store, plus the examples in flight (no shuffle buffer: the order needs
        none)."""
        self._ready()
        ds = self.train_order(folds, seed=seed, fold=fold, start=start, host=host)

        def example(row, seed):  # one map: assemble, parse, draw (fewer per-example hand-offs)
            x, y = parse_fn(self.assemble(row))
            return (x, augment.draw(aug_prob, seed=seed) if aug_prob > 0 else ()), y

        ds = ds.map(example, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size, drop_remainder=True)
        return ds.map(lambda xt, y: (pipeline.with_transform(pipeline.to_float(xt[0]), xt[1]), y)).prefetch(2)

    def predict_dataset(self, rows: np.ndarray, parse_fn, batch_size: int, tta_index: int = 0) -> tf.data.Dataset:
        """Inputs of `rows` in that order, as `pipeline.predict_dataset` gives them for records."""
        self._ready()
        source = tf.data.Dataset.from_tensor_slices(tf.constant(rows, tf.int64)).map(
            self.assemble, num_parallel_calls=AUTOTUNE, deterministic=True)
        return pipeline.predict_dataset([], parse_fn, batch_size, len(rows), tta_index, source=source)


@functools.lru_cache(maxsize=4)
def _loaded(store_dir: str, data_dir: str | None) -> store.FrameStore:
    return store.load_store(store_dir, data_dir)


@functools.lru_cache(maxsize=4)
def open_assembly(store_dir: str, spec: str, data_dir: str | None = None, frame_cache: str = "auto") -> Assembly:
    """The examples `spec` says assembled from the store in `store_dir` (read once per process),
    checked against the CSVs in `data_dir`, with the decoded-frame cache `frame_cache` says
    (`tpuflow.inputs.frame_cache`): every error names the spec, the store, its damaged shard or the flag."""
    parsed = parse_spec(spec)
    store.read_manifest(store_dir)
    return Assembly(_loaded(store_dir, data_dir), parsed, frame_cache=frame_cache)


def manifest_of(spec: frames.DatasetSpec, store_manifest: dict, store_dir: str) -> dict:
    """What the runner reads from a record dataset's manifest (kind, frames, folds, counts), for the
    examples of `spec` assembled from a store, from its manifest alone (nothing else is read)."""
    m = store_manifest
    return {"spec": spec.to_string(), "kind": spec.kind, "n_frames": spec.depth,
            "step": spec.step, "n_folds": m["n_folds"], "counts": m["counts"],
            "image_size": m["image_size"], "sources": m["sources"], "store": store_dir}
