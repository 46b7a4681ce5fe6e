"""An entry keeps its subject, and a short whole entry is content: titles as first lines, the
length rules on the body a reader reads, lists of herbs as content, on real books and through
`flows run build-corpus` on the shared case."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.config import SelectConfig
from tests.conftest import REPO
from schemas import document_id
from schemas.dataset import StageManifest
from transforms.clean.steps import clean_documents
from transforms.engines.local import LocalEngine
from transforms.clean.entries import _judge, _without_blank_lines, body_tags, may_hold_pointers, strip_pointers, title_prefix
from transforms.ingest.importers import import_file
from transforms.clean.lexicon import list_matcher
from transforms.select.rules import describe_report, select_batch
from transforms.stages import selection_dry_run

DEFAULTS = SelectConfig().model_dump()
CASE = "book-entry-titles"


def chapters(shared_data, book: str, *titles: str) -> dict[str, dict]:
    """The first chapter of each title; `title|words` picks the first whose text holds the words."""
    path = shared_data / "corpus" / "ancient-books" / book
    rows = [r.row for r in import_file(path, "book", "books", "books") if not r.reason]
    found = {}
    for wanted in titles:
        title, _, words = wanted.partition("|")
        found[title] = next(row for row in rows if row["title"] == title and words in row["text"])
    return found


def selected(rows: list[dict]) -> tuple[pa.Table, pa.Table, pa.Table]:
    """(tagged, kept, rejected) of rows through clean and select with the defaults."""
    tagged, rejected = clean_documents(pa.Table.from_pylist(rows), {})
    assert rejected.num_rows == 0
    kept, removed = select_batch(tagged, "documents", DEFAULTS)
    return tagged, kept, removed


def kinds(texts: list[str], titles: list[str | None]) -> list[tuple[int, str]]:
    tags = body_tags(texts, title_prefix(texts, titles), list_matcher())
    return list(zip(tags["body_chars"].tolist(), tags["body_kind"].tolist()))


def test_body_kinds_tell_whole_entries_from_fragments_and_pointers():
    cases = {
        # (title, text): (body characters, kind)
        ("南瓜", "南瓜\n甘温，补中益气，同羊肉食则壅气。"): (16, "sentence"),
        ("麋脂", "麋脂\n（畏大黄，恶甘草。）"): (10, "sentence"),
        ("食鸭积滞", "食鸭积滞\n淘糯米水煮热饮一盏。（并治鸭蛋积滞）"): (18, "sentence"),
        ("黄芩", "黄芩\n见心寒。"): (0, "cross_reference"),
        ("凉膈散", "凉膈散\n（方见伤寒症）"): (0, "cross_reference"),
        ("治方", "治方\n方见寒门 治烦躁怫热内结口渴"): (9, "cross_reference"),
        ("大承气汤", "大承气汤\n（见伤寒症）\n治狂症胃实者。"): (7, "sentence"),
        ("白术附子汤", "白术附子汤\n附子 白术 生姜 甘草 大枣"): (10, "list"),
        # "治同上" and a composition: a recipe, not a pointer
        ("治方", "治方\n治同上当归 桃仁 生地黄 熟地黄 升麻 红花 甘草"): (19, "list"),
        ("米泔水", "米泔水\n（即淘米汁也）"): (7, "unpunctuated"),
        ("草之一", "草之一\n山草类三十一种"): (7, "fragment"),
        ("谷部", "谷部\n（豆类七种）"): (6, "fragment"),
        ("治痰饮", "治痰饮\n（附咳嗽）"): (5, "fragment"),
        ("十六、产妇", "十六、产妇\n（原本佚）"): (5, "fragment"),
        ("产后口渴", "产后口渴\n产妇虚弱。口渴气"): (8, "fragment"),
        # a term and its definition: the term is the title
        ("急性肾衰", "急性肾衰：猝发病急之肾衰病。"): (9, "sentence"),
        (None, "甘温，补中益气，同羊肉食则壅气。"): (16, "untitled"),
        # a title alone is no entry; a title inside a longer first line is not a heading
        ("南瓜", "南瓜甘温。"): (5, "untitled"),
    }
    found = kinds([text for _, text in cases], [title for title, _ in cases])
    assert dict(zip(cases, found)) == cases


def test_a_short_whole_entry_keeps_its_title_and_passes_and_a_pointer_does_not(shared_data):
    """本草分经: 南瓜 is a whole entry of 16 characters; 黄芩 only points to 心寒."""
    rows = chapters(shared_data, "038-本草分经.txt", "南瓜", "黄芩|见心寒")
    assert rows["南瓜"]["text"] == "南瓜\n甘温，补中益气，同羊肉食则壅气。"
    tagged, kept, removed = selected(list(rows.values()))
    assert tagged.column("body_chars").to_pylist() == [16, 0]
    assert kept.column("text").to_pylist() == ["南瓜\n甘温，补中益气，同羊肉食则壅气。"]
    assert removed.column("reason").to_pylist() == ["too_short:cross_reference:body_chars=0<min_chars=20"]


def test_the_title_line_is_no_line_of_the_body():
    """A one-character title would make 铁's two lines average 3.5 characters, under the
    default min_mean_line_chars of 4; the title is left out of every line rule."""
    row = {"id": "x", "text": "铁\n主坚肌耐痛。", "source": "s", "category": "books", "title": "铁"}
    tagged, kept, removed = selected([row])
    assert tagged.column("mean_line_chars").to_pylist() == [6.0]
    assert kept.num_rows == 1


def test_a_list_of_herbs_is_content_and_navigation_is_not(shared_data):
    """本草纲目's 妊娠禁忌 is the herbs forbidden in pregnancy, separated by spaces."""
    rows = chapters(shared_data, "013-本草纲目.txt", "妊娠禁忌")
    forbidden = rows["妊娠禁忌"]
    assert forbidden["text"].startswith("妊娠禁忌\n乌头 附子 天雄")
    navigation = "首页 | 新闻中心 | 产品展示 | 联系我们 | 关于我们 | 在线留言 | Copyright 2024\n" * 3
    page = {"id": document_id("s", navigation), "text": "本站导航\n" + navigation, "source": "s", "category": "web", "title": "本站导航"}
    tagged, kept, removed = selected([forbidden, page])
    ratio = dict(zip(tagged.column("title").to_pylist(), tagged.column("punct_line_ratio").to_pylist()))
    # The title line is not counted: a heading does not make a list of links look like prose.
    # Before lists counted, no line of 妊娠禁忌 looked like prose (0 < 0.12); the shipped lexicon
    # recognises the lines of common herbs.
    assert ratio["妊娠禁忌"] >= DEFAULTS["min_punct_line_ratio"] and ratio["本站导航"] == 0.0
    assert kept.column("title").to_pylist() == ["妊娠禁忌"]
    assert removed.column("reason").to_pylist()[0].startswith("punct_line_ratio:0<")


