"""Dataset validation: each kind's suite passes good rows, names the broken rule with examples,
and keeps its results as JSON and a Data Docs site."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quality import ValidationReport, validate_dataset, validate_kind
from quality.turns import empty_turns, roles_in_order
from schemas.dataset import DatasetWriter, StageManifest
from schemas.records import (
    CONVERSATIONS,
    CORPUS,
    DOCUMENTS,
    MESSAGES_TYPE,
    SCHEMAS,
    conversation_id,
    document_id,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CMTMEDQA = SHARED_DATA / "instructions" / "cmtmedqa_test.json"


def rows_of(kind: str, rows: list[dict]) -> pa.Table:
    schema = pa.schema([f.with_nullable(True) for f in SCHEMAS[kind]])
    return pa.Table.from_pylist(rows, schema=schema)


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def document(text: str, category: str = "books", **extra) -> dict:
    return {"id": document_id("本草纲目", text), "text": text, "source": "本草纲目", "category": category, **extra}


def conversation(messages: list[dict], category: str = "sft", **extra) -> dict:
    return {"id": conversation_id("cmtmedqa", messages), "messages": messages, "source": "cmtmedqa", "category": category, **extra}


def corpus_rows(count: int) -> list[dict]:
    rows = []
    for position in range(count):
        if position % 2:
            rows.append({"format": "text", "text": f"人参，味甘微寒。第{position}条", "category": "books"})
        else:
            rows.append({"format": "chat", "messages": turns(("user", f"问{position}"), ("assistant", f"答{position}")), "category": "sft"})
        rows[-1].update(id=f"c{position:04d}", position=position, source="mixed")
    return rows


GOOD_DOCUMENTS = [document("人参，味甘微寒，主补五脏。"), document("黄芪，味甘微温。", category="literature", lang="zh")]
GOOD_CONVERSATIONS = [
    conversation(turns(("user", "失眠多梦怎么办？"), ("assistant", "可考虑酸枣仁汤，请遵医嘱。"))),
    conversation(
        turns(("system", "你是中医师。"), ("user", "舌苔白腻？"), ("assistant", "多属湿浊。"), ("user", "如何调理？"), ("assistant", "健脾化湿。"))
    ),
]


def failure_named(report: ValidationReport, expectation: str):
    named = [f for f in report.failures if f.expectation == expectation]
    assert named, f"{expectation} not among failures: {[f.expectation for f in report.failures]}"
    return named[0]


@pytest.mark.parametrize(
    "kind, rows",
    [(DOCUMENTS, GOOD_DOCUMENTS), (CONVERSATIONS, GOOD_CONVERSATIONS), (CORPUS, corpus_rows(6))],
)
def test_good_rows_meet_every_expectation(kind, rows):
    report = validate_kind(rows_of(kind, rows), kind)
    assert report.success, report.summary()
    assert report.failures == []
    assert report.rows == len(rows)
    assert report.evaluated >= 7
    assert report.summary() == f"{kind}: {len(rows)} rows, {report.evaluated}/{report.evaluated} expectations met"
    assert report.results_path is None and report.docs_path is None


def test_duplicate_id_is_named_with_the_id():
    twice = GOOD_DOCUMENTS + [GOOD_DOCUMENTS[0]]
    report = validate_kind(rows_of(DOCUMENTS, twice), DOCUMENTS)
    assert not report.success
    failure = failure_named(report, "expect_column_values_to_be_unique(id)")
    assert failure.kind == DOCUMENTS
    assert failure.unexpected_count == 2
    assert failure.examples == [GOOD_DOCUMENTS[0]["id"]]
    assert "expect_column_values_to_be_unique(id)" in report.summary()
    assert GOOD_DOCUMENTS[0]["id"] in report.summary()


def test_unknown_category_is_named_with_the_value():
    rows = GOOD_CONVERSATIONS + [conversation(turns(("user", "问"), ("assistant", "答")), category="forum")]
    report = validate_kind(rows_of(CONVERSATIONS, rows), CONVERSATIONS)
    failure = failure_named(report, "expect_column_values_to_be_in_set(category)")
    assert failure.unexpected_count == 1
    assert failure.examples == ["forum"]
    # A category list from the build's configuration replaces the default one.
    assert validate_kind(rows_of(CONVERSATIONS, rows), CONVERSATIONS, options={"categories": ["sft", "forum"]}).success


def test_two_user_turns_in_a_row_break_the_role_order():
    broken = conversation(turns(("user", "头痛"), ("user", "还发热"), ("assistant", "可能外感风热。")))
    report = validate_kind(rows_of(CONVERSATIONS, GOOD_CONVERSATIONS + [broken]), CONVERSATIONS)
    assert [f.expectation for f in report.failures] == ["expect_column_values_to_be_in_set(roles_ok)"]
    failure = report.failures[0]
    assert failure.unexpected_count == 1
    assert failure.examples == [{"id": broken["id"], "roles": ["user", "user", "assistant"]}]
    assert "roles_ok" in report.summary() and broken["id"] in report.summary()


def test_empty_turn_and_missing_messages_are_reported():
    blank = conversation(turns(("user", "咳嗽"), ("assistant", "  ")))
    missing = {"id": "no-messages", "messages": None, "source": "cmtmedqa", "category": "sft"}
    report = validate_kind(rows_of(CONVERSATIONS, GOOD_CONVERSATIONS + [blank, missing]), CONVERSATIONS)
    empty = failure_named(report, "expect_column_values_to_be_between(empty_turns)")
    assert empty.examples == [{"id": blank["id"], "roles": ["user", "assistant"], "empty_turns": 1}]
    absent = failure_named(report, "expect_column_values_to_not_be_null(turns)")
    assert absent.examples == [{"id": "no-messages", "roles": []}]


def test_corpus_with_a_gap_in_positions_fails_on_the_last_position():
    rows = corpus_rows(5)
    rows[-1]["position"] = 7
    report = validate_kind(rows_of(CORPUS, rows), CORPUS)
    assert [f.expectation for f in report.failures] == ["expect_column_max_to_be_between(position)"]
    failure = report.failures[0]
    assert failure.examples == [{"observed": 7, "expected": [4, 4]}]
    assert "expect_column_max_to_be_between(position)" in report.summary()
    assert '"observed": 7' in report.summary()


def test_corpus_rows_must_carry_the_body_of_their_format():
    rows = corpus_rows(4)
    rows[0]["messages"] = None  # a chat row without turns
    rows[1]["text"] = None  # a text row without text
    rows[2]["format"] = "audio"
    report = validate_kind(rows_of(CORPUS, rows), CORPUS)
    names = {f.expectation for f in report.failures}
    assert names == {
        "expect_column_values_to_not_be_null(turns) where format == chat",
        "expect_column_values_to_be_in_set(roles_ok)",
        "expect_column_values_to_not_be_null(text_chars) where format == text",
        "expect_column_values_to_be_in_set(format)",
    }
    assert failure_named(report, "expect_column_values_to_be_in_set(format)").examples == ["audio"]


def test_text_length_and_language_follow_the_options():
    rows = GOOD_DOCUMENTS + [document("短", lang="ja"), document("")]
    report = validate_kind(rows_of(DOCUMENTS, rows), DOCUMENTS, options={"languages": ["zh"], "min_chars": 2})
    length = failure_named(report, "expect_column_values_to_be_between(text_chars)")
    assert length.unexpected_count == 2
    assert {example["chars"] for example in length.examples} == {0, 1}
    assert failure_named(report, "expect_column_values_to_be_in_set(lang)").examples == ["ja"]
    # Without a language list, `lang` is not checked; a row without `lang` is never flagged.
    assert validate_kind(rows_of(DOCUMENTS, GOOD_DOCUMENTS + [document("黄连，味苦寒。", lang="ja")]), DOCUMENTS).success


def test_a_missing_required_column_is_reported_not_raised():
    table = rows_of(DOCUMENTS, GOOD_DOCUMENTS).drop_columns(["category"])
    report = validate_kind(table, DOCUMENTS)
    failure = failure_named(report, "expect_column_values_to_not_be_null(category)")
    assert failure.unexpected_count == len(GOOD_DOCUMENTS)
    assert failure.examples[0] == {"id": GOOD_DOCUMENTS[0]["id"]}


def test_pandas_rows_are_validated_like_arrow_rows():
    frame = pd.DataFrame(GOOD_CONVERSATIONS + [GOOD_CONVERSATIONS[0]])
    report = validate_kind(frame, CONVERSATIONS)
    assert [f.expectation for f in report.failures] == ["expect_column_values_to_be_unique(id)"]


def test_wrong_options_and_kinds_are_refused():
    table = rows_of(DOCUMENTS, GOOD_DOCUMENTS)
    with pytest.raises(ValueError, match="unknown validation option"):
        validate_kind(table, DOCUMENTS, options={"max_length": 3})
    with pytest.raises(ValueError, match="no quality suite"):
        validate_kind(table, "shards")


def test_results_json_and_data_docs_are_written(tmp_path):
    rows = GOOD_DOCUMENTS + [GOOD_DOCUMENTS[0]]
    report = validate_kind(rows_of(DOCUMENTS, rows), DOCUMENTS, results_dir=tmp_path / "quality")
    results = json.loads(Path(report.results_path).read_text(encoding="utf-8"))
    assert Path(report.results_path) == tmp_path / "quality" / "documents.json"
    assert results["success"] is False
    assert results["statistics"]["evaluated_expectations"] == report.evaluated
    failed = [r["expectation_config"]["type"] for r in results["results"] if not r["success"]]
    assert failed == ["expect_column_values_to_be_unique"]

    index = tmp_path / "quality" / "data_docs" / "index.html"
    page = Path(report.docs_path)
    assert index.is_file()
    assert page.is_file() and page.suffix == ".html" and (tmp_path / "quality" / "data_docs") in page.parents
    html = page.read_text(encoding="utf-8")
    assert "values must be unique" in html
    assert GOOD_DOCUMENTS[0]["id"] in html


def _gx_original(run):
    """`run()` with Great Expectations' own kwarg lookups and JSON conversion in place."""
    from quality import gx_hotpaths

    gx_hotpaths.uninstall()
    try:
        return run()
    finally:
        assert gx_hotpaths.install()


