"""Settings: precedence (defaults < TOML < environment < overrides), coercion, validation
with one clear message, and secrets masked for display."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudpacs.config import Settings, load_settings, mask_uri
from cloudpacs.errors import ConfigError


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cloudpacs.toml"
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.inbox == Path("var/inbox")
    assert (settings.failed_dir, settings.done_dir) == (Path("var/failed"), Path("var/done"))
    assert settings.embedded_db_dir == Path("var/db")
    assert settings.mongo_uri is None  # the embedded FerretDB


@pytest.mark.parametrize(
    ("in_toml", "in_env", "override", "expected"),
    [
        (None, None, None, 8080),
        (9001, None, None, 9001),
        (9001, "9002", None, 9002),
        (9001, "9002", 9003, 9003),
        (None, "9002", None, 9002),
        (None, None, 9003, 9003),
        (9001, None, 9003, 9003),
    ],
)
def test_precedence_defaults_toml_environment_overrides(
    tmp_path: Path, in_toml: int | None, in_env: str | None, override: int | None, expected: int
) -> None:
    config = toml(tmp_path, f"http_port = {in_toml}\n" if in_toml else "")
    environ = {"CLOUDPACS_HTTP_PORT": in_env} if in_env else {}
    settings = load_settings(config, {"http_port": override}, environ)
    assert settings.http_port == expected


def test_each_layer_contributes_its_own_keys(tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        'database = "from_toml"\nconflict_policy = "overwrite"\nfile_settle_seconds = 2.5\n',
    )
    environ = {"CLOUDPACS_DATABASE": "from_env", "CLOUDPACS_INGEST_CONCURRENCY": "3"}
    settings = load_settings(config, {"home": tmp_path / "h", "watch": None}, environ)
    assert settings.database == "from_env"
    assert settings.conflict_policy == "overwrite"
    assert settings.file_settle_seconds == 2.5
    assert settings.ingest_concurrency == 3
    assert settings.home == tmp_path / "h"
    assert settings.watch is None  # an override of None means "not given"
    assert settings.inbox == tmp_path / "h" / "inbox"


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    config = toml(tmp_path, 'after_ingest = "move"\nwatch = "/data/in"\n')
    settings = load_settings(environ={"CLOUDPACS_CONFIG": str(config)})
    assert settings.after_ingest == "move"
    assert settings.inbox == Path("/data/in")


def test_environment_strings_are_coerced() -> None:
    settings = load_settings(
        environ={
            "CLOUDPACS_HOME": "/srv/pacs",
            "CLOUDPACS_FILE_SETTLE_SECONDS": "0.25",
            "CLOUDPACS_MAX_UPLOAD_BYTES": "1024",
            "CLOUDPACS_WATCH": "",
            "CLOUDPACS_MONGO_URI": "",
            "CLOUDPACS_LOG_LEVEL": "debug",
        }
    )
    assert settings.home == Path("/srv/pacs")
    assert settings.file_settle_seconds == 0.25
    assert settings.max_upload_bytes == 1024
    assert settings.watch is None  # empty means unset
    assert settings.mongo_uri is None
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CLOUDPACS_CONFLICT_POLICY": "bogus"}, "conflict_policy must be one of keep-first"),
        ({"CLOUDPACS_AFTER_INGEST": "shred"}, "after_ingest must be one of delete, move"),
        ({"CLOUDPACS_HTTP_PORT": "0"}, "http_port must be between 1 and 65535"),
        ({"CLOUDPACS_HTTP_PORT": "65536"}, "http_port must be between 1 and 65535"),
        ({"CLOUDPACS_HTTP_PORT": "eighty"}, "setting http_port: 'eighty' is not a valid int"),
        ({"CLOUDPACS_INGEST_CONCURRENCY": "0"}, "ingest_concurrency must be at least 1"),
        ({"CLOUDPACS_DRAIN_SECONDS": "soon"}, "setting drain_seconds: 'soon' is not a valid"),
        ({"CLOUDPACS_FILE_SETTLE_SECONDS": "-1"}, "file_settle_seconds must be a number of"),
        ({"CLOUDPACS_ORPHAN_GRACE_SECONDS": "nan"}, "orphan_grace_seconds must be a number of"),
        ({"CLOUDPACS_SWEEP_INTERVAL_SECONDS": "0"}, "sweep_interval_seconds must be"),
        ({"CLOUDPACS_MAX_UPLOAD_BYTES": "0"}, "max_upload_bytes must be at least 1"),
        ({"CLOUDPACS_MAX_STOW_PARTS": "0"}, "max_stow_parts must be at least 1"),
        ({"CLOUDPACS_MAX_CONCURRENT_UPLOADS": "0"}, "max_concurrent_uploads must be at least"),
        ({"CLOUDPACS_REQUEST_TIMEOUT_SECONDS": "0"}, "request_timeout_seconds must be a number"),
        ({"CLOUDPACS_PARSE_TIMEOUT_SECONDS": "nan"}, "parse_timeout_seconds must be a number"),
        ({"CLOUDPACS_PARSE_WORKERS": "-1"}, "parse_workers must be 0 (parse in-process) or"),
        ({"CLOUDPACS_PARSE_MEMORY_BYTES": "1024"}, "parse_memory_bytes must be 0 (no cap) or"),
        ({"CLOUDPACS_LOG_LEVEL": "chatty"}, "log_level must be one of DEBUG, INFO"),
        ({"CLOUDPACS_MONGO_URI": "http://db/"}, "mongo_uri must start with mongodb://"),
    ],
)
def test_invalid_values_are_refused_with_a_clear_message(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=environ)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('colour = "blue"\nshape = 1\n', "unknown setting(s): colour, shape"),
        ("[http]\nport = 1\n", "unknown setting(s): http"),
        ("http_port = 80.5\n", "setting http_port: 80.5 is not a valid int"),
        ("http_port = true\n", "setting http_port: True is not a valid int"),
        ("watch = 5\n", "setting watch: 5 is not a valid Path | None"),
        ("http_port = \n", "cannot read config file"),
    ],
)
def test_invalid_toml_is_refused_with_a_clear_message(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(toml(tmp_path, text), environ={})
    assert str(caught.value).startswith(message)


def test_a_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*missing\.toml"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_a_whole_number_in_toml_is_accepted_for_an_int(tmp_path: Path) -> None:
    assert load_settings(toml(tmp_path, "http_port = 9000.0\n"), environ={}).http_port == 9000


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("mongodb://user:secret@127.0.0.1:1/", "mongodb://user:***@127.0.0.1:1/"),
        (
            "mongodb+srv://admin:p%40ss@cluster0.example.net/db?retryWrites=true",
            "mongodb+srv://admin:***@cluster0.example.net/db?retryWrites=true",
        ),
        (
            "mongodb://a:b@h1:27017,h2:27017/?replicaSet=rs",
            "mongodb://a:***@h1:27017,h2:27017/?replicaSet=rs",
        ),
        ("mongodb://127.0.0.1:27017/", "mongodb://127.0.0.1:27017/"),
    ],
)
def test_mask_uri_hides_the_password(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_masked_settings_and_repr_never_show_the_password() -> None:
    settings = load_settings(environ={"CLOUDPACS_MONGO_URI": "mongodb://u:hunter2@db:27017/"})
    shown = settings.masked()
    assert shown["mongo_uri"] == "mongodb://u:***@db:27017/"
    assert "hunter2" not in str(shown)
    assert "hunter2" not in repr(settings)
    assert shown["home"] == "var"  # paths shown as strings (JSON-ready)
    assert settings.mongo_uri == "mongodb://u:hunter2@db:27017/"  # the real value is kept
