"""A run planned for TPU targets on a machine without a TPU: JAX's TPU compiler (libtpu, the
`tpu-aot` extra) compiles the run's own training and prediction steps for a TPU topology it does
not own, and its analyses say what the run needs and costs there.

For each target the plan builds what a run builds under the JAX backend (`runner.run_jobs`): the
experiment's model, compiled as `models.compile_model` under the precision `--mixed_precision`
means on a TPU, the trainer with the device augmentation and mixup (`loop.train_model`) and
the one-pass TTA predictor (`ondevice.tta_model`); `keras.distribution.DataParallel` over the
target's (abstract) devices gives the variables' and the batches' layouts. Keras' stateless
steps (`train_step`, `predict_step`) are jitted with those shardings, lowered from shapes alone
(no example is read, no weight downloaded) and compiled ahead of time. From the compiled
programs: HBM per chip (arguments + outputs - donated + temporaries + code), FLOPs and the
compiler's step-time estimate, and the collectives (op, what they carry, bytes).

Figures of a step are the compiler's: `optimal_seconds` assumes the chip is never idle (a lower
bound: no input stall, no host overhead, perfect overlap).
"""
from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from typing import Callable

import keras

from tpuflow import backend, cli
from tpuflow.inputs import ondevice, records, source
from tpuflow.training import config, loop, models, runner, runtime

GIB = 1 << 30


@dataclass(frozen=True)
class Target:
    """A TPU slice: libtpu's topology name and the public per-chip figures (bf16 dense peak)."""
    name: str
    topology: str
    hbm_bytes_per_chip: int
    peak_flops_per_chip: float
    hbm_bytes_per_s: float


# Per-chip figures from Google Cloud's TPU documentation (cloud.google.com/tpu/docs/<version>,
# "system architecture" tables) and Ironwood's announcement (TPU7x); a name counts TensorCores
# for v2-v4 and v5p (v3-8: 4 chips of 2 cores) and chips for v5e, v6e and TPU7x (v5e-8: 8 chips).
_V3 = dict(hbm_bytes_per_chip=32 * GIB, peak_flops_per_chip=123e12, hbm_bytes_per_s=900e9)  # tpu/docs/v3
_V4 = dict(hbm_bytes_per_chip=32 * GIB, peak_flops_per_chip=275e12, hbm_bytes_per_s=1200e9)  # tpu/docs/v4
_V5E = dict(hbm_bytes_per_chip=16 * GIB, peak_flops_per_chip=197e12, hbm_bytes_per_s=819e9)  # tpu/docs/v5e
_V5P = dict(hbm_bytes_per_chip=95 * GIB, peak_flops_per_chip=459e12, hbm_bytes_per_s=2765e9)  # tpu/docs/v5p
_V6E = dict(hbm_bytes_per_chip=32 * GIB, peak_flops_per_chip=918e12, hbm_bytes_per_s=1640e9)  # tpu/docs/v6e
# tpu/docs/tpu7x: 192 GiB HBM, 7.37 TB/s, 4614 TFLOP/s FP8 per chip; bf16 is half of that
_TPU7X = dict(hbm_bytes_per_chip=192 * GIB, peak_flops_per_chip=2307e12, hbm_bytes_per_s=7370e9)
TARGETS = {t.name: t for t in (
    Target("v3-8", "v3:2x2", **_V3), Target("v3-32", "v3:4x4", **_V3),
    Target("v4-8", "v4:2x2x1", **_V4), Target("v4-16", "v4:2x2x2", **_V4),
    Target("v5e-1", "v5e:1x1", **_V5E),  # libtpu 0.0.42 cannot describe it (host bounds 2x2x1)
    Target("v5e-4", "v5e:2x2", **_V5E), Target("v5e-8", "v5e:2x4", **_V5E),
    Target("v5e-16", "v5e:4x4", **_V5E), Target("v5e-32", "v5e:4x8", **_V5E),
    Target("v5p-8", "v5p:2x2x1", **_V5P), Target("v5p-16", "v5p:2x2x2", **_V5P),
    Target("v6e-8", "v6e:2x4", **_V6E), Target("v6e-16", "v6e:4x4", **_V6E),
    Target("tpu7x-8", "tpu7x:2x2x1", **_TPU7X),
)}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4,
                "u32": 4, "f64": 8, "s64": 8, "u64": 8}


