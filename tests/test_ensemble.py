"""Ensemble toolkit: hand-checked weights, pairwise == the plain reference loop (ties included),
never worse than the best input, nested scores fold by fold, the loader's checks, the command
end to end (no TensorFlow), atomic outputs and clear errors on bad input."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from ensemble_fixtures import random_models, write_data, write_model
from tpuflow import ensemble
from tpuflow.ensemble import data as ensemble_data, report as ensemble_report
from tpuflow.ensemble.methods import pairwise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RMSE, RMSE_ROUNDED = ensemble.METRICS["rmse_raw"], ensemble.METRICS["rmse_rounded"]


def reference_loop(val: np.ndarray, y: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference search exactly as a plain loop writes it."""
    val = val.astype(np.float64)
    rmse = lambda a, b: np.sqrt(np.mean((a - b) ** 2))  # noqa: E731
    r, cs = val[order[0]], []
    best = rmse(y, r)
    for j in order[1:]:
        p, coef = val[j], 1.0
        for c in np.arange(0, 1.11, 0.01):
            s = rmse(y, c * r + (1 - c) * p)
            if s < best:
                best, coef = s, c
        r = coef * r + (1 - coef) * p
        cs.append(coef)
    return np.array(cs), r


def problem(val, y, n_folds=1, metric=RMSE) -> ensemble.Problem:
    bounds = np.linspace(0, len(y), n_folds + 1).astype(int)
    return ensemble.Problem(np.asarray(val), np.asarray(y, np.float64),
                            [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])], metric)


# ---------------------------------------------------------------------------- hand-checked cases
Y = np.array([10.0, 20.0, 30.0, 40.0])


def test_pairwise_averages_two_opposite_errors():
    fit = pairwise.fit(problem([Y + 1, Y - 1], Y), RMSE_ROUNDED)
    assert fit.order.tolist() == [0, 1] and fit.cs.tolist() == [0.5]
    np.testing.assert_array_equal(fit.weights, [0.5, 0.5])
    np.testing.assert_array_equal(fit.fit_pred, Y)


def test_pairwise_extrapolates_to_the_grid_end_and_drops_a_useless_input():
    # r = y+1, p = y+2: c*r + (1-c)*p = y + 2 - c, best at the grid's last point c = 1.11 (the
    # floating-point arange keeps it), so p gets weight -0.11 and r becomes y + 0.89. The third
    # input's error differs from r's by +-3, orthogonally to r's error: its best c is exactly 1,
    # so it is dropped.
    assert len(pairwise.GRID) == 112 and pairwise.GRID[-1] == pytest.approx(1.11)
    useless = Y + 0.89 + np.array([3.0, -3.0, 3.0, -3.0])
    fit = pairwise.fit(problem([Y + 1, Y + 2, useless], Y), RMSE_ROUNDED)
    assert fit.order.tolist() == [0, 1, 2]
    assert fit.cs[0] == pairwise.GRID[-1] and fit.cs[1] == 1.0
    np.testing.assert_allclose(fit.weights, [1.11, -0.11, 0.0], atol=1e-12)
    np.testing.assert_allclose(fit.fit_pred, Y + 0.89, atol=1e-12)


ERRORS3 = [np.ones(4), -np.ones(4), np.array([3.0, -3.0, 3.0, -3.0])]  # unique best mix: 1/2, 1/2, 0


@pytest.mark.parametrize("method", ["forward", "backward", "optimize"])
def test_weight_methods_find_the_hand_checked_mix(method):
    fit = ensemble.fit(problem([Y + e for e in ERRORS3], Y), method)
    np.testing.assert_allclose(fit.weights, [0.5, 0.5, 0.0], atol=1e-6)
    assert RMSE.score(Y, fit.fit_pred) < 1e-5
    assert not fit.fallback


def test_forward_bagged_averages_runs_on_subsets():
    fit = ensemble.fit(problem([Y + e for e in ERRORS3], Y), "forward",
                       params=ensemble.Params(bags=4, bag_fraction=2 / 3, seed=1))
    assert len(fit.trace) == 4 and fit.trace_x == "bags averaged"
    np.testing.assert_allclose(fit.weights.sum(), 1.0)
    assert (fit.weights >= 0).all()


