"""The run configuration: frozen once built, every flag in one section, the fingerprint from the
result sections (runtime settings never invalidate a backup), old spellings and old runs still read,
and config.json / run_card.json holding exactly the configuration a run used."""
import dataclasses
import hashlib
import json

import pytest

import tiny_experiment
from tpuflow import storage
from tpuflow.results import run_card
from tpuflow.training import config, experiment

# The hand-written exclusion list resume.py kept before the sections (for old fingerprints).
OLD_NOT_FINGERPRINTED = {
    "job", "jobs", "verbose", "resume", "output_dir", "experiment_id", "data_preds_dir", "tta_number", "tta",
    "tta_views", "tta_set", "n_folds", "initial_fold", "tpu_ip_or_name", "tpu_fallback", "tpu_timeout_s",
    "cpu_replicas", "steps_per_execution", "jit_compile", "backend", "distributed"}
NEWER_FLAGS = {"frame_cache", "overwrite", "backup_every_steps", "backup_every_minutes"}  # flags outside the fingerprint added since: such runs had no value for them


def _resolved(**kw):
    cfg = experiment.make_config(output_dir="/tmp/tpuflow-config-test", **kw)
    return cfg.replace(n_frames=1, precision="float32", global_batch_size=32, scaled_lr=cfg.lr)


def test_the_configuration_is_frozen_and_replace_makes_a_changed_copy():
    cfg = experiment.make_config()
    with pytest.raises(config.FrozenConfigError, match="cannot assign to field 'dim'"):
        cfg.dim = 8
    with pytest.raises(config.FrozenConfigError):
        del cfg.lr
    smaller = cfg.replace(dim=8)
    assert (smaller.dim, cfg.dim) == (8, 366) and smaller != cfg
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['dimm'\]"):
        cfg.replace(dimm=8)


def test_every_flag_and_derived_setting_is_in_exactly_one_section():
    names = [n for names in config.SECTIONS.values() for n in names]
    assert len(names) == len(set(names)), "a setting in two sections"
    assert set(names) == set(experiment.OUR_FLAGS) - set(config.OLD_NAMES) | set(config.DERIVED)


def test_the_configuration_declares_nothing_itself_and_knows_no_other_setting():
    assert [f.name for f in dataclasses.fields(config.Config)] == config.setting_names()
    with pytest.raises(TypeError, match="prefetch"):
        config.Config(**{**experiment.make_config().to_dict(), "prefetch": 4})


def test_flags_help_groups_and_ranges_come_from_the_sections():
    hints = {n: experiment.FLAGS[n] for n in experiment.OUR_FLAGS}
    assert hints["dim"].flag_type() == "int" and hints["dim"].default == 366 and hints["dim"].help.startswith("Image")
    assert hints["bn_momentum"].flag_type() == "float" and hints["metric"].flag_type() == "string enum"
    assert hints["resume"].flag_type() == "bool" and hints["assemble"].flag_type() == "string"
    assert hints["view"].flag_type() == "string" and hints["view"].help.startswith("Old name of --assemble")
    grouped = {title.split()[0]: names for title, names in experiment.HELP_GROUPS.items()}
    assert grouped["data"][:5] == ["data_dir", "data_tfrec_dir", "frame_store", "assemble", "dataset_kind"]
    assert grouped["data"][-1] == "view"  # an old name, listed with its section
    assert "frame_cache" in grouped["runtime"]
    assert sorted(n for names in grouped.values() for n in names) == experiment.OUR_FLAGS
    assert experiment.FLAG_RANGES["n_folds"] == ("[1, inf)", "folds to run, from --initial_fold")


