"""Backbones from `keras.applications` by name, each with its own preprocessing, and output heads.

A registry is used because a flag (`--backbone`) picks the model by name.
"""
from __future__ import annotations

import keras
from keras import layers

# Name prefix -> keras.applications module holding that family's `preprocess_input`.
# Longest prefixes first so that e.g. ResNet50V2 is matched before ResNet.
_PREPROCESS_MODULES = (
    ("EfficientNetV2", "efficientnet_v2"), ("EfficientNet", "efficientnet"),
    ("InceptionResNetV2", "inception_resnet_v2"), ("InceptionV3", "inception_v3"),
    ("ConvNeXt", "convnext"), ("DenseNet", "densenet"), ("MobileNetV3", "mobilenet_v3"),
    ("MobileNetV2", "mobilenet_v2"), ("MobileNet", "mobilenet"), ("NASNet", "nasnet"),
    ("RegNet", "regnet"), ("VGG16", "vgg16"), ("VGG19", "vgg19"), ("Xception", "xception"),
)


def backbone_names() -> list[str]:
    """Every image backbone `keras.applications` offers."""
    return sorted(n for n in dir(keras.applications) if n[0].isupper() and callable(getattr(keras.applications, n)))


def _preprocess_module(name: str) -> str:
    if name.startswith("ResNet"):
        return "resnet_v2" if name.endswith("V2") else "resnet"
    for prefix, module in _PREPROCESS_MODULES:
        if name.startswith(prefix):
            return module
    raise ValueError(f"--backbone={name!r}: no preprocessing known for it")


@keras.saving.register_keras_serializable(package="tpuflow")
class BackbonePreprocess(layers.Layer):
    """Applies a backbone's own `preprocess_input` to [0, 255] images inside the model."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._fn = getattr(keras.applications, _preprocess_module(backbone)).preprocess_input

    def call(self, x):
        return self._fn(x)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    """A headless, average-pooled backbone taking (H, W, 3) images in [0, 255].

    `weights`: None, 'imagenet' (downloaded by Keras: needs network access) or a local file.
    """
    if name not in backbone_names():
        raise ValueError(f"--backbone={name!r} is not in keras.applications; choose from {backbone_names()}")
    weights = None if weights in (None, "", "None", "none") else weights
    constructor = getattr(keras.applications, name)
    try:
        net = constructor(include_top=False, weights=weights, input_shape=input_shape, pooling="avg")
    except Exception as err:  # Keras raises plain Exceptions for failed downloads
        if weights == "imagenet":
            raise RuntimeError(f"--weights=imagenet: could not load pretrained {name} weights "
                               f"(no network access?). Copy the .h5 file here and pass its path, "
                               f"or use --weights=None. Cause: {err}") from err
        raise
    return net


def image_features(images, backbone: str, weights: str | None):
    """(B, H, W, C) images in [0, 255] -> (B, F) pooled backbone features.

    One-channel frames are repeated to three so that pretrained ImageNet weights apply.
    """
    if images.shape[-1] == 1:
        images = layers.Concatenate()([images] * 3)
    net = build_backbone(backbone, tuple(images.shape[1:]), weights)
    return net(BackbonePreprocess(backbone)(images))


def head(features, task: str, n_classes: int = 0):
    """Output layer in float32 (stable under mixed precision): one value or class probabilities."""
    if task == "regression":
        return layers.Dense(1, dtype="float32", name="wind_speed")(features)
    if task == "classification":
        return layers.Dense(n_classes, activation="softmax", dtype="float32", name="wind_speed_probs")(features)
    raise ValueError(f"--task={task!r}: expected 'regression' or 'classification'")