class PlanError(ValueError):
    """A target or model the plan cannot compile, in one line."""


def parse_targets(text: str) -> list[Target]:
    """`v5e-8,v3-8` -> their Targets; an unknown name is a usage error listing the known ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise cli.UsageError(f"--target={text}: unknown target(s) {unknown or '(none given)'}; "
                             f"known: {', '.join(TARGETS)}")
    return [TARGETS[n] for n in names]


def require_compiler() -> None:
    """JAX with libtpu must be installed (the compiler); else one line naming the extra."""
    missing = backend.tpu_compiler_missing()
    if missing:
        raise PlanError(missing)


def target_devices(target: Target) -> list:
    """The target's abstract TPU devices (libtpu's description of the topology)."""
    require_compiler()
    # libtpu takes /tmp/libtpu_lockfile, for a TPU a process owns; a plan owns none (JAX runs on
    # the CPU), so plans may compile side by side (pytest-xdist workers, a plan during a run).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies  # noqa: PLC0415 (only when planning)
    try:
        return list(topologies.get_topology_desc(topology_name=target.topology, platform="tpu").devices)
    except Exception as err:  # libtpu's own errors: one line naming the target
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise PlanError(f"--target={target.name}: libtpu cannot describe topology {target.topology} "
                        f"({first.strip()[:200]})") from err


def chips_of(devices) -> int:
    """Chips of a slice: its devices grouped by (host, chip coordinates) (v3, v4, TPU7x: 2 per chip)."""
    return len({(d.process_index, tuple(d.coords)) for d in devices})


class Steps:
    """The run's model, trainer and TTA predictor, built once (the precision policy in force) and
    compiled per target and batch."""

    def __init__(self, cfg, init_model: Callable):
        keras.utils.set_random_seed(cfg.seed)
        self.cfg = cfg
        self.model = runner.build_model(cfg.replace(weights=None), init_model)  # weights: no effect on cost
        models.compile_model(self.model, cfg)
        self.mix = cfg.mixup_mode if cfg.mixup_prob else None
        self.aug = cfg.aug_prob > 0
        self.predictor = ondevice.tta_model(self.model, cfg.tta_views)
        self.input_shape = tuple(self.model.inputs[0].shape[1:])
        self.trainers: dict[int | None, keras.Model] = {}

    def trainer(self, block: int) -> keras.Model:
        """`loop.train_model` for one device's `block` of examples (mixup draws partners in it)."""
        key = block if self.mix else None  # only mixup's trainer depends on it
        if key not in self.trainers:
            self.trainers[key] = loop.train_model(self.model, self.aug, self.mix, block=block)
        return self.trainers[key]

    def train_batch(self, batch: int):
        """(x, y) shapes and dtypes of a training batch as the pipeline and mixup feed it."""
        image = ((batch, *self.input_shape), "float32")
        specs = {"image": image}
        if self.aug:
            specs["transform"] = ((batch,), "int32")
        if self.mix:
            specs.update(partner=((batch,), "int32"), lam=((batch,), "float32"))
            if self.mix == "cutmix":
                specs["box"] = ((batch, 4), "float32")
        x = specs if len(specs) > 1 else image
        y = ((batch, self.cfg.n_classes) if self.cfg.task == "classification" else (batch,), "float32")
        return x, y


def _abstract(distribution, tree, variables=False):
    """ShapeDtypeStructs laid out as `distribution` lays out data (batch split) or variables."""
    import jax  # noqa: PLC0415

    def one(item):
        if variables:
            return jax.ShapeDtypeStruct(item.shape, item.dtype,
                                        sharding=distribution.get_variable_layout(item).backend_layout)
        shape, dtype = item
        return jax.ShapeDtypeStruct(shape, dtype, sharding=distribution.get_data_layout(shape).backend_layout)
    if variables:
        return [one(v) for v in tree]
    return jax.tree_util.tree_map(one, tree, is_leaf=lambda t: isinstance(t, tuple) and isinstance(t[1], str))