def test_runtime_settings_leave_the_fingerprint_alone_and_result_settings_change_it():
    cfg = _resolved()
    same = [cfg.replace(steps_per_execution=64), cfg.replace(verbose=0), cfg.replace(backend="jax"),
            cfg.replace(n_folds=1, initial_fold=3), cfg.replace(cpu_replicas=4, tpu_timeout_s=1.0)]
    assert {config.fingerprint(c) for c in same} == {config.fingerprint(cfg)}
    changed = [cfg.replace(lr=2e-3), cfg.replace(dim=64), cfg.replace(global_batch_size=64),
               cfg.replace(metric="rmse_raw"), cfg.replace(n_frames=12), cfg.replace(precision="mixed_bfloat16")]
    assert len({config.fingerprint(c) for c in changed} | {config.fingerprint(cfg)}) == len(changed) + 1


def test_a_new_runtime_setting_keeps_the_fingerprint_and_a_new_result_setting_changes_it(monkeypatch):
    before = config.fingerprint(_resolved())

    @dataclasses.dataclass(frozen=True)
    class Runtime(config.Runtime):
        prefetch: int = config.setting(2, "Batches prefetched")

    @dataclasses.dataclass(frozen=True)
    class Training(config.Training):
        warmup_epochs: int = config.setting(0, "Epochs of linear LR warm-up")

    def with_sections(**sections):
        types = [sections.get(s.NAME, s) for s in config.SECTION_TYPES]
        monkeypatch.setattr(config, "SECTION_TYPES", tuple(types))
        extended = dataclasses.dataclass(frozen=True)(type("Config", tuple(reversed(types)), {}))
        return extended(**_resolved().to_dict(), **{f.name: f.default for s in sections.values()
                                                    for f in dataclasses.fields(s) if f.name not in config.Config.__dataclass_fields__})

    assert config.fingerprint(with_sections(runtime=Runtime)) == before
    assert config.fingerprint(with_sections(runtime=Runtime, training=Training)) != before


