"""Source damage repaired where the evidence decides and counted where it does not; OpenCC only on
what was traditional. Real text from the shared books, the shared cases through `flows run`."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import copy_shared_case
from schemas import DOCUMENTS, conform
from schemas.dataset import read_manifest
from transforms.clean.steps import clean_documents
from transforms.ingest.importers import import_file
from transforms.ingest.importers.base import read_source
from transforms.clean.normalize import tidy_whitespace, unicode_clean
from transforms.clean.repair import RepairError, read_table, repairer, undo
from transforms.select.rules import select_batch
from transforms.clean.simplify import PhraseError, read_phrases, to_simplified


REPO = Path(__file__).resolve().parents[1]
CASES = REPO.parent / "shared" / "cases"


def flows_cli(*args, prefect_home):
    env = {**os.environ, "PREFECT_HOME": str(prefect_home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    return subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True, env=env, timeout=400)


def docs(texts: list[str], category: str = "books") -> pa.Table:
    return conform(
        pa.table({"id": [str(i) for i in range(len(texts))], "text": texts, "source": ["t"] * len(texts), "category": [category] * len(texts)}),
        DOCUMENTS,
    )


def book_chapter(shared_data: Path, book: str, title: str) -> str:
    text = read_source(shared_data / "corpus" / "ancient-books" / book).text
    start = text.index(f"<篇名>{title}")
    end = text.find("<篇名>", start + 1)
    return tidy_whitespace(unicode_clean(text[start:end]))


# -- repair -----------------------------------------------------------------------------------


def test_jinkui_blood_impediment_chapter_gets_its_huangqi_back(shared_data):
    # 金匮要略, 血痹虚劳病脉证并治: the 芪 of 黄芪桂枝五物汤 is a blank in the digitised book.
    text = book_chapter(shared_data, "499-金匮要略方论.txt", "血痹虚劳病脉证并治第六")
    assert "黄 桂枝五物汤" in text
    result = repairer().repair(text)
    assert "黄芪桂枝五物汤" in result.text and "黄 桂枝五物汤" not in result.text
    assert {r.kind for r in result.repairs} == {"lost_glyph"}
    assert undo(result.text, result.repairs) == text


def test_separators_after_herbs_are_not_lost_glyphs(shared_data):
    r = repairer()
    for text in ("大黄 芒硝 甘草", "熟地黄 当归 川芎", "鸡子黄 一枚", "人中黄 五味子", "雄黄 各等分为末", "炒黄 研末", "初生如粟，黄 一点"):
        result = r.repair(text)
        assert result.text == text and result.lost_glyphs == 0, text
    # A blank closing 黄 before a dose, a bracket or the next herb is 黄芪.
    for text, want in (("黄 三两", "黄芪三两"), ("炙黄 人参 炙甘草", "炙黄芪 人参 炙甘草"), ("当归 黄 （蜜炙） 白术", "当归 黄芪（蜜炙） 白术"), ("加黄 、白术", "加黄芪、白术"), ("当归黄 汤", "当归黄芪汤")):
        assert r.repair(text).text == want


def test_regional_converter_words_are_corrected_with_their_spans(shared_data):
    text = book_chapter(shared_data, "499-金匮要略方论.txt", "腹满寒疝宿食病脉证治第十")
    assert "浓朴" in text
    result = repairer().repair(text)
    assert "浓朴" not in result.text and "厚朴三物汤" in result.text
    spans = [r for r in result.repairs if r.kind == "correction"]
    assert spans and all(result.text[r.offset : r.offset + len(r.replacement)] == r.replacement for r in spans)
    assert undo(result.text, result.repairs) == text
    # Longest entry wins; a real 野狼 (野野狼 after the converter) comes back.
    assert repairer().repair("气浓味薄，野野狼，伊芳尹，毒瓦斯").text == "气厚味薄，野狼，伊尹，毒气"


def test_encoder_placeholders_become_lost_glyphs(shared_data):
    # 「KT 」 stands where the encoder had no code for a glyph: 项背强KT KT is 项背强几几. Each mark
    # is one lost glyph, undone exactly, counted in clean.
    for book, phrase in (("081-祖剂.txt", "项背强KT KT "), ("029-本草思辨录.txt", "项背强KT KT ，无汗")):
        text = tidy_whitespace(unicode_clean(read_source(shared_data / "corpus" / "ancient-books" / book).text))
        assert phrase in text
        result = repairer().repair(text)
        marks = [r for r in result.repairs if r.kind == "placeholder"]
        assert "KT" not in result.text and "项背强□□" in result.text
        assert len(marks) == text.count("KT") and {r.replacement for r in marks} == {"□"}
        assert undo(result.text, result.repairs) == text
    # Marks without their space; a mark the lexicon decides is filled; Latin letters around KT are no mark.
    assert repairer().repair("项背强KTKT ，义详").text == "项背强□□，义详"
    assert repairer().repair("黄KT 三两，桂枝三两").text == "黄芪三两，桂枝三两"
    assert repairer().repair("KTV 与 OKT 与 KT1").repairs == []
    kept, _ = clean_documents(docs(["太阳病，项背强KT KT ，无汗恶风，葛根汤主之。" + "经文" * 20]), {})
    assert kept.column("text").to_pylist()[0].startswith("太阳病，项背强□□，无汗")
    assert kept.column("lost_glyphs").to_pylist() == [2]


def test_a_name_that_lost_a_glyph_is_not_kept_as_another_word(shared_data):
    # 萆薢, 芎䓖 and 黄芪 are titled 萆, 芎 and 黄 in the books (the second glyph lost, the title line
    # too), and their bodies say 「与萆 相乱」, 「故名芎 。」, 「丹溪云∶黄 大补」. The name gets its
    # 「□」 (one lost glyph a row), 黄□ is filled as 黄芪 by the lexicon; a title the body uses
    # whole (术, 蟹, 石 in 神农本草经) stays as it was.
    books = shared_data / "corpus" / "ancient-books"
    changed: dict = {}
    for book in ("000-神农本草经.txt", "018-本草备要.txt"):
        rows = [r.row for r in import_file(books / book, "book", "b", "books") if not r.rejected]
        for r in rows:  # every mark is undone exactly
            result = repairer().repair(r["text"], r["title"])
            assert undo(result.text, result.repairs) == r["text"]
        table = conform(pa.Table.from_pylist(rows), DOCUMENTS)
        kept, _ = clean_documents(table, {}, {})
        before = {r["id"]: r["title"] for r in rows}
        for r in kept.select(["id", "title", "text", "lost_glyphs"]).to_pylist():
            if r["title"] != before[r["id"]]:
                changed[book[:3], before[r["id"]]] = r
    assert changed["000", "萆"]["title"] == "萆□" and changed["000", "萆"]["text"].startswith("萆□\n味苦，平")
    assert "与萆□相乱" in changed["000", "萆"]["text"] and changed["000", "萆"]["lost_glyphs"] == 1
    assert changed["000", "芎"]["title"] == "芎□" and changed["000", "芎"]["lost_glyphs"] == 1
    assert changed["018", "黄"]["title"] == "黄芪" and changed["018", "黄"]["text"].startswith("黄芪\n补气，固表")
    assert not {("000", "术"), ("000", "蟹"), ("000", "石")} & set(changed)
    assert all(len(title) == 1 for _, title in changed)


def test_a_name_that_lost_its_first_glyph_is_marked_before_it(shared_data):
    # 藁本 is titled 本 in 神农本草经, whose body says 「蔚香， 本也」; 本经逢原's 獐 (「发明 獐之性」:
    # the blank separates the line's label) and 术 stay.
    books = shared_data / "corpus" / "ancient-books"
    titles = {}
    for book in ("000-神农本草经.txt", "019-本经逢原.txt"):
        for r in import_file(books / book, "book", "b", "books"):
            if r.reason is None and r.row["title"] in ("本", "獐", "术"):
                result = repairer().repair(r.row["text"], r.row["title"])
                assert undo(result.text, result.repairs) == r.row["text"]
                assert undo(result.text, list(reversed(result.repairs))) == r.row["text"]
                titles[book[:3], r.row["title"]] = (result.title, result.text, result.lost_glyphs)
    title, text, lost = titles["000", "本"]
    assert title == "□本" and text.startswith("□本\n") and "蔚香，□本也" in text and lost == 1
    assert titles["019", "獐"][0] is None and titles["000", "术"][0] is None
    assert repairer().repair("序\n书成，海昌许 序于平度州署。", "序").title is None


def test_a_name_mark_is_counted_once_and_undone_in_any_order():
    # The body's name may already be a lost glyph (the encoder's 「KT 」, or 「□」): still one
    # glyph of one name. A text with no title line (「萆 用根」) has the name's blank in place of
    # the mark after the title: it becomes the mark, no second one is put before it. The fill of
    # a mark shares its offset: undo takes the repairs in any order.
    tool = repairer()
    for text in ("萆\n味苦。与萆KT 相乱，萆 。", "萆\n味苦。与萆□相乱，萆 。", "萆\n与萆□相乱，萆□。"):
        result = tool.repair(text, "萆")
        assert result.text.startswith("萆□\n") and result.text.count("萆□") == 3, text
        assert result.lost_glyphs == 1, text
        assert undo(result.text, result.repairs) == text
    result = tool.repair("萆 用根，取其入肾。以萆 达之而阴化。", "萆")
    assert result.text == "萆□用根，取其入肾。以萆□达之而阴化。" and result.title == "萆□"
    assert result.lost_glyphs == 1 and undo(result.text, result.repairs) == "萆 用根，取其入肾。以萆 达之而阴化。"
    text = "黄\n补气，固表。丹溪云：黄 大补阳虚。"
    result = tool.repair(text, "黄")
    assert result.title == "黄芪" and any(r.kind == "lost_glyph" and r.offset == 1 for r in result.repairs)
    assert undo(result.text, result.repairs[::-1]) == text and undo(result.text, result.repairs) == text


def test_undecided_blanks_are_counted_and_thresholded_in_select():
    table = docs(["太素：□□□者，□刺之。" + "经文" * 20, "黄 桂枝五物汤主之。" + "经文" * 20])
    kept, _ = clean_documents(table, {})
    assert kept.column("lost_glyphs").to_pylist() == [4, 0]
    assert kept.column("repairs").to_pylist()[1] == [{"offset": 1, "original": " ", "replacement": "芪", "kind": "lost_glyph"}]
    selected, rejected = select_batch(kept, DOCUMENTS, {"max_lost_glyphs_per_kchar": 10.0})
    assert selected.num_rows == 1 and rejected.column("reason").to_pylist()[0].startswith("lost_glyphs_per_kchar:")


def test_repair_applies_to_configured_categories_only():
    table = docs(["浓朴三两，水煎服。" + "经文" * 10], category="web")
    kept, _ = clean_documents(table, {})
    assert kept.column("text").to_pylist()[0].startswith("浓朴")
    kept, _ = clean_documents(table, {"repair_categories": ["web"]})
    assert kept.column("text").to_pylist()[0].startswith("厚朴")


def test_tables_are_versioned_and_bad_lines_are_named(tmp_path):
    version, rows = read_table("corrections.tsv", 2)
    assert version == "1" and all(len(row) >= 3 for row in rows), "every correction has a reason"
    bad = tmp_path / "bad.tsv"
    bad.write_text("浓朴\n", encoding="utf-8")
    with pytest.raises(RepairError, match="bad.tsv:1"):
        read_table("corrections.tsv", 2, bad)
    with pytest.raises(PhraseError, match="bad.tsv:1"):
        read_phrases((str(bad),))


# -- OpenCC only on what was traditional -------------------------------------------------------


def test_simplified_text_passes_byte_for_byte_and_traditional_is_converted():
    for text in ("乾为天，坤为地。", "患者家住吉林省乾安县。", "妇人腹中癥瘕积聚。", "芸薹子。", "慰藉。"):
        assert to_simplified(text).text == text
    assert to_simplified("理中丸方：人參、乾薑、甘草、白朮各三兩。").text == "理中丸方：人参、干姜、甘草、白术各三两。"
    # Taiwan text: its 著 particles become 着, a book 所著 keeps 著 (protected phrase).
    result = to_simplified("他說：我在家裡看著他著急，吳鞠通所著溫病條辨。")
    assert result.variant == "tw2s" and result.text == "他说：我在家里看着他着急，吴鞠通所著温病条辨。"
    # Protected terms in traditional text.
    assert to_simplified("婦人腹中癥瘕積聚，乾為天。").text == "妇人腹中癥瘕积聚，乾为天。"


def test_extra_phrase_dictionary_from_the_config(tmp_path):
    extra = tmp_path / "phrases.tsv"
    extra.write_text("乾隆年間\t乾隆年间\tan era\n黃耆\t黄耆\tkeep the old herb name\n", encoding="utf-8")
    kept, _ = clean_documents(docs(["黃耆味甘微溫，主治癰疽久敗瘡，排膿止痛。"]), {"opencc_phrases": [str(extra)]})
    assert kept.column("text").to_pylist()[0].startswith("黄耆味甘微温")


def test_pharmacopoeia_and_terminology_go_through_clean_unconverted(shared_data):
    folder = shared_data / "corpus" / "pharmacopoeia"
    rows = [
        r.row
        for path in sorted(folder.glob("*.txt"))
        for r in import_file(path, "terms" if "术语" in path.name else "monograph", "p", "encyclopedia")
        if not r.rejected
    ]
    assert len(rows) > 2000
    stats: dict = {}
    kept, rejected = clean_documents(conform(pa.Table.from_pylist(rows), DOCUMENTS), {"min_chars": 0}, stats)
    assert stats["opencc"]["documents"].get("converted_chars", 0) == 0
    assert not any(kept.column("traditional").to_pylist())
    texts = kept.column("text").to_pylist()
    # The standard terminology writes 癥瘕: every 癥 of the input is still there.
    for char in "癥":
        assert sum(t.count(char) for t in texts) == sum(r["text"].count(char) for r in rows) > 0, char


# -- the shared cases through `flows run` ---------------------------------------------------------


def _run_case(case: str, config_name: str, tmp_path: Path, prefect_home: Path) -> Path:
    folder = copy_shared_case(case, tmp_path)
    config = folder / config_name
    ingest = flows_cli("run", "ingest", "--config", str(config), "--output", str(tmp_path / "ingest"), prefect_home=prefect_home)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    clean = flows_cli(
        "run", "clean", "--input", str(tmp_path / "ingest"), "--output", str(tmp_path / "clean"), "--config", str(config),
        prefect_home=prefect_home,
    )
    assert clean.returncode == 0, clean.stderr[-3000:]
    return tmp_path / "clean"


def test_case_book_source_damage(tmp_path, prefect_home):
    clean = _run_case("book-source-damage", "build.toml", tmp_path, prefect_home)
    table = pq.read_table(clean / "documents")
    text = "\n".join(table.column("text").to_pylist())
    for good in ("黄芪桂枝五物汤", "黄芪三两", "厚朴三物汤", "厚朴八两", "伊尹", "毒气", "狼毒"):
        assert good in text, good
    for bad in ("黄 ", "浓朴", "伊芳", "毒瓦斯", "野狼"):
        assert bad not in text, bad
    for row_text, repairs in zip(table.column("text").to_pylist(), table.column("repairs").to_pylist()):
        assert "浓朴" in undo(row_text, repairs) or not repairs or "黄 " in undo(row_text, repairs)
    stats = read_manifest(clean).stats
    assert stats["repairs"]["documents"]["lost_glyph"] == 3
    assert stats["repairs"]["documents"]["correction"] == 5
    assert stats["repairs_by_entry"]["documents"]["浓朴->厚朴"] == 2


def test_case_opencc_simplified_untouched(tmp_path, prefect_home):
    clean = _run_case("opencc-simplified-untouched", "config.toml", tmp_path, prefect_home)
    table = pq.read_table(clean / "documents")
    texts = table.column("text").to_pylist()
    for path in sorted((CASES / "opencc-simplified-untouched" / "input").glob("simplified_*.txt")):
        assert path.read_text(encoding="utf-8").strip() in texts, path.name
    converted = [t for t, trad in zip(texts, table.column("traditional").to_pylist()) if trad]
    assert len(converted) == 1 and "干姜" in converted[0] and "人参" in converted[0]
    opencc = read_manifest(clean).stats["opencc"]["documents"]
    assert opencc["traditional_texts"] == 1 and opencc["converted_chars"] > 0
