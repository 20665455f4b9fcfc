"""Tests for tpuflow.prep.frames: hand-worked cases of the four dataset kinds, ordering, explain()."""
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tpuflow.prep import frames, kinds
from tpuflow.prep.frames import DatasetSpec, explain, frame_indices, mean_ranges, order_storm_frames


def single_positions(spec, t):
    """frame_indices flattened for kinds with one position per slot."""
    slots = frame_indices(spec, t)
    assert all(len(run) == 1 for run in slots)
    return [run[0] for run in slots]


# ---------------------------------------------------------------- DatasetSpec

@pytest.mark.parametrize("text, spec, name", [
    ("single", DatasetSpec("single"), "data-tfrec-single-frames001-step001"),
    ("stacked:s5", DatasetSpec("stacked", step=5), "data-tfrec-stacked-frames003-step005"),
    ("mean:s10", DatasetSpec("mean", 3, 10), "data-tfrec-mean-frames003-step010"),
    ("sequence:n24:s1", DatasetSpec("sequence", 24, 1), "data-tfrec-sequence-frames024-step001"),
    ("sequence:n8:s12", DatasetSpec("sequence", 8, 12), "data-tfrec-sequence-frames008-step012"),
])
def test_spec_parse_round_trip_and_name(text, spec, name):
    assert DatasetSpec.parse(text) == spec
    assert spec.to_string() == text
    assert str(spec) == text
    assert DatasetSpec.parse(spec.to_string()) == spec
    assert spec.name == name


def test_spec_normalises_fixed_depth_and_default_step():
    assert DatasetSpec("stacked", step=5) == DatasetSpec("stacked", 3, 5)
    assert DatasetSpec("stacked", step=5).n_frames == 3
    assert DatasetSpec.parse("stacked") == DatasetSpec("stacked", 3, 1)
    assert DatasetSpec.parse("stacked:n3:s2") == DatasetSpec("stacked", step=2)
    assert DatasetSpec.parse(" mean:s2 ") == DatasetSpec("mean", step=2)
    assert DatasetSpec("sequence", np.int64(4), np.int32(2)) == DatasetSpec("sequence", 4, 2)
    assert len({DatasetSpec("mean", step=2), DatasetSpec("mean", 3, 2)}) == 1


