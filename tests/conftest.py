"""Shared fixtures: the real data beside the repository, and an isolated Prefect."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# The local Prefect server `flows run` shares stops itself this soon after the last command,
# should the session end without stopping it (a killed pytest).
os.environ.setdefault("TCM_CORPUS_SERVER_IDLE_SECONDS", "120")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is not beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session", autouse=True)
def prefect_home(tmp_path_factory) -> Path:
    """One PREFECT_HOME for the session, so the local database is migrated once; every command a
    test starts inherits it, and the local server those commands share (flows/local_server.py)
    is stopped when the session ends."""
    home = tmp_path_factory.mktemp("prefect-home")
    before = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    yield home
    from flows.local_server import stop

    stop(home)
    if before is None:
        os.environ.pop("PREFECT_HOME", None)
    else:
        os.environ["PREFECT_HOME"] = before


@pytest.fixture(scope="session")
def prefect_harness(prefect_home):
    """Prefect's own test harness: a temporary database and API for in-process flow runs."""
    os.environ["PREFECT_HOME"] = str(prefect_home)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
