"""Picks where the model runs (TPU, GPUs or CPU, under Keras' JAX or TensorFlow backend) and the
mixed-precision policy.

The same experiment code runs everywhere: only `--backend`, `--tpu_ip_or_name`, `--mixed_precision`
and `--cpu_replicas` change. This is the only module that knows which backend runs: under
TensorFlow a `tf.distribute` strategy replicates the model, under JAX Keras' own
`keras.distribution.DataParallel` does (over all devices of all hosts). Also here: the global batch from a per-replica one, learning-rate
scaling for it, and a TPU connection that fails in seconds (not a hang) when the TPU is unreachable.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import platform
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import keras
import numpy as np
import tensorflow as tf

from tpuflow import __version__

PRECISIONS = ("mixed_float16", "mixed_bfloat16")
# --mixed_precision=auto by platform ('tpu', 'gpu', 'cpu': `Placement.platform`)
AUTO_PRECISION = {"tpu": "mixed_bfloat16", "gpu": "mixed_float16", "cpu": "float32"}
LR_SCALING = ("none", "linear", "sqrt")
T = TypeVar("T")
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


class TPUUnreachableError(ConnectionError):
    """The TPU named by `--tpu_ip_or_name` could not be reached or initialised (an I/O error the
    user can act on: commands print it as one line naming the flag)."""


def _endpoint(address: str, default_port: int) -> tuple[str, int]:
    """`grpc://host:port`, `http://host:port` or `host[:port]` -> (host, port)."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    return host, int(port) if port else default_port


def _within(timeout_s: float, fn: Callable[[], T], what: str) -> T:
    """`fn()` run in a daemon thread: its result, or TPUUnreachableError after `timeout_s`.

    Name resolution and the TPU client's HTTP calls have no timeout of their own; a thread keeps a
    hung call from hanging the run (the thread is abandoned, it holds nothing of ours).
    """
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TPUUnreachableError(f"{what}: no answer within {timeout_s:g} s (--tpu_timeout_s)")
    if "error" in box:
        raise box["error"]
    return box["value"]


# A gRPC (HTTP/2) client opens with this preface and an empty SETTINGS frame; the server's first
# frame is its own SETTINGS (frame type 4). Anything else there is not a gRPC server.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
_HTTP2_SETTINGS = 4


def check_reachable(host: str, port: int, timeout_s: float, what: str, grpc: bool = False) -> None:
    """TPUUnreachableError unless a TCP connection to host:port opens within `timeout_s` (and, with
    `grpc`, the server answers the HTTP/2 preface as a gRPC server does).

    The gRPC check matters: TensorFlow's TPU initialisation waits forever on a port that accepts
    connections but does not speak gRPC.
    """
    def connect():
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            if grpc:
                conn.sendall(_HTTP2_PREFACE)
                header = conn.recv(9)
                if len(header) < 4 or header[3] != _HTTP2_SETTINGS:
                    raise ConnectionError("the port is open but does not answer as a gRPC server")
    try:
        _within(timeout_s, connect, f"{what} {host}:{port}")
    except TimeoutError as err:  # the socket's own timeout, which races the thread's under load
        raise TPUUnreachableError(f"{what} {host}:{port}: no answer within {timeout_s:g} s (--tpu_timeout_s)") from err
    except OSError as err:
        raise TPUUnreachableError(f"{what} {host}:{port} is not reachable: {err}") from err


def metadata_endpoint() -> tuple[str, int]:
    """The GCE metadata server the TPU client asks for project and zone (same variables it reads)."""
    address = os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_IP") or "metadata.google.internal"
    return _endpoint(address, 80)