def test_spec_properties():
    single = DatasetSpec("single")
    stacked = DatasetSpec("stacked", step=5)
    mean = DatasetSpec("mean", step=5)
    seq = DatasetSpec("sequence", 24, 2)
    assert [s.depth for s in (single, stacked, mean, seq)] == [1, 3, 3, 24]
    assert [s.channels for s in (single, stacked, mean, seq)] == [1, 3, 3, 1]
    assert [s.images_per_example for s in (single, stacked, mean, seq)] == [1, 1, 1, 24]
    assert [s.history_span for s in (single, stacked, mean, seq)] == [0, 10, 14, 46]


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind="video"), "unknown kind 'video'"),
    (dict(kind="stacked", step=0), "step must be >= 1"),
    (dict(kind="sequence", n_frames=0), "n_frames must be >= 1"),
    (dict(kind="sequence", n_frames=-3, step=2), "n_frames must be >= 1"),
    (dict(kind="sequence"), "needs n_frames"),
    (dict(kind="stacked", n_frames=4), "always has n_frames=3"),
    (dict(kind="single", step=3), "step must be 1"),
    (dict(kind="mean", step=2.5), "step must be an integer"),
    (dict(kind="sequence", n_frames=True), "n_frames must be an integer"),
])
def test_spec_rejects_bad_values_naming_the_spec(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        DatasetSpec(**kwargs)
    assert f"kind={kwargs['kind']!r}" in str(err.value)


@pytest.mark.parametrize("text", [
    "", "video", "stacked:s0", "sequence:n0:s1", "sequence:s2", "stacked:5", "stacked:x5",
    "stacked:s5:s6", "sequence:n24:s1:", "Stacked:s5", "mean:s-1", "single:s2", "stacked:n4",
])
def test_spec_parse_rejects_bad_text_naming_it(text):
    with pytest.raises(ValueError) as err:
        DatasetSpec.parse(text)
    assert repr(text) in str(err.value)


def test_parse_specs_skips_comments_and_rejects_repeats():
    lines = ["# datasets to build", "single", "", "stacked:s5  # every 5th", "sequence:n24:s1"]
    assert frames.parse_specs(lines) == [
        DatasetSpec("single"), DatasetSpec("stacked", step=5), DatasetSpec("sequence", 24, 1)]
    with pytest.raises(ValueError, match="'stacked:n3:s5' repeats 'stacked:s5'"):
        frames.parse_specs(["stacked:s5", "stacked:n3:s5"])
    with pytest.raises(ValueError, match="'mean:q'"):
        frames.parse_specs(["single", "mean:q"])


# ---------------------------------------------------------------- index rules, by hand

def test_single_is_the_frame_itself():
    spec = DatasetSpec("single")
    assert [frame_indices(spec, t) for t in range(4)] == [[[0]], [[1]], [[2]], [[3]]]


def test_stacked_hand_worked():
    spec = DatasetSpec("stacked", step=5)
    assert single_positions(spec, 0) == [0, 0, 0]
    assert single_positions(spec, 4) == [0, 0, 4]
    assert single_positions(spec, 7) == [0, 2, 7]
    assert single_positions(spec, 10) == [0, 5, 10]
    assert single_positions(spec, 23) == [13, 18, 23]
    assert single_positions(DatasetSpec("stacked"), 1) == [0, 0, 1]


def test_sequence_storm_shorter_than_history():
    spec = DatasetSpec("sequence", 24, 1)
    # 3-frame storm: the first 21 (or more) slots repeat the first frame.
    assert single_positions(spec, 0) == [0] * 24
    assert single_positions(spec, 1) == [0] * 23 + [1]
    assert single_positions(spec, 2) == [0] * 22 + [1, 2]
    starts, stops = frames.storm_ranges(spec, 3)
    assert starts.shape == (3, 24)
    assert starts[2].tolist() == [0] * 22 + [1, 2]
    assert (stops == starts + 1).all()


def test_step_larger_than_storm():
    # Step 10 in a 4-frame storm: every history slot is the first frame.
    for spec in (DatasetSpec("stacked", step=10), DatasetSpec("sequence", 5, 10)):
        for t in range(4):
            assert single_positions(spec, t) == [0] * (spec.depth - 1) + [t]
    mean = DatasetSpec("mean", step=10)
    assert frame_indices(mean, 3) == [[0], [0], [0, 1, 2, 3]]


def test_sequence_every_sth_frame_current_last():
    spec = DatasetSpec("sequence", 4, 3)
    assert single_positions(spec, 10) == [1, 4, 7, 10]
    assert single_positions(spec, 8) == [0, 2, 5, 8]


def test_mean_step1_is_stacked_step1():
    mean, stacked = DatasetSpec("mean", step=1), DatasetSpec("stacked", step=1)
    for t in range(12):
        assert frame_indices(mean, t) == frame_indices(stacked, t)
    assert frame_indices(mean, 0) == [[0], [0], [0]]
    assert frame_indices(mean, 1) == [[0], [0], [1]]
    assert frame_indices(mean, 5) == [[3], [4], [5]]


@pytest.mark.parametrize("t, expected", [
    # ch0 = t-8..t-6, ch1 = t-5..t-3, ch2 = t-2..t; drop < 0; empty -> [0].
    (0, [[0], [0], [0]]),
    (1, [[0], [0], [0, 1]]),
    (2, [[0], [0], [0, 1, 2]]),
    (4, [[0], [0, 1], [2, 3, 4]]),
    (5, [[0], [0, 1, 2], [3, 4, 5]]),
    (7, [[0, 1], [2, 3, 4], [5, 6, 7]]),
    (9, [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
])
def test_mean_step3_hand_worked(t, expected):
    spec = DatasetSpec("mean", step=3)
    assert frame_indices(spec, t) == expected
    starts, stops = mean_ranges(3, 10)
    assert [list(range(a, b)) for a, b in zip(starts[t], stops[t])] == expected


def test_mean_ranges_arrays_step1_and_step3():
    starts, stops = mean_ranges(1, 4)
    assert starts.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]
    assert (stops == starts + 1).all()
    starts, stops = mean_ranges(3, 3)
    assert starts.tolist() == [[0, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert stops.tolist() == [[1, 1, 1], [1, 1, 2], [1, 1, 3]]
    assert starts.dtype == np.int64 and stops.dtype == np.int64


def test_storm_indices_and_errors():
    spec = DatasetSpec("stacked", step=2)
    assert frames.storm_indices(spec, 5).tolist() == [
        [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 3], [0, 2, 4]]
    assert frames.storm_indices(spec, 0).shape == (0, 3)
    with pytest.raises(ValueError, match="use mean_ranges"):
        frames.storm_indices(DatasetSpec("mean", step=2), 5)
    with pytest.raises(ValueError, match="t must be >= 0"):
        frame_indices(spec, -1)
    with pytest.raises(ValueError, match="n_frames_in_storm must be >= 0"):
        frames.storm_ranges(spec, -1)


def test_random_specs_never_use_future_or_negative_positions():
    rng = np.random.default_rng(0)
    for _ in range(300):
        kind = frames.KINDS[rng.integers(len(frames.KINDS))]  # every registered kind
        rules = kinds.REGISTRY[kind]
        step = int(rng.integers(1, 15)) if rules.uses_history else 1
        n = int(rng.integers(1, 30)) if rules.fixed_depth is None else None
        spec = DatasetSpec(kind, n, step)
        assert DatasetSpec.parse(spec.to_string()) == spec
        length = int(rng.integers(1, 60))
        starts, stops = frames.storm_ranges(spec, length)
        assert starts.shape == stops.shape == (length, spec.depth)
        for t in range(length):
            slots = frame_indices(spec, t)
            assert len(slots) == spec.depth
            # Vectorised and one-example forms agree.
            assert [list(range(a, b)) for a, b in zip(starts[t], stops[t])] == slots
            flat = [i for run in slots for i in run]
            assert min(flat) >= 0 and max(flat) <= t
            assert t - min(flat) <= spec.history_span
            assert t in slots[-1]
            if not rules.averages:
                assert slots[-1] == [t]
            # Slots run oldest first and mean runs are contiguous.
            assert flat == sorted(flat)
            assert all(run == list(range(run[0], run[-1] + 1)) for run in slots)
        # history_span is tight once the storm is long enough to reach it.
        if length > spec.history_span:
            t = length - 1
            assert t - min(i for run in frame_indices(spec, t) for i in run) == spec.history_span


# ---------------------------------------------------------------- ordering

def mixed_table():
    """Two storms; train and test rows interleaved in time, ids out of time order."""
    train = pd.DataFrame({
        "image_id": ["abc_000", "abc_002", "abc_003", "xyz_001", "xyz_000"],
        "storm_id": ["abc", "abc", "abc", "xyz", "xyz"],
        "relative_time": [0, 5400, 3600, 1800, 0],
        "ocean": [1, 1, 1, 2, 2],
    })
    test = pd.DataFrame({
        "image_id": ["abc_004", "xyz_002", "abc_001"],
        "storm_id": ["abc", "xyz", "abc"],
        "relative_time": [7200, 3600, 1800],
        "ocean": [1, 2, 1],
    })
    return pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)


def test_order_storm_frames_by_time_not_id_and_test_history_in_train():
    ordered = order_storm_frames(mixed_table())
    abc = ordered[ordered.storm_id == "abc"]
    # abc_003 is at 3600 s, before abc_002 at 5400 s: time decides, not the id string.
    assert abc.image_id.tolist() == ["abc_000", "abc_001", "abc_003", "abc_002", "abc_004"]
    assert abc.frame_pos.tolist() == [0, 1, 2, 3, 4]
    assert ordered[ordered.storm_id == "xyz"].image_id.tolist() == ["xyz_000", "xyz_001", "xyz_002"]
    assert ordered.index.tolist() == list(range(8))
    assert ordered.frame_pos.dtype == np.int64
    assert "ocean" in ordered.columns and "split" in ordered.columns

    # The test frame abc_004 (position 4) takes its history from train frames.
    ids = abc.image_id.tolist()
    spec = DatasetSpec("stacked", step=2)
    sources = [ids[i] for i in single_positions(spec, 4)]
    assert sources == ["abc_000", "abc_003", "abc_004"]
    split = dict(zip(abc.image_id, abc.split))
    assert [split[i] for i in sources] == ["train", "train", "test"]


def test_order_storm_frames_rejects_duplicate_times_naming_storm_and_ids():
    df = mixed_table()
    df.loc[df.image_id == "abc_004", "relative_time"] = 3600
    with pytest.raises(ValueError) as err:
        order_storm_frames(df)
    message = str(err.value)
    assert "storm 'abc'" in message and "3600" in message
    assert "['abc_003', 'abc_004']" in message
    assert "xyz" not in message  # xyz_002 is also at 3600 s, in another storm: no clash


def test_order_storm_frames_rejects_bad_tables():
    df = mixed_table()
    with pytest.raises(ValueError, match=r"missing columns \['relative_time'\]"):
        order_storm_frames(df.drop(columns="relative_time"))
    with pytest.raises(ValueError, match="must be numeric"):
        order_storm_frames(df.assign(relative_time=df.relative_time.astype(str)))
    with pytest.raises(ValueError, match=r"image ids appear more than once: \['abc_000'\]"):
        order_storm_frames(pd.concat([df, df.iloc[[0]]]))
    with_gap = df.astype({"relative_time": float})
    with_gap.loc[with_gap.image_id == "xyz_001", "relative_time"] = np.nan
    with pytest.raises(ValueError, match=r"relative_time missing for image ids \['xyz_001'\]"):
        order_storm_frames(with_gap)


# ---------------------------------------------------------------- explain

IDS = [f"abc_{i:03d}" for i in range(11)]


def test_explain_exact_strings():
    assert explain(DatasetSpec("single"), IDS, 3) == "abc_003 [single] ch0<-abc_003"
    assert (explain(DatasetSpec("stacked", step=5), IDS, 10)
            == "abc_010 [stacked:s5] ch0<-abc_000 ch1<-abc_005 ch2<-abc_010")
    assert (explain(DatasetSpec("mean", step=5), IDS, 10)
            == "abc_010 [mean:s5] ch0<-abc_000 ch1<-mean(abc_001..abc_005) "
               "ch2<-mean(abc_006..abc_010)")
    assert (explain(DatasetSpec("mean", step=3), IDS, 1)
            == "abc_001 [mean:s3] ch0..1<-abc_000 ch2<-mean(abc_000..abc_001)")
    assert (explain(DatasetSpec("sequence", 24, 1), IDS[:3], 2)
            == "abc_002 [sequence:n24:s1] step0..21<-abc_000 step22<-abc_001 step23<-abc_002")
    assert (explain(DatasetSpec("sequence", 3, 4), IDS, 10)
            == "abc_010 [sequence:n3:s4] step0<-abc_002 step1<-abc_006 step2<-abc_010")


def test_explain_rejects_position_past_storm():
    with pytest.raises(ValueError, match="position 3 is past the storm's 3 frames"):
        explain(DatasetSpec("single"), IDS[:3], 3)


def test_module_does_not_import_tensorflow():
    code = "import sys, tpuflow.prep.frames; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
