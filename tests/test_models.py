"""Shared model blocks: time-distributed backbone, Transformer encoder, regression bias, weights."""
import keras
import numpy as np
import pytest

from tpuflow.training import models

BACKBONE = "MobileNetV3Small"


def test_sequence_features_apply_one_backbone_to_every_frame():
    frames = keras.Input((4, 32, 32, 1))
    pooled = keras.Model(frames, models.sequence_features(frames, BACKBONE, None))
    maps_in = keras.Input((4, 32, 32, 1))
    maps = keras.Model(maps_in, models.sequence_features(maps_in, BACKBONE, None, pooling=None))
    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 32, 32, 1)).astype("float32")
    out = pooled.predict(x, verbose=0)
    assert out.shape[:2] == (2, 4) and out.ndim == 3
    assert maps.predict(x, verbose=0).shape[:2] == (2, 4) and len(maps.output.shape) == 5
    # Frame t's features are the backbone's features of frame t alone (same weights for all t).
    image = keras.Input((32, 32, 1))
    per_frame = keras.Model(image, models.image_features(image, BACKBONE, None))
    per_frame.set_weights(pooled.get_weights())
    for t in range(4):
        np.testing.assert_allclose(out[:, t], per_frame.predict(x[:, t], verbose=0), rtol=1e-4, atol=1e-5)


def test_transformer_encoder_sees_frame_order():
    seq = keras.Input((5, 8))
    model = keras.Model(seq, models.transformer_encoder(seq, n_layers=1, n_heads=2, width=16, dropout=0.0))
    embedding = next(layer for layer in model.layers if isinstance(layer, models.PositionEmbedding))
    embedding.embedding.assign(np.random.default_rng(1).normal(size=(5, 16)).astype("float32"))
    x = np.random.default_rng(2).normal(size=(3, 5, 8)).astype("float32")
    out = model.predict(x, verbose=0)
    assert out.shape == (3, 16)
    assert not np.allclose(out, model.predict(x[:, ::-1], verbose=0), atol=1e-4)


def test_regression_head_starts_at_the_given_value():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, models.head(keras.layers.Dense(4)(inputs), "regression"))
    assert models.set_regression_bias(model, 52.5)
    np.testing.assert_allclose(model.predict(np.zeros((2, 3)), verbose=0), 52.5)
    classifier = keras.Model(inputs, models.head(inputs, "classification", 5))
    assert not models.set_regression_bias(classifier, 52.5)


def test_weights_from_a_local_file_are_loaded(tmp_path):
    source = models.build_backbone(BACKBONE, (32, 32, 3), None)
    path = str(tmp_path / "backbone.weights.h5")
    source.save_weights(path)
    loaded = models.build_backbone(BACKBONE, (32, 32, 3), path)
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_pretrained_weights_offline_are_a_clear_error():
    try:
        models.build_backbone(BACKBONE, (32, 32, 3), "imagenet")
    except ValueError as err:
        assert "--weights=imagenet: could not load pretrained MobileNetV3Small weights" in str(err)
        assert "--weights=None" in str(err)
    else:
        pytest.skip("pretrained weights were available (network or Keras cache)")


def test_unknown_backbone_is_named():
    with pytest.raises(ValueError, match="--backbone='EfficientNetB99' is not in keras.applications"):
        models.build_backbone("EfficientNetB99", (32, 32, 3), None)
