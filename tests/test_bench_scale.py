"""benchmarks/bench_scale.py at its tiny `--quick` size: every stage runs in its own process, the
table, the per-core rates it writes for tools/tpu_plan.py and the host cores each planned target needs;
plans and results files written before "view" meant a TTA view only are read as before."""
import json
import math
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_quick_run_writes_rates_and_sizes_hosts_for_a_plan(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([
        {"target": "v5e-8", "view": "single", "global_batch": 256, "est_step_s": 0.2,  # an old plan's key
         "input_ex_per_s_needed": 1280.0},
        {"target": "v3-8", "kind": "mean", "global_batch": 64, "est_step_s": 0.5, "input_ex_per_s_needed": 128.0}]))
    rates_path, results = tmp_path / "rates.json", tmp_path / "results.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_scale.py"), "--quick", "--scales=1", "--kinds=single",
           "--repeats=1", "--input_batches=1", "--min_seconds=0", "--batch_size=4", "--dim=32",
           f"--work_dir={tmp_path / 'data'}", f"--rates_json={rates_path}", f"--plan_json={plan}", "--nokeep_data",
           f"--results_json={results}"]
    env = {**os.environ, "PYTHONPATH": os.path.join(ROOT, "lib")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    rates = json.loads(rates_path.read_text())
    assert rates["cores"] == 1 and set(rates["rates"]) == {"single"} and rates["rates"]["single"] > 0
    assert rates["decoded_rates"]["single"] > 0
    text = out.stdout
    stages = ("split", "store", "assembly single: store load", "assembly single: --frame_cache=auto",
              "assembly single: decoded as read", "assembly single: cache build + cached")
    for stage in stages:
        assert re.search(rf"^{re.escape(stage)}\s", text, re.M), (stage, text)
    v5e = re.search(r"^v5e-8\s+single\s+256\s+0\.200\s+1,280\s+\S+ \(single\)\s+(\d+)$", text, re.M)
    assert v5e and int(v5e.group(1)) == math.ceil(1280.0 / rates["rates"]["single"]), text
    assert re.search(r"^v3-8\s+mean\s.*\(kind not measured\)$", text, re.M), text
    assert not os.listdir(tmp_path / "data")  # frames and store removed

    saved = results.read_text()  # as a results file written before the rename names its stages
    assert '"assembly single"' in saved
    results.write_text(saved.replace('"assembly single"', '"view single"'))
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and "measured before" in again.stdout, again.stderr[-3000:]
    for stage in stages:
        assert re.search(rf"^{re.escape(stage)}\s", again.stdout, re.M), (stage, again.stdout)
    assert json.loads(rates_path.read_text())["rates"] == rates["rates"]
