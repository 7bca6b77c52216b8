"""deploy/ec2.py against a real moto server on loopback (never AWS): idempotent up, exact
security group rules, scale-app, add-shard, status, down, dry runs, secrets."""

from __future__ import annotations

import base64
import json
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
if str(DEPLOY) not in sys.path:
    sys.path.insert(0, str(DEPLOY))

import ec2  # noqa: E402
from clusterspec import ClusterSpec, spec_from_dict  # noqa: E402

REGION = "us-east-1"
ADMIN_CIDR = "203.0.113.10/32"
ALLOWED = ("198.51.100.0/24", "192.0.2.0/25")


def make_spec(**changes: Any) -> ClusterSpec:
    values: dict[str, Any] = {
        "name": f"t{uuid.uuid4().hex[:8]}",
        "region": REGION,
        "ami": "ami-12c6146b",
        "key_name": "ops",
        "admin_cidr": ADMIN_CIDR,
        "allowed_cidrs": ALLOWED,
        "bundle": "https://artifacts.example.invalid/cloudpacs.tar.gz",
        "app_count": 2,
        "shard_count": 2,
        "sqs_queue_urls": ("https://sqs.us-east-1.amazonaws.com/123456789012/ingest",),
        "ingest_bucket": "dicom-drop",
    }
    values.update(changes)
    return spec_from_dict(values)


@pytest.fixture(scope="module")
def clients(moto_endpoint: str) -> ec2.Clients:
    return ec2.make_clients(REGION, moto_endpoint)


def cluster(
    clients: ec2.Clients, spec: ClusterSpec, **kwargs: Any
) -> tuple[ec2.Cluster, list[str]]:
    lines: list[str] = []
    return ec2.Cluster(spec, clients, out=lines.append, sleep=lambda _: None, **kwargs), lines


def roles(c: ec2.Cluster) -> Counter[str]:
    return Counter(ec2.tags_of(i)["Role"] for i in c.instances())


def groups(clients: ec2.Clients, spec: ClusterSpec) -> dict[str, dict[str, Any]]:
    names = [spec.group_name(g) for g in ("balancer", "app", "db")]
    found = clients.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": names}])[
        "SecurityGroups"
    ]
    return {g["GroupName"].rsplit("-", 1)[1]: g for g in found}


@pytest.fixture(scope="module")
def small(clients: ec2.Clients) -> tuple[ClusterSpec, ec2.Cluster]:
    """One cluster (1 shard, 1 app node) for the tests that only look at it."""
    spec = make_spec(shard_count=1, app_count=1)
    c, _ = cluster(clients, spec)
    c.up()
    return spec, c


def test_up_twice_creates_groups_and_instances_once(clients: ec2.Clients) -> None:
    spec = make_spec(shard_count=2, app_count=2)
    c, lines = cluster(clients, spec)
    c.up()
    assert roles(c) == {"balancer": 1, "app": 2, "config": 3, "shard": 6}
    assert len(groups(clients, spec)) == 3
    assert sum(line.startswith("launch") for line in lines) == 12

    lines.clear()
    c.up()
    assert roles(c) == {"balancer": 1, "app": 2, "config": 3, "shard": 6}
    assert len(groups(clients, spec)) == 3
    assert not [line for line in lines if line.startswith(("launch", "create", "allow"))]


def test_instances_are_tagged_and_carry_their_user_data(
    clients: ec2.Clients, small: tuple[ClusterSpec, ec2.Cluster]
) -> None:
    yaml = pytest.importorskip("yaml")
    spec, c = small
    for instance in c.instances():
        tags = ec2.tags_of(instance)
        assert tags["Project"] == "cloudpacs" and tags["Cluster"] == spec.name
        attribute = clients.ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="userData"
        )
        userdata = yaml.safe_load(base64.b64decode(attribute["UserData"]["Value"]))
        env = userdata["write_files"][0]["content"]
        assert f"ROLE={tags['Role']}\n" in env
        if tags["Role"] == "shard":
            assert tags["Shard"] == "shard01" and tags["ReplicaSet"] == "shard01"
            assert f"MEMBER={tags['Member']}\n" in env
    balancer_env = next(
        base64.b64decode(
            clients.ec2.describe_instance_attribute(
                InstanceId=i["InstanceId"], Attribute="userData"
            )["UserData"]["Value"]
        ).decode()
        for i in c.instances("balancer")
    )
    app_ip = c.instances("app")[0]["PrivateIpAddress"]
    assert f"APP_SERVERS={app_ip}:8080" in balancer_env


