"""The file-name modules: every name they make reads back to what made it, and foreign names are
refused (None or a clear error), so no writer and reader can drift apart."""
import os

import pytest

from tpuflow.prep import frames, shard_names
from tpuflow.results import checkpoint_names, prediction_names


def test_shard_names_round_trip_and_refuse_foreign_names(tmp_path):
    name = shard_names.shard_name(shard_names.fold_prefix(3), 1, 16)
    assert name == "fold.3.tfrecord-00001-of-00016"
    assert shard_names.parse_shard_name(name) == ("fold.3", 3, 1, 16)
    assert shard_names.parse_shard_name(shard_names.shard_name(shard_names.TEST, 0, 2)) == ("test", None, 0, 2)
    assert shard_names.parse_shard_name("fold.0.tfrecord") == ("fold.0", 0, None, None)  # adopted
    for foreign in ("frames.tfrecord-00000-of-00001", "fold.x.tfrecord", "train.tfrecord",
                    shard_names.MANIFEST, ".tmp-ab-fold.0.tfrecord-00000-of-00001"):
        assert shard_names.parse_shard_name(foreign) is None, foreign
    assert [shard_names.prefix_fold(p) for p in shard_names.prefixes(range(2)) + shard_names.prefixes()] == [0, 1, None]
    with pytest.raises(ValueError, match="'frames': not a shard prefix"):
        shard_names.prefix_fold(shard_names.STORE_PREFIX)
    # the globs select what the names make, and only that
    for n in (name, "fold.30.tfrecord-00000-of-00001", "test.tfrecord-00000-of-00001",
              "frames.tfrecord-00000-of-00001", shard_names.MANIFEST, ".tmp-x"):
        (tmp_path / n).write_bytes(b"")
    assert [os.path.basename(p) for p in shard_names.shard_files(str(tmp_path))] == [
        "fold.3.tfrecord-00001-of-00016", "fold.30.tfrecord-00000-of-00001",
        "frames.tfrecord-00000-of-00001", "test.tfrecord-00000-of-00001"]
    assert shard_names.shard_files(str(tmp_path / "absent")) == []


def test_dataset_dir_names_round_trip():
    for text in ("single", "stacked:s5", "mean:s2", "sequence:n24:s1"):
        spec = frames.DatasetSpec.parse(text)
        assert shard_names.parse_dataset_dir("/data/" + spec.name + "/") == (spec.kind, spec.depth, spec.step)
    for foreign in (shard_names.STORE_DIR, "data-tfrec-frames024-step001-lstm", "data-tfrec-mean-frames003"):
        assert shard_names.parse_dataset_dir(foreign) is None, foreign


def test_prediction_names_round_trip_and_refuse_foreign_names():
    assert prediction_names.name("val", 2, 7) == "y_pred_val_fold_2_tta_7.npy"
    for split, fold, tta in (("val", 0, 0), ("test", 4, 12)):
        assert prediction_names.parse(prediction_names.name(split, fold, tta)) == (split, fold, tta)
        assert prediction_names.parse(os.path.basename(prediction_names.path("gs://b/preds", split, fold, tta))) \
            == (split, fold, tta)
    assert prediction_names.ids_name("val", 3) == "ids_val_fold_3.npy"
    assert prediction_names.ids_name("test", 3) == prediction_names.ids_name("test", 0) == "ids_test.npy"
    assert prediction_names.views_path("gs://b/preds") == "gs://b/preds/" + prediction_names.VIEWS
    for foreign in ("ids_test.npy", "y_pred_train_fold_0_tta_0.npy", "y_pred_val_fold_0_tta_0.npy.tmp",
                    "y_pred_val_fold_0.npy", prediction_names.VIEWS):
        assert prediction_names.parse(foreign) is None, foreign


def test_checkpoint_and_backup_names_round_trip():
    path = "gs://b/run/" + checkpoint_names.name(2, 7, 10.12345)
    assert checkpoint_names.parse(path) == (2, 7, 10.1235)
    assert path.endswith(checkpoint_names.GLOB.format(fold=2).replace("*", "007-10.1235.weights.h5"))
    orbax = checkpoint_names.name(2, 7, 10.12345, "orbax")
    assert checkpoint_names.parse(orbax) == (2, 7, 10.1235) and checkpoint_names.is_orbax(orbax)
    assert orbax == "model-best-f2-e007-10.1235.orbax"
    with pytest.raises(ValueError, match="model-best-f0.weights.h5: not a best-checkpoint name"):
        checkpoint_names.parse("run/model-best-f0.weights.h5")
    directory = checkpoint_names.backup_dir("gs://b/run", 1)
    assert directory == "gs://b/run/backup/fold_1"
    weights, optimizer = checkpoint_names.backup_files(directory, 3)
    assert (weights, optimizer) == (directory + "/epoch-003.weights.h5", directory + "/epoch-003.optimizer.npz")
    assert all(os.path.basename(p).startswith(checkpoint_names.BACKUP_GLOB.rstrip("*")) for p in (weights, optimizer))
