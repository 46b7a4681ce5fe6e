"""Operations on a real Prefect server on loopback: `flows serve` registers the deployments, a
served build-corpus run is cancelled and a second run resumes it to the end with its artifacts;
the LLM concurrency limit serialises holders; failure notifications reach a loopback webhook
only when one is configured; stale temporary folders of dead processes are removed."""
from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows.config import ConfigError, LLMLimitConfig, parse_config, sample_config_path
from flows.progress import StageProgress, enable_terminal
from schemas.dataset import read_manifest, remove_stale_temporaries

pytestmark = pytest.mark.slow
PREFECT = Path(sys.executable).parent / "prefect"
STAGES = ("crawl", "ingest", "clean", "dedup", "decontaminate", "convert", "sample", "validate", "export")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait(check, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def prefect_server(prefect_home):
    """`prefect server start` on a free loopback port, on the session's PREFECT_HOME (its
    database is migrated once)."""
    import urllib.request

    home = prefect_home
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"})
    # No UI, and no scheduler filling the calendar of the nightly and weekly deployments.
    server_env = {**env, "PREFECT_UI_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    log = open(home / "server.log", "w")
    server = subprocess.Popen(
        [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=server_env, start_new_session=True,
    )

    def healthy():
        if server.poll() is not None:
            raise AssertionError("prefect server exited: " + (home / "server.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        _wait(healthy, 120, "the Prefect server")
        yield {"url": url, "env": {**env, "PREFECT_API_URL": url}}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture
def api(prefect_server):
    """In-process Prefect calls go to the loopback server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect.logging.handlers import APILogWorker

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"]}):
        yield prefect_server
        APILogWorker.drain_all(timeout=5)  # while the server still answers


def _query(client, path: str, **body) -> list[dict]:
    """A filter endpoint with only the keys given: the server of this pin set answers 422 to the
    explicit nulls the client's own `read_*` filters send."""
    return client.request("POST", path, json=body).json()


def test_served_deployments_run_cancel_and_resume(api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    workdir = tmp_path / "build"
    log = open(tmp_path / "serve.log", "w")
    # The runner looks for runs to start (and runs to cancel) every second, not every ten: the
    # test waits on each of its runs being picked up.
    serving = subprocess.Popen(
        [sys.executable, "-m", "flows", "serve", "--workdir", str(workdir)],
        stdout=log, stderr=subprocess.STDOUT, env={**api["env"], "PREFECT_RUNNER_POLL_FREQUENCY": "1"}, start_new_session=True,
    )
    try:
        with get_client(sync_client=True) as client:
            def registered():
                if serving.poll() is not None:
                    raise AssertionError("flows serve exited: " + (tmp_path / "serve.log").read_text()[-3000:])
                found = _query(client, "/deployments/filter", deployments={"tags": {"all_": ["tcm-corpus-sample"]}})
                return found if len(found) == len(STAGES) + 4 else None

            deployments = _wait(registered, 90, "the deployments")
            flow_names = {f["id"]: f["name"] for f in _query(client, "/flows/filter")}
            names = {f"{flow_names[d['flow_id']]}/{d['name']}": d for d in deployments}
            assert set(names) == {
                *(f"{flow}/tcm-corpus-sample" for flow in ("build-corpus", "refresh", *STAGES)),
                "refresh/nightly",
                "build-corpus/weekly",
            }
            nightly = names["refresh/nightly"]["schedules"]
            assert [(s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in nightly] == [("0 2 * * *", "UTC", True)]
            assert names["build-corpus/weekly"]["schedules"][0]["schedule"]["cron"] == "0 3 * * 0"
            assert names["clean/tcm-corpus-sample"]["parameters"] == {
                "inputs": [str(workdir / "stages" / "ingest")], "output": str(workdir / "stages" / "clean"),
                "config": str(Path(sample_config_path()).resolve()),  # a stage's own default is the library's, not the sample
            }
            assert names["build-corpus/tcm-corpus-sample"]["schedules"] == []

            # A run cancelled from the API while its stages run leaves finished stages behind.
            first = run_deployment("build-corpus/tcm-corpus-sample", timeout=0)
            _wait(lambda: read_manifest(workdir / "stages" / "crawl"), 90, "the crawl stage to finish")
            client.set_flow_run_state(first.id, Cancelling(message="stopped by the test"))
            cancelled = _wait(
                lambda: (run := client.read_flow_run(first.id)).state.is_final() and run, 60, "the cancellation"
            )
            assert cancelled.state.is_cancelled(), cancelled.state
            finished_before = {s for s in STAGES if read_manifest(_stage_folder(workdir, s))}
            assert "crawl" in finished_before and "export" not in finished_before
            # As a killed run would leave it: a temporary folder of a process that is gone.
            stale = workdir / "stages" / f"convert.tmp-{_dead_pid()}"
            (stale / "documents").mkdir(parents=True)

            second = run_deployment("build-corpus/tcm-corpus-sample", timeout=180, poll_interval=1)
            assert second.state.is_completed(), second.state
            assert not stale.exists()
            assert not list(workdir.rglob("*.tmp-*")), "no temporary folder is left"
            corpus = json.loads((workdir / "corpus" / "_corpus_manifest.json").read_text(encoding="utf-8"))
            assert corpus["rows"] > 0

            artifacts = _query(client, "/artifacts/filter", artifacts={"flow_run_id": {"any_": [str(second.id)]}})
            summary = next(a for a in artifacts if a["key"] == "build-corpus-summary")["data"]
            assert f"{corpus['rows']:,} rows" in summary
            rows = {line.split("|")[1].strip(): line for line in summary.split("## Funnel")[1].splitlines() if line.startswith("| ")}
            for stage in finished_before:
                assert rows[stage].rstrip(" |").endswith("yes"), (stage, rows[stage])
            for stage in set(STAGES) - finished_before:
                assert rows[stage].rstrip(" |").endswith("no"), (stage, rows[stage])

            subflows = _query(client, "/flow_runs/filter", flow_runs={"parent_flow_run_id": {"any_": [str(second.id)]}})
            progress = _query(client, "/artifacts/filter", artifacts={"flow_run_id": {"any_": [r["id"] for r in subflows]}, "type": {"any_": ["progress"]}})
            progress = {a["key"]: a["data"] for a in progress}
            ran = {"clean", "dedup", "decontaminate", "convert", "sample"} - finished_before
            assert {f"{stage}-progress" for stage in ran} <= set(progress), sorted(progress)
            assert all(progress[f"{stage}-progress"] == 100 for stage in ran)

        # The nightly refresh of the same sources adds nothing: every new row repeats the build.
        from flows.pipeline import refresh

        again = refresh(workdir=str(workdir), label="again")
        dedup = read_manifest(workdir / "refresh" / "again" / "dedup")
        selected = read_manifest(workdir / "refresh" / "again" / "select")
        assert again["new_rows"] == 0
        def text_rows(rows: dict) -> dict:  # the dedup output also holds its audit kinds
            return {kind: n for kind, n in rows.items() if kind in ("documents", "conversations")}

        assert text_rows(dedup.rows_out) == text_rows(read_manifest(workdir / "stages" / "dedup").rows_out)
        # What the build's select keeps, the refresh's select keeps: every row of it repeats the build.
        assert sum(dedup.rows_rejected.values()) == sum(selected.rows_out.values()) > 0
        assert set(dedup.rejected_by_reason) == {"exact_duplicate_of"}
    finally:
        serving.send_signal(signal.SIGINT)
        try:
            # Ctrl-C ends the runner's in-flight work and its server first: seconds when quiet,
            # more than 30 s on a loaded machine.
            serving.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)
            serving.wait()
        log.close()
    assert "stopped" in (tmp_path / "serve.log").read_text()


def _stage_folder(workdir: Path, stage: str) -> Path:
    return workdir / "corpus" if stage == "sample" else workdir / "stages" / stage


def test_serve_needs_a_reachable_server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.serve import ServeError, api_url

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        with pytest.raises(ServeError, match="start one with `prefect server start`"):
            api_url()
    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{_free_port()}/api"}):
        with pytest.raises(ServeError, match="does not answer"):
            api_url()


def test_llm_slots_serialise_holders(api):
    """Requests of one client hold leased slots: with one slot they run one after another, with
    two side by side; a run pays for its slots once (its first lease holds all it may hold when
    they are free), not per request; every slot goes back at close."""
    from prefect.client.orchestration import get_client

    from flows.limits import ensure_limit, llm_slot

    def holders(slot, most: int, rounds: int = 1) -> tuple[list[str], int]:
        events: list[str] = []

        async def hold(name: str, leases) -> None:
            for _ in range(rounds):
                async with leases():
                    events.append(f"enter {name}")
                    await asyncio.sleep(0.3)
                    events.append(f"exit {name}")

        async def both() -> tuple[int, int]:
            leases = slot.leases(most)
            try:
                await asyncio.gather(hold("a", leases), hold("b", leases))
            finally:
                await leases.aclose()
            return leases.leases_taken, leases.slots_taken

        return events, asyncio.run(both())

    one = llm_slot(LLMLimitConfig(concurrency_limit="test-llm-one", slots=1))
    events, taken = holders(one, most=4, rounds=2)
    assert [e.split()[0] for e in events] == ["enter", "exit"] * 4, events
    assert all(events[i].split()[1] == events[i + 1].split()[1] for i in range(0, 8, 2)), "one holder at a time"
    assert taken == (1, 1), "the slot is leased once for the four requests"
    # Created with the configured limit; an existing limit keeps the server's value.
    assert ensure_limit("test-llm-one", 3) == 1

    two = llm_slot(LLMLimitConfig(concurrency_limit="test-llm-two", slots=2))
    events, taken = holders(two, most=8)
    assert [e.split()[0] for e in events] == ["enter", "enter", "exit", "exit"]
    assert taken == (1, 2), "both slots in one lease"
    with get_client(sync_client=True) as client:
        for name in ("test-llm-one", "test-llm-two"):
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 0, name


def test_llm_slots_never_exceed_the_limit_while_another_run_holds_one(api):
    """With a slot of the limit held elsewhere, a client that may hold two is refused both at once:
    it takes the free one as a lease of its own, and the other only once the other run gives its
    slot back."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.asyncio import concurrency

    from flows.limits import llm_slot

    slot = llm_slot(LLMLimitConfig(concurrency_limit="test-llm-busy", slots=2))

    async def run() -> tuple[list[str], int, int]:
        events: list[str] = []
        other_has_it = asyncio.Event()

        async def other_run() -> None:
            async with concurrency("test-llm-busy", occupy=1, strict=True):
                events.append("enter other")
                other_has_it.set()
                await asyncio.sleep(1.0)
                events.append("exit other")

        async def requests(name: str, leases) -> None:
            for _ in range(6):
                async with leases():
                    events.append(f"enter {name}")
                    await asyncio.sleep(0.3)
                    events.append(f"exit {name}")

        other = asyncio.create_task(other_run())
        await other_has_it.wait()
        leases = slot.leases(2)
        try:
            await asyncio.gather(requests("a", leases), requests("b", leases))
        finally:
            await leases.aclose()
        await other
        return events, leases.leases_taken, leases.slots_taken

    events, leases_taken, slots_taken = asyncio.run(run())
    inside = most = 0
    for event in events:
        inside += 1 if event.split()[0] == "enter" else -1
        most = max(most, inside)
    assert most <= 2, events
    assert events.index("enter a") < events.index("exit other") or events.index("enter b") < events.index("exit other")
    assert 1 <= leases_taken == slots_taken <= 2, "leases of one slot each"
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("test-llm-busy").active_slots == 0


def test_llm_slots_go_back_after_hold_seconds_and_are_asked_for_one_by_one(api):
    """After `hold_seconds`, the first lease (both slots) goes back once its requests are done;
    from then on the client holds one lease per slot, each given back and asked for on its own."""
    from prefect.client.orchestration import get_client

    from flows.limits import llm_slot

    slot = llm_slot(LLMLimitConfig(concurrency_limit="test-llm-hold", slots=2, hold_seconds=0.4))

    async def run() -> tuple[int, int, int]:
        inside = [0, 0]  # now, most

        async def requests(leases) -> None:
            for _ in range(12):
                async with leases():
                    inside[0] += 1
                    inside[1] = max(inside)
                    await asyncio.sleep(0.1)
                    inside[0] -= 1

        leases = slot.leases(2)
        try:
            await asyncio.gather(requests(leases), requests(leases))
        finally:
            await leases.aclose()
        return inside[1], leases.leases_taken, leases.slots_taken

    most, leases_taken, slots_taken = asyncio.run(run())
    assert most == 2
    assert leases_taken >= 3 and slots_taken == leases_taken + 1, "one lease of two, then leases of one"
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("test-llm-hold").active_slots == 0


def test_llm_slots_refused_when_the_limit_is_missing_or_busy_past_the_wait(api):
    """A limit that does not exist is never taken as no limit; a request that cannot get a slot
    within `wait_seconds` fails with a TimeoutError."""
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency

    from flows.limits import LLMSlot, llm_slot

    async def one_request(slot) -> None:
        leases = slot.leases(2)
        try:
            async with leases():
                pass
        finally:
            await leases.aclose()

    with pytest.raises(ConcurrencySlotAcquisitionError, match="must be created"):
        asyncio.run(one_request(LLMSlot("test-llm-never-created", slots=2)))

    busy = llm_slot(LLMLimitConfig(concurrency_limit="test-llm-full", slots=1, wait_seconds=0.5))

    async def while_held_elsewhere() -> float:
        async with concurrency("test-llm-full", occupy=1, strict=True):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await one_request(busy)
            return time.monotonic() - started

    assert asyncio.run(while_held_elsewhere()) < 30


def test_progress_artifacts_go_out_off_the_reporting_thread(api, monkeypatch):
    """A stage that reports progress from an event loop never waits on the Prefect API: the
    artifact updates go out on the tracker's own thread, and the last one (100 %) is written
    before `finish` returns."""
    import prefect.artifacts
    from prefect import flow, task
    from prefect.client.orchestration import get_client

    writers: list[str] = []
    update = prefect.artifacts.update_progress_artifact

    def watched_update(*args, **kwargs):
        writers.append(threading.current_thread().name)
        return update(*args, **kwargs)

    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", watched_update)

    @task
    def stage() -> tuple:
        progress = StageProgress("probe", total_rows=10, interval=0.0)
        for _ in range(10):
            progress("documents", 1)
            time.sleep(0.1)
        progress.finish()
        return progress.artifact_id, threading.current_thread().name

    @flow
    def probe() -> tuple:
        return stage()

    artifact_id, caller = probe()
    assert len(writers) >= 2 and writers[-1] == caller, writers
    assert all(name != caller for name in writers[:-1]), writers
    with get_client(sync_client=True) as client:
        [artifact] = _query(client, "/artifacts/filter", artifacts={"id": {"any_": [str(artifact_id)]}})
    assert artifact["data"] == 100


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - the http.server interface
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_failure_notification_only_when_configured(api, tmp_path):
    from flows.pipeline import build_corpus

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Webhook.received = []
    empty = tmp_path / "books"
    empty.mkdir()
    base = f'[[sources]]\nname = "books"\nkind = "files"\npath = "{empty}"\nformat = "book"\ncategory = "books"\n'
    quiet = tmp_path / "quiet.toml"
    quiet.write_text(base, encoding="utf-8")
    loud = tmp_path / "loud.toml"
    loud.write_text(base + f'\n[operations.notify]\nwebhook_url = "http://127.0.0.1:{server.server_port}/hook"\n', encoding="utf-8")
    try:
        with pytest.raises(Exception, match="no book files"):
            build_corpus(config=str(quiet), workdir=str(tmp_path / "quiet"))
        assert _Webhook.received == []
        with pytest.raises(Exception, match="no book files"):
            build_corpus(config=str(loud), workdir=str(tmp_path / "loud"))
    finally:
        server.shutdown()
    assert len(_Webhook.received) == 1
    message = _Webhook.received[0]
    assert message["flow"] == "build-corpus" and message["state"] == "Failed"
    assert "build-corpus" in message["text"] and "no book files" in message["text"]


def test_stale_temporary_folders_of_dead_processes_are_removed(tmp_path):
    output = tmp_path / "clean"
    dead = tmp_path / f"clean.tmp-{_dead_pid()}"
    old = tmp_path / f"clean.old-{_dead_pid()}"
    alive = tmp_path / f"clean.tmp-{os.getppid()}"
    other = tmp_path / f"cleaner.tmp-{_dead_pid()}"
    for folder in (dead, old, alive, other):
        folder.mkdir()
    assert sorted(remove_stale_temporaries(output)) == sorted([dead, old])
    assert alive.is_dir() and other.is_dir()


def test_progress_is_throttled_and_drawn_only_on_a_terminal():
    now = [0.0]
    screen = io.StringIO()
    progress = StageProgress("clean", total_rows=100, interval=1.0, artifacts=False, terminal=screen, clock=lambda: now[0])
    for t, rows in ((0.0, 10), (0.3, 10), (0.6, 10), (1.2, 10), (1.5, 10)):
        now[0] = t
        progress("documents", rows)
    lines = screen.getvalue().split("\r")[1:]
    assert len(lines) == 2 and "10.0%" in lines[0] and "40.0%" in lines[1]
    progress.finish()
    assert "100.0%" in screen.getvalue().split("\r")[-1] and screen.getvalue().endswith("\n")

    enable_terminal(io.StringIO())  # not a terminal: no bar
    quiet = StageProgress("dedup", total_rows=10, artifacts=False)
    quiet("documents", 5)
    assert quiet.terminal is None


def test_progress_artifact_waits_an_interval_so_a_short_stage_writes_it_once(monkeypatch):
    def written_at(stage: str, times: tuple[float, ...]) -> list[float]:
        """The percentages a 10-row stage's artifact is written with, 3 rows at each time."""
        now = [0.0]
        progress = StageProgress(stage, total_rows=10, interval=1.0, clock=lambda: now[0])
        written = []
        monkeypatch.setattr(progress, "_write", lambda percent, description: written.append(percent))
        for t in times:
            now[0] = t
            progress("documents", 3)
        progress.finish()
        return written

    assert written_at("select", (0.0, 0.4, 0.8)) == [100.0]
    assert written_at("clean", (0.0, 0.5, 1.2)) == [90.0, 100.0]  # at 1.2 s, 9 of 10 rows; then the last


def test_operations_config_errors_are_one_line():
    config = parse_config("", Path("."))
    assert [(s.flow, s.name) for s in config.operations.schedules] == [("refresh", "nightly"), ("build-corpus", "weekly")]
    assert config.operations.tasks["crawl"].retries >= 1 and config.operations.tasks["convert"].timeout_seconds
    for text, message in (
        ('[operations]\ntimezone = "Mars/Olympus"', "operations.timezone: unknown time zone 'Mars/Olympus'"),
        ('[[operations.schedules]]\nname = "n"\nflow = "refresh"\ncron = "0 2 * *"', "must have five fields"),
        ('[[operations.schedules]]\nname = "n"\nflow = "refresh"', "exactly one of cron and interval_seconds"),
        ("[operations.tasks.clean]\nretries = 2", "stage 'clean' has no run control"),
        ("[operations.llm]\nslotz = 2", "unknown key 'operations.llm.slotz'"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_config(text, Path("."))
    crawl = parse_config("[operations.tasks.crawl]\nretries = 5", Path(".")).operations.tasks["crawl"]
    assert crawl.retries == 5 and crawl.timeout_seconds == config.operations.tasks["crawl"].timeout_seconds


# pytest-timeout's signal method holds SIGALRM, which sends Prefect's time-out to a watcher thread
# that cannot interrupt the wait on the crawl process; `flows run` and served runs hold no alarm.
@pytest.mark.timeout(600, method="thread")
def test_crawl_task_times_out_and_is_retried(api, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.pipeline import crawl_flow

    site = Path(__file__).resolve().parents[1] / "flows" / "sample" / "site"
    config = tmp_path / "crawl.toml"
    config.write_text(
        f'[[sources]]\nname = "site"\nkind = "crawl"\nsite_dir = "{site}"\nstart_urls = ["/index.html"]\ncategory = "web"\n'
        "\n[operations.tasks.crawl]\nretries = 1\nretry_delay_seconds = 0\ntimeout_seconds = 0.5\n",
        encoding="utf-8",
    )
    state = crawl_flow(output=str(tmp_path / "crawl"), config=str(config), return_state=True)
    assert state.is_failed() and "timed out" in state.message.lower(), state
    with get_client(sync_client=True) as client:
        tasks = _query(client, "/task_runs/filter", flow_runs={"id": {"any_": [str(state.state_details.flow_run_id)]}})
    assert [(t["name"], t["run_count"], t["state"]["name"]) for t in tasks] == [("crawl", 2, "TimedOut")]
    assert read_manifest(tmp_path / "crawl") is None and not list(tmp_path.glob("crawl.tmp-*"))
