"""Situations a user (or an endpoint) creates by mistake, reproduced for real through `flows run`:
an output that would replace its input, outputs and work folders that are files, two runs in one
work folder, a stray broken Parquet file, a build in which every row is rejected, an endpoint
that echoes the API key it refuses, and what the terminal shows when a flow fails inside."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import copy_shared_case
from flows.locks import LockBusy, hold, output_lock_file, read_holder, workdir_lock_file
from schemas.dataset import fingerprint, read_manifest

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import ChatServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "flows" / "sample" / "books" / "900-杏林撮要.txt"
TINY = '[[sources]]\nname = "b"\nkind = "files"\npath = "books"\nformat = "book"\ncategory = "books"\n'


def flows_cli(*args, prefect_home, cwd=None, env=None, timeout=400, background=False):
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING", **(env or {})}
    command = [sys.executable, "-m", "flows", *map(str, args)]
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                                start_new_session=True)
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def one_error_line(stderr: str, *words: str) -> str:
    """The run's stderr is exactly one `flows: error:` line holding `words`, and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("flows: error:"), stderr[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def case_ingested(tmp_path_factory, prefect_home) -> Path:
    """The output-equals-input case, copied and ingested by the real command into `ing`."""
    folder = copy_shared_case("output-equals-input", tmp_path_factory.mktemp("case"))
    run = flows_cli("run", "ingest", "--config", "build.toml", "--output", "ing", prefect_home=prefect_home, cwd=folder)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = read_manifest(folder / "ing")
    assert manifest.rows_rejected.get("documents"), "the case's book has rejected rows worth losing"
    return folder


# -- data a user cannot lose ---------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["run", "clean", "--input", "ing", "--output", "ing"], ["--output ing is the same folder as --input ing"]),
    (["run", "clean", "--input", "ing", "--output", "ing/clean"], ["lies inside --input ing"]),
    (["run", "clean", "--input", "ing/documents", "--output", "ing"], ["holds --input ing/documents"]),
    (["run", "clean", "--input", "ing", "--output", "./ing/../ing"], ["is the same folder as --input ing"]),
    (["run", "ingest", "--config", "build.toml", "--output", "books"], ["is the same folder as source b's path"]),
    (["run", "ingest", "--config", "build.toml", "--output", "books/out"], ["lies inside source b's path"]),
    (["run", "build-corpus", "--config", "build.toml", "--workdir", "books/build"], ["lies inside source b's path"]),
    # A source where the build writes its corpus: the shards would replace the books.
    (["run", "build-corpus", "--config", "corpus-source.toml", "--workdir", "."], ["source b's path", "lies at corpus, where the build writes its corpus"]),
    (["run", "refresh", "--config", "corpus-source.toml", "--workdir", "."], ["where the build writes its corpus"]),
])
def test_an_output_that_would_replace_its_input_is_refused_before_any_work(case_ingested, prefect_home, args, words):
    if "corpus-source.toml" in args:
        (case_ingested / "corpus").mkdir(exist_ok=True)
        for book in (case_ingested / "books").iterdir():
            shutil.copy(book, case_ingested / "corpus")
        config = (case_ingested / "build.toml").read_text(encoding="utf-8")
        assert 'path = "books"' in config
        (case_ingested / "corpus-source.toml").write_text(config.replace('path = "books"', 'path = "corpus"'), encoding="utf-8")
    before = listing(case_ingested)
    run = flows_cli(*args, prefect_home=prefect_home, cwd=case_ingested, timeout=120)
    assert run.returncode == 2
    one_error_line(run.stderr, *words)
    assert listing(case_ingested) == before, "nothing was written, renamed or removed"
    assert "Starting temporary server" not in run.stderr, "refused before Prefect started"


