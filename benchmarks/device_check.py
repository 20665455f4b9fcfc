"""Usage (on a machine with an accelerator; TensorFlow is not needed, see device_check.sh):
    bash benchmarks/device_check.sh [--plan_json=plan-lstm.json,plan-1ch.json] [--max_seconds=300]
        [--experiments=cnn-lstm,cnn-1ch] [--precisions=float32,mixed_bfloat16] [--steps=10]
    python benchmarks/device_check.py --tiny    # every experiment at tiny sizes, on a CPU, in seconds

For each zoo experiment (`experiments/*/run.py`, its model from its own `init_model` and its own
configuration, compiled as training compiles it) at the reference's sizes, in float32 and
mixed_bfloat16, on random NumPy batches put on the device once (no input pipeline):

- the real training step (`loop.train_model`: the device augmentation, and mixup where the
  experiment mixes, inside the step Keras compiles): examples/s, the step's FLOPs (from XLA's cost
  analysis of that step, before optimisation) and the model FLOP utilisation against the chip's
  peak (`PEAKS`);
- the device augmentation's own time per batch, and its share of the step;
- one-pass TTA prediction (`ondevice.tta_model`, the reference's ten views): examples/s;
- the estimated epoch time for the reference's epoch (`--train_examples`) and one TTA prediction
  of its validation set (`--val_examples`), next to `tools/tpu_plan.py`'s GPU-free estimate for
  TPUs when `--plan_json` names its JSON files (read only; a missing field prints n/a).

A batch that does not fit the device's memory is halved until one does, and the row says so.
Each (experiment, precision) pair runs in a fresh worker process (this script with --worker: its
own device memory, so its peak is its own) bounded by `--arch_timeout_s`; no new pair starts
after `--max_seconds`. Rows are printed as they come; the results are written as JSON to `--json`
and, where the variable OUT is set (the device machine's output folder), to $OUT/device_check.json.
"""
from __future__ import annotations

import gc
import glob
import json
import os
import re
import subprocess
import sys
import time

from tpuflow import cli
from tpuflow.training import config, experiment, loop, models  # first: tpuflow picks Keras' backend
from tpuflow.inputs import ondevice

import keras  # noqa: E402,I001
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The reference's sizes (docs/backends.md, issue 21): single images EfficientNet-B7 at batch 192, sequences
# EfficientNet-B3 over 24 frames at batch 64, 366 px; its TTA pass predicted batches of 128 images
# (`tta_batch` examples x 10 views here). `--tiny`: the same code at sizes a CPU runs in seconds.
REFERENCE = {"image": dict(backbone="EfficientNetB7", batch=192), "sequence": dict(backbone="EfficientNetB3", batch=64),
             "dim": 366, "frames": 24, "tta_batch": 12}
TINY = {"image": dict(backbone="VGG16", batch=4), "sequence": dict(backbone="VGG16", batch=2),
        "dim": 32, "frames": 3, "tta_batch": 2}
N_CLASSES = 128  # classes of the classification experiments (the competition has of the order of 140 wind speeds)

# Dense peak TFLOP/s of one chip (no sparsity): (bf16 = fp16, tf32). XLA runs float32 matrix products and
# convolutions on the TF32 tensor cores at JAX's default matmul precision, so float32 is compared
# with the TF32 peak. First match of the device's name wins (NVL before the SXM parts).
PEAKS = (
    ("H200 NVL", 835.5, 417.5),  # NVIDIA H200 NVL datasheet: 1,671 / 835 TFLOPS with sparsity
    ("H200", 989.4, 494.7),  # NVIDIA H200 datasheet (SXM): 1,979 / 989 with sparsity; the H100 SXM's compute
    ("H100 NVL", 835.5, 417.5),  # NVIDIA H100 datasheet, NVL column: 1,671 / 835 with sparsity
    ("H100 PCIe", 756.0, 378.0),  # NVIDIA H100 datasheet, PCIe column: 1,513 / 756 with sparsity
    ("H100", 989.4, 494.7),  # NVIDIA H100 datasheet, SXM column: 1,979 / 989 with sparsity
    ("A100", 312.0, 156.0),  # NVIDIA A100 datasheet (dense figures)
    ("L4", 121.0, 60.0),  # NVIDIA L4 datasheet: 242 / 120 with sparsity
)

