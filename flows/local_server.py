"""One local Prefect server shared by the `flows run` commands of one PREFECT_HOME, started on
first use and stopped when idle.

Without PREFECT_API_URL, Prefect starts a temporary server for every command (a process that
imports the whole server, checks the database and stops again: several CPU-seconds a command).
`flows run` instead uses one server per PREFECT_HOME:

    use = use_shared_server()     # before Prefect is imported: sets PREFECT_API_URL
    ...                           # imports and checks go on while the server starts
    use.wait_ready()              # before the first flow run

The first command starts it (`python -m flows.local_server serve`, its own session, log in
`PREFECT_HOME/tcm-corpus-server/server.log`), on a free loopback port, with Prefect's
ephemeral-server app (no UI, the services of a temporary server), the same database as the
temporary servers. Every command holds a shared lock on `users.lock` while it runs; the server
checks every few seconds and stops itself once no command has held it for
`TCM_CORPUS_SERVER_IDLE_SECONDS` (default 600), or when its PREFECT_HOME is gone. A killed
command's lock goes with its process, so nothing keeps an idle server alive.
`flows server stop` stops it at once, `flows server status` shows it.

Not used (Prefect's own behaviour instead) when PREFECT_API_URL is set (that server is used),
when `TCM_CORPUS_PREFECT_SERVER=temporary`, when Prefect is already imported in the process (an
embedding application keeps its Prefect settings), or where `fcntl` is missing.

This module imports only the standard library at the top: the CLI imports it before Prefect.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # not POSIX: Prefect's temporary server per command
    fcntl = None

IDLE_ENV = "TCM_CORPUS_SERVER_IDLE_SECONDS"
MODE_ENV = "TCM_CORPUS_PREFECT_SERVER"
DEFAULT_IDLE_SECONDS = 600.0
START_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
CHECK_SECONDS = 2.0
CSRF_SERVER_ENV = "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"
CSRF_CLIENT_ENV = "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"


class ServerError(Exception):
    """The shared server did not start or answer; the message says where its log is."""


def state_dir(home: Optional[Path] = None) -> Path:
    return Path(home or os.environ["PREFECT_HOME"]).expanduser() / "tcm-corpus-server"


def idle_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_SECONDS))
    except ValueError:
        return DEFAULT_IDLE_SECONDS


def read_state(folder: Path) -> Optional[dict]:
    """The running server's record (pid, port, url, started, idle_seconds), if its process lives."""
    try:
        state = json.loads((folder / "server.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if _is_our_server(state.get("pid")) else None


def _is_our_server(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process reusing the pid
    try:
        return b"flows.local_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: the pid lives, trust the record


def _running(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:
        return not any(line.startswith("State:") and "Z" in line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return not Path("/proc").is_dir()


class ServerUse:
    """This command's use of the shared server: holds `users.lock` shared until the process ends."""

    def __init__(self, folder: Path, lock_file, state: dict, started_here: bool, launcher: Optional[subprocess.Popen]):
        self.folder, self._lock_file, self.state = folder, lock_file, state
        self.started_here, self._launcher = started_here, launcher
        self.url = state["url"]

    def wait_ready(self, timeout: Optional[float] = None) -> None:
        """Wait until the server answers /health (it may still be starting)."""
        timeout = timeout or float(os.environ.get(START_TIMEOUT_ENV) or 120)
        deadline = time.monotonic() + timeout
        while True:
            if _healthy(self.url):
                return
            if not _is_our_server(self.state["pid"]):
                raise ServerError(f"the local Prefect server stopped while starting; see {self.folder / 'server.log'}")
            if time.monotonic() > deadline:
                raise ServerError(f"the local Prefect server at {self.url} did not answer within {timeout:.0f} s; "
                                  f"see {self.folder / 'server.log'}")
            time.sleep(0.05)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def use_shared_server() -> Optional[ServerUse]:
    """Point this process at the shared server (PREFECT_API_URL), starting it when none runs;
    None where it does not apply (see the module's docstring). Call before importing Prefect."""
    if fcntl is None or os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    if os.environ.get(MODE_ENV, "shared").strip().lower() == "temporary":
        return None
    folder = state_dir()
    folder.mkdir(parents=True, exist_ok=True)
    users = open(folder / "users.lock", "a+")
    # Shared while this command runs; the server takes it exclusively only to stop, so this
    # waits for a stopping server to be gone, then starts a new one.
    fcntl.flock(users, fcntl.LOCK_SH)
    state, launcher = read_state(folder), None
    if state is None:
        with open(folder / "start.lock", "a+") as starting:
            fcntl.flock(starting, fcntl.LOCK_EX)  # one command starts it; the others wait and use it
            state = read_state(folder)
            if state is None:
                launcher = _launch(folder)
                state = _wait_for_record(folder, launcher)
    os.environ["PREFECT_API_URL"] = state["url"]
    # The shared server runs without CSRF protection (a loopback API without a UI, see `_launch`):
    # a client asking it for a token first costs a refused round trip per client.
    os.environ.setdefault(CSRF_CLIENT_ENV, "false")
    return ServerUse(folder, users, state, launcher is not None, launcher)


def _launch(folder: Path) -> subprocess.Popen:
    (folder / "server.json").unlink(missing_ok=True)
    log = open(folder / "server.log", "ab")
    env = {**os.environ, "PREFECT_UI_ENABLED": "false", CSRF_SERVER_ENV: "false"}
    env.pop("PREFECT_API_URL", None)
    try:
        return subprocess.Popen([sys.executable, "-m", "flows.local_server", "serve", "--home", os.environ["PREFECT_HOME"],
                                 "--idle", str(idle_seconds())],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=str(Path(__file__).resolve().parents[1]), start_new_session=True, close_fds=True)
    finally:
        log.close()


def _wait_for_record(folder: Path, launcher: subprocess.Popen, timeout: float = 60) -> dict:
    """The launcher writes its record once its port is bound, before the server's imports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(folder)
        if state is not None and state["pid"] == launcher.pid:
            return state
        if launcher.poll() is not None:
            raise ServerError(f"the local Prefect server exited at start (code {launcher.returncode}); see {folder / 'server.log'}")
        time.sleep(0.02)
    raise ServerError(f"the local Prefect server did not start within {timeout:.0f} s; see {folder / 'server.log'}")


def stop(home: Optional[Path] = None, timeout: float = 20) -> Optional[dict]:
    """Stop the shared server of `home` (default: PREFECT_HOME); its record, or None if none ran."""
    folder = state_dir(home)
    state = read_state(folder)
    if state is None:
        return None
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _running(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_our_server(state["pid"]):
        os.kill(state["pid"], signal.SIGKILL)
        while _running(state["pid"]) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
    _forget(folder, state["pid"])
    return state


def _forget(folder: Path, pid: int) -> None:
    """Remove the record if it is still that of `pid` (a newer server keeps its own)."""
    record = folder / "server.json"
    try:
        if json.loads(record.read_text(encoding="utf-8")).get("pid") == pid:
            record.unlink()
    except (OSError, ValueError):
        pass


def status(home: Optional[Path] = None) -> Optional[dict]:
    """The running shared server's record with `healthy` added, or None."""
    folder = state_dir(home)
    state = read_state(folder)
    if state is not None:
        state = {**state, "healthy": _healthy(state["url"]), "log": str(folder / "server.log")}
    return state


# -- the server process ----------------------------------------------------------------------


def serve(home: Path, idle: float) -> None:
    """Bind a loopback port, record it, then run Prefect's API there until idle."""
    folder = state_dir(home)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)  # commands may connect while the app starts; they wait in the backlog
    port = sock.getsockname()[1]
    state = {"pid": os.getpid(), "port": port, "url": f"http://127.0.0.1:{port}/api", "started": time.time(),
             "idle_seconds": idle}
    record = folder / "server.json"
    temporary = folder / f"server.json.{os.getpid()}"
    temporary.write_text(json.dumps(state), encoding="utf-8")
    os.replace(temporary, record)

    import uvicorn

    from prefect.server.api.server import create_app

    app = create_app(ephemeral=True, final=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on", timeout_graceful_shutdown=5))
    watcher = threading.Thread(target=_watch_idle, args=(server, folder, idle), daemon=True)
    watcher.start()
    try:
        server.run(sockets=[sock])
    finally:
        _forget(folder, os.getpid())


def _watch_idle(server, folder: Path, idle: float) -> None:
    """Stop the server once no command has held `users.lock` for `idle` seconds, or when its
    record or folder is gone (PREFECT_HOME removed, another server recorded)."""
    last_used = time.monotonic()
    users = open(folder / "users.lock", "a+")  # left open: an exclusive lock lasts until exit
    while not server.should_exit:
        time.sleep(CHECK_SECONDS)
        try:
            recorded = json.loads((folder / "server.json").read_text(encoding="utf-8")).get("pid")
        except (OSError, ValueError):
            recorded = None
        if recorded != os.getpid():
            server.should_exit = True
            return
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            last_used = time.monotonic()  # a command holds it
            continue
        if time.monotonic() - last_used >= idle:
            # Held exclusively until this process is gone: a command arriving now waits,
            # then finds no record and starts a new server.
            (folder / "server.json").unlink(missing_ok=True)
            server.should_exit = True
            return
        fcntl.flock(users, fcntl.LOCK_UN)


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.local_server", description="the shared local Prefect server of `flows run`")
    parser.add_argument("action", choices=("serve",))
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--idle", type=float, default=DEFAULT_IDLE_SECONDS)
    args = parser.parse_args(argv)
    os.environ["PREFECT_HOME"] = str(args.home)
    serve(args.home, args.idle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
