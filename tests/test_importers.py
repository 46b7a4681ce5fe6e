"""Importers on the real shared files and on the package's own sample."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from schemas.records import CONVERSATIONS, DOCUMENTS, conform, conversation_text, loads_meta, rejected_schema
from transforms.ingest.importers import FORMATS, SourceError, import_file, list_files, load_benchmark
from transforms.ingest.importers.encoding import Decoded, decode_bytes
from transforms.ingest.importers.instructions import OPENING_PROMPT

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SAMPLE = REPO / "flows" / "sample"
BOOKS = SHARED / "corpus" / "ancient-books"
PHARMACOPOEIA = SHARED / "corpus" / "pharmacopoeia"
INSTRUCTIONS = SHARED / "instructions"
BENCHMARKS = SHARED / "benchmarks"

# Tests of the real files: the `shared_data` fixture (conftest) is the one place that finds them.
needs_shared = pytest.mark.usefixtures("shared_data")


def imported(path: Path, fmt: str, source: str = "test", category: str = "books", options=None):
    return list(import_file(path, fmt, source, category, options))


def kept(records):
    return [r for r in records if r.reason is None]


def assert_alternating(messages):
    body = messages[1:] if messages[0]["role"] == "system" else messages
    assert [m["role"] for m in body] == ["user", "assistant"] * (len(body) // 2)
    assert all(m["content"] and m["content"] == m["content"].strip() for m in messages)


def assert_conforms(records):
    """Kept rows fit their kind's schema; rejected rows fit it plus `reason`."""
    for kind in (DOCUMENTS, CONVERSATIONS):
        rows = [r.row for r in records if r.kind == kind and r.reason is None]
        if rows:
            conform(pa.Table.from_pylist(rows), kind)
        rejected = [{**r.row, "reason": r.reason} for r in records if r.kind == kind and r.reason]
        if rejected:
            table = conform(pa.Table.from_pylist(rejected), kind)
            assert table.schema.names == rejected_schema(kind).names


# --- books -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def all_books(shared_data):
    return {path.name: imported(path, "book", "ancient-books") for path in list_files(BOOKS, "book")}


@needs_shared
def test_every_book_imports(all_books):
    # 262 files: 261 books and the folder's README.md, which is not a book
    assert sorted(p.name for p in BOOKS.iterdir() if p.suffix != ".txt") == ["README.md"]
    assert len(all_books) == len(list(BOOKS.glob("*.txt"))) == 261
    reasons = Counter()
    for name, records in all_books.items():
        assert records, name
        for record in records:
            meta = loads_meta(record.row["meta"])
            assert {"book", "author", "dynasty", "year", "chapter", "chapter_index", "volume", "file",
                    "encoding", "replaced_bytes"} <= meta.keys()
            if record.reason is None:
                text = record.row["text"]
                assert text and text == text.strip()
                assert "\\x" not in text and "\r" not in text and ".bmp" not in text
                assert not any(line != line.rstrip() for line in text.split("\n"))
            else:
                reasons[record.reason.split(":")[0]] += 1
    assert set(reasons) <= {"empty_chapter", "repeated_record"}
    assert sum(len(kept(r)) for r in all_books.values()) > 50_000


@needs_shared
def test_book_header_chapters_and_volumes(all_books):
    records = all_books["000-神农本草经.txt"]
    first = loads_meta(records[0].row["meta"])
    assert (first["book"], first["author"], first["dynasty"], first["year"]) == (
        "神农本草经", "孙星衍", "清", "公元1644-1911年")
    assert first["encoding"] == "gb18030" and first["replaced_bytes"] == 0
    assert [r.row["title"] for r in records[:3]] == ["邵序", "张序", "孙序"]
    dansha = next(r for r in records if r.row["title"] == "丹沙")
    assert loads_meta(dansha.row["meta"])["volume"] == "卷一/上经"
    # the chapter's title opens its text, on a line of its own; the 内容： prefix is gone
    assert dansha.row["text"].startswith("丹沙\n味甘，微寒。")
    assert [loads_meta(r.row["meta"])["chapter_index"] for r in records] == list(range(len(records)))


@needs_shared
def test_wrapped_lines_are_rejoined(all_books):
    preface = all_books["000-神农本草经.txt"][0].row["text"]
    # In the file: "...三世者，一 \r\n曰《黄帝针灸》，二曰《神农本草》..."
    line = next(line for line in preface.split("\n") if "三世者" in line)
    assert "孔冲远引旧说云∶三世者，一曰《黄帝针灸》，二曰《神农本草》，三曰《素女脉诀》。" in line
    # ...while a paragraph that ends a sentence keeps its break.
    assert "\n古者协阴阳之和" in preface


