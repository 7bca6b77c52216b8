"""cloudpacs as deployed (docs/ARCHITECTURE.md, haproxy/): N `cloudpacs serve` app nodes on one
shared FerretDB, behind a real HAProxy rendered from haproxy/haproxy.cfg.tmpl, all on free
loopback ports and stopped by PID. The same STOW-RS, QIDO-RS and WADO-RS load as the single
node and Orthanc get, through the balancer.
"""

from __future__ import annotations

import contextlib
import csv
import io
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_context import Context, Target, log
from benchlib import (
    REPO,
    Server,
    command_line,
    free_port,
    spawn,
    start_cloudpacs,
    start_ferretdb,
    wait_port,
)
from phase_ingest import (
    check_archive,
    disk_usage,
    drop_database,
    sqlite_files,
    stored_files,
    stow_level,
)
from phase_reads import qido_phase, wado_phase

from cloudpacs.embedded import add_id_lookup_indexes

RENDER = REPO / "haproxy" / "render-config.sh"
BACKEND = "cloudpacs"  # the backend name in haproxy/haproxy.cfg.tmpl
LOAD_DATABASE = "cluster"
SETTLE_SECONDS = 120  # a node out of rotation after a load level is back within this


@dataclass(frozen=True)
class SharedDb:
    """The one FerretDB all nodes use, and the folder of its SQLite files."""

    server: Server
    data_dir: Path

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.server.port}/"


@dataclass
class Cluster:
    """App nodes and the HAProxy in front of them (the FerretDB behind them is the caller's)."""

    nodes: list[Server]
    balancer: Server
    stats_port: int

    @property
    def root(self) -> str:
        return f"{self.balancer.base}/dicomweb"

    def pids(self, ferretdb: Server) -> dict[str, int]:
        nodes = {f"cloudpacs-{i}": node.pid for i, node in enumerate(self.nodes, 1)}
        return {**nodes, "ferretdb": ferretdb.pid, "haproxy": self.balancer.pid}

    def commands(self, ferretdb: Server, database: str, work: Path) -> list[str]:
        env = {"CLOUDPACS_MONGO_URI": f"mongodb://127.0.0.1:{ferretdb.port}/"}
        env["CLOUDPACS_DATABASE"] = database
        env.update(shared_file_store(work))
        nodes = [command_line(node, env) for node in self.nodes]
        return [command_line(ferretdb), *nodes, command_line(self.balancer)]

    def stop(self) -> None:
        """The balancer first, so that no request reaches a stopping node."""
        for server in [self.balancer, *self.nodes]:
            server.stop()


def render_config(work: Path, port: int, stats_port: int, nodes: list[Server]) -> Path:
    """haproxy/render-config.sh (the production template) for an unprivileged HAProxy on
    loopback; validated by `haproxy -c`."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "haproxy.cfg"
    subprocess.run(
        [
            str(RENDER),
            *("--bind", f"127.0.0.1:{port}", "--stats", f"127.0.0.1:{stats_port}"),
            *("--admin-socket", str(work / "admin.sock"), "--log", "stdout", "--unprivileged"),
            # HAProxy needs about 2 file descriptors per connection; stay within `ulimit -n`.
            *("--maxconn", "2000", "--frontend-maxconn", "1000"),
            *("--output", str(config)),
            *(f"127.0.0.1:{node.port}" for node in nodes),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    subprocess.run(["haproxy", "-c", "-q", "-f", str(config)], check=True, timeout=30)
    return config


def server_rows(stats_port: int) -> list[dict[str, str]]:
    """The rows of the backend's servers in HAProxy's stats CSV."""
    url = f"http://127.0.0.1:{stats_port}/stats;csv"
    with urllib.request.urlopen(url, timeout=5) as answer:
        text = answer.read().decode().lstrip("# ")
    return [
        row
        for row in csv.DictReader(io.StringIO(text))
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    ]


def servers_up(stats_port: int) -> int:
    return sum(1 for row in server_rows(stats_port) if row["status"] == "UP")


def wait_all_up(cluster: Cluster, timeout: float) -> None:
    """Until HAProxy has every node UP: a saturated node can miss its health checks
    (/readyz, 1 s timeout) and leave the rotation for a while."""
    deadline = time.monotonic() + timeout
    while servers_up(cluster.stats_port) < len(cluster.nodes):
        if time.monotonic() > deadline:
            raise RuntimeError(f"HAProxy: not all nodes UP after {timeout}s")
        time.sleep(0.2)


def times_taken_down(cluster: Cluster) -> dict[str, int]:
    """How often HAProxy took each node out of rotation (failed health checks)."""
    return {row["svname"]: int(row["chkdown"] or 0) for row in server_rows(cluster.stats_port)}


def start_balancer(work: Path, nodes: list[Server], timeout: float = 30) -> Cluster:
    port, stats_port = free_port(), free_port()
    config = render_config(work, port, stats_port, nodes)
    balancer = spawn("haproxy", ["haproxy", "-db", "-f", str(config)], port, work / "haproxy.log")
    cluster = Cluster(nodes, balancer, stats_port)
    try:
        wait_port(port, 10, balancer.proc)
        wait_all_up(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def shared_file_store(work: Path) -> dict[str, str]:
    """The nodes share one directory file store, as app nodes on one machine (or on a shared
    file system) can; the single node's embedded default keeps its files the same way."""
    return {"CLOUDPACS_FILE_STORE": "directory", "CLOUDPACS_FILE_STORE_DIR": str(work / "store")}


