"""SimSiam self-supervised pretraining of a zoo backbone on every frame, train and test, no labels.

SimSiam (Chen & He, 2021): two random views of a frame go through the same encoder (backbone +
projector MLP); a predictor MLP maps one view's projection to the other's, whose projection is
held fixed (stop-gradient). The loss is the symmetric negative cosine similarity,
-(cos(p1, sg(z2)) + cos(p2, sg(z1))) / 2, in [-1, 1]: no negatives, no labels, so the unlabelled
test frames are legitimate training data. The backbone's weights are saved for fine-tuning
(`--weights=<output_dir>/backbone.weights.h5` in any experiment with the same backbone).

The loss is computed inside the model with `keras.ops` (a layer whose output is the per-example
loss), so plain `compile`/`fit` trains it on any Keras backend; frames come from `tf.data`.

Outputs under `<output_dir>` (local or `gs://`): `backbone.weights.h5` (rewritten after every
epoch), `curves/pretrain.{csv,png}`, `tensorboard/pretrain/`, `pretrain_card.json`.
"""
from __future__ import annotations

import dataclasses
import sys
import time

import keras
import tensorflow as tf
from keras import layers

from tpuflow import storage
from tpuflow.inputs import augment, ondevice, records
from tpuflow.results import run_card
from tpuflow.training import config, curves, models, runtime, tensorboard

BACKBONE_FILE = "backbone.weights.h5"


def frame_files(data_dir: str) -> list[str]:
    """Every frame of a raw data dir: `train/*.jpg` and `test/*.jpg`."""
    found = storage.glob(storage.join(data_dir, "train", "*.jpg")) + storage.glob(storage.join(data_dir, "test", "*.jpg"))
    if not found:
        raise FileNotFoundError(f"--data_dir={data_dir}: no train/*.jpg or test/*.jpg frames")
    return found


def frames_dataset(dim: int, data_dir: str | None = None, tfrec_dir: str | None = None) -> tuple[tf.data.Dataset, int]:
    """(dataset of (dim, dim, 1) frames in [0, 255], number of frames): the JPEGs of a raw data dir,
    or every record (all folds and test) of a `single` dataset. Exactly one source."""
    if bool(data_dir) == bool(tfrec_dir):
        raise ValueError("give exactly one of --data_dir (raw JPEG frames) and --data_tfrec_dir (single records)")
    if data_dir:
        files = frame_files(data_dir)
        ds = tf.data.Dataset.from_tensor_slices(files).map(
            lambda f: records.decode_image(tf.io.read_file(f), 1, dim), num_parallel_calls=tf.data.AUTOTUNE)
        return ds, len(files)
    manifest = records.read_manifest(tfrec_dir)
    if manifest["kind"] != "single":
        raise ValueError(f"--data_tfrec_dir={tfrec_dir} holds '{manifest['kind']}' records ({manifest['spec']}); "
                         "pretraining reads 'single' records (one frame each)")
    files = records.record_files(tfrec_dir, range(int(manifest["n_folds"]))) + records.record_files(tfrec_dir, None)
    n = records.example_count(manifest, range(int(manifest["n_folds"]))) + records.example_count(manifest, None)
    ds = tf.data.TFRecordDataset(files).map(lambda s: records.parse_image(s, 1, dim)["image"],
                                            num_parallel_calls=tf.data.AUTOTUNE)
    return ds, n


def random_view(image: tf.Tensor, min_scale: float = 0.3) -> tf.Tensor:
    """One SimSiam view of a (dim, dim, 1) frame: a random square crop covering min_scale..1 of the
    area resized back, one of the eight symmetries of the square, brightness/contrast jitter."""
    dim = image.shape[0]
    side = tf.cast(tf.sqrt(tf.random.uniform([], min_scale, 1.0)) * dim, tf.int32)
    crop = tf.image.random_crop(image, tf.stack([side, side, 1]))
    view = tf.ensure_shape(tf.image.resize(crop, [dim, dim]), image.shape)
    which = tf.random.uniform([], 0, len(ondevice.D4_VIEWS), dtype=tf.int32)
    view = tf.switch_case(which, [lambda n=n: augment.apply_view(view, n) for n in ondevice.D4_VIEWS])
    mean = tf.reduce_mean(view)
    view = (view - mean) * tf.random.uniform([], 0.6, 1.4) + mean + tf.random.uniform([], -40.0, 40.0)
    return tf.clip_by_value(view, 0.0, 255.0)


