"""The supervisor's building blocks on tiny real processes (no lakeforge services needed)."""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass

import psutil
import pytest

from lakeforge.errors import ServiceError
from lakeforge.services.base import ProcessService, State, port_free


@pytest.fixture
def state(tmp_path):
    return State(tmp_path / "home")


def test_taken_preferred_port_is_replaced_and_remembered(state):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        chosen = state.port("svc", taken)
        assert chosen != taken and port_free(chosen)
    assert state.ports["svc"] == chosen
    assert state.port("svc", taken) == chosen  # stable across calls while free


def test_two_services_never_share_a_port(state):
    a = state.port("a", 45123)
    b = state.port("b", 45123)
    assert a != b


@dataclass
class ShellService(ProcessService):
    healthy_file: str = ""

    def healthy(self) -> bool:
        import os

        return os.path.exists(self.healthy_file)


def test_crashing_service_is_named_with_its_log_tail(state):
    svc = ShellService(name="crashy", state=state, argv=["sh", "-c", "echo 'bind: address already in use'; exit 3"],
                       healthy_file="/nonexistent")
    with pytest.raises(ServiceError) as err:
        svc.start()
    msg = str(err.value)
    assert "crashy exited with code 3" in msg and "address already in use" in msg


def test_service_that_never_gets_healthy_times_out_with_log(state):
    svc = ShellService(name="slow", state=state, argv=["sh", "-c", "echo starting; sleep 30"],
                       healthy_file="/nonexistent", start_timeout=1.5)
    with pytest.raises(ServiceError, match="(?s)slow did not become healthy.*starting"):
        svc.start()
    svc.stop()
    assert not svc.running()


def test_stop_kills_the_whole_process_tree(state, tmp_path):
    flag = tmp_path / "ready"
    # a parent that ignores SIGTERM and a child in the same group: both must go
    script = f"trap '' TERM; sleep 60 & touch {flag}; wait"
    svc = ShellService(name="tree", state=state, argv=["sh", "-c", script], healthy_file=str(flag))
    svc.start()
    pid = svc.pid()
    children = psutil.Process(pid).children(recursive=True)
    assert children
    t0 = time.monotonic()
    svc.stop(timeout=1)
    assert time.monotonic() - t0 < 10
    assert not svc.running()
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)


def test_start_is_idempotent(state, tmp_path):
    flag = tmp_path / "up"
    svc = ShellService(name="idem", state=state, argv=["sh", "-c", f"touch {flag}; sleep 60"], healthy_file=str(flag))
    svc.start()
    first = svc.pid()
    svc.start()
    assert svc.pid() == first
    svc.stop()


def test_external_endpoints_skip_embedded_services(tmp_path, monkeypatch):
    from lakeforge.services.supervisor import Supervisor

    monkeypatch.setenv("LAKEFORGE_KAFKA_BOOTSTRAP", "kafka.example:9092")
    monkeypatch.setenv("LAKEFORGE_PG_URI", "postgresql://u:p@db.example:5432/postgres")
    sup = Supervisor(tmp_path / "home")
    names = sup.service_names()
    assert "kafka" not in names and "postgres" not in names and "s3" in names
    assert sup.kafka_bootstrap() == "kafka.example:9092"
    assert sup._pg_uri("airflow") == "postgresql+psycopg2://u:p@db.example:5432/airflow"


def test_a_dead_service_stops_the_demo_with_its_name_and_log(tmp_path, monkeypatch):
    """check_alive (polled by the demo while it waits) names the dead service and shows its log."""
    from lakeforge.services.supervisor import Supervisor

    sup = Supervisor(tmp_path / "home")
    monkeypatch.setattr(sup, "service_names", lambda: ["model-server"])
    svc = sup.service("model-server")
    svc.log_path.write_text("loading champion\nKilled: out of memory\n")
    svc.pid_path.write_text("999999999")  # no such process
    with pytest.raises(ServiceError, match="(?s)model-server is not running.*out of memory"):
        sup.check_alive()


def test_down_and_status_work_when_nothing_runs(tmp_path):
    from lakeforge.services.supervisor import Supervisor

    sup = Supervisor(tmp_path / "home")
    assert sup.down(progress=lambda *_: None) == []
    assert sup.down(progress=lambda *_: None) == []  # twice: idempotent
    assert not any(r["running"] for r in sup.status())


