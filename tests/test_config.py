from xray_assets.config import PROFILES, STUDY_CONF_GRID, STUDY_IOU_GRID, get_profile


def test_study_profile_carries_design_numbers():
    p = get_profile("study")
    t = p.train
    assert (t.model, t.epochs, t.imgsz, t.batch, t.optimizer) == (
        "yolov8s.yaml",
        100,
        800,
        64,
        "auto",
    )
    assert t.cos_lr is True and t.warmup_epochs == 15 and t.close_mosaic == 15
    assert (t.mosaic, t.mixup, t.erasing, t.copy_paste, t.crop_fraction) == (
        1.0,
        0.5,
        0.4,
        0.8,
        0.0,
    )
    assert (t.cls, t.weight_decay, t.conf, t.iou) == (1.5, 0.005, 0.03, 0.8)
    args = t.ultralytics_args()
    for untouched in ("hsv_h", "hsv_s", "hsv_v", "translate", "scale", "fliplr", "lr0"):
        assert untouched not in args, f"{untouched} must keep ultralytics' default"
    assert p.background_ratio == 2.0 and p.split_fractions == (0.8, 0.1, 0.1)
    assert p.consensus == "majority" and p.wbf_iou == 0.4 and not p.include_vinbigdata_no_finding
    assert STUDY_CONF_GRID == (0.03, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    assert STUDY_IOU_GRID == (0.1, 0.3, 0.5, 0.6, 0.8)
    assert (p.conf_grid, p.iou_grid) == (STUDY_CONF_GRID, STUDY_IOU_GRID)


def test_profiles_are_one_config_object_each():
    assert set(PROFILES) == {"study", "demo", "smoke"}
    for name, p in PROFILES.items():
        assert p.name == name
        assert set(p.conf_grid) <= set(STUDY_CONF_GRID) and set(p.iou_grid) <= set(STUDY_IOU_GRID)
    assert PROFILES["demo"].train.model == "yolov8n.yaml"


def test_unknown_profile_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        get_profile("nope")


def test_train_args_unknown_to_ultralytics_are_reported_not_passed():
    from xray_assets.train import ultralytics_train_args

    known, dropped = ultralytics_train_args(get_profile("study").train)
    assert known["cls"] == 1.5 and known["copy_paste"] == 0.8
    from ultralytics.cfg import DEFAULT_CFG_DICT

    assert set(known) <= set(DEFAULT_CFG_DICT)
    assert set(dropped) == {k for k in ("crop_fraction",) if k not in DEFAULT_CFG_DICT}


def test_materialize_run_config_merges_key_by_key_and_rejects_a_non_mapping(tmp_path):
    import pytest

    from xray_assets import cli
    from xray_assets.backfill import merge_config

    base = {
        "resources": {"xray": {"config": {"profile": "demo"}}},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    extra = {
        "resources": {"xray": {"config": {"storage_dir": "/x"}}},
        "ops": {"trained_models": {"config": {"epochs": 3}}},
    }
    merged = merge_config(base, extra)
    assert merged["resources"]["xray"]["config"] == {"profile": "demo", "storage_dir": "/x"}, (
        "the profile is kept"
    )
    assert (
        merged["ops"]["trained_models"]["config"]["epochs"] == 3
        and merged["loggers"] == base["loggers"]
    )
    assert base["resources"]["xray"]["config"] == {"profile": "demo"}, "the base is not changed"
    bad = tmp_path / "run.yaml"
    bad.write_text("- epochs: 3\n")
    with pytest.raises(SystemExit, match="run.yaml: run config must be a mapping"):
        cli.main(["materialize", "--config", str(bad)])


def test_settings_resolve_without_writing_defaults_into_the_environment(monkeypatch, tmp_path):
    """One table of defaults, read where needed: building the code location binds the variables
    that are set and leaves the rest to their defaults, writing nothing into os.environ (it used to
    write every default there, twice)."""
    import os

    from xray_assets.config import ENV_DEFAULTS, Settings
    from xray_assets.definitions import build_definitions
    from xray_assets.defs.resources import XrayResource

    for name in ENV_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XRAY_DATA_DIR", str(tmp_path / "data"))
    before = dict(os.environ)
    resource, settings = XrayResource.from_env(), Settings.from_env()
    build_definitions()
    assert dict(os.environ) == before, "nothing written into os.environ"
    assert resource.data_dir.env_var_name == "XRAY_DATA_DIR", (
        "a set variable is bound (the UI names it)"
    )
    assert resource.profile == "" and resource.profile_name == "demo" == settings.profile
    assert resource.margin == 0.01 == settings.champion_margin
    assert (
        resource.data_dir.get_value() == str(tmp_path / "data")
        and settings.data_dir == (tmp_path / "data").resolve()
    )
    assert (
        resource.root == str(settings.storage_dir)
        and resource.tracking_uri == settings.mlflow_tracking_uri
    )


def test_one_resolution_for_resource_cli_and_app(monkeypatch, tmp_path):
    """The Dagster resource, the CLI and the web app read their settings through one function,
    `Settings.resolve`: a field set on the resource wins over its variable, a variable over the
    default, and the limits the web app and the decoders use come from the same object.
    Catches: the resource resolving a setting its own way (a second copy of the defaults or of the
    storage-root rule) and disagreeing with the CLI."""
    from xray_assets.config import ENV_DEFAULTS, Settings
    from xray_assets.defs.resources import XrayResource

    for name in ENV_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XRAY_STORAGE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("XRAY_DECODE_WORKERS", "3")
    monkeypatch.setenv("XRAY_TORCH_THREADS", "5")
    monkeypatch.setenv("XRAY_ALLOW_DOWNLOADS", "no")
    resource = XrayResource(profile="smoke", storage_dir="s3://bucket/prefix/")
    settings = resource.settings
    assert settings == Settings.resolve(profile="smoke", storage_dir="s3://bucket/prefix/")
    assert settings.profile == "smoke" and settings.storage_dir == "s3://bucket/prefix"
    assert resource.storage.url == "s3://bucket/prefix/smoke"
    assert settings.decode.workers == 3 and settings.threads() == 5
    assert settings.downloads_allowed() is False
    assert Settings.resolve(profile="study").downloads_allowed() is False  # the variable wins
    monkeypatch.delenv("XRAY_ALLOW_DOWNLOADS")
    assert Settings.resolve(profile="study").downloads_allowed() is True  # the profile's own
    plain = Settings.from_env()
    assert plain.storage_dir == (tmp_path / "store").resolve() and plain.profile == "demo"
    assert XrayResource().settings == plain
