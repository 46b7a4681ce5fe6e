"""The local Prefect server that `flows run` commands share (flows/local_server.py): started by
the first command, used by the next, stopped by itself once no command has used it for the idle
time, and by `flows server stop`; each on its own PREFECT_HOME, holding a copy of the session's
migrated database (a server that starts on a new database spends as long again migrating it)."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from flows.local_server import _running, read_state, state_dir, status, stop

REPO = Path(__file__).resolve().parents[1]
# A command's use of the server, without a flow: what `flows run` does before its flow runs.
USE = ("import json, sys\nfrom flows.local_server import use_shared_server\n"
       "use = use_shared_server(); use.wait_ready()\n"
       "print(json.dumps({'url': use.url, 'pid': use.state['pid'], 'started_here': use.started_here}))\n")


def use_server(home: Path, idle: float) -> dict:
    env = {**os.environ, "PREFECT_HOME": str(home), "TCM_CORPUS_SERVER_IDLE_SECONDS": str(idle)}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-c", USE], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def alive(pid: int) -> bool:
    return _running(pid)


@pytest.fixture
def home(tmp_path, prefect_home, shared_server) -> Path:
    """A PREFECT_HOME of the test's own whose database is a copy of the session's (which the
    session's running server has migrated), taken with SQLite's online backup."""
    home = tmp_path / "home"
    home.mkdir()
    with closing(sqlite3.connect(prefect_home / "prefect.db")) as source, closing(sqlite3.connect(home / "prefect.db")) as copy:
        source.backup(copy)
    return home


def test_commands_share_one_server_which_stops_itself_when_idle(home):
    first = use_server(home, idle=4)
    second = use_server(home, idle=4)
    assert first["started_here"] and not second["started_here"]
    assert second["pid"] == first["pid"] and second["url"] == first["url"], "the second command reuses the server"
    with urllib.request.urlopen(first["url"] + "/health", timeout=5) as response:
        assert response.status == 200
    assert status(home)["healthy"]
    deadline = time.monotonic() + 60
    while alive(first["pid"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(first["pid"]), "the server outlived its idle time"
    assert read_state(state_dir(home)) is None and not (state_dir(home) / "server.json").exists()


def test_flows_server_stop_ends_it_and_the_next_command_starts_another(home):
    first = use_server(home, idle=300)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    stopped = subprocess.run([sys.executable, "-m", "flows", "server", "stop"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=60)
    assert stopped.returncode == 0 and f"pid {first['pid']}" in stopped.stdout, stopped.stdout + stopped.stderr
    assert not alive(first["pid"])
    shown = subprocess.run([sys.executable, "-m", "flows", "server", "status"], cwd=REPO, env=env, capture_output=True, text=True)
    assert "none running" in shown.stdout
    second = use_server(home, idle=300)
    try:
        assert second["started_here"] and second["pid"] != first["pid"]
    finally:
        assert stop(home)["pid"] == second["pid"]
    assert not alive(second["pid"])


# What a flow run's heartbeat thread reads: the interval, or None for no heartbeats.
HEARTBEAT = ("from flows.runtime import without_heartbeats\nfrom prefect.settings import get_current_settings\n"
             "with without_heartbeats():\n    print(get_current_settings().flows.heartbeat_frequency)\n"
             "print(get_current_settings().flows.heartbeat_frequency)\n")


def test_runs_on_the_shared_server_send_heartbeats_only_when_the_user_sets_them(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", None)
    env.pop("PREFECT_RUNNER_HEARTBEAT_FREQUENCY", None)
    default = subprocess.run([sys.executable, "-c", HEARTBEAT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert default.stdout.split() == ["None", "180"], default.stdout + default.stderr[-2000:]
    chosen = subprocess.run([sys.executable, "-c", HEARTBEAT], cwd=REPO, env={**env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60"},
                            capture_output=True, text=True, timeout=120)
    assert chosen.stdout.split() == ["60", "60"], chosen.stdout + chosen.stderr[-2000:]
