"""Old run dirs still resume: the fingerprint of an unchanged configuration is byte-identical to
the one the code wrote before the configuration was declared as typed sections (the expected
hashes were computed by that code, commit 32bc77a, and must never change)."""
from tpuflow.training import config, experiment

RUN = "/runs/run-20261121-1330-cnn-lstm"
PLACED = dict(precision="mixed_bfloat16", global_batch_size=64, scaled_lr=0.002)


def _fingerprints(cfg):
    return config.fingerprint(cfg), sorted(config.fingerprints(cfg))


def test_the_library_defaults_fingerprint_as_before():
    cfg = experiment.make_config(output_dir=RUN)
    cfg = config.resolve(cfg, manifest={"n_frames": 1}).replace(**PLACED)
    assert _fingerprints(cfg) == EXPECTED["defaults"]


def test_an_experiments_flags_fingerprint_as_before():
    defaults = experiment.experiment_defaults(
        dict(dataset_kind="sequence", data_tfrec_dir="/data/data-tfrec-sequence-frames024-step001",
             batch_size=64), RUN)
    cfg = experiment.make_config(**{**defaults, "data_dir": "/data"}, output_dir=RUN, task="classification",
                                 metric="rmse", monitor="val_loss", lr=3e-4, lr_scaling="sqrt", mixup_prob=0.5,
                                 mixup_mode="cutmix", bn_momentum=0.9, view="sequence:n24:s1", use_cache=True)
    cfg = config.resolve(cfg, manifest={"n_frames": 24}, n_labels=18).replace(**PLACED)
    assert _fingerprints(cfg) == EXPECTED["experiment"]


def test_a_config_json_written_before_fingerprints_as_before():
    written = {
        "architecture": "cnn-1ch", "aug_prob": 0.5, "backbone": "EfficientNetB0", "backend": "tensorflow",
        "base_batch_size": 0, "batch_size": 32, "batch_size_per_replica": False, "bn_momentum": None,
        "cpu_replicas": 1, "data_dir": "../../data", "data_preds_dir": RUN + "/preds",
        "data_tfrec_dir": "../../data/data-tfrec-single-frames001-step001", "dataset_kind": "single", "dim": 366,
        "distributed": False, "experiment_id": "run-20261121-1330-cnn-lstm", "global_batch_size": 32,
        "initial_fold": 0, "invert": False, "jit_compile": "auto", "job": "train_val_test_score_subm",
        "jobs": ["train", "val", "test", "score", "subm"], "label_smoothing": 0.0, "lr": 0.001, "lr_factor": 0.5,
        "lr_patience": 2, "lr_scaling": "none", "metric": "rmse", "mixed_precision": "auto",
        "monitor": "val_rmse", "n_classes": 0, "n_epochs": 15, "n_folds": 5, "n_frames": 1,
        "output_dir": RUN, "precision": "float32", "quick": False, "resume": True, "scaled_lr": 0.001,
        "seed": 33, "steps_per_epoch": 0, "steps_per_execution": 0, "task": "regression", "tpu_fallback": False,
        "tpu_ip_or_name": None, "tpu_timeout_s": 10.0, "tta": None, "tta_number": 9,
        "tta_set": ["orig"], "tta_views": ["orig"], "use_cache": False, "verbose": 2, "weights": "imagenet",
        "buffer_size": 2048}
    assert _fingerprints(config.Config.from_dict(written)) == EXPECTED["config_json"]


EXPECTED = {  # computed by the code of commit 32bc77a (SECTIONS, the untyped Config)
    "defaults": ("65aa09255bda8a4b", ["65aa09255bda8a4b", "a7d854c8af6a1567", "b6e9f364ed90bd6f",
                                      "e8458a7d915ad94d"]),
    "experiment": ("6887d1adb0ba9495", ["6887d1adb0ba9495", "c94ad47da35182c9"]),
    "config_json": ("842c76e0793d11dc", ["01a3ceb3db3c3b5e", "50f94bf68238a923", "842c76e0793d11dc",
                                         "fb03be196a9442bb"]),
}
