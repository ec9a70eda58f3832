"""The shipped systemd deployment: the config the unit reads puts every path where the unit
lets the service work (relative paths would resolve against /etc/osteoflag/)."""

from __future__ import annotations

from pathlib import Path

from osteoflag.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "osteoflag.service"


def _unit(key: str) -> str:
    [value] = [
        line.split("=", 1)[1].strip()
        for line in UNIT.read_text().splitlines()
        if line.startswith(f"{key}=")
    ]
    return value


def test_deploy_config_paths_are_absolute_and_inside_the_units_layout() -> None:
    settings = load_settings(ROOT / "deploy" / "osteoflag.toml")
    writable = Path(_unit("ReadWritePaths"))
    code = Path(_unit("WorkingDirectory"))
    assert _unit("Environment") == "OSTEOFLAG_CONFIG=/etc/osteoflag/osteoflag.toml"
    assert settings.storage.path == writable
    database = settings.storage.database_url.removeprefix("sqlite:///")
    assert Path(database).is_absolute() and Path(database).parent == writable
    assert settings.model.bundle == code / "models" / "default"


def test_deploy_config_differs_from_the_default_only_in_its_paths() -> None:
    deploy = load_settings(ROOT / "deploy" / "osteoflag.toml").model_dump()
    default = load_settings(ROOT / "config" / "osteoflag.toml").model_dump()
    for settings in (deploy, default):
        settings["storage"].pop("path")
        settings["storage"].pop("database_url")
        settings["model"].pop("bundle")
    assert deploy == default
