"""Picks the distribution strategy (TPU, GPUs or CPU) and the mixed-precision policy.

The same experiment code runs everywhere: only `--tpu_ip_or_name`, `--mixed_precision` and
`--cpu_replicas` change.
"""
from __future__ import annotations

import logging

import keras
import tensorflow as tf

PRECISIONS = ("mixed_float16", "mixed_bfloat16")
_NONE_WORDS = ("", "none", "None")


def split_cpu(n_replicas: int) -> None:
    """Splits the host CPU into `n_replicas` logical devices (multi-replica code paths on a laptop).

    Must happen before TensorFlow initialises its devices; a second call with the same count is a no-op.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == n_replicas:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n_replicas)])
    except RuntimeError as err:
        raise RuntimeError(f"--cpu_replicas={n_replicas}: TensorFlow's devices were already "
                           "initialised; set it before any TensorFlow work") from err


def get_strategy(tpu_ip_or_name: str | None = None, cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """TPUStrategy for a TPU name, `grpc://` address or `local` (TPU VM); else MirroredStrategy
    over all visible GPUs; else the CPU (MirroredStrategy over logical CPUs if `cpu_replicas` > 1).
    """
    if tpu_ip_or_name not in (None, *_NONE_WORDS):
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_ip_or_name)
        if tpu_ip_or_name != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        strategy = tf.distribute.TPUStrategy(resolver)
        kind = f"TPU {tpu_ip_or_name!r}"
    elif tf.config.list_physical_devices("GPU"):
        strategy = tf.distribute.MirroredStrategy()
        kind = "GPU"
    elif cpu_replicas > 1:
        split_cpu(cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        strategy = tf.distribute.MirroredStrategy(devices)
        kind = "CPU (logical devices)"
    else:
        strategy = tf.distribute.get_strategy()
        kind = "CPU"
    logging.info("Running on %s with %d replica(s)", kind, strategy.num_replicas_in_sync)
    print(f"Running on {kind} with {strategy.num_replicas_in_sync} replica(s)", flush=True)
    return strategy


def set_precision(policy: str | None) -> str:
    """Sets the global Keras dtype policy; None/'' keeps float32. Returns the policy in force."""
    name = "float32" if policy in (None, *_NONE_WORDS) else policy
    if name not in ("float32", *PRECISIONS):
        raise ValueError(f"--mixed_precision={policy!r}: expected one of {PRECISIONS} or None")
    keras.mixed_precision.set_global_policy(name)
    return name