@needs_shared
def test_emphasis_markers_become_lines(all_books):
    preface = all_books["000-神农本草经.txt"][0].row["text"]
    assert preface.endswith("\n余姚邵晋涵序")


@needs_shared
def test_corrupt_bytes_are_replaced_and_counted(all_books):
    records = all_books["203-婴童类萃.txt"]
    meta = loads_meta(records[0].row["meta"])
    assert meta["encoding"] == "gb18030" and meta["replaced_bytes"] > 0
    assert any("\ufffd" in r.row["text"] for r in records)
    assert meta["book"] == "婴童类萃" and meta["author"] is None  # blank header values


@needs_shared
def test_picture_only_chapter_is_rejected_and_repeats_are_named(all_books):
    records = all_books["008-汤液本草.txt"]
    picture = next(r for r in records if r.row["title"] == "气味浓薄寒热阴阳升降图")
    assert picture.reason == "empty_chapter" and picture.row["text"] == ""
    repeated = [r for r in all_books["038-本草分经.txt"] if r.reason and r.reason.startswith("repeated_record:")]
    assert repeated
    first_ids = {r.row["id"] for r in all_books["038-本草分经.txt"] if r.reason is None}
    assert all(r.reason.split(":", 1)[1].split(" (first as record ")[0] in first_ids for r in repeated)


@needs_shared
def test_file_without_header_is_one_document(all_books):
    (record,) = all_books["100-桂林古本伤寒杂病论.txt"]
    meta = loads_meta(record.row["meta"])
    assert record.row["title"] == meta["book"] == "桂林古本伤寒杂病论"
    assert meta["chapter"] is None and len(record.row["text"]) > 50_000


@needs_shared
def test_book_rows_fit_the_schema(all_books):
    assert_conforms(all_books["000-神农本草经.txt"] + all_books["008-汤液本草.txt"])


def test_common_character_table_is_the_rule_for_each_code_point():
    import numpy as np

    from transforms.ingest.importers.encoding import _common_table, _is_common

    table = _common_table()
    assert len(table) == 0x10001 and not table[-1]
    assert (table[:-1] == np.array([_is_common(chr(cp)) for cp in range(0x10000)])).all()


@needs_shared
def test_least_utf8_score_never_exceeds_the_score():
    import os

    from transforms.ingest.importers.compression import read_bytes
    from transforms.ingest.importers.encoding import SAMPLE_BYTES, _least_utf8_score, _score

    samples = [read_bytes(path)[:SAMPLE_BYTES] for path in sorted(BOOKS.glob("*.txt"))[:40]]
    samples += [os.urandom(size) for size in (1, 2, 3, 50, 4000)]
    samples += [text.encode(encoding) * 20 for text, encoding in (
        ("Ça va très bien", "latin-1"), ("日本語のテキスト", "shift_jis"), ("繁體中文", "big5"), ("中文", "utf-8"))]
    samples += [b"\x80\xbf" + "中文".encode() + b"\xc0\xff", b"\xe4\xb8", b""]
    for sample in samples:
        assert _least_utf8_score(sample) <= _score(sample, "utf-8")
    # The GB18030 books: the bound alone rules UTF-8 out, so their UTF-8 reading is skipped.
    assert all(_least_utf8_score(sample) > _score(sample, "gb18030") for sample in samples[:40])