def _compile(step, state, data, what: str, target: Target):
    """AOT-compiles `step(state, data)`; a failure names the layer (op metadata) or op it hit.
    Returns None when the program does not fit the target's memory."""
    import jax  # noqa: PLC0415
    jitted = jax.jit(step, donate_argnums=0)
    try:
        return jitted.lower(state, data).compile()
    except Exception as err:  # XLA's errors: out of memory (None) or one line naming the layer and op
        text = str(err)
        if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "exceeds" in text and "memory" in text:
            return None
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)[:300]
        raise PlanError(f"--target={target.name}: the {what} step does not compile for {target.topology}: "
                        f"{_failing_layer(jitted, state, data, text)}{first}") from err


def _failing_layer(jitted, state, data, text: str) -> str:
    """'<layer path>: ' of the op an XLA error names: by its op_name metadata (an HLO the TPU
    compiler cannot lower, e.g. `jit(train_step)/jvp(functional)/my_layer/dot_general`), or for
    a primitive without a TPU lowering, by the name stack of its first equation in the traced
    program; the transformations' wrappers dropped (`functional/my_layer/dot_general`)."""
    found = re.search(r'op_name="([^"]+)"', text)
    name = re.sub(r"^jit\([^)]*\)/", "", found.group(1)) if found else None
    primitive = None if found else re.search(r"primitive '([^']+)'", text)

    def find(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == primitive.group(1):
                return str(eqn.source_info.name_stack)
            for sub in (p for v in eqn.params.values() for p in (v if isinstance(v, (list, tuple)) else [v])):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    name = find(inner)
                    if name is not None:
                        return name
        return None
    if primitive:
        try:
            name = find(jitted.trace(state, data).jaxpr.jaxpr)
        except Exception:  # naming the layer is a courtesy: the error itself is what matters
            name = None
    while name and re.search(r"\b\w+\(([^()]*)\)", name):  # jvp(functional)/layer -> functional/layer
        name = re.sub(r"\b\w+\(([^()]*)\)", r"\1", name)
    return f"{name}: " if name else ""


def collectives(hlo: str) -> list[dict]:
    """The collectives of a compiled program, by op (all-reduce, all-gather, ...) and what they
    carry (from each op's metadata): `gradients` (reductions of the backward pass's weight
    gradients), `batch statistics` (means and variances over the global batch: BatchNormalization
    under JAX's SPMD sharding), `loss/metrics`, `other`; with counts and bytes per device. A
    data-parallel step should all-reduce its gradients once and move no batch (no all-gather,
    all-to-all, collective-permute)."""
    found: dict[tuple[str, str], dict] = {}
    pattern = re.compile(r"= (.+?) (%s)(?:-start)?\(" % "|".join(COLLECTIVES))
    for line in hlo.splitlines():
        match = pattern.search(line)
        if not match:
            continue
        op = match.group(2)
        n_bytes = sum(_DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
                      for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", match.group(1)))
        source = re.search(r'op_name="([^"]*)"', line)  # the JAX operation it came from
        source = source.group(1) if source else ""
        if "compile_loss" in source or "metrics" in source:
            carries = "loss/metrics"
        elif op == "all-reduce" and "transpose(" in source and not re.search(r"reduce_(sum|mean|max)$", source):
            carries = "gradients"
        elif re.search(r"(_var|reduce_sum|reduce_mean)$", source):
            carries = "batch statistics"
        else:
            carries = "other"
        entry = found.setdefault((op, carries), {"op": op, "carries": carries, "count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += n_bytes
    return sorted(found.values(), key=lambda e: (-e["bytes"], e["op"]))


def _program(compiled, target: Target, devices_per_chip: int) -> dict:
    """HBM per chip, FLOPs per device and the time estimate of one compiled step.

    The step time is the compiler's `optimal_seconds` where it gives one. For some programs (seen
    with an LSTM's loop) it reports a negative number, i.e. none; then the roofline stands in: the
    longer of the step's FLOPs at the chip's peak and its bytes at the chip's HBM bandwidth (the
    chip's cores share both). Both are lower bounds: no input stall, no host overhead."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    per_device = (memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
                  + memory.temp_size_in_bytes + memory.generated_code_size_in_bytes)
    flops, moved = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    roofline = max(flops / (target.peak_flops_per_chip / devices_per_chip),
                   moved / (target.hbm_bytes_per_s / devices_per_chip))
    compiler = float(cost.get("optimal_seconds", -1.0))
    return {"hbm_needed_bytes": int(per_device * devices_per_chip),
            "temp_bytes_per_device": int(memory.temp_size_in_bytes),
            "flops_per_device": flops, "bytes_accessed_per_device": moved,
            "est_step_s": compiler if compiler > 0 else roofline,
            "est_source": "compiler" if compiler > 0 else "roofline", "roofline_step_s": roofline,
            "hlo": compiled.as_text()}


def tta_batch(global_batch: int, replicas: int, n_views: int) -> int:
    """Examples per prediction batch, as the runner sizes it: about a training batch of views."""
    return max(replicas, global_batch // n_views // replicas * replicas)


class TargetPlan:
    """Compiles the run's steps for one target at a given global batch."""

    def __init__(self, steps: Steps, target: Target, devices: list, log: Callable[[str], None] = print):
        self.steps, self.target, self.devices, self.log = steps, target, devices, log
        self.replicas = len(self.devices)
        self.chips = chips_of(self.devices)
        self.distribution = keras.distribution.DataParallel(devices=self.devices, auto_shard_dataset=False)

    def compile(self, global_batch: int) -> dict | None:
        """Train and TTA-predict programs at `global_batch`: their figures, or None if either
        does not fit the chips' HBM."""
        steps, dist, per_chip = self.steps, self.distribution, self.replicas // self.chips
        x, y = steps.train_batch(global_batch)
        if _bytes(x) // self.replicas >= self.target.hbm_bytes_per_chip // per_chip:  # the batch alone: skip
            return None  # compiling (XLA tries hard to fit a program before it gives up)
        trainer = steps.trainer(global_batch // self.replicas)
        data = (_abstract(dist, x), _abstract(dist, y))
        trainer._symbolic_build(data_batch=(_keras_tensors(x), _keras_tensors(y)))
        trainer.optimizer.build(trainer.trainable_variables)
        state = tuple(_abstract(dist, vs, variables=True) for vs in (
            trainer.trainable_variables, trainer.non_trainable_variables, trainer.optimizer.variables,
            trainer.metrics_variables))
        train = _compile(trainer.train_step, state, data, "training", self.target)
        if train is None:
            return None
        n_views = len(steps.cfg.tta_views)
        batch = tta_batch(global_batch, self.replicas, n_views)
        predictor = steps.predictor
        p_state = tuple(_abstract(dist, vs, variables=True) for vs in (
            predictor.trainable_variables, predictor.non_trainable_variables))
        p_data = (_abstract(dist, ((batch, *steps.input_shape), "float32")),)
        predict = _compile(predictor.predict_step, p_state, p_data, "TTA prediction", self.target)
        if predict is None:
            return None
        train, predict = _program(train, self.target, per_chip), _program(predict, self.target, per_chip)
        need = max(train["hbm_needed_bytes"], predict["hbm_needed_bytes"])
        if need > self.target.hbm_bytes_per_chip:
            return None
        return {"train": train, "predict": {**predict, "batch": batch, "views": n_views}, "hbm_needed_bytes": need}

    def largest_fitting(self, global_batch: int) -> tuple[int, dict | None]:
        """The largest global batch below `global_batch` (which does not fit), a multiple of the
        devices, whose steps fit, found by compiling, to within 1/32: (0, None) if one example per
        device does not. From 1 per device the batch grows eightfold while it fits; then each
        probe aims at 31/32 of the chip's HBM from the last two fits (memory grows about linearly
        with the batch; aiming at all of it overshoots, the runtime keeps some), or 1/32 above
        the last fit where that is already the aim, or bisects once an aim failed. A real model's
        compile takes minutes: near-linear memory is settled two probes after the growth."""
        r, hbm = self.replicas, self.target.hbm_bytes_per_chip
        low, high, best, aim = 0, global_batch // r, None, None  # per device: low fits, high does not
        growing = True
        while high - low > max(1, low // 32):
            if best is None:
                guess = 1
            elif growing:
                guess = low * 8
            else:
                guess = aim if aim is not None and low < aim < high else (low + high) // 2
                aim = None
            guess = min(max(guess, low + 1), high - 1)
            plan = self.compile(guess * r)
            self.log(f"{self.target.name}: global batch {guess * r} " + ("does not fit" if plan is None else
                     f"fits ({plan['hbm_needed_bytes'] / GIB:.2f} GiB per chip)"))
            if plan is None:
                high, growing = guess, False
                continue
            if best is not None and plan["hbm_needed_bytes"] > best["hbm_needed_bytes"]:
                grows = (plan["hbm_needed_bytes"] - best["hbm_needed_bytes"]) / (guess - low)
                aim = guess + max(int((hbm * 31 // 32 - plan["hbm_needed_bytes"]) // grows), guess // 32, 1)
            low, best = guess, plan
        return low * r, best


def _keras_tensors(tree):
    """(shape, dtype) leaves -> KerasTensors (what `_symbolic_build` builds the metrics from)."""
    if isinstance(tree, dict):
        return {k: _keras_tensors(v) for k, v in tree.items()}
    return keras.KerasTensor(*tree)


def resolve_data(cfg) -> tuple:
    """(configuration resolved for the dataset, its manifest): frames and classes, as the runner's
    first `config.resolve`; the experiment's dataset kind checked against the data."""
    inputs = source.open_source(cfg)  # manifest files only: nothing decoded
    runner.check_dataset_kind(cfg, inputs)
    manifest = inputs.manifest
    n_labels = (len(runner.load_unique_labels(cfg.data_dir, required=True))
                if cfg.task == "classification" else None)
    return config.resolve(cfg, manifest, n_labels), manifest


def _count(manifest: dict, folds) -> int:
    try:
        return records.example_count(manifest, folds)
    except KeyError:  # a dataset without a test split
        return 0


def plan(cfg, init_model: Callable, targets: list[Target], host_rates: dict | None = None,
         log: Callable[[str], None] = functools.partial(print, flush=True)) -> list[dict]:
    """One entry per target (see the module docstring; `error` set where the target could not be
    planned); `host_rates`: `{"rates": {example spec: examples/s per host core}}` from
    `benchmarks/bench_scale.py --rates_json`."""
    cfg, manifest = resolve_data(cfg)
    precision = runtime.precision_name(cfg.mixed_precision, "tpu")
    keras.mixed_precision.set_global_policy(precision)
    steps, out = None, []
    for target in targets:
        entry = {"target": target.name, "topology": target.topology, "precision": precision,
                 "hbm_bytes_per_chip": target.hbm_bytes_per_chip}
        try:
            devices = target_devices(target)
            placement = runtime.Placement("jax", "tpu", len(devices), "DataParallel",
                                          processes=len({d.process_index for d in devices}))
            try:
                tcfg = config.resolve(cfg, placement=placement)
            except ValueError as err:
                raise PlanError(f"--target={target.name}: {err}") from err
            steps = steps or Steps(tcfg, init_model)
            placed = TargetPlan(steps, target, devices, log)
            entry.update(_plan_target(tcfg, placed, manifest, host_rates, log))
        except PlanError as err:
            entry["error"] = str(err)
            log(str(err))
        out.append(entry)
    return out


def _plan_target(cfg, placed: TargetPlan, manifest: dict, host_rates: dict | None, log) -> dict:
    target, gb = placed.target, cfg.global_batch_size
    log(f"{target.name} ({target.topology}: {placed.chips} chips, {placed.replicas} devices): compiling the "
        f"training and TTA steps at global batch {gb} ({gb // placed.replicas} per device) ...")
    found = placed.compile(gb)
    entry = {"chips": placed.chips, "devices": placed.replicas,
             "global_batch": gb, "batch_per_device": gb // placed.replicas, "fits": found is not None,
             "largest_fitting_global_batch": gb if found is not None else None}
    if found is None:
        largest, found = placed.largest_fitting(gb)
        entry["largest_fitting_global_batch"] = largest
        log(f"{target.name}: global batch {gb} does not fit {target.hbm_bytes_per_chip / GIB:.0f} GiB of HBM per "
            f"chip; the largest that fits is {largest}" + (" (none: not even one example per device)" if not largest else ""))
        if found is None:
            return entry
    train, predict = found["train"], found["predict"]
    batch = entry["largest_fitting_global_batch"]  # the figures below are at this batch
    per_chip = placed.replicas // placed.chips
    flops = train["flops_per_device"] * placed.replicas
    step_s = train["est_step_s"]
    folds = list(runner.folds(cfg))
    n_train = {k: _count(manifest, [j for j in range(int(manifest["n_folds"])) if j != k]) for k in folds}
    epoch_s = {k: (cfg.steps_per_epoch or max(1, n // batch)) * step_s for k, n in n_train.items()}
    def predict_s(n: int) -> float:  # noqa: E306
        return math.ceil(n / predict["batch"]) * predict["est_step_s"] if n else 0.0
    jobs = set(cfg.jobs)
    job_s = sum(("train" in jobs) * cfg.n_epochs * epoch_s[k] + ("val" in jobs) * predict_s(_count(manifest, [k]))
                + ("test" in jobs) * predict_s(_count(manifest, None)) for k in folds)
    found_collectives = collectives(train["hlo"])
    needed = batch / step_s if step_s else None
    spec = manifest["spec"]
    rate = ((host_rates or {}).get("rates") or {}).get(spec)
    entry.update({
        "figures_at_global_batch": batch,
        "hbm_needed_bytes": found["hbm_needed_bytes"],
        "hbm_needed_train_bytes": train["hbm_needed_bytes"], "hbm_needed_predict_bytes": predict["hbm_needed_bytes"],
        "temp_bytes_per_device": train["temp_bytes_per_device"],
        "flops_per_step": flops, "flops_per_example": flops / batch,
        "est_step_s": step_s, "est_step_source": train["est_source"], "roofline_step_s": train["roofline_step_s"],
        "bytes_accessed_per_step": train["bytes_accessed_per_device"] * placed.replicas,
        "peak_step_s": train["flops_per_device"] / (target.peak_flops_per_chip / per_chip),
        "train_examples": n_train[folds[0]],
        "est_epoch_s": epoch_s[folds[0]], "est_job_s": job_s,
        "tta_batch": predict["batch"], "tta_views": predict["views"], "est_predict_step_s": predict["est_step_s"],
        "est_predict_step_source": predict["est_source"],
        "collectives": found_collectives,
        "gradient_all_reduces": sum(c["count"] for c in found_collectives if c["carries"] == "gradients"),
        "batch_moving_collectives": sum(c["count"] for c in found_collectives if c["op"] != "all-reduce"),
        "input_ex_per_s_needed": needed, "input_spec": spec,
        "host_ex_per_s_per_core": rate,
        "host_cores_needed": math.ceil(needed / rate) if needed and rate else None,
    })
    return entry


def table(entries: list[dict]) -> str:
    """The plan as a fixed-width table (one row per target)."""
    head = ("target", "chips", "batch", "HBM/chip GiB", "fits", "largest", "TFLOP/step", "step ms", "epoch min",
            "job h", "ex/s needed", "host cores", "grad AR", "batch moves")
    rows = [head]
    for e in entries:
        if "error" in e or "hbm_needed_bytes" not in e:
            rows.append((e["target"], str(e.get("chips", "")), str(e.get("global_batch", "")), "", str(e.get("fits", "")),
                         str(e.get("largest_fitting_global_batch", "")), "error (above)" if "error" in e else "none fits",
                         *[""] * 7))
            continue
        rows.append((e["target"], str(e["chips"]), str(e["global_batch"]),
                     f"{e['hbm_needed_bytes'] / GIB:.2f}/{e['hbm_bytes_per_chip'] / GIB:.0f}", "yes" if e["fits"] else "NO",
                     str(e["largest_fitting_global_batch"]), f"{e['flops_per_step'] / 1e12:.3g}",
                     f"{e['est_step_s'] * 1e3:.3g}" + ("r" if e["est_step_source"] == "roofline" else ""),
                     f"{e['est_epoch_s'] / 60:.3g}", f"{e['est_job_s'] / 3600:.3g}",
                     f"{e['input_ex_per_s_needed']:.0f}" if e["input_ex_per_s_needed"] else "?",
                     str(e["host_cores_needed"] or "?"), str(e["gradient_all_reduces"]),
                     str(e["batch_moving_collectives"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _bytes(tree) -> int:
    """Bytes of a (shape, dtype) tree."""
    if isinstance(tree, dict):
        return sum(_bytes(v) for v in tree.values())
    shape, dtype = tree
    return math.prod(shape) * _DTYPE_BYTES.get({"float32": "f32", "int32": "s32"}[dtype], 4)
