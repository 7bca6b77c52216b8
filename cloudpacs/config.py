"""One frozen Settings object, built once from defaults, a TOML file and CLOUDPACS_* env vars.

Precedence (lowest to highest): defaults, TOML file, environment, command-line overrides.
Nothing else in the package reads os.environ.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudpacs.errors import ConfigError
from cloudpacs.projects import ProjectRules

ENV_PREFIX = "CLOUDPACS_"
CONFLICT_POLICIES = ("keep-first", "overwrite")
AFTER_INGEST_ACTIONS = ("delete", "move")
FILE_STORES = ("auto", "gridfs", "directory")  # see storage.file_stores
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# asymmetric signatures only: no "none", and no HS* (a shared secret would let any verifier
# mint tokens, and invites the RS/HS key-confusion attack)
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Settings:
    home: Path = Path("var")
    watch: Path | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # `cloudpacs ingest` serves /metrics and /healthz here (on http_host) when set
    metrics_port: int | None = None
    mongo_uri: str | None = field(default=None, repr=False)
    database: str = "cloudpacs"
    # where original bytes live: auto = files under home when embedded, GridFS on MongoDB
    file_store: str = "auto"
    file_store_dir: Path | None = None  # the directory store's root; home/store if unset
    ferretdb_binary: Path = Path(".tools/bin/ferretdb")
    conflict_policy: str = "keep-first"
    after_ingest: str = "delete"
    ingest_concurrency: int = 8  # per daemon source, and per STOW-RS request (its parts)
    file_settle_seconds: float = 1.0
    drain_seconds: float = 10.0
    max_upload_bytes: int = 4 * 1024**3
    # Hostile input: STOW-RS limits, and parsing in worker processes (parse_workers = 0
    # parses in-process, without the time and memory limits)
    max_stow_parts: int = 1000
    max_concurrent_uploads: int = 16
    request_timeout_seconds: float = 600.0
    parse_workers: int = 2
    parse_timeout_seconds: float = 60.0
    parse_memory_bytes: int = 2 * 1024**3
    orphan_grace_seconds: float = 3600.0
    sweep_interval_seconds: float = 300.0
    log_level: str = "INFO"
    # S3 -> SQS ingest (credentials come from the standard AWS chain, never from here)
    sqs_queues: tuple[str, ...] = ()
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    sqs_wait_seconds: int = 10
    sqs_visibility_timeout_seconds: int = 300
    sqs_retry_base_seconds: float = 5.0
    # set by systemd for Type=notify units (read as NOTIFY_SOCKET, without our prefix)
    notify_socket: str | None = None
    # MongoDB URI in a file only the service user can read (instead of CLOUDPACS_MONGO_URI)
    mongo_uri_file: Path | None = None
    # research projects (docs/SECURITY.md): every instance belongs to exactly one
    default_project: str = "default"
    folder_project: str | None = None  # files from the watched folder; default_project if unset
    s3_projects: tuple[str, ...] = ()  # "bucket/prefix=project" rules, the longest prefix wins
    import_project: str | None = None  # `cloudpacs import`; default_project if unset
    # authentication: required off loopback; `insecure` runs open anywhere (and warns)
    auth_required: bool = False
    insecure: bool = False
    allowed_networks: tuple[str, ...] = ()  # client CIDRs; empty allows every address
    trusted_proxies: tuple[str, ...] = ()  # addresses whose X-Forwarded-For is believed
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_jwks: str | None = None  # JWKS file path or https:// URL; enables JWT bearer tokens
    jwt_algorithms: tuple[str, ...] = ("RS256", "ES256")
    jwt_leeway_seconds: float = 60.0
    jwt_projects_claim: str = "cloudpacs_projects"  # {"project": "role", "*": "reader"}
    token_cache_seconds: float = 5.0  # a revocation elsewhere takes effect within this
    audit_flush_seconds: float = 0.5
    # places of recently read instances, per node (storage.place_cache); 0 entries: none
    place_cache_entries: int = 20_000
    place_cache_seconds: float = 60.0
    audit_buffer_limit: int = 100_000

    @property
    def inbox(self) -> Path:
        return self.watch if self.watch is not None else self.home / "inbox"

    @property
    def done_dir(self) -> Path:
        return self.home / "done"

    @property
    def failed_dir(self) -> Path:
        return self.home / "failed"

    @property
    def file_dir(self) -> Path:
        return self.file_store_dir if self.file_store_dir is not None else self.home / "store"

    @property
    def embedded_db_dir(self) -> Path:
        return self.home / "db"

    @property
    def project_rules(self) -> ProjectRules:
        return ProjectRules.from_settings(
            self.default_project, self.folder_project, self.import_project, self.s3_projects
        )

    @property
    def loopback_only(self) -> bool:
        return self.http_host in LOOPBACK_HOSTS or self.http_host.startswith("127.")

    @property
    def auth_enabled(self) -> bool:
        """Credentials are required unless run open on purpose (`insecure`), or on loopback
        without `auth_required`."""
        if self.insecure:
            return False
        return self.auth_required or not self.loopback_only

    def masked(self) -> dict[str, Any]:
        """Effective settings for display, with secrets masked."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.mongo_uri:
            out["mongo_uri"] = mask_uri(self.mongo_uri)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def mask_uri(uri: str) -> str:
    """Hide the password in mongodb://user:password@host URIs."""
    scheme, sep, rest = uri.partition("://")
    creds, at, hosts = rest.rpartition("@")
    if not sep or not at:
        return uri
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hosts}"