def test_big5_and_utf8_are_detected(tmp_path):
    text = "<篇名>傷寒論\r\n書名：傷寒論\r\n作者：張機\r\n朝代：漢\r\n年份：\r\n<目錄>卷一\r\r\n\n<篇名>辨脈法\r\n\r\n內容：問曰：脈有陰陽，何謂也？答曰：凡脈大、浮、數、動、滑，此名陽也；脈沉、澀、弱、弦、微，此名陰也。 \r\n"
    big5 = tmp_path / "big5.txt"
    big5.write_bytes(text.encode("big5"))
    utf8 = tmp_path / "utf8.txt"
    utf8.write_bytes(text.encode("utf-8"))
    for path, encoding in ((big5, "big5"), (utf8, "utf-8")):
        (record,) = imported(path, "book", options={"encoding": "auto"})
        meta = loads_meta(record.row["meta"])
        assert meta["encoding"] == encoding and meta["replaced_bytes"] == 0
        assert meta["book"] == "傷寒論" and record.row["title"] == "辨脈法"
        assert record.row["text"].startswith("辨脈法\n問曰：脈有陰陽")
    corrupt_utf8 = "甘草，味甘，平。".encode("utf-8") * 20 + b"\xff" + "归心经。".encode("utf-8")
    assert decode_bytes(corrupt_utf8).encoding == "utf-8" and decode_bytes(corrupt_utf8).replaced_bytes == 1
    # A lead byte followed by a digit, as in 婴童类萃; then a run of two invalid bytes.
    assert decode_bytes("测试".encode("gb18030") + b"\xb52" + "测".encode("gb18030")) == Decoded(
        "测试\ufffd2测", "gb18030", 1, "ours")
    assert decode_bytes("测试".encode("gb18030") + b"\xff\xff" + "测".encode("gb18030")) == Decoded(
        "测试\ufffd测", "gb18030", 2, "ours")


def test_a_named_encoding_is_used_as_given(tmp_path):
    path = tmp_path / "named.txt"
    path.write_bytes("甘草，味甘。".encode("gb18030"))
    (record,) = imported(path, "text", options={"encoding": "gbk"})
    assert record.row["text"] == "甘草，味甘。" and loads_meta(record.row["meta"])["encoding"] == "gbk"
    with pytest.raises(SourceError, match="named.txt"):
        imported(path, "text", options={"encoding": "no-such-codec"})


def test_plain_text_file(tmp_path):
    path = tmp_path / "note.txt"
    path.write_text("第一段文字，折行 \n继续。\n\n第二段。\n", encoding="utf-8")
    (record,) = imported(path, "text", options={"title": "笔记"})
    assert record.row["title"] == "笔记" and record.row["text"] == "第一段文字，折行继续。\n第二段。"


# --- monographs and terms ----------------------------------------------------------------------

@needs_shared
def test_pharmacopoeia_monographs():
    records = imported(PHARMACOPOEIA / "2022年中药药典.txt", "monograph", "pharmacopoeia", "encyclopedia")
    entries = kept(records)
    # 615 entries (锁阳, 蓍草, 蜂蜜 follow the one before without a blank line); five printed twice
    assert len(records) == 615 and len(entries) == 610
    assert all(r.reason.startswith("repeated_record:") for r in records if r.reason)
    by_name = {r.row["title"]: loads_meta(r.row["meta"]) for r in entries}
    huangqi = by_name["黄芪"]
    assert huangqi["kind"] == "monograph" and huangqi["pinyin"] == "Huangqi"
    assert huangqi["description"].startswith("本品为豆科植物")
    assert huangqi["sections"]["性味与归经"] == "甘，微温。归肺、脾经。"
    assert huangqi["sections"]["功能与主治"].startswith("补气升阳，固表止汗")
    assert huangqi["sections"]["用法与用量"] == "9～30g。"
    assert by_name["丁香"]["sections"]["注意"] == "不宜与郁金同用。"
    # An entry printed without pinyin and Latin lines still starts where its name is.
    assert by_name["人工牛黄"]["pinyin"] is None
    assert by_name["人工牛黄"]["sections"]["功能与主治"].startswith("清热解毒，化痰定惊")
    assert sum("功能与主治" in meta["sections"] for meta in by_name.values()) >= 600
    assert_conforms(records)


@needs_shared
def test_terminology_standards():
    diseases = imported(PHARMACOPOEIA / "中医临床诊疗术语疾病.txt", "terms", "terms", "encyclopedia")
    syndromes = imported(PHARMACOPOEIA / "中医临床诊疗术语证候.txt", "terms", "terms", "encyclopedia")
    # 1308 terms, and the standard's front matter (title, scope) as one text
    assert len(kept(diseases)) == 1309 and len(kept(syndromes)) == 2050
    front = loads_meta(diseases[0].row["meta"])
    assert front["kind"] == "standard_front" and diseases[0].row["text"].startswith("中医临床诊疗术语\n本文件界定了")
    cold = next(loads_meta(r.row["meta"]) for r in diseases if r.row["title"] == "感冒")
    assert cold["code"] == "3.1.1" and cold["definition"].startswith("因时令外邪侵袭肺表所致")
    assert cold["chapter"] == "3外感病类术语"
    assert cold["note"].startswith("轻者称伤风")
    flu = next(loads_meta(r.row["meta"]) for r in diseases if r.row["title"] == "时行感冒")
    assert flu["synonyms"] == ["时邪感冒"]
    exterior = next(r for r in syndromes if r.row["title"] == "表证")
    assert "营卫不和、经气不利等" in exterior.row["text"]  # a definition wrapped over two lines