flags.DEFINE_list("experiments", [], "Experiments to measure: run dirs' names or their suffixes "
                  "(cnn-lstm); empty: every experiments/*/run.py, cnn-lstm first")
flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Keras dtype policies to measure")
flags.DEFINE_boolean("tiny", False, "Tiny sizes (VGG16, 32 px, batch 4): the whole check on a CPU in seconds")
flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after the compiling one and one more)")
flags.DEFINE_integer("max_seconds", 300, "Start no new measurement after this many seconds")
flags.DEFINE_integer("arch_timeout_s", 200, "Seconds one (experiment, precision) may take before it is stopped")
flags.DEFINE_integer("train_examples", 56000, "Training examples per epoch (the reference's ~56k)")
flags.DEFINE_integer("val_examples", 14000, "Examples of one TTA prediction of the validation set (reference: 14k)")
flags.DEFINE_list("plan_json", [], "tools/tpu_plan.py --json files (one per experiment) to print beside the figures")
flags.DEFINE_string("json", None, "Also write the results here")
flags.DEFINE_string("worker", None, "Internal: measure this <run.py>:<precision> in this process")
FLAGS = flags.FLAGS
PASSED = ("steps", "backbone", "dim", "batch_size")  # flags a worker gets from the parent (when given)


def load_run_py(path: str):
    """An experiment's run.py as a module (its `init_model`, `DEFAULTS`); `main` is not run."""
    import importlib.util  # noqa: PLC0415
    spec = importlib.util.spec_from_file_location("device_check_experiment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment_paths(names: list[str]) -> list[str]:
    """The run.py of each named experiment (every one when `names` is empty; cnn-lstm, the
    reference's, first); an unknown name is an error naming the known ones."""
    found = sorted(glob.glob(os.path.join(ROOT, "experiments", "*", "run.py")),
                   key=lambda p: (not p.endswith("-cnn-lstm/run.py"), p))
    if not names:
        return found
    chosen = []
    for name in names:
        match = [p for p in found if os.path.basename(os.path.dirname(p)).endswith(name)]
        if len(match) != 1:
            known = ", ".join(os.path.basename(os.path.dirname(p)) for p in found)
            raise cli.UsageError(f"--experiments: {name!r} names {len(match)} experiments; known: {known}")
        chosen += match
    return chosen


def peak_tflops(chip: str, precision: str) -> float | None:
    """The chip's peak at `precision`; `chip` as JAX names it (`jax.Device.device_kind`)."""
    for name, bf16, tf32 in PEAKS:
        if name in chip:
            return bf16 if precision in ("mixed_bfloat16", "mixed_float16") else tf32
    return None


def sizes(dataset_kind: str) -> dict:
    """Backbone, batch, px, frames and TTA batch of an experiment of this dataset kind (flags override)."""
    table = TINY if FLAGS.tiny else REFERENCE
    out = {**table["sequence" if dataset_kind == "sequence" else "image"], "dim": table["dim"],
           "frames": table["frames"], "tta_batch": table["tta_batch"]}
    for flag, key in (("backbone", "backbone"), ("dim", "dim"), ("batch_size", "batch")):
        if FLAGS[flag].present:
            out[key] = FLAGS[flag].value
    return out


def _flops(jitted, *args) -> float | None:
    """FLOPs of a jitted function from XLA's cost analysis of its lowered (unoptimised) program."""
    try:
        cost = jitted.lower(*args).cost_analysis()
    except Exception:  # noqa: BLE001 (a backend without cost analysis: the row prints n/a)
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and cost.get("flops") else None


def _specs(variables) -> list:
    import jax  # noqa: PLC0415
    return [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in variables]


def _timed(fn, steps: int) -> tuple[float, float]:
    """(seconds of the first call, which compiles; seconds per call over `steps` after one more)."""
    started = time.perf_counter()
    fn()
    first = time.perf_counter() - started
    fn()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    return first, (time.perf_counter() - started) / steps


def _is_oom(err: Exception) -> bool:
    text = str(err).lower()
    return "resource_exhausted" in text or "out of memory" in text or "oom" in text.split()


def _largest_fitting(measure, batch: int) -> dict:
    """`measure(batch)`, halving the batch while the device runs out of memory."""
    tried = []
    while True:
        try:
            return {**measure(batch), "batch": batch, "oom_batches": tried}
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err) or batch == 1:
                raise
            tried.append(batch)
            batch //= 2
            gc.collect()


