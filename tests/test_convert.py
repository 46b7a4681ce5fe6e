"""The convert stage: passages, prompts, checks, and the LLM backend against a loopback
OpenAI-compatible server (tests/openai_server.py) over real HTTP; the template and native backends."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.config import ConvertConfig
from schemas import CONVERSATIONS, DOCUMENTS, conversation_id, document_id, dumps_meta, loads_meta
from schemas.dataset import DatasetWriter, StageManifest, read_manifest
from transforms import stages
from transforms.engines.local import LocalEngine
from transforms.convert.llm.client import EndpointError
from transforms.convert.llm.passages import SENTENCE_END, split_passages
from transforms.convert.llm.prompts import load_prompts
from transforms.convert.llm.verify import Checks, Unreadable, read_field

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import ChatServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "TCM_TEST_LLM_KEY"
SECRET = "sk-test-secret-never-written-4242"
HERB = "黄芪味甘，性微温，归肺、脾经。能补气升阳，固表止汗，利水消肿，生津养血，行滞通痹，托毒排脓，敛疮生肌。用于气虚乏力，食少便溏，中气下陷，久泻脱肛，便血崩漏，表虚自汗，气虚水肿。"
MONOGRAPH = {"kind": "monograph", "name": "甘草", "sections": {"性味与归经": "甘，平。归心、肺、脾、胃经。"}}


def passage_text(tag: str) -> str:
    return f"编号{tag}。" + HERB


def build_input(folder: Path, tags: list[str], chapter_tags: list[str] = ()) -> Path:
    """Documents: one short book passage per tag, one long chapter of several paragraphs, one
    monograph (templated), and two dialogue conversations (native)."""
    rows = []
    for tag in tags:
        text = passage_text(tag)
        rows.append({"id": document_id("books", text), "text": text, "source": "books", "category": "books",
                     "title": "本草选读", "meta": dumps_meta({"book": "本草选读", "chapter": tag})})
    if chapter_tags:
        text = "\n".join(passage_text(tag) for tag in chapter_tags)
        rows.append({"id": document_id("books", text), "text": text, "source": "books", "category": "books",
                     "title": "长篇", "meta": dumps_meta({"book": "长篇", "chapter": "一"})})
    rows.append({"id": "mono-1", "text": "甘草\n【性味与归经】甘，平。归心、肺、脾、胃经。", "source": "pharmacopoeia", "category": "encyclopedia",
                 "title": "甘草", "meta": dumps_meta(MONOGRAPH)})
    dialogues = []
    for question in ("最近总是失眠多梦怎么办？", "  舌苔厚腻是什么原因？ "):
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": "需要结合舌脉辨证，常见于湿浊内蕴。"}]
        dialogues.append({"id": conversation_id("dialogues", messages), "messages": messages, "source": "dialogues",
                          "category": "sft", "origin_id": None, "meta": None})
    manifest = StageManifest(stage="decontaminate", rows_in={DOCUMENTS: len(rows), CONVERSATIONS: 2})
    with DatasetWriter(folder, manifest) as writer:
        writer.write(DOCUMENTS, pa.Table.from_pylist(rows))
        writer.write(CONVERSATIONS, pa.Table.from_pylist(dialogues))
        writer.commit()
    return folder


def llm_params(server: ChatServer, **overrides) -> dict:
    settings = dict(backend="openai", base_url=server.base_url, model="test-model", api_key_env=KEY_ENV,
                    llm_categories=["books"], min_passage_chars=40, max_passage_chars=150, concurrency=4,
                    backoff_base=0.01, backoff_max=0.05, request_timeout=0.5, max_retries=4,
                    price_prompt_per_1k=0.002, price_completion_per_1k=0.006)
    settings.update(overrides)
    return ConvertConfig(**settings).model_dump(mode="json")


def run(inputs: Path, output: Path, params: dict) -> StageManifest:
    return stages.run_convert([inputs], output, params, StageManifest(stage="convert"), LocalEngine(1, 64))


def check_ledger(manifest: StageManifest) -> None:
    for kind in {*manifest.rows_in, *manifest.rows_made}:
        made = manifest.rows_made.get(kind, 0)
        assert manifest.rows_in.get(kind, 0) + made == manifest.rows_kept[kind] + manifest.rows_rejected.get(kind, 0), kind
    assert not manifest.rows_made.get(DOCUMENTS), "convert makes conversations, never documents"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


# -- passages, prompts, checks ------------------------------------------------------------------


def test_a_long_chapter_becomes_passages_cut_only_at_sentence_ends(shared_data):
    raw = (shared_data / "corpus" / "ancient-books" / "457-伤寒论.txt").read_bytes().decode("gb18030", errors="replace")
    lines = [line.strip() for line in raw.splitlines()[20:600] if line.strip()]
    chapter = "\n".join(lines)
    passages = split_passages(chapter, 120, 600)
    assert len(passages) > 10
    assert all(len(p.text) <= 600 for p in passages)
    flat = chapter.replace("\n", "")
    assert "".join(p.text for p in passages).replace("\n", "") == flat, "nothing lost, nothing added"
    line_ends, end = set(), 0
    for line in lines:
        end += len(line)
        line_ends.add(end)
    end = 0
    for passage in passages:
        end += len(passage.text.replace("\n", ""))
        if passage.cut in ("paragraph", "sentence"):
            assert end in line_ends or SENTENCE_END.search(flat[max(0, end - 3) : end]), flat[end - 20 : end + 5]
    # A single sentence longer than the bound is cut at commas, and the passage says so.
    run_on = "，".join(["太阳病发热汗出恶风脉缓者名为中风"] * 40) + "。"
    cut = split_passages(run_on, 20, 100)
    assert {p.cut for p in cut} == {"comma"} and all(p.text.endswith(("，", "。")) for p in cut)


def test_prompt_sets_ship_in_the_package_with_a_version():
    prompts = load_prompts()
    assert prompts.version == "unify-1"
    messages = prompts.messages("question", passage="黄芪补气。", title="本草", max_question_chars=150)
    assert "黄芪补气。" in messages[1]["content"] and "{" not in messages[1]["content"].replace('{"question"', "")
    answer = prompts.messages("answer", passage="黄芪补气。", title="本草", question="黄芪有什么功效？")[1]["content"]
    assert "黄芪有什么功效？" in answer
    with pytest.raises(ValueError, match="no prompt set"):
        load_prompts("unify-99")


def test_replies_are_read_however_wrapped_and_checked_with_reasons():
    assert read_field('好的：\n```json\n{"question": "黄芪能止汗吗？"}\n```\n希望有帮助', "question") == "黄芪能止汗吗？"
    assert read_field('问题如下 {"question": "黄芪能止汗吗？",} 完', "question") == "黄芪能止汗吗？"
    with pytest.raises(Unreadable):
        read_field('{"question": "黄芪能止汗', "question")
    checks = Checks()
    assert checks.question("请问" + "黄芪" * 100 + "？").startswith("question_too_long:chars=")
    assert checks.question("文中提到的黄芪有什么功效？") == "question_refers_to_source:文中"
    assert checks.question("黄芪和党参补气有什么不同？") is None
    good = "从中医的角度来看，" + HERB
    assert checks.answer(good, HERB) is None
    assert checks.answer("根据上述资料，" + HERB, HERB).startswith("answer_leaks_source:")
    dose = HERB + "成人参考剂量为九至三十克。"
    assert checks.answer("从中医的角度来看，" + dose, dose) is None, "a word the passage uses is no leak"
    assert checks.answer("Astragalus tonifies qi and stops sweating. " * 4, HERB).startswith("answer_not_chinese:")
    assert checks.answer("可以用。", HERB).startswith("answer_too_short:")
    off = "建议您多喝热水，保持作息规律，早睡早起，适当运动，饮食清淡，心情舒畅，如有不适及时到医院就诊检查。"
    assert checks.answer(off, HERB).startswith("drift:overlap=")


# -- the LLM backend against a loopback server ----------------------------------------------------

BEHAVIOURS = {
    "P1": "rate_limit", "P2": "server_error", "P3": "malformed", "P4": "fenced", "P5": "ignore", "P6": "cite",
    "P7": "english", "P8": "short", "P9": "long_question", "P10": "timeout_once",
}
EXPECTED_REJECTIONS = {
    "P3": "malformed_response:question", "P5": "drift:", "P6": "answer_leaks_source:", "P7": "answer_not_chinese:",
    "P8": "answer_too_short:", "P9": "question_too_long:",
}


def test_llm_conversion_retries_rejects_with_reasons_and_reuses_the_cache(tmp_path):
    tags = [f"P{i}" for i in range(11)]
    inputs = build_input(tmp_path / "in", tags, chapter_tags=["P20", "P21", "P22"])
    with ChatServer(latency_ms=5, behaviours=BEHAVIOURS, burst=1, retry_after="1", slow_s=1.0) as server:
        manifest = run(inputs, tmp_path / "convert", llm_params(server))
        check_ledger(manifest)
        stats = manifest.stats
        llm = stats["llm"]
        assert stats["passages"] == 14 and stats["passages_converted"] == 8 and stats["passages_rejected"] == 6
        # One burst per step (question, answer) of P1, P2 and P10, each retried once and then answered.
        assert llm["retries"] == {"http_status:429": 2, "http_status:500": 2, "timeout": 2}
        assert llm["retry_after_waits"] == 2 and llm["longest_wait_s"] >= 1.0, "Retry-After: 1 is honoured"
        assert llm["usage"]["total_tokens"] > 0 and llm["estimated_cost"] > 0
        assert stats["prompt_version"] == "unify-1" and not stats["unfinished"]

        out = tmp_path / "convert"
        produced = [r for r in pq.read_table(out / CONVERSATIONS).to_pylist() if r["source"] == "books"]
        assert len(produced) == 8
        for row in produced:
            meta = loads_meta(row["meta"])
            assert meta["prompt_version"] == "unify-1" and meta["model"] == "test-model" and meta["converter"] == "openai"
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        rejected = pq.read_table(out / "rejected" / CONVERSATIONS).to_pylist()
        by_tag = {loads_meta(r["meta"])["chapter"]: r for r in rejected}
        assert set(by_tag) == set(EXPECTED_REJECTIONS)
        for tag, reason in EXPECTED_REJECTIONS.items():
            assert by_tag[tag]["reason"].startswith(reason), (tag, by_tag[tag]["reason"])
            assert loads_meta(by_tag[tag]["meta"])["raw_response"], "the raw reply is kept"
        # Rejected passages stay as text; the monograph got its template; dialogues passed through.
        text = pq.read_table(out / DOCUMENTS).to_pylist()
        assert sorted(loads_meta(r["meta"]).get("left_as_text") for r in text) == sorted(
            ["malformed_response", "drift", "answer_leaks_source", "answer_not_chinese", "answer_too_short", "question_too_long"])
        assert stats["conversations_from_templates"] == 1 and stats["conversations_native"] == 2
        native = [r for r in pq.read_table(out / CONVERSATIONS).to_pylist() if r["source"] == "dialogues"]
        assert all(m["content"] == m["content"].strip() for r in native for m in r["messages"])
        # The key is read from the environment and written nowhere.
        for path in [*out.rglob("*"), *(tmp_path / "convert.cache").rglob("*")]:
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path

        answered = sum(server.answered.values())
        again = run(inputs, tmp_path / "convert", llm_params(server))
        assert sum(server.answered.values()) == answered, "a re-run is served from the cache"
        assert again.stats["llm"]["requests_sent"] == 0 and again.stats["llm"]["cache_hits"] > 0
        assert again.rows_out == manifest.rows_out and again.rejected_by_reason == manifest.rejected_by_reason


def test_a_reply_that_is_not_json_fails_its_passage_only(tmp_path):
    """A 200 whose body is no JSON object (a proxy's HTML page) fails that request, unretried,
    with its reason; the passage stays as text and the other passages convert."""
    inputs = build_input(tmp_path / "in", ["P0", "P1"])
    with ChatServer(behaviours={"P1": "not_json"}) as server:
        manifest = run(inputs, tmp_path / "convert", llm_params(server))
        asked = dict(server.requests)
    check_ledger(manifest)
    llm = manifest.stats["llm"]
    assert manifest.stats["passages_converted"] == 1 and manifest.stats["passages_rejected"] == 1
    assert asked[("P1", "question")] == 1 and ("P1", "answer") not in asked, "not retried, no answer asked"
    assert llm["failures"] == {"unreadable_response": 1} and not llm["retries"]
    rejected = pq.read_table(tmp_path / "convert" / "rejected" / CONVERSATIONS).to_pylist()
    assert [r["reason"] for r in rejected] == ["request_failed:unreadable_response"]
    text = pq.read_table(tmp_path / "convert" / DOCUMENTS).to_pylist()
    assert [loads_meta(r["meta"]).get("left_as_text") for r in text] == ["request_failed"]


def test_budget_stops_the_run_cleanly_and_a_later_run_continues(tmp_path):
    tags = [f"P{i}" for i in range(6)]
    inputs = build_input(tmp_path / "in", tags)
    with ChatServer() as server:
        manifest = run(inputs, tmp_path / "convert", llm_params(server, max_requests=5, cache_dir=str(tmp_path / "cache")))
        check_ledger(manifest)
        stats = manifest.stats
        # Each passage reserves its two requests before it starts: two fit in five, a third does not.
        assert sum(server.answered.values()) == 4, "the request budget is never passed"
        assert stats["llm"]["budget"]["exhausted"] and stats["unfinished"]
        assert stats["passages_converted"] == 2 and stats["passages_unsent_budget"] == 4
        unsent = [r for r in pq.read_table(tmp_path / "convert" / DOCUMENTS).to_pylist()
                  if loads_meta(r["meta"]).get("left_as_text") == "budget"]
        assert len(unsent) == 4, "passages the budget left are kept as text, not lost"

        resumed = run(inputs, tmp_path / "convert", llm_params(server, max_requests=100, cache_dir=str(tmp_path / "cache")))
        assert resumed.stats["passages_converted"] == 6 and not resumed.stats["unfinished"]
        assert max(server.answered.values()) == 1, "nothing paid for twice"


def test_json_mode_falls_back_and_the_judge_can_fail_a_pair(tmp_path):
    inputs = build_input(tmp_path / "in", ["P0", "P1"])
    with ChatServer(json_mode=False, behaviours={"P1": "judge_fail"}) as server:
        manifest = run(inputs, tmp_path / "convert", llm_params(server, judge=True))
        check_ledger(manifest)
        assert manifest.stats["llm"]["json_mode_fallback"]
        assert manifest.stats["passages_converted"] == 1
        assert manifest.rejected_by_reason == {"judge": 1}
        assert server.answered[("P0", "judge")] == 1


def test_an_endpoint_that_refuses_every_request_stops_the_run(tmp_path):
    inputs = build_input(tmp_path / "in", ["P0"])
    with ChatServer() as server:
        params = llm_params(server, base_url=server.base_url.replace("/v1", "/wrong"))
        with pytest.raises(EndpointError, match="404"):
            run(inputs, tmp_path / "convert", params)
    assert not (tmp_path / "convert").exists()


KILLED_RUN = """
import json, sys
from schemas.dataset import StageManifest
from transforms import stages
from transforms.engines.local import LocalEngine
inputs, output, params = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
stages.run_convert([inputs], output, params, StageManifest(stage="convert"), LocalEngine(1, 64))
"""


def test_a_run_killed_mid_way_resumes_without_repeating_a_request(tmp_path):
    tags = [f"P{i}" for i in range(12)]
    inputs = build_input(tmp_path / "in", tags)
    cache = tmp_path / "cache"
    with ChatServer(latency_ms=2, hold_after=9) as server:
        params = llm_params(server, cache_dir=str(cache))
        child = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(inputs), str(tmp_path / "convert"), json.dumps(params)],
                                 cwd=REPO, env={**os.environ, KEY_ENV: SECRET}, stderr=subprocess.PIPE)
        database = f"file:{cache / 'responses.sqlite'}?mode=ro"
        deadline = time.monotonic() + 60
        cached = 0
        while time.monotonic() < deadline and child.poll() is None:
            try:
                with sqlite3.connect(database, uri=True) as db:
                    cached = db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
            except sqlite3.OperationalError:  # the child has not created it yet
                cached = 0
            if cached == 9 == server.answered_total:
                break
            time.sleep(0.05)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        assert cached == 9, "the answered responses were cached as they arrived"
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert not (tmp_path / "convert").exists(), "a killed run leaves no finished-looking output"
        server.release()

        manifest = run(inputs, tmp_path / "convert", params)
        assert manifest.stats["passages_converted"] == 12
        assert manifest.stats["llm"]["cache_hits"] == 9
        assert set(server.answered.values()) == {1}, "no request answered twice across the kill"
        assert len(server.answered) == 24


def test_template_backend_stays_deterministic_and_native_passes_through(tmp_path):
    inputs = build_input(tmp_path / "in", ["P0"])
    params = ConvertConfig(system_prompt="你是一位中医师。").model_dump(mode="json")
    first = run(inputs, tmp_path / "a", params)
    run(inputs, tmp_path / "b", params)
    check_ledger(first)
    assert first.stats["conversations_from_templates"] == 1 and first.stats["documents_left_as_text"] == 1
    a = pq.read_table(tmp_path / "a" / CONVERSATIONS).to_pylist()
    assert a == pq.read_table(tmp_path / "b" / CONVERSATIONS).to_pylist()
    assert all(r["messages"][0] == {"role": "system", "content": "你是一位中医师。"} for r in a)
    native = [r for r in a if r["source"] == "dialogues"]
    assert len(native) == 2 and all(r["origin_id"] for r in native), "a changed conversation keeps its old id as origin"
    written = read_manifest(tmp_path / "a")
    assert written.rows_in == {DOCUMENTS: 2, CONVERSATIONS: 2}, "rows in: what came in, the two dialogues"
    assert written.rows_made == {CONVERSATIONS: 1} and written.rows_kept[CONVERSATIONS] == 3


def test_a_config_file_drives_the_openai_backend(tmp_path):
    """TOML -> validated config -> the stage, as the convert flow calls it (the flow itself is the
    generic stage flow that the build tests run)."""
    from flows.config import load_config

    inputs = build_input(tmp_path / "in", ["P0", "P1", "P6"])
    with ChatServer(behaviours={"P6": "cite"}) as server:
        (tmp_path / "llm.toml").write_text(
            f'[convert]\nbackend = "openai"\nbase_url = "{server.base_url}"\nmodel = "test-model"\napi_key_env = "{KEY_ENV}"\n'
            'llm_categories = ["books"]\nmin_passage_chars = 40\nmax_passage_chars = 150\nprice_prompt_per_1k = 0.01\n',
            encoding="utf-8")
        params = load_config(tmp_path / "llm.toml").section("convert")
        assert SECRET not in json.dumps(params)
        manifest = run(inputs, tmp_path / "out", params)
        check_ledger(manifest)
        assert manifest.stats["passages_converted"] == 2 and manifest.rejected_by_reason == {"answer_leaks_source": 1}
        assert manifest.stats["llm"]["estimated_cost"] > 0
        assert (tmp_path / "out.cache" / "responses.sqlite").is_file(), "the cache lives beside the stage output"
        assert SECRET not in (tmp_path / "out" / "_manifest.json").read_text(encoding="utf-8")


def test_the_convert_flow_holds_global_llm_slots_and_gives_them_back(prefect_harness, tmp_path):
    """The flow passes the [operations.llm] limit to the client: the Prefect server's limit exists
    with the configured slots, the run converts through it, and every slot is back at the end."""
    from prefect.client.orchestration import get_client

    from flows.pipeline import convert_flow

    inputs = build_input(tmp_path / "in", ["P0", "P1"])
    with ChatServer() as server:
        config = tmp_path / "llm.toml"
        config.write_text(
            f'[convert]\nbackend = "openai"\nbase_url = "{server.base_url}"\nmodel = "test-model"\napi_key_env = "{KEY_ENV}"\n'
            'llm_categories = ["books"]\nmin_passage_chars = 40\nmax_passage_chars = 150\nconcurrency = 4\n'
            '[operations.llm]\nconcurrency_limit = "test-convert-llm"\nslots = 2\n',
            encoding="utf-8")
        result = convert_flow([str(inputs)], str(tmp_path / "out"), str(config))
        answered = sum(server.answered.values())
    manifest = read_manifest(tmp_path / "out")
    check_ledger(manifest)
    assert not result["skipped"] and manifest.stats["passages_converted"] == 2
    assert answered == 4  # a question and an answer for each of the two passages
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("test-convert-llm")
    assert limit.limit == 2 and limit.active_slots == 0


def test_two_concurrent_converts_never_exceed_the_slots_at_the_endpoint(tmp_path, prefect_home):
    """Two `flows run convert` at once, each allowed 4 requests at a time, share a limit of 2
    slots: the endpoint (which counts requests in flight) never sees more than 2 at once, and
    both runs convert every passage."""
    tags = [f"P{i}" for i in range(12)]
    inputs = build_input(tmp_path / "in", tags)
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING", KEY_ENV: SECRET}
    with ChatServer(latency_ms=40) as server:
        config = tmp_path / "llm.toml"
        config.write_text(
            f'[convert]\nbackend = "openai"\nbase_url = "{server.base_url}"\nmodel = "test-model"\napi_key_env = "{KEY_ENV}"\n'
            'llm_categories = ["books"]\nmin_passage_chars = 40\nmax_passage_chars = 150\nconcurrency = 4\n'
            '[operations.llm]\nconcurrency_limit = "test-two-converts"\nslots = 2\n',
            encoding="utf-8")
        runs = [subprocess.Popen([sys.executable, "-m", "flows", "run", "convert", "--config", str(config), "--input", str(inputs),
                                  "--output", str(tmp_path / name)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
        outcomes = [run.communicate(timeout=300) for run in runs]
        most = server.most_in_flight
        answered = server.answered_total
    for run, (out, err) in zip(runs, outcomes):
        assert run.returncode == 0, err[-3000:]
    assert most == 2, f"{most} requests in flight at once (2 slots)"
    assert answered == 2 * 2 * len(tags)  # question and answer per passage, per run
    for name in ("a", "b"):
        assert read_manifest(tmp_path / name).stats["passages_converted"] == len(tags)