# --- instructions ------------------------------------------------------------------------------

@needs_shared
def test_instruction_files_import_with_expected_counts():
    expected = {
        "cmtmedqa_test.json": 1144,
        "huatuo26m_test.json": 6000,
        "tcm_qr.json": 1000,  # JSON lines despite the name
        "mtcmb_tcm_chgd.jsonl": 100,
    }
    files = {path.name: path for path in list_files(INSTRUCTIONS, "instructions")}
    assert set(files) == set(expected)
    for name, count in expected.items():
        records = imported(files[name], "instructions", name, "sft")
        assert len(records) == count, name
        assert not [r.reason for r in records if r.reason and not r.reason.startswith("repeated_record:")], name
        for record in kept(records):
            assert_alternating(record.row["messages"])
            assert record.row["origin_id"]
        assert_conforms(records)


@needs_shared
def test_history_comes_before_the_final_turn():
    records = kept(imported(INSTRUCTIONS / "cmtmedqa_test.json", "instructions", "cmtmedqa", "sft"))
    raw = json.loads((INSTRUCTIONS / "cmtmedqa_test.json").read_text(encoding="utf-8"))
    first = records[0]
    assert first.row["origin_id"] == raw[0]["id"]
    messages = first.row["messages"]
    assert len(messages) == 2 * len(raw[0]["history"]) + 2
    assert messages[0]["content"] == raw[0]["history"][0][0].strip()
    assert messages[-2]["content"] == raw[0]["instruction"].strip()
    assert messages[-1]["content"] == raw[0]["output"].strip()
    meta = loads_meta(first.row["meta"])
    assert meta["cate1"] == raw[0]["cate1"] and meta["index"] == 0
    safety = [r for r in records if "instruct" in raw[loads_meta(r.row["meta"])["index"]]]
    assert len(safety) >= 139 and all(len(r.row["messages"]) == 2 for r in safety)


@needs_shared
def test_list_valued_records_pair_up_and_get_a_position_id():
    records = imported(INSTRUCTIONS / "huatuo26m_test.json", "instructions", "huatuo", "sft")
    assert records[0].row["origin_id"] == "huatuo26m_test.json:0"  # its own id is empty
    assert all(len(r.row["messages"]) == 2 for r in records)


@needs_shared
def test_whole_dialogue_text_is_split_into_turns():
    records = imported(INSTRUCTIONS / "mtcmb_tcm_chgd.jsonl", "instructions", "mtcmb", "sft")
    assert len(kept(records)) == 100
    first = records[0]
    meta = loads_meta(first.row["meta"])
    messages = first.row["messages"]
    # The doctor's opening line answers a greeting, the one turn the importer writes...
    assert messages[0] == {"role": "user", "content": OPENING_PROMPT}
    assert messages[1]["role"] == "assistant" and messages[1]["content"].startswith("姜先生哪里不舒服")
    assert messages[2]["content"].startswith("大夫，我这手脚关节又沉又疼")
    assert "医生：" not in conversation_text(messages)
    # ...and the expert's structured conclusion is the last answer, asked for by its headings.
    assert messages[-2]["content"] == ("请根据以上问诊，给出中医疾病诊断、中医证候诊断、中医辨病辨证依据（含病因病机分析）、"
                                       "中医治法、方剂名称、药物组成。")
    assert messages[-1]["content"].startswith("中医疾病诊断：痹证\n中医证候诊断：风寒湿痹-着痹")
    assert messages[-1]["content"].endswith("药物组成：薏苡仁、苍术、羌活、独活、防风、制川乌、麻黄、桂枝、当归、川芎、生姜、甘草")
    assert "answer" not in meta and "opening" not in meta and meta["added_turns"][0] == OPENING_PROMPT
    assert first.untrained == ("source",)
    assert first.row["origin_id"] == "1"
    assert all(loads_meta(r.row["meta"]).get("added_turns") for r in records)
    # A patient speaking through a relative: 患者（家长）：
    child = records[88]
    assert child.reason is None and child.row["messages"][2]["content"].startswith("哎哟大夫")