# ---------------------------------------------------------------------------- pairwise == loop
def _tie_cases(rng):
    cases = []
    y = np.array([0.0, 1.0, 2.0, 3.0])
    r = np.array([0.3, 1.2, 1.7, 3.3])
    cases.append((np.stack([r, r, r]), y))  # duplicates: a flat quadratic, rounding noise decides
    cases.append((np.stack([np.ones(6), -np.ones(6)]), np.full(6, -0.01)))  # symmetric grid tie
    for _ in range(15):  # small integers: many exactly equal scores
        cases.append((rng.integers(0, 4, (6, 8)).astype(np.float64), rng.integers(0, 4, 8).astype(np.float64)))
    for trial in range(25):
        m, n = int(rng.integers(2, 20)), int(rng.integers(5, 300))
        y = rng.integers(20, 150, n).astype(np.float64)
        val = y + rng.normal(0, 8, (m, n)) + rng.normal(0, 3, (m, 1))
        if trial % 3 == 0:
            val[rng.integers(0, m, m // 2 + 1)] = val[0]
        if trial % 4 == 1:
            val = np.rint(val)
        if trial % 5 == 2:
            val = val.astype(np.float32)
        cases.append((val, y))
    return cases


def test_pairwise_equals_the_plain_loop_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    for val, y in _tie_cases(rng):
        prob = problem(val, y, n_folds=min(3, len(y)))
        order = pairwise.sort_order(prob, RMSE_ROUNDED)
        cs_ref, r_ref = reference_loop(val, y, order)
        fit = pairwise.fit(prob, RMSE_ROUNDED)
        np.testing.assert_array_equal(fit.cs, cs_ref)
        np.testing.assert_array_equal(fit.fit_pred, r_ref)
        np.testing.assert_array_equal(fit.apply(val), r_ref)  # the replay on other rows
        np.testing.assert_array_equal(fit.weights, pairwise.pairwise_weights(order, cs_ref, len(val)))
        # The library's own plain loop (used for other metrics) agrees too.
        np.testing.assert_array_equal(pairwise._pairwise_loop(prob, order)[0], cs_ref)


def test_pairwise_equals_the_loop_on_a_subset_of_folds():
    rng = np.random.default_rng(1)
    y = rng.integers(20, 150, 240).astype(np.float64)
    val = (y + rng.normal(0, 6, (12, 240))).astype(np.float32)
    prob = problem(val, y, n_folds=4)
    for f in range(4):
        sub = prob.without_fold(f)
        rows = np.concatenate([np.arange(s.start, s.stop) for s in sub.segments])
        order = pairwise.sort_order(sub, RMSE_ROUNDED)
        cs_ref, r_ref = reference_loop(val[:, rows], y[rows], order)
        fit = pairwise.fit(sub, RMSE_ROUNDED)
        np.testing.assert_array_equal(fit.cs, cs_ref)
        np.testing.assert_array_equal(fit.fit_pred, r_ref)


# ---------------------------------------------------------------------------- never worse, nested
def _values_problem(metric, seed=2):
    rng = np.random.default_rng(seed)
    y = rng.integers(20, 150, 150).astype(np.float64)
    val = y + rng.normal(0, 4, 150) + rng.normal(0, 1, (9, 1)) + rng.normal(0, 5, (9, 150))
    return problem(val, y, 3, metric)


def _probs_problem(metric, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, 120)
    logits = rng.normal(0, 1, (7, 120, 4)) + 1.5 * np.eye(4)[y] * rng.uniform(0.2, 1.5, (7, 1, 1))
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    return ensemble.Problem(probs, y, [slice(0, 40), slice(40, 80), slice(80, 120)], metric)


@pytest.mark.parametrize("method", list(ensemble.METHODS))
@pytest.mark.parametrize("metric", list(ensemble.METRICS))
def test_every_method_is_never_worse_than_the_best_single_input(method, metric):
    m = ensemble.METRICS[metric]
    prob = _values_problem(m) if m.form == "values" else _probs_problem(m)
    fit = ensemble.fit(prob, method, ensemble_report.default_sort_metric(m), ensemble.Params(steps=15))
    best_single = min(prob.loss(prob.row(i)) for i in range(prob.m))
    assert prob.loss(fit.fit_pred) <= best_single + 1e-12
    np.testing.assert_allclose(fit.fit_pred, fit.apply(prob.val), rtol=1e-12, atol=1e-12)


def test_every_method_module_is_registered_and_an_unknown_name_is_refused_naming_the_flag():
    folder = os.path.dirname(pairwise.__file__)
    modules = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py")
    assert sorted(ensemble.METHODS) == modules
    assert ensemble.METHODS[0] == "pairwise"  # the reference, `--method`'s default
    assert ensemble.method("pairwise").RANKS and not ensemble.method("forward").RANKS
    with pytest.raises(ValueError, match=r"^--method=nope: unknown method; use one of \['pairwise', 'forward', "
                                         r"'backward', 'optimize'"):
        ensemble.fit(_values_problem(RMSE), "nope")


@pytest.mark.parametrize("method", list(ensemble.METHODS))
def test_nested_fits_each_fold_on_the_others_only(method):
    prob = _values_problem(RMSE, seed=4)
    nested = ensemble.nested(prob, method, RMSE_ROUNDED)
    y, val = prob.y, prob.val
    for f, s in enumerate(prob.stats.fold_slices):
        rest = np.r_[0:s.start, s.stop:len(y)]
        # An independent problem on copies of the other folds' rows.
        alone = ensemble.Problem(val[:, rest].copy(), y[rest].copy(), [slice(0, len(rest))], RMSE)
        expected = ensemble.fit(alone, method, RMSE_ROUNDED).apply(val[:, s])
        if method == "pairwise":
            np.testing.assert_array_equal(nested.held_out[s], expected)
        else:
            np.testing.assert_allclose(nested.held_out[s], expected, rtol=1e-6)
        best = int(np.argmin([RMSE.score(y[rest], val[i, rest]) for i in range(prob.m)]))
        assert nested.chosen[f] == best
        np.testing.assert_array_equal(nested.single_held_out[s], val[best, s])


# ---------------------------------------------------------------------------- loader
FOLDS = [0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1, 2] * 3  # interleaved: a fold is not contiguous in train_cv


@pytest.fixture()
def dataset(tmp_path):
    data_dir, train, fmt = write_data(str(tmp_path), FOLDS, n_test=10)
    dirs = random_models(str(tmp_path), train, fmt, n_models=3, n_tta=2, shuffle=True)
    return str(tmp_path), data_dir, train, fmt, dirs


def test_loader_puts_rows_in_fold_order_and_averages_test_over_folds(dataset):
    root, data_dir, train, fmt, dirs = dataset
    inputs = ensemble_data.load_inputs(data_dir, ensemble_data.expand_model_dirs(f"{root}/run-*"))
    assert inputs.names == tuple(f"run-{m:02d}:tta{t}" for m in range(3) for t in range(2))
    assert inputs.val.shape == (6, len(FOLDS)) and inputs.val.dtype == np.float32
    assert inputs.folds == (0, 1, 2) and inputs.form == "values"
    rows = np.concatenate([np.flatnonzero(train["fold_id"].to_numpy() == f) for f in (0, 1, 2)])
    np.testing.assert_array_equal(inputs.oof_ids, train["image_id"].to_numpy()[rows])
    np.testing.assert_array_equal(inputs.y, train["wind_speed"].to_numpy()[rows])
    np.testing.assert_array_equal(inputs.test_ids, fmt["image_id"].to_numpy())
    for s, f in zip(inputs.fold_slices, inputs.folds):
        assert (train["fold_id"].to_numpy()[rows[s]] == f).all()
    # Saved shuffled, read back in order: compare with the files read by hand through their ids.
    preds = os.path.join(dirs[1], "preds")
    for f, s in zip(inputs.folds, inputs.fold_slices):
        saved = pd.Series(np.load(os.path.join(preds, f"y_pred_val_fold_{f}_tta_1.npy")),
                          index=np.load(os.path.join(preds, f"ids_val_fold_{f}.npy")))
        np.testing.assert_array_equal(inputs.val[3, s], saved.loc[inputs.oof_ids[s]].to_numpy())
    test_ids = np.load(os.path.join(preds, "ids_test.npy"))
    mean = sum(pd.Series(np.load(os.path.join(preds, f"y_pred_test_fold_{f}_tta_0.npy")).astype(np.float64),
                         index=test_ids) for f in (0, 1, 2)) / 3
    np.testing.assert_allclose(inputs.test[2], mean.loc[inputs.test_ids].to_numpy(), rtol=1e-12)


def test_loader_mixes_float64_and_float32_experiments_saved_out_of_order(tmp_path):
    data_dir, train, fmt = write_data(str(tmp_path), FOLDS, n_test=10)
    wide = random_models(str(tmp_path / "a"), train, fmt, n_models=1, n_tta=1, dtype=np.float64, shuffle=True)
    narrow = random_models(str(tmp_path / "b"), train, fmt, n_models=1, n_tta=1, dtype=np.float32, shuffle=True)
    inputs = ensemble_data.load_inputs(data_dir, wide + narrow)
    assert inputs.val.dtype == np.float64 and inputs.val.shape == (2, len(FOLDS))
    preds = os.path.join(narrow[0], "preds")
    for f, s in zip(inputs.folds, inputs.fold_slices):
        saved = pd.Series(np.load(os.path.join(preds, f"y_pred_val_fold_{f}_tta_0.npy")),
                          index=np.load(os.path.join(preds, f"ids_val_fold_{f}.npy")))
        np.testing.assert_array_equal(inputs.val[1, s], saved.loc[inputs.oof_ids[s]].to_numpy())


def test_loader_reads_probabilities_or_turns_them_into_values(tmp_path):
    labels = np.array([20.0, 35.0, 50.0, 65.0])
    data_dir, train, fmt = write_data(str(tmp_path), FOLDS, n_test=6, labels=labels)
    rng = np.random.default_rng(0)
    for m in range(2):
        val = {f: rng.dirichlet(np.ones(4), (2, int((train["fold_id"] == f).sum()))) for f in (0, 1, 2)}
        test = {f: rng.dirichlet(np.ones(4), (2, 6)) for f in (0, 1, 2)}
        write_model(str(tmp_path), f"clf-{m}", train, fmt, val, test)
    dirs = ensemble_data.expand_model_dirs(f"{tmp_path}/clf-*")
    probs = ensemble_data.load_inputs(data_dir, dirs)
    assert probs.form == "probs" and probs.val.shape == (4, len(FOLDS), 4)
    np.testing.assert_array_equal(labels[probs.y], train.set_index("image_id").loc[probs.oof_ids, "wind_speed"])
    values = ensemble_data.load_inputs(data_dir, dirs, probs_to_values="expectation")
    assert values.form == "values"
    np.testing.assert_allclose(values.val, np.dot(probs.val, labels))
    run = ensemble_report.run(probs, "optimize", "logloss", nested=False)
    sub = ensemble_report.submission_frame(run)
    assert set(sub["wind_speed"]) <= set(range(20, 66))


# ---------------------------------------------------------------------------- command end to end
def _tool(root: str, data_dir: str, out: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "ensemble.py"), f"--data_dir={data_dir}",
                           f"--model_dirs={root}/run-00,{root}/run-0[12]", f"--out_dir={out}", *flags],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.path.join(REPO, "lib")})