def train_dataset(ds: tf.data.Dataset, batch_size: int, seed: int, buffer: int = 2048) -> tf.data.Dataset:
    """Endless batches of ((view1, view2), dummy target) with static shapes."""
    ds = ds.shuffle(buffer, seed=seed).repeat()
    ds = ds.map(lambda x: ((random_view(x), random_view(x)), 0.0), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


@keras.saving.register_keras_serializable(package="tpuflow")
class NegativeCosine(layers.Layer):
    """(p1, z1, p2, z2) -> per-example symmetric negative cosine similarity, z held fixed."""

    def call(self, inputs):
        p1, z1, p2, z2 = (keras.ops.cast(t, "float32") for t in inputs)

        def cos(p, z):
            z = keras.ops.stop_gradient(z)
            p = p / (keras.ops.norm(p, axis=-1, keepdims=True) + 1e-8)
            z = z / (keras.ops.norm(z, axis=-1, keepdims=True) + 1e-8)
            return keras.ops.sum(p * z, axis=-1)

        return -(cos(p1, z2) + cos(p2, z1)) / 2


def _own_output(y_true, y_pred):
    """The model's output is already the per-example loss."""
    return y_pred


def simsiam_model(backbone: str, dim: int, weights: str | None = None, proj_dim: int = 512,
                  pred_dim: int = 128) -> tuple[keras.Model, keras.Model]:
    """(the SimSiam training model: two (dim, dim, 1) views -> per-example loss, the backbone)."""
    net = models.build_backbone(backbone, (dim, dim, 3), weights)
    preprocess = models.BackbonePreprocess(backbone)
    projector = keras.Sequential([
        layers.Dense(proj_dim, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.Dense(proj_dim, use_bias=False), layers.BatchNormalization(),
    ], name="projector")
    predictor = keras.Sequential([
        layers.Dense(pred_dim, use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.Dense(proj_dim),
    ], name="predictor")
    views = [keras.Input((dim, dim, 1), name=f"view{i}") for i in (1, 2)]
    z = [projector(net(preprocess(layers.Concatenate()([v] * 3)))) for v in views]
    loss = NegativeCosine(name="loss")([predictor(z[0]), z[0], predictor(z[1]), z[1]])
    return keras.Model(views, loss, name="simsiam"), net


class SaveBackbone(keras.callbacks.Callback):
    """Writes the backbone's weights after every epoch (`storage.save_weights`: atomically, a full
    disk named before writing): a stopped run keeps the last."""

    def __init__(self, net: keras.Model, path: str):
        super().__init__()
        self.net, self.path = net, path

    def on_epoch_end(self, epoch, logs=None):
        storage.save_weights(self.net, self.path)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """A pretraining run's settings, resolved once (`resolve`) and then fixed; its card holds
    them as used. Those it shares with a run are the run's settings (`config.shared`: their help,
    with the defaults of pretraining); `tools/pretrain_simsiam.py`'s flags are made from them."""
    output_dir: str = config.shared("output_dir", help="Where the backbone weights, curves and card go",
                                    required=True)
    data_dir: str | None = config.shared("data_dir", None, "Raw data dir: every train/*.jpg and test/*.jpg frame")
    data_tfrec_dir: str | None = config.shared("data_tfrec_dir", None, "Or a `single` record dataset (all folds "
                                               "and test)")
    backbone: str = config.shared("backbone")
    weights: str | None = config.shared("weights", help="Starting backbone weights: None, imagenet or a file")
    dim: int = config.shared("dim")
    n_epochs: int = config.shared("n_epochs", 50, "Epochs")
    batch_size: int = config.shared("batch_size", 64, "Batch size")
    steps_per_epoch: int = config.shared("steps_per_epoch", help="Steps per epoch (0: frames / batch size)")
    lr: float = config.shared("lr", 0.05, "Base learning rate at batch 256 (scaled linearly; cosine decay)")
    proj_dim: int = config.setting(512, "Projector output width")
    pred_dim: int = config.setting(128, "Predictor bottleneck width")
    seed: int = config.shared("seed")
    quick: bool = config.shared("quick", help="Quick run: 1 epoch of 2 steps (tests)")
    verbose: int | None = config.shared("verbose")

    @classmethod
    def resolve(cls, **values) -> "PretrainConfig":
        """The settings as run: `quick` means 1 epoch of 2 steps of at most 8 frames, `verbose`
        None means 1 on a terminal and 2 otherwise. Values a run cannot use are refused here,
        naming the flag, before any data is read."""
        cfg = cls(**values)
        changes = {}
        if cfg.quick:
            changes.update(n_epochs=1, steps_per_epoch=2, batch_size=min(cfg.batch_size, 8))
        if cfg.verbose is None:
            changes["verbose"] = 1 if sys.stdout.isatty() else 2
        cfg = dataclasses.replace(cfg, **changes)
        if cfg.batch_size < 2:
            raise ValueError(f"--batch_size={cfg.batch_size}: SimSiam needs >= 2 (BatchNorm over the batch)")
        for name in ("dim", "n_epochs", "proj_dim", "pred_dim"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"--{name}={getattr(cfg, name)}: must be >= 1")
        if cfg.steps_per_epoch < 0:
            raise ValueError(f"--steps_per_epoch={cfg.steps_per_epoch}: must be >= 0 (0: frames / batch size)")
        return cfg


def pretrain(cfg: PretrainConfig) -> dict:
    """Runs SimSiam pretraining with `cfg` as resolved; returns the card written to
    `<output_dir>/pretrain_card.json`."""
    cfg = PretrainConfig.resolve(**dataclasses.asdict(cfg))  # idempotent: the rules hold however it was made
    start = time.time()
    ds, n_frames = frames_dataset(cfg.dim, cfg.data_dir, cfg.data_tfrec_dir)  # checks inputs first
    steps = cfg.steps_per_epoch or max(1, n_frames // cfg.batch_size)
    storage.makedirs(cfg.output_dir)
    card_path = run_card.card_path(cfg.output_dir, run_card.PRETRAIN_CARD_NAME)
    card = {"status": "running", "flags": dataclasses.asdict(cfg), "n_frames": n_frames, "steps_per_epoch": steps,
              "source": cfg.data_dir or cfg.data_tfrec_dir, "backbone_file": storage.join(cfg.output_dir, BACKBONE_FILE),
              "versions": runtime.versions(), "git": run_card.git_info(__file__)}
    run_card.save(card_path, card)
    keras.utils.set_random_seed(cfg.seed)
    model, net = simsiam_model(cfg.backbone, cfg.dim, cfg.weights, cfg.proj_dim, cfg.pred_dim)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.lr * cfg.batch_size / 256, cfg.n_epochs * steps)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9, weight_decay=1e-4), loss=_own_output)
    curve = curves.TrainingCurves(cfg.output_dir, 0, f"SimSiam {cfg.backbone}")
    curve.csv_path, curve.png_path = (storage.join(cfg.output_dir, "curves", f"pretrain.{e}") for e in ("csv", "png"))
    try:
        history = model.fit(train_dataset(ds, cfg.batch_size, cfg.seed), epochs=cfg.n_epochs, steps_per_epoch=steps,
                            verbose=cfg.verbose, shuffle=False, callbacks=[
                                SaveBackbone(net, card["backbone_file"]), curve,
                                tensorboard.FoldScalars(cfg.output_dir, "pretrain")])
    except BaseException as err:  # the card says how the run ended, as an experiment's does
        card.update(status="failed", error=f"{type(err).__name__}: {err}"[:2000])
        run_card.save(card_path, card)
        raise
    losses = [float(v) for v in history.history["loss"]]
    card.update(status="complete", epochs=len(losses), loss_per_epoch=losses, final_loss=losses[-1],
                  seconds=round(time.time() - start, 3))
    run_card.save(card_path, card)
    print(f"SimSiam loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} epoch(s); "
          f"backbone weights: {card['backbone_file']}", flush=True)
    return card
