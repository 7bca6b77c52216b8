"""The cluster spec (one TOML file, see cluster.example.toml) and every name derived from it.

Pure: no AWS calls. deploy/ec2.py, deploy/userdata.py and the tests share these names, and
deploy/mongo/*.sh use the same ones (replica set `cfg`, shards `shardNN`, members
`<replset>-<n>.<cluster>.cloudpacs.internal`, ports 27017/27018/27019).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

PROJECT = "cloudpacs"
ROLES = ("balancer", "app", "config", "shard")
DB_ROLES = ("config", "shard")
# Security groups: one per tier; both database roles share one.
GROUPS = ("balancer", "app", "db")
GROUP_OF_ROLE = {"balancer": "balancer", "app": "app", "config": "db", "shard": "db"}
CONFIG_REPLSET = "cfg"
# A primary and two secondaries: a replica set keeps a majority with one member down.
REPLICA_SET_MEMBERS = 3
# MongoDB's default ports for mongos, --shardsvr and --configsvr.
MONGOS_PORT = 27017
SHARD_PORT = 27018
CONFIG_PORT = 27019
APP_HTTP_PORT = 8080
HTTPS_PORT = 443
HTTP_PORT = 80
SSH_PORT = 22
# Scraped by Prometheus (monitoring/README.md): node_exporter everywhere, the HAProxy stats
# frontend on the balancer's private address; the app nodes' /metrics is on APP_HTTP_PORT.
NODE_EXPORTER_PORT = 9100
HAPROXY_STATS_PORT = 8405
# Private DNS zone of the database nodes; ".internal" is reserved for private use (ICANN).
ZONE_SUFFIX = "cloudpacs.internal"
# Lower-case DNS label; short enough for "<name>-balancer" in IAM role names (64 max) and
# security group names (255 max).
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
SHARD_PATTERN = re.compile(r"^shard(\d{2,3})$")
# Debian's AMIs log in as "admin".
DEFAULT_SSH_USER = "admin"

DEFAULT_INSTANCE_TYPES = {
    "balancer": "t3.small",
    "app": "m6i.large",
    "config": "m6i.large",  # MongoDB: config servers want 2+ cores
    "shard": "r6i.xlarge",  # memory for the WiredTiger cache
}
# Data volume (GiB) of the database nodes, mounted on /var/lib/mongodb (XFS).
DEFAULT_VOLUME_GB = {"config": 50, "shard": 500}
ROOT_VOLUME_GB = 20


class SpecError(ValueError):
    """The spec file is wrong; the message says what to change."""


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    region: str
    ami: str
    key_name: str
    admin_cidr: str
    allowed_cidrs: tuple[str, ...]
    bundle: str = ""
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    public_ips: bool = True
    app_count: int = 2
    shard_count: int = 2
    database: str = "cloudpacs"
    sqs_queue_urls: tuple[str, ...] = ()
    ingest_bucket: str | None = None
    monitoring_cidr: str | None = None  # a Prometheus host: may scrape the nodes
    ssh_user: str = DEFAULT_SSH_USER
    instance_types: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_INSTANCE_TYPES))
    volume_gb: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_VOLUME_GB))

    def __post_init__(self) -> None:
        validate(self)

    @property
    def zone(self) -> str:
        return f"{self.name}.{ZONE_SUFFIX}"

    @property
    def ssm_prefix(self) -> str:
        return f"/{PROJECT}/{self.name}"

    def group_name(self, group: str) -> str:
        return f"{self.name}-{group}"

    def iam_name(self, group: str) -> str:
        return f"{self.name}-{group}"

    def hostname(self, replset: str, member: int) -> str:
        return f"{replset}-{member}.{self.zone}"

    def members(self, replset: str) -> list[str]:
        port = CONFIG_PORT if replset == CONFIG_REPLSET else SHARD_PORT
        return [f"{self.hostname(replset, m)}:{port}" for m in range(1, REPLICA_SET_MEMBERS + 1)]

    @property
    def configdb(self) -> str:
        return f"{CONFIG_REPLSET}/{','.join(self.members(CONFIG_REPLSET))}"

    def tags(self, role: str, **extra: str) -> dict[str, str]:
        return {"Project": PROJECT, "Cluster": self.name, "Role": role, **extra}


@dataclass(frozen=True)
class Node:
    """One planned instance: a role, and for database roles its replica set and member."""

    role: str
    replset: str | None = None
    member: int | None = None

    @property
    def label(self) -> str | None:
        """DNS label of a database node (cfg-1, shard02-3); None for balancer and app."""
        return None if self.replset is None else f"{self.replset}-{self.member}"

    def tags(self, spec: ClusterSpec) -> dict[str, str]:
        extra = {"Name": f"{spec.name}-{self.label or self.role}"}
        if self.replset is not None:
            extra.update(ReplicaSet=self.replset, Member=str(self.member))
        if self.role == "shard" and self.replset is not None:
            extra["Shard"] = self.replset
        return spec.tags(self.role, **extra)


def shard_name(index: int) -> str:
    return f"shard{index:02d}"


def replica_set_nodes(role: str, replset: str) -> list[Node]:
    return [Node(role, replset, m) for m in range(1, REPLICA_SET_MEMBERS + 1)]


def database_nodes(shards: list[str]) -> list[Node]:
    """Config servers, then each shard's members."""
    nodes = replica_set_nodes("config", CONFIG_REPLSET)
    for shard in shards:
        nodes += replica_set_nodes("shard", shard)
    return nodes


