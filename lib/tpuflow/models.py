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


def resolve_weights(weights: str | None) -> str | None:
    """The `--weights` value as Keras takes it: the strings 'None'/'none'/'' mean no weights."""
    return None if weights in (None, "", "None", "none") else weights


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str | None,
                   pooling: str | None = "avg") -> keras.Model:
    """A headless backbone taking (H, W, 3) images in [0, 255]: average-pooled features (B, F), or
    with `pooling=None` its last feature maps (B, h, w, F) for convolutions over time.

    `weights`: None, 'imagenet' (downloaded by Keras: needs network access) or a local file.
    """
    if name not in backbone_names():
        raise ValueError(f"--backbone={name!r} is not in keras.applications; choose from {backbone_names()}")
    weights = resolve_weights(weights)
    constructor = getattr(keras.applications, name)
    try:
        net = constructor(include_top=False, weights=weights, input_shape=input_shape, pooling=pooling)
    except Exception as err:  # Keras raises plain Exceptions for failed downloads
        if weights == "imagenet":
            raise RuntimeError(f"--weights=imagenet: could not load pretrained {name} weights "
                               f"(no network access?). Copy the .h5 file here and pass its path, "
                               f"or use --weights=None. Cause: {err}") from err
        raise
    return net


def image_features(images, backbone: str, weights: str | None, pooling: str | None = "avg"):
    """(B, H, W, C) images in [0, 255] -> (B, F) pooled backbone features ((B, h, w, F) maps
    with `pooling=None`).

    One-channel frames are repeated to three so that pretrained ImageNet weights apply.
    """
    if images.shape[-1] == 1:
        images = layers.Concatenate()([images] * 3)
    net = build_backbone(backbone, tuple(images.shape[1:]), weights, pooling)
    return net(BackbonePreprocess(backbone)(images))


def sequence_features(frames, backbone: str, weights: str | None, pooling: str | None = "avg"):
    """(B, T, H, W, C) frames in [0, 255] -> (B, T, F) features of one shared backbone per time
    step ((B, T, h, w, F) maps with `pooling=None`).

    The time-distributed backbone folds time into the batch (one call on B*T images) rather than
    using `keras.layers.TimeDistributed`, which calls the backbone once per time step: on a TPU
    one large batch keeps the matrix units busy, and the graph is T times smaller.
    """
    n_steps, *frame_shape = frames.shape[1:]
    if n_steps is None:
        raise ValueError(f"sequence_features needs a fixed number of time steps, got shape {frames.shape}")
    images = keras.ops.reshape(frames, (-1, *frame_shape))
    features = image_features(images, backbone, weights, pooling)
    return keras.ops.reshape(features, (-1, n_steps, *features.shape[1:]))


@keras.saving.register_keras_serializable(package="tpuflow")
class PositionEmbedding(layers.Layer):
    """Adds a learned embedding of each time step's position to (B, T, D) features."""

    def build(self, input_shape):
        self.embedding = self.add_weight(shape=tuple(input_shape[1:]), initializer="zeros", name="embedding")

    def call(self, x):
        return x + keras.ops.cast(self.embedding, x.dtype)


def transformer_encoder(x, n_layers: int = 2, n_heads: int = 4, width: int = 256, dropout: float = 0.1):
    """(B, T, F) -> (B, width): a pre-norm Transformer encoder over time steps, mean-pooled.

    Features are first projected to `width` (backbones give 1280+ features; attention over a
    handful of frames needs far fewer) and given learned position embeddings, since attention
    alone does not know which frame is the current one.
    """
    x = PositionEmbedding()(layers.Dense(width)(x))
    for _ in range(n_layers):
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.MultiHeadAttention(n_heads, width // n_heads, dropout=dropout)(y, y)
        x = layers.Add()([x, layers.Dropout(dropout)(y)])
        y = layers.LayerNormalization(epsilon=1e-6)(x)
        y = layers.Dense(2 * width, activation="gelu")(y)
        x = layers.Add()([x, layers.Dropout(dropout)(layers.Dense(width)(y))])
    return layers.GlobalAveragePooling1D()(layers.LayerNormalization(epsilon=1e-6)(x))


def set_regression_bias(model: keras.Model, value: float) -> bool:
    """Starts the regression head (`head`'s `wind_speed` layer) at `value`; False if the model has
    no such layer.

    Wind speeds are around 50 knots, far from a fresh layer's 0: a head reading bounded features
    (an LSTM's tanh state) would spend its first hundreds of steps just growing its weights to
    reach the typical value. Starting the bias at the training mean removes that wait.
    """
    try:
        layer = model.get_layer("wind_speed")
    except ValueError:
        return False
    layer.bias.assign(keras.ops.full(layer.bias.shape, value, dtype=layer.bias.dtype))
    return True


def image_model(cfg, channels: int) -> keras.Model:
    """One (dim, dim, channels) image -> backbone features -> head: the model of every
    single-image experiment (a frame, or history packed as channels)."""
    image = keras.Input((cfg.dim, cfg.dim, channels), name="image")
    return keras.Model(image, head(image_features(image, cfg.backbone, cfg.weights), cfg.task, cfg.n_classes))


def head(features, task: str, n_classes: int = 0):
    """Output layer in float32 (stable under mixed precision): one value or class probabilities."""
    if task == "regression":
        return layers.Dense(1, dtype="float32", name="wind_speed")(features)
    if task == "classification":
        return layers.Dense(n_classes, activation="softmax", dtype="float32", name="wind_speed_probs")(features)
    raise ValueError(f"--task={task!r}: expected 'regression' or 'classification'")