def connect_tpu(tpu: str, timeout_s: float = 10.0) -> tf.distribute.TPUStrategy:
    """TPUStrategy for `local` (TPU VM), a `grpc://host:port` address (TPU node) or a TPU name.

    Every network step is bounded by `timeout_s`, so an unreachable TPU fails in seconds with a
    TPUUnreachableError instead of hanging: the gRPC port (address), or the metadata server, the
    TPU API and then the TPU's own gRPC port (name). TPU system initialisation itself is not
    bounded (a reachable TPU can legitimately take a minute to initialise); a gRPC server that is
    not a TPU fails it at once.
    """
    if tpu != "local":
        if tpu.startswith("grpc://"):
            check_reachable(*_endpoint(tpu, 8470), timeout_s, f"--tpu_ip_or_name={tpu}: TPU address", grpc=True)
        else:  # a name: the client asks the metadata server, then the Cloud TPU API
            check_reachable(*metadata_endpoint(), timeout_s,
                            f"--tpu_ip_or_name={tpu}: a TPU name needs the GCE metadata server (run on "
                            "Google Cloud or pass a grpc:// address);")
    try:
        resolver = _within(timeout_s, lambda: tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu),
                           f"--tpu_ip_or_name={tpu}: resolving the TPU")
        if tpu != "local":
            check_reachable(*_endpoint(resolver.master(), 8470), timeout_s,
                            f"--tpu_ip_or_name={tpu}: TPU endpoint", grpc=True)
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except TPUUnreachableError:
        raise
    except Exception as err:  # resolver and TF errors: name the flag and keep the cause
        raise TPUUnreachableError(f"--tpu_ip_or_name={tpu}: {type(err).__name__}: {err}") from err
    return tf.distribute.TPUStrategy(resolver)


def get_strategy(tpu_ip_or_name: str | None = None, cpu_replicas: int = 1, *, tpu_fallback: bool = False,
                 tpu_timeout_s: float = 10.0) -> tf.distribute.Strategy:
    """TPUStrategy for a TPU name, `grpc://` address or `local` (TPU VM); else MirroredStrategy
    over all visible GPUs; else the CPU (MirroredStrategy over logical CPUs if `cpu_replicas` > 1).

    An unreachable TPU raises TPUUnreachableError within about `tpu_timeout_s`, or with
    `tpu_fallback` prints a warning and goes on with the GPUs or the CPU.
    """
    strategy = None
    if tpu_ip_or_name not in (None, *_NONE_WORDS):
        try:
            strategy, where = connect_tpu(tpu_ip_or_name, tpu_timeout_s), f"TPU {tpu_ip_or_name!r}"
        except TPUUnreachableError as err:
            if not tpu_fallback:
                raise
            logging.warning("%s; falling back (--tpu_fallback)", err)
            print(f"WARNING: {err}; falling back to GPU/CPU (--tpu_fallback)", flush=True)
    if strategy is None:
        strategy, where = _local_strategy(cpu_replicas)
    logging.info("Running on %s with %d replica(s)", where, strategy.num_replicas_in_sync)
    print(f"Running on {where} with {strategy.num_replicas_in_sync} replica(s)", flush=True)
    return strategy


