"""One question, one answer: prompts the real instruction sets answer in two different ways are
found, dropped (or kept) by the select stage, counted in its manifest and listed in the report."""
from __future__ import annotations

import re

import pyarrow as pa
import pytest

from schemas import CONVERSATIONS, SCHEMAS
from schemas.dataset import DatasetWriter, StageManifest, read_kind
from transforms import stages
from transforms.select.conflicts import AnswerIndex, _digest, conversation_keys, prompt_and_answer
from transforms.engines.local import LocalEngine
from transforms.ingest.importers import import_file


@pytest.fixture(scope="module")
def qr_conversations(shared_data, tmp_path_factory):
    """The tcm-qr instruction set as imported: its real conversations."""
    rows = [r.row for r in import_file(shared_data / "instructions" / "tcm_qr.json", "instructions", "tcm-qr", "sft") if not r.rejected]
    folder = tmp_path_factory.mktemp("qr") / "in"
    schema = pa.schema([f.with_nullable(True) for f in SCHEMAS[CONVERSATIONS]])
    with DatasetWriter(folder, StageManifest(stage="test")) as writer:
        writer.write(CONVERSATIONS, pa.Table.from_pylist(rows, schema=schema))
        writer.commit()
    return folder, rows


def test_prompt_and_answer_ignore_form_and_system_turns():
    a = [{"role": "system", "content": "你是中医"}, {"role": "user", "content": "黄芪有什么功效？"}, {"role": "assistant", "content": "补气升阳。"}]
    b = [{"role": "user", "content": "黄芪有什么功效?"}, {"role": "assistant", "content": "补气升阳"}]
    assert prompt_and_answer(a) == prompt_and_answer(b)
    assert prompt_and_answer([{"role": "user", "content": "问"}]) is None
    index = AnswerIndex()
    c = [{"role": "user", "content": "黄芪有什么功效？"}, {"role": "assistant", "content": "补血活血。"}]
    index.add(pa.table({"messages": [a, b, c]}))
    assert list(index.conflicts().values()) == [2]


def test_batch_keys_equal_each_conversations_own_prompt_and_answer(qr_conversations):
    """conversation_keys puts a batch's turns in match form at once: the digests of
    prompt_and_answer row by row, on the real set and on rows without a final answer."""
    _, rows = qr_conversations
    messages = [r["messages"] for r in rows] + [None, [], [{"role": "user", "content": "问"}],
                                                [{"role": "system", "content": "系统"}, {"role": "user", "content": "黃耆？"}, {"role": "assistant", "content": "補氣。"}]]
    expected = []
    for row in messages:
        pair = prompt_and_answer(row)
        expected.append(None if pair is None else (_digest(pair[0]), _digest(pair[1])))
    assert conversation_keys(messages) == expected
    assert expected.count(None) == 3


def test_select_drops_conflicting_answers_of_real_rows_by_default_and_keeps_them_when_asked(tmp_path, qr_conversations):
    folder, rows = qr_conversations
    index = AnswerIndex()
    index.add(pa.Table.from_pylist([{"messages": r["messages"]} for r in rows]))
    conflicts = index.conflicts()
    assert conflicts, "tcm_qr answers some prompts (我咳嗽了，没有其他症状……) in two ways"
    in_conflict = sum(index.rows[p] for p in conflicts)

    dropped = stages.run_select([folder], tmp_path / "drop", {}, StageManifest(stage="select"), LocalEngine(workers=1))
    stats = dropped.stats["conflicting_answers"]
    assert stats["mode"] == "drop" and stats["prompts"] == len(conflicts) and stats["rows"] == in_conflict
    assert stats["examples"] and len(stats["examples"][0]["answers"]) >= 2
    assert dropped.rows_rejected[CONVERSATIONS] == in_conflict
    assert dropped.rows_in[CONVERSATIONS] == len(rows) == dropped.rows_kept[CONVERSATIONS] + in_conflict
    rejected_rows = read_kind(tmp_path / "drop" / "rejected", CONVERSATIONS).to_pylist()
    assert all(r["reason"].startswith("conflicting_answers:") for r in rejected_rows)
    assert set(dropped.rejected_by_reason) == {"conflicting_answers"}, "counted by the reason's prefix"
    # Each reason names the row it conflicts with: the same prompt, another answer, its source.
    by_id = {r["id"]: r for r in rows}
    for row in rejected_rows:
        match = re.fullmatch(r"conflicting_answers:(\d+) unlike (\S+) \((.+)\)", row["reason"])
        assert match, row["reason"]
        other = by_id[match.group(2)]
        assert match.group(3) == other["source"] and other["id"] != row["id"]
        mine, theirs = prompt_and_answer(row["messages"]), prompt_and_answer(other["messages"])
        assert mine[0] == theirs[0] and mine[1] != theirs[1], (row["id"], other["id"])
    left = AnswerIndex()
    left.add(read_kind(tmp_path / "drop", CONVERSATIONS))
    assert not left.conflicts()

    kept = stages.run_select([folder], tmp_path / "keep", {"conflicting_answers": "keep"}, StageManifest(stage="select"), LocalEngine(workers=1))
    assert kept.rows_kept[CONVERSATIONS] == len(rows) and kept.stats["conflicting_answers"]["rows"] == in_conflict
    with pytest.raises(ValueError, match="conflicting_answers"):
        stages.run_select([folder], tmp_path / "bad", {"conflicting_answers": "maybe"}, StageManifest(stage="select"), LocalEngine(workers=1))


