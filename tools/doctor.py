"""Preflight before a long run: what will run where, and whether it can.

Usage:
    python tools/doctor.py [--experiment=experiments/<run>/run.py] [experiment flags: --backend,
        --tpu_ip_or_name, --mixed_precision, --batch_size, --data_tfrec_dir, --data_dir,
        --output_dir, --buffer_size, --use_cache, --dim, --backbone, ...] [--target=v5e-8]

Takes the same flags as the experiment's run.py (its defaults applied) and checks, one line each:
backend and why it was chosen; versions (Keras, TensorFlow and which wheel, jax, jaxlib, libtpu);
whether the installed jax/libtpu or TensorFlow/libtpu pairing sees a TPU; devices and their
count, precision, global batch and batch per device; for the experiment and dataset, the input
pipeline's examples/s against the model's training step rate (input- or model-bound, the
throughput benchmark's code); host memory against what the shuffle buffer and --use_cache need;
for gs:// data or outputs, whether the bucket's location matches the machine's zone; and with
`--target=v5e-8[,...]`, the TPU plan of the experiment (tools/tpu_plan.py: fits in HBM, step,
epoch and job time, collectives) for the TPU you are about to rent. A check
that cannot run here says why. Ends with a verdict; exit status 1 if something will fail.
"""
from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tempfile
import urllib.request

from tpuflow import backend, storage
from tpuflow.inputs import frame_cache, records, source
from tpuflow.training import config, experiment, loop, models, runner, runtime  # first: picks Keras' backend

from absl import app, flags  # noqa: E402,I001

flags.DEFINE_string("experiment", None, "The run.py to check (its flag defaults and model); None: runtime only")
flags.DEFINE_integer("input_batches", 10, "Timed input-pipeline batches")
flags.DEFINE_integer("model_steps", 3, "Timed model training steps")
flags.DEFINE_string("target", None, "TPU target(s) to plan the experiment for (tools/tpu_plan.py, e.g. v5e-8): "
                    "READY then also means the run fits there, and says what it costs")
FLAGS = flags.FLAGS
OK, WARN, FAIL, SKIP = "ok", "WARN", "FAIL", "skip"
MEMORY_SHARE = 0.8  # of the available host memory a run may plan to use
DECODED_BATCHES = 4  # after the buffer: prefetch(2), the batch being built, the one in use


class Report:
    def __init__(self):
        self.lines: list[tuple[str, str, str]] = []

    def add(self, status: str, check: str, detail: str) -> None:
        self.lines.append((status, check, detail))
        print(f"[{status:>4}] {check}: {detail}", flush=True)

    def failures(self) -> list[str]:
        return [f"{check}: {detail}" for status, check, detail in self.lines if status == FAIL]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_tpu_stack(report: Report, placement) -> None:
    """Whether the installed pairings can see a TPU, without taking a TPU the other backend holds."""
    v = runtime.versions()
    if backend.chosen == "jax" and placement is None:
        report.add(WARN, "jax/libtpu", f"jax {v['jax']} with libtpu {v['libtpu'] or 'not installed'}: "
                   "no devices resolved (see devices)")
    elif backend.chosen == "jax":
        seen = "sees a TPU" if placement.platform == "tpu" else f"sees no TPU ({placement.platform} devices only)"
        report.add(OK if placement.platform == "tpu" or not v["libtpu"] else WARN, "jax/libtpu",
                   f"jax {v['jax']} with libtpu {v['libtpu'] or 'not installed'}: {seen}")
    elif v["jax"] is None:
        report.add(SKIP, "jax/libtpu", "jax not installed (the TPU path of today's TPU VMs: pip install '.[tpu]')")
    elif v["libtpu"] is None:
        report.add(OK, "jax/libtpu", f"jax {v['jax']} without libtpu: cannot see a TPU (on a TPU VM: the 'tpu' extra)")
    else:
        report.add(SKIP, "jax/libtpu", "not probed: the tensorflow backend runs, and JAX would take the TPU")
    tf_tpu = v["tensorflow_wheel"] == "tensorflow-tpu"
    if backend.chosen == "tensorflow" and placement is not None:
        if placement.platform == "tpu":
            report.add(OK, "tensorflow/libtpu", f"{runtime.versions_line('tensorflow')}: TPUStrategy reached the TPU")
        else:
            detail = ("TPUStrategy possible with --tpu_ip_or_name" if tf_tpu else
                      f"{v['tensorflow_wheel']} {v['tensorflow']} has no TPU support (TPUStrategy needs tensorflow-tpu "
                      "<= 2.20 and its libtpu: the 'tpu-tf' extra; TPU v6e/TPU7x: use --backend=jax)")
            report.add(OK, "tensorflow/libtpu", detail)
    else:
        report.add(OK, "tensorflow/libtpu", f"{v['tensorflow_wheel']} {v['tensorflow']}: feeds tf.data on the CPU"
                   + (" (tensorflow-tpu next to jax[tpu] would fight over the TPU: use tensorflow-cpu)" if tf_tpu else ""))