@pytest.mark.parametrize("kind", [DOCUMENTS, CONVERSATIONS, "pages", CORPUS])
def test_kwarg_lookups_answer_as_gx_does_for_every_suite_expectation(kind):
    from great_expectations.expectations.expectation import Expectation

    from quality import gx_hotpaths
    from quality.suites import Options, build_suite

    options = Options.from_mapping({"languages": ["zh"], "content_severity": "warning"})
    runtime = {"result_format": {"result_format": "SUMMARY", "partial_unexpected_count": 20}}
    # As GX validates them: each expectation rebuilt from its configuration with the batch id added.
    expectations = []
    for expectation in build_suite(kind, options, 7).expectations:
        configuration = expectation.configuration
        configuration.kwargs["batch_id"] = "tcm_corpus-" + kind
        expectations.append(configuration.to_domain_obj())
    assert expectations and Expectation._get_runtime_kwargs is gx_hotpaths.KWARG_LOOKUPS["_get_runtime_kwargs"]

    def lookups():
        looked_up = []
        for expectation in expectations:
            keys = (*expectation.domain_keys, *expectation.success_keys, *expectation.runtime_keys)
            looked_up.append(
                (
                    expectation._get_domain_kwargs(),
                    expectation._get_success_kwargs(),
                    expectation._get_runtime_kwargs(),
                    expectation._get_runtime_kwargs(runtime_configuration=runtime),
                    [expectation._get_success_kwarg(key, "absent") for key in keys],
                    expectation.configuration.type,
                )
            )
        return looked_up

    ours = lookups()
    assert ours == _gx_original(lookups)
    assert {looked_up[3]["result_format"]["result_format"] for looked_up in ours} == {"SUMMARY"}