def test_malformed_records_are_rejected_and_the_rest_import(tmp_path):
    lines = [
        json.dumps({"instruction": "问一", "output": "答一"}, ensure_ascii=False),
        '{"instruction": "断了的行", "output": ',
        json.dumps(["不是对象"], ensure_ascii=False),
        json.dumps({"instruction": "没有回答", "output": "   "}, ensure_ascii=False),
        json.dumps({"title": "不认识的形状"}, ensure_ascii=False),
        json.dumps({"instruction": "数字回答", "output": 42}, ensure_ascii=False),
        json.dumps({"instruction": ["一", "二"], "output": ["一"]}, ensure_ascii=False),
        json.dumps({"conversations": [{"from": "gpt", "value": "先答"}, {"from": "human", "value": "后问"}]},
                   ensure_ascii=False),
        json.dumps({"instruction": "问一", "output": "答一"}, ensure_ascii=False),
        json.dumps({"messages": [{"role": "user", "content": "问二"}, {"role": "assistant", "content": "答二"}]},
                   ensure_ascii=False),
    ]
    path = tmp_path / "mixed.json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = imported(path, "instructions", "mixed", "sft")
    assert [r.reason for r in records] == [
        None, "malformed:json", "malformed:not_object", "malformed:no_output", "malformed:no_shape",
        "malformed:not_string", "malformed:unpaired_turns", "malformed:no_output",
        f"repeated_record:{records[0].row['id']} (first as record 1)", None,
    ]
    broken = records[1]
    assert broken.row["messages"] == [] and loads_meta(broken.row["meta"])["raw"] == lines[1]
    assert loads_meta(records[3].row["meta"])["raw"]["instruction"] == "没有回答"
    assert len({r.row["id"] for r in records if r.reason and r.reason.startswith("malformed")}) == 7
    assert_conforms(records)


def test_unreadable_files_raise_source_error(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "a", "output": "b"},', encoding="utf-8")
    with pytest.raises(SourceError, match="broken.json"):
        imported(broken, "instructions")
    with pytest.raises(SourceError, match="missing.txt"):
        imported(tmp_path / "missing.txt", "book")
    with pytest.raises(ValueError, match="unknown import format"):
        imported(broken, "pdf")


# --- benchmarks --------------------------------------------------------------------------------

@needs_shared
def test_benchmarks_load_with_questions():
    expected = {
        "cmmlu_traditional_chinese_medicine": 185,
        "mtcmb_tcm_ed_a": 1200,
        "tcmchat_choice_formula_500": 500,
        "tcmchat_choice_herb_500": 500,
        "tcmchat_medical_case": 500,
        "tcmchat_rc": 500,
    }
    loaded = {path.stem: load_benchmark(path) for path in list_files(BENCHMARKS, "benchmark")}
    assert {name: len(items) for name, items in loaded.items()} == expected
    for name, items in loaded.items():
        assert all(item["question"] and item["answer"] and item["benchmark"] == name for item in items)
        assert len({item["item"] for item in items}) == len(items), name
    cmmlu = loaded["cmmlu_traditional_chinese_medicine"][0]
    assert cmmlu["question"] == "“泻南补北”法适用于"
    # the answer as text, the letter beside it
    assert (cmmlu["answer"], cmmlu["answer_label"]) == ("肾阴虚而心火旺", "D")
    for name in ("cmmlu_traditional_chinese_medicine", "mtcmb_tcm_ed_a", "tcmchat_choice_herb_500"):
        for item in loaded[name]:
            assert len(item["answer_label"]) == 1, item
            assert f"{item['answer_label']}. {item['answer']}" in item["options"].split("\n")
    assert cmmlu["options"].startswith("A. 肾阴虚而肝阳亢\nB. ")
    exam = loaded["mtcmb_tcm_ed_a"][0]
    assert exam["item"] == "0" and exam["options"].count("\n") == 4 and exam["answer"] == "肺"
    assert all(item["answer_label"] == "" for item in loaded["tcmchat_medical_case"])
    reading = loaded["tcmchat_rc"][0]
    assert "<text>" not in reading["question"] and "<question>" not in reading["question"]
    # The shared boilerplate instruction is not part of a medical case's question.
    assert not loaded["tcmchat_medical_case"][0]["question"].startswith("根据病史")


# --- the package's own sample -------------------------------------------------------------------

