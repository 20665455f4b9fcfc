"""The frame store on Cloud Storage (a real emulator process, tests/gcs_fixture.py): built straight
to gs:// or synced there, the examples assembled from it are the local store's."""
import os

import numpy as np

from tpuflow.inputs import assembly
from tpuflow.prep import frames, shard_names, store
from tpuflow.storage import sync


def _examples(assembled):
    """Every example of every split: (id, label, label_le, pixels), in split order."""
    out = []
    for fold in [*range(5), None]:
        rows = assembled.split_rows(fold)
        for row, image_id, label, label_le in zip(rows, *assembled.labels(rows)):
            out.append((image_id, label, label_le, assembled.example_numpy(row)))
    return out


def test_store_built_on_and_synced_to_gcs_assembles_the_local_stores_examples(gcs_emulator, cv_dir, tmp_path):
    quiet = lambda m: None  # noqa: E731
    local = store.build_store(cv_dir, str(tmp_path), shards=2, workers=2, log=quiet)
    bucket = gcs_emulator.create_bucket()
    built = store.build_store(cv_dir, bucket + "/built", shards=2, workers=2, log=quiet)
    assert built["sha256"] == local["sha256"]  # the same shard bytes, written to gs://
    synced = bucket + "/synced/" + shard_names.STORE_DIR
    sync.sync(os.path.join(str(tmp_path), shard_names.STORE_DIR), synced)
    spec = frames.DatasetSpec.parse("sequence:n3:s1")
    want = _examples(assembly.Assembly(store.load_store(os.path.join(str(tmp_path), shard_names.STORE_DIR), cv_dir), spec))
    for remote in (f"{bucket}/built/{shard_names.STORE_DIR}", synced):
        assembled = assembly.open_assembly(remote, str(spec), cv_dir)  # checked against the local CSVs too
        got = _examples(assembled)
        assert [g[:3] for g in got] == [w[:3] for w in want], remote
        for (image_id, *_, pixels), (_, *_, expected) in zip(got, want):
            np.testing.assert_array_equal(pixels, expected, err_msg=f"{remote} {image_id}")
    # the store keeps up to date on gs:// like on disk: a second build writes nothing
    assert store.build_store(cv_dir, bucket + "/built", shards=2, workers=2, log=quiet) == built