def test_json_conversion_answers_as_gx_does():
    import datetime
    import enum

    import numpy as np

    from great_expectations.core.id_dict import IDDict
    from great_expectations.util import convert_to_json_serializable

    from quality import gx_hotpaths

    class Flag(str, enum.Enum):
        ON = "on"

    values = [
        None, "参", 0, -7, True, False, 1.5, float("nan"), float("inf"), 10**30,
        {1: None, "a": [1, (2, 3.0)], "s": {4}, "n": {"deep": [None, float("nan")]}},
        [None, "x", {"k": ()}], (None,), set(), {},
        np.int64(3), np.float32(0.25), np.bool_(True), Flag.ON, datetime.date(2026, 12, 1),
        {"mixed": [np.int64(1), Flag.ON, {2: np.float64(2.5)}]},
        IDDict({"column": "id", "row_condition": None, "condition_parser": None}),
    ]
    assert convert_to_json_serializable is gx_hotpaths.convert_to_json_serializable
    ours = [gx_hotpaths.convert_to_json_serializable(value) for value in values]
    theirs = _gx_original(lambda: [convert_to_json_serializable(value) for value in values])
    assert json.dumps(ours, sort_keys=True) == json.dumps(theirs, sort_keys=True)
    assert [type(value) for value in ours] == [type(value) for value in theirs]
    metric_kwargs = IDDict({"column": "text_chars", "row_condition": None, "result_format": {"result_format": "SUMMARY"}})
    assert metric_kwargs.to_id() == _gx_original(metric_kwargs.to_id)