def _local_strategy(cpu_replicas: int) -> tuple[tf.distribute.Strategy, str]:
    """MirroredStrategy over all visible GPUs, else the CPU (split into logical devices if asked)."""
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy(), "GPU"
    if cpu_replicas > 1:
        split_cpu(cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        return tf.distribute.MirroredStrategy(devices), "CPU (logical devices)"
    return tf.distribute.get_strategy(), "CPU"


def platform_of(strategy: tf.distribute.Strategy) -> str:
    """'tpu', 'gpu' or 'cpu': what the strategy's replicas run on."""
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "tpu"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        devices = strategy.extended.worker_devices
    else:  # the default strategy: whatever TensorFlow places ops on, a GPU if there is one
        devices = [d.name for d in tf.config.list_logical_devices()]
    return "gpu" if any("GPU" in d.upper() for d in devices) else "cpu"


def global_batch_size(batch_size: int, replicas: int, per_replica: bool) -> int:
    """The global batch (all replicas together) from `--batch_size` and `--batch_size_per_replica`.

    A global batch must split evenly over the replicas (each gets the same static shape).
    """
    if batch_size < 1:
        raise ValueError(f"--batch_size={batch_size}: must be >= 1")
    if per_replica:
        return batch_size * replicas
    if batch_size % replicas:
        raise ValueError(f"--batch_size={batch_size} (global) is not divisible by the {replicas} replicas; "
                         f"use a multiple of {replicas} or --batch_size_per_replica")
    return batch_size


def scaled_lr(lr: float, global_batch: int, base_batch: int, rule: str) -> float:
    """`--lr` scaled for the global batch: 'none', 'linear' (lr * g/b) or 'sqrt' (lr * sqrt(g/b)).

    `lr` is the rate tuned at `base_batch`; bigger accelerator batches keep the same per-example step.
    """
    if rule not in LR_SCALING:
        raise ValueError(f"--lr_scaling={rule!r}: expected one of {LR_SCALING}")
    if rule != "none" and base_batch < 1:
        raise ValueError(f"--base_batch_size={base_batch}: must be >= 1 with --lr_scaling={rule}")
    ratio = global_batch / base_batch if rule != "none" else 1.0
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


def set_precision(policy: str | None, strategy: "tf.distribute.Strategy | Placement | None" = None) -> str:
    """Sets the global Keras dtype policy; None/'' keeps float32. Returns the policy in force.

    'auto' picks by device: mixed_bfloat16 on TPU (native bf16 matrix units, no loss scaling),
    mixed_float16 on GPU (Keras compile then wraps the optimizer in a LossScaleOptimizer),
    float32 on CPU.
    """
    platform = None
    if policy == "auto":
        platform = (strategy.platform if isinstance(strategy, Placement)
                    else platform_of(strategy or tf.distribute.get_strategy()))
    name = precision_name(policy, platform)
    keras.mixed_precision.set_global_policy(name)
    return name


def precision_name(policy: str | None, platform: str | None) -> str:
    """The dtype policy `--mixed_precision` means on a `platform` ('tpu', 'gpu', 'cpu')."""
    name = AUTO_PRECISION[platform] if policy == "auto" else "float32" if policy in (None, *_NONE_WORDS) else policy
    if name not in ("float32", *PRECISIONS):
        raise ValueError(f"--mixed_precision={policy!r}: expected one of {PRECISIONS}, auto or None")
    return name


@dataclass
class Placement:
    """Where the model runs: backend, platform ('tpu', 'gpu' or 'cpu'), replicas (devices the
    batch is split over, all hosts together) and the scope models are built in."""
    backend: str
    platform: str  # as JAX names it (`jax.Device.platform`), GPUs of any maker as "gpu"
    replicas: int
    name: str  # TPUStrategy, MirroredStrategy, DataParallel or single device
    processes: int = 1
    strategy: "tf.distribute.Strategy | None" = None
    devices: list[str] = field(default_factory=list)

    def scope(self):
        """The TF strategy's scope; under JAX the distribution is set globally (fit and predict
        outside a scope must see it too), so nothing to enter."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()


def get_runtime(tpu_ip_or_name: str | None = None, cpu_replicas: int = 1, *, tpu_fallback: bool = False,
                tpu_timeout_s: float = 10.0, distributed: bool = False) -> Placement:
    """The placement for Keras' backend: `get_strategy` under TensorFlow, `jax_placement` under JAX."""
    if keras.backend.backend() == "jax":
        return jax_placement(tpu_ip_or_name, cpu_replicas, tpu_fallback=tpu_fallback, distributed=distributed)
    if distributed:
        raise ValueError("--distributed (multi-host) needs the jax backend; TensorFlow's TPUStrategy "
                         "spans a TPU slice's hosts by itself")
    strategy = get_strategy(tpu_ip_or_name, cpu_replicas, tpu_fallback=tpu_fallback, tpu_timeout_s=tpu_timeout_s)
    default = strategy is tf.distribute.get_strategy()
    devices = ([d.name for d in tf.config.list_logical_devices()][:1] if default
               else list(strategy.extended.worker_devices))
    return Placement("tensorflow", platform_of(strategy), int(strategy.num_replicas_in_sync),
                     "single device" if default else type(strategy).__name__, strategy=strategy, devices=devices)


_hosts_started = False


def start_hosts() -> None:
    """`keras.distribution.initialize()` once per process: JAX's multi-host start-up (on Cloud TPU it
    finds the other hosts itself, elsewhere from KERAS_DISTRIBUTION_* variables)."""
    global _hosts_started
    if not _hosts_started:
        keras.distribution.initialize()
        _hosts_started = True


def jax_placement(tpu_ip_or_name: str | None = None, cpu_replicas: int = 1, *, tpu_fallback: bool = False,
                  distributed: bool = False) -> Placement:
    """Data parallelism over every device JAX sees (TPU cores, GPUs, or CPU devices; all hosts of
    a slice with `distributed`), with `keras.distribution.DataParallel`.

    `distributed`: `keras.distribution.initialize()` first (JAX's multi-host start-up; on Cloud TPU
    it finds the other hosts itself, elsewhere from KERAS_DISTRIBUTION_* variables). A TPU asked
    for (`tpu_ip_or_name`) but not seen is a TPUUnreachableError naming what JAX saw, or with
    `tpu_fallback` a warning. `cpu_replicas` > 1 splits the host CPU (before JAX starts its devices).
    """
    import jax  # noqa: PLC0415 (only under the jax backend)
    if distributed:
        start_hosts()
    with contextlib.suppress(RuntimeError):  # TF feeds tf.data on the CPU only; JAX owns the accelerators
        tf.config.set_visible_devices([], "GPU")
    if cpu_replicas > 1:
        split_jax_cpu(cpu_replicas)
    devices = jax.devices()
    from tpuflow import backend  # noqa: PLC0415
    platform = backend.jax_platform(devices)
    if tpu_ip_or_name not in (None, *_NONE_WORDS):
        problem = None
        if platform != "tpu":
            problem = (f"--tpu_ip_or_name={tpu_ip_or_name}: the jax backend sees no TPU, only "
                       f"{len(devices)} {devices[0].platform} device(s) ({versions_line('jax')}); on a TPU VM "
                       "install the 'tpu' extra (jax[tpu]) and make sure no other process holds the TPU")
        elif tpu_ip_or_name != "local":
            problem = (f"--tpu_ip_or_name={tpu_ip_or_name}: the jax backend runs on the TPU VM's own TPU "
                       "(use 'local'); TPU nodes reached over the network need --backend=tensorflow")
        if problem and not tpu_fallback:
            raise TPUUnreachableError(problem)
        if problem:
            logging.warning("%s; falling back (--tpu_fallback)", problem)
            print(f"WARNING: {problem}; falling back to {platform.upper()} (--tpu_fallback)", flush=True)
    # Input is split over hosts by tpuflow.training.hosts (by shard file), not by Keras' dataset sharding.
    distribution = (keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
                    if len(devices) > 1 else None)
    keras.distribution.set_distribution(distribution)
    name = "DataParallel" if distribution else "single device"
    print(f"Running on {platform.upper()} with {len(devices)} replica(s) (jax, {jax.process_count()} process(es))",
          flush=True)
    return Placement("jax", platform, len(devices), name, processes=jax.process_count(),
                     devices=[str(d) for d in devices])


def split_jax_cpu(n_devices: int) -> None:
    """Makes JAX show `n_devices` CPU devices; must happen before JAX starts its backends."""
    import jax  # noqa: PLC0415
    try:
        jax.config.update("jax_num_cpu_devices", n_devices)
    except RuntimeError as err:
        if jax.local_device_count() != n_devices:
            raise RuntimeError(f"--cpu_replicas={n_devices}: JAX's devices were already initialised "
                               f"with {jax.local_device_count()}; set it before any JAX work") from err


def _version(*dists: str) -> str | None:
    for dist in dists:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(dist)
    return None


def versions() -> dict:
    """Installed versions (None: not installed): tpuflow, Python, NumPy, and what decides where a
    run can go: Keras, TensorFlow (any of its wheels), jax, jaxlib and libtpu."""
    return {"tpuflow": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "keras": keras.__version__, "tensorflow": tf.__version__,
            "tensorflow_wheel": next((d for d in ("tensorflow-tpu", "tensorflow-cpu", "tensorflow")
                                      if _version(d)), None),
            "jax": _version("jax"), "jaxlib": _version("jaxlib"), "libtpu": _version("libtpu", "libtpu-nightly")}


def versions_line(backend: str) -> str:
    """'jax 0.10.2, jaxlib 0.10.2, libtpu none' or 'tensorflow 2.20.0 (tensorflow-tpu), libtpu ...'."""
    v = versions()
    if backend == "jax":
        return f"jax {v['jax']}, jaxlib {v['jaxlib']}, libtpu {v['libtpu'] or 'not installed'}"
    return f"tensorflow {v['tensorflow']} ({v['tensorflow_wheel']}), libtpu {v['libtpu'] or 'not installed'}"


def describe(placement: Placement, precision: str, global_batch: int) -> str:
    """The start-up line: backend and why, devices, precision, batch per device, versions."""
    from tpuflow import backend  # noqa: PLC0415
    return (f"Backend {placement.backend} ({backend.reason or 'Keras default'}): {placement.replicas} "
            f"{placement.platform.upper()} device(s) in {placement.processes} process(es) ({placement.name}), "
            f"precision {precision}, global batch {global_batch} = {global_batch // placement.replicas} per device; "
            f"keras {keras.__version__}, {versions_line(placement.backend)}")