def test_sample_book():
    (path,) = list_files(SAMPLE / "books", "book")
    assert path.read_bytes().startswith("<篇名>".encode("gb18030")) and b"\r\n" in path.read_bytes()
    records = imported(path, "book", "sample-books")
    meta = loads_meta(records[0].row["meta"])
    assert meta["encoding"] == "gb18030" and meta["book"] == "杏林撮要" and meta["author"] == "林鹤年"
    reasons = Counter((r.reason or "kept").split(":")[0] for r in records)
    # 异功散 and 六君子汤 share a body (a cross-reference), but each entry names its own subject
    assert reasons == {"kept": len(records) - 1, "empty_chapter": 1}
    by_title = {r.row["title"]: r.row["text"] for r in records}
    assert by_title["异功散"] == "异功散\n（方见四君子汤条下。）"
    sijunzi = next(r for r in records if r.row["title"] == "四君子汤")
    assert loads_meta(sijunzi.row["meta"])["volume"] == "卷下/方论"
    # a body that opens with its title does not get it twice
    assert sijunzi.row["text"].startswith("四君子汤 治脾胃气虚。\n人参 白术 茯苓（各三钱） 甘草（炙，二钱）\n")
    assert_conforms(records)


def test_sample_monographs():
    (path,) = list_files(SAMPLE / "monographs", "monograph")
    records = imported(path, "monograph", "sample-monographs", "encyclopedia")
    by_name = {r.row["title"]: loads_meta(r.row["meta"]) for r in kept(records)}
    assert set(by_name) == {"黄芪", "当归", "甘草", "人参", "茯苓", "白术"}
    for meta in by_name.values():
        assert {"性状", "鉴别", "性味与归经", "功能与主治", "用法与用量", "贮藏"} <= meta["sections"].keys()
    assert by_name["人参"]["latin"] == "GINSENG RADIX ET RHIZOMA"
    assert by_name["甘草"]["sections"]["注意"].startswith("不宜与海藻")
    # The processed slices' own description stays in the text, not in the crude drug's section.
    assert "炙甘草" not in by_name["甘草"]["sections"]["性状"]
    assert by_name["甘草"]["sections"]["炮制"].startswith("甘草片")


def test_sample_dialogues():
    (path,) = list_files(SAMPLE / "dialogues", "instructions")
    records = imported(path, "instructions", "sample-dialogues", "sft")
    assert [r.reason for r in records].count(None) == len(records) - 1
    assert [r.reason for r in records if r.reason] == ["malformed:no_output"]
    for record in kept(records):
        assert_alternating(record.row["messages"])
    roles = {tuple(m["role"] for m in r.row["messages"]) for r in kept(records)}
    assert ("system", "user", "assistant") in roles
    assert any(len(r.row["messages"]) == 6 for r in kept(records))
    assert_conforms(records)


def test_sample_benchmark_question_is_inside_the_sample_book():
    (path,) = list_files(SAMPLE / "benchmarks", "benchmark")
    items = load_benchmark(path)
    assert len(items) == 5 and all(item["options"] and item["answer"] for item in items)
    (book,) = list_files(SAMPLE / "books", "book")
    texts = [r.row["text"] for r in kept(imported(book, "book"))]
    contaminated = [item for item in items if any(item["question"] in text for text in texts)]
    assert [item["item"] for item in contaminated] == ["q1"]
    (document, *_) = imported(path, "benchmark", "sample-benchmark", "sft")
    assert document.row["text"].startswith(items[0]["question"] + "\nA. 四君子汤")


def test_multiple_choice_answers_become_option_text(tmp_path):
    path = tmp_path / "choice.jsonl"
    rows = [
        {"id": "a", "question": "补气的药是", "options": ["黄芪", "黄连", "大黄"], "answer": "A"},
        {"id": "b", "question": "哪些药能补气", "options": {"A": "黄芪", "B": "黄连", "C": "人参"}, "answer": "A、C"},
        {"id": "c", "question": "回答不是字母", "options": {"A": "甲", "B": "乙"}, "answer": "见解析"},
    ]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    items = {item["item"]: item for item in load_benchmark(path)}
    assert (items["a"]["answer"], items["a"]["answer_label"]) == ("黄芪", "A")
    assert (items["b"]["answer"], items["b"]["answer_label"]) == ("黄芪\n人参", "AC")
    assert (items["c"]["answer"], items["c"]["answer_label"]) == ("见解析", "")


def test_registry_names():
    assert set(FORMATS) == {"book", "text", "monograph", "terms", "instructions", "benchmark"}