def test_results_json_is_the_result_gx_stores(tmp_path):
    from quality.validate import QualityRun

    run = QualityRun(results_dir=tmp_path)
    report = run.validate(rows_of(DOCUMENTS, GOOD_DOCUMENTS + [GOOD_DOCUMENTS[0]]), DOCUMENTS)
    _, identifier = run.reports[0]
    stored = run.context.validation_results_store.get(identifier)
    assert json.loads(Path(report.results_path).read_text(encoding="utf-8")) == json.loads(json.dumps(stored.to_json_dict(), default=str))
    assert [r.success for r in stored.results].count(False) == 1


def test_a_dataset_folder_is_validated_kind_by_kind(tmp_path):
    stage = tmp_path / "stages" / "convert"
    with DatasetWriter(stage, StageManifest(stage="convert")) as writer:
        writer.write(DOCUMENTS, rows_of(DOCUMENTS, GOOD_DOCUMENTS))
        writer.write(CONVERSATIONS, rows_of(CONVERSATIONS, GOOD_CONVERSATIONS + [GOOD_CONVERSATIONS[1]]))
        writer.commit()
    reports = validate_dataset(stage, results_dir=tmp_path / "quality")
    assert [(r.kind, r.rows, r.success) for r in reports] == [(DOCUMENTS, 2, True), (CONVERSATIONS, 3, False)]
    assert {Path(r.results_path).name for r in reports} == {"documents.json", "conversations.json"}
    assert all(Path(r.docs_path).is_file() for r in reports)
    index = (tmp_path / "quality" / "data_docs" / "index.html").read_text(encoding="utf-8")
    assert "documents" in index and "conversations" in index


def test_a_corpus_folder_of_part_files_is_found_by_its_columns(tmp_path):
    rows = rows_of(CORPUS, corpus_rows(10))
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(rows.slice(0, 6), folder / "part-00000.parquet")
    pq.write_table(rows.slice(6), folder / "part-00001.parquet")
    [report] = validate_dataset(folder)
    assert (report.kind, report.rows, report.success) == (CORPUS, 10, True), report.summary()


