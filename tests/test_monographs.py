"""A monograph is the herb it names, whole, and its template answers are cleaned text whose
numbers are right or absent: on the real pharmacopoeia, and through build-corpus on the shared
cases monograph-identity and template-answers-cleaned."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import copy_shared_case
from schemas import loads_meta
from schemas.dataset import read_manifest
from transforms.clean.steps import clean_documents
from transforms.convert.conversion import MONOGRAPH_QUESTIONS, monograph_conversion
from transforms.ingest.importers import import_file
from transforms.ingest.importers.monographs import check_identity, entry_text, parse_entry, read_entries, read_entry_text
from transforms.convert.numbers import lost_numbers, repair_digits

REPO = Path(__file__).resolve().parents[1]
PHARMACOPOEIA = "corpus/pharmacopoeia/2022年中药药典.txt"


@pytest.fixture(scope="module")
def lines(shared_data) -> list[str]:
    return [line.strip() for line in (shared_data / PHARMACOPOEIA).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def records(shared_data):
    return list(import_file(shared_data / PHARMACOPOEIA, "monograph", "pharmacopoeia", "encyclopedia"))


def test_every_heading_is_checked_against_its_own_pinyin_and_latin(lines):
    entries = list(read_entries(lines))
    statuses = Counter(entry["identity"]["status"] for _, entry in entries)
    assert statuses == {"confirmed": 601, "pinyin_slip": 9, "renamed": 3, "latin_confirmed": 1, "unchecked": 1}
    renamed = {(e["identity"]["printed"], e["name"], e["pinyin"]) for _, e in entries if e["identity"]["status"] == "renamed"}
    assert renamed == {("五倍子", "五味子", "Wuweizi"), ("薏苡仁", "薄荷", "Bohe"), ("瓜萎", "瓜蒌", "Gualou")}
    slips = {e["name"]: e["pinyin"] for _, e in entries if e["identity"]["status"] == "pinyin_slip"}
    assert slips["川木通"] == "Ghuanmutong" and slips["蜂蜜"] == "Fengm" and slips["海龙"] == "HaiIong"


def test_each_herb_is_trained_under_its_own_name_once(records):
    kept = [r for r in records if not r.reason]
    by_title = Counter(r.row["title"] for r in kept)
    for name in ("五味子", "五倍子", "薄荷", "薏苡仁"):
        assert by_title[name] == 1, name
    pinyin = {r.row["title"]: loads_meta(r.row["meta"])["pinyin"] for r in kept}
    assert (pinyin["五味子"], pinyin["五倍子"], pinyin["薄荷"], pinyin["薏苡仁"]) == ("Wuweizi", "Wubeizi", "Bohe", "Yiyiren")
    wuweizi = next(r for r in kept if r.row["title"] == "五味子")
    assert wuweizi.row["text"].startswith("五味子\n拼音名：Wuweizi")
    assert loads_meta(wuweizi.row["meta"])["printed_name"] == "五倍子" and wuweizi.untrained == ("printed_name",)


def test_a_heading_its_own_lines_contradict_is_rejected(lines):
    """Real lines put together: the 五味子 entry's heading, pinyin and Latin lines over 薄荷's
    description. No name in the entry reads Wuweizi and the Latin disagrees: rejected."""
    mint = lines.index("Bohe") - 1
    entry = parse_entry(["五倍子", "Wuweizi", "SCHISANDRAECHINENSISFRUCTUS", *lines[mint + 3: mint + 6]])
    identity = check_identity(entry)
    assert identity["status"] == "mismatch"
    assert identity["reason"].startswith("name_mismatch:name=五倍子,pinyin=Wuweizi")


def test_an_entry_starts_at_its_name_pinyin_and_latin_lines_blank_line_or_not(records):
    by_title = {r.row["title"]: loads_meta(r.row["meta"]) for r in records if not r.reason}
    for name, pinyin in (("蓍草", "Shicao"), ("锁阳", "Suoyang"), ("蜂蜜", "Fengm")):
        assert by_title[name]["pinyin"] == pinyin, name
    # They no longer run on inside the entry before them.
    assert by_title["滑石粉"]["sections"]["贮藏"] == "密闭。"
    assert "蜂蜜" not in by_title["蜂蜡"]["sections"].get("贮藏", "")


def test_every_section_becomes_a_question_a_text_line_or_a_rejected_answer(records):
    """Over the whole pharmacopoeia, cleaned as the clean stage cleans: nothing disappears, and
    no number the scan lost is stated, as an answer or in the text row."""
    kept, _ = clean_documents(pa.Table.from_pylist([r.row for r in records if not r.reason]), {})
    outcome = Counter()
    dropped = {}
    for row in kept.to_pylist():
        result = monograph_conversion(loads_meta(row["meta"]), row["text"])
        asked = {s for s, _, _ in result["pairs"]}
        rejected = {s for s, _, _, _ in result["rejected"]}
        left_out = set(result["text_rejected"])
        entry = read_entry_text(row["text"])
        assert set(entry["sections"]) <= asked | rejected | set(result["to_text"]) | left_out, row["title"]
        for section in set(entry["sections"]) & set(result["to_text"]):
            opening = repair_digits(entry["sections"][section].splitlines()[0])[0][:20]
            assert result["text"] and opening in result["text"], (row["title"], section)
        assert not lost_numbers(result["text"] or ""), row["title"]
        assert all(reason.startswith("lost_number:") for reason in result["text_rejected"].values())
        dropped[row["title"]] = result["text_rejected"]
        outcome.update(questions=len(asked), rejected=len(rejected), text=len(result["to_text"]), left_out=len(left_out))
        for _, _, answer in result["pairs"]:
            assert repair_digits(answer)[1] == 0 and not lost_numbers(answer), answer
    assert outcome["questions"] > 3800 and outcome["rejected"] > 400 and outcome["text"] > 300 and outcome["left_out"] > 1500
    # 法半夏: 【检查】水分不得过%（附录IXH第一法）, 【浸出物】……不得少于%: left out, named with their reason.
    assert dropped["法半夏"]["检查"].startswith("lost_number:") and "浸出物" in dropped["法半夏"]


@pytest.mark.parametrize("text, fixed, repaired", [
    ("5～lOg。", "5～10g。", 1),
    ("加甲醇10rnl，超声处理", "加甲醇10ml，超声处理", 1), ("直径60～112pm，长至230", "直径60～112μm，长至230", 1),
    ("直径5～39um，脐点", "直径5～39μm，脐点", 1), ("直径3～451um，", "直径3～451um，", 0), ("约1um", "约1μm", 1), ("宽1～2crn。", "宽1～2cm。", 1),
    ("置紫外光灯（365rnm)下检视", "置紫外光灯（365rnm)下检视", 0),
    ("取本品粉末lg，加三氯甲烷", "取本品粉末1g，加三氯甲烷", 1),
    ("每Iml含Img的溶液", "每1ml含1mg的溶液", 2),
    ("总灰分不得过6.O%", "总灰分不得过6.0%", 1),
    ("9～log。", "9～10g。", 1),
    ("每lOOkg三棱，用醋15kg。", "每100kg三棱，用醋15kg。", 1),
    # Letters in words and formulas are not digits.
    ("l-BORNEOLUM", "l-BORNEOLUM", 0),
    ("主含含水硫酸钙(CaS04·2H2O)", "主含含水硫酸钙(CaS04·2H2O)", 0),
    ("Buch.-Ham.的干燥块茎", "Buch.-Ham.的干燥块茎", 0),
])
def test_ocr_digit_slips_are_repaired_only_in_numeric_context(text, fixed, repaired):
    assert repair_digits(text) == (fixed, repaired)


@pytest.mark.parametrize("text, lost", [
    ("～3g，先煎、久煎。", True), ("花冠圆球形，直径～，花瓣4", True), ("一次～，多作配方用。", True),
    ("研粉吞服1～。", True), ("水分不得过%（附录", True), ("（一日量不超过）", True),
    ("3～10g；研粉冲服，一次1～2g。", False), ("外用20%～30%酊剂涂患处。", False), ("(60～90℃)", False),
    # Real lines of the pharmacopoeia whose number the scan lost, and their whole neighbours.
    ("以石油醚（30～60°C)-乙酸乙酯-丙酮-甲酸（30：6：5：为展开剂", True), ("三乙胺（3：：1：：：1)为", True),
    ("加甲醇制成每1ml含的溶液，作为对照品溶液", True), ("取本品粉末（过三号筛）约，精密称定", True),
    ("天南星，用生姜、白矾各。", True),
    ("呈披针形或卵状披针形，长1_5～6cm，", True), ("直径3～451um，壁厚", True), ("直径5～39μm，壁厚", False), ("水分同药材，不得过16.%。", True), ("总灰分不得过.5.0%（附录", True),
    ("浓度为1.mg的溶液", True), ("含盐酸小檗碱（C20H17NO4.HCl）不得少于0.5%", False), ("1.Thin layer", False),
    ("甲苯-乙酸乙酯-甲酸（5：4：1）为展开剂", False), ("制成每1ml含0.1mg的溶液", False),
    ("取本品粉末（过三号筛）约0.5g，精密称定", False), ("互相制约，各有所长。", False), ("白矾各12.5kg。", False),
])
def test_lost_numbers_are_found(text, lost):
    assert bool(lost_numbers(text)) is lost


# -- the shared cases, through the command users run -----------------------------------------


def build_case(name: str, workdir: Path) -> dict:
    from flows.cli import main

    case = copy_shared_case(name, workdir.parent)
    assert main(["run", "build-corpus", "--config", str(case / "build.toml"), "--workdir", str(workdir)]) == 0
    rows = pq.read_table(workdir / "corpus").to_pylist()
    chats = [r for r in rows if r["format"] == "chat"]
    return {
        "qa": [(r["messages"][-2]["content"], r["messages"][-1]["content"]) for r in chats],
        "texts": [r["text"] for r in rows if r["format"] == "text"],
        "convert": read_manifest(workdir / "stages" / "convert"),
        "ingest": read_manifest(workdir / "stages" / "ingest"),
        "rejected": pq.read_table(workdir / "stages" / "convert" / "rejected" / "conversations").to_pylist()
        if (workdir / "stages" / "convert" / "rejected" / "conversations").exists() else [],
    }


@pytest.mark.slow
def test_case_monograph_identity(tmp_path, prefect_harness):
    built = build_case("monograph-identity", tmp_path / "build")
    assert built["qa"], "the entry is trained"
    assert not any("五倍子" in q or "五倍子" in a for q, a in built["qa"])
    assert all(q.startswith("五味子") or "五味子" in q for q, _ in built["qa"])
    assert ("五味子的性味与归经是什么？", "五味子酸、甘，温。归肺、心、肾经。") in built["qa"]
    assert built["ingest"].stats["import_counts"]["pharmacopoeia"] == {"identity:renamed": 1}
    assert built["ingest"].stats["untrained_meta"]["pharmacopoeia"] == {"printed_name": 1}


@pytest.mark.slow
def test_case_template_answers_cleaned(tmp_path, prefect_harness):
    built = build_case("template-answers-cleaned", tmp_path / "build")
    answers = dict(built["qa"])
    # Normalised as document text is.
    source = answers["丁香是什么药材？来源于哪种植物或动物？"]
    assert "Thunb." in source and "Thunb．" not in source
    # OCR digits repaired; lost numbers rejected, never trained.
    assert answers["三棱的用法与常用剂量是怎样的？"] == "5～10g。"
    assert not any(lost_numbers(a) or repair_digits(a)[1] for a in answers.values())
    assert "丁香药材的性状有什么特点？" not in answers and "天山雪莲药材的性状有什么特点？" not in answers
    reasons = Counter(r["reason"].split(":")[0] for r in built["rejected"])
    assert reasons["lost_number"] == 2
    # 天山雪莲's 【性味】 and 【禁忌】 are questions now; the lab sections stay as text, but for
    # those whose numbers the scan lost (【检查】水分不得过%, 含……不得少于%): left out, counted.
    assert answers["天山雪莲的性味是什么？"] == "天山雪莲维吾尔医：性质，二级湿热。中医：微苦，温。"
    assert answers["使用天山雪莲有哪些禁忌？"] == "孕妇忌用。"
    snow_lotus = next(t for t in built["texts"] if t.startswith("天山雪莲\n"))
    assert "【鉴别】" in snow_lotus and "【含量测定】" not in snow_lotus and "%（附录" not in snow_lotus
    sections = built["convert"].stats["template_sections"]
    assert sections["text_rejected"]["含量测定"] >= 1 and sections["text_rejected"]["检查"] >= 1
    assert sections["questions"]["禁忌"] == 1 and sections["questions"]["性味"] == 1
    assert sections["rejected"] == {"性状": 2} and sections["text"]["鉴别"] == 3
    assert set(MONOGRAPH_QUESTIONS) >= {"性味", "禁忌", "制法"}


def test_template_answers_follow_the_clean_policy_of_documents(shared_data):
    """The 丁香 entry as printed, in traditional characters and with a telephone number planted
    in its storage line: its answers come out simplified and redacted, as its document text does."""
    import opencc

    lines = [line.strip() for line in (shared_data / PHARMACOPOEIA).read_text(encoding="utf-8").splitlines()]
    start = lines.index("丁香")
    end = next(i for i in range(start + 3, len(lines)) if lines[i].startswith("【贮藏】")) + 1
    printed = [opencc.OpenCC("s2t").convert(line) for line in lines[start:end]]
    printed[-1] = "【貯藏】置陰涼乾燥處。諮詢電話13912345678"
    entry = parse_entry(printed)
    row = {"id": "d1", "text": entry_text(entry), "source": "p", "category": "encyclopedia", "url": None,
           "title": entry["name"], "lang": None, "meta": json.dumps({"kind": "monograph", "name": entry["name"]})}
    kept, _ = clean_documents(pa.Table.from_pylist([row]), {})
    (cleaned,) = kept.to_pylist()
    answers = {q: a for _, q, a in monograph_conversion(loads_meta(cleaned["meta"]), cleaned["text"])["pairs"]}
    assert answers["丁香的性味与归经是什么？"] == "丁香辛，温。归脾、胃、肺、肾经。"
    assert answers["丁香应当如何贮藏？"] == "置阴凉干燥处。咨询电话<phone>"


def test_the_terminal_ledger_says_what_convert_wrote_where_it_differs_from_kept():
    """The shared build's convert manifest: monographs converted wholly into conversations are
    kept (accounted for) but written as no document, so the line says both."""
    from flows.cli import ledger_text

    summary = {"rows_in": {"conversations": 8214, "documents": 57007}, "rows_made": {"conversations": 4271},
               "rows_kept": {"conversations": 12070, "documents": 57007}, "rows_rejected": {"conversations": 415, "documents": 0},
               "rows_out": {"conversations": 12070, "documents": 56998}}
    assert ledger_text(summary) == "conversations 8214+4271 made→12070 (-415), documents 57007→57007 (56998 written)"
    summary["rows_out"]["documents"] = 57007
    assert ledger_text(summary).endswith("documents 57007→57007")
