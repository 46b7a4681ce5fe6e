"""Shared fixtures: the real data beside the repository, and an isolated Prefect."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SHARED_CASES = REPO.parent / "shared" / "cases"

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
# The local Prefect server `flows run` shares stops itself this soon after the last command,
# should the session end without stopping it (a killed pytest).
os.environ.setdefault("TCM_CORPUS_SERVER_IDLE_SECONDS", "120")

# The Spark tests' JVMs (driver, executors, a standalone cluster's master and workers) live for
# seconds to a few minutes and run small jobs: most of their CPU would go to the optimizing (C2)
# compiler's threads, whose code such short runs rarely reach. The quick compiler alone does the
# same work with less CPU; what the tests compare (rows, manifests, files) does not depend on it.
SPARK_TEST_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared data folder {SHARED_DATA} is not beside the repository")
    return SHARED_DATA


def copy_shared_case(name: str, into: Path) -> Path:
    """A writable copy of the shared fault case ../shared/cases/NAME (its inputs, config and
    EXPECTED.md) at into/NAME; runs write beside their inputs, and the shared copy is read-only.
    Skips the test when the case is not beside the repository."""
    import shutil

    source = SHARED_CASES / name
    if not source.is_dir():
        pytest.skip(f"the shared case {source} is not beside the repository")
    target = into / name
    shutil.copytree(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


@pytest.fixture
def shared_case(tmp_path):
    """`shared_case(NAME)`: a writable copy of ../shared/cases/NAME in the test's tmp_path."""
    return lambda name: copy_shared_case(name, tmp_path)


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
