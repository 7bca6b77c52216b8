"""monitoring/ against the real Prometheus: promtool checks, then every dashboard expression,
recording rule and alert (its series, without the threshold) evaluated on live data.

The live stack, all on loopback ports, stopped by PID: a FerretDB of our own (stopped for a
moment to cause real failed ingests and 5xx answers), the moto server of the session (S3 +
SQS), `cloudpacs run` consuming an SQS queue, HAProxy with its Prometheus exporter in front
of it, node_exporter (filesystem collector only) and Prometheus scraping all three every
second with the rules loaded. The scrape jobs are those of monitoring/prometheus.yml with
their targets replaced.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from cloudpacs.aws.clients import AwsClients, make_clients
from cloudpacs.aws.wiring import WiringPlan, wire_bucket
from tests.conftest import FerretServer, free_port
from tests.factory import Spec, write_instance

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
PROMETHEUS_YML = MONITORING / "prometheus.yml"
RULES = MONITORING / "rules" / "cloudpacs.rules.yml"
DASHBOARD = MONITORING / "grafana" / "cloudpacs-dashboard.json"
README = MONITORING / "README.md"
CLOUDPACS = str(Path(sys.executable).parent / "cloudpacs")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")

# Grafana's built-in variables, as a 1 s scrape makes sense of them.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m"}
SEVERITIES = {"critical", "warning"}
# The expressions that only node_exporter can feed; skipped, and only they, without it.
NEEDS_NODE_EXPORTER = {
    "record:instance_mountpoint:node_filesystem_avail:ratio",
    "alert:DiskSpaceLow",
    "dashboard:Filesystem free/A",
}
COMPARISON = re.compile(r"==|!=|>=|<=|>|<")
SETTLE_SECONDS = 10.0  # how long the data may take to show up, on a loaded machine

# ---------------------------------------------------------------- the files under test


def load_rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def rules_of_kind(kind: str) -> list[dict[str, Any]]:
    return [rule for group in load_rule_groups() for rule in group["rules"] if kind in rule]


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def data_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels(load_dashboard()["panels"]) if p["type"] != "row"]


def variable_values() -> dict[str, str]:
    """Each dashboard variable as Grafana would substitute it with its default selection."""
    values = dict(GRAFANA_BUILTINS)
    for var in load_dashboard()["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        current = var["current"]["value"]
        chosen = current if isinstance(current, list) else [current]
        if "$__all" in chosen:
            values[var["name"]] = var["allValue"]
        elif len(chosen) == 1:
            values[var["name"]] = chosen[0]
        else:
            values[var["name"]] = "(" + "|".join(chosen) + ")"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace $name and ${name} (longest names first); nothing may be left over."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unresolved variable in {expr!r}"
    return expr


def split_comparison(expr: str) -> tuple[str, str, float]:
    """`series OP number` -> (series, OP, number), at the one top-level comparison."""
    found = top_level_comparisons(expr)
    assert len(found) == 1, f"want exactly one top-level comparison: {expr!r}"
    position, operator = found[0]
    threshold = float(expr[position + len(operator) :].strip())
    return expr[:position].strip(), operator, threshold


def top_level_comparisons(expr: str) -> list[tuple[int, str]]:
    found, depth, quote, i = [], 0, "", 0
    while i < len(expr):
        char = expr[i]
        if quote:
            i += 2 if char == "\\" else 1
            quote = "" if char == quote else quote
            continue
        if char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (match := COMPARISON.match(expr, i)):
            found.append((i, match.group()))
            i += len(match.group())
            continue
        i += 1
    return found


@dataclass(frozen=True)
class Expression:
    id: str
    promql: str
    label: str | None = None  # a variable query: this label must be in the result


def dashboard_expressions() -> list[Expression]:
    values = variable_values()
    return [
        Expression(
            f"dashboard:{panel['title']}/{target['refId']}", substitute(target["expr"], values)
        )
        for panel in data_panels()
        for target in panel["targets"]
    ]


def variable_expressions() -> list[Expression]:
    """`label_values(selector, label)` variables: the selector, which must carry the label."""
    out = []
    values = variable_values()
    for var in load_dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"]["query"])
        assert match, f"variable {var['name']}: only label_values(selector, label) is supported"
        selector = substitute(match.group(1), values)
        out.append(Expression(f"variable:{var['name']}", selector, match.group(2)))
    return out


def rule_expressions() -> list[Expression]:
    records = [Expression(f"record:{r['record']}", r["expr"]) for r in rules_of_kind("record")]
    alerts = [
        Expression(f"alert:{r['alert']}", split_comparison(r["expr"])[0])
        for r in rules_of_kind("alert")
    ]
    return records + alerts


ALL_EXPRESSIONS = dashboard_expressions() + variable_expressions() + rule_expressions()

# ---------------------------------------------------------------- static checks


def tool(name: str, package: str) -> str:
    binary = shutil.which(name)
    assert binary, f"{name} missing: install the Debian package {package} (make system-deps)"
    return binary


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = tool("promtool", "prometheus")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)


def test_promtool_check_config() -> None:
    """The config, the rule files it names and the file_sd target files it reads."""
    done = promtool("check", "config", str(PROMETHEUS_YML))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    total = sum(len(group["rules"]) for group in load_rule_groups())
    assert f"SUCCESS: {total} rules found" in done.stdout


def test_every_alert_is_actionable() -> None:
    readme = README.read_text()
    alerts = rules_of_kind("alert")
    assert len({a["alert"] for a in alerts}) == len(alerts), "duplicate alert names"
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name}: no for:"
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        assert {"summary", "description"} <= set(alert.get("annotations", {})), name
        split_comparison(alert["expr"])
        assert f"`{name}`" in readme, f"{name} is not explained in monitoring/README.md"


def test_dashboard_is_well_formed() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    panels = list(all_panels(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in data_panels():
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_node_exporter_list_is_exact() -> None:
    mentions_node = {e.id for e in ALL_EXPRESSIONS if re.search(r"\bnode_", e.promql)}
    assert mentions_node == NEEDS_NODE_EXPORTER


# ---------------------------------------------------------------- alert semantics (promtool)

APP = 'job="cloudpacs", instance="app1:8080"'
API = APP + ', route="/dicomweb/studies", method="GET"'
DISK = 'job="node", instance="db1:9100", device="/dev/sdb", fstype="xfs", mountpoint="/data"'
TMPFS = 'job="node", instance="db1:9100", device="tmpfs", fstype="tmpfs", mountpoint="/run"'


def series(selector: str, values: str) -> dict[str, str]:
    return {"series": selector, "values": values}


def fires(at: str, alert: str, *labels: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": x} for x in labels]}


def sample(at: str, record: str, labels: str, value: float) -> dict[str, Any]:
    return {
        "expr": record,
        "eval_time": at,
        "exp_samples": [{"labels": f"{record}{{{labels}}}", "value": value}],
    }


ONE_IN_TEN_5XX = {  # 10 % of API answers are 503; scrapes do not dilute the ratio
    "interval": "1m",
    "input_series": [
        series(f'cloudpacs_http_request_seconds_count{{{API}, status="200"}}', "0+90x30"),
        series(f'cloudpacs_http_request_seconds_count{{{API}, status="503"}}', "0+10x30"),
        series(
            f'cloudpacs_http_request_seconds_count{{{APP}, route="/metrics", method="GET", '
            'status="200"}',
            "0+1000x30",
        ),
    ],
    "promql_expr_test": [
        sample("10m", "job:cloudpacs_http_5xx_ratio:rate5m", 'job="cloudpacs"', 0.1)
    ],
    "alert_rule_test": [
        fires("4m", "CloudpacsHttp5xxRatioHigh"),
        fires("15m", "CloudpacsHttp5xxRatioHigh", {"severity": "critical", "job": "cloudpacs"}),
    ],
}
ALL_WELL = {  # no 5xx, no failure, no rejection series at all: ratios are 0, nothing fires
    "interval": "1m",
    "input_series": [
        series(f'cloudpacs_http_request_seconds_count{{{API}, status="200"}}', "0+90x30"),
        series(f'cloudpacs_ingests_total{{{APP}, source="stow", outcome="stored"}}', "0+60x30"),
    ],
    "promql_expr_test": [
        sample("10m", "job:cloudpacs_http_5xx_ratio:rate5m", 'job="cloudpacs"', 0),
        sample(
            "10m",
            "job_source:cloudpacs_ingest_failures:rate5m",
            'job="cloudpacs", source="stow"',
            0,
        ),
        sample(
            "20m",
            "job_source:cloudpacs_rejection_ratio:rate15m",
            'job="cloudpacs", source="stow"',
            0,
        ),
    ],
    "alert_rule_test": [
        fires("25m", name)
        for name in (
            "CloudpacsHttp5xxRatioHigh",
            "CloudpacsIngestFailing",
            "CloudpacsRejectionSpike",
        )
    ],
}
TROUBLE = {  # failures, an empty backend, a full disk, a backlog seen by two consumers
    "interval": "1m",
    "input_series": [
        series(f'cloudpacs_ingests_total{{{APP}, source="sqs", outcome="failed"}}', "0+5x30"),
        series(
            'haproxy_backend_active_servers{job="haproxy", instance="lb1:8405", proxy="cloudpacs"}',
            "1 1 0x30",
        ),
        series(f"node_filesystem_avail_bytes{{{DISK}}}", "5x30"),
        series(f"node_filesystem_size_bytes{{{DISK}}}", "100x30"),
        series(f"node_filesystem_avail_bytes{{{TMPFS}}}", "1x30"),
        series(f"node_filesystem_size_bytes{{{TMPFS}}}", "100x30"),
        series(f'cloudpacs_sqs_queue_messages{{{APP}, queue="ingest"}}', "5000x30"),
        series(
            'cloudpacs_sqs_queue_messages{job="cloudpacs", instance="app2:8080", queue="ingest"}',
            "4990x30",
        ),
    ],
    "alert_rule_test": [
        fires("3m", "CloudpacsIngestFailing"),
        fires(
            "15m",
            "CloudpacsIngestFailing",
            {"severity": "critical", "job": "cloudpacs", "source": "sqs"},
        ),
        fires(
            "15m",
            "CloudpacsNoBackendServers",
            {
                "severity": "critical",
                "job": "haproxy",
                "instance": "lb1:8405",
                "proxy": "cloudpacs",
            },
        ),
        fires(
            "15m",
            "DiskSpaceLow",
            {"severity": "critical", **dict(re.findall(r'(\w+)="([^"]*)"', DISK))},
        ),
        fires(
            "15m",
            "CloudpacsSqsBacklog",
            {"severity": "warning", "job": "cloudpacs", "queue": "ingest"},
        ),
    ],
}


def test_alerts_fire_as_documented(tmp_path: Path) -> None:
    """promtool test rules on the rules without annotations (their wording is free)."""
    groups = load_rule_groups()
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}))
    tests = tmp_path / "tests.yml"
    unit = {"rule_files": [str(rules)], "evaluation_interval": "1m"}
    tests.write_text(yaml.safe_dump({**unit, "tests": [ONE_IN_TEN_5XX, ALL_WELL, TROUBLE]}))
    done = promtool("test", "rules", str(tests))
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- processes


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
    process.wait()


def started(
    stack: ExitStack, args: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    process = spawn(args, log, env)
    stack.callback(stop, process)
    return process


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # loopback only: never through a proxy from the environment
    return session


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def answers(url: str, status: int = 200) -> Callable[[], bool]:
    def check() -> bool:
        with http() as session:
            return session.get(url, timeout=5).status_code == status

    return check


# ---------------------------------------------------------------- the system under watch


@dataclass
class Node:
    """One `cloudpacs run` node and the S3 bucket whose notifications it consumes."""

    url: str
    bucket: str
    aws: AwsClients
    folder: Path


def start_node(stack: ExitStack, tmp: Path, ferret: FerretServer, moto: str) -> Node:
    aws = make_clients("us-east-1", moto, 4)
    bucket = f"mon-{uuid.uuid4().hex[:10]}"
    aws.s3.create_bucket(Bucket=bucket)
    plan = wire_bucket(aws.sqs, aws.s3, WiringPlan(bucket=bucket, queue=bucket))
    stack.callback(aws.s3.close)
    stack.callback(aws.sqs.close)
    assert plan.queue_url
    port = free_port()
    env = {
        **os.environ,
        "CLOUDPACS_MONGO_URI": ferret.uri,
        "CLOUDPACS_DATABASE": f"m_{uuid.uuid4().hex[:10]}",
        "CLOUDPACS_AWS_ENDPOINT_URL": moto,
        "CLOUDPACS_AWS_REGION": "us-east-1",
        "CLOUDPACS_SQS_WAIT_SECONDS": "1",
        "CLOUDPACS_SQS_RETRY_BASE_SECONDS": "1",
        "CLOUDPACS_DRAIN_SECONDS": "2",
        "CLOUDPACS_LOG_LEVEL": "WARNING",
    }
    args = [CLOUDPACS, "run", "--home", str(tmp / "home"), "--http", f"127.0.0.1:{port}"]
    started(stack, [*args, "--sqs-queue", plan.queue_url], tmp / "cloudpacs.log", env)
    url = f"http://127.0.0.1:{port}"
    wait_until("cloudpacs /healthz", answers(url + "/healthz"))
    return Node(url, bucket, aws, tmp / "dicom")


HAPROXY_CFG = """\
global
    maxconn 256
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout check 2s
frontend dicomweb
    bind 127.0.0.1:{front}
    default_backend cloudpacs
