"""SimSiam pretraining (the command on real frames), its loss, and permissive weight loading."""
import glob
import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from tpuflow.training import models, pretrain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pretraining_command_writes_backbone_curves_tensorboard_and_card(simsiam_backbone, cv_dir):
    out = os.path.dirname(simsiam_backbone)
    card = json.load(open(os.path.join(out, "pretrain_card.json")))
    assert not os.path.exists(os.path.join(out, "pretrain_record.json"))  # the old name's file: replaced
    n_jpgs = len(glob.glob(f"{cv_dir}/train/*.jpg")) + len(glob.glob(f"{cv_dir}/test/*.jpg"))
    assert card["status"] == "complete" and card["n_frames"] == n_jpgs  # train and test frames
    assert -1.0 <= card["final_loss"] <= 1.0  # a negative cosine similarity
    # The card holds the settings as run (--quick resolved), not the flags as typed.
    assert {k: card["flags"][k] for k in ("n_epochs", "steps_per_epoch", "batch_size", "verbose")} == {
        "n_epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "verbose": 2}
    curve = pd.read_csv(os.path.join(out, "curves", "pretrain.csv"))
    assert curve["epoch"].tolist() == [1] and os.path.exists(os.path.join(out, "curves", "pretrain.png"))
    assert os.listdir(os.path.join(out, "tensorboard", "pretrain"))
    # The file is exactly the backbone: strict Keras loading into a fresh one takes every variable.
    net = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    net.load_weights(simsiam_backbone)
    loaded = models.build_backbone("MobileNetV3Small", (32, 32, 3), simsiam_backbone)
    for a, b in zip(net.weights, loaded.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_frames_from_single_records_cover_every_fold_and_test(single_dir):
    ds, n = pretrain.frames_dataset(16, tfrec_dir=single_dir)
    manifest = json.load(open(os.path.join(single_dir, "manifest.json")))
    assert n == sum(manifest["counts"].values())
    frames = list(ds.as_numpy_iterator())
    assert len(frames) == n and frames[0].shape == (16, 16, 1)


def test_bad_sources_are_named_before_any_work(cv_dir, kind_dirs, tmp_path):
    with pytest.raises(ValueError, match="exactly one of --data_dir"):
        pretrain.frames_dataset(16, data_dir=cv_dir, tfrec_dir=kind_dirs["single"])
    with pytest.raises(ValueError, match="holds 'stacked' records"):
        pretrain.frames_dataset(16, tfrec_dir=kind_dirs["stacked"])
    with pytest.raises(FileNotFoundError, match=f"--data_dir={tmp_path}: no train/"):
        pretrain.frames_dataset(16, data_dir=str(tmp_path))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "pretrain_simsiam.py"),
                           f"--data_dir={tmp_path}", f"--output_dir={tmp_path}/out"], capture_output=True, text=True)
    assert proc.returncode != 0 and "no train/*.jpg" in proc.stderr
    assert not os.path.exists(tmp_path / "out")


def test_negative_cosine_is_symmetric_and_stops_gradients_into_the_targets():
    layer = pretrain.NegativeCosine()
    p = tf.Variable(tf.random.normal([4, 8]))
    z = tf.Variable(tf.random.normal([4, 8]))
    np.testing.assert_allclose(layer([p, p, p, p]).numpy(), -1.0, atol=1e-6)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(layer([p, z, p, z]))
    grad_p, grad_z = tape.gradient(loss, [p, z])
    assert grad_z is None or not np.any(grad_z.numpy())  # z only as the fixed target
    assert np.any(grad_p.numpy())


def test_permissive_loading_skips_a_different_input_channel_count_and_names_it(tmp_path, capsys):
    one = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 1), pooling="avg")
    path = str(tmp_path / "one_channel.weights.h5")
    one.save_weights(path)
    three = models.build_backbone("MobileNetV3Small", (32, 32, 3), path)
    assert "skipped 1 layer(s) that do not fit: conv" in capsys.readouterr().out
    saved = {v.path: v.numpy() for v in one.weights}
    for v in three.weights:
        if v.path.startswith("conv/"):
            assert v.shape != saved[v.path].shape and not np.isnan(v.numpy()).any()
        else:
            np.testing.assert_array_equal(v.numpy(), saved[v.path])


def test_permissive_loading_skips_another_head(tmp_path):
    cfg = types.SimpleNamespace(dim=32, backbone="MobileNetV3Small", weights=None, task="regression", n_classes=0)
    regression = models.image_model(cfg, channels=1)
    path = str(tmp_path / "regression.weights.h5")
    regression.save_weights(path)
    cfg.task, cfg.n_classes = "classification", 7
    classification = models.image_model(cfg, channels=1)
    skipped = models.load_weights_permissive(classification, path)
    assert skipped == ["wind_speed_probs"]
    head = classification.get_layer("wind_speed_probs")
    assert not np.isnan(head.kernel.numpy()).any()
    for a, b in zip(regression.weights[:-2], classification.weights[:-2]):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_of_another_architecture_are_an_error(tmp_path):
    other = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg")
    path = str(tmp_path / "v2.weights.h5")
    other.save_weights(path)
    with pytest.raises(ValueError, match="81 of the .* layers of .* do not fit its weights"):
        models.build_backbone("MobileNetV3Small", (32, 32, 3), path)
    with pytest.raises(FileNotFoundError, match="--weights=/no/such.weights.h5: no such file"):
        models.build_backbone("MobileNetV3Small", (32, 32, 3), "/no/such.weights.h5")


def test_pretrain_config_is_resolved_once_frozen_and_checked_before_reading_data(tmp_path):
    cfg = pretrain.PretrainConfig.resolve(output_dir=str(tmp_path), batch_size=32, quick=True, verbose=0)
    assert (cfg.n_epochs, cfg.steps_per_epoch, cfg.batch_size, cfg.verbose) == (1, 2, 8, 0)
    with pytest.raises(AttributeError):
        cfg.n_epochs = 3
    with pytest.raises(ValueError, match=r"^--batch_size=1: SimSiam needs >= 2"):
        pretrain.PretrainConfig.resolve(output_dir=str(tmp_path), batch_size=1, data_dir="/nonexistent")
    with pytest.raises(ValueError, match=r"^--dim=0: must be >= 1"):
        pretrain.PretrainConfig.resolve(output_dir=str(tmp_path), dim=0)