def test_backups_of_runs_made_before_the_sections_and_the_renames_still_match():
    cfg = _resolved()
    # how such a run spelled the competition score and the monitor that followed it
    values = {**cfg.to_dict(), "metric": "rmse", "monitor": "val_rmse"}
    values = {**{k: v for k, v in values.items() if k not in ("frame_store", "assemble")}, "view": None}
    old = {k: v for k, v in sorted(values.items()) if k not in OLD_NOT_FINGERPRINTED | NEWER_FLAGS}
    old_fingerprint = hashlib.sha256(json.dumps(old, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert old_fingerprint in config.fingerprints(cfg)
    assert config.Config.from_dict(values).metric == "rmse_rounded"
    assert config.Config.from_dict(values).monitor == "val_score"


def test_backups_of_runs_made_between_the_metric_and_the_monitor_renames_still_match():
    for metric in config.METRICS:
        cfg = _resolved(metric=metric)
        between = cfg.replace(monitor="val_rmse")  # new --metric, old --monitor
        assert config.fingerprint(between) in config.fingerprints(cfg)
        assert config.fingerprint(cfg.replace(monitor="val_loss")) not in config.fingerprints(cfg)


def test_the_old_monitor_name_is_read_as_the_metrics_validation_score_with_a_warning(capsys):
    for metric, key in (("rmse_rounded", "val_rmse_rounded"), ("rmse_raw", "val_rmse_raw")):
        cfg = experiment.make_config(monitor="val_rmse", metric=metric)
        assert (cfg.monitor, config.monitored_key(cfg)) == ("val_score", key)
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--monitor=val_rmse is the old name of --monitor=val_score" in err
    assert config.monitored_key(experiment.make_config(monitor="val_loss")) == "val_loss"


def test_the_old_metric_name_is_read_as_the_rounded_score_with_a_warning(capsys):
    cfg = experiment.make_config(metric="rmse")
    assert cfg.metric == "rmse_rounded"
    assert "--metric=rmse is the old name of --metric=rmse_rounded" in capsys.readouterr().err


def test_config_json_and_the_record_hold_the_configuration_the_run_used(cv_dir, single_dir, tmp_path):
    cfg = experiment.make_config(data_dir=cv_dir, data_tfrec_dir=single_dir, output_dir=str(tmp_path / "run"),
                                 quick=True, dim=16, batch_size=8, tta_number=0, weights=None, verbose=0,
                                 n_folds=1, job="train_val", lr_scaling="linear", base_batch_size=4)
    used = experiment.run(cfg, tiny_experiment.init_model, tiny_experiment.parse_example)["config"]
    assert (used.global_batch_size, used.scaled_lr, used.precision) == (8, cfg.lr * 2, "float32")
    assert used.n_frames == 1
    written = storage.read_json(str(tmp_path / "run" / "config.json"))
    assert written == used.to_dict()
    assert run_card.read_card(str(tmp_path / "run"))["flags"] == used.to_dict()
    assert config.Config.from_dict(written) == used
    # Scoring the run again (no devices resolved) leaves the configuration it was trained with.
    rescore = experiment.make_config(data_dir=cv_dir, output_dir=str(tmp_path / "run"), quick=True, dim=16,
                                     tta_number=0, verbose=0, n_folds=1, job="score")
    experiment.run(rescore, tiny_experiment.init_model, tiny_experiment.parse_example)
    assert storage.read_json(str(tmp_path / "run" / "config.json")) == written


def test_the_ensemble_tools_old_rmse_is_read_as_the_raw_rmse_with_a_warning(capsys):
    from tpuflow import ensemble
    assert ensemble.get_metric("rmse", "values") is ensemble.METRICS["rmse_raw"]
    assert "--metric=rmse is the old name of --metric=rmse_raw" in capsys.readouterr().err


def test_a_frame_store_given_the_old_way_is_read_as_frame_store_and_its_runs_still_resume(tmp_path, capfd):
    """`--data_tfrec_dir=<store> --view=<spec>` (before the frame store's own flags) is read as
    `--frame_store=<store> --assemble=<spec>`, each with a one-line warning; a backup made then, and
    its config.json, still match."""
    old = experiment.make_config(data_tfrec_dir="/data/frames", view="stacked:s2", output_dir=str(tmp_path))
    said = capfd.readouterr().err
    assert "--view is the old name of --assemble; read as --assemble=stacked:s2" in said
    assert "--data_tfrec_dir=/data/frames with --assemble is the old spelling of --frame_store" in said
    new = experiment.make_config(frame_store="/data/frames", assemble="stacked:s2", output_dir=str(tmp_path))
    assert capfd.readouterr().err == ""
    assert old == new and (new.frame_store, new.assemble, new.data_tfrec_dir) == ("/data/frames", "stacked:s2", None)
    cfg = new.replace(n_frames=2, precision="float32", global_batch_size=32, scaled_lr=new.lr)
    then = {k: v for k, v in config.result_settings(cfg).items() if k not in ("frame_store", "assemble")}
    then.update(data_tfrec_dir="/data/frames", view="stacked:s2")  # how such a run fingerprinted its settings
    assert hashlib.sha256(json.dumps(then, sort_keys=True, default=str).encode()).hexdigest()[:16] \
        in config.fingerprints(cfg)
    recorded = {**{k: v for k, v in cfg.to_dict().items() if k not in ("frame_store", "assemble")},
                "data_tfrec_dir": "/data/frames", "view": "stacked:s2"}  # its config.json
    assert config.Config.from_dict(recorded) == cfg
    assert config.saved_settings(recorded)["frame_store"] == "/data/frames"
    records = experiment.make_config(data_tfrec_dir="/data/records", output_dir=str(tmp_path))
    assert (records.data_tfrec_dir, records.frame_store, records.assemble) == ("/data/records", None, None)


def test_quick_assembles_without_the_frame_cache_unless_asked(tmp_path):
    """A smoke run must not decode every frame of the store first."""
    assert experiment.make_config(quick=True, output_dir=str(tmp_path / "a")).frame_cache == "off"
    asked = experiment.make_config(quick=True, frame_cache="memory", output_dir=str(tmp_path / "b"))
    assert asked.frame_cache == "memory"
    assert experiment.make_config(output_dir=str(tmp_path / "c")).frame_cache == "auto"
