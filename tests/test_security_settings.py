"""Security settings: when authentication is required, secrets from files, rule checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudpacs.config import load_settings
from cloudpacs.errors import ConfigError


def settings(**env: str):  # type: ignore[no-untyped-def]
    return load_settings(environ={f"CLOUDPACS_{k.upper()}": v for k, v in env.items()})


def test_authentication_is_required_off_loopback_unless_insecure() -> None:
    assert not settings().auth_enabled  # embedded default on 127.0.0.1 runs open
    assert settings(auth_required="true").auth_enabled
    assert settings(http_host="0.0.0.0").auth_enabled
    assert settings(http_host="10.0.0.5").auth_enabled
    assert not settings(http_host="0.0.0.0", insecure="yes").auth_enabled
    with pytest.raises(ConfigError, match="insecure"):
        settings(insecure="maybe")


def test_the_mongo_uri_file_must_be_private(tmp_path: Path) -> None:
    secret = tmp_path / "mongo-uri"
    secret.write_text("mongodb://app:s3cret@db1:27017/?authSource=admin\n")
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        settings(mongo_uri_file=str(secret))
    secret.chmod(0o600)
    loaded = settings(mongo_uri_file=str(secret))
    assert loaded.mongo_uri == "mongodb://app:s3cret@db1:27017/?authSource=admin"
    assert "s3cret" not in repr(loaded) and "s3cret" not in str(loaded.masked())
    with pytest.raises(ConfigError, match="not both"):
        settings(mongo_uri_file=str(secret), mongo_uri="mongodb://x")
    with pytest.raises(ConfigError, match="cannot read"):
        settings(mongo_uri_file=str(tmp_path / "missing"))


def test_project_rules_and_names_are_checked() -> None:
    rules = settings(
        s3_projects="scans/=imaging,scans/mri/=mri-lab", folder_project="lab"
    ).project_rules
    assert rules.for_s3("scans", "mri/a.dcm") == "mri-lab"
    assert rules.for_s3("scans", "ct/a.dcm") == "imaging"
    assert rules.for_s3("other", "a.dcm") == "default"
    assert rules.folder == "lab" and rules.importer == "default"
    for bad in (
        {"default_project": "Bad Name"},
        {"s3_projects": "no-equals"},
        {"folder_project": "../up"},
    ):
        with pytest.raises(ConfigError):
            settings(**bad)


def test_network_and_jwt_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="allowed_networks"):
        settings(allowed_networks="10.0.0.0/33")
    with pytest.raises(ConfigError, match="trusted_proxies"):
        settings(trusted_proxies="proxy.example")
    with pytest.raises(ConfigError, match="not allowed"):
        settings(jwt_algorithms="HS256")
    with pytest.raises(ConfigError, match="not allowed"):
        settings(jwt_algorithms="none")
    with pytest.raises(ConfigError, match="needs jwt_issuer"):
        settings(jwt_jwks="/etc/jwks.json")