def test_security_group_rules_are_exactly_as_specified(
    clients: ec2.Clients, small: tuple[ClusterSpec, ec2.Cluster]
) -> None:
    spec, c = small
    sgs = groups(clients, spec)
    ids = {name: sg["GroupId"] for name, sg in sgs.items()}

    def ingress(name: str) -> set[tuple[int, int, str, str]]:
        out = set()
        for p in sgs[name]["IpPermissions"]:
            assert p["IpProtocol"] == "tcp"
            assert not p.get("Ipv6Ranges") and not p.get("PrefixListIds")
            out |= {(p["FromPort"], p["ToPort"], "cidr", r["CidrIp"]) for r in p["IpRanges"]}
            out |= {
                (p["FromPort"], p["ToPort"], "group", g["GroupId"]) for g in p["UserIdGroupPairs"]
            }
        return out

    ssh = (22, 22, "cidr", ADMIN_CIDR)
    assert ingress("balancer") == {
        ssh,
        *((443, 443, "cidr", cidr) for cidr in ALLOWED),
        *((80, 80, "cidr", cidr) for cidr in ALLOWED),
    }
    assert ingress("app") == {ssh, (8080, 8080, "group", ids["balancer"])}
    assert ingress("db") == {
        ssh,
        (27017, 27019, "group", ids["app"]),
        (27017, 27019, "group", ids["db"]),
    }
    # every instance is in its tier's group only
    for instance in c.instances():
        role = ec2.tags_of(instance)["Role"]
        tier = {"config": "db", "shard": "db"}.get(role, role)
        groups_of = [g["GroupId"] for n in instance["NetworkInterfaces"] for g in n["Groups"]]
        assert groups_of == [ids[tier]]