def test_command_writes_every_output_without_tensorflow(dataset, tmp_path):
    root, data_dir, train, fmt, dirs = dataset
    out = str(tmp_path / "out")
    # The command's own main in a fresh interpreter, then a look at what it imported.
    code = ("import sys, runpy; sys.argv = sys.argv[1:]; "
            "from absl import flags; tool = runpy.run_path(sys.argv[0]); "
            "flags.FLAGS(sys.argv); tool['main']([sys.argv[0]]); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'; print('no tensorflow')")
    done = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "tools", "ensemble.py"),
                           f"--data_dir={data_dir}", f"--model_dirs={root}/run-*", f"--out_dir={out}",
                           "--method=forward", "--bags=3"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.path.join(REPO, "lib")})
    assert done.returncode == 0, done.stderr
    assert "no tensorflow" in done.stdout and "nested (honest)" in done.stdout
    names = sorted(os.listdir(out))
    assert names == sorted(f"{k}_ens_forward.{e}" for k, e in
                           [("submission", "csv"), ("weights", "csv"), ("report", "json"), ("plot", "png")])
    sub = pd.read_csv(os.path.join(out, "submission_ens_forward.csv"))
    assert sub["image_id"].tolist() == fmt["image_id"].tolist()
    assert sub["wind_speed"].dtype == np.int64
    rep = json.load(open(os.path.join(out, "report_ens_forward.json")))
    assert rep["method"] == "forward" and rep["n_inputs"] == 6 and rep["params"]["bags"] == 3
    assert rep["form"] == "values"
    assert set(rep["scores"]) == {"rmse_raw", "rmse_rounded"}
    assert len(rep["scores"]["rmse_raw"]["ensemble_nested_per_fold"]) == 3
    np.testing.assert_allclose(sum(r["weight"] for r in rep["inputs"]), 1.0)
    assert {"load", "fit", "nested", "apply_test"} <= set(rep["timings_s"])
    assert len(pd.read_csv(os.path.join(out, "weights_ens_forward.csv"))) == 6
    assert open(os.path.join(out, "plot_ens_forward.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_command_rejects_unknown_method_and_metric(dataset, tmp_path):
    root, data_dir, *_ = dataset
    for flag in ("--method=stacking", "--metric=mae"):
        done = _tool(root, data_dir, str(tmp_path / "out"), flag)
        assert done.returncode != 0 and flag.split("=")[0] in done.stderr
    assert not os.path.exists(tmp_path / "out")


# ---------------------------------------------------------------------------- bad input, atomic outputs
def _run_and_write(data_dir: str, dirs: list[str], out: str, method: str = "pairwise", metric: str = "rmse_raw",
                   **load_kw) -> dict[str, str]:
    inputs = ensemble_data.load_inputs(data_dir, dirs, **load_kw)
    result = ensemble_report.run(inputs, method, metric)
    return ensemble_report.write_outputs(result, out, "ens", data_dir)


def _snapshot(out: str) -> dict[str, tuple[bytes, int]]:
    return {n: (open(os.path.join(out, n), "rb").read(), os.stat(os.path.join(out, n)).st_mtime_ns)
            for n in sorted(os.listdir(out))}


def _broken(root: str, tag: str, model: str, fix) -> list[str]:
    """A copy of the experiments with one file of `model` changed by fix(preds_dir)."""
    dest = os.path.join(root, f"broken-{tag}")
    dirs = []
    for name in ("run-00", "run-01", "run-02"):
        shutil.copytree(os.path.join(root, name), os.path.join(dest, name))
        dirs.append(os.path.join(dest, name))
    fix(os.path.join(dest, model, "preds"))
    return dirs


def _replace(name: str, make):
    def fix(preds):
        path = os.path.join(preds, name)
        np.save(path, make(np.load(path)))
    return fix


def test_bad_inputs_raise_clear_errors_and_leave_earlier_outputs_untouched(dataset, tmp_path):
    root, data_dir, train, fmt, dirs = dataset
    out = str(tmp_path / "out")
    _run_and_write(data_dir, dirs, out)
    before = _snapshot(out)
    val1 = "y_pred_val_fold_1_tta_0.npy"

    def nan_at_2(a):
        a = a.astype(np.float32)
        a[2] = np.nan
        return a

    def probs(a):
        return np.tile(np.full((1, 4), 0.25), (len(a), 1))

    cases = {
        "missing": (lambda p: os.remove(os.path.join(p, val1)), FileNotFoundError, val1),
        "rows": (_replace(val1, lambda a: a[:-1]), ValueError, f"{val1}: 11 rows, expected 12"),
        "nan": (_replace(val1, nan_at_2), ValueError, f"{val1}: 1 NaN/inf value.*row"),
        "inf": (_replace("y_pred_test_fold_2_tta_1.npy", lambda a: a * np.inf), ValueError, "NaN/inf"),
        "mixed": (_replace("y_pred_val_fold_0_tta_0.npy", probs), ValueError, "mixes regression values and class"),
        "ids": (_replace("ids_val_fold_2.npy", lambda a: np.char.add(a, "x")), ValueError, "ids_val_fold_2.npy"),
        "no_ids": (lambda p: os.remove(os.path.join(p, "ids_test.npy")), FileNotFoundError, "ids_test.npy: missing"),
    }
    for tag, (fix, error, message) in cases.items():
        with pytest.raises(error, match=message):
            _run_and_write(data_dir, _broken(root, tag, "run-01", fix), out)
    one = os.path.join(root, "single", "run-x")
    write_model(os.path.join(root, "single"), "run-x", train, fmt,
                {f: np.zeros((1, int((train["fold_id"] == f).sum()))) for f in (0, 1, 2)},
                {f: np.zeros((1, len(fmt))) for f in (0, 1, 2)})
    with pytest.raises(ValueError, match="--model_dirs: 1 prediction"):
        _run_and_write(data_dir, [one], out)
    with pytest.raises(ValueError, match="--method=stacking"):
        _run_and_write(data_dir, dirs, out, method="stacking")
    with pytest.raises(ValueError, match="--metric=logloss scores probs"):
        _run_and_write(data_dir, dirs, out, metric="logloss")
    with pytest.raises(ValueError, match="--metric=mae"):
        _run_and_write(data_dir, dirs, out, metric="mae")
    with pytest.raises(ValueError, match="matches no dir"):
        ensemble_data.expand_model_dirs(f"{root}/nothing-*")
    with pytest.raises(ValueError, match="listed twice"):
        ensemble_data.expand_model_dirs(f"{dirs[0]},{root}/run-0*")
    assert _snapshot(out) == before


def test_repeated_image_ids_in_the_csvs_are_an_error(dataset):
    root, data_dir, train, fmt, dirs = dataset
    pd.concat([fmt, fmt.iloc[:1]]).to_csv(os.path.join(data_dir, "submission_format.csv"), index=False)
    with pytest.raises(ValueError, match="submission_format.csv: image_id 'tst_000' appears more than once"):
        ensemble_data.load_inputs(data_dir, dirs)


def test_outputs_are_renamed_into_place_only_when_all_are_written(dataset, tmp_path):
    root, data_dir, train, fmt, dirs = dataset
    out = str(tmp_path / "out")
    paths = _run_and_write(data_dir, dirs, out)
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths.values())  # no temporaries
    before = _snapshot(out)
    # A directory where the report should go: the last rename fails, nothing else moves.
    os.remove(paths["report"])
    os.makedirs(paths["report"])
    del before[os.path.basename(paths["report"])]
    with pytest.raises(OSError):
        _run_and_write(data_dir, dirs[:2], out)
    os.rmdir(paths["report"])
    assert _snapshot(out) == before


def test_smoke_runs_are_left_out_unless_asked(dataset, tmp_path):
    """A run whose run card says --quick (the part of a run_card.json the tool reads) is left out,
    on one line; only smoke runs: refused unless --include_quick."""
    root, data_dir, train, fmt, dirs = dataset
    with open(os.path.join(dirs[1], "run_card.json"), "w") as f:
        json.dump({"experiment_id": "run-01", "quick": True, "flags": {"quick": True}}, f)
    done = _tool(root, data_dir, str(tmp_path / "out"), "--plot=false", "--nested=false")
    assert done.returncode == 0, done.stderr
    assert f"left out 1 smoke run(s) (--quick): {dirs[1]} (--include_quick blends them)" in done.stdout
    assert "run-01:" not in done.stdout and "run-00:" in done.stdout
    only = subprocess.run([sys.executable, os.path.join(REPO, "tools", "ensemble.py"), f"--data_dir={data_dir}",
                           f"--model_dirs={dirs[1]}", f"--out_dir={tmp_path}/only"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.path.join(REPO, "lib")})
    assert only.returncode == 2 and f"--model_dirs: every run is a smoke run (--quick): {dirs[1]}" in only.stderr
    done = _tool(root, data_dir, str(tmp_path / "all"), "--plot=false", "--nested=false", "--include_quick")
    assert done.returncode == 0 and "left out" not in done.stdout and "run-01:" in done.stdout
