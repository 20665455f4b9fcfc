"""The README's first-hour commands, taken from the README itself and run on tiny demo data: the
test fails when the README drifts from what works.

`make setup` / activating `.venv` are what this test suite already runs in; `make demo` is
replaced by its outputs in miniature (demo_out/data with the records the README uses, and one
finished run in demo_out/runs), with two folds; every `run.py` command gets `--quick --n_folds=2
--dim=32` appended so it takes seconds. Everything else runs exactly as written.
"""
import os
import re
import shlex
import subprocess
import sys

import pandas as pd

import tiny_experiment
from tpuflow.prep import builder, frames, split, synthetic
from tpuflow.results import run_record
from tpuflow.training import experiment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTION = "## The first hour"


def first_hour_commands() -> list[str]:
    """The shell commands of the README's first-hour code blocks (continuations joined, comments cut)."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert SECTION in text, "README lost its first-hour section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if line:
                commands.append(" ".join(line.split()))
    return commands


def _mini_demo(root: str) -> None:
    """What `make demo` leaves that the first hour uses, in miniature."""
    data = os.path.join(root, "demo_out", "data")
    synthetic.make_synthetic(data, synthetic.SyntheticConfig(seed=3, n_storms=10, n_test_only_storms=1,
                                                             min_frames=6, max_frames=10, size=24))
    split.write_cv_split(data, *split.create_cv_split(data, n_folds=2, seed=33))
    builder.build_datasets(data, data, [frames.DatasetSpec.parse(s) for s in ("single", "mean:s2")])
    cfg = experiment.make_config(data_dir=data, data_tfrec_dir=os.path.join(data, "data-tfrec-single-frames001-step001"),
                                 output_dir=os.path.join(root, "demo_out", "runs", "run-20261121-1300-cnn-1ch"),
                                 quick=True, n_folds=2, tta_number=1, dim=16, batch_size=8, verbose=0)
    experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)


def test_readme_first_hour_commands_run(tmp_path):
    commands = first_hour_commands()
    assert commands[:3] == ["make setup", "source .venv/bin/activate", "make demo"], commands[:3]
    for name in ("experiments", "tools", "data_prep"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    _mini_demo(str(tmp_path))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as in a fresh shell
    env["PYTHONPATH"] = os.path.join(ROOT, "lib")
    for command in commands[3:]:
        argv = shlex.split(command)
        assert argv[0] == "python", command
        argv[0] = sys.executable
        if argv[1].endswith("run.py"):
            argv += ["--quick", "--n_folds=2", "--dim=32"]
        elif argv[1] in ("tools/ensemble.py", "tools/leaderboard.py"):
            argv += ["--include_quick"]  # the runs here are smoke runs, which the tools leave out by default
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-3000:])
        for noise in ("Traceback", "I0000", "E0000", "absl::InitializeLog", "cuInit", "oneDNN"):
            assert noise not in proc.stderr, proc.stderr[-2000:]  # no TensorFlow start-up logs
    run_dir = tmp_path / "runs" / "run-20261121-1320-cnn-3ch-mean"
    assert run_record.read_record(str(run_dir))["status"] == "complete"
    assert (run_dir / "run-20261121-1320-cnn-3ch-mean.csv").exists()
    assert list((tmp_path / "runs" / "ensemble").glob("submission_*.csv"))
    table = pd.read_csv(tmp_path / "runs" / "experiments.csv")
    assert len(table) == 2  # the demo's run and the new one