def check_placement(report: Report, cfg):
    """Devices, precision and batch as the run will resolve them: (placement, the configuration
    resolved for it); placement None if that fails."""
    try:
        placement = runtime.get_runtime(cfg.tpu_ip_or_name, cfg.cpu_replicas, tpu_fallback=cfg.tpu_fallback,
                                        tpu_timeout_s=cfg.tpu_timeout_s, distributed=cfg.distributed)
    except (runtime.TPUUnreachableError, RuntimeError, ValueError) as err:
        report.add(FAIL, "devices", f"{type(err).__name__}: {err}")
        return None, cfg
    report.add(OK, "devices", f"{placement.replicas} {placement.platform.upper()} device(s) in {placement.processes} "
               f"process(es) ({placement.name}): {', '.join(placement.devices[:8])}"
               + (" ..." if len(placement.devices) > 8 else ""))
    try:
        cfg = config.resolve(cfg, placement=placement)
        runtime.set_precision(cfg.precision)
    except ValueError as err:
        report.add(FAIL, "batch/precision", str(err))
        return None, cfg
    report.add(OK, "batch/precision", f"precision {cfg.precision}, global batch {cfg.global_batch_size} = "
               f"{cfg.global_batch_size // placement.replicas} per device, lr {cfg.scaled_lr:g}")
    return placement, cfg


def check_rates(report: Report, cfg, run_py, placement, inputs) -> None:
    """Input pipeline vs model step rate on this machine, for this experiment and its input source
    (`tpuflow.inputs.source`: records or a frame store), the training pipeline the runner reads."""
    from tpuflow.training.throughput import input_rate, model_rate  # noqa: PLC0415
    train_folds = [k for k in range(int(inputs.manifest["n_folds"])) if k != cfg.initial_fold]
    parse = lambda serialized: _parser(run_py)(serialized, cfg)  # noqa: E731
    ds = inputs.train_dataset(cfg.replace(buffer_size=min(cfg.buffer_size, 256), mixup_prob=0.0), train_folds,
                              parse, cfg.global_batch_size, fold=cfg.initial_fold, epoch=0, step=0, steps=1)
    data = input_rate(ds, FLAGS.input_batches, cfg.global_batch_size)
    with placement.scope():  # the step rate does not depend on the weights' values
        model = run_py.init_model(cfg.replace(weights=None))
        models.compile_model(model, cfg)
        trainer = loop.train_model(model, cfg.aug_prob > 0)  # a step includes the device augmentation
    steps = model_rate(trainer, next(iter(ds)), FLAGS.model_steps, cfg.global_batch_size)
    verdict = ("model-bound: the devices are the limit" if data >= steps else
               "input-bound: the devices wait for data (--use_cache, fewer augmentations, more host CPUs)")
    report.add(OK if data >= steps else WARN, "input vs model",
               f"input {data:.1f} examples/s, model {steps:.1f} examples/s, ratio {data / steps:.2f}: {verdict}")


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024


