"""Backbones from `keras.applications` by name, each with its own preprocessing, output heads, and the
loss and optimizer a model trains with (`compile_model`). No TensorFlow: a model builds and compiles
under Keras on JAX alone (`benchmarks/device_check.py`).

A registry is used because a flag (`--backbone`) picks the model by name.
"""
from __future__ import annotations

import os
import re
import socket
import warnings

import keras
import numpy as np
from keras import layers

from tpuflow import storage

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


# Where keras.applications downloads ImageNet weights from, and the first bytes of the files Keras
# loads weights from: HDF5 (`.weights.h5`, the reference's `.h5`) and the `.keras` zip archive.
WEIGHTS_HOST = ("storage.googleapis.com", 443)
WEIGHTS_SIGNATURES = {".h5": b"\x89HDF\r\n\x1a\n", ".hdf5": b"\x89HDF\r\n\x1a\n", ".keras": b"PK\x03\x04"}


def check_weights(weights: str | None, backbone: str, timeout_s: float = 5.0) -> None:
    """`--weights` that cannot load fails here, before any long work, in one line naming the flag:
    a file that is missing or is not a weights file, or ImageNet weights that are neither in Keras'
    cache nor downloadable (no network: say how to pass a local file instead)."""
    weights = resolve_weights(weights)
    if weights is None:
        return
    if weights != "imagenet":
        if not storage.exists(weights):
            raise FileNotFoundError(f"--weights={weights}: no such file (None, imagenet or a weights file)")
        ext = next((e for e in WEIGHTS_SIGNATURES if weights.endswith(e)), None)
        head = _head(weights, 8)
        if ext is None or not head.startswith(WEIGHTS_SIGNATURES[ext]):
            raise ValueError(f"--weights={weights}: not a weights file (an HDF5 .h5 / .weights.h5 file or a "
                             ".keras archive, as save_weights and tools/pretrain_simsiam.py write)")
        return
    if _imagenet_cached(backbone) or any(os.environ.get(v) for v in ("https_proxy", "HTTPS_PROXY")):
        return  # behind a proxy, Keras' download goes through it: let it try
    try:
        socket.create_connection(WEIGHTS_HOST, timeout=timeout_s).close()
    except OSError as err:
        raise ValueError(f"--weights=imagenet: the ImageNet weights of {backbone} cannot be downloaded "
                         f"({WEIGHTS_HOST[0]}: {err.strerror or err}) and are not in Keras' cache "
                         f"({_keras_models_dir()}): copy the {backbone} no-top .h5 file there, or pass its path "
                         "(--weights=/path/to/file.h5), or --weights=None") from None


def _head(path: str, n: int) -> bytes:
    with storage.open_read(path) as f:
        return f.read(n)


def _keras_models_dir() -> str:
    return os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME") or "~/.keras"), "models")


def _imagenet_cached(backbone: str) -> bool:
    """Whether Keras' cache holds a file named after `backbone` (`efficientnetb0_notop.h5`,
    `weights_mobilenet_v3_small_..._no_top_v2.h5`, ...): letters and digits compared, case aside."""
    key = re.sub(r"[^a-z0-9]", "", backbone.lower())
    dirs = (_keras_models_dir(), os.path.join("/tmp", ".keras", "models"))  # Keras' fallback when home is read-only
    names = [name for d in dirs if os.path.isdir(d) for name in os.listdir(d)]
    return any(key in re.sub(r"[^a-z0-9]", "", name.lower()) for name in names)


def load_weights_permissive(model: keras.Model, path: str, max_skipped: float = 0.1) -> list[str]:
    """Loads a weights file (local or `gs://`) into `model`, skipping what does not fit; returns
    the names of the layers it skipped (each with its variables left as they were).

    Strict loading fails on the first variable that differs (another head, a backbone built for
    another number of input channels); this loads every other layer. Keras' own `skip_mismatch`
    does the loading and matching; which layers it skipped is found with a NaN sentinel (every
    float variable is set to NaN first: what is still NaN afterwards was not in the file or did
    not fit, and its layer is restored whole). Keras matches layers by position and type, not by
    name, so weights of another architecture can fit a few layers by chance: skipping more than
    `max_skipped` of the layers (and more than one) is an error, not a partial load.
    """
    variables = [v for v in model.weights if "float" in str(v.dtype)]
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    for v in variables:
        v.assign(keras.ops.full(v.shape, np.nan, dtype=v.dtype))
    with storage.local_copy(path) as local, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns with its own list; ours is returned
        model.load_weights(local, skip_mismatch=True)
    missed = {v.path.rsplit("/", 1)[0] for v in variables if np.isnan(keras.ops.convert_to_numpy(v)).any()}
    for v, value in zip(variables, before):
        if v.path.rsplit("/", 1)[0] in missed:
            v.assign(value)
    n_layers = len({v.path.rsplit("/", 1)[0] for v in variables})
    if len(missed) > max(1, max_skipped * n_layers):
        raise ValueError(f"{path}: {len(missed)} of the {n_layers} layers of {model.name!r} do not fit its "
                         "weights (weights of another architecture or backbone?)")
    return sorted(missed)


