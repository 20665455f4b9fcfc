"""Shared fixtures: tiny synthetic storms -> CV split -> records of every kind, built once per session."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

from gcs_fixture import gcs_emulator, tf_gcs_proxy_env  # noqa: E402,F401  (Cloud Storage emulator)
from tpuflow.prep import builder, frames, split, synthetic  # noqa: E402

TINY = synthetic.SyntheticConfig(seed=1, n_storms=12, n_test_only_storms=2, min_frames=6, max_frames=14, size=24)


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory) -> str:
    """Raw competition layout (CSVs, train/ and test/ JPEGs) of 14 tiny storms."""
    out = tmp_path_factory.mktemp("synthetic") / "raw"
    synthetic.make_synthetic(str(out), TINY)
    return str(out)


@pytest.fixture(scope="session")
def cv_dir(raw_dir, tmp_path_factory) -> str:
    """A data dir with the raw files and the 5-fold split (train_cv.csv, test_cv.csv, ...)."""
    train, test, labels = split.create_cv_split(raw_dir, n_folds=5, seed=33)
    split.write_cv_split(raw_dir, train, test, labels)
    return raw_dir


@pytest.fixture(scope="session")
def single_dir(cv_dir, tmp_path_factory) -> str:
    """`single` records, two shards per fold."""
    root = tmp_path_factory.mktemp("records")
    spec = frames.DatasetSpec("single")
    builder.build_datasets(cv_dir, str(root), [spec], shards_per_fold=2)
    return str(root / spec.name)


@pytest.fixture(scope="session")
def history_dirs(cv_dir, tmp_path_factory) -> dict[str, str]:
    """Records of the three history kinds, built in one pass: {kind: dataset dir}.

    `sequence` has 6 frames so that models packing 3 frames per image can read it too.
    """
    root = tmp_path_factory.mktemp("history_records")
    specs = [frames.DatasetSpec.parse(s) for s in ("stacked:s2", "mean:s2", "sequence:n6:s1")]
    builder.build_datasets(cv_dir, str(root), specs)
    return {spec.kind: str(root / spec.name) for spec in specs}


@pytest.fixture(scope="session")
def kind_dirs(single_dir, history_dirs) -> dict[str, str]:
    """A dataset dir for every dataset kind: {kind: dir}."""
    return {"single": single_dir, **history_dirs}


@pytest.fixture(scope="session")
def simsiam_backbone(cv_dir, tmp_path_factory) -> str:
    """Backbone weights file of a tiny SimSiam pretraining run (MobileNetV3Small, 32 px) on the
    raw frames, made by the command-line tool."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    out = tmp_path_factory.mktemp("simsiam") / "pretrained"
    out.mkdir()
    (out / "pretrain_record.json").write_text("{}")  # an earlier pretraining's card, before its rename
    tool = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "pretrain_simsiam.py")
    proc = subprocess.run([sys.executable, tool, f"--data_dir={cv_dir}", f"--output_dir={out}",
                           "--backbone=MobileNetV3Small", "--dim=32", "--quick"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out / "backbone.weights.h5")
