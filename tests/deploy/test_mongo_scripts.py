"""deploy/mongo/*.sh and deploy/*-app-node.sh: --help, --dry-run output (the exact commands,
JavaScript and configuration they would apply), shellcheck, and the generated JavaScript run
under node against a mock `db`/`rs`/`sh` (no MongoDB can run here)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cloudpacs.storage import schema

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MONGO = DEPLOY / "mongo"
SCRIPTS = sorted(p for p in [*MONGO.glob("*.sh"), *DEPLOY.glob("*.sh")] if p.name != "lib.sh")
CFG = [f"cfg-{m}.pacs.cloudpacs.internal:27019" for m in (1, 2, 3)]
SHARD3 = [f"shard03-{m}.pacs.cloudpacs.internal:27018" for m in (1, 2, 3)]
ROLES = {
    "cloudpacs_admin": [{"role": "root", "db": "admin"}],
    "cloudpacs_app": [{"role": "cloudpacsApp", "db": "cloudpacs"}],
    "cloudpacs_research": [{"role": "read", "db": "cloudpacs"}],
    "cloudpacs_backup": [{"role": "backup", "db": "admin"}],
}


def run(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "MONGO_CA")}
    return subprocess.run(
        [str(DEPLOY / script), *args],
        capture_output=True,
        text=True,
        check=check,
        env=env,
        timeout=30,
    )


def dry(script: str, *args: str) -> str:
    return run(script, *args, "--dry-run").stdout


def commands(output: str) -> list[list[str]]:
    """The commands a dry run prints ("+ argv", possibly spanning lines), parsed like a shell;
    "+ write FILE" blocks (file contents) are skipped."""
    chunks: list[list[str]] = []
    for line in output.splitlines(keepends=True):
        if line.startswith("+ "):
            chunks.append([line[2:]])
        elif chunks:
            chunks[-1].append(line)
    return [shlex.split("".join(c)) for c in chunks if not c[0].startswith("write ")]


def written(output: str) -> dict[str, str]:
    """The files a dry run would write: {path: content}."""
    files, current, lines = {}, None, []
    for line in output.splitlines():
        if current is None and line.startswith("+ write "):
            current, lines = line.split()[2], []
        elif current is not None and line == "EOF":
            files[current], current = "\n".join(lines) + "\n", None
        elif current is not None:
            lines.append(line)
    return files


def javascript(output: str) -> list[str]:
    return [argv[argv.index("--eval") + 1] for argv in commands(output) if "--eval" in argv]


MOCK = """
const calls = [];
const state = JSON.parse(process.env.MOCK_STATE);
globalThis.print = (...a) => calls.push(["print", a.join(" ")]);
globalThis.sleep = () => { calls.push(["sleep"]); if (calls.length > 200) process.exit(3); };
const adminDb = {
  auth(user, pwd) { calls.push(["auth", user, pwd]);
    if (!state.users.includes(user)) throw new Error("Authentication failed");
    state.authed = true; },
  getUser(user) { return state.users.includes(user) ? {user} : null; },
  createUser(doc) { calls.push(["createUser", doc]);
    if (state.users.length && !state.authed) throw new Error("Unauthorized");
    state.users.push(doc.user); },
  updateUser(user, doc) { calls.push(["updateUser", user, doc]); },
  getRole(role) { return (state.roles || []).includes(role) ? {role} : null; },
  createRole(doc) { calls.push(["createRole", doc]); },
  updateRole(role, doc) { calls.push(["updateRole", role, doc]); },
};
globalThis.db = {
  getSiblingDB(name) { return adminDb; },
  adminCommand(cmd) {
    if (cmd.hello) return state.hello;
    if (cmd.listShards) return {ok: 1, shards: state.shards.map((s) => ({_id: s}))};
    throw new Error("unexpected command " + JSON.stringify(cmd));
  },
};
globalThis.rs = { initiate(cfg) { calls.push(["rs.initiate", cfg]);
  state.hello = {setName: cfg._id, primary: cfg.members[0].host}; return {ok: 1}; } };
