"""The README's first-hour commands and the commands of the docs/ pages, taken from the text itself and
run on tiny demo data: the test fails when the documentation drifts from what works.

`make setup` / activating `.venv` are what this test suite already runs in; `make demo` is
replaced by its outputs in miniature (demo_out/data with the records the README uses, and one
finished run in demo_out/runs), with two folds; every `run.py` command gets `--quick --n_folds=2
--dim=32` and a small backbone from scratch appended so it takes seconds, other commands the flags
in `SHRINK`. Everything else
runs exactly as written. A docs block that cannot run here (a cloud job, a compile of minutes, a
benchmark) is marked `<!-- not run by the tests: why -->` on the line before its fence; its
commands are still checked: the scripts they name exist and define the flags they are given.
"""
import functools
import os
import re
import shlex
import subprocess
import sys

import pandas as pd

import tiny_experiment
from tpuflow.prep import builder, frames, split, synthetic
from tpuflow.results import run_card
from tpuflow.training import experiment

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTION = "## The first hour"
# Appended to a command by its script, so that it runs in seconds on the tiny demo data.
SHRINK = {
    "run.py": ["--quick", "--n_folds=2", "--dim=32", "--weights=None", "--backbone=MobileNetV3Small"],  # offline, fast
    "tools/ensemble.py": ["--include_quick"],  # the runs here are smoke runs, which the tools leave out by default
    "tools/leaderboard.py": ["--include_quick"],
    "data_prep/make_synthetic.py": ["--size=24", "--n_storms=10", "--n_test_only_storms=1", "--min_frames=6",
                                    "--max_frames=10"],
    "data_prep/create_cv_split.py": ["--n_folds=2"],
}
ANY_RUN = "experiments/run-20261121-1300-cnn-1ch"  # where a bare `run.py` stands for any experiment's
FRESH_PAGES = ("data.md",)  # pages whose commands make their own data dir; the others run on the mini demo


def _block_commands(block: str) -> list[str]:
    """A code block's shell commands: continuations joined, comments cut, whitespace normalised."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
        if line:
            commands.append(" ".join(line.split()))
    return commands


def first_hour_commands() -> list[str]:
    """The shell commands of the README's first-hour code blocks."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert SECTION in text, "README lost its first-hour section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return [c for block in re.findall(r"```bash\n(.*?)```", section, re.S) for c in _block_commands(block)]


def docs_blocks(page: str) -> list[tuple[str, str | None, list[str]]]:
    """A docs page's code blocks: (language, why it is not run or None, commands)."""
    text = open(os.path.join(ROOT, "docs", page), encoding="utf-8").read()
    blocks = []
    for m in re.finditer(r"(?:^|\n)(?:<!-- not run by the tests: ([^\n]+?) -->\n)?```(\w*)\n(.*?)```", text, re.S):
        blocks.append((m.group(2), m.group(1), _block_commands(m.group(3))))
    return blocks


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


def _workspace(root) -> dict:
    """A working directory like the repository root's (its scripts linked in); the environment of a fresh shell."""
    os.makedirs(root, exist_ok=True)
    for name in ("experiments", "tools", "data_prep", "benchmarks"):
        os.symlink(os.path.join(ROOT, name), os.path.join(root, name))
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as in a fresh shell
    env.update(PYTHONPATH=os.path.join(ROOT, "lib"), PYTHON=sys.executable)
    return env


def _run(command: str, cwd, env: dict) -> None:
    """Runs one documented command as written, plus its script's `SHRINK` flags; it must succeed quietly."""
    argv = shlex.split(command)
    if argv[0] == "python":
        argv[0] = sys.executable
        script = "run.py" if argv[1].endswith("run.py") else argv[1]
        argv += SHRINK.get(script, [])
    else:
        assert argv[0].endswith(".sh"), command  # a script of ours, run as written
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (command, proc.stdout[-2000:], proc.stderr[-3000:])
    for noise in ("Traceback", "I0000", "E0000", "absl::InitializeLog", "cuInit", "oneDNN"):
        assert noise not in proc.stderr, (command, proc.stderr[-2000:])  # no TensorFlow start-up logs


def test_readme_first_hour_commands_run(tmp_path):
    commands = first_hour_commands()
    assert commands[:3] == ["make setup", "source .venv/bin/activate", "make demo"], commands[:3]
    env = _workspace(tmp_path)
    _mini_demo(str(tmp_path))
    for command in commands[3:]:
        assert command.startswith("python "), command
        _run(command, tmp_path, env)
    run_dir = tmp_path / "runs" / "run-20261121-1320-cnn-3ch-mean"
    assert run_card.read_card(str(run_dir))["status"] == "complete"
    assert (run_dir / "run-20261121-1320-cnn-3ch-mean.csv").exists()
    assert list((tmp_path / "runs" / "ensemble").glob("submission_*.csv"))
    table = pd.read_csv(tmp_path / "runs" / "experiments.csv")
    assert len(table) == 2  # the demo's run and the new one