def measure(run_py_path: str, precision: str) -> dict:
    """One experiment in one precision: training step, device augmentation, one-pass TTA."""
    import jax  # noqa: PLC0415 (under the JAX backend only)
    run_dir = os.path.dirname(os.path.abspath(run_py_path))
    run_py = load_run_py(run_py_path)
    defaults = {k: v for k, v in experiment.experiment_defaults(run_py.DEFAULTS, run_dir).items()
                if k not in experiment.SCRIPT_RELATIVE}
    size = sizes(defaults.get("dataset_kind"))
    cfg = experiment.make_config(**{**defaults, "weights": "None", "backbone": size["backbone"], "dim": size["dim"],
                                    "batch_size": size["batch"], "mixed_precision": precision,
                                    "output_dir": run_dir})
    cfg = config.resolve(cfg, manifest={"n_frames": size["frames"]},
                         n_labels=N_CLASSES if cfg.task == "classification" else None)
    keras.mixed_precision.set_global_policy(precision)
    rng = np.random.default_rng(0)
    aug, mix = cfg.aug_prob > 0, cfg.mixup_mode if cfg.mixup_prob > 0 else None
    steps, device = FLAGS.steps, jax.devices()[0]

    def inputs(model, batch):
        images = rng.uniform(0, 255, (batch, *model.inputs[0].shape[1:])).astype("float32")
        x = {"image": images}
        if aug:
            x["transform"] = rng.integers(0, ondevice.N_TRANSFORMS, batch).astype("int32")
        if mix:
            x.update(partner=rng.permutation(batch).astype("int32"), lam=rng.uniform(0, 1, batch).astype("float32"))
            if mix == "cutmix":
                x["box"] = np.tile(np.float32([0, size["dim"] // 2, 0, size["dim"] // 2]), (batch, 1))
        n_out = model.outputs[0].shape[-1]
        y = (np.eye(n_out, dtype="float32")[rng.integers(0, n_out, batch)] if cfg.task == "classification"
             else rng.uniform(20, 120, (batch, 1)).astype("float32"))
        return jax.device_put(x if aug or mix else images), jax.device_put(y)

    built = {}  # the model of the last training measurement, which TTA predicts with

    def train(batch):
        run_cfg = cfg.replace(global_batch_size=batch, scaled_lr=cfg.lr, precision=precision)
        built.clear()
        keras.backend.clear_session()
        built["model"] = model = run_py.init_model(run_cfg)
        models.compile_model(model, run_cfg)
        trainer = loop.train_model(model, aug, mix)
        x, y = inputs(model, batch)
        compile_s, step_s = _timed(lambda: trainer.train_on_batch(x, y), steps)
        state = tuple(_specs(vs) for vs in (trainer.trainable_variables, trainer.non_trainable_variables,
                                            trainer.optimizer.variables, trainer.metrics_variables))
        flops = _flops(jax.jit(trainer.train_step), state, (x, y))
        out = {"params": model.count_params(), "compile_s": compile_s, "step_s": step_s,
               "train_ex_per_s": batch / step_s, "flops_per_step": flops}
        if aug:
            augment = jax.jit(ondevice.device_augment)
            _, aug_s = _timed(lambda: augment(x["image"], x["transform"]).block_until_ready(), steps)
            out.update(aug_s=aug_s, aug_share=aug_s / step_s)
        return out

    def tta(batch):
        predictor = ondevice.tta_model(built["model"], ondevice.REFERENCE_VIEWS)
        x = jax.device_put(rng.uniform(0, 255, (batch, *predictor.inputs[0].shape[1:])).astype("float32"))
        _, pass_s = _timed(lambda: predictor.predict_on_batch(x), steps)
        flops = _flops(jax.jit(lambda t, n, images: predictor.stateless_call(t, n, images)[0]),
                       _specs(predictor.trainable_variables), _specs(predictor.non_trainable_variables), x)
        return {"tta_ex_per_s": batch / pass_s, "tta_flops_per_example": flops / batch if flops else None}

    started = time.perf_counter()
    result = {"experiment": os.path.basename(run_dir), "precision": precision, "device": device.device_kind,
              "platform": device.platform, "backbone": size["backbone"], "dim": size["dim"],
              "frames": cfg.n_frames if defaults.get("dataset_kind") == "sequence" else 1,
              "augmentation": aug, "mixup": mix, "train": _largest_fitting(train, size["batch"]),
              "tta": _largest_fitting(tta, size["tta_batch"])}
    peak = peak_tflops(device.device_kind, precision)
    train_res = result["train"]
    if peak and train_res["flops_per_step"]:
        train_res["mfu"] = train_res["flops_per_step"] / train_res["step_s"] / (peak * 1e12)
    result["peak_tflops"] = peak
    result["est_epoch_s"] = FLAGS.train_examples / train_res["train_ex_per_s"]
    result["est_tta_val_s"] = FLAGS.val_examples / result["tta"]["tta_ex_per_s"]
    stats = device.memory_stats() or {}
    result["peak_memory_bytes"] = stats.get("peak_bytes_in_use")
    result["seconds"] = time.perf_counter() - started
    return result


def worker() -> None:
    """Measures the `--worker` pair, printing `RESULT <json>` (or `FAILED <json>`)."""
    path, precision = FLAGS.worker.rsplit(":", 1)
    try:
        line = "RESULT " + json.dumps(measure(path, precision))
    except Exception as err:  # noqa: BLE001 (one pair's failure is a row, not the end of the check)
        line = "FAILED " + json.dumps({"experiment": os.path.basename(os.path.dirname(path)),
                                       "precision": precision, "error": f"{type(err).__name__}: {err}"[:500]})
    print(line, flush=True)


def _fmt(value, spec: str, scale: float = 1.0) -> str:
    return "n/a" if value is None else format(value * scale, spec)


def row(r: dict) -> str:
    """One result as a line (or two) of text."""
    if "error" in r:
        return f"{r['experiment']:34s} {r['precision']:15s} FAILED: {r['error']}"
    t, p = r["train"], r["tta"]
    fitted = f" (batch {', '.join(map(str, t['oom_batches']))} did not fit)" if t["oom_batches"] else ""
    return (f"{r['experiment']:34s} {r['precision']:15s} {r['backbone']} {r['dim']}px x{r['frames']} "
            f"batch {t['batch']}{fitted}: train {t['train_ex_per_s']:.1f} ex/s (step {t['step_s'] * 1e3:.0f} ms, "
            f"compile {t['compile_s']:.0f} s, {_fmt(t['flops_per_step'], '.3g', 1e-12)} TFLOP/step, "
            f"MFU {_fmt(t.get('mfu'), '.1%')}), augmentation {_fmt(t.get('aug_s'), '.1f', 1e3)} ms/batch "
            f"({_fmt(t.get('aug_share'), '.1%')} of the step), TTA x10 {p['tta_ex_per_s']:.1f} ex/s "
            f"(batch {p['batch']}); epoch of {FLAGS.train_examples} ~{r['est_epoch_s'] / 60:.1f} min, "
            f"TTA of {FLAGS.val_examples} ~{r['est_tta_val_s']:.0f} s; peak memory "
            f"{_fmt(r['peak_memory_bytes'], '.1f', 2 ** -30)} GiB")


def read_plans(paths: list[str]) -> dict[str, list[dict]]:
    """tools/tpu_plan.py's JSON files: experiment id -> its per-target entries (unreadable: none)."""
    plans = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                plan = json.load(f)
        except (OSError, ValueError) as err:
            print(f"WARNING: --plan_json={path}: {err}", flush=True)
            continue
        entries = plan.get("targets") if isinstance(plan, dict) else plan
        plans[str(plan.get("experiment", "")) if isinstance(plan, dict) else path] = entries or []
    return plans


def plan_lines(experiment_id: str, plans: dict[str, list[dict]]) -> list[str]:
    """tools/tpu_plan.py's estimate for each target of this experiment, fields it lacks as n/a."""
    lines = []
    for name, entries in plans.items():
        if not name or not (name.endswith(experiment_id) or experiment_id.endswith(name)):
            continue
        for e in entries if isinstance(entries, list) else []:
            lines.append(f"    tpu_plan {e.get('target', 'n/a')}: global batch {e.get('global_batch', 'n/a')}, "
                         f"step {_fmt(e.get('est_step_s'), '.3f')} s, "
                         f"epoch of its data {_fmt(e.get('est_epoch_s'), '.0f')} s "
                         f"({_fmt(e.get('flops_per_step'), '.3g', 1e-12)} TFLOP/step, fits {e.get('fits', 'n/a')})")
    return lines


def run_workers(jobs: list[str]) -> list[dict]:
    """Measures each job in a fresh worker process (its own device memory and peak), one after the
    other, each stopped after --arch_timeout_s; none starts after --max_seconds."""
    deadline, results, plans = time.monotonic() + FLAGS.max_seconds, [], read_plans(FLAGS.plan_json)
    passed = [f"--{name}={FLAGS[name].value}" for name in PASSED if FLAGS[name].present or name == "steps"]
    passed += ["--tiny"] if FLAGS.tiny else []
    for n, job in enumerate(jobs):
        if time.monotonic() > deadline:
            print(f"--max_seconds={FLAGS.max_seconds} reached: not measured: {', '.join(jobs[n:])}", flush=True)
            break
        path, precision = job.rsplit(":", 1)
        failed = {"experiment": os.path.basename(os.path.dirname(path)), "precision": precision}
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), f"--worker={job}", *passed],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=FLAGS.arch_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            out = "FAILED " + json.dumps({**failed, "error": f"stopped after --arch_timeout_s={FLAGS.arch_timeout_s}"})
        found = re.findall(r"^(?:RESULT|FAILED) (.*)$", out, flags=re.M)
        results.append(json.loads(found[-1]) if found else
                       {**failed, "error": f"the worker exited with status {proc.returncode} (its stderr is above)"})
        print(row(results[-1]), flush=True)
        if "error" not in results[-1]:
            for text in plan_lines(results[-1]["experiment"], plans):
                print(text, flush=True)
    return results


def write_results(results: list[dict]) -> None:
    """The results as JSON to --json and $OUT/device_check.json (temporary name, then renamed)."""
    targets = [FLAGS.json] if FLAGS.json else []
    targets += [os.path.join(os.environ["OUT"], "device_check.json")] if os.environ.get("OUT") else []
    for path in targets:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"train_examples": FLAGS.train_examples, "val_examples": FLAGS.val_examples,
                       "tiny": FLAGS.tiny, "results": results}, f, indent=1)
        os.replace(tmp, path)
        print(f"wrote {path}", flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}")
    if keras.backend.backend() != "jax":
        raise cli.UsageError(f"the check runs Keras on JAX (KERAS_BACKEND=jax or --backend=jax); got "
                             f"{keras.backend.backend()}")
    if FLAGS.worker:
        worker()
        return
    unknown = [p for p in FLAGS.precisions if p not in ("float32", "mixed_bfloat16", "mixed_float16")]
    if unknown:
        raise cli.UsageError(f"--precisions: unknown {unknown}; use float32, mixed_bfloat16, mixed_float16")
    jobs = [f"{path}:{precision}" for path in experiment_paths(FLAGS.experiments) for precision in FLAGS.precisions]
    import jax  # noqa: PLC0415
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}, {jax.device_count()} device(s)); jax {jax.__version__}, "
          f"keras {keras.__version__}, numpy {np.__version__}; tensorflow "
          f"{'imported' if 'tensorflow' in sys.modules else 'not imported'}", flush=True)
    print(f"peak TFLOP/s (bf16, tf32): {next(((b, t) for n, b, t in PEAKS if n in device.device_kind), 'n/a')}",
          flush=True)
    results = run_workers(jobs)
    write_results(results)
    failed = [r for r in results if "error" in r]
    print(f"{len(results) - len(failed)} measured, {len(failed)} failed, {len(jobs) - len(results)} not reached",
          flush=True)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    cli.run_main(main)
