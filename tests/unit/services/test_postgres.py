"""PostgreSQL's TCP rules: every TCP connection needs a password; the socket stays trusted."""

from __future__ import annotations

from lakeforge.services.base import State
from lakeforge.services.postgres import catalog_password, require_host_passwords

HBA = """# TYPE  DATABASE        USER            ADDRESS                 METHOD
# "local" is for Unix domain socket connections only, "trust" allowed
local   all             all                                     trust
host    all             all             127.0.0.1/32            trust
host    all             all             ::1/128                 trust
local   replication     all                                     trust
host    replication     all             127.0.0.1/32            trust
"""


def test_tcp_rules_ask_for_a_password_and_the_socket_stays_trusted():
    out = require_host_passwords(HBA)
    rules = [line.split() for line in out.splitlines() if line and not line.startswith("#")]
    assert {r[-1] for r in rules if r[0] == "host"} == {"scram-sha-256"}
    assert {r[-1] for r in rules if r[0] == "local"} == {"trust"}
    assert out.splitlines()[1] == HBA.splitlines()[1]  # comments untouched
    assert require_host_passwords(out) == out  # idempotent


def test_the_catalog_password_is_generated_once_and_kept_private(tmp_path):
    state = State(tmp_path)
    first = catalog_password(state)
    assert len(first) >= 24 and catalog_password(State(tmp_path)) == first
    assert (tmp_path / "secrets.json").stat().st_mode & 0o077 == 0
