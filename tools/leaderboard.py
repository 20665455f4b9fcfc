"""Experiment database and leaderboard from the run cards of run dirs (local or gs://).

Usage:
    python tools/leaderboard.py --runs=experiments,gs://bucket/runs [--out_csv=db.csv] [--plot=cv.png]
    python tools/leaderboard.py --runs=experiments --set_lb=run-20261121-1330-cnn-lstm:6.62:6.71
    python tools/leaderboard.py --runs=runs --import_csv=DOC/meta/experiment_database/experiment_database.csv

Each entry of --runs is a run dir (holding run_card.json, or an older run's record.json) or a dir
of run dirs. Prints the runs sorted by CV (best first) and ranked within each CV metric (rmse_rounded and rmse_raw scores are
never ranked against each other), writes the full database as CSV (experiment_id, LB_private,
LB_public, CV with and without TTA, metric, rank, CV and epochs per fold, task, architecture,
resolution, channels, inverted, n_frames, step, history depth, backbone, weights, batch size,
learning rate, max epochs, aug/TTA numbers, description, ...) and plots CV against history depth
and architecture. Smoke runs (--quick) are left out, saying so on one line, unless
--include_quick. --import_csv adds the rows of the reference solution's experiment_database.csv
(its columns mapped to ours; a run dir of the same id wins). `--set_lb=<experiment_id>:<private>:<public>`
attaches leaderboard scores to a run's card (leave a score empty to clear it). Cards with
missing fields are listed and make the exit status 1.
"""
from __future__ import annotations

import sys

from absl import app, flags

from tpuflow import cli, storage
from tpuflow.results import leaderboard

flags.DEFINE_list("runs", [], "Run dirs or dirs of run dirs (local or gs://)")
flags.DEFINE_list("import_csv", [], "The reference solution's experiment_database.csv file(s), shown beside the runs")
flags.DEFINE_boolean("include_quick", False, "Also list smoke runs (--quick), whose CV means nothing")
flags.DEFINE_string("out_csv", None, "Write the experiment database here (CSV)")
flags.DEFINE_string("plot", None, "Write a PNG of CV vs. history depth and architecture here")
flags.DEFINE_string("sort_by", "CV_tta", "Column to sort by, lowest first (a CV column: ranked within each metric)")
flags.DEFINE_string("set_lb", None, "<experiment_id>:<private>:<public>: attach leaderboard scores")
FLAGS = flags.FLAGS


def parse_set_lb(text: str) -> tuple[str, float | None, float | None]:
    """`id:6.25:6.31` -> ('id', 6.25, 6.31); an empty score is None."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[0]:
        raise app.UsageError(f"--set_lb={text!r}: expected <experiment_id>:<private>:<public>")
    scores = []
    for name, value in zip(("private", "public"), parts[1:]):
        try:
            scores.append(float(value) if value.strip() else None)
        except ValueError:
            raise app.UsageError(f"--set_lb={text!r}: {name} score {value!r} is not a number") from None
    return parts[0], scores[0], scores[1]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not FLAGS.runs and not FLAGS.import_csv:
        raise app.UsageError("--runs (run dirs) or --import_csv (the reference's experiment_database.csv) is required")
    missing = [r for r in FLAGS.runs if not storage.exists(r)]
    if missing:
        raise app.UsageError(f"--runs: no such dir(s) {missing}")
    missing = [p for p in FLAGS.import_csv if not storage.exists(p)]
    if missing:
        raise app.UsageError(f"--import_csv: no such file(s) {missing}")
    imported = [leaderboard.import_reference(p) for p in FLAGS.import_csv]  # a malformed file: before any change
    if FLAGS.set_lb:
        experiment_id, private, public = parse_set_lb(FLAGS.set_lb)
        try:
            path = leaderboard.set_lb(FLAGS.runs, experiment_id, private, public)
        except (KeyError, ValueError) as err:
            sys.exit(f"error: {err.args[0]}")
        print(f"{path}: LB private {private}, public {public}")
    items, problems = leaderboard.load_cards(FLAGS.runs)
    smoke = leaderboard.smoke_runs(items)
    if smoke and not FLAGS.include_quick:
        items = [(path, card) for path, card in items if card["experiment_id"] not in smoke]
        print(f"left out {len(smoke)} smoke run(s) (--quick): {', '.join(smoke)} (--include_quick lists them)")
    ids = {card["experiment_id"] for _, card in items}
    for i, (path, table) in enumerate(zip(FLAGS.import_csv, imported)):
        both = sorted(set(table["experiment_id"]) & ids)
        if both:
            print(f"{path}: left out {len(both)} row(s) also found as run dirs (their cards are shown): "
                  f"{', '.join(both)}")
            imported[i] = table[~table["experiment_id"].isin(both)]
    table = leaderboard.build_table(items, FLAGS.sort_by, imported)
    print(leaderboard.format_table(table) if len(table) else f"no run cards under {FLAGS.runs}")
    note = leaderboard.metrics_note(table) if FLAGS.sort_by.startswith("CV") else None
    if note:
        print(note)
    if FLAGS.out_csv:
        storage.write_text(FLAGS.out_csv, table.to_csv(index=False))
        print(f"Experiment database: {FLAGS.out_csv}")
    if FLAGS.plot:
        storage.write_bytes(FLAGS.plot, leaderboard.plot(table))
        print(f"Plot: {FLAGS.plot}")
    for problem in problems:
        print(f"incomplete run card: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    cli.run_main(main)
