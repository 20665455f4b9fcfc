"""The decoded-frame cache (`tpuflow.inputs.frame_cache`): the same examples as decoding each slot as it is
read, bit for bit and batch for batch (augmentation and resume included); its size is stated and
bounded, and a cache that cannot fit is said in one line naming --frame_cache."""
import os

import numpy as np
import pandas as pd
import pytest

from tpuflow.inputs import assembly, frame_cache, records
from tpuflow.prep import frames, shard_names, store

# test_assembly compares every spec's cached examples with prebuilt records; here, through the pipeline
KINDS = ["mean:s3", "sequence:n6:s1"]


@pytest.fixture(scope="module")
def store_dir(cv_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("frame_cache"))
    store.build_store(cv_dir, root, shards=2, workers=2, log=lambda m: None)
    return os.path.join(root, shard_names.STORE_DIR)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_and_decoded_assembly_give_the_same_batches(store_dir, kind):
    spec = frames.DatasetSpec.parse(kind)
    if spec.kind == "sequence":
        parse = lambda s: (records.parse_sequence(s, spec.depth, 24)["image"], s["label"])  # noqa: E731
    else:
        parse = lambda s: (records.parse_image(s, spec.channels, 24)["image"], s["label"])  # noqa: E731
    frame_store = store.load_store(store_dir)
    off = assembly.Assembly(frame_store, spec, frame_cache="off")
    cached = assembly.Assembly(frame_store, spec, frame_cache="memory")
    assert off.cache is None and cached.cache is not None
    n_rows = len(frame_store.table) + (spec.kind == "mean")
    assert cached.cache.nbytes == n_rows * 24 * 24 * (2 if spec.kind == "mean" else 1)

    def batches(assembled, start):
        ds = assembled.train_dataset([1, 2, 3, 4], parse, 4, seed=3, fold=0, start=start, aug_prob=0.5)
        return list(ds.take(3).as_numpy_iterator())

    for (x, y), (x2, y2) in zip(batches(off, 13), batches(cached, 13)):  # resumed mid-epoch
        np.testing.assert_array_equal(x["image"], x2["image"])
        np.testing.assert_array_equal(x["transform"], x2["transform"])
        np.testing.assert_array_equal(y, y2)
    rows = off.split_rows(None)
    for row in rows[:: max(1, len(rows) // 8)]:
        np.testing.assert_array_equal(off.example_numpy(row), cached.example_numpy(row))


def test_assemblies_of_one_store_share_its_cache(store_dir):
    frame_store = store.load_store(store_dir)
    a = assembly.Assembly(frame_store, frames.DatasetSpec.parse("single"), frame_cache="auto")
    b = assembly.Assembly(frame_store, frames.DatasetSpec.parse("sequence:n6:s1"), frame_cache="auto")
    c = assembly.Assembly(frame_store, frames.DatasetSpec.parse("stacked:s2"), frame_cache="auto")
    d = assembly.Assembly(frame_store, frames.DatasetSpec.parse("mean:s2"), frame_cache="auto")
    assert a.cache is b.cache is c.cache  # every kind decodes a frame alike (the accurate IDCT)
    assert d.cache is not a.cache  # mean assemblies also keep running sums


def test_a_cache_that_cannot_fit_is_said_in_one_line_naming_the_flag(store_dir, monkeypatch):
    frame_store = store.load_store(store_dir)
    spec = frames.DatasetSpec.parse("sequence:n6:s1")
    monkeypatch.setattr(frame_cache, "available_bytes", lambda: 1000)  # a box with 1 kB free
    said = []
    monkeypatch.setattr("builtins.print", lambda *a, **k: said.append(" ".join(map(str, a))))
    assembled = assembly.Assembly(frame_store, spec, frame_cache="auto")
    assert assembled.cache is None  # reads as before: each slot decoded as it is read
    assert len(said) == 1 and "--frame_cache=auto" in said[0] and "MiB" in said[0], said
    assert assembled.example_numpy(assembled.split_rows(0)[0]).shape == (6, 24, 24, 1)
    with pytest.raises(ValueError, match=r"--frame_cache=memory: --assemble=sequence:n6:s1 needs .* more than"):
        assembly.Assembly(frame_store, spec, frame_cache="memory").cache  # noqa: B018
    with pytest.raises(ValueError, match=r"--frame_cache='disk': expected one of auto, memory, off"):
        assembly.Assembly(frame_store, spec, frame_cache="disk")


def test_frames_of_differing_sizes_or_long_mean_runs_are_not_cached():
    table = pd.DataFrame({"height": [24, 24, 30], "width": [24, 24, 30]})
    said = []
    assert frame_cache.use_cache("auto", table, False, 1, "--assemble=single", said.append) is None
    assert "differ in size" in said[0] and "--frame_cache" in said[0]
    with pytest.raises(ValueError, match="--frame_cache=memory: --assemble=single cannot be cached"):
        frame_cache.use_cache("memory", table, False, 1, "--assemble=single")
    same = table.iloc[:2]
    assert frame_cache.use_cache("auto", same, False, 1, "--assemble=single") == (2, 24, 24)
    assert frame_cache.use_cache("auto", same, True, 300, "--assemble=mean:s300", said.append) is None
    assert "257" in said[-1]


@pytest.mark.parametrize("sums", [False, True])
def test_building_the_cache_holds_it_once(sums):
    """Building adds the cache's bytes and little more (benchmarks/bench_scale.py): a slice
    assignment per batch had copied the whole cache every time (quadratic time, twice the peak)."""
    import io

    import tensorflow as tf
    from PIL import Image

    from tpuflow.training.throughput import PeakMemory

    buf = io.BytesIO()
    Image.fromarray(np.full((366, 366), 3, np.uint8), mode="L").save(buf, format="JPEG")
    n = 1200 // (1 + sums)  # ~150 MiB of cache: far above the allocator's noise
    encoded = np.empty(n, dtype=object)
    encoded[:] = [buf.getvalue()] * n
    decode = lambda e: tf.io.decode_jpeg(e, channels=1)[..., 0]  # noqa: E731
    frame_cache.build(encoded[:64], decode, (64 + sums, 366, 366), sums, log=lambda m: None)  # starts TF's runtime
    with PeakMemory() as memory:
        cache = frame_cache.build(encoded, decode, (n + sums, 366, 366), sums, log=lambda m: None)
    # The defect doubled the peak; decode batches in flight add 1.1-1.45x of the cache, more when
    # the machine is loaded (CI beside TPU compiles: 1.36x and 1.43x).
    assert memory.peak < 1.6 * cache.nbytes, f"{memory.peak / 2**20:.0f} MiB for {cache.nbytes / 2**20:.0f} MiB"
    last = cache.run_sums(tf.constant([0]), tf.constant([n])) if sums else cache.frames(tf.constant([n - 1]))
    assert int(tf.reduce_max(last)) == (3 * n) % 2**16 if sums else 3