def check_memory(report: Report, cfg, run_py, manifest: dict) -> None:
    """Host memory the input pipeline holds (`pipeline.train_dataset`): the shuffle buffer of
    serialized records (at most --buffer_size and about `pipeline.SHUFFLE_BYTES` of them), a few
    decoded float32 batches after it, and with --use_cache every serialized training record."""
    import tensorflow as tf  # noqa: PLC0415 (the tf.data side)

    from tpuflow.inputs import pipeline  # noqa: PLC0415 (imports TensorFlow)
    train_folds = [k for k in range(int(manifest["n_folds"])) if k != cfg.initial_fold]
    train_files = records.record_files(cfg.data_tfrec_dir, train_folds)
    first = records.record_files(cfg.data_tfrec_dir, [cfg.initial_fold])[0]
    image = _parser(run_py)(next(iter(tf.data.TFRecordDataset(first).take(1))), cfg)[0]
    per_example = int(image.shape.num_elements()) * 4  # float32 once batched (uint8 until then)
    n_train = records.example_count(manifest, train_folds)
    record_bytes = pipeline.mean_record_bytes(train_files)
    held = max(1, min(cfg.buffer_size, n_train, pipeline.SHUFFLE_BYTES // record_bytes))
    batch = cfg.global_batch_size or cfg.batch_size
    buffer_bytes = held * record_bytes
    batch_bytes = DECODED_BATCHES * batch * per_example
    cache_bytes = sum(tf.io.gfile.stat(path).length for path in train_files) if cfg.use_cache else 0
    need = buffer_bytes + batch_bytes + cache_bytes
    have = frame_cache.available_bytes()
    what = (f"shuffle buffer {held} records (--buffer_size={cfg.buffer_size}, at most "
            f"{_size(pipeline.SHUFFLE_BYTES)}) x {_size(record_bytes)} = {_size(buffer_bytes)}"
            f" + {DECODED_BATCHES} decoded batches of {batch} x {_size(per_example)} = {_size(batch_bytes)}"
            + (f" + --use_cache of {n_train} serialized training records = {_size(cache_bytes)}"
               if cfg.use_cache else "") + f"; {_size(need)} in all")
    if need > MEMORY_SHARE * have:
        report.add(FAIL, "host memory", f"{what} > {MEMORY_SHARE:.0%} of the {_size(have)} available: "
                   "lower --buffer_size or --batch_size, or drop --use_cache")
    else:
        report.add(OK, "host memory", f"{what} of {_size(have)} available")


def machine_zone(timeout_s: float = 2.0) -> str | None:
    """This machine's zone from the GCE metadata server (e.g. us-central1-b); None off Google Cloud."""
    host, port = runtime.metadata_endpoint()
    request = urllib.request.Request(f"http://{host}:{port}/computeMetadata/v1/instance/zone",
                                     headers={"Metadata-Flavor": "Google"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.read().decode().rsplit("/", 1)[-1]
    except OSError:
        return None


def check_bucket_locations(report: Report, cfg) -> None:
    """gs:// data or outputs in another region than the machine: slow reads, egress charges."""
    paths = (cfg.data_dir, cfg.data_tfrec_dir, cfg.frame_store, cfg.output_dir)
    buckets = {storage.bucket(p) for p in paths if p} - {None}
    if not buckets:
        report.add(SKIP, "bucket location", "data and outputs are local (no gs:// path): nothing to check")
        return
    zone = machine_zone()
    if zone is None:
        report.add(SKIP, "bucket location", "cannot check here: no GCE metadata server (not on Google Cloud)")
        return
    region = zone.rsplit("-", 1)[0].upper()
    for bucket in sorted(buckets):
        try:
            location = storage.bucket_location(bucket)
        except Exception as err:  # any client error: named, the check goes on
            report.add(WARN, "bucket location", f"{bucket}: location unknown ({type(err).__name__}: {err})")
            continue
        if location == region:
            report.add(OK, "bucket location", f"{bucket} is in {location}, this machine in {zone}")
        elif region.startswith(location):  # multi-region (US, EU, ASIA) holding the machine's region
            report.add(WARN, "bucket location", f"{bucket} is multi-region {location}, this machine in {zone}: "
                       f"reads are free but slower than from a bucket in {region}")
        else:
            report.add(FAIL, "bucket location", f"{bucket} is in {location}, this machine in {zone}: "
                       "cross-region reads cost money and time (copy the data to a bucket in " + region + ")")


DOCTOR_ONLY = ("--input_batches", "--model_steps", "--target", "--backend", "--json")
PLAN_TOOL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tpu_plan.py")


def check_targets(report: Report, argv: list[str]) -> None:
    """The TPU plan of the experiment (tools/tpu_plan.py, in its own process: it compiles under
    Keras' JAX backend) for --target: fits, and what a step, an epoch and the job cost there."""
    if not FLAGS.experiment:
        report.add(FAIL, "tpu plan", "--target needs --experiment (the run to plan)")
        return
    with tempfile.TemporaryDirectory(prefix="tpuflow-plan-") as tmp:
        out = os.path.join(tmp, "plan.json")
        args = [a for a in argv if not a.startswith(DOCTOR_ONLY)] + [f"--target={FLAGS.target}", f"--json={out}"]
        done = subprocess.run([sys.executable, PLAN_TOOL, *args], capture_output=True, text=True)
        if not os.path.exists(out):
            last = [line for line in done.stderr.splitlines() if "error" in line.lower()] or done.stderr.splitlines() or ["?"]
            report.add(FAIL, "tpu plan", f"tools/tpu_plan.py failed (exit {done.returncode}): {last[-1].strip()}")
            return
        entries = storage.read_json(out)["targets"]
    for e in entries:
        check = f"tpu plan {e['target']}"
        if "error" in e:
            report.add(FAIL, check, e["error"])
        elif not e["fits"]:
            report.add(FAIL, check, f"global batch {e['global_batch']} does not fit {_size(e['hbm_bytes_per_chip'])} "
                       f"of HBM per chip; the largest that fits is {e['largest_fitting_global_batch']} (--batch_size)")
        else:
            report.add(OK, check, f"fits: {_size(e['hbm_needed_bytes'])} of {_size(e['hbm_bytes_per_chip'])} HBM per "
                       f"chip at global batch {e['global_batch']} on {e['chips']} chips; compiler's step "
                       f"{e['est_step_s'] * 1e3:.3g} ms, epoch {e['est_epoch_s'] / 60:.3g} min, job "
                       f"{e['est_job_s'] / 3600:.3g} h; the host must feed {e['input_ex_per_s_needed']:.0f} examples/s; "
                       f"{e['gradient_all_reduces']} gradient all-reduce(s), {e['batch_moving_collectives']} "
                       "collective(s) moving the batch")


def _parser(run_py):
    """The experiment's parser: its own `parse_example`, else its kind's."""
    return getattr(run_py, "parse_example", experiment.parse_by_kind)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    report = Report()
    run_py = experiment.load_run_py(FLAGS.experiment) if FLAGS.experiment else None
    cfg = experiment.make_config()
    report.add(OK, "backend", f"{backend.chosen} ({backend.reason}), keras {_version('keras')}")
    placement, cfg = check_placement(report, cfg)
    check_tpu_stack(report, placement)
    inputs = None
    if not (cfg.data_tfrec_dir or cfg.frame_store):
        report.add(SKIP, "dataset", "no --data_tfrec_dir (or --frame_store): input rate and memory not checked")
    else:
        try:
            inputs = source.open_source(cfg)
            runner.check_dataset_kind(cfg, inputs)
            cfg = config.resolve(cfg, inputs.manifest)
            report.add(OK, "dataset", f"{inputs.name}: {inputs.manifest['spec']}, {inputs.manifest['n_folds']} folds")
        except (OSError, ValueError, KeyError) as err:
            report.add(FAIL, "dataset", f"{type(err).__name__}: {err}")
            inputs = None
    if inputs and run_py is None:
        report.add(SKIP, "input vs model", "no --experiment: pass the run.py whose model and parser to measure")
        report.add(SKIP, "host memory", "no --experiment: the decoded example size depends on its parser")
    elif inputs:
        if cfg.task == "classification" and not cfg.n_classes:
            cfg = config.resolve(cfg, n_labels=len(runner.load_unique_labels(cfg.data_dir, required=True)))
        if cfg.data_tfrec_dir:  # the records' shuffle buffer and cache
            check_memory(report, cfg, run_py, inputs.manifest)
        else:
            report.add(SKIP, "host memory", "--frame_store: the run sizes its decoded-frame cache as it starts "
                       "(--frame_cache) and says so")
        if placement is None:
            report.add(SKIP, "input vs model", "no devices resolved (see above)")
        else:
            try:
                check_rates(report, cfg, run_py, placement, inputs)
            except Exception as err:  # the experiment's own failure (model, parser): named, not a traceback
                report.add(FAIL, "input vs model", f"{type(err).__name__}: {err}")
    check_bucket_locations(report, cfg)
    if FLAGS.target:
        check_targets(report, sys.argv[1:])
    failures = report.failures()
    if failures:
        print(f"VERDICT: NOT READY ({len(failures)} problem(s)): " + "; ".join(failures), flush=True)
        sys.exit(1)
    where = f"{placement.replicas} {placement.platform.upper()} device(s)" if placement else "?"
    print(f"VERDICT: READY: {backend.chosen} on {where}, precision {cfg.precision}"
          + ("" if placement.platform != "cpu" or not cfg.tpu_ip_or_name else " (TPU fallback)"), flush=True)


if __name__ == "__main__":
    experiment.run_tool(main, ["experiment", "input_batches", "model_steps", "target"])  # the verdict's exit status passes through