def test_up_revokes_a_rule_added_by_hand(clients: ec2.Clients) -> None:
    spec = make_spec(shard_count=1, app_count=1)
    c, lines = cluster(clients, spec)
    c.up()
    app = groups(clients, spec)["app"]["GroupId"]
    clients.ec2.authorize_security_group_ingress(
        GroupId=app,
        IpPermissions=[
            {
                "IpProtocol": "tcp",
                "FromPort": 8080,
                "ToPort": 8080,
                "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            }
        ],
    )
    lines.clear()
    c.up()
    assert any(line.startswith("revoke") and "0.0.0.0/0" in line for line in lines)
    ranges = [r for p in groups(clients, spec)["app"]["IpPermissions"] for r in p["IpRanges"]]
    assert {r["CidrIp"] for r in ranges} == {ADMIN_CIDR}


def test_scale_app_to_three_then_one(clients: ec2.Clients) -> None:
    spec = make_spec(shard_count=1, app_count=1)
    c, _ = cluster(clients, spec)
    c.up()
    c.scale_app(3)
    apps = c.instances("app")  # oldest first (EC2's LaunchTime has 1 s resolution)
    assert len(apps) == 3
    c.scale_app(1)
    assert [i["InstanceId"] for i in c.instances("app")] == [apps[0]["InstanceId"]]
    terminated = clients.ec2.describe_instances(InstanceIds=[a["InstanceId"] for a in apps[1:]])
    states = {i["State"]["Name"] for r in terminated["Reservations"] for i in r["Instances"]}
    assert states <= {"shutting-down", "terminated"}
    assert roles(c)["shard"] == 3 and roles(c)["balancer"] == 1


def test_add_shard_launches_three_members_of_the_new_shard(clients: ec2.Clients) -> None:
    spec = make_spec(shard_count=1, app_count=1)
    c, lines = cluster(clients, spec)
    c.up()
    assert c.add_shard() == "shard02"
    members = [ec2.tags_of(i) for i in c.instances("shard") if ec2.tags_of(i)["Shard"] == "shard02"]
    assert sorted(t["Member"] for t in members) == ["1", "2", "3"]
    assert {t["ReplicaSet"] for t in members} == {"shard02"}
    assert any("add-shard.sh --shard shard02" in line for line in lines)
    # the members have DNS names in the cluster's private zone
    zone = c.zone_id()
    assert zone is not None
    names = set(c._records(zone))
    assert {f"shard02-{m}.{spec.zone}" for m in (1, 2, 3)} <= names
    # naming it again completes it, never duplicates it
    assert c.add_shard("shard02") == "shard02"
    assert roles(c)["shard"] == 6


def test_status_lists_every_role(
    small: tuple[ClusterSpec, ec2.Cluster],
    moto_endpoint: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec, c = small
    rows = c.status()
    assert [r["role"] for r in rows] == ["balancer", "app"] + ["config"] * 3 + ["shard"] * 3
    assert all(r["private_ip"] for r in rows)
    spec_file = tmp_path / "cluster.toml"
    spec_file.write_text(
        f'name = "{spec.name}"\nregion = "{REGION}"\nami = "ami-12c6146b"\nkey_name = "ops"\n'
        f'admin_cidr = "{ADMIN_CIDR}"\nallowed_cidrs = ["198.51.100.0/24"]\n'
    )
    argv = ["--spec", str(spec_file), "--endpoint-url", moto_endpoint]
    assert ec2.main([*argv, "status", "--json"]) == 0
    assert {r["role"] for r in json.loads(capsys.readouterr().out)} == {
        "balancer",
        "app",
        "config",
        "shard",
    }
    assert ec2.main([*argv, "status"]) == 0
    assert capsys.readouterr().out.splitlines()[0].split()[:3] == ["role", "name", "id"]


def test_down_terminates_everything_and_deletes_the_groups(clients: ec2.Clients) -> None:
    spec = make_spec(shard_count=1, app_count=1)
    other = make_spec(shard_count=1, app_count=1)
    c, _ = cluster(clients, spec)
    keep, _ = cluster(clients, other)
    c.up()
    keep.up()
    c.down()
    assert c.instances() == []
    assert groups(clients, spec) == {}
    assert c.zone_id() is None
    with pytest.raises(clients.iam.exceptions.NoSuchEntityException):
        clients.iam.get_role(RoleName=spec.iam_name("app"))
    assert sum(roles(keep).values()) == 8  # another cluster is untouched
    c.down()  # nothing left: a no-op


def test_dry_run_changes_nothing(clients: ec2.Clients) -> None:
    spec = make_spec(shard_count=1, app_count=1)
    c, lines = cluster(clients, spec, dry_run=True)
    c.up()
    assert f"would create security group {spec.group_name('db')}" in lines
    assert sum(line.startswith("would launch") for line in lines) == 8
    assert any(line.startswith("would allow") and "27017-27019" in line for line in lines)
    assert groups(clients, spec) == {} and c.instances() == []
    real, _ = cluster(clients, spec)
    real.up()
    lines.clear()
    c.down()
    assert any(line.startswith("would terminate 8 instance") for line in lines)
    assert len(real.instances()) == 8


def test_cli_dry_run_up_and_down_needs_yes(
    clients: ec2.Clients, tmp_path: Path, moto_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = tmp_path / "cluster.toml"
    spec_file.write_text(
        f'name = "nope"\nregion = "{REGION}"\nami = "ami-1"\nkey_name = "ops"\n'
        f'admin_cidr = "{ADMIN_CIDR}"\nallowed_cidrs = ["198.51.100.0/24"]\n'
    )
    argv = ["--spec", str(spec_file), "--endpoint-url", moto_endpoint]
    assert ec2.main([*argv, "up", "--dry-run"]) == 0
    assert "would launch balancer" in capsys.readouterr().out
    assert ec2.main([*argv, "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert ec2.main([*argv, "down"]) == 2


def test_put_secrets_stores_secure_strings(clients: ec2.Clients, tmp_path: Path) -> None:
    spec = make_spec()
    for name in ec2.SECRET_PARAMETERS:
        (tmp_path / name).write_text(f"secret of {name}\n")
    (tmp_path / "ca.key").write_text("never uploaded")
    c, _ = cluster(clients, spec)
    stored = c.put_secrets(tmp_path)
    assert f"{spec.ssm_prefix}/db/member.pem" in stored
    assert not any("ca.key" in name for name in stored)
    value = clients.ssm.get_parameter(
        Name=f"{spec.ssm_prefix}/app/app.password", WithDecryption=True
    )["Parameter"]
    assert value["Type"] == "SecureString" and value["Value"] == "secret of app.password\n"
    (tmp_path / "keyfile").unlink()
    with pytest.raises(ec2.SpecError, match="keyfile"):
        c.put_secrets(tmp_path)


def test_monitoring_cidr_opens_the_scraped_ports_only() -> None:
    ids = {"balancer": "sg-b", "app": "sg-a", "db": "sg-d"}
    plain = ec2.desired_rules(make_spec(), ids)
    watched = ec2.desired_rules(make_spec(monitoring_cidr="10.0.0.50/32"), ids)
    added = {g: {(r.from_port, r.source) for r in watched[g] - plain[g]} for g in ids}
    assert added == {
        "balancer": {(9100, "10.0.0.50/32"), (8405, "10.0.0.50/32")},
        "app": {(9100, "10.0.0.50/32"), (8080, "10.0.0.50/32")},
        "db": {(9100, "10.0.0.50/32")},
    }


def test_node_policies_grant_only_the_own_secret_folders() -> None:
    spec = make_spec()
    resources = {
        group: [
            r
            for s in ec2.node_policy(spec, group, "111122223333")["Statement"]
            for r in s["Resource"]
        ]
        for group in ("balancer", "app", "db")
    }
    prefix = f"arn:aws:ssm:{REGION}:111122223333:parameter/cloudpacs/{spec.name}"
    assert resources["db"] == [f"{prefix}/common/*", f"{prefix}/db/*"]
    assert resources["balancer"] == [f"{prefix}/balancer/*"]
    assert f"{prefix}/app/*" in resources["app"]
    assert "arn:aws:sqs:us-east-1:123456789012:ingest" in resources["app"]
    assert "arn:aws:s3:::dicom-drop/*" in resources["app"]
    assert not any("/admin/" in r for rs in resources.values() for r in rs)


def test_spec_refuses_ssh_from_anywhere() -> None:
    with pytest.raises(ec2.SpecError, match="admin_cidr"):
        make_spec(admin_cidr="0.0.0.0/0")
    with pytest.raises(ec2.SpecError, match="unknown key"):
        spec_from_dict({"name": "x1", "colour": "blue"})
