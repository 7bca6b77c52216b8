"""EC2 tooling for a cloudpacs cluster (boto3): security groups, instances with per-role
user-data, tags, a private DNS zone for the database nodes, instance roles for the secrets.

    python deploy/ec2.py --spec cluster.toml up [--dry-run]
    python deploy/ec2.py --spec cluster.toml scale-app N
    python deploy/ec2.py --spec cluster.toml add-shard [--shard shard03]
    python deploy/ec2.py --spec cluster.toml status [--json]
    python deploy/ec2.py --spec cluster.toml down --yes [--delete-secrets]
    python deploy/ec2.py --spec cluster.toml put-secrets DIR
    python deploy/ec2.py --spec cluster.toml userdata ROLE [--replset R --member N]

The state is in AWS, as tags (Project=cloudpacs, Cluster=NAME, Role=...): every command reads
what exists, then changes only the difference, so `up` twice launches nothing the second
time. --dry-run still reads (it needs credentials) but changes nothing and prints the plan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402
from clusterspec import (  # noqa: E402
    APP_HTTP_PORT,
    CONFIG_PORT,
    DB_ROLES,
    GROUP_OF_ROLE,
    GROUPS,
    HAPROXY_STATS_PORT,
    HTTP_PORT,
    HTTPS_PORT,
    MONGOS_PORT,
    NODE_EXPORTER_PORT,
    PROJECT,
    ROLES,
    ROOT_VOLUME_GB,
    SSH_PORT,
    ClusterSpec,
    Node,
    SpecError,
    database_nodes,
    initial_shards,
    load_spec,
    next_shard,
    replica_set_nodes,
)
from userdata import render_userdata  # noqa: E402

# Instance states that count as "exists" (terminated and shutting-down ones do not).
LIVE_STATES = ("pending", "running", "stopping", "stopped")
# S3 presigned URLs (SigV4) live at most 7 days; a node fetches its bundle at first boot.
PRESIGNED_URL_SECONDS = 6 * 3600
# SSM Parameter Store: standard parameters hold 4 KiB, advanced ones 8 KiB.
STANDARD_PARAMETER_MAX_BYTES = 4096
ADVANCED_PARAMETER_MAX_BYTES = 8192
# A new instance profile is not usable by RunInstances for ~10 s (IAM eventual consistency).
PROFILE_RETRIES = 12
PROFILE_RETRY_SECONDS = 5.0
# Groups still used by the network interfaces of terminating instances cannot be deleted
# (DependencyViolation) for a minute or two.
GROUP_DELETE_RETRIES = 30
GROUP_DELETE_RETRY_SECONDS = 10.0
DNS_TTL_SECONDS = 60
DATA_DEVICE = "/dev/sdf"
DEFAULT_ROOT_DEVICE = "/dev/xvda"  # Debian's AMIs
WAITER = {"Delay": 5, "MaxAttempts": 120}
DB_PORTS = (MONGOS_PORT, CONFIG_PORT)  # 27017-27019: mongos, shard and config members
ASSUME_ROLE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}
POLICY_NAME = "cloudpacs-node"
# operator's secrets directory (deploy/mongo/make-secrets.sh) -> SSM parameter under the
# cluster prefix. The folder decides which instance role may read it; ca.key never leaves.
SECRET_PARAMETERS = {
    "keyfile": "common/keyfile",
    "ca.pem": "common/ca.pem",
    "member.pem": "db/member.pem",
    "mongos.pem": "app/mongos.pem",
    "app.password": "app/app.password",
    "admin.password": "admin/admin.password",
    "research.password": "admin/research.password",
    "backup.password": "admin/backup.password",
}
OPTIONAL_SECRETS = {"balancer.pem": "balancer/tls.pem"}
SECRET_FOLDERS = {"balancer": ("balancer",), "app": ("common", "app"), "db": ("common", "db")}
SQS_INGEST_ACTIONS = [
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueAttributes",
]


# ------------------------------------------------------------------ rules (pure) ---


@dataclass(frozen=True, order=True)
class Rule:
    """One ingress rule: TCP ports from a CIDR block or from a security group (sg-...)."""

    from_port: int
    to_port: int
    source: str
    protocol: str = "tcp"


def desired_rules(spec: ClusterSpec, ids: Mapping[str, str]) -> dict[str, set[Rule]]:
    """Ingress of each group; anything else is revoked.

    balancer: 443 and 80 from the allowlisted CIDRs; app: 8080 from the balancer group only;
    db: 27017-27019 from the app group and from itself; all: ssh from the admin CIDR.
    With monitoring_cidr (off by default): node_exporter on all, 8080 on the app nodes and
    the HAProxy stats frontend on the balancer, from that CIDR only."""
    ssh = Rule(SSH_PORT, SSH_PORT, spec.admin_cidr)
    web = {
        Rule(port, port, cidr) for cidr in spec.allowed_cidrs for port in (HTTPS_PORT, HTTP_PORT)
    }
    low, high = DB_PORTS
    rules = {
        "balancer": web | {ssh},
        "app": {Rule(APP_HTTP_PORT, APP_HTTP_PORT, ids["balancer"]), ssh},
        "db": {Rule(low, high, ids["app"]), Rule(low, high, ids["db"]), ssh},
    }
    if spec.monitoring_cidr:
        scraped = {"balancer": HAPROXY_STATS_PORT, "app": APP_HTTP_PORT, "db": None}
        for group, group_rules in rules.items():
            for port in (NODE_EXPORTER_PORT, scraped[group]):
                if port is not None:
                    group_rules.add(Rule(port, port, spec.monitoring_cidr))
    return rules


def rules_of(permissions: Iterable[Mapping[str, Any]]) -> set[Rule]:
    """The rules an IpPermissions list (DescribeSecurityGroups) holds, one per source."""
    rules: set[Rule] = set()
    for p in permissions:
        args = (p.get("FromPort", -1), p.get("ToPort", -1))
        proto = p["IpProtocol"]
        sources = [r["CidrIp"] for r in p.get("IpRanges", [])]
        sources += [r["CidrIpv6"] for r in p.get("Ipv6Ranges", [])]
        sources += [g["GroupId"] for g in p.get("UserIdGroupPairs", [])]
        sources += [r["PrefixListId"] for r in p.get("PrefixListIds", [])]
        rules.update(Rule(*args, source, proto) for source in sources)
    return rules


def permission_of(rule: Rule) -> dict[str, Any]:
    """IpPermissions entry of one rule (Authorize/RevokeSecurityGroupIngress)."""
    permission: dict[str, Any] = {
        "IpProtocol": rule.protocol,
        "FromPort": rule.from_port,
        "ToPort": rule.to_port,
    }
    if rule.source.startswith("sg-"):
        permission["UserIdGroupPairs"] = [{"GroupId": rule.source}]
    elif rule.source.startswith("pl-"):
        permission["PrefixListIds"] = [{"PrefixListId": rule.source}]
    elif ":" in rule.source:
        permission["Ipv6Ranges"] = [{"CidrIpv6": rule.source}]
    else:
        permission["IpRanges"] = [{"CidrIp": rule.source}]
    return permission


# ------------------------------------------------------------- IAM policies (pure) ---


def queue_arn(url: str, partition: str = "aws") -> str:
    """https://sqs.REGION.amazonaws.com/ACCOUNT/NAME -> arn:aws:sqs:REGION:ACCOUNT:NAME"""
    parsed = urlparse(url)
    region = parsed.hostname.split(".")[1] if parsed.hostname else ""
    account, name = parsed.path.strip("/").split("/", 1)
    return f"arn:{partition}:sqs:{region}:{account}:{name}"