def test_role_order_and_empty_turn_rules():
    conversations = [
        turns(("user", "q"), ("assistant", "a")),
        turns(("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "q"), ("assistant", "a")),
        turns(("user", "q"), ("user", "q"), ("assistant", "a")),  # two user turns
        turns(("user", "q")),  # nobody answers
        turns(("user", "q"), ("assistant", "a"), ("user", "q")),  # the user speaks last
        turns(("assistant", "a"), ("user", "q")),  # the assistant speaks first
        turns(("system", "s"), ("system", "s"), ("user", "q"), ("assistant", "a")),  # a second system turn
        turns(("user", "q"), ("doctor", "a")),  # an unknown role
        turns(("system", "s")),
        [],
        None,
        turns(("user", "q"), ("assistant", " \n")),
        [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}],
    ]
    messages = pa.array(conversations, type=MESSAGES_TYPE)
    assert roles_in_order(messages).tolist() == [True, True] + [False] * 9 + [True, True]
    assert empty_turns(messages).tolist() == [0] * 11 + [1, 1]
    # Slices and chunked columns, as Parquet reads them, give the same judgments row by row.
    chunked = pa.chunked_array([messages.slice(0, 5), messages.slice(5)])
    assert roles_in_order(chunked).tolist() == roles_in_order(messages).tolist()
    assert empty_turns(messages.slice(10, 3)).tolist() == [0, 1, 1]


def cmtmedqa_conversations(limit: int) -> list[dict]:
    """Real doctor-patient dialogues: each history pair, then the last instruction and its answer."""
    records = json.loads(CMTMEDQA.read_text(encoding="utf-8"))[:limit]
    rows = []
    for record in records:
        messages = []
        for question, answer in record.get("history") or []:
            messages += turns(("user", question), ("assistant", answer))
        question = "\n".join(part for part in (record["instruction"], record.get("input")) if part)
        messages += turns(("user", question), ("assistant", record["output"]))
        rows.append(conversation(messages, meta=json.dumps({"cate1": record.get("cate1")}, ensure_ascii=False)))
    return rows


def test_real_cmtmedqa_dialogues_validate(tmp_path, shared_data):
    rows = cmtmedqa_conversations(50)
    report = validate_kind(rows_of(CONVERSATIONS, rows), CONVERSATIONS, results_dir=tmp_path)
    assert report.rows == 50
    assert report.success, report.summary()
    assert Path(report.docs_path).is_file()


# -- severities, the language column, failing rows read back from a dataset ---------------------


def test_content_rules_only_warn_before_cleaning():
    broken = conversation(turns(("user", "头痛"), ("user", "还发热"), ("assistant", "可能外感风热。")))
    rows = rows_of(CONVERSATIONS, GOOD_CONVERSATIONS + [broken])
    report = validate_kind(rows, CONVERSATIONS, options={"content_severity": "warning"})
    assert report.success, "a warning does not fail the validation"
    assert [(f.expectation, f.severity) for f in report.failures] == [("expect_column_values_to_be_in_set(roles_ok)", "warning")]
    assert report.summary().endswith("(warning): 1 unexpected, e.g. " + json.dumps({"id": broken["id"], "roles": ["user", "user", "assistant"]}, ensure_ascii=False))
    # Ids are structure, not content: a repeated id stays critical.
    repeated = validate_kind(rows_of(CONVERSATIONS, GOOD_CONVERSATIONS + [broken, broken]), CONVERSATIONS, options={"content_severity": "warning"})
    assert not repeated.success
    assert "failed expect_column_values_to_be_unique(id): 2 unexpected" in repeated.summary()
    assert "1 of them warnings" in repeated.summary()


def test_language_is_checked_only_where_rows_carry_it():
    plain = rows_of(CORPUS, corpus_rows(4))
    report = validate_kind(plain, CORPUS, options={"languages": ["zh"]})
    assert report.success and "lang" not in " ".join(f.expectation for f in report.failures)
    tagged = plain.append_column("lang", pa.array(["zh", "zh", "en", None]))
    report = validate_kind(tagged, CORPUS, options={"languages": ["zh"]})
    assert [f.expectation for f in report.failures] == ["expect_column_values_to_be_in_set(lang)"]
    assert report.failures[0].examples == ["en"]


def test_failing_rows_of_a_dataset_are_read_back_from_their_file(tmp_path):
    folder = tmp_path / "clean"
    broken = conversation(turns(("assistant", "先答"), ("user", "后问")))
    schema = pa.schema([f.with_nullable(True) for f in SCHEMAS[CONVERSATIONS]])
    (folder / CONVERSATIONS).mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(GOOD_CONVERSATIONS, schema=schema), folder / CONVERSATIONS / "part-00000.parquet")
    pq.write_table(pa.Table.from_pylist([GOOD_CONVERSATIONS[0] | {"id": "x"}, broken], schema=schema), folder / CONVERSATIONS / "part-00001.parquet")
    [report] = validate_dataset(folder)
    assert report.rows == 4
    assert report.failures[0].examples == [{"id": broken["id"], "roles": ["assistant", "user"]}]


