"""Shared helpers for the perf/ scripts: servers on free loopback ports (stopped by PID),
/proc resource accounting, ApacheBench runs and small formatting helpers.
"""

from __future__ import annotations

import contextlib
import csv
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "perf" / "out"
VENV_BIN = REPO / ".venv" / "bin"
FERRETDB = REPO / ".tools" / "bin" / "ferretdb"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def wait_http_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


# ---- processes --------------------------------------------------------------------------
@dataclass
class Server:
    """A child process we started; stopped by its PID only."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def spawn(
    name: str,
    argv: Sequence[str],
    port: int,
    log: Path,
    env: Mapping[str, str] | None = None,
    inherit: bool = True,
) -> Server:
    """Start a child (cwd at the repo root); `env` adds to ours, or replaces it (inherit=False)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fp:
        proc = subprocess.Popen(
            list(argv),
            cwd=REPO,
            stdout=fp,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})} if inherit else dict(env or {}),
            stdin=subprocess.DEVNULL,
        )
    return Server(name, proc, port, log)


def start_ferretdb(data_dir: Path, *extra_args: str) -> Server:
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        str(FERRETDB),
        f"--listen-addr=127.0.0.1:{port}",
        f"--sqlite-url=file:{data_dir.resolve()}/",
        "--log-level=error",
        *extra_args,
    ]
    server = spawn("ferretdb", argv, port, data_dir / "ferretdb.log")
    try:
        wait_port(port, 20, server.proc)
    except BaseException:
        server.stop()
        raise
    return server


def start_cloudpacs(
    command: str,
    home: Path,
    mongo_uri: str | None,
    database: str,
    extra_env: Mapping[str, str] | None = None,
) -> Server:
    """`cloudpacs run|serve` on a free port; waits for /readyz. With no MongoDB URI it runs
    its embedded FerretDB (under HOME/db), as `make run` does."""
    port = free_port()
    env = {"CLOUDPACS_DATABASE": database, **(extra_env or {})}
    if mongo_uri is not None:
        env["CLOUDPACS_MONGO_URI"] = mongo_uri
    argv = [
        str(VENV_BIN / "cloudpacs"),
        command,
        "--home",
        str(home),
        "--http",
        f"127.0.0.1:{port}",
    ]
    # Our environment must not leak a URI into the embedded mode.
    clean = {k: v for k, v in os.environ.items() if k != "CLOUDPACS_MONGO_URI"}
    server = spawn(
        f"cloudpacs-{command}",
        argv,
        port,
        home / f"cloudpacs-{command}.log",
        {**clean, **env} if mongo_uri is None else env,
        inherit=mongo_uri is not None,
    )
    return when_ready(server)


def when_ready(server: Server, path: str = "/readyz", timeout: float = 60) -> Server:
    """The server once `path` answers 200; stopped (by PID) if it never does."""
    try:
        wait_http_ok(f"{server.base}{path}", timeout, server.proc)
    except BaseException:
        server.stop()
        raise
    return server