def test_outputs_and_work_folders_that_are_files_or_foreign_folders_touch_nothing(tmp_path, case_ingested, prefect_home):
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file", encoding="utf-8")
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "thesis.docx").write_text("years of work", encoding="utf-8")
    ing = case_ingested / "ing"
    cases = [
        (["run", "clean", "--input", ing, "--output", notes], "is a file, not a dataset folder"),
        (["run", "clean", "--input", ing, "--output", notes / "clean"], "is a file, so no folder can be made there"),
        (["run", "clean", "--input", ing, "--output", mine], "is a folder with other files in it"),
        (["run", "build-corpus", "--config", case_ingested / "build.toml", "--workdir", notes], "--workdir"),
        (["run", "build-corpus", "--config", case_ingested / "build.toml", "--workdir", notes / "w"], "is a file"),
    ]
    before = listing(tmp_path)
    for args, words in cases:
        run = flows_cli(*args, prefect_home=prefect_home, timeout=120)
        assert run.returncode == 2, (args, run.stderr[-2000:])
        one_error_line(run.stderr, words)
    assert listing(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-folder", "notes.txt"], "no .old-<pid> left behind"


# -- one run at a time ----------------------------------------------------------------------------


def wait_for_holder(lock_file: Path, pid: int, process: subprocess.Popen, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        holder = read_holder(lock_file)
        if holder and holder["pid"] == pid:
            return holder
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{lock_file} never named pid {pid}")


@pytest.mark.slow
def test_two_builds_in_one_workdir_never_run_at_once(tmp_path, prefect_home):
    (tmp_path / "books").mkdir()
    shutil.copy(BOOK, tmp_path / "books")
    (tmp_path / "build.toml").write_text(TINY, encoding="utf-8")
    build = ["run", "build-corpus", "--config", "build.toml", "--workdir", "w"]
    lock_file = workdir_lock_file(tmp_path / "w")

    first = flows_cli(*build, prefect_home=prefect_home, cwd=tmp_path, background=True)
    holder = wait_for_holder(lock_file, first.pid, first)
    assert holder["host"] == socket.gethostname() and holder["started"]
    # A second build, and a stage run on its own into the same work folder (which takes the same
    # lock), both started while the first runs.
    second = flows_cli(*build, prefect_home=prefect_home, cwd=tmp_path, background=True)
    stage = flows_cli("run", "clean", "--input", "w/stages/ingest", "--output", "w/stages/clean-again",
                      prefect_home=prefect_home, cwd=tmp_path, background=True)
    _, second_err = second.communicate(timeout=120)
    assert second.returncode == 2
    one_error_line(second_err, "work folder w is in use by", f"pid {first.pid} on {holder['host']}", f"started {holder['started']}", "--wait")
    _, stage_err = stage.communicate(timeout=120)
    assert stage.returncode == 2, stage_err[-3000:]  # busy; or, before the build wrote its ingest stage, no input yet
    one_error_line(stage_err)
    assert any(words in stage_err for words in ("is in use by", "does not exist", "holds no dataset")), stage_err
    waiting = flows_cli(*build, "--wait", prefect_home=prefect_home, cwd=tmp_path, background=True)
    out, err = first.communicate(timeout=400)
    assert first.returncode == 0, err[-3000:]
    out, err = waiting.communicate(timeout=400)
    assert waiting.returncode == 0, err[-3000:]
    assert f"in use by pid {first.pid}" in err and "waiting for it to finish" in err
    assert out.count("skipped") >= 5, "the waiting build found the first one's stages finished"
    assert read_manifest(tmp_path / "w" / "stages" / "ingest").rows_in == {"documents": 22}, "pages and rows counted once"
    assert read_holder(lock_file) is None, "a clean release leaves no holder behind"

    # A run killed outright leaves its record; the next run takes the lock over and says so.
    killed = flows_cli(*build, prefect_home=prefect_home, cwd=tmp_path, background=True)
    wait_for_holder(lock_file, killed.pid, killed)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert read_holder(lock_file)["pid"] == killed.pid
    after = flows_cli(*build, prefect_home=prefect_home, cwd=tmp_path)
    assert after.returncode == 0, after.stderr[-3000:]
    assert f"took over the lock left by pid {killed.pid}" in after.stderr and "no longer running" in after.stderr


HOLD = """
import sys, time
from flows.locks import hold, output_lock_file
with hold(output_lock_file(sys.argv[1]), "output " + sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_stage_output_run_on_its_own_is_locked_across_processes(tmp_path):
    output = tmp_path / "clean"
    assert output_lock_file(output) == tmp_path / ".clean.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy, match=f"output {output} is in use by pid {holder.pid}"):
            with hold(output_lock_file(output), f"output {output}"):
                pass
    finally:
        holder.kill()
        holder.wait()
    taken = []
    with hold(output_lock_file(output), f"output {output}", on_takeover=taken.append):
        with hold(output_lock_file(output), "again"):  # reentrant in one process: a build's stage flows
            assert read_holder(tmp_path / ".clean.lock")["pid"] == os.getpid()
    assert taken and f"pid {holder.pid}" in taken[0]
    # Inside a work folder, a stage's output is guarded by the work folder's lock.
    (tmp_path / "w").mkdir()
    workdir_lock_file(tmp_path / "w").touch()
    assert output_lock_file(tmp_path / "w" / "stages" / "clean") == workdir_lock_file(tmp_path / "w")


# -- inputs and builds that end in one line ------------------------------------------------------


def test_a_stray_broken_parquet_file_in_a_source_folder(tmp_path, prefect_home):
    """The progress counter no longer reads the footers of a source folder: the book importer
    reads the books and the stray file is not one of them."""
    (tmp_path / "books").mkdir()
    shutil.copy(BOOK, tmp_path / "books")
    (tmp_path / "books" / "stray.parquet").write_bytes(b"PAR1" + os.urandom(500))
    (tmp_path / "build.toml").write_text(TINY, encoding="utf-8")
    run = flows_cli("run", "ingest", "--config", "build.toml", "--output", "ing", prefect_home=prefect_home, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert read_manifest(tmp_path / "ing").rows_in == {"documents": 22}


@pytest.mark.slow
def test_a_build_that_rejects_every_row_ends_with_its_ledger_and_one_line(tmp_path, prefect_home):
    (tmp_path / "src").mkdir()
    for n in range(3):
        (tmp_path / "src" / f"note-{n}.txt").write_text(f"短文{n}", encoding="utf-8")
    (tmp_path / "build.toml").write_text(TINY.replace('"books"', '"src"', 1).replace('format = "book"', 'format = "text"'), encoding="utf-8")
    run = flows_cli("run", "build-corpus", "--config", "build.toml", "--workdir", "w", prefect_home=prefect_home, cwd=tmp_path)
    assert run.returncode == 1
    assert "ingest: documents 3→3" in run.stdout and "select: documents 3→0 (-3)" in run.stdout, run.stdout
    one_error_line(run.stderr, "every row was rejected at select", "too_short", str(tmp_path / "w" / "stages" / "select" / "rejected"))
    # Prefect keeps the failure, traceback and all; the terminal showed only the line above.
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        states = db.execute("SELECT state_type, state.message FROM flow_run JOIN flow ON flow.id = flow_run.flow_id "
                            "JOIN flow_run_state state ON state.id = flow_run.state_id "
                            "WHERE flow.name = 'build-corpus' ORDER BY flow_run.created DESC LIMIT 1").fetchall()
        assert states[0][0] == "FAILED" and "every row was rejected" in states[0][1]
        logged = db.execute("SELECT count(*) FROM log WHERE message LIKE '%Traceback%every row was rejected%'").fetchone()[0]
        assert logged >= 1
    debug = flows_cli("run", "build-corpus", "--config", "build.toml", "--workdir", "w", "--debug", prefect_home=prefect_home, cwd=tmp_path)
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr and "NothingKept" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("flows: error: every row was rejected")


# -- keys that never leak -----------------------------------------------------------------------


def convert_input(folder: Path) -> Path:
    from schemas import DOCUMENTS, document_id, dumps_meta
    from schemas.dataset import DatasetWriter, StageManifest
    import pyarrow as pa

    text = "黄芪味甘，性微温，归肺、脾经。能补气升阳，固表止汗，利水消肿，生津养血，行滞通痹，托毒排脓，敛疮生肌。"
    rows = [{"id": document_id("books", text + str(n)), "text": f"编号P{n}。" + text, "source": "books", "category": "books",
             "title": "本草", "meta": dumps_meta({"book": "本草", "chapter": str(n)})} for n in range(3)]
    with DatasetWriter(folder, StageManifest(stage="decontaminate", rows_in={DOCUMENTS: 3})) as writer:
        writer.write(DOCUMENTS, pa.Table.from_pylist(rows))
        writer.commit()
    return folder


def llm_config(path: Path, server: ChatServer, model: str = "test-model") -> Path:
    path.write_text(
        f'[convert]\nbackend = "openai"\nbase_url = "{server.base_url}"\nmodel = "{model}"\napi_key_env = "TCM_PROBE_KEY"\n'
        'llm_categories = ["books"]\nmin_passage_chars = 20\nmax_passage_chars = 150\n', encoding="utf-8")
    return path


def files_holding(root: Path, secret: bytes) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if secret in path.read_bytes():
                    found.append(str(path))
            except OSError:
                pass
    return found


@pytest.mark.slow
def test_a_refused_key_is_masked_everywhere_and_never_retried(tmp_path, prefect_home):
    secret = f"sk-probe-{os.getpid()}-{time.time_ns()}-do-not-leak"
    work = tmp_path / "work"
    inputs = convert_input(work / "decontaminate")
    with ChatServer(expect_key="the-right-key") as server:
        # The gateway really echoes what it is sent.
        request = urllib.request.Request(server.base_url + "/chat/completions", data=b"{}", method="POST",
                                         headers={"Authorization": f"Bearer {secret}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert secret in refused.value.read().decode()
        server.statuses.clear()
        server.requests.clear()
        config = llm_config(work / "llm.toml", server)
        run = flows_cli("run", "convert", "--input", inputs, "--output", work / "convert", "--config", config,
                        prefect_home=prefect_home, env={"TCM_PROBE_KEY": secret, "PREFECT_LOGGING_LEVEL": "DEBUG"})
        sent, asked = dict(server.statuses), dict(server.requests)
    assert run.returncode == 1
    # (Prefect's DEBUG records fill stderr here, to give a leak every chance: one error line among them.)
    assert "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("flows: error:")]
    assert len(errors) == 1 and "the endpoint refused the API key (401 Unauthorized)" in errors[0], run.stderr[-3000:]
    assert set(sent) == {401} and set(asked.values()) == {1}, f"no request sent twice, by the client or Prefect's task retries: {asked}"
    assert sum(asked.values()) <= 8, "only the requests already in flight (concurrency 8) when the first was refused"
    assert secret not in run.stdout + run.stderr
    leaks = files_holding(tmp_path, secret.encode()) + files_holding(prefect_home, secret.encode())
    assert not leaks, leaks
    with sqlite3.connect(prefect_home / "prefect.db") as db:  # the check above read the database's bytes; this reads its rows
        for table, column in (("log", "message"), ("flow_run_state", "message"), ("task_run_state", "message"), ("events", "payload")):
            hits = db.execute(f"SELECT count(*) FROM {table} WHERE CAST({column} AS TEXT) LIKE ?", (f"%{secret}%",)).fetchone()[0]
            assert hits == 0, table
        masked = db.execute("SELECT count(*) FROM log WHERE message LIKE '%refused the API key%***%'").fetchone()[0]
        assert masked >= 1, "Prefect keeps the failure, with the key masked"


@pytest.mark.parametrize("status, words", [
    (403, ["refused this API key access to model 'forbidden-model' (403 Forbidden)"]),
    (404, ["does not know model 'missing-model'", "(404 Not Found)"]),
])
def test_a_refused_model_stops_at_once_with_the_key_masked(tmp_path, monkeypatch, status, words):
    from schemas.dataset import StageManifest
    from transforms import stages
    from transforms.engines.local import LocalEngine
    from transforms.convert.llm.client import EndpointError
    from flows.config import load_config

    secret = f"sk-model-probe-{time.time_ns()}"
    monkeypatch.setenv("TCM_PROBE_KEY", secret)
    inputs = convert_input(tmp_path / "in")
    model = "forbidden-model" if status == 403 else "missing-model"
    with ChatServer(forbidden_models=("forbidden-model",), known_models=("test-model", "forbidden-model")) as server:
        params = load_config(llm_config(tmp_path / "llm.toml", server, model)).section("convert")
        with pytest.raises(EndpointError) as refused:
            stages.run_convert([inputs], tmp_path / "out", params, StageManifest(stage="convert"), LocalEngine(1, 64))
        asked = dict(server.requests)
    assert asked and set(asked.values()) == {1}, f"no request is sent twice: {asked}"
    assert sum(asked.values()) <= params["concurrency"], "only requests already in flight when the first was refused"
    message = str(refused.value)
    for word in words:
        assert word in message
    assert secret not in message and "***" in message
    assert "\n" not in message


def test_a_deployed_build_checks_its_work_folder_as_the_command_does(tmp_path, prefect_harness):
    """A build started from the Prefect UI or a deployment is not checked by the CLI: the flow
    refuses a work folder whose corpus/ is a source before it writes anything."""
    from flows.build import build_corpus
    from flows.paths import PathRefused

    (tmp_path / "corpus").mkdir()
    shutil.copy(BOOK, tmp_path / "corpus")
    (tmp_path / "build.toml").write_text(TINY.replace('path = "books"', 'path = "corpus"'), encoding="utf-8")
    assert 'path = "corpus"' in (tmp_path / "build.toml").read_text(encoding="utf-8")
    before = listing(tmp_path)
    with pytest.raises(PathRefused, match="where the build writes its corpus"):
        build_corpus(config=str(tmp_path / "build.toml"), workdir=str(tmp_path))
    assert listing(tmp_path) == before, "the books are where they were, and nothing was written"
