"""EC2 user-data (cloud-config) per role, rendered offline from deploy/templates/.

Pure: deploy/ec2.py passes the result to RunInstances; tests/deploy/test_userdata.py checks it.
The user-data holds no secret (it is readable through the EC2 API): a boot script
(templates/boot-common.sh + boot-<role>.sh) fetches the bundle and the role's secrets from SSM
Parameter Store with the instance role, then runs the role's install script from deploy/.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from clusterspec import (
    APP_HTTP_PORT,
    CONFIG_REPLSET,
    DB_ROLES,
    HAPROXY_STATS_PORT,
    ROLES,
    ClusterSpec,
    Node,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
# EC2 refuses user-data over 16 KiB (before base64).
USERDATA_MAX_BYTES = 16 * 1024
# How long member 1 waits for the other members before initiating its replica set.
INIT_WAIT_SECONDS = 1800
# node_exporter listens on 9100; only monitoring_cidr may reach it (security groups).
COMMON_PACKAGES = (
    "ca-certificates",
    "curl",
    "gnupg",
    "awscli",
    "chrony",
    "prometheus-node-exporter",
)
ROLE_PACKAGES: Mapping[str, tuple[str, ...]] = {
    "balancer": ("haproxy",),
    "app": ("python3", "python3-venv"),
    "config": ("xfsprogs",),
    "shard": ("xfsprogs",),
}
BOOT_SCRIPT = {
    "balancer": "boot-balancer.sh",
    "app": "boot-app.sh",
    "config": "boot-db.sh",
    "shard": "boot-db.sh",
}
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Values written into YAML scalars unquoted must be this plain.
PLAIN = re.compile(r"^[A-Za-z0-9._/-]+$")
BLOCK_INDENT = " " * 6


def packages(role: str) -> list[str]:
    return [*COMMON_PACKAGES, *ROLE_PACKAGES[role]]


def node_env(
    spec: ClusterSpec, node: Node, bundle_url: str, app_servers: Sequence[str] = ()
) -> dict[str, str]:
    """The settings of one node, written to /etc/cloudpacs/node.env and read by its boot."""
    env = {
        "CLUSTER": spec.name,
        "ROLE": node.role,
        "REGION": spec.region,
        "SSM_PREFIX": spec.ssm_prefix,
        "BUNDLE_URL": bundle_url,
        "DATABASE": spec.database,
    }
    if node.role in DB_ROLES:
        assert node.replset is not None and node.member is not None
        env.update(
            REPLSET=node.replset,
            MEMBER=str(node.member),
            MEMBERS=" ".join(spec.members(node.replset)),
            FQDN=spec.hostname(node.replset, node.member),
            INIT_WAIT_SECONDS=str(INIT_WAIT_SECONDS),
        )
    elif node.role == "app":
        scrapers = (spec.monitoring_cidr,) if spec.monitoring_cidr else ()
        env.update(
            CONFIGDB=spec.configdb,
            HTTP_PORT=str(APP_HTTP_PORT),
            SQS_QUEUES=" ".join(spec.sqs_queue_urls),
            # cloudpacs' allowed_networks (the balancer's VPC is added on the node)
            ALLOWED_NETWORKS=" ".join((*spec.allowed_cidrs, *scrapers)),
        )
    else:
        env["APP_SERVERS"] = " ".join(app_servers)
        env["HAPROXY_STATS_PORT"] = str(HAPROXY_STATS_PORT) if spec.monitoring_cidr else ""
    return env


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Replace every {{name}}; a missing value is an error, never an empty string."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        return values[name]

    return PLACEHOLDER.sub(value, template)


def _block(text: str) -> str:
    """Indent text as the content of a YAML literal block (`content: |`)."""
    return "\n".join(BLOCK_INDENT + line if line else "" for line in text.splitlines())


def boot_script(role: str) -> str:
    common = (TEMPLATES / "boot-common.sh").read_text()
    return common + (TEMPLATES / BOOT_SCRIPT[role]).read_text()


def _hostname_lines(spec: ClusterSpec, node: Node) -> str:
    if node.replset is None or node.member is None:
        return "# hostname: EC2's default (ip-...)"
    return f"hostname: {node.label}\nfqdn: {spec.hostname(node.replset, node.member)}"


def render_userdata(
    spec: ClusterSpec, node: Node, bundle_url: str, app_servers: Sequence[str] = ()
) -> str:
    """The cloud-config user-data of one node."""
    if node.role not in ROLES:
        raise ValueError(f"unknown role {node.role!r}")
    if node.role in DB_ROLES and (node.replset is None or node.member is None):
        raise ValueError("a database node needs its replica set and member number")
    if node.role == "config" and node.replset != CONFIG_REPLSET:
        raise ValueError(f"the config server replica set is {CONFIG_REPLSET!r}")
    env = node_env(spec, node, bundle_url, app_servers)
    for key in ("CLUSTER", "REGION", "SSM_PREFIX"):
        if not PLAIN.match(env[key]):
            raise ValueError(f"{key} {env[key]!r} is not a plain name")
    env_text = "".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items())
    text = render_template(
        (TEMPLATES / "cloud-config.yaml.in").read_text(),
        {
            "role": node.role,
            "cluster": spec.name,
            "ssm_prefix": spec.ssm_prefix,
            "hostname": _hostname_lines(spec, node),
            "packages": "\n".join(f"  - {name}" for name in packages(node.role)),
            "node_env": _block(env_text),
            "boot_script": _block(boot_script(node.role)),
        },
    )
    size = len(text.encode())
    if size > USERDATA_MAX_BYTES:
        raise ValueError(f"user-data of {size} bytes is over EC2's {USERDATA_MAX_BYTES}")
    return text