backend cloudpacs
    option httpchk
    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host cloudpacs-check
    http-check expect status 200
    server app1 127.0.0.1:{app} check inter 1s fall 2 rise 1
frontend stats
    bind 127.0.0.1:{stats}
    http-request use-service prometheus-exporter if {{ path /metrics }}
"""


def start_haproxy(stack: ExitStack, tmp: Path, app_url: str) -> tuple[str, str]:
    """HAProxy in front of the node (names as in haproxy/haproxy.cfg.tmpl): (front, stats)."""
    front, stats = free_port(), free_port()
    config = tmp / "haproxy.cfg"
    app_port = app_url.rsplit(":", 1)[1]
    config.write_text(HAPROXY_CFG.format(front=front, stats=stats, app=app_port))
    started(stack, [tool("haproxy", "haproxy"), "-db", "-f", str(config)], tmp / "haproxy.log")
    stats_address = f"127.0.0.1:{stats}"
    wait_until("HAProxy exporter", answers(f"http://{stats_address}/metrics"))
    front_url = f"http://127.0.0.1:{front}"
    wait_until("HAProxy -> node", answers(front_url + "/readyz"))
    return front_url, stats_address


def start_node_exporter(stack: ExitStack, tmp: Path) -> str | None:
    if NODE_EXPORTER is None:
        return None
    address = f"127.0.0.1:{free_port()}"
    args = [
        NODE_EXPORTER,
        f"--web.listen-address={address}",
        "--collector.disable-defaults",
        "--collector.filesystem",
    ]
    started(stack, args, tmp / "node_exporter.log")
    wait_until("node_exporter", answers(f"http://{address}/metrics"))
    return address


def local_config(targets: dict[str, str]) -> dict[str, Any]:
    """monitoring/prometheus.yml with each job's targets replaced, every second, no alerting."""
    production = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = []
    for job in production["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        kept = {k: v for k, v in job.items() if not k.endswith(("_sd_configs", "static_configs"))}
        kept.update(
            scrape_interval="1s",
            scrape_timeout="1s",
            static_configs=[{"targets": [targets[job["job_name"]]]}],
        )
        jobs.append(kept)
    global_ = {**production["global"], "scrape_interval": "1s", "evaluation_interval": "1s"}
    global_["scrape_timeout"] = "1s"
    return {"global": global_, "rule_files": [str(RULES)], "scrape_configs": jobs}


def start_prometheus(stack: ExitStack, tmp: Path, targets: dict[str, str]) -> str:
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(local_config(targets)))
    address = f"127.0.0.1:{free_port()}"
    args = [
        tool("prometheus", "prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
    ]
    started(stack, args, tmp / "prometheus.log")
    url = f"http://{address}"
    wait_until("Prometheus ready", answers(url + "/-/ready"))
    return url


# ---------------------------------------------------------------- traffic


def dicom_file(folder: Path) -> bytes:
    path = folder / f"{uuid.uuid4().hex}.dcm"
    write_instance(path, Spec())
    return path.read_bytes()


def stow(base: str, parts: list[bytes]) -> int:
    boundary = uuid.uuid4().hex
    chunks = [
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    ]
    body = b"".join(chunks) + b"--" + boundary.encode() + b"--\r\n"
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    with http() as session:
        response = session.post(base + "/dicomweb/studies", data=body, headers=headers, timeout=60)
        return response.status_code


def browse(base: str) -> None:
    """QIDO, metadata, a retrieve, and two kinds of 404 (known route, unknown path)."""
    with http() as session:
        found = session.get(base + "/dicomweb/studies", timeout=30)
        assert found.status_code == 200, found.text
        study = found.json()[0]["0020000D"]["Value"][0]
        for path, status in (
            (f"/dicomweb/studies/{study}/metadata", 200),
            (f"/dicomweb/studies/{study}/series", 200),
            (f"/dicomweb/studies/{study}", 200),
            ("/dicomweb/studies/1.2.3.999/metadata", 404),
            ("/no/such/page", 404),
        ):
            assert session.get(base + path, timeout=30).status_code == status, path


def node_metric(node: Node, name: str) -> float:
    with http() as session:
        text = session.get(node.url + "/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def traffic_round(node: Node, front: str, round_number: int) -> None:
    """One of everything through HAProxy, and one S3 object through SQS."""
    node.folder.mkdir(parents=True, exist_ok=True)
    assert stow(front, [dicom_file(node.folder), b"not DICOM at all"]) == 202
    browse(front)
    node.aws.s3.put_object(
        Bucket=node.bucket, Key=f"in/{uuid.uuid4().hex}.dcm", Body=dicom_file(node.folder)
    )
    wait_until(
        "the S3 object stored through SQS",
        lambda: node_metric(node, "cloudpacs_event_to_stored_seconds_count") >= round_number,
    )


def database_outage(node: Node, ferret: FerretServer) -> None:
    """A STOW while the database is down: a real failed ingest and a real 503."""
    ferret.stop()
    try:
        assert stow(node.url, [dicom_file(node.folder)]) == 503
    finally:
        ferret.start()


# ---------------------------------------------------------------- Prometheus queries


def query(prometheus: str, promql: str, at: float | None = None) -> list[dict[str, Any]]:
    params: dict[str, str | float] = {"query": promql}
    if at is not None:
        params["time"] = at
    with http() as session:
        response = session.get(prometheus + "/api/v1/query", params=params, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{promql}: {body}"
    assert body["data"]["resultType"] == "vector", promql
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def has_numbers(result: list[dict[str, Any]]) -> bool:
    """Data, and at least one sample that is a number (a quantile of no traffic is NaN)."""
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def scraped_since(prometheus: str, since: float, jobs: int) -> bool:
    result = query(prometheus, "timestamp(up == 1)")
    return len(result) == jobs and min(float(s["value"][1]) for s in result) > since


def recorded_since(prometheus: str, since: float) -> bool:
    """Every recording rule with output has been evaluated after `since`."""
    named = 'label_replace({__name__=~".+:.+"}, "rule", "$1", "__name__", "(.+)")'
    result = query(prometheus, f"timestamp({named})")
    return bool(result) and min(float(s["value"][1]) for s in result) > since


@dataclass
class Stack:
    prometheus: str
    jobs: list[str]
    at: float  # every query is evaluated at this instant: the data cannot age out meanwhile


def evaluation_instant(
    prometheus: str, node: Node, front: str, ferret: FerretServer, jobs: int
) -> float:
    """Traffic after a first scrape (rates above zero), an outage, then scrapes and rule
    evaluations of it all: the instant every query is evaluated at."""
    started_at = time.time()
    wait_until("a first scrape", lambda: scraped_since(prometheus, started_at, jobs))
    traffic_round(node, front, 2)
    database_outage(node, ferret)
    done_at = time.time() + 1
    wait_until("scrapes after the traffic", lambda: scraped_since(prometheus, done_at, jobs))
    scraped_at = time.time()
    wait_until("rules evaluated after them", lambda: recorded_since(prometheus, scraped_at))
    return time.time()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, moto_endpoint: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("monitoring")
    with ExitStack() as processes:
        ferret = FerretServer(tmp / "ferretdb", free_port())
        ferret.start()
        processes.callback(ferret.stop)
        node = start_node(processes, tmp, ferret, moto_endpoint)
        front, haproxy = start_haproxy(processes, tmp, node.url)
        targets = {"cloudpacs": node.url.removeprefix("http://"), "haproxy": haproxy}
        if node_exporter := start_node_exporter(processes, tmp):
            targets["node"] = node_exporter
        traffic_round(node, front, 1)  # every series exists before the first scrape
        prometheus = start_prometheus(processes, tmp, targets)
        at = evaluation_instant(prometheus, node, front, ferret, len(targets))
        yield Stack(prometheus, sorted(targets), at)


def test_scrape_jobs_match_production(stack: Stack) -> None:
    production = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = sorted(job["job_name"] for job in production["scrape_configs"])
    expected = jobs if NODE_EXPORTER else [j for j in jobs if j != "node"]
    assert stack.jobs == expected


def test_rules_load_and_evaluate(stack: Stack) -> None:
    with http() as session:
        groups = session.get(stack.prometheus + "/api/v1/rules", timeout=10).json()["data"]
    loaded = [rule for group in groups["groups"] for rule in group["rules"]]
    assert len(loaded) == sum(len(g["rules"]) for g in load_rule_groups())
    broken = [(r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not broken


def test_outage_left_real_failure_series(stack: Stack) -> None:
    """The selectors the ratios fall back from match what the app really exports."""
    for selector in (
        'cloudpacs_ingests_total{outcome="failed", source="stow"}',
        'cloudpacs_http_request_seconds_count{status=~"5..", route!~"/metrics|/healthz|/readyz"}',
        'cloudpacs_rejections_total{source="stow"}',
    ):
        assert query(stack.prometheus, selector, stack.at), selector


@pytest.mark.parametrize("expression", ALL_EXPRESSIONS, ids=[e.id for e in ALL_EXPRESSIONS])
def test_expression_has_data(stack: Stack, expression: Expression) -> None:
    if expression.id in NEEDS_NODE_EXPORTER and NODE_EXPORTER is None:
        pytest.skip("prometheus-node-exporter is not installed: no node_* series")
    result: list[dict[str, Any]] = []

    def ready() -> bool:
        nonlocal result
        result = query(stack.prometheus, expression.promql, stack.at)
        return has_numbers(result)

    try:
        wait_until(expression.id, ready, SETTLE_SECONDS)
    except AssertionError:
        pytest.fail(f"{expression.id}: no numeric data for {expression.promql!r}: {result}")
    if expression.label:
        assert all(expression.label in sample["metric"] for sample in result)
