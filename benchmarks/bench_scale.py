"""Usage: python benchmarks/bench_scale.py [--scales=0.125,1] [--quick] [--work_dir=/work/scale_data]
    [--kinds=single,stacked:s5,sequence:n24:s1] [--cores=1] [--batch_size=8] [--input_batches=4]
    [--repeats=3] [--min_seconds=3] [--cache_cap_mib=256] [--plan_json=PATH] [--rates_json=PATH]
    [--results_json=PATH] [--nokeep_data]

The host side at the competition's scale: synthetic storms of its size (scale 1: 450 storms with
training frames and 180 test-only ones, 20-400 frames each: ~70k training + ~44k test frames of
366 px; JPEG quality 75 without pixel noise, ~4.4 KB a frame, near the real frames' bytes), then
each stage as a user runs it, each in its own process, timed, with the peak resident memory of that
process and its children (sampled from here, every 0.1 s):

- split: `split.create_cv_split` + `write_cv_split` (what `data_prep/create_cv_split.py` runs);
- store build: `store.build_store` with every core (`create_tfrecords.py --specs=frames`);
- per kind, in a process pinned to `--cores` cores (examples/s per core = rate / cores): the store
  read into memory (`store.load_store`), the decoded-frame cache decision `--frame_cache=auto`
  makes on this machine (`frame_cache.use_cache`, with the memory available then), and the assembled
  examples' training input rate (`Assembly.train_dataset`: assemble, parse, resize to `--dim`, draw the
  augmentation, batch) decoding every slot as read (what this host does when `auto` declines),
  then with the cache built (`--frame_cache=memory`; build time apart). The cache is bounded to
  `--cache_cap_mib`: beyond it, it holds the first storms whose frames fit (the full size needs
  ~15 GB; a slot is a copy, whose cost does not depend on the cache's size), and the table says so.
  A TPU VM host has the memory for the whole cache: the cached rate is the one written to
  `--rates_json` (`{"cores", "host", "rates": {spec: examples/s per core}, "decoded_rates": ...}`,
  read by `tools/tpu_plan.py --host_rates`).

With two scales, a second table gives each stage's time and memory growth ratios against the data's
(frames) ratio: a stage that grows faster than its data is a defect. `--plan_json` (what
`tools/tpu_plan.py --json` writes: per target `target`, `global_batch`, `est_step_s`,
`input_ex_per_s_needed` and the experiment's spec: `input_spec`) adds, per target, the input rate it needs
beside one core's here: the host cores each TPU needs. The synthetic frames stay in `--work_dir` for
the next run (`--nokeep_data` removes them); stores are always removed. Timings depend on the
machine's load (printed).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("scales", ["0.125", "1"], "Data sizes as fractions of the competition's storm counts")
flags.DEFINE_bool("quick", False, "Tiny data (8 + 2 storms of 20-40 frames of 96 px) to try the script")
flags.DEFINE_string("work_dir", "/work/scale_data", "Where the data is written (GBs at scale 1)")
flags.DEFINE_list("kinds", ["single", "stacked:s5", "sequence:n24:s1"], "Specs whose assembled input rate is measured")
flags.DEFINE_integer("cores", 1, "Cores the assembly processes are pinned to (rates are per core)")
flags.DEFINE_integer("dim", 366, "Model input size (examples are resized to it)")
flags.DEFINE_integer("batch_size", 8, "Batch size of the timed pipelines")
flags.DEFINE_integer("input_batches", 4, "Timed batches per pipeline (after one warm-up batch)")
flags.DEFINE_integer("repeats", 3, "Timings per pipeline (the best is printed: the least disturbed by others' work)")
flags.DEFINE_float("min_seconds", 3.0, "Each timing draws batches for at least about this long")
flags.DEFINE_float("aug_prob", 0.5, "Training augmentation probability (its draw is part of the input)")
flags.DEFINE_integer("cache_cap_mib", 256, "Largest decoded-frame cache built (it costs a decode per frame)")
flags.DEFINE_string("plan_json", None, "tools/tpu_plan.py --json output: cores each target needs")
flags.DEFINE_string("rates_json", None, "Write the per-core assembly rates here (tools/tpu_plan.py --host_rates)")
flags.DEFINE_bool("keep_data", True, "Keep the synthetic frames for the next run (stores are always removed)")
flags.DEFINE_string("results_json", None, "Keep each scale's results here; a scale measured with the same "
                    "settings is read back instead of measured again (a long run in parts)")
flags.DEFINE_string("child", None, "Internal: run one stage (json) and print its result as json")

FULL = {"n_storms": 450, "n_test_only_storms": 180, "min_frames": 20, "max_frames": 400, "size": 366}
QUICK = {"n_storms": 8, "n_test_only_storms": 2, "min_frames": 20, "max_frames": 40, "size": 96}
COMPETITION = (70_257, 44_377)  # the competition's training and test frames
RESULT = "RESULT "
# Stages per spec are named "assembly <spec>"; results files written before the rename say "view <spec>".
ASSEMBLY, OLD_STAGE = "assembly ", "view "


# ---------------------------------------------------------------------------------------------
# Measuring a child process: wall time and the peak RSS of its process tree


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and its descendants (Linux /proc)."""
    parents, rss = {}, {}
    page = os.sysconf("SC_PAGE_SIZE")
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            parents[int(name)], rss[int(name)] = int(fields[1]), int(fields[21]) * page
        except (OSError, IndexError, ValueError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        frontier = [p for p, parent in parents.items() if parent in frontier and p not in tree]
        tree.update(frontier)
    return sum(rss.get(p, 0) for p in tree)


def run_stage(job: dict) -> dict:
    """Runs one stage in a child process; its result, `wall_s` and `tree_peak` (bytes) added."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, f"--child={json.dumps(job)}"], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    peak, done = [0], threading.Event()

    def sample():
        while not done.wait(0.1):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if not line.startswith(RESULT):
            print(f"    | {line.rstrip()}", flush=True)
    rc = proc.wait()
    done.set()
    sampler.join()
    results = [line for line in lines if line.startswith(RESULT)]
    if rc or not results:
        raise RuntimeError(f"stage {job['stage']} failed (exit {rc})")
    return {**json.loads(results[-1][len(RESULT):]), "wall_s": time.perf_counter() - started, "tree_peak": peak[0]}


# ---------------------------------------------------------------------------------------------
# Stages (in the child)


def _child(job: dict) -> dict:
    if job["stage"] == "assembly":
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: job["cores"]])  # before TF makes its pools
    from tpuflow.training.throughput import PeakMemory, rss_bytes

    out = {"base_rss": rss_bytes()}
    raw, stage = job["raw"], job["stage"]
    started = time.perf_counter()
    if stage == "synthetic":
        from tpuflow.prep import synthetic

        summary = synthetic.make_synthetic(raw, synthetic.SyntheticConfig(**job["config"]))
        out.update(n_train=summary["n_train_frames"], n_test=summary["n_test_frames"])
    elif stage == "split":
        from tpuflow.prep import split

        train, test, labels = split.create_cv_split(raw, n_folds=5)
        split.write_cv_split(raw, train, test, labels)
        out.update(n_train=len(train), n_test=len(test))
    elif stage == "store":
        from tpuflow.prep import store

        shutil.rmtree(job["store_root"], ignore_errors=True)
        manifest = store.build_store(raw, job["store_root"], workers=os.cpu_count(), log=lambda _: None)
        out.update(source_bytes=manifest["source_bytes"], workers=os.cpu_count())
    else:
        out.update(_assembly_stage(job, PeakMemory))
    out["s"] = time.perf_counter() - started
    return out


def _assembly_stage(job: dict, PeakMemory) -> dict:
    """Store load, the `auto` cache decision, and the assembled input rate (decoded and/or cached)."""
    import numpy as np

    from tpuflow.inputs import assembly, frame_cache
    from tpuflow.prep import frames, shard_names, store
    from tpuflow.training import throughput

    spec = frames.DatasetSpec.parse(job["kind"])
    out = {"cores": len(os.sched_getaffinity(0))}
    store_dir = os.path.join(job["store_root"], shard_names.STORE_DIR)
    started = time.perf_counter()
    with PeakMemory() as memory:
        loaded = store.load_store(store_dir)
    times = [time.perf_counter() - started]
    for _ in range(job["repeats"] - 1):  # the best of --repeats, as for the rates: a short stage, easily disturbed
        started = time.perf_counter()
        store.load_store(store_dir)
        times.append(time.perf_counter() - started)
    out.update(load_s=min(times), load_growth=memory.peak)
    decisions = []
    assembled = assembly.Assembly(loaded, spec, frame_cache="off")
    longest = int((assembled.stops - assembled.starts).max())
    sums = spec.kind == "mean"
    shape = frame_cache.use_cache("auto", loaded.table, sums, longest, f"--assemble={spec}", log=decisions.append)
    out["decision"] = (f"builds the cache: {frame_cache.describe(shape, sums)}" if shape else
                       decisions[0].split("(--frame_cache=auto: ", 1)[1].split(";")[0])
    parse = throughput.kind_parser(spec, job["dim"])
    n_folds = loaded.manifest["n_folds"]

    def rate(v) -> tuple[float, int, float, float]:
        with PeakMemory() as peak:
            started = time.perf_counter()
            cache = v.cache  # built here when the assembly uses one: timed apart from the steady rate
            build_s = time.perf_counter() - started
            ds = lambda: v.train_dataset(range(1, n_folds), parse, job["batch_size"], seed=0, fold=0,  # noqa: E731
                                         aug_prob=job["aug_prob"])
            probe = throughput.input_rate(ds(), 2, job["batch_size"])  # sizes the timed runs to --min_seconds
            batches = max(job["input_batches"], math.ceil(job["min_seconds"] * probe / job["batch_size"]))
            rates = [throughput.input_rate(ds(), batches, job["batch_size"]) for _ in range(job["repeats"])]
        return float(np.max(rates)), peak.peak, build_s, cache.nbytes if cache else 0

    out["decoded"], out["decoded_growth"], _, _ = rate(assembled)  # what this host reads when auto declines
    del assembled
    # The cache (what auto builds where it fits, as on a TPU VM host), over the first storms whose
    # frames fit the cap when the whole store's do not: a slot is a copy, whatever the cache's size.
    t = loaded.table
    fits = job["cache_cap_mib"] * 2**20 // (int(t["height"].iloc[0]) * int(t["width"].iloc[0]) * (1 + sums))
    k = len(t)
    if k > fits:
        k = max((int(rows[-1]) + 1 for rows in t.groupby("storm_id", sort=False).indices.values() if rows[-1] < fits),
                default=0)
        loaded = store.FrameStore(loaded.dir, loaded.manifest, t.iloc[:k].reset_index(drop=True), loaded.frames[:k])
    out["cached_rows"] = k
    out["cached"], out["cached_growth"], out["cached_build_s"], out["cached_cache_bytes"] = rate(
        assembly.Assembly(loaded, spec, frame_cache="memory"))
    return out


# ---------------------------------------------------------------------------------------------
# The parent: stages per scale, tables


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def run_scale(scale: float) -> dict:
    base = QUICK if FLAGS.quick else FULL
    config = {**base, "n_storms": max(5, round(base["n_storms"] * scale)),
              "n_test_only_storms": round(base["n_test_only_storms"] * scale), "seed": 0,
              "pixel_noise": 0.0, "jpeg_quality": 75}
    tag = (f"s{config['n_storms']}-t{config['n_test_only_storms']}-f{config['min_frames']}-{config['max_frames']}"
           f"-px{config['size']}")
    raw = os.path.join(FLAGS.work_dir, "raw-" + tag)
    store_root = os.path.join(FLAGS.work_dir, "store-" + tag)
    job = {"raw": raw, "store_root": store_root, "config": config, "dim": FLAGS.dim, "batch_size": FLAGS.batch_size,
           "input_batches": FLAGS.input_batches, "repeats": FLAGS.repeats, "min_seconds": FLAGS.min_seconds,
           "aug_prob": FLAGS.aug_prob,
           "cores": FLAGS.cores, "cache_cap_mib": FLAGS.cache_cap_mib}
    print(f"scale {scale}: {raw} ({'reused' if os.path.isdir(raw) else 'to generate'})", flush=True)
    stages = {}
    if not os.path.isdir(raw):
        stages["synthetic"] = run_stage({**job, "stage": "synthetic"})
    stages["split"] = run_stage({**job, "stage": "split"})
    try:
        stages["store"] = run_stage({**job, "stage": "store"})
        for kind in FLAGS.kinds:
            stages[ASSEMBLY + kind] = run_stage({**job, "stage": "assembly", "kind": kind})
    finally:
        shutil.rmtree(store_root, ignore_errors=True)
        if not FLAGS.keep_data:
            shutil.rmtree(raw, ignore_errors=True)
    frames_n = stages["split"]["n_train"] + stages["split"]["n_test"]
    return {"scale": scale, "frames": frames_n, "n_train": stages["split"]["n_train"],
            "n_test": stages["split"]["n_test"], "source_bytes": stages["store"]["source_bytes"], "stages": stages}


def rows_of(result: dict) -> list[tuple[str, str, str, str, str]]:
    """(stage, time s, peak MiB of the process tree, growth MiB above the child's imports, rate)."""
    rows = []
    for name, s in result["stages"].items():
        growth = s["tree_peak"] - s["base_rss"]
        if not name.startswith(ASSEMBLY):
            rows.append((name, f"{s['s']:.1f}", _mib(s["tree_peak"]), _mib(growth),
                         f"{result['frames'] / s['s']:,.0f} frames/s"))
            continue
        per_core = lambda r: r / s["cores"]  # noqa: E731
        rows.append((f"{name}: store load", f"{s['load_s']:.1f}", "", _mib(s["load_growth"]), ""))
        rows.append((f"{name}: --frame_cache=auto", "", "", "", s["decision"]))
        rows.append((f"{name}: decoded as read", "", "", _mib(s["decoded_growth"]),
                     f"{per_core(s['decoded']):.1f} ex/s/core"))
        bounded = (f" (bounded: {s['cached_rows']} of {result['frames']} frames)"
                   if s["cached_rows"] < result["frames"] else "")
        rows.append((f"{name}: cache build + cached{bounded}", f"{s['cached_build_s']:.1f}", "",
                     _mib(s["cached_growth"]), f"{per_core(s['cached']):.1f} ex/s/core"))
        rows.append((f"{name}: whole stage", f"{s['s']:.1f}", _mib(s["tree_peak"]), _mib(growth), ""))
    return rows


def print_table(header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    print(flush=True)


def rates_of(result: dict) -> dict:
    return {name[len(ASSEMBLY):]: s["cached"] / s["cores"] for name, s in result["stages"].items()
            if name.startswith(ASSEMBLY)}


def print_scaling(small: dict, big: dict) -> None:
    """Time and memory growth ratios of each stage, big over small, against the data's ratio."""
    data = big["frames"] / small["frames"]
    rows = []
    for name, b in big["stages"].items():
        a = small["stages"].get(name)
        if a is None:
            continue
        pairs = ([("", "s", "tree_peak")] if not name.startswith(ASSEMBLY) else
                 [(": store load", "load_s", "load_growth")])
        for suffix, t, m in pairs:
            grow_a = a[m] - (a["base_rss"] if m == "tree_peak" else 0)
            grow_b = b[m] - (b["base_rss"] if m == "tree_peak" else 0)
            time_ratio, mem_ratio = b[t] / a[t], grow_b / max(grow_a, 1)
            flag = "GROWS FASTER" if max(time_ratio, mem_ratio) > 1.5 * data else "ok"
            rows.append((name + suffix, f"{time_ratio:.2f}", f"{mem_ratio:.2f}", flag))
        if name.startswith(ASSEMBLY):
            for key in ("decoded", "cached"):
                if key in a and key in b:
                    slower = a[key] / b[key]
                    rows.append((f"{name}: {key} rate", f"{slower:.2f} (1/rate)", "",
                                 "ok" if slower < 1.5 else "SLOWER"))
    print(f"scaling: scale {big['scale']} over {small['scale']}: data {big['frames']}/{small['frames']} frames "
          f"= {data:.2f}x")
    print_table(("stage", "time ratio", "memory growth ratio", "vs data"), rows)


def print_plan(plan_path: str, rates: dict) -> None:
    """Per target of tools/tpu_plan.py --json: the input rate it needs against one core's here."""
    with open(plan_path) as f:
        plans = json.load(f)
    rows = []
    for p in plans if isinstance(plans, list) else plans.get("targets", []):
        # "view": plans written before the rename
        spec = str(next((p[k] for k in ("input_spec", "view", "spec", "dataset_kind", "kind") if p.get(k)), ""))
        kind = spec.split(":")[0]
        measured = spec if spec in rates else next((k for k in rates if k.split(":")[0] == kind), None)
        need = p.get("input_ex_per_s_needed")
        cores = ("(no plan: " + str(p.get("error", "no input rate")).splitlines()[0][:60] + ")" if not need else
                 str(math.ceil(float(need) / rates[measured])) if measured else "(kind not measured)")
        rows.append((p["target"], spec or "?", str(p.get("global_batch", "")), f"{float(p.get('est_step_s') or 0):.3f}",
                     f"{float(need or 0):,.0f}", f"{rates[measured]:.1f} ({measured})" if measured else "-", cores))
    print(f"host cores each TPU target needs ({plan_path}; cached assembly rates, per core, on this host):")
    print_table(("target", "spec", "global batch", "est step s", "needs ex/s", "one core gives ex/s", "cores"), rows)


def renamed(result: dict) -> dict:
    """A result as read back: the assembly stages of files written before the rename under their new names."""
    stages = result["stages"]
    return {**result, "stages": {ASSEMBLY + n[len(OLD_STAGE):] if n.startswith(OLD_STAGE) else n: s
                                 for n, s in stages.items()}}


def write_json(path: str, payload) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(path + ".tmp", path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.child:
        print(RESULT + json.dumps(_child(json.loads(FLAGS.child))), flush=True)
        return
    from tpuflow.prep import frames  # no TensorFlow: the stages import what they need

    for kind in FLAGS.kinds:
        try:
            frames.DatasetSpec.parse(kind)
        except ValueError as err:
            raise app.UsageError(f"--kinds: {kind!r}: {err}") from None
    try:
        scales = sorted(float(s) for s in FLAGS.scales)
    except ValueError:
        raise app.UsageError(f"--scales={','.join(FLAGS.scales)}: expected fractions such as 0.125,1") from None
    if not scales or min(scales) <= 0:
        raise app.UsageError(f"--scales={','.join(FLAGS.scales)}: expected fractions above 0")
    if FLAGS.plan_json and not os.path.isfile(FLAGS.plan_json):
        raise app.UsageError(f"--plan_json={FLAGS.plan_json}: no such file")
    if FLAGS.cores < 1 or FLAGS.cores > len(os.sched_getaffinity(0)):
        raise app.UsageError(f"--cores={FLAGS.cores}: this host has {len(os.sched_getaffinity(0))}")
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    host = f"{os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    print(f"host: {host}, load average {os.getloadavg()[0]:.2f} at start (others' work slows every figure)")
    settings = {name: FLAGS[name].value for name in ("quick", "kinds", "cores", "dim", "batch_size", "input_batches",
                                                      "repeats", "aug_prob", "cache_cap_mib")}
    saved = {}
    if FLAGS.results_json and os.path.exists(FLAGS.results_json):
        with open(FLAGS.results_json) as f:
            saved = json.load(f)
    results = []
    for scale in scales:
        if saved.get(str(scale), {}).get("settings") == settings:
            r = renamed(saved[str(scale)]["result"])
            print(f"scale {scale}: measured before, read from {FLAGS.results_json}")
        else:
            r = run_scale(scale)
            if FLAGS.results_json:
                saved[str(scale)] = {"settings": settings, "result": r}
                write_json(FLAGS.results_json, saved)
        results.append(r)
        share = (r["n_train"] + r["n_test"]) / sum(COMPETITION)
        print(f"\nscale {scale}: {r['n_train']} training + {r['n_test']} test frames ({share:.0%} of the competition's "
              f"{COMPETITION[0]} + {COMPETITION[1]}), {r['source_bytes'] / 2**20:.0f} MiB of JPEG; load average now "
              f"{os.getloadavg()[0]:.2f}")
        print_table(("stage", "time s", "peak MiB", "growth MiB", "rate"), rows_of(r))
    if len(results) > 1:
        print_scaling(results[0], results[-1])
    rates = rates_of(results[-1])
    if FLAGS.rates_json:
        payload = {"cores": FLAGS.cores, "host": host, "rates": rates, "frames": results[-1]["frames"],
                   "decoded_rates": {name[len(ASSEMBLY):]: s["decoded"] / s["cores"]
                                     for name, s in results[-1]["stages"].items() if "decoded" in s}}
        write_json(FLAGS.rates_json, payload)
        print(f"rates per core -> {FLAGS.rates_json}")
    if FLAGS.plan_json:
        print_plan(FLAGS.plan_json, rates)


if __name__ == "__main__":
    app.run(main)