def test_report_lists_conflicting_answers_with_examples(tmp_path, qr_conversations):
    from quality.report import artifact_markdown, build_figures, render_html
    from transforms.select.conflicts import corpus_conflicts

    folder, rows = qr_conversations
    workdir = tmp_path / "build"
    params = {"conflicting_answers": "keep"}
    stages.run_select([folder], workdir / "stages" / "select", params, StageManifest(stage="select"), LocalEngine(workers=1))
    sample = {"weights": {"sft": 1}, "sft_epochs": 2, "seed": 1, "shard_rows": 5000}
    stages.run_sample([workdir / "stages" / "select"], workdir / "corpus", sample, StageManifest(stage="sample"), "test")
    found = corpus_conflicts(workdir / "corpus")
    selected = read_kind(workdir / "stages" / "select", CONVERSATIONS)
    index = AnswerIndex()
    index.add(selected)
    assert found["prompts"] == len(index.conflicts()) > 0, "two epochs of one row are no conflict; two answers are"
    assert found["rows"] == 2 * sum(index.rows[p] for p in index.conflicts())
    # Small batches: the two copies of a row lie in different batches, their key found once.
    assert corpus_conflicts(workdir / "corpus", batch_rows=7) == found
    figures = build_figures(workdir, found)
    page = render_html(figures)
    example = found["examples"][0]
    assert "Conflicting answers" in page and example["answers"][1]["answer"][:20] in page
    assert f"corpus: {found['prompts']} prompt(s)" in artifact_markdown(figures)
    assert "select:" in artifact_markdown(figures)


def test_dry_run_counts_the_conflicting_answers_the_run_drops(tmp_path, qr_conversations):
    """The dry run says what select would remove, conflicting answers included: its count is
    the run's rejections, with examples naming the rows."""
    from transforms.select.rules import describe_report

    folder, rows = qr_conversations
    report = stages.selection_dry_run([folder], {}, LocalEngine(workers=1))
    run = stages.run_select([folder], tmp_path / "drop", {}, StageManifest(stage="select"), LocalEngine(workers=1))
    part = report[CONVERSATIONS]
    assert part["would_remove"] == run.rows_rejected[CONVERSATIONS] > 0
    rule = part["rules"]["conflicting_answers"]
    assert rule["would_remove"] == run.stats["conflicting_answers"]["rows"] and rule["examples"]
    rejected = set(read_kind(tmp_path / "drop" / "rejected", CONVERSATIONS).column("id").to_pylist())
    assert {e["id"] for e in rule["examples"]} <= rejected
    assert f"{'conflicting_answers':<24} would remove {rule['would_remove']:>7}" in describe_report(report)
    kept = stages.selection_dry_run([folder], {"conflicting_answers": "keep"}, LocalEngine(workers=1))
    assert "conflicting_answers" not in kept[CONVERSATIONS]["rules"] and kept[CONVERSATIONS]["would_remove"] == 0


def test_select_finds_the_rows_in_conflict_as_keying_every_row_again_does(tmp_path, qr_conversations):
    """The select stage keys every conversation once and then reads only the rows in conflict:
    same rows rejected, same reasons and examples as select_batch and conflict_examples given
    the conflicts, also where another row (not in conflict) carries the id of one in conflict."""
    from transforms.select.conflicts import conflict_examples
    from transforms.select.rules import select_batch

    folder, rows = qr_conversations
    index = AnswerIndex()
    index.add(pa.Table.from_pylist([{"messages": r["messages"]} for r in rows]))
    keys = conversation_keys([r["messages"] for r in rows])
    conflicted = next(r for r, key in zip(rows, keys) if key is not None and key[0] in index.conflicts())
    other = tmp_path / "other"
    schema = pa.schema([f.with_nullable(True) for f in SCHEMAS[CONVERSATIONS]])
    twin = {**rows[0], "id": conflicted["id"], "messages": [{"role": "user", "content": "独一无二的问题？"}, {"role": "assistant", "content": "独一无二的回答。"}]}
    with DatasetWriter(other, StageManifest(stage="test")) as writer:
        writer.write(CONVERSATIONS, pa.Table.from_pylist([twin, conflicted], schema=schema))
        writer.commit()

    result = stages.run_select([folder, other], tmp_path / "out", {}, StageManifest(stage="select"), LocalEngine(workers=1, batch_rows=500))
    everything = pa.concat_tables([read_kind(folder, CONVERSATIONS), read_kind(other, CONVERSATIONS)])
    index = AnswerIndex()
    index.add(everything)
    conflicts = index.conflicts()
    kept, rejected = select_batch(everything, CONVERSATIONS, {}, conflicts)
    assert read_kind(tmp_path / "out", CONVERSATIONS).column("id").to_pylist() == kept.column("id").to_pylist()
    out_rejected = read_kind(tmp_path / "out" / "rejected", CONVERSATIONS)
    assert out_rejected.column("reason").to_pylist() == rejected.column("reason").to_pylist()
    assert out_rejected.column("id").to_pylist() == rejected.column("id").to_pylist()
    assert twin["id"] in kept.column("id").to_pylist() and twin["id"] in rejected.column("id").to_pylist()
    tables = [everything.slice(i, 500) for i in range(0, everything.num_rows, 500)]
    assert result.stats["conflicting_answers"]["examples"] == conflict_examples(tables, conflicts)