def test_the_dry_run_shows_what_is_too_short_by_kind(shared_data, tmp_path):
    rows = list(chapters(shared_data, "038-本草分经.txt", "南瓜", "黄芩|见心寒", "知母|见肾寒", "猪肺|补肺").values())
    rows += list(chapters(shared_data, "013-本草纲目.txt", "草之一", "妊娠禁忌").values())
    (tmp_path / "in" / "documents").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in" / "documents" / "part-00000.parquet")
    report = selection_dry_run([tmp_path / "in"], DEFAULTS, LocalEngine(1), clean_params={})
    rule = report["documents"]["rules"]["min_chars"]
    assert rule["by_kind"] == {"cross_reference": 2, "fragment": 1}
    assert report["documents"]["rules"]["min_entry_chars"]["would_remove"] == 0
    text = describe_report(report)
    assert "by body kind: cross_reference 2, fragment 1" in text
    assert "too_short:fragment:body_chars=7<min_chars=20" in text and "草之一 山草类三十一种" in text


@pytest.mark.slow
def test_book_entry_titles_case_through_build_corpus(tmp_path, prefect_harness, shared_case):
    """The shared case: four one-entry chapters, three of them short; all four reach the corpus,
    each text opening with its title."""
    folder = shared_case(CASE)
    workdir = tmp_path / "build"
    # The flow `flows run build-corpus --config build.toml` runs, in this process.
    from flows import pipeline

    pipeline.build_corpus(config=str(folder / "build.toml"), workdir=str(workdir))
    corpus = pq.read_table(sorted((workdir / "corpus").glob("part-*.parquet"))).to_pylist()
    texts = sorted(row["text"] for row in corpus if row["format"] == "text")
    bodies = {
        "南瓜": "甘温，补中益气，同羊肉食则壅气。",
        "气喘": "核桃三个，生姜三片，同嚼烂开水送。",
        "海参": "甘，温。补胃益精，壮阳疗痿。",
    }
    for title, body in bodies.items():
        assert f"{title}\n{body}" in texts
    # The long entry names the herb it describes (浓朴, or 厚朴 where the text is repaired).
    long_entry = [t for t in texts if "主中风伤寒" in t]
    assert len(long_entry) == 1 and long_entry[0].split("\n")[0] in ("浓朴", "厚朴")
    select = json.loads((workdir / "stages" / "select" / "_manifest.json").read_text(encoding="utf-8"))
    assert not select.get("rejected_by_reason", {}).get("too_short")


@pytest.mark.parametrize("book", ["038-本草分经.txt", "237-外科心法要诀.txt", "257-症因脉治.txt"])
def test_the_pointer_screen_passes_over_no_body_a_pointer_leaves(shared_data, book):
    """body_tags searches for cross-references only in the texts `may_hold_pointers` flags: on
    real books, every body it passes over is one `strip_pointers` leaves but for blank lines, and
    the columns equal those of the search in every text."""
    rows = [r.row for r in import_file(shared_data / "corpus" / "ancient-books" / book, "book", "books", "books") if not r.reason]
    texts = [row["text"] for row in rows]
    prefix = title_prefix(texts, [row.get("title") for row in rows])
    bodies = [text[n:] for text, n in zip(texts, prefix.tolist())]
    flagged = may_hold_pointers(pa.array(texts, pa.string()))
    assert flagged.tolist() == may_hold_pointers(texts).tolist()
    passed = [body for body, hit in zip(bodies, flagged.tolist()) if not hit]
    assert [strip_pointers(body) for body in passed] == [_without_blank_lines(body) for body in passed]
    # The screen is worth its pass: it passes over bodies holding the marks a pointer holds, and
    # flags bodies whose pointers are stripped.
    assert sum(any(mark in body for mark in "见载同参") for body in passed) > 50
    assert sum(strip_pointers(b) != _without_blank_lines(b) for b, hit in zip(bodies, flagged.tolist()) if hit) > 10
    matcher = list_matcher()
    searched = [_judge(body, bool(n), matcher) for body, n in zip(bodies, prefix.tolist())]
    tags = body_tags(texts, prefix, matcher, pa.array(texts, pa.string()))
    assert list(zip(tags["body_chars"].tolist(), tags["body_kind"].tolist())) == searched
