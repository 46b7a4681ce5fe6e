"""Shared fixtures: the real data beside the repository, and an isolated Prefect."""
from __future__ import annotations

import os
import subprocess
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


# What `flows run` does before its flow runs, as a command of its own: use PREFECT_HOME's shared
# local server (flows/local_server.py), starting it when none runs, and wait until it answers.
USE_SERVER = "from flows.local_server import use_shared_server\nuse = use_shared_server(); use.wait_ready(); print(use.url)\n"
HOME_KEY = pytest.StashKey[Path]()
STARTER_KEY = pytest.StashKey[subprocess.Popen]()


def use_server(home: Path) -> subprocess.Popen:
    """`USE_SERVER` in a process of its own on `home`; its stdout is the server's API URL."""
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen([sys.executable, "-c", USE_SERVER], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def pytest_sessionstart(session) -> None:
    """The session's PREFECT_HOME; on a run of the whole suite (no paths given), its shared server
    is started now, in the background: the database is migrated while the tests are collected,
    and the first command finds it running (or, after its idle time, starts another)."""
    config = session.config
    home = config._tmp_path_factory.mktemp("prefect-home")
    config.stash[HOME_KEY] = home
    if config.args_source is pytest.Config.ArgsSource.TESTPATHS:
        config.stash[STARTER_KEY] = use_server(home)


@pytest.fixture(scope="session", autouse=True)
def prefect_home(request) -> Path:
    """One PREFECT_HOME for the session, so the local database is migrated once; every command a
    test starts inherits it, and the local server those commands share (flows/local_server.py)
    is stopped when the session ends."""
    home = request.config.stash[HOME_KEY]
    before = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    yield home
    from flows.local_server import stop

    starter = request.config.stash.get(STARTER_KEY, None)
    if starter is not None and starter.poll() is None:
        starter.kill()
    stop(home)
    if starter is not None:
        starter.communicate()
    if before is None:
        os.environ.pop("PREFECT_HOME", None)
    else:
        os.environ["PREFECT_HOME"] = before


@pytest.fixture(scope="session")
def shared_server(prefect_home) -> str:
    """The API URL of the session's shared local server, which `flows run` commands use too,
    kept running while the session lasts (this process holds its users' lock, as a command does)."""
    import fcntl

    from flows.local_server import read_state, state_dir

    folder = state_dir(prefect_home)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "users.lock", "a+") as users:
        fcntl.flock(users, fcntl.LOCK_SH)  # taken before the server is found: it cannot go idle after
        out, err = use_server(prefect_home).communicate(timeout=300)
        assert out.strip(), f"the shared Prefect server did not start: {err[-3000:]}"
        assert read_state(folder)["url"] == out.strip()
        yield out.strip()


@pytest.fixture(scope="session")
def prefect_harness(shared_server):
    """In-process flow runs against the session's shared local server: the database `flows run`
    commands use, migrated once (a harness of its own would migrate a second one)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_CSRF_SUPPORT_ENABLED, temporary_settings

    # The shared server runs without CSRF protection, as `flows run` sets its clients.
    with temporary_settings(updates={PREFECT_API_URL: shared_server, PREFECT_CLIENT_CSRF_SUPPORT_ENABLED: False}):
        yield
        APILogWorker.drain_all(timeout=5)  # while the server still answers
