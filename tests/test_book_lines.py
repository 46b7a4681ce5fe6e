"""The book importer's whole-file rules against the same rules stated line by line.

`books.parse_book` and `books.clean_texts` decide every line of a book at once (numpy over its
code points). The functions below state the same rules one line at a time, as the books were
first read; every chapter of real books from ../shared/data, and lines made to hit each rule's
edge, must come out the same both ways."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from transforms.ingest.importers import books
from transforms.ingest.importers.base import read_source
from transforms.ingest.importers.books import (
    CHAPTER, CLOSING, CONTENT_PREFIX, EMPHASIS, ENTRY_OPENERS, HEADER_KEYS, INDENT, PROSE_PUNCTUATION,
    SENTENCE_END, VOLUMES, strip_markers,
)

REPO = Path(__file__).resolve().parents[1]
BOOKS = REPO.parent / "shared" / "data" / "corpus" / "ancient-books"
# Wrapped prose, pictures (\r...\r), 内?： (an OCR slip), emphasis headings, blank header values
# and U+FFFD, a file with no header or chapters.
SHARED_BOOKS = ("000-神农本草经.txt", "003-新修本草.txt", "010-滇南本草.txt", "012-本草蒙筌.txt",
                "203-婴童类萃.txt", "100-桂林古本伤寒杂病论.txt")


# --- the rules line by line ---------------------------------------------------------------------

def line_by_line(text: str) -> tuple[dict, list[tuple[str, str | None, str]], str | None]:
    """(header, [(title, volume, body)] per chapter, the front's text when there are no chapters)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    width = Counter(n for n in map(len, map(str.rstrip, lines)) if n >= 16).most_common(1)
    width = width[0][0] if width else 0
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    header: dict = {}
    position = start
    if start < len(lines) and lines[start].startswith(CHAPTER):
        probe = start + 1
        while probe < len(lines) and probe <= start + 8 and not lines[probe].startswith("<"):
            key, sep, value = lines[probe].partition("：")
            if sep and key.strip() in HEADER_KEYS:
                header[HEADER_KEYS[key.strip()]] = value.strip() or None
            probe += 1
        if header:
            position = probe
            header.setdefault("book", lines[start][len(CHAPTER):].strip() or None)
    chapters: list[list] = []  # [title, volume, lines]
    front: list[str] = []
    volume = current = None
    for line in lines[position:]:
        if not line.startswith("<"):
            (current[2] if current is not None else front).append(line)
        elif line.startswith(VOLUMES):
            levels = [level.strip() for level in line[len(VOLUMES[0]):].split("\\") if level.strip()]
            volume, current = "/".join(levels) or None, None
        elif line.startswith(CHAPTER):
            current = [line[len(CHAPTER):].strip(), volume, []]
            chapters.append(current)
        elif current is not None:
            current[2].append(line)
        else:
            front.append(line)
    if not chapters:
        return header, [], clean_line_by_line(front, width)
    cleaned = []
    for title, volume, chapter_lines in chapters:
        prefix = 0
        for i, line in enumerate(chapter_lines):
            if line.strip():
                chapter_lines[i] = CONTENT_PREFIX.sub("", line, count=1)
                prefix = len(line) - len(chapter_lines[i])
                break
        cleaned.append((title, volume, clean_line_by_line(chapter_lines, width, prefix)))
    return header, cleaned, None


def clean_line_by_line(lines: list[str], width: int, prefix: int = 0) -> str:
    paragraphs: list[str] = []
    current: list[str] | None = None
    previous_raw, last = "", ""
    for raw in lines:
        raw = raw.rstrip()
        line = strip_markers(raw).rstrip()
        if not line:
            if current:
                paragraphs.append("".join(current))
            current = None
            continue
        if prefix:
            raw, prefix = " " * prefix + raw, 0
        if current is None:
            current = [line.lstrip()]
        elif keeps_break(previous_raw, last, raw, width):
            paragraphs.append("".join(current))
            current = [line.lstrip()]
        else:
            if last.isascii() and last.isalnum() and line[:1].isascii() and line[:1].isalnum():
                current.append(" ")
            current.append(line)
        previous_raw, last = raw, line[-1]
    if current:
        paragraphs.append("".join(current))
    return "\n".join(paragraphs).strip()


def keeps_break(previous_raw: str, last: str, next_raw: str, width: int) -> bool:
    if next_raw.startswith(INDENT) or next_raw.lstrip().startswith((EMPHASIS, *ENTRY_OPENERS)):
        return True
    if last in SENTENCE_END:
        return True
    previous = previous_raw.lstrip()
    if previous.startswith(EMPHASIS) and previous.endswith(EMPHASIS):
        return True
    fills_line = width and len(previous_raw) >= width - 2
    if last in CLOSING:
        return not fills_line
    if fills_line:
        return False
    text = strip_markers(previous).replace(" ", "")
    return len(text) >= 4 and PROSE_PUNCTUATION.isdisjoint(text)


# --- the same through the importer's functions --------------------------------------------------

def whole_file(text: str) -> tuple[dict, list[tuple[str, str | None, str]], str | None]:
    lines = books.split_lines(text)
    book = books.parse_book(lines)
    bodies = books.clean_texts(lines, book.lines, book.counts, books.wrap_width(lines), book.starts, book.prefixes)
    if not book.chapters:
        return book.header, [], bodies[0]
    return book.header, [(c.title, c.volume, body) for c, body in zip(book.chapters, bodies)], None


@pytest.mark.parametrize("name", SHARED_BOOKS)
def test_every_chapter_of_shared_books_as_line_by_line(shared_data, name):
    text = read_source(BOOKS / name).text
    expected = line_by_line(text)
    assert expected[1] or expected[2]  # something was read
    assert whole_file(text) == expected


WRAPPED = "甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉"  # 20 characters: the wrap width below

EDGE_BOOK = "\n".join([
    "", "  ",
    "<篇名>边界之书", "书名：边界之书", "作者：", "朝代：清", "<目录>卷一\\\\上", "<篇名>甲",
    "内容：" + WRAPPED[:-1] + "  ",    # the prefix took up width: this line fills it
    WRAPPED[:5],                       # joined to the line above
    "\u3000" + WRAPPED[:18] + "，",     # indented: a new paragraph
    "  " + WRAPPED[:10],               # two spaces: indented too
    WRAPPED, " " + WRAPPED[:10],       # one space is not
    "\\x六君子汤\\x",                   # all emphasis: a heading, and opens with emphasis
    "【性味】甘。", "〔注〕" + WRAPPED[:4], "一二三",  # short fragment joined
    "甘草 人参 白术",                    # a list line (no prose punctuation, spaces not counted)
    "甘草",                             # too short to be a list line
    "ABC", "def 12", "中",              # Latin pieces joined with a space
    WRAPPED[:17] + "）", "续",           # closing bracket short of the width: kept
    WRAPPED[:19] + "）", "续",           # ... filling the line: joined
    "\u3000" * 12 + WRAPPED[:6] + " " * 12, " \t" * 9,  # long runs of whitespace
    "图\\r图名\\p图.bmp\\r在此", "\\r只有图\\p图.bmp\\r", "孤\\立\\x",
    "<目录>", "<篇名>乙", "", "  内容：", "\\x\\x", "　" + WRAPPED[:19], WRAPPED[:3],  # prefix carried
    "<其他标记>", "𠀋𠀋𠀋𠀋" + WRAPPED[:15], "末行\ud800残",  # beyond the BMP; a lone surrogate
    "<篇名>丙", "", "", "<目錄>卷二", "孤行", "<篇名>丁", "内?：" + WRAPPED, WRAPPED + "\t",
])


def test_lines_made_for_each_rule_as_line_by_line():
    expected = line_by_line(EDGE_BOOK)
    assert [title for title, _, _ in expected[1]] == ["甲", "乙", "丙", "丁"]
    assert expected[1][0][1] == "卷一/上" and expected[1][1][1] is None
    assert whole_file(EDGE_BOOK) == expected
    assert whole_file(EDGE_BOOK.replace("\n", "\r\n")) == expected


@pytest.mark.parametrize("text", [
    "", "\n\n", "无标记的一行", "<目录>卷\n正文\n<其他>\n二行",  # no chapters: the front
    "短行\n" * 3 + "不足宽度", EDGE_BOOK.replace("<篇名>", "<其他>"),
])
def test_files_without_chapters_as_line_by_line(text):
    assert whole_file(text) == line_by_line(text)


def test_whitespace_is_what_str_strip_strips():
    assert set(books.WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
    points = np.arange(0x10000, dtype=np.uint32)
    assert (books._WHITE.take(points, mode="clip") == [chr(c).isspace() for c in range(0x10000)]).all()
