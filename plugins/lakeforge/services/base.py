"""Building blocks of the supervisor: state directory, port choice, and a managed process.

Every embedded service is a :class:`ProcessService`: a command started in its own process group
(so ``down`` can stop the whole tree: MLflow's uvicorn workers, SeaweedFS's master/volume/filer),
logging to ``$LAKEFORGE_HOME/logs/<name>.log``, with its pid in ``$LAKEFORGE_HOME/run/<name>.pid``
and a health check. Services that are not started by us (a user's own Kafka) are skipped by the
supervisor when their endpoint is set in the environment.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lakeforge.errors import PortTakenError, ServiceError

log = logging.getLogger(__name__)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) != 0


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    return not port_free(port, host)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A port that is free now and outside the kernel's ephemeral range.

    Not ``bind(0)``: that hands out an ephemeral port, which any outgoing connection may take as
    its local port later; a server restarted on it then fails to bind while such a connection
    lingers in TIME_WAIT (seen with Kafka here).
    """
    import random

    low, high = _ephemeral_range()
    candidates = [p for p in range(15000, 32768) if not low <= p <= high] or list(range(10000, 15000))
    for port in random.sample(candidates, min(200, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # everything taken: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listeners(port: int) -> set[int] | None:
    """Pids listening on TCP ``port`` (None when the system does not tell us)."""
    import psutil

    try:
        return {c.pid for c in psutil.net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    except (psutil.AccessDenied, PermissionError):
        return None


def tail(path: Path, lines: int = 25) -> str:
    """Last lines of a log file (for error messages)."""
    try:
        data = path.read_bytes()[-64_000:].decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(data[-lines:])


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Write ``path`` whole or not at all: a temp file of its own in the same directory, renamed
    over it, so a reader never sees it half-written and two writers never share a temp file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class State:
    """The state directory: ``logs/``, ``run/`` (pids), ``data/``, ``endpoints.json``, ``ports.json``."""

    def __init__(self, home: Path):
        self.home = Path(home).resolve()
        self.logs = self.home / "logs"
        self.run = self.home / "run"
        self.data = self.home / "data"
        for d in (self.home, self.logs, self.run, self.data):
            d.mkdir(parents=True, exist_ok=True)

    def _json(self, name: str) -> dict:
        try:
            return json.loads((self.home / name).read_text())
        except FileNotFoundError:
            return {}

    def _write_json(self, name: str, obj: dict, mode: int = 0o644) -> None:
        write_atomic(self.home / name, json.dumps(obj, indent=2, sort_keys=True), mode)

    @property
    def ports(self) -> dict[str, int]:
        return self._json("ports.json")

    def port(self, name: str, preferred: int, owned: Callable[[int], bool] = lambda p: False) -> int:
        """The port for ``name``: the one chosen before if we still own it or it is free, else the
        preferred port if free, else any free port. Chosen ports are remembered in ports.json."""
        ports = self.ports
        chosen = ports.get(name)
        taken_by_others = set(v for k, v in ports.items() if k != name)
        if chosen and (port_free(chosen) or owned(chosen)):
            return chosen
        if preferred not in taken_by_others and port_free(preferred):
            chosen = preferred
        else:
            chosen = free_port()
            while chosen in taken_by_others:
                chosen = free_port()
            log.info("port %d for %s is taken: using %d", preferred, name, chosen)
        ports[name] = chosen
        self._write_json("ports.json", ports)
        return chosen

    def forget_port(self, port: int) -> None:
        """Drop every remembered choice of ``port`` (the next :meth:`port` call picks another)."""
        self._write_json("ports.json", {k: v for k, v in self.ports.items() if v != port})

    @property
    def endpoints(self) -> dict:
        return self._json("endpoints.json")

    def set_endpoints(self, **values: str) -> None:
        self._write_json("endpoints.json", {**self.endpoints, **values})

    @property
    def secrets(self) -> dict:
        return self._json("secrets.json")

    def set_secrets(self, obj: dict) -> None:
        self._write_json("secrets.json", obj, mode=0o600)


@dataclass
class ProcessService:
    """A long-running process we start, health-check and stop.

    Subclasses (or instances) provide ``argv``, ``env`` and ``healthy``; ``prepare`` runs once
    before the first start (format storage, create databases…).
    """

    name: str
    state: State
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    start_timeout: float = 90.0
    depends_on: tuple[str, ...] = ()

    # -- to override ----------------------------------------------------------------------------
    def prepare(self) -> None:
        """One-time setup before start (idempotent)."""

    def healthy(self) -> bool:
        """True when the service answers."""
        raise NotImplementedError

    def endpoint(self) -> str:
        """A URL or address to print in ``status``."""
        return ""

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.state.logs / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.state.run / f"{self.name}.pid"

    @property
    def fingerprint_path(self) -> Path:
        return self.state.run / f"{self.name}.settings"

    def fingerprint(self) -> str:
        """A digest of what the process is started with (its command and its own environment, PATH
        aside): a running process whose digest differs is restarted by :meth:`start`."""
        import hashlib

        env = {k: v for k, v in sorted(self.env.items()) if k != "PATH"}
        return hashlib.sha256(json.dumps([list(map(str, self.argv)), env]).encode()).hexdigest()

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        # a zombie (exited child of this very process) counts as dead
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("Z"):
                    return None
        except (FileNotFoundError, IndexError):
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self) -> None:
        """Start the process (if not running) and wait until healthy; raise with the log tail if not."""
        # taken before prepare(), which may fill in argv/env: compared with what a later start() of a
        # freshly built service computes at the same point
        fingerprint = self.fingerprint()
        if self.running() and self.healthy():
            stored = self.fingerprint_path.read_text() if self.fingerprint_path.exists() else None
            if stored in (None, fingerprint):
                log.info("%s already running (pid %s)", self.name, self.pid())
                return
            # e.g. the Airflow API moved to another port: a scheduler started before would keep
            # calling the old one, so every task would fail to reach it
            log.info("%s runs with other settings than it would start with now: restarting it", self.name)
            self.stop()
        if self.running():
            # a previous start that never became healthy: replace it
            self.stop()
        self.prepare()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                self.argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=str(self.cwd) if self.cwd else None,
                start_new_session=True,  # own process group: `down` stops children too
            )
        self.pid_path.write_text(str(proc.pid))
        self.wait_healthy(proc)
        self.fingerprint_path.write_text(fingerprint)

    def wait_healthy(self, proc: subprocess.Popen | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with code {proc.returncode} while starting; log {self.log_path}:\n"
                    f"{tail(self.log_path)}"
                )
            try:
                ok = self.healthy()
            except Exception as exc:  # health probes may raise while the server boots
                log.debug("%s not healthy yet: %s", self.name, exc)
                ok = False
            if ok:
                self.check_port_is_ours(proc)
                log.info("%s is up: %s", self.name, self.endpoint())
                return
            time.sleep(0.5)
        raise ServiceError(
            f"{self.name} did not become healthy within {self.start_timeout:.0f}s; log {self.log_path}:\n"
            f"{tail(self.log_path)}"
        )

    def listen_port(self) -> int | None:
        """The TCP port this service itself listens on (its health probe's), if any."""
        return getattr(self, "port", None)

    def check_port_is_ours(self, proc: subprocess.Popen | None) -> None:
        """Raise :class:`PortTakenError` when our port answers from a process outside our tree.

        A health probe only asks "does something answer there?": when another state dir's server
        took the port between our choice and our bind, it answers for us while ours failed to bind.
        """
        import psutil

        port = self.listen_port()
        pid = proc.pid if proc is not None else self.pid()
        if not port or pid is None:
            return
        pids = listeners(port)
        if not pids:
            return
        try:
            root = psutil.Process(pid)
            ours = {pid} | {c.pid for c in root.children(recursive=True)}
        except psutil.NoSuchProcess:
            ours = set()
        if pids & ours:
            return
        other = next(iter(pids))
        try:
            cmd = " ".join(psutil.Process(other).cmdline())[:160]
        except psutil.Error:
            cmd = "?"
        if proc is not None:
            stop_process_group(proc.pid, timeout=5)
        raise PortTakenError(f"{self.name}: port {port} is served by pid {other} ({cmd}), not by ours", port)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL what is left."""
        pid = self.pid()
        if pid is None:
            self.pid_path.unlink(missing_ok=True)
            return
        stop_process_group(pid, timeout)
        self.pid_path.unlink(missing_ok=True)
        self.fingerprint_path.unlink(missing_ok=True)
        log.info("%s stopped", self.name)


class LoopbackHttp:
    """Mixin for services that answer HTTP on 127.0.0.1:``self.port``."""

    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self) -> str:
        return self.url


def stop_process_group(pid: int, timeout: float = 15.0, first_signal: int = signal.SIGTERM) -> None:
    """Stop a process and its whole group (and any descendants that left the group)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        pgid = None
    for sig in (first_signal, signal.SIGKILL):
        if pgid is not None:
            try:
                os.killpg(pgid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout if sig != signal.SIGKILL else 5)
        if not alive:
            return
        procs = alive


def http_ok(url: str, timeout: float = 2.0, ok_codes: tuple[int, ...] = (200,)) -> bool:
    """True when GET url answers with one of ok_codes."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code in ok_codes
    except httpx.HTTPError:
        return False
