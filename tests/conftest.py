"""Shared fixtures. Real services are started once per test session by the same supervisor users run
(`lakeforge up`), in their own state dir (LAKEFORGE_HOME, `.lakeforge-test` under `make test`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("LAKEFORGE_HOME", str(REPO / ".lakeforge-test"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# test-only pipelines (e.g. the land-only one the backfill test drives through the real scheduler)
os.environ.setdefault("LAKEFORGE_PIPELINES_PATH", str(REPO / "tests" / "pipelines"))


@pytest.fixture(scope="session")
def services():
    """Start every embedded service once (idempotent); stop them all at the end of the session."""
    from lakeforge.services.supervisor import Supervisor

    sup = Supervisor(Path(os.environ["LAKEFORGE_HOME"]))
    sup.up(progress=print)
    yield sup
    if not os.environ.get("LAKEFORGE_KEEP_SERVICES"):
        sup.down(progress=print)


@pytest.fixture(scope="session")
def settings(services):
    from lakeforge.config import Settings

    return Settings.load(home=services.state.home)