def initial_shards(spec: ClusterSpec) -> list[str]:
    return [shard_name(i) for i in range(1, spec.shard_count + 1)]


def next_shard(existing: list[str]) -> str:
    numbers = [int(m.group(1)) for s in existing if (m := SHARD_PATTERN.match(s))]
    return shard_name(max(numbers, default=0) + 1)


def _network(value: str, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise SpecError(f"{what}: {value!r} is not a CIDR block ({exc})") from exc


def validate(spec: ClusterSpec) -> None:
    if not NAME_PATTERN.match(spec.name):
        raise SpecError("name: 2-32 lower-case letters, digits or -, starting with a letter")
    if _network(spec.admin_cidr, "admin_cidr").prefixlen == 0:
        raise SpecError("admin_cidr: SSH from the whole internet is refused; name your network")
    if not spec.allowed_cidrs:
        raise SpecError("allowed_cidrs: name the networks that may reach the balancer")
    for cidr in spec.allowed_cidrs:
        _network(cidr, "allowed_cidrs")
    if spec.monitoring_cidr is not None:
        _network(spec.monitoring_cidr, "monitoring_cidr")
    if spec.app_count < 1 or spec.shard_count < 1:
        raise SpecError("app_count and shard_count must be at least 1")
    if spec.bundle and not spec.bundle.startswith(("s3://", "https://")):
        raise SpecError("bundle: an s3:// or https:// URL of the cloudpacs tar.gz")
    missing = [role for role in ROLES if role not in spec.instance_types]
    if missing:
        raise SpecError(f"instance_types: missing {', '.join(missing)}")


def load_spec(path: Path, overrides: Mapping[str, Any] | None = None) -> ClusterSpec:
    """Read a TOML spec; unknown keys are errors (a typo must not silently change a cluster)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"cannot read {path}: {exc}") from exc
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return spec_from_dict(data)


def spec_from_dict(data: Mapping[str, Any]) -> ClusterSpec:
    names = {f.name for f in fields(ClusterSpec)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise SpecError(f"unknown key(s): {', '.join(unknown)}")
    values = dict(data)
    for key in ("allowed_cidrs", "subnet_ids", "sqs_queue_urls"):
        if key in values:
            values[key] = tuple(values[key])
    for key, defaults in (
        ("instance_types", DEFAULT_INSTANCE_TYPES),
        ("volume_gb", DEFAULT_VOLUME_GB),
    ):
        values[key] = {**defaults, **values.get(key, {})}
    for key in ("vpc_id", "ingest_bucket", "monitoring_cidr"):
        values[key] = values.get(key) or None
    try:
        return ClusterSpec(**values)
    except TypeError as exc:
        raise SpecError(str(exc)) from exc
