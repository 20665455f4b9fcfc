"""TTA sets: the D4 views, named lists, and the recorded index -> view map that scoring and
ensembles check, on a real run of the tiny experiment."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tiny_experiment
from tpuflow.ensemble import data as ensemble_data
from tpuflow.inputs import augment, ondevice
from tpuflow.results import run_card, scoring
from tpuflow.training import experiment


def _view(x, name):
    return augment.apply_view(tf.constant(x), name).numpy()


def test_d4_views_are_the_eight_symmetries_of_the_square():
    x = np.random.default_rng(0).random((5, 5, 2)).astype(np.float32)
    views = {name: _view(x, name) for name in ondevice.D4_VIEWS}
    np.testing.assert_array_equal(views["transpose"], np.transpose(x, (1, 0, 2)))
    np.testing.assert_array_equal(views["transverse"], np.rot90(np.transpose(x, (1, 0, 2)), 2))
    np.testing.assert_array_equal(views["rot90"], np.rot90(x))
    flat = [v.tobytes() for v in views.values()]
    assert len(set(flat)) == 8  # all distinct
    for a in ondevice.D4_VIEWS:  # closed under composition: a group
        for b in ondevice.D4_VIEWS:
            assert _view(views[a], b).tobytes() in flat


def test_views_apply_to_every_frame_of_a_sequence_and_keep_shapes():
    x = np.random.default_rng(1).random((3, 6, 6, 1)).astype(np.float32)
    for name in augment.VIEWS:
        out = _view(x, name)
        assert out.shape == x.shape
        np.testing.assert_allclose(out[1], _view(x[1], name), atol=1e-5)


def test_ref_views_are_the_reference_indices():
    x = np.random.default_rng(2).random((8, 8, 1)).astype(np.float32)
    for t, name in enumerate(ondevice.tta_views("ref")):
        np.testing.assert_array_equal(_view(x, name), augment.apply_tta(tf.constant(x), t).numpy())


def test_tta_sets_and_their_errors():
    assert ondevice.tta_views("ref") == augment.REFERENCE_VIEWS
    assert ondevice.tta_views("d4", 9) == ondevice.D4_VIEWS  # a larger number: the whole set
    assert ondevice.tta_views("d4", 2) == ("orig", "flip_lr", "flip_ud")
    assert ondevice.tta_views("orig, transpose,rot180") == ("orig", "transpose", "rot180")
    with pytest.raises(ValueError, match=r"--tta='orig,spin': unknown view\(s\) \['spin'\]"):
        ondevice.tta_views("orig,spin")
    with pytest.raises(ValueError, match="first view must be 'orig'"):
        ondevice.tta_views("rot90,orig")
    with pytest.raises(ValueError, match="listed twice"):
        ondevice.tta_views("orig,rot90,rot90")
    with pytest.raises(ValueError, match="non-square|square image"):
        augment.apply_view(tf.zeros((4, 6, 1)), "transpose")
    cfg = experiment.make_config(tta="d4")
    assert cfg.tta_views == list(ondevice.D4_VIEWS) and cfg.tta_number == 7


@pytest.fixture(scope="module")
def d4_run(cv_dir, single_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tta") / "run-d4"
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(out), quick=True,
                                 dim=16, batch_size=8, weights=None, verbose=0, tta="d4", n_folds=5)
    result = experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)
    return out, result


def test_run_saves_the_view_of_every_tta_index(d4_run):
    out, result = d4_run
    views = json.load(open(out / "preds" / "tta_views.json"))["views"]
    assert views == list(ondevice.D4_VIEWS)
    assert sorted(os.listdir(out / "preds")).count("y_pred_val_fold_0_tta_7.npy") == 1
    assert not os.path.exists(out / "preds" / "y_pred_val_fold_0_tta_8.npy")
    assert list(result["scores"].columns) == [f"tta_{t}" for t in range(8)] + ["tta_mean", "baseline"]
    assert run_card.read_card(str(out))["cv"]["tta_views"] == views
    # Transposed val images really are predicted: view 6 differs from the original's predictions.
    p0, p6 = (np.load(out / "preds" / f"y_pred_val_fold_0_tta_{t}.npy") for t in (0, 6))
    assert not np.allclose(p0, p6)


def test_scoring_uses_the_recorded_views_and_refuses_other_ones(d4_run, cv_dir):
    out, result = d4_run
    again = experiment.run(experiment.make_config(data_dir=cv_dir, output_dir=str(out), job="score", verbose=0),
                           tiny_experiment.init_model, tiny_experiment.parse_example)
    assert list(again["scores"].columns)[:8] == [f"tta_{t}" for t in range(8)]  # d4 from the saved set
    with pytest.raises(ValueError, match=r"tta_views.json: the predictions there are for TTA views .*transpose"):
        experiment.run(experiment.make_config(data_dir=cv_dir, output_dir=str(out), job="score", tta="ref",
                                              verbose=0), tiny_experiment.init_model, tiny_experiment.parse_example)


def test_ensemble_names_say_the_view_and_refuse_unnamed_indices(d4_run, cv_dir, tmp_path):
    out, _ = d4_run
    inputs = ensemble_data.load_inputs(cv_dir, [str(out)])
    assert inputs.names[6].endswith(":tta6:transpose")
    (tmp_path / "preds").mkdir()
    for f in os.listdir(out / "preds"):
        (tmp_path / "preds" / f).write_bytes((out / "preds" / f).read_bytes())
    (tmp_path / "preds" / "tta_views.json").write_text(json.dumps({"views": ["orig", "flip_lr"]}))
    with pytest.raises(ValueError, match="names 2 TTA views, but .* holds TTA 0..7"):
        ensemble_data.load_inputs(cv_dir, [str(tmp_path)])


def test_a_run_that_predicted_fewer_views_keeps_its_whole_set(tmp_path):
    """A --quick or --tta_number=3 run saves the set it took its views from, so a later run in
    that dir without --tta gets as many views of that set as it asks for, not only those."""
    scoring.save_views(str(tmp_path / "preds"), ["orig"], ondevice.D4_VIEWS)
    cfg = experiment.make_config(output_dir=str(tmp_path), tta_number=9)
    assert cfg.tta_views == list(ondevice.D4_VIEWS) and cfg.tta_number == 7
    cfg = experiment.make_config(output_dir=str(tmp_path), tta_number=2)
    assert cfg.tta_views == ["orig", "flip_lr", "flip_ud"]