def embedded_ferretdb(cloudpacs_pid: int) -> tuple[int, int]:
    """(pid, port) of the FerretDB a `cloudpacs` process started as its child."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) != cloudpacs_pid:
                continue
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            for arg in argv:
                if arg.startswith("--listen-addr="):
                    return int(entry.name), int(arg.rpartition(":")[2])
    raise RuntimeError(f"no embedded FerretDB under process {cloudpacs_pid}")


@dataclass
class Archive:
    """A running `cloudpacs run|serve` and the FerretDB behind it (embedded or external)."""

    server: Server
    db_pid: int
    db_uri: str
    database: str
    embedded: bool

    @property
    def pids(self) -> dict[str, int]:
        return {"cloudpacs": self.server.pid, "ferretdb": self.db_pid}

    def stop(self) -> None:
        self.server.stop()
        if self.embedded:  # cloudpacs stops its FerretDB; make sure, by PID
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.db_pid, signal.SIGTERM)


def start_archive(
    command: str,
    home: Path,
    database: str,
    external: Server | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Archive:
    """cloudpacs on its embedded FerretDB, or on `external` (a FerretDB we started);
    `extra_env` adds CLOUDPACS_* settings."""
    if external is not None:
        uri = f"mongodb://127.0.0.1:{external.port}/"
        server = start_cloudpacs(command, home, uri, database, extra_env)
        return Archive(server, external.pid, uri, database, embedded=False)
    server = start_cloudpacs(command, home, None, database, extra_env)
    try:
        pid, port = embedded_ferretdb(server.pid)
    except BaseException:
        server.stop()
        raise
    return Archive(server, pid, f"mongodb://127.0.0.1:{port}/", database, embedded=True)


def command_line(server: Server, env: Mapping[str, str] | None = None) -> str:
    """The shell command that started `server`, with the environment it was given."""
    words = [f"{k}={v}" for k, v in (env or {}).items()]
    return shlex.join([*words, *(str(a) for a in server.proc.args)])


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def scratch_ferretdb(prefix: str) -> Iterator[tuple[Server, str, Path]]:
    """A FerretDB of our own on a temporary data directory (removed afterwards): the
    server, its URI and the directory."""
    data = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with running(start_ferretdb(data)) as server:
            yield server, f"mongodb://127.0.0.1:{server.port}/", data
    finally:
        shutil.rmtree(data, ignore_errors=True)


# ---- /proc accounting -------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of all threads of a process."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_kb(pid: int) -> int:
    fields = Path(f"/proc/{pid}/statm").read_text().split()
    return int(fields[1]) * PAGE_KB


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def all_cpu() -> dict[int, tuple[int, float, str]]:
    """pid -> (ppid, CPU seconds, command) of every process we can read."""
    out: dict[int, tuple[int, float, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (entry / "stat").read_text()
            comm = text[text.index("(") + 1 : text.rindex(")")]
            fields = text[text.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
            out[int(entry.name)] = (int(fields[1]), cpu, comm)
    return out


def descendants(root: int, table: dict[int, tuple[int, float, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def foreign_cpu(before: dict[int, tuple[int, float, str]]) -> dict[str, Any]:
    """CPU used meanwhile by processes outside this benchmark's process tree (other users of
    this machine): their total and the top three."""
    after = all_cpu()
    ours = descendants(os.getpid(), after)
    used: dict[str, float] = {}
    for pid, (_, cpu, comm) in after.items():
        if pid not in ours:
            used[f"{comm}[{pid}]"] = cpu - before.get(pid, (0, 0.0, ""))[1]
    ranked = sorted(used.items(), key=lambda kv: -kv[1])[:3]
    top = {k: round(v, 1) for k, v in ranked if v >= 0.5}
    return {"cpu_seconds": round(sum(v for v in used.values() if v > 0), 1), "top": top}


@dataclass
class ResourceWatch:
    """CPU seconds and peak RSS of some processes over a phase (VmHWM + 100 ms sampling)."""

    pids: dict[str, int]
    interval: float = 0.1
    _cpu0: dict[str, float] = field(default_factory=dict)
    _peak: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0
    _all0: dict[int, tuple[int, float, str]] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)

    def __enter__(self) -> ResourceWatch:
        for name, pid in self.pids.items():
            reset_peak_rss(pid)
            self._cpu0[name] = cpu_seconds(pid)
            self._peak[name] = rss_kb(pid)
        self._all0 = all_cpu()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError):
                    self._peak[name] = max(self._peak[name], rss_kb(pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        wall = time.perf_counter() - self._t0
        for name, pid in self.pids.items():
            cpu = cpu_seconds(pid) - self._cpu0[name]
            peak = max(self._peak[name], status_kb(pid, "VmHWM"))
            self.result[name] = {
                "cpu_seconds": round(cpu, 2),
                "cpu_percent_of_one_core": round(100 * cpu / wall, 1) if wall else 0.0,
                "peak_rss_mb": round(peak / 1024, 1),
            }
        self.result["wall_seconds"] = round(wall, 2)
        self.result["other_processes"] = foreign_cpu(self._all0)


# ---- ApacheBench ------------------------------------------------------------------------
@dataclass(frozen=True)
class AbResult:
    requests: int
    concurrency: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failed: int
    non_2xx: int
    bytes_total: int
    error: str = ""
    command: str = ""

    @property
    def mb_per_s(self) -> float:
        return self.bytes_total / 1e6 / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["mb_per_s"] = round(self.mb_per_s, 1)
        return out


def _ab_number(text: str, label: str, default: float = 0.0) -> float:
    match = re.search(rf"^{re.escape(label)}:\s+([0-9.]+)", text, re.MULTILINE)
    return float(match.group(1)) if match else default


def run_ab(
    url: str,
    requests: int,
    concurrency: int,
    work_dir: Path,
    headers: Sequence[str] = (),
    time_limit: int = 60,
    keepalive: bool = True,
    request_timeout: int = 60,
) -> AbResult:
    """ab -n/-c, bounded by -t (wall) and -s (per request).

    Percentiles come from ab's -e CSV (0.001 ms resolution) when more than 50 requests were
    done; ab indexes that table past its data below that, so then from -g (1 ms resolution).
    A failed ab run (e.g. every request timed out) is reported, not raised.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    stem = work_dir / f"ab-{time.monotonic_ns()}"
    csv_path, tsv_path = stem.with_suffix(".csv"), stem.with_suffix(".tsv")
    # -t first: it resets -n to 50000, the -n after it restores our bound.
    argv = [
        "ab",
        "-q",
        "-r",
        "-t",
        str(time_limit),
        "-n",
        str(requests),
        "-c",
        str(concurrency),
        "-s",
        str(request_timeout),
        "-e",
        str(csv_path),
        "-g",
        str(tsv_path),
    ]
    if keepalive:
        argv.append("-k")
    for header in headers:
        argv += ["-H", header]
    done = subprocess.run(
        [*argv, url], capture_output=True, text=True, timeout=time_limit + request_timeout + 60
    )
    text = done.stdout
    times = _gnuplot_times(tsv_path)
    pct = _percentiles(csv_path) if len(times) > 50 else {}
    for path in (csv_path, tsv_path):
        path.unlink(missing_ok=True)
    error = (
        "" if done.returncode == 0 else f"ab exit {done.returncode}: {done.stderr.strip()[-200:]}"
    )
    return AbResult(
        requests=int(_ab_number(text, "Complete requests")),
        concurrency=concurrency,
        seconds=_ab_number(text, "Time taken for tests"),
        rps=_ab_number(text, "Requests per second"),
        p50_ms=pct.get(50, percentile(times, 50)),
        p90_ms=pct.get(90, percentile(times, 90)),
        p99_ms=pct.get(99, percentile(times, 99)),
        max_ms=max(times, default=0.0),
        failed=int(_ab_number(text, "Failed requests")),
        non_2xx=int(_ab_number(text, "Non-2xx responses")),
        bytes_total=int(_ab_number(text, "Total transferred")),
        error=error,
        command=shlex.join([*argv, url]),
    )


