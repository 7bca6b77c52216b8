"""User-data of each role, rendered offline: valid cloud-config with the expected packages,
files and commands, no secret in it, a boot script that shellcheck accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
if str(DEPLOY) not in sys.path:
    sys.path.insert(0, str(DEPLOY))

from clusterspec import ClusterSpec, Node, spec_from_dict  # noqa: E402
from userdata import USERDATA_MAX_BYTES, render_userdata  # noqa: E402

yaml = pytest.importorskip("yaml")

BUNDLE = "https://bucket.s3.amazonaws.com/cloudpacs.tar.gz?X-Amz-Signature=abc&X-Amz-Expires=21600"
NODES = {
    "balancer": Node("balancer"),
    "app": Node("app"),
    "config": Node("config", "cfg", 1),
    "shard": Node("shard", "shard02", 3),
}
ROLE_COMMAND = {
    "balancer": "haproxy/render-config.sh",
    "app": "$PREFIX/deploy/install-app-node.sh",
    "config": "$PREFIX/deploy/mongo/install-mongod.sh",
    "shard": "$PREFIX/deploy/mongo/install-mongod.sh",
}
ROLE_PACKAGES = {
    "balancer": {"haproxy"},
    "app": {"python3", "python3-venv"},
    "config": {"xfsprogs"},
    "shard": {"xfsprogs"},
}


SPEC = {
    "name": "pacs",
    "region": "eu-west-1",
    "ami": "ami-1",
    "key_name": "ops",
    "admin_cidr": "203.0.113.10/32",
    "allowed_cidrs": ["198.51.100.0/24"],
    "sqs_queue_urls": ["https://sqs.eu-west-1.amazonaws.com/1/a", "https://sqs.x/1/b"],
}


@pytest.fixture(scope="module")
def spec() -> ClusterSpec:
    return spec_from_dict(SPEC)


def render(spec: ClusterSpec, role: str) -> tuple[str, dict[str, Any]]:
    text = render_userdata(spec, NODES[role], BUNDLE, ["10.0.1.5:8080", "10.0.2.6:8080"])
    return text, yaml.safe_load(text)


def files(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["write_files"]}


def node_env(doc: dict[str, Any]) -> dict[str, str]:
    content = files(doc)["/etc/cloudpacs/node.env"]["content"]
    return dict(shlex.split(line)[0].split("=", 1) for line in content.splitlines())


@pytest.mark.parametrize("role", list(NODES))
def test_cloud_config_has_the_packages_files_and_commands(spec: ClusterSpec, role: str) -> None:
    text, doc = render(spec, role)
    assert text.startswith("#cloud-config\n")
    assert len(text.encode()) < USERDATA_MAX_BYTES
    assert doc["package_update"] is True
    assert {"ca-certificates", "curl", "awscli"} | ROLE_PACKAGES[role] <= set(doc["packages"])
    written = files(doc)
    assert set(written) == {"/etc/cloudpacs/node.env", "/usr/local/sbin/cloudpacs-boot"}
    assert written["/usr/local/sbin/cloudpacs-boot"]["permissions"] == "0755"
    assert doc["runcmd"] == [["/usr/local/sbin/cloudpacs-boot"]]
    boot = written["/usr/local/sbin/cloudpacs-boot"]["content"]
    assert boot.startswith("#!/usr/bin/env bash\n")
    assert ROLE_COMMAND[role] in boot
    assert "fetch_bundle" in boot and "source /etc/cloudpacs/node.env" in boot
    env = node_env(doc)
    assert env["ROLE"] == role and env["CLUSTER"] == "pacs"
    assert env["SSM_PREFIX"] == "/cloudpacs/pacs" and env["BUNDLE_URL"] == BUNDLE


def test_database_nodes_know_their_replica_set(spec: ClusterSpec) -> None:
    _, config = render(spec, "config")
    env = node_env(config)
    assert env["REPLSET"] == "cfg" and env["MEMBER"] == "1"
    assert env["MEMBERS"].split() == [f"cfg-{m}.pacs.cloudpacs.internal:27019" for m in (1, 2, 3)]
    assert config["hostname"] == "cfg-1" and config["fqdn"] == "cfg-1.pacs.cloudpacs.internal"
    boot = files(config)["/usr/local/sbin/cloudpacs-boot"]["content"]
    assert "db/member.pem=member.pem" in boot and "init-replset.sh" in boot
    assert "--configsvr" in boot
    _, shard = render(spec, "shard")
    env = node_env(shard)
    assert env["REPLSET"] == "shard02" and env["MEMBER"] == "3"
    assert env["MEMBERS"].split()[0] == "shard02-1.pacs.cloudpacs.internal:27018"


def test_app_and_balancer_settings(spec: ClusterSpec) -> None:
    _, app = render(spec, "app")
    env = node_env(app)
    assert env["CONFIGDB"] == spec.configdb
    assert env["CONFIGDB"].startswith("cfg/cfg-1.pacs.cloudpacs.internal:27019,")
    assert env["SQS_QUEUES"].split() == list(spec.sqs_queue_urls)
    boot = files(app)["/usr/local/sbin/cloudpacs-boot"]["content"]
    assert "app/app.password=app.password" in boot and "app/mongos.pem=mongos.pem" in boot
    # cloudpacs' client address policy: the spec's clients; the VPC's balancer is the proxy
    assert env["ALLOWED_NETWORKS"].split() == list(spec.allowed_cidrs)
    assert 'args+=(--allowed-network "$network")' in boot
    assert "vpc-ipv4-cidr-blocks" in boot and 'args+=(--trusted-proxy "$network")' in boot
    watched = spec_from_dict({**SPEC, "monitoring_cidr": "192.0.2.0/28"})
    _, app = render(watched, "app")
    assert node_env(app)["ALLOWED_NETWORKS"].split() == ["198.51.100.0/24", "192.0.2.0/28"]
    _, balancer = render(spec, "balancer")
    assert node_env(balancer)["APP_SERVERS"].split() == ["10.0.1.5:8080", "10.0.2.6:8080"]


@pytest.mark.parametrize("role", list(NODES))
def test_no_secret_in_user_data(spec: ClusterSpec, role: str) -> None:
    text, _ = render(spec, role)
    for marker in ("PRIVATE KEY", "BEGIN CERTIFICATE", "mongodb://", "pwd:", "--password"):
        assert marker not in text


@pytest.mark.parametrize("role", ["balancer", "app", "config"])
def test_boot_script_is_valid_bash(spec: ClusterSpec, role: str, tmp_path: Path) -> None:
    _, doc = render(spec, role)
    script = tmp_path / "cloudpacs-boot"
    script.write_text(files(doc)["/usr/local/sbin/cloudpacs-boot"]["content"])
    subprocess.run(["bash", "-n", str(script)], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
    env = tmp_path / "node.env"
    env.write_text(files(doc)["/etc/cloudpacs/node.env"]["content"])
    sourced = subprocess.run(
        ["bash", "-c", f'source {env} && printf %s "$BUNDLE_URL"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sourced.stdout == BUNDLE


def test_bad_nodes_are_refused(spec: ClusterSpec) -> None:
    with pytest.raises(ValueError, match="replica set"):
        render_userdata(spec, Node("shard"), BUNDLE)
    with pytest.raises(ValueError, match="config server replica set"):
        render_userdata(spec, Node("config", "shard01", 1), BUNDLE)
    with pytest.raises(ValueError, match="unknown role"):
        render_userdata(spec, Node("cache"), BUNDLE)