def load_settings(
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build and validate Settings; raises ConfigError with one clear message."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or _path_or_none(environ.get(ENV_PREFIX + "CONFIG"))
    if config_file is not None:
        try:
            values.update(tomllib.loads(config_file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
    names = {f.name: f for f in dataclasses.fields(Settings)}
    for name in names:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            values[name] = env_value
    if environ.get("NOTIFY_SOCKET"):
        values["notify_socket"] = environ["NOTIFY_SOCKET"]
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    if values.get("mongo_uri_file"):
        if values.get("mongo_uri"):
            raise ConfigError("set mongo_uri or mongo_uri_file, not both")
        values["mongo_uri"] = read_secret_file(Path(values["mongo_uri_file"]), "mongo_uri_file")
    kwargs = {name: _coerce(name, names[name].type, value) for name, value in values.items()}
    settings = Settings(**kwargs)
    _validate(settings)
    return settings


def read_secret_file(path: Path, what: str) -> str:
    """A secret from a file that only its owner may read (mode 0600 or 0400)."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                f"{what} {path} is readable by others (mode {mode & 0o777:o}); "
                f"chmod 600 it so only the service user can read it"
            )
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _path_or_none(value: str | None) -> Path | None:
    return Path(value) if value else None


def _coerce(name: str, type_name: object, value: Any) -> Any:
    text = str(type_name)
    try:
        if text.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(item).strip() for item in items if str(item).strip())
        if "Path" in text:
            return None if value in (None, "") else Path(value)
        if text == "int":
            return _integer(value)
        if text == "int | None":
            return None if value in (None, "") else _integer(value)
        if text == "float":
            return float(value)
        if text == "bool":
            return _boolean(value)
        if "str" in text:
            optional = "None" in text
            return None if value is None or (optional and value == "") else str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: {value!r} is not a valid {text}") from exc
    return value


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def _integer(value: Any) -> int:
    """int() that refuses what would silently change meaning: 2.5 -> 2, true -> 1."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise TypeError(f"{value!r} is not an integer")
    return int(value)


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)} (not {value!r})")


def _validate_limits(s: Settings) -> None:
    _one_of("log_level", s.log_level.upper(), LOG_LEVELS)
    for name in ("file_settle_seconds", "drain_seconds", "orphan_grace_seconds"):
        if not getattr(s, name) >= 0:  # also refuses nan
            raise ConfigError(f"{name} must be a number of seconds >= 0")
    if not s.sweep_interval_seconds > 0:
        raise ConfigError("sweep_interval_seconds must be a number of seconds > 0")
    if s.max_upload_bytes < 1:
        raise ConfigError("max_upload_bytes must be at least 1")
    for name in ("max_stow_parts", "max_concurrent_uploads"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name} must be at least 1")
    for name in ("request_timeout_seconds", "parse_timeout_seconds"):
        if not getattr(s, name) > 0:
            raise ConfigError(f"{name} must be a number of seconds > 0")
    if s.parse_workers < 0:
        raise ConfigError("parse_workers must be 0 (parse in-process) or more")
    if s.parse_memory_bytes != 0 and s.parse_memory_bytes < 256 * 1024**2:
        # a worker with pydicom and numpy loaded already maps ~200 MiB
        raise ConfigError("parse_memory_bytes must be 0 (no cap) or at least 268435456")


def _validate(s: Settings) -> None:
    _one_of("conflict_policy", s.conflict_policy, CONFLICT_POLICIES)
    _one_of("after_ingest", s.after_ingest, AFTER_INGEST_ACTIONS)
    _one_of("file_store", s.file_store, FILE_STORES)
    _validate_limits(s)
    if not 0 < s.http_port < 65536:
        raise ConfigError("http_port must be between 1 and 65535")
    if not 0 <= s.sqs_wait_seconds <= 20:  # SQS long polling limit
        raise ConfigError("sqs_wait_seconds must be between 0 and 20")
    if not 1 <= s.sqs_visibility_timeout_seconds <= 43_200:  # SQS limit, 12 hours
        raise ConfigError("sqs_visibility_timeout_seconds must be between 1 and 43200")
    for url in s.sqs_queues:
        if not url.startswith(("https://", "http://")):
            raise ConfigError(f"sqs_queues: {url!r} is not a queue URL")
    if s.ingest_concurrency < 1:
        raise ConfigError("ingest_concurrency must be at least 1")
    if s.mongo_uri is not None and not s.mongo_uri.startswith(("mongodb://", "mongodb+srv://")):
        raise ConfigError("mongo_uri must start with mongodb:// or mongodb+srv://")
    s.project_rules  # noqa: B018 - validates the project names and rules
    _validate_security(s)


def _validate_security(s: Settings) -> None:
    for name in ("allowed_networks", "trusted_proxies"):
        for text in getattr(s, name):
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{name}: {text!r} is not an address or CIDR") from exc
    for alg in s.jwt_algorithms:
        if alg not in JWT_ALGORITHMS:
            raise ConfigError(
                f"jwt_algorithms: {alg!r} is not allowed (use {', '.join(JWT_ALGORITHMS)})"
            )
    if s.jwt_jwks and not (s.jwt_issuer and s.jwt_audience):
        raise ConfigError("jwt_jwks needs jwt_issuer and jwt_audience")
    if not (s.jwt_leeway_seconds >= 0 and s.token_cache_seconds >= 0):
        raise ConfigError("jwt_leeway_seconds and token_cache_seconds must be >= 0")
    if not s.audit_flush_seconds > 0:
        raise ConfigError("audit_flush_seconds must be > 0")
    if s.place_cache_entries < 0 or not s.place_cache_seconds >= 0:
        raise ConfigError("place_cache_entries and place_cache_seconds must be >= 0")
    if s.audit_buffer_limit < 1:
        raise ConfigError("audit_buffer_limit must be at least 1")