def test_docs_commands_run(tmp_path):
    """Every unmarked `bash` block of docs/, page by page: on a fresh directory where the page makes
    its own data, else on the mini demo with `data` and `runs` as the repository's root has them."""
    fresh, demo = tmp_path / "fresh", tmp_path / "demo"
    fresh_env, demo_env = _workspace(fresh), _workspace(demo)
    _mini_demo(str(demo))
    os.symlink(demo / "demo_out" / "data", demo / "data")
    os.symlink(demo / "demo_out" / "runs", demo / "runs")
    ran = {}
    for page in sorted(os.listdir(os.path.join(ROOT, "docs"))):
        for language, not_run, commands in docs_blocks(page):
            if language == "bash" and not not_run:
                for command in commands:
                    command = re.sub(r"\s*\[[^\]]*\]", "", command)  # optional flags, shown in brackets
                    _run(command, *((fresh, fresh_env) if page in FRESH_PAGES else (demo, demo_env)))
                    ran.setdefault(page, []).append(command)
    assert {"data.md", "frame-store.md", "recipes.md", "runs.md"} <= set(ran), sorted(ran)
    # what the commands say they make
    assert (fresh / "data" / "data-tfrec-sequence-frames024-step001" / "manifest.json").exists()
    assert (fresh / "sheet.png").exists()
    assert (demo / "data" / "data-frames" / "manifest.json").exists()
    assert list((demo / "ens").glob("submission_*.csv"))
    assert len(pd.read_csv(demo / "runs" / "db.csv")) == 1


def _quoted_words(text: str) -> set[str]:
    return set(re.findall(r"[\"'](\w+)[\"']", text))


@functools.cache
def _library_words() -> frozenset[str]:
    """Every quoted word of the library and every flag of a run (declared as fields of the
    configuration's sections, old names included), the flags that scripts share."""
    words = set(experiment.OUR_FLAGS)
    for folder, _, files in os.walk(os.path.join(ROOT, "lib", "tpuflow")):
        for f in files:
            if f.endswith(".py"):
                words |= _quoted_words(open(os.path.join(folder, f), encoding="utf-8").read())
    return frozenset(words)


def _documented_commands():
    """(where, command, cd) for every command of every code block of the README and docs/."""
    pages = [("README.md", open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())]
    pages += [(f"docs/{p}", None) for p in sorted(os.listdir(os.path.join(ROOT, "docs")))]
    for where, text in pages:
        text = text or open(os.path.join(ROOT, where), encoding="utf-8").read()
        for block in re.findall(r"```\w*\n(.*?)```", text, re.S):
            cd = ""
            for command in _block_commands(block):
                if command.startswith("cd "):
                    cd = command.split()[1]
                yield where, command, cd


def test_documented_commands_name_real_scripts_and_their_flags():
    checked = 0
    for where, command, cd in _documented_commands():
        words = command.replace("[", " ").replace("]", " ").split()
        if words[0] in ("python", "python3") and not words[1].startswith("-"):
            script = os.path.join(ROOT, cd or ANY_RUN if words[1] == "run.py" else "", words[1])
        elif words[0].endswith(".sh"):
            script = os.path.join(ROOT, words[0])
        else:
            continue  # make, pip, gcloud, tensorboard, python -c: not ours
        if "<" in script or "..." in script:
            continue  # a placeholder: experiments/<run>/run.py
        assert os.path.isfile(script), f"{where}: {command!r} names a missing script"
        if any(w.startswith("--runner=") and w != "--runner=local" for w in words):
            continue  # Beam's pipeline options are Beam's
        known = _library_words() | _quoted_words(open(script, encoding="utf-8").read())  # a superset of its flags
        for word in words[1:]:
            name = word[2:].split("=", 1)[0]
            if word.startswith("--") and name:
                assert name in known, f"{where}: {command!r}: {script} knows no flag --{name}"
        checked += 1
    assert checked > 30, checked


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", text, flags=re.S), re.M)}


def test_links_between_the_readme_and_docs_resolve():
    pages = ["README.md"] + [f"docs/{p}" for p in sorted(os.listdir(os.path.join(ROOT, "docs")))]
    for page in pages:
        text = open(os.path.join(ROOT, page), encoding="utf-8").read()
        for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?(?:#([\w-]+))?\)", text):
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target)) if target else os.path.join(ROOT, page)
            assert os.path.isfile(path), f"{page}: link to missing {target}"
            if anchor:
                assert anchor in _anchors(open(path, encoding="utf-8").read()), f"{page}: no heading #{anchor} in {target or page}"