@contextlib.contextmanager
def running_cluster(work: Path, db: SharedDb, database: str, count: int) -> Iterator[Cluster]:
    """`count` serve nodes on `database` of the shared FerretDB, behind HAProxy. The SQLite
    indexes for `_id` lookups are added as the embedded default adds them at start, so that
    1 node and N nodes differ by topology only."""
    nodes: list[Server] = []
    try:
        for i in range(1, count + 1):  # one after the other: the first creates the schema
            home = work / f"node-{i}"
            env = shared_file_store(work)
            nodes.append(start_cloudpacs("serve", home, db.uri, database, env))
            if i == 1:
                add_id_lookup_indexes(db.data_dir, database)
        cluster = start_balancer(work, nodes)
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


def haproxy_version() -> str:
    done = subprocess.run(["haproxy", "-v"], capture_output=True, text=True, check=True)
    return done.stdout.split("\n", 1)[0].split()[2]


def cluster_stow(ctx: Context, db: SharedDb, count: int) -> list[dict[str, Any]]:
    """Each STOW-RS level on a fresh database, as for the single node."""
    files = ctx.corpus.files[: ctx.plan.stow_instances]
    levels = []
    for clients in ctx.plan.stow_clients:
        database = f"cluster_stow_c{clients}"
        log(f"{count} nodes STOW-RS: {len(files)} instances, {clients} client(s), {database}")
        work = ctx.run_dir / f"cluster-{database}"
        with running_cluster(work, db, database, count) as cluster:
            url = f"{cluster.root}/studies"
            levels.append(stow_level(url, cluster.pids(db.server), files, clients, ctx.plan))
            levels[-1]["times_taken_down"] = times_taken_down(cluster)
        drop_database(db.uri, database)
        log(f"  -> {levels[-1]['instances_per_s']} instances/s, {levels[-1]['mb_per_s']} MB/s")
    return levels


def cluster_phase(ctx: Context, count: int) -> dict[str, Any]:
    """STOW-RS levels, then the whole corpus over STOW-RS, QIDO-RS, WADO-RS, disk use."""
    db_dir = ctx.run_dir / "ferretdb-cluster"
    db = SharedDb(start_ferretdb(db_dir), db_dir)
    out: dict[str, Any] = {
        "nodes": count,
        "haproxy": haproxy_version(),
        "haproxy_config": "haproxy/render-config.sh --unprivileged",
        "shared_ferretdb": "one FerretDB (SQLite), with the `_id` lookup indexes the embedded "
        "default adds (cloudpacs.embedded.add_id_lookup_indexes)",
        "file_store": "one directory shared by the nodes (CLOUDPACS_FILE_STORE=directory)",
    }
    clients = ctx.plan.load_clients
    try:
        out["stow"] = cluster_stow(ctx, db, count)
        work = ctx.run_dir / "cluster-main"
        with running_cluster(work, db, LOAD_DATABASE, count) as cluster:
            target = Target(
                f"cloudpacs-{count}-nodes",
                cluster.root,
                cluster.pids(db.server),
                settle=lambda: wait_all_up(cluster, SETTLE_SECONDS),
            )
            out["commands"] = cluster.commands(db.server, LOAD_DATABASE, work)
            log(f"{count} nodes: the whole corpus over STOW-RS ({clients} clients) via HAProxy")
            out["load"] = stow_level(
                f"{target.root}/studies", dict(target.pids), ctx.corpus.files, clients, ctx.plan
            )
            log(f"  -> {out['load']['instances_per_s']} instances/s")
            out["archive_check"] = check_archive(target.root, ctx.corpus)
            out["qido"] = qido_phase(ctx, target)
            out["wado"] = wado_phase(ctx, target)
            out["times_taken_down"] = times_taken_down(cluster)
    finally:
        db.server.stop()
    files = sqlite_files(db_dir, LOAD_DATABASE) + stored_files(work / "store")
    out["disk"] = disk_usage(files, ctx.corpus.total_bytes)
    log(f"{count} nodes disk: {out['disk']}")
    return out