def build_backbone(name: str, input_shape: tuple[int, int, int], weights: str | None,
                   pooling: str | None = "avg") -> keras.Model:
    """A headless backbone taking (H, W, 3) images in [0, 255]: average-pooled features (B, F), or
    with `pooling=None` its last feature maps (B, h, w, F) for convolutions over time.

    `weights`: None, 'imagenet' (downloaded by Keras: needs network access) or a weights file of
    this backbone (local or `gs://`, e.g. from `tools/pretrain_simsiam.py`), loaded permissively:
    layers that do not fit (another input channel count) are skipped and named on stdout.
    """
    if name not in backbone_names():
        raise ValueError(f"--backbone={name!r} is not in keras.applications; choose from {backbone_names()}")
    weights = resolve_weights(weights)
    constructor = getattr(keras.applications, name)
    if weights not in (None, "imagenet"):
        check_weights(weights, name)
        net = constructor(include_top=False, weights=None, input_shape=input_shape, pooling=pooling)
        try:
            skipped = load_weights_permissive(net, weights)
        except (ValueError, OSError) as err:  # h5py and Keras name neither the flag nor always the file
            raise ValueError(f"--weights={weights}: cannot be loaded into {name}: "
                             f"{' '.join(str(err).split())}") from err
        print(f"--weights={weights}: loaded into {name}" +
              (f"; skipped {len(skipped)} layer(s) that do not fit: {', '.join(skipped)}" if skipped else ""),
              flush=True)
        return net
    try:
        net = constructor(include_top=False, weights=weights, input_shape=input_shape, pooling=pooling)
    except Exception as err:  # Keras raises plain Exceptions for failed downloads
        if weights == "imagenet":
            raise ValueError(f"--weights=imagenet: could not load pretrained {name} weights "
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


def sequence_transformer_model(cfg) -> keras.Model:
    """(n_frames, dim, dim, 1) frames -> backbone features per frame -> Transformer encoder ->
    head: the `cnn-trans` experiment's model."""
    frames = keras.Input((cfg.n_frames, cfg.dim, cfg.dim, 1), name="frames")
    x = transformer_encoder(sequence_features(frames, cfg.backbone, cfg.weights))
    return keras.Model(frames, head(x, cfg.task, cfg.n_classes))


def head(features, task: str, n_classes: int = 0):
    """Output layer in float32 (stable under mixed precision): one value or class probabilities."""
    if task == "regression":
        return layers.Dense(1, dtype="float32", name="wind_speed")(features)
    if task == "classification":
        return layers.Dense(n_classes, activation="softmax", dtype="float32", name="wind_speed_probs")(features)
    raise ValueError(f"--task={task!r}: expected 'regression' or 'classification'")


def compile_model(model: keras.Model, cfg) -> None:
    """Loss and optimizer from the task flags (loss scaling is automatic under mixed_float16: Keras
    wraps the optimizer in a LossScaleOptimizer), at the LR scaled for the global batch.

    `--bn_momentum` lowers BatchNorm momentum model-wide: backbones default to 0.99, whose moving
    statistics need many hundred steps to settle, so short runs from scratch validate badly.
    `--steps_per_execution` is the run's (`config.steps_per_execution`); unresolved (0, auto), 1.
    """
    if cfg.bn_momentum is not None:
        for layer in model._flatten_layers():
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = cfg.bn_momentum
    if cfg.task == "classification":
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing)
        metrics = ["accuracy"]
    else:
        loss, metrics = "mse", [keras.metrics.RootMeanSquaredError(name="rmse")]
    jit = {"auto": "auto", "true": True, "false": False}[cfg.jit_compile]
    model.compile(optimizer=keras.optimizers.Adam(cfg.scaled_lr), loss=loss, metrics=metrics,
                  steps_per_execution=cfg.steps_per_execution or 1, jit_compile=jit)