def node_policy(
    spec: ClusterSpec, group: str, account: str, partition: str = "aws"
) -> dict[str, Any]:
    """Least privilege of a node's instance role: read its own secret folders; app nodes
    also consume the ingest queues and read the ingest bucket."""
    prefix = f"arn:{partition}:ssm:{spec.region}:{account}:parameter{spec.ssm_prefix}"
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadOwnSecrets",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter"],
            "Resource": [f"{prefix}/{folder}/*" for folder in SECRET_FOLDERS[group]],
        }
    ]
    if group == "app" and spec.sqs_queue_urls:
        statements.append(
            {
                "Sid": "IngestQueues",
                "Effect": "Allow",
                "Action": SQS_INGEST_ACTIONS,
                "Resource": [queue_arn(url, partition) for url in spec.sqs_queue_urls],
            }
        )
    if group == "app" and spec.ingest_bucket:
        bucket = f"arn:{partition}:s3:::{spec.ingest_bucket}"
        statements += [
            {
                "Sid": "IngestObjects",
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{bucket}/*"],
            },
            {
                "Sid": "IngestListing",
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [bucket],
            },
        ]
    return {"Version": "2012-10-17", "Statement": statements}


# ------------------------------------------------------------------------- AWS ---


@dataclass(frozen=True)
class Clients:
    ec2: Any
    iam: Any
    route53: Any
    ssm: Any
    s3: Any
    sts: Any


def make_clients(region: str, endpoint_url: str | None = None) -> Clients:
    """boto3 clients from the standard credential chain (endpoint_url: moto, LocalStack)."""
    session = boto3.session.Session(region_name=region)
    config = Config(retries={"mode": "standard", "max_attempts": 5})

    def client(name: str) -> Any:
        return session.client(name, endpoint_url=endpoint_url, config=config)

    return Clients(*(client(n) for n in ("ec2", "iam", "route53", "ssm", "s3", "sts")))


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tags_of(resource: Mapping[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class Cluster:
    """One cluster's AWS resources, converged towards its spec."""

    def __init__(
        self,
        spec: ClusterSpec,
        clients: Clients,
        *,
        dry_run: bool = False,
        out: Callable[[str], None] = print,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.aws = clients
        self.dry_run = dry_run
        self.out = out
        self.sleep = sleep
        self._vpc: str | None = None
        self._subnets: list[str] | None = None
        self._root: str | None = None

    def _change(self, what: str, call: Callable[..., Any], **kwargs: Any) -> Any:
        """Every mutating AWS call goes through here: printed, and skipped in a dry run."""
        self.out(("would " if self.dry_run else "") + what)
        return None if self.dry_run else call(**kwargs)

    def _filters(self, **tags: str) -> list[dict[str, Any]]:
        base = {"Project": PROJECT, "Cluster": self.spec.name, **tags}
        return [{"Name": f"tag:{k}", "Values": [v]} for k, v in base.items()]

    # ------------------------------------------------------------------ discovery ---

    def vpc_id(self) -> str:
        if self._vpc is None:
            if self.spec.vpc_id:
                self._vpc = self.spec.vpc_id
            else:
                vpcs = self.aws.ec2.describe_vpcs(
                    Filters=[{"Name": "is-default", "Values": ["true"]}]
                )["Vpcs"]
                if not vpcs:
                    raise SpecError(f"no default VPC in {self.spec.region}: set vpc_id")
                self._vpc = vpcs[0]["VpcId"]
        return self._vpc

    def subnets(self) -> list[str]:
        if self._subnets is None:
            self._subnets = self._find_subnets()
        return self._subnets

    def _find_subnets(self) -> list[str]:
        if self.spec.subnet_ids:
            return list(self.spec.subnet_ids)
        found = self.aws.ec2.describe_subnets(
            Filters=[
                {"Name": "vpc-id", "Values": [self.vpc_id()]},
                {"Name": "default-for-az", "Values": ["true"]},
            ]
        )["Subnets"]
        if not found:
            raise SpecError("the VPC has no default subnets: set subnet_ids")
        return [s["SubnetId"] for s in sorted(found, key=lambda s: s["AvailabilityZone"])]

    def instances(self, role: str | None = None) -> list[dict[str, Any]]:
        """Live instances of the cluster (optionally of one role), oldest first."""
        filters = self._filters(**({"Role": role} if role else {}))
        filters.append({"Name": "instance-state-name", "Values": list(LIVE_STATES)})
        found = []
        for page in self.aws.ec2.get_paginator("describe_instances").paginate(Filters=filters):
            for reservation in page["Reservations"]:
                found += reservation["Instances"]
        return sorted(found, key=lambda i: (i["LaunchTime"], i["InstanceId"]))

    def existing_groups(self) -> dict[str, str]:
        names = {self.spec.group_name(g): g for g in GROUPS}
        found = self.aws.ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [self.vpc_id()]},
                {"Name": "group-name", "Values": list(names)},
            ]
        )["SecurityGroups"]
        return {names[g["GroupName"]]: g["GroupId"] for g in found}

    def zone_id(self) -> str | None:
        name = self.spec.zone + "."
        zones = self.aws.route53.list_hosted_zones_by_name(DNSName=name)["HostedZones"]
        for zone in zones:
            if zone["Name"] == name and zone.get("Config", {}).get("PrivateZone"):
                return str(zone["Id"])
        return None

    # ------------------------------------------------------------------- network ---

    def ensure_groups(self) -> dict[str, str]:
        ids = self.existing_groups()
        for group in GROUPS:
            if group not in ids:
                name = self.spec.group_name(group)
                created = self._change(
                    f"create security group {name}",
                    self.aws.ec2.create_security_group,
                    GroupName=name,
                    Description=f"cloudpacs {self.spec.name} {group} nodes",
                    VpcId=self.vpc_id(),
                    TagSpecifications=[
                        {
                            "ResourceType": "security-group",
                            "Tags": tag_list(self.spec.tags(group, Name=name)),
                        }
                    ],
                )
                ids[group] = created["GroupId"] if created else f"sg-(new {name})"
        return ids

    def ensure_rules(self, ids: Mapping[str, str]) -> None:
        current: dict[str, set[Rule]] = {g: set() for g in GROUPS}
        real = [i for i in ids.values() if not i.startswith("sg-(")]
        if real:
            for sg in self.aws.ec2.describe_security_groups(GroupIds=real)["SecurityGroups"]:
                group = next(g for g, i in ids.items() if i == sg["GroupId"])
                current[group] = rules_of(sg["IpPermissions"])
        for group, wanted in desired_rules(self.spec, ids).items():
            name = self.spec.group_name(group)
            for rule in sorted(wanted - current[group]):
                self._change(
                    f"allow {name}: tcp {rule.from_port}-{rule.to_port} from {rule.source}",
                    self.aws.ec2.authorize_security_group_ingress,
                    GroupId=ids[group],
                    IpPermissions=[permission_of(rule)],
                )
            for rule in sorted(current[group] - wanted):
                self._change(
                    f"revoke {name}: {rule.protocol} {rule.from_port}-{rule.to_port} "
                    f"from {rule.source}",
                    self.aws.ec2.revoke_security_group_ingress,
                    GroupId=ids[group],
                    IpPermissions=[permission_of(rule)],
                )

    # ----------------------------------------------------------------------- IAM ---

    def _caller(self) -> tuple[str, str]:
        """(account, partition) of the credentials in use."""
        identity = self.aws.sts.get_caller_identity()
        return identity["Account"], identity["Arn"].split(":")[1]

    def ensure_profiles(self) -> None:
        """One instance role + profile per group, with node_policy as its inline policy."""
        account, partition = self._caller()
        iam = self.aws.iam
        for group in GROUPS:
            name = self.spec.iam_name(group)
            try:
                iam.get_role(RoleName=name)
            except ClientError as exc:
                if error_code(exc) != "NoSuchEntity":
                    raise
                self._change(
                    f"create IAM role {name}",
                    iam.create_role,
                    RoleName=name,
                    AssumeRolePolicyDocument=json.dumps(ASSUME_ROLE_POLICY),
                    Description=f"cloudpacs {self.spec.name} {group} nodes",
                    Tags=tag_list(self.spec.tags(group)),
                )
            self._change(
                f"set the policy of IAM role {name}",
                iam.put_role_policy,
                RoleName=name,
                PolicyName=POLICY_NAME,
                PolicyDocument=json.dumps(node_policy(self.spec, group, account, partition)),
            )
            self._ensure_profile(name)

    def _ensure_profile(self, name: str) -> None:
        iam = self.aws.iam
        try:
            roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
            self._change(
                f"create instance profile {name}",
                iam.create_instance_profile,
                InstanceProfileName=name,
            )
            roles = []
        if not any(r["RoleName"] == name for r in roles):
            self._change(
                f"add IAM role {name} to instance profile {name}",
                iam.add_role_to_instance_profile,
                InstanceProfileName=name,
                RoleName=name,
            )

    # ----------------------------------------------------------------------- DNS ---

    def ensure_zone(self) -> str | None:
        zone = self.zone_id()
        if zone is None:
            created = self._change(
                f"create private DNS zone {self.spec.zone}",
                self.aws.route53.create_hosted_zone,
                Name=self.spec.zone,
                CallerReference=f"{PROJECT}-{self.spec.name}-{time.time_ns()}",
                VPC={"VPCRegion": self.spec.region, "VPCId": self.vpc_id()},
                HostedZoneConfig={"Comment": f"cloudpacs {self.spec.name}", "PrivateZone": True},
            )
            zone = created["HostedZone"]["Id"] if created else None
        return zone

    def _records(self, zone: str) -> dict[str, dict[str, Any]]:
        """A records of the zone by name (without the trailing dot)."""
        records = {}
        paginator = self.aws.route53.get_paginator("list_resource_record_sets")
        for page in paginator.paginate(HostedZoneId=zone):
            for record in page["ResourceRecordSets"]:
                if record["Type"] == "A":
                    records[record["Name"].rstrip(".")] = record
        return records

    def sync_records(self) -> None:
        """<replset>-<member>.<zone> -> private address of each live database node; records
        of nodes that are gone are deleted."""
        zone = self.zone_id()
        if zone is None:
            return
        wanted = {}
        for instance in self.instances():
            tags = tags_of(instance)
            if tags.get("Role") in DB_ROLES and instance.get("PrivateIpAddress"):
                name = self.spec.hostname(tags["ReplicaSet"], int(tags["Member"]))
                wanted[name] = instance["PrivateIpAddress"]
        current = self._records(zone)
        changes = []
        for name, address in sorted(wanted.items()):
            values = [r["Value"] for r in current.get(name, {}).get("ResourceRecords", [])]
            if values != [address]:
                changes.append(("UPSERT", name, address))
        for name, record in sorted(current.items()):
            if name not in wanted:
                changes.append(("DELETE", name, record["ResourceRecords"][0]["Value"]))
        for action, name, address in changes:
            self._change(
                f"{action.lower()} DNS {name} A {address}",
                self.aws.route53.change_resource_record_sets,
                HostedZoneId=zone,
                ChangeBatch={
                    "Changes": [
                        {
                            "Action": action,
                            "ResourceRecordSet": {
                                "Name": name,
                                "Type": "A",
                                "TTL": DNS_TTL_SECONDS,
                                "ResourceRecords": [{"Value": address}],
                            },
                        }
                    ]
                },
            )

    # ----------------------------------------------------------------- instances ---

    def bundle_url(self) -> str:
        """What the nodes download: an https URL, or a presigned one for s3://bucket/key."""
        bundle = self.spec.bundle
        if not bundle:
            if self.dry_run:
                return "https://(bundle)/cloudpacs.tar.gz"
            raise SpecError("bundle: set the s3:// or https:// URL of the cloudpacs tar.gz")
        if bundle.startswith("https://"):
            return bundle
        parsed = urlparse(bundle)
        return str(
            self.aws.s3.generate_presigned_url(
                "get_object",
                Params={"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")},
                ExpiresIn=PRESIGNED_URL_SECONDS,
            )
        )

    def _root_device(self) -> str:
        if self._root is None:
            self._root = self._find_root_device()
        return self._root

    def _find_root_device(self) -> str:
        try:
            images = self.aws.ec2.describe_images(ImageIds=[self.spec.ami])["Images"]
        except ClientError:
            images = []
        return (
            str(images[0].get("RootDeviceName", DEFAULT_ROOT_DEVICE))
            if images
            else DEFAULT_ROOT_DEVICE
        )

    def _volumes(self, role: str) -> list[dict[str, Any]]:
        def ebs(size: int) -> dict[str, Any]:
            return {
                "VolumeSize": size,
                "VolumeType": "gp3",
                "Encrypted": True,
                "DeleteOnTermination": True,
            }

        volumes = [{"DeviceName": self._root_device(), "Ebs": ebs(ROOT_VOLUME_GB)}]
        if role in DB_ROLES:
            volumes.append({"DeviceName": DATA_DEVICE, "Ebs": ebs(self.spec.volume_gb[role])})
        return volumes

    def launch(
        self,
        node: Node,
        ids: Mapping[str, str],
        slot: int,
        bundle_url: str,
        app_servers: Iterable[str] = (),
    ) -> dict[str, Any] | None:
        """Run one instance of a node; slot picks its subnet (members spread over subnets)."""
        subnets = self.subnets()
        group = GROUP_OF_ROLE[node.role]
        tags = tag_list(node.tags(self.spec))
        params = {
            "ImageId": self.spec.ami,
            "InstanceType": self.spec.instance_types[node.role],
            "KeyName": self.spec.key_name,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": render_userdata(self.spec, node, bundle_url, list(app_servers)),
            "IamInstanceProfile": {"Name": self.spec.iam_name(group)},
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "SubnetId": subnets[slot % len(subnets)],
                    "Groups": [ids[group]],
                    "AssociatePublicIpAddress": self.spec.public_ips or node.role == "balancer",
                    "DeleteOnTermination": True,
                }
            ],
            "BlockDeviceMappings": self._volumes(node.role),
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
        }
        what = f"launch {node.label or node.role} ({params['InstanceType']})"
        for attempt in range(PROFILE_RETRIES):
            try:
                reply = self._change(what, self.aws.ec2.run_instances, **params)
                return reply["Instances"][0] if reply else None
            except ClientError as exc:
                profile_not_ready = error_code(exc) == "InvalidParameterValue" and (
                    "iamInstanceProfile" in str(exc) or "Instance Profile" in str(exc)
                )
                if not profile_not_ready or attempt == PROFILE_RETRIES - 1:
                    raise
                self.sleep(PROFILE_RETRY_SECONDS)
        return None

    def _prepare(self) -> tuple[dict[str, str], str]:
        ids = self.ensure_groups()
        self.ensure_rules(ids)
        self.ensure_profiles()
        self.ensure_zone()
        return ids, self.bundle_url()

    def _ensure_nodes(self, nodes: list[Node], ids: Mapping[str, str], url: str) -> None:
        have = {
            (t.get("ReplicaSet"), t.get("Member"))
            for t in (tags_of(i) for i in self.instances())
            if t.get("Role") in DB_ROLES
        }
        for node in nodes:
            if (node.replset, str(node.member)) not in have:
                self.launch(node, ids, (node.member or 1) - 1, url)

    def shards(self) -> list[str]:
        return sorted(
            {tags_of(i)["Shard"] for i in self.instances("shard") if "Shard" in tags_of(i)}
        )

    def up(self) -> None:
        """Create what is missing: groups and rules, roles, DNS zone, the database nodes of
        the config servers and every shard, app_count app nodes (at least), a balancer."""
        ids, url = self._prepare()
        shards = sorted(set(initial_shards(self.spec)) | set(self.shards()))
        self._ensure_nodes(database_nodes(shards), ids, url)
        apps = self.instances("app")
        for slot in range(len(apps), self.spec.app_count):
            launched = self.launch(Node("app"), ids, slot, url)
            if launched:
                apps.append(launched)
        if not self.instances("balancer"):
            servers = [
                f"{a['PrivateIpAddress']}:{APP_HTTP_PORT}"
                for a in apps
                if a.get("PrivateIpAddress")
            ]
            self.launch(Node("balancer"), ids, 0, url, servers)
        self.sync_records()

    def scale_app(self, count: int) -> None:
        """Exactly `count` app nodes: launch the missing, terminate the newest extra ones."""
        if count < 1:
            raise SpecError("keep at least one app node")
        apps = self.instances("app")
        if len(apps) < count:
            ids, url = self._prepare()
            for slot in range(len(apps), count):
                launched = self.launch(Node("app"), ids, slot, url)
                if launched:
                    self._hint_register(launched, "--register-only")
        for extra in apps[count:]:
            self._hint_register(extra, "--remove")
            self._change(
                f"terminate app node {extra['InstanceId']}",
                self.aws.ec2.terminate_instances,
                InstanceIds=[extra["InstanceId"]],
            )

    def _hint_register(self, instance: Mapping[str, Any], mode: str) -> None:
        balancers = self.instances("balancer")
        balancer = balancers[0].get("PublicIpAddress", "BALANCER") if balancers else "BALANCER"
        self.out(
            f"  then: deploy/add-app-node.sh {mode} --host {instance.get('PrivateIpAddress')} "
            f"--balancer {balancer}"
        )

    def add_shard(self, name: str | None = None) -> str:
        """Launch the members of a new shard (or the missing ones of `name`); print the
        command that adds it to the cluster once they run."""
        shard = name or next_shard(self.shards())
        ids, url = self._prepare()
        self._ensure_nodes(replica_set_nodes("shard", shard), ids, url)
        self.sync_records()
        members = " ".join(f"--member {m}" for m in self.spec.members(shard))
        self.out(
            f"  then, on an app node: deploy/mongo/add-shard.sh --shard {shard} {members} "
            "--admin-password-file FILE"
        )
        return shard

    def status(self) -> list[dict[str, Any]]:
        rows = []
        for instance in self.instances():
            tags = tags_of(instance)
            rows.append(
                {
                    "role": tags.get("Role", "?"),
                    "name": tags.get("Name", ""),
                    "replica_set": tags.get("ReplicaSet"),
                    "id": instance["InstanceId"],
                    "state": instance["State"]["Name"],
                    "type": instance.get("InstanceType"),
                    "zone": instance.get("Placement", {}).get("AvailabilityZone"),
                    "private_ip": instance.get("PrivateIpAddress"),
                    "public_ip": instance.get("PublicIpAddress"),
                }
            )
        order = {role: i for i, role in enumerate(ROLES)}
        return sorted(rows, key=lambda r: (order.get(r["role"], 9), r["name"], r["id"]))

    # ----------------------------------------------------------------------- down ---

    def down(self, delete_secrets: bool = False) -> None:
        """Terminate every instance of the cluster, then delete its DNS zone, security
        groups and IAM roles (and, when asked, its secrets in SSM)."""
        ids = [i["InstanceId"] for i in self.instances()]
        if ids:
            self._change(
                f"terminate {len(ids)} instance(s)",
                self.aws.ec2.terminate_instances,
                InstanceIds=ids,
            )
            if not self.dry_run:
                self.aws.ec2.get_waiter("instance_terminated").wait(
                    InstanceIds=ids, WaiterConfig=WAITER
                )
        self._delete_zone()
        self._delete_groups()
        self._delete_profiles()
        if delete_secrets:
            self._delete_secrets()

    def _delete_zone(self) -> None:
        zone = self.zone_id()
        if zone is None:
            return
        for name, record in sorted(self._records(zone).items()):
            self._change(
                f"delete DNS {name}",
                self.aws.route53.change_resource_record_sets,
                HostedZoneId=zone,
                ChangeBatch={"Changes": [{"Action": "DELETE", "ResourceRecordSet": record}]},
            )
        self._change(
            f"delete DNS zone {self.spec.zone}", self.aws.route53.delete_hosted_zone, Id=zone
        )

    def _delete_groups(self) -> None:
        ids = self.existing_groups()
        if not ids:
            return
        groups = self.aws.ec2.describe_security_groups(GroupIds=list(ids.values()))
        for sg in groups["SecurityGroups"]:  # rules naming each other block the deletes
            if sg["IpPermissions"]:
                self._change(
                    f"revoke the ingress rules of {sg['GroupName']}",
                    self.aws.ec2.revoke_security_group_ingress,
                    GroupId=sg["GroupId"],
                    IpPermissions=[permission_of(r) for r in sorted(rules_of(sg["IpPermissions"]))],
                )
        for group, sg_id in ids.items():
            self._delete_group(self.spec.group_name(group), sg_id)

    def _delete_group(self, name: str, sg_id: str) -> None:
        for attempt in range(GROUP_DELETE_RETRIES):
            try:
                self._change(
                    f"delete security group {name}",
                    self.aws.ec2.delete_security_group,
                    GroupId=sg_id,
                )
                return
            except ClientError as exc:
                if error_code(exc) != "DependencyViolation" or attempt == GROUP_DELETE_RETRIES - 1:
                    raise
                self.sleep(GROUP_DELETE_RETRY_SECONDS)

    def _delete_profiles(self) -> None:
        iam = self.aws.iam
        for group in GROUPS:
            name = self.spec.iam_name(group)
            steps: list[tuple[str, Callable[..., Any], dict[str, Any]]] = [
                (
                    f"remove IAM role {name} from its instance profile",
                    iam.remove_role_from_instance_profile,
                    {"InstanceProfileName": name, "RoleName": name},
                ),
                (
                    f"delete instance profile {name}",
                    iam.delete_instance_profile,
                    {"InstanceProfileName": name},
                ),
                (
                    f"delete the policy of IAM role {name}",
                    iam.delete_role_policy,
                    {"RoleName": name, "PolicyName": POLICY_NAME},
                ),
                (f"delete IAM role {name}", iam.delete_role, {"RoleName": name}),
            ]
            for what, call, kwargs in steps:
                try:
                    self._change(what, call, **kwargs)
                except ClientError as exc:
                    if error_code(exc) != "NoSuchEntity":
                        raise

    def _delete_secrets(self) -> None:
        names = [
            f"{self.spec.ssm_prefix}/{p}"
            for p in (*SECRET_PARAMETERS.values(), *OPTIONAL_SECRETS.values())
        ]
        for start in range(0, len(names), 10):  # DeleteParameters takes 10 names at most
            self._change(
                f"delete SSM parameters {', '.join(names[start : start + 10])}",
                self.aws.ssm.delete_parameters,
                Names=names[start : start + 10],
            )

    # -------------------------------------------------------------------- secrets ---

    def put_secrets(self, directory: Path) -> list[str]:
        """Upload the secrets directory (make-secrets.sh) as SecureString parameters."""
        missing = [name for name in SECRET_PARAMETERS if not (directory / name).is_file()]
        if missing:
            raise SpecError(f"{directory}: missing {', '.join(missing)} (make-secrets.sh)")
        stored = []
        for filename, parameter in {**SECRET_PARAMETERS, **OPTIONAL_SECRETS}.items():
            path = directory / filename
            if not path.is_file():
                continue
            value = path.read_text()
            size = len(value.encode())
            if size > ADVANCED_PARAMETER_MAX_BYTES:
                raise SpecError(f"{path}: {size} bytes, over SSM's {ADVANCED_PARAMETER_MAX_BYTES}")
            tier = "Standard" if size <= STANDARD_PARAMETER_MAX_BYTES else "Advanced"
            name = f"{self.spec.ssm_prefix}/{parameter}"
            self._change(
                f"store {filename} as {name} ({tier})",
                self.aws.ssm.put_parameter,
                Name=name,
                Value=value,
                Type="SecureString",
                Overwrite=True,
                Tier=tier,
            )
            stored.append(name)
        return stored


# ------------------------------------------------------------------------- CLI ---


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy/ec2.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--spec", type=Path, required=True, help="cluster TOML file")
    parser.add_argument("--endpoint-url", help="AWS endpoint (tests: a moto server)")
    parser.add_argument("--dry-run", action="store_true", help="print the changes, make none")
    # --dry-run after the command too (SUPPRESS: absent there keeps the value given before it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, parents=[common])

    command("up", "create or complete the cluster")
    command("scale-app", "exactly N app nodes").add_argument("count", type=int)
    command("add-shard", "launch a new shard's 3 members").add_argument(
        "--shard", help="its name (default: the next shardNN)"
    )
    command("status", "the cluster's instances by role").add_argument("--json", action="store_true")
    down = command("down", "terminate everything of the cluster")
    down.add_argument("--yes", action="store_true", help="really")
    down.add_argument("--delete-secrets", action="store_true")
    command("put-secrets", "upload make-secrets.sh's directory to SSM").add_argument(
        "directory", type=Path
    )
    user = command("userdata", "print a node's user-data (offline)")
    user.add_argument("role", choices=ROLES)
    user.add_argument("--replset")
    user.add_argument("--member", type=int)
    return parser


def _print_status(rows: list[dict[str, Any]]) -> None:
    columns = ("role", "name", "id", "state", "type", "zone", "private_ip", "public_ip")
    table = [[str(row.get(c) or "-") for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(columns)]
    for line in [list(columns), *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if args.command == "userdata":
            node = Node(args.role, args.replset, args.member)
            print(render_userdata(spec, node, spec.bundle or "https://(bundle)"), end="")
            return 0
        cluster = Cluster(spec, make_clients(spec.region, args.endpoint_url), dry_run=args.dry_run)
        return _run(cluster, args)
    except (SpecError, ValueError) as exc:
        print(f"ec2.py: {exc}", file=sys.stderr)
        return 2
    except ClientError as exc:
        print(f"ec2.py: AWS refused: {exc}", file=sys.stderr)
        return 1


def _run(cluster: Cluster, args: argparse.Namespace) -> int:
    if args.command == "up":
        cluster.up()
    elif args.command == "scale-app":
        cluster.scale_app(args.count)
    elif args.command == "add-shard":
        cluster.add_shard(args.shard)
    elif args.command == "status":
        rows = cluster.status()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            _print_status(rows)
    elif args.command == "down":
        if not (args.yes or args.dry_run):
            print(
                "ec2.py: down terminates every instance of the cluster: add --yes", file=sys.stderr
            )
            return 2
        cluster.down(args.delete_secrets)
    elif args.command == "put-secrets":
        cluster.put_secrets(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