# -- build-corpus: validation after every stage, the report and its artifacts ------------------


def _small_build_config(tmp_path: Path, shared: Path, extra: str = "") -> Path:
    records = json.loads((shared / "instructions" / "cmtmedqa_test.json").read_text(encoding="utf-8"))[:30]
    dialogues = tmp_path / "dialogues.json"
    dialogues.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    monographs = tmp_path / "monographs.txt"
    monographs.write_text((shared / "corpus" / "pharmacopoeia" / "2022年中药药典.txt").read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    config = tmp_path / "build.toml"
    config.write_text(
        f"""
[[sources]]
name = "pharmacopoeia"
kind = "files"
path = "{monographs}"
format = "monograph"
category = "encyclopedia"

[[sources]]
name = "cmtmedqa"
kind = "dataset"
path = "{dialogues}"
format = "instructions"
category = "sft"

[sample]
shard_rows = 40

[engine]
workers = 1
{extra}
""",
        encoding="utf-8",
    )
    return config


def test_build_validates_every_stage_and_writes_the_report(tmp_path, shared_data, prefect_harness):
    import asyncio

    from prefect.client.orchestration import get_client

    from flows import pipeline
    from flows.build import STAGE_FLOWS
    from quality.report import build_figures

    workdir = tmp_path / "build"
    result = pipeline.build_corpus(config=str(_small_build_config(tmp_path, shared_data)), workdir=str(workdir))
    assert set(result["validation"]) == {"ingest", "clean", "select", "dedup", "decontaminate", "convert"}
    for stage in result["validation"]:
        folder = workdir / "quality" / stage
        kinds = [r["kind"] for r in result["validation"][stage]["stats"]["reports"]]
        assert "conversations" in kinds and all((folder / f"{kind}.json").is_file() for kind in kinds)
        assert (folder / "data_docs" / "index.html").is_file()

    report = Path(result["report"])
    assert report == workdir / "report.html"
    page = report.read_text(encoding="utf-8")
    funnel_stages = list(dict.fromkeys(row["stage"] for row in build_figures(workdir)["funnel"]))
    assert funnel_stages == [s for s in STAGE_FLOWS if s in result["stages"]]
    assert "<td>select</td>" in page
    for heading in ("Funnel", "Rejection reasons", "Validation", "Category mix", "Sampling curve", "Lengths of chat rows", "Dedup clusters", "Top sources"):
        assert f"<h2>{heading}" in page, heading
    assert page.count("<polygon") == 2, "one area per category in the sampling curve"
    corpus_rows_ = result["stages"]["sample"]["rows_out"]["corpus"]
    assert f"{corpus_rows_:,} rows" in page

    keys = ["corpus-funnel", "corpus-category-mix", "corpus-sampling-curve", "corpus-report", "corpus-validation"]

    async def artifacts():
        async with get_client() as client:
            # The API itself: this client version's read_artifacts sends filters its server refuses.
            # Newest first: other builds in this Prefect database publish under the same keys.
            body = {"artifacts": {"key": {"any_": keys}}, "limit": 200, "offset": 0, "sort": "CREATED_DESC"}
            newest: dict = {}
            for artifact in (await client.request("POST", "/artifacts/filter", json=body)).json():
                newest.setdefault(artifact["key"], artifact)
            return newest

    found = asyncio.run(artifacts())
    assert set(found) == set(keys)
    assert {found[key]["type"] for key in keys} == {"table", "markdown"}
    mix = {row["category"]: row["rows"] for row in json.loads(found["corpus-category-mix"]["data"])}
    assert sum(mix.values()) == corpus_rows_
    assert "Sampling curve" in found["corpus-report"]["data"]


def test_a_hard_failure_stops_the_build_naming_the_expectation(tmp_path, shared_data, prefect_harness):
    from flows import pipeline
    from flows.pipeline import ValidationFailed

    # Monograph entries are far longer than 10 characters: a warning after ingest, fatal after clean.
    config = _small_build_config(tmp_path, shared_data, "[validate]\nmax_chars = 10\n")
    workdir = tmp_path / "build"
    with pytest.raises(ValidationFailed) as failure:
        pipeline.build_corpus(config=str(config), workdir=str(workdir))
    message = str(failure.value)
    assert message.startswith("clean output: documents:")
    assert "failed expect_column_values_to_be_between(text_chars)" in message and '"chars":' in message
    ingest = json.loads((workdir / "quality" / "ingest" / "_manifest.json").read_text(encoding="utf-8"))
    assert all(r["success"] for r in ingest["stats"]["reports"]) and ingest["stats"]["reports"][0]["warnings"] >= 1
    results = json.loads((workdir / "quality" / "clean" / "documents.json").read_text(encoding="utf-8"))
    assert results["success"] is False
    assert (workdir / "quality" / "clean" / "data_docs" / "index.html").is_file()
    assert not (workdir / "stages" / "dedup").exists(), "nothing runs after a failed validation"


def test_report_reads_dedup_clusters_when_the_stage_wrote_them(tmp_path):
    from quality.report import build_figures, render_html

    clusters = tmp_path / "stages" / "dedup" / "clusters"
    clusters.mkdir(parents=True)
    # One row per member, `cluster` naming the kept row, as the dedup stage writes its audit.
    members = {
        "kind": ["documents"] * 7, "id": list("a12b3c4"), "cluster": ["a", "a", "a", "b", "b", "c", "c"],
        "kept": [True, False, False, True, False, True, False], "similarity": [1.0, 1.0, 0.9, 1.0, 0.85, 1.0, 1.0],
        "match": ["kept", "exact", "near", "kept", "near", "kept", "exact"],
    }
    pq.write_table(pa.table(members), clusters / "part-00000.parquet")
    figures = build_figures(tmp_path)
    assert figures["dedup"]["cluster_sizes"] == {"2": 2, "3": 1}
    assert figures["dedup"]["members_by_match"] == {"exact": 2, "kept": 3, "near": 2}
    page = render_html(figures)
    assert "size 2" in page and "size 3" in page and "near" in page


def test_modules_gx_imports_for_unused_expectations_load_when_first_used(tmp_path):
    """scipy.stats and altair are deferred while GX is imported: not run by the import, whole on
    first use (GX's KL-divergence expectation computes with scipy.stats.entropy)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "deferred.py"
    script.write_text(
        "import sys, types\n"
        "import quality\n"
        "import great_expectations.expectations.core.expect_column_kl_divergence_to_be_less_than as kl\n"
        "print(type(sys.modules['scipy.stats']).__name__, 'scipy.stats._stats_py' in sys.modules)\n"
        "print(round(float(kl.stats.entropy([0.5, 0.5], [0.9, 0.1])), 6), 'scipy.stats._stats_py' in sys.modules)\n"
        "print(type(sys.modules['scipy.stats']).__name__, callable(kl.alt.Chart))\n",
        encoding="utf-8",
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(root)}).stdout.split("\n")
    assert out[0] == "_LazyModule False"
    assert out[1] == "0.510826 True"
    assert out[2] == "module True"