def _percentiles(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    with path.open() as fp:
        rows = list(csv.reader(fp))[1:]
    return {int(float(p)): float(ms) for p, ms in rows}


def _gnuplot_times(path: Path) -> list[float]:
    """Total time (ms) of every completed request, from ab -g."""
    if not path.exists():
        return []
    with path.open() as fp:
        rows = list(csv.reader(fp, delimiter="\t"))[1:]
    return [float(row[4]) for row in rows if len(row) > 4]


# ---- statistics and machine -------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    mem = re.search(r"^MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    go_mod = (REPO / "tools" / "ferretdb" / "go.mod").read_text()
    ferret = re.search(r"FerretDB/FerretDB (v[0-9.]+)", go_mod)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else "unknown",
        "mem_total_gb": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "ferretdb": ferret.group(1) if ferret else "unknown",
    }


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def create_token(uri: str, database: str, home: Path) -> str:
    """`cloudpacs tokens create` run by this interpreter (so from any checkout or worktree)."""
    env = {
        **os.environ,
        "CLOUDPACS_MONGO_URI": uri,
        "CLOUDPACS_DATABASE": database,
        "CLOUDPACS_HOME": str(home),
    }
    argv = [sys.executable, "-m", "cloudpacs", "tokens", "create", "--subject", "bench"]
    argv += ["--grant", "*=contributor", "--days", "1"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd=REPO)
    return done.stdout.strip().splitlines()[-1]