def test_a_port_answered_by_a_foreign_process_is_detected(tmp_path):
    """A health probe alone would take another program's server on our port for ours."""
    import http.server
    import threading

    from lakeforge.errors import PortTakenError
    from lakeforge.services.base import LoopbackHttp, ProcessService, State, http_ok

    foreign = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    port = foreign.server_address[1]

    class Sleeper(LoopbackHttp, ProcessService):  # "starts" but never binds: the foreign server answers
        def healthy(self):
            return http_ok(self.url + "/")

    svc = Sleeper(name="sleeper", state=State(tmp_path), argv=[sys.executable, "-c", "import time; time.sleep(60)"])
    svc.port = port
    svc.start_timeout = 10
    try:
        with pytest.raises(PortTakenError, match=f"port {port} is served by pid"):
            svc.start()
        assert not svc.running()  # ours was stopped
    finally:
        foreign.shutdown()
        svc.stop()


def test_forget_port_lets_the_next_choice_differ(tmp_path):
    from lakeforge.services.base import State

    state = State(tmp_path)
    first = state.port("mlflow", 5000)
    state.forget_port(first)
    assert "mlflow" not in state.ports


def test_chosen_ports_stay_out_of_the_ephemeral_range():
    from lakeforge.services.base import _ephemeral_range, free_port

    low, high = _ephemeral_range()
    for _ in range(20):
        assert not low <= free_port() <= high


def test_a_running_service_is_restarted_when_its_settings_changed(state, tmp_path):
    """A scheduler started before the API moved port must not keep calling the old one."""
    ok = tmp_path / "ok"
    ok.touch()
    argv = ["sh", "-c", "sleep 60"]
    svc = ShellService(name="sched", state=state, argv=argv, env={"API": "http://127.0.0.1:8080"}, healthy_file=str(ok))
    svc.start()
    first = svc.pid()
    try:
        ShellService(name="sched", state=state, argv=argv, env={"API": "http://127.0.0.1:8080"},
                     healthy_file=str(ok)).start()
        assert svc.pid() == first  # same settings: kept
        moved = ShellService(name="sched", state=state, argv=argv, env={"API": "http://127.0.0.1:18080"},
                             healthy_file=str(ok))
        moved.start()
        assert moved.pid() not in (None, first)
        old_gone = not psutil.pid_exists(first) or psutil.Process(first).status() == psutil.STATUS_ZOMBIE
        assert old_gone
    finally:
        svc.stop()


@dataclass
class PreparedService(ShellService):
    """Fills its command in prepare(), as the S3 and MLflow services do."""

    def prepare(self) -> None:
        self.argv = ["sh", "-c", "sleep 60"]


def test_a_service_whose_prepare_fills_its_command_is_kept_by_a_second_start(state, tmp_path):
    ok = tmp_path / "ok"
    ok.touch()
    svc = PreparedService(name="prep", state=state, healthy_file=str(ok))
    svc.start()
    first = svc.pid()
    try:
        PreparedService(name="prep", state=state, healthy_file=str(ok)).start()
        assert svc.pid() == first
    finally:
        svc.stop()


def test_airflow_passwords_file_is_replaced_atomically_and_only_on_change(tmp_path):
    """The api-server reads the passwords file on every login: rewriting it in place let a login see
    an empty file (401 for the right password). Unchanged content leaves the very same file."""
    import json

    from lakeforge.services.airflow_server import airflow_env

    state = State(tmp_path)
    env = airflow_env(state, "postgresql://x/airflow", 8080, {})
    path = tmp_path / "airflow" / "simple_auth_manager_passwords.json"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(path)
    password = state.secrets["airflow"]["admin_password"]
    assert json.loads(path.read_text()) == {"admin": password}
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.stat()
    airflow_env(state, "postgresql://x/airflow", 8080, {})
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns

    secrets = state.secrets
    secrets["airflow"]["admin_password"] = "changed"
    state.set_secrets(secrets)
    airflow_env(state, "postgresql://x/airflow", 8080, {})
    assert json.loads(path.read_text()) == {"admin": "changed"}
    assert path.stat().st_ino != before.st_ino  # a new file renamed over the old one
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temp file left
