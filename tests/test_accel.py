"""Accelerator readiness on a CPU: TPU connection failures (fast, clear, or a fallback), global batch
and LR scaling, mixed_float16 loss scaling, static shapes of every dataset kind's pipelines."""
import math
import socket
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tiny_experiment
from tpuflow.inputs import pipeline, records
from tpuflow.prep import builder, frames
from tpuflow.training import experiment, models, runtime

# TPU tests only ever talk to 127.0.0.1.


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_closed_tpu_address_fails_naming_the_flag():
    address = f"grpc://127.0.0.1:{_closed_port()}"
    with pytest.raises(runtime.TPUUnreachableError, match=f"--tpu_ip_or_name={address}: TPU address .* not reachable"):
        runtime.get_strategy(address, tpu_timeout_s=2)


def test_port_that_is_not_grpc_fails_within_the_timeout_instead_of_hanging():
    """A listener that accepts and stays silent: TensorFlow's own TPU init would wait forever."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    start = time.time()
    try:
        with pytest.raises(runtime.TPUUnreachableError, match=r"no answer within 1 s \(--tpu_timeout_s\)"):
            runtime.get_strategy(f"grpc://127.0.0.1:{server.getsockname()[1]}", tpu_timeout_s=1)
    finally:
        server.close()
    assert time.time() - start < 30  # a hang guard, not a speed measurement


def test_tpu_name_without_metadata_server_fails_naming_it(monkeypatch):
    monkeypatch.setenv("GCE_METADATA_HOST", f"127.0.0.1:{_closed_port()}")
    with pytest.raises(runtime.TPUUnreachableError, match="--tpu_ip_or_name=no-such-tpu: a TPU name needs the GCE "
                                                          "metadata server"):
        runtime.get_strategy("no-such-tpu", tpu_timeout_s=2)


def test_unreachable_tpu_falls_back_when_asked(capsys):
    strategy = runtime.get_strategy(f"grpc://127.0.0.1:{_closed_port()}", tpu_fallback=True, tpu_timeout_s=2)
    assert strategy.num_replicas_in_sync == 1
    out = capsys.readouterr().out
    assert "falling back to GPU/CPU (--tpu_fallback)" in out and "Running on CPU with 1 replica(s)" in out


def test_global_batch_per_replica_and_divisibility():
    assert runtime.global_batch_size(16, 8, per_replica=True) == 128
    assert runtime.global_batch_size(128, 8, per_replica=False) == 128
    with pytest.raises(ValueError, match=r"--batch_size=10 \(global\) is not divisible by the 4 replicas"):
        runtime.global_batch_size(10, 4, per_replica=False)


def test_lr_scaling_rules():
    assert runtime.scaled_lr(1e-3, 256, 32, "none") == 1e-3
    assert math.isclose(runtime.scaled_lr(1e-3, 256, 32, "linear"), 8e-3)
    assert math.isclose(runtime.scaled_lr(1e-3, 256, 32, "sqrt"), 1e-3 * math.sqrt(8))
    with pytest.raises(ValueError, match="--lr_scaling='cubic'"):
        runtime.scaled_lr(1e-3, 256, 32, "cubic")


def test_auto_precision_is_float32_on_cpu():
    try:
        assert runtime.set_precision("auto") == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_wraps_the_optimizer_in_loss_scaling_and_trains(cv_dir, single_dir, tmp_path):
    """The GPU precision path, run on the CPU: loss-scaled optimizer, a finite trained fold."""
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(tmp_path / "fp16"),
                                 quick=True, dim=16, batch_size=8, tta_number=0, weights=None, verbose=0,
                                 n_folds=1, job="train_val_score", mixed_precision="mixed_float16",
                                 steps_per_execution=2)
    try:
        runtime.set_precision(cfg.mixed_precision)
        cfg = cfg.replace(global_batch_size=8, scaled_lr=cfg.lr)
        model = tiny_experiment.init_model(cfg)
        models.compile_model(model, cfg)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
        assert conv.compute_dtype == "float16" and model.output.dtype == "float32"
        loss = model.train_on_batch(np.full((8, 16, 16, 1), 100, np.float32), np.full((8,), 50, np.float32))
        assert np.isfinite(loss).all()
        result = experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(result["scores"].loc["0", "tta_0"])


KINDS = {  # spec -> (parse function, per-example input shape at dim 16)
    "single": (lambda s: records.parse_image(s, channels=1, dim=16)["image"], (16, 16, 1)),
    "stacked:s2": (lambda s: records.parse_image(s, channels=3, dim=16)["image"], (16, 16, 3)),
    "mean:s2": (lambda s: records.parse_image(s, channels=3, dim=16)["image"], (16, 16, 3)),
    "sequence:n6:s1": (lambda s: records.parse_sequence(s, n_frames=6, dim=16)["image"], (6, 16, 16, 1)),
}


@pytest.fixture(scope="module")
def kind_dirs(cv_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    specs = [frames.DatasetSpec.parse(k) for k in KINDS]
    builder.build_datasets(cv_dir, str(root), specs)
    return {k: str(root / s.name) for k, s in zip(KINDS, specs)}


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_dataset_kind_has_static_shapes_for_training_and_prediction(kind, kind_dirs):
    """TPUs compile one program per shape: every tensor, batch dimension included, is fixed."""
    parse_input, shape = KINDS[kind]
    parse = lambda s: (parse_input(s), tf.cast(records.parse_common(s)["label"], tf.float32))  # noqa: E731
    files = records.record_files(kind_dirs[kind], [0, 1])
    n = len(records.read_ids(files))
    train = pipeline.train_dataset(files, parse, 6, shuffle_buffer=16, aug_prob=1.0, seed=0)
    predict = pipeline.predict_dataset(files, parse, 6, n, tta_index=7)
    assert train.element_spec[0]["image"].shape == (6, *shape) and train.element_spec[1].shape == (6,)
    assert train.element_spec[0]["transform"].shape == (6,)  # each example's, applied on the device
    assert predict.element_spec.shape == (6, *shape)
    batch, _ = next(iter(train))
    assert batch["image"].shape == (6, *shape)
    assert sum(int(b.shape[0]) for b in predict) == pipeline.padded_count(n, 6)