globalThis.sh = { addShard(spec) { calls.push(["sh.addShard", spec]); return {ok: 1}; } };
process.on("exit", () => console.log(JSON.stringify(calls)));
"""


def run_js(js: str, tmp_path: Path, **state: Any) -> list[list[Any]]:
    """Run generated mongosh JavaScript under node with the mock above; the calls it made."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "script.js"
    script.write_text(MOCK + js)
    env = {**os.environ, "MOCK_STATE": json.dumps({"users": [], "shards": [], **state})}
    result = subprocess.run(
        [node, str(script)], capture_output=True, text=True, env=env, timeout=30
    )
    assert result.returncode == 0, result.stderr
    calls: list[list[Any]] = json.loads(result.stdout.splitlines()[-1])
    return calls


def named(calls: list[list[Any]], name: str) -> list[list[Any]]:
    return [c[1:] for c in calls if c[0] == name]


# ------------------------------------------------------------------- every script ---


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script: Path) -> None:
    result = run(str(script.relative_to(DEPLOY)), "--help")
    assert result.stdout.startswith("usage: ") and "--dry-run" in result.stdout


def test_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    files = [str(p) for p in [*MONGO.glob("*.sh"), *DEPLOY.glob("*.sh")]]
    result = subprocess.run(["shellcheck", "-x", *files], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout


def test_unknown_option_is_refused() -> None:
    result = run("mongo/add-shard.sh", "--shards", "x", check=False)
    assert result.returncode == 1 and "unknown option --shards" in result.stderr


# --------------------------------------------------------------- configuration ---


@pytest.mark.parametrize(
    ("role", "port", "cluster_role"), [("config", 27019, "configsvr"), ("shard", 27018, "shardsvr")]
)
def test_mongod_config(role: str, port: int, cluster_role: str) -> None:
    yaml = pytest.importorskip("yaml")
    replset = "cfg" if role == "config" else "shard01"
    text = run(
        "mongo/render-config.sh",
        "--role",
        role,
        "--replset",
        replset,
        "--bind-ip",
        "127.0.0.1,10.0.1.7",
    ).stdout
    config = yaml.safe_load(text)
    assert config["net"]["port"] == port and config["net"]["bindIp"] == "127.0.0.1,10.0.1.7"
    assert config["net"]["tls"] == {
        "mode": "requireTLS",
        "certificateKeyFile": "/etc/mongodb/tls/node.pem",
        "CAFile": "/etc/mongodb/tls/ca.pem",
        "allowConnectionsWithoutCertificates": False,
        "disabledProtocols": "TLS1_0,TLS1_1",
    }
    assert config["security"] == {
        "authorization": "enabled",
        "keyFile": "/etc/mongodb/keyfile",
        "clusterAuthMode": "keyFile",
    }
    assert config["replication"] == {"replSetName": replset}
    assert config["sharding"] == {"clusterRole": cluster_role}


def test_mongos_config_is_loopback_with_the_config_servers() -> None:
    yaml = pytest.importorskip("yaml")
    configdb = "cfg/" + ",".join(CFG)
    config = yaml.safe_load(
        run("mongo/render-config.sh", "--role", "mongos", "--configdb", configdb).stdout
    )
    assert config["net"]["bindIp"] == "127.0.0.1" and config["net"]["port"] == 27017
    assert config["net"]["tls"]["mode"] == "requireTLS"
    assert config["net"]["tls"]["allowConnectionsWithoutCertificates"] is True
    assert config["security"] == {"keyFile": "/etc/mongodb/keyfile", "clusterAuthMode": "keyFile"}
    assert config["sharding"] == {"configDB": configdb}
    assert "replication" not in config


def test_render_refuses_bad_input() -> None:
    assert run(
        "mongo/render-config.sh", "--role", "mongos", "--configdb", "x", check=False
    ).returncode
    assert run(
        "mongo/render-config.sh", "--role", "shard", "--replset", "a b", check=False
    ).returncode


def test_install_mongod_dry_run() -> None:
    out = dry(
        "mongo/install-mongod.sh",
        "--role",
        "shard",
        "--replset",
        "shard01",
        "--secrets",
        "/run/s",
        "--bind-ip",
        "127.0.0.1,10.0.1.7",
        "--data-device",
        "/dev/nvme1n1",
    )
    argvs = commands(out)
    assert [
        "install",
        "-m",
        "0400",
        "-o",
        "mongodb",
        "-g",
        "mongodb",
        "/run/s/keyfile",
        "/etc/mongodb/keyfile",
    ] in argvs
    assert [
        "install",
        "-m",
        "0400",
        "-o",
        "mongodb",
        "-g",
        "mongodb",
        "/run/s/member.pem",
        "/etc/mongodb/tls/node.pem",
    ] in argvs
    assert ["mkfs.xfs", "-q", "-L", "mongodata", "/dev/nvme1n1"] in argvs
    assert argvs[-2:] == [["systemctl", "enable", "mongod"], ["systemctl", "restart", "mongod"]]
    files = written(out)
    assert "keyFile: /etc/mongodb/keyfile" in files["/etc/mongod.conf"]
    assert "mode: requireTLS" in files["/etc/mongod.conf"]
    assert "replSetName: shard01" in files["/etc/mongod.conf"]
    assert "never" in files["/etc/tmpfiles.d/mongodb-thp.conf"]
    assert "bookworm/mongodb-org/7.0" in files["/etc/apt/sources.list.d/mongodb-org-7.0.list"]


def test_install_mongos_dry_run() -> None:
    configdb = "cfg/" + ",".join(CFG)
    out = dry("mongo/install-mongos.sh", "--configdb", configdb, "--secrets", "/run/s")
    files = written(out)
    assert f"configDB: {configdb}" in files["/etc/mongos.conf"]
    assert "bindIp: 127.0.0.1\n" in files["/etc/mongos.conf"]
    assert (
        "ExecStart=/usr/bin/mongos --config /etc/mongos.conf"
        in files["/etc/systemd/system/mongos.service"]
    )
    argvs = commands(out)
    assert [
        "install",
        "-m",
        "0400",
        "-o",
        "mongodb",
        "-g",
        "mongodb",
        "/run/s/mongos.pem",
        "/etc/mongodb/tls/node.pem",
    ] in argvs
    assert ["systemctl", "enable", "mongos"] in argvs


# ------------------------------------------------------------ replica sets, shards ---


def member_args(members: list[str]) -> list[str]:
    return [arg for m in members for arg in ("--member", m)]


def test_init_config_replset_dry_run_and_behaviour(tmp_path: Path) -> None:
    out = dry("mongo/init-replset.sh", "--replset", "cfg", "--configsvr", *member_args(CFG))
    (argv,) = commands(out)
    assert argv[:2] == ["mongosh", "--quiet"] and "--tls" in argv
    assert argv[argv.index("--eval") - 1] == "mongodb://localhost:27019/?directConnection=true"
    (js,) = javascript(out)
    hosts = ", ".join(f'{{_id: {i}, host: "{h}"}}' for i, h in enumerate(CFG))
    config = f'const config = {{_id: "cfg", configsvr: true, members: [{hosts}]}};'
    assert config in js and "rs.initiate(config)" in js
    # fresh member: initiates exactly once with these members, then sees a primary
    calls = run_js(js, tmp_path, hello={})
    (initiated,) = named(calls, "rs.initiate")
    assert initiated[0] == {
        "_id": "cfg",
        "configsvr": True,
        "members": [{"_id": i, "host": h} for i, h in enumerate(CFG)],
    }
    # initiated already: left alone
    calls = run_js(js, tmp_path, hello={"setName": "cfg", "primary": CFG[0]})
    assert named(calls, "rs.initiate") == []
    assert "already initiated" in named(calls, "print")[0][0]


def test_init_refuses_a_member_of_another_set(tmp_path: Path) -> None:
    (js,) = javascript(dry("mongo/init-replset.sh", "--replset", "shard01", *member_args(SHARD3)))
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = tmp_path / "s.js"
    script.write_text(MOCK + js)
    env = {**os.environ, "MOCK_STATE": json.dumps({"hello": {"setName": "shard02"}})}
    result = subprocess.run([node, str(script)], capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "belongs to replica set shard02" in result.stderr


def test_init_over_ssh_runs_on_the_first_member() -> None:
    out = dry(
        "mongo/init-replset.sh", "--replset", "shard03", "--ssh", "admin", *member_args(SHARD3)
    )
    (argv,) = commands(out)
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert argv[3] == "admin@shard03-1.pacs.cloudpacs.internal"
    remote = shlex.split(argv[4])
    assert remote[:3] == ["sudo", "-u", "mongodb"]
    assert "mongodb://localhost:27018/?directConnection=true" in remote


def test_add_shard_dry_run_and_behaviour(tmp_path: Path) -> None:
    pw = password_files(tmp_path)
    out = dry(
        "mongo/add-shard.sh",
        "--shard",
        "shard03",
        *member_args(SHARD3),
        "--admin-password-file",
        str(pw["admin"]),
    )
    init_js, add_js = javascript(out)
    assert 'const config = {_id: "shard03", members: [' in init_js
    assert "configsvr" not in init_js
    assert f'sh.addShard("shard03/{",".join(SHARD3)}")' in add_js
    argv = commands(out)[-1]
    assert argv[argv.index("--eval") - 1] == "mongodb://localhost:27017/"
    calls = run_js(add_js, tmp_path, users=["cloudpacs_admin"], shards=["shard01", "shard02"])
    assert named(calls, "sh.addShard") == [[f"shard03/{','.join(SHARD3)}"]]
    assert named(calls, "auth")[0][:1] == ["cloudpacs_admin"]
    calls = run_js(add_js, tmp_path, users=["cloudpacs_admin"], shards=["shard01", "shard03"])
    assert named(calls, "sh.addShard") == []


# ----------------------------------------------------------------------- users ---


def password_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for kind in ("admin", "app", "research", "backup"):
        files[kind] = tmp_path / f"{kind}.password"
        files[kind].write_text(f"{kind}-S3cret-{kind}\n")
    return files


def create_call(user: str, password_file: Path, roles: str) -> str:
    return f'admin.createUser({{user: "{user}", pwd: secret("{password_file}"), roles: {roles}}});'


def test_create_users_dry_run_has_the_exact_roles_and_no_password(tmp_path: Path) -> None:
    pw = password_files(tmp_path)
    out = dry(
        "mongo/create-users.sh",
        "--admin-password-file",
        str(pw["admin"]),
        "--app-password-file",
        str(pw["app"]),
        "--research-password-file",
        str(pw["research"]),
        "--backup-password-file",
        str(pw["backup"]),
    )
    assert "S3cret" not in out
    (js,) = javascript(out)
    assert (
        create_call("cloudpacs_app", pw["app"], '[{role: "cloudpacsApp", db: "cloudpacs"}]') in js
    )
    assert (
        create_call("cloudpacs_research", pw["research"], '[{role: "read", db: "cloudpacs"}]') in js
    )
    assert create_call("cloudpacs_admin", pw["admin"], '[{role: "root", db: "admin"}]') in js
    # a fresh cluster (localhost exception): admin first, then each user with its roles
    calls = run_js(js, tmp_path)
    created = {doc["user"]: doc for (doc,) in named(calls, "createUser")}
    assert list(created) == list(ROLES)
    for user, roles in ROLES.items():
        assert created[user]["roles"] == roles
        kind = user.split("_")[1]
        assert created[user]["pwd"] == f"{kind}-S3cret-{kind}"
    # the application's own role: everything on its working collections, but on the audit
    # trail only find and insert (it can never change or delete an audit record)
    ((role,),) = named(calls, "createRole")
    assert role["role"] == "cloudpacsApp" and role["roles"] == []
    actions = {p["resource"]["collection"]: set(p["actions"]) for p in role["privileges"]}
    assert actions.pop("") == {"listCollections"}
    assert set(actions) == set(schema.APP_READ_WRITE) | set(schema.APP_APPEND_ONLY)
    for name in schema.APP_APPEND_ONLY:
        assert {"find", "insert"} <= actions[name]
        assert not actions[name] & {"update", "remove", "dropCollection", "collMod"}
    for name in schema.APP_READ_WRITE:
        assert {"find", "insert", "update", "remove"} <= actions[name]
    assert all(p["resource"]["db"] == "cloudpacs" for p in role["privileges"])
    # again: nobody is created; roles are set back to exactly these; passwords untouched
    calls = run_js(js, tmp_path, users=list(ROLES), roles=["cloudpacsApp"])
    assert named(calls, "createRole") == [] and len(named(calls, "updateRole")) == 1
    assert named(calls, "createUser") == []
    updates = {user: doc for user, doc in named(calls, "updateUser")}
    assert updates == {u: {"roles": r} for u, r in ROLES.items() if u != "cloudpacs_admin"}


def test_create_users_rotates_passwords_on_request(tmp_path: Path) -> None:
    pw = password_files(tmp_path)
    (js,) = javascript(
        dry(
            "mongo/create-users.sh",
            "--update-passwords",
            "--admin-password-file",
            str(pw["admin"]),
            "--app-password-file",
            str(pw["app"]),
        )
    )
    calls = run_js(js, tmp_path, users=["cloudpacs_admin", "cloudpacs_app"])
    updates = dict((user, doc) for user, doc in named(calls, "updateUser"))
    assert updates["cloudpacs_app"]["pwd"] == "app-S3cret-app"
    assert updates["cloudpacs_admin"]["pwd"] == "admin-S3cret-admin"


def test_bootstrap_cluster_dry_run_order(tmp_path: Path) -> None:
    password_files(tmp_path)
    shard1 = [f"shard01-{m}.pacs.cloudpacs.internal:27018" for m in (1, 2, 3)]
    shard2 = [f"shard02-{m}.pacs.cloudpacs.internal:27018" for m in (1, 2, 3)]
    out = dry(
        "mongo/bootstrap-cluster.sh",
        "--secrets",
        str(tmp_path),
        "--shard",
        "shard01=" + ",".join(shard1),
        "--shard",
        "shard02=" + ",".join(shard2),
    )
    assert "S3cret" not in out
    scripts = javascript(out)
    assert 'msg === "isdbgrid"' in scripts[0]
    assert 'admin.createUser({user: "cloudpacs_app"' in scripts[1]
    assert f'sh.addShard("shard01/{",".join(shard1)}")' in scripts[3]
    assert f'sh.addShard("shard02/{",".join(shard2)}")' in scripts[5]
    last = commands(out)[-1]
    assert last[:2] == ["env", "CLOUDPACS_DATABASE=cloudpacs"]
    assert last[2:4] == ["bash", "-c"] and "db init --sharded" in last[4]
    assert last[-1] == "/opt/cloudpacs/.venv/bin/cloudpacs"


# -------------------------------------------------------------------- app nodes ---


def test_install_app_node_dry_run() -> None:
    out = dry(
        "install-app-node.sh",
        "--secrets",
        "/run/s",
        "--configdb",
        "cfg/" + ",".join(CFG),
        "--sqs-queue",
        "https://sqs.eu-west-1.amazonaws.com/1/q",
        "--aws-region",
        "eu-west-1",
    )
    env = written(out)["/etc/cloudpacs/cloudpacs.env"]
    assert (
        "CLOUDPACS_MONGO_URI=mongodb://cloudpacs_app:***@127.0.0.1:27017/cloudpacs"
        "?authSource=admin&tls=true&tlsCAFile=/etc/cloudpacs/tls/ca.pem"
    ) in env
    assert "CLOUDPACS_SQS_QUEUES=https://sqs.eu-west-1.amazonaws.com/1/q" in env
    # docs/SECURITY.md: only root reads it (systemd, before it starts the service as cloudpacs)
    assert "+ write /etc/cloudpacs/cloudpacs.env (mode 0600, owner root:root)" in out
    private = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
    assert f"CLOUDPACS_TRUSTED_PROXIES={private}\n" in env
    assert f"CLOUDPACS_ALLOWED_NETWORKS={private},127.0.0.0/8,::1/128\n" in env
    assert "/etc/mongos.conf" in written(out)
    argvs = commands(out)
    assert ["systemctl", "enable", "cloudpacs@serve", "cloudpacs@ingest"] in argvs
    assert [
        "install",
        "-m",
        "0644",
        "-o",
        "root",
        "-g",
        "root",
        "/opt/cloudpacs/systemd/cloudpacs@.service",
        "/etc/systemd/system/cloudpacs@.service",
    ] in argvs
    assert (
        "After=mongos.service"
        in written(out)["/etc/systemd/system/cloudpacs@.service.d/mongos.conf"]
    )


def env_file(out: str) -> dict[str, str]:
    lines = written(out)["/etc/cloudpacs/cloudpacs.env"].splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_install_app_node_sets_the_client_address_policy(tmp_path: Path) -> None:
    out = dry(
        "install-app-node.sh",
        *("--secrets", "/run/s", "--configdb", "cfg/" + ",".join(CFG)),
        *("--trusted-proxy", "10.0.0.4", "--trusted-proxy", "10.0.0.5"),
        *("--allowed-network", "198.51.100.0/24", "--allowed-network", "2001:db8::/32"),
    )
    env = env_file(out)
    assert env["CLOUDPACS_TRUSTED_PROXIES"] == "10.0.0.4,10.0.0.5"
    # HAProxy's own /readyz checks come from the proxies; loopback is the node itself
    assert env["CLOUDPACS_ALLOWED_NETWORKS"] == (
        "198.51.100.0/24,2001:db8::/32,10.0.0.4,10.0.0.5,127.0.0.0/8,::1/128"
    )
    # cloudpacs itself accepts the file's policy
    config = cloudpacs_config(env, tmp_path)
    assert config["trusted_proxies"] == ["10.0.0.4", "10.0.0.5"]
    assert config["allowed_networks"][:2] == ["198.51.100.0/24", "2001:db8::/32"]
    for bad in ("nope", "10.0.0.0/8,1.2.3.4", "300"):
        refused = run(
            "install-app-node.sh",
            *("--secrets", "/run/s", "--configdb", "cfg/" + ",".join(CFG)),
            *("--allowed-network", bad, "--dry-run"),
            check=False,
        )
        assert refused.returncode != 0 and "is not an address or CIDR" in refused.stderr
        assert "+ write" not in refused.stdout


def cloudpacs_config(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """`cloudpacs config` with the env file's client address settings."""
    names = ("CLOUDPACS_TRUSTED_PROXIES", "CLOUDPACS_ALLOWED_NETWORKS")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDPACS_")}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("cloudpacs")), "config"],
        env={**clean, **{name: env[name] for name in names}, "CLOUDPACS_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def test_add_app_node_dry_run_installs_then_registers() -> None:
    out = dry(
        "add-app-node.sh",
        "--host",
        "10.0.1.9",
        "--configdb",
        "cfg/" + ",".join(CFG),
        "--secrets",
        "/ops/secrets",
        "--balancer",
        "10.0.0.4",
        "--bundle",
        "/tmp/b.tgz",
        "--trusted-proxy",
        "10.0.0.4",
        "--allowed-network",
        "198.51.100.0/24",
    )
    argvs = commands(out)
    scp = next(a for a in argvs if a[0] == "scp")
    assert "/ops/secrets/app.password" in scp and "/ops/secrets/mongos.pem" in scp
    assert not any(name in " ".join(scp) for name in ("admin.password", "ca.key", "member.pem"))
    install = next(a for a in argvs if a[0] == "ssh" and "install-app-node.sh" in a[-1])
    assert install[3] == "admin@10.0.1.9"
    assert "--trusted-proxy 10.0.0.4 --allowed-network 198.51.100.0/24" in install[-1]
    register = argvs[-1]
    assert register[3:] == [
        "admin@10.0.0.4",
        "sudo /opt/cloudpacs/deploy/register-app-node.sh --add 10.0.1.9:8080",
    ]
    removed = commands(
        dry("add-app-node.sh", "--host", "10.0.1.9", "--remove", "--balancer", "10.0.0.4")
    )
    assert len(removed) == 1 and removed[0][-1].endswith("--remove 10.0.1.9:8080")


def test_register_app_node_keeps_the_list_and_renders_haproxy(tmp_path: Path) -> None:
    servers = tmp_path / "app-servers"
    servers.write_text("10.0.1.5:8080\n10.0.1.6:8080\n")
    out = dry("register-app-node.sh", "--add", "10.0.1.7:8080", "--servers-file", str(servers))
    assert written(out)[str(servers)] == "10.0.1.5:8080\n10.0.1.6:8080\n10.0.1.7:8080\n"
    render, reload = commands(out)[-2:]
    assert render == [
        str(REPO / "haproxy/render-config.sh"),
        "--nodes-file",
        str(servers),
        "--output",
        "/etc/haproxy/haproxy.cfg",
        "--cert",
        "/etc/haproxy/certs/cloudpacs.pem",
    ]
    assert reload == ["systemctl", "reload-or-restart", "haproxy"]
    out = dry("register-app-node.sh", "--remove", "10.0.1.5:8080", "--servers-file", str(servers))
    assert written(out)[str(servers)] == "10.0.1.6:8080\n"
    out = dry("register-app-node.sh", "--add", "10.0.1.6:8080", "--servers-file", str(servers))
    assert written(out)[str(servers)] == "10.0.1.5:8080\n10.0.1.6:8080\n"  # once
    out = dry("register-app-node.sh", "--servers-file", str(servers), "--stats", "10.0.0.4:8405")
    assert commands(out)[-2][-2:] == ["--stats", "10.0.0.4:8405"]
    assert written(out)["/etc/cloudpacs/haproxy-stats"] == "10.0.0.4:8405\n"


# --------------------------------------------------------------------- secrets ---


def test_make_secrets(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = tmp_path / "secrets"
    assert "+ openssl req -x509" in dry(
        "mongo/make-secrets.sh", "--cluster", "pacs", "--out", str(out)
    )
    assert not out.exists()  # a dry run makes nothing
    run("mongo/make-secrets.sh", "--cluster", "pacs", "--out", str(out))
    names = {
        "keyfile",
        "ca.key",
        "ca.pem",
        "member.pem",
        "mongos.pem",
        "admin.password",
        "app.password",
        "research.password",
        "backup.password",
    }
    assert {p.name for p in out.iterdir()} == names
    assert all((out / n).stat().st_mode & 0o077 == 0 for n in names)
    keyfile = (out / "keyfile").read_text()
    assert 6 <= len("".join(keyfile.split())) <= 1024
    text = subprocess.run(
        ["openssl", "x509", "-in", str(out / "member.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:*.pacs.cloudpacs.internal, DNS:localhost, IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    for pem in ("member.pem", "mongos.pem"):
        subprocess.run(
            ["openssl", "verify", "-CAfile", str(out / "ca.pem"), str(out / pem)],
            capture_output=True,
            check=True,
        )
    before = {n: (out / n).read_bytes() for n in names}
    run("mongo/make-secrets.sh", "--cluster", "pacs", "--out", str(out))
    assert {n: (out / n).read_bytes() for n in names} == before  # rerun keeps everything
    run("mongo/make-secrets.sh", "--cluster", "pacs", "--out", str(out), "--renew-certs")
    assert (out / "member.pem").read_bytes() != before["member.pem"]
    assert (out / "ca.pem").read_bytes() == before["ca.pem"]
