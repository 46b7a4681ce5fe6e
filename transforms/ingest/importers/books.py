"""Classical books and plain text files: decoding, header, chapters, re-joined lines.

The classical book layout::

    <篇名>神农本草经            the book's own title line
    书名：神农本草经            header: 书名, 作者, 朝代, 年份 (values may be blank)
    作者：孙星衍
    朝代：清
    年份：公元1644-1911年
    <目录>卷一\\上经            the volume of the chapter that follows; `\\` separates levels
    <篇名>丹沙                  a chapter
    内容：味甘，微寒。...        its text, opened by 内容： or 属性：

Each chapter becomes one Document whose text opens with the chapter's title on a line of its
own (`南瓜\n甘温，补中益气……`): the title is the herb, formula or disease the entry is about, and
without it the text never names its subject. A body that already opens with the title
(`四君子汤 治脾胃气虚。`) does not get it twice, and an empty chapter stays empty (a title alone
is no entry). A file without that header is still read: its `<篇名>` chapters if it has any,
else the whole file as one Document, with no title line (a file name is not a heading).

Text clean-up, decided from the 261 books of the shared corpus:
- Lines are hard-wrapped at a fixed width, mid-sentence, with trailing spaces. A line break is
  kept where the previous line ends a sentence or clause (。！？；：∶」』”…), ends in a closing
  bracket without filling the line, where the next line is blank, indented, or opens an entry
  (`\\x` marker, 【, 〔), and after a short line without prose punctuation that stops before the
  wrap width (a list of herbs, a title, a recipe line). Every other break is a wrap and is
  joined. The wrap width of a file is its most common line length.
- `\\x...\\x` marks emphasised words, not editorial notes: formula names opening a recipe
  (`\\x六君子汤\\x 治气虚挟痰。`), sub-entries, signatures (`\\x余姚邵晋涵序\\x`). The marker
  characters are dropped and the words kept; a line opened by one starts a new line.
- `\\r图名\\p文件.bmp\\r` is a picture with its caption; the picture is not in the text, so the
  whole marker is dropped. Stray single backslashes (OCR debris) are dropped too.
- Blanks standing for lost glyphs inside a line are kept: they mark where a character is missing.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _quote
from pathlib import Path
from typing import Iterator

from schemas.records import dumps_meta

from .base import Imported, document, read_source, replaced_in

# Traditional-character spellings too, for the same layout saved in Big5.
HEADER_KEYS = {"书名": "book", "書名": "book", "作者": "author", "朝代": "dynasty", "年份": "year"}
CHAPTER = "<篇名>"
VOLUMES = ("<目录>", "<目錄>")
# 内?： is an OCR slip of 内容： in 新修本草.
CONTENT_PREFIX = re.compile(r"^\s*(?:内容|內容|属性|屬性|内\?)：")
IMAGE = re.compile(r"\\r.*?\\p[^\\]*\\r")
EMPHASIS = "\\x"
NUMBERED_STEM = re.compile(r"^\d+[-_. ]+")
# After a title at the start of a body, a Han character or letter means a longer word (麻黄汤).
TITLE_CONTINUES = re.compile(r"[\w]")

SENTENCE_END = set("。！？；：∶」』”’…!?;:")
CLOSING = set("）)】〕》")
PROSE_PUNCTUATION = set("，。；：！？∶")
ENTRY_OPENERS = ("【", "〔")
INDENT = ("\u3000", "  ", "\t")


@dataclass
class Chapter:
    title: str
    volume: str | None
    lines: list[str] = field(default_factory=list)
    prefix: int = 0  # length of the 内容： prefix removed from the first line, which took up width


@dataclass
class Book:
    header: dict
    chapters: list[Chapter]
    front: list[str]  # lines of a file with no chapters at all


def import_book(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    options = options or {}
    decoded = read_source(path, options)
    lines = split_lines(decoded.text)
    book = parse_book(lines)
    width = wrap_width(lines)
    meta_base = {
        "book": options.get("book") or book.header.get("book") or book_name(path),
        "author": book.header.get("author"),
        "dynasty": book.header.get("dynasty"),
        "year": book.header.get("year"),
        "file": path.name,
        "encoding": decoded.encoding,
        "replaced_bytes": decoded.replaced_bytes,
    }
    if not book.chapters:
        text = clean_text(book.front, width)
        meta = {**meta_base, "chapter": None, "chapter_index": 0, "volume": None, "debris_bytes": replaced_in(text, decoded)}
        record = document(
            text, source, category, title=meta_base["book"], meta=meta,
            reason=None if text else "empty_chapter", fallback_key=(path.name, "0"),
        )
        record.untrained = _untrained(meta)
        yield record
        return
    # The book's part of every chapter's meta JSON, written once: a chapter's JSON adds its own
    # keys at the end, as dumps_meta of the chapter's meta (the book's keys first) would.
    book_json = dumps_meta(meta_base)[:-1]
    for index, chapter in enumerate(book.chapters):
        body = clean_text(chapter.lines, width, chapter.prefix)
        text = with_title(chapter.title, body)
        meta = {**meta_base, "chapter": chapter.title, "chapter_index": index, "volume": chapter.volume,
                "debris_bytes": replaced_in(body, decoded)}
        meta_json = (f'{book_json}, "chapter": {_json(chapter.title)}, "chapter_index": {_json(index)}, '
                     f'"volume": {_json(chapter.volume)}, "debris_bytes": {_json(meta["debris_bytes"])}}}')
        record = document(
            text, source, category, title=chapter.title, meta=meta,
            reason=None if text else "empty_chapter", fallback_key=(path.name, str(index)), meta_json=meta_json,
        )
        record.untrained = _untrained(meta)
        yield record


def _json(value) -> str:
    """A meta value as dumps_meta writes it."""
    if value is None:
        return "null"
    if type(value) is str:
        return _quote(value)
    if type(value) is int:
        return int.__repr__(value)
    return dumps_meta({"": value})[5:-1]


def _untrained(meta: dict) -> tuple[str, ...]:
    """The header and heading lines kept in meta rather than in a chapter's text (book, author,
    dynasty, year, the chapter's title, its volume)."""
    return tuple(key for key in ("book", "author", "dynasty", "year", "chapter", "volume") if meta.get(key))


def import_text(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    """A plain text file as one Document, wrapped lines re-joined the same way as books."""
    options = options or {}
    decoded = read_source(path, options)
    lines = split_lines(decoded.text)
    text = clean_text(lines, wrap_width(lines))
    meta = {"file": path.name, "encoding": decoded.encoding, "replaced_bytes": decoded.replaced_bytes,
            "debris_bytes": replaced_in(text, decoded)}
    yield document(
        text, source, category, title=options.get("title") or path.stem, url=options.get("url"),
        meta=meta, reason=None if text else "empty_text", fallback_key=(path.name,),
    )


def split_lines(text: str) -> list[str]:
    """The lines of `text` between its line breaks (\\r\\n, \\r or \\n); a break at the end leaves
    an empty last line."""
    if "\r" in text:
        # Left to right, as a regular expression \r\n|\r|\n would split.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def with_title(title: str, body: str) -> str:
    """The entry as a reader sees it: its title, then its body; the body alone when it is empty
    or already opens with the title as a word (`四君子汤 治……`, `丹沙，味甘`; not `麻黄汤` under 麻黄)."""
    title = title.strip()
    if not body or not title:
        return body
    if body.startswith(title) and not TITLE_CONTINUES.match(body[len(title):len(title) + 1]):
        return body
    return f"{title}\n{body}"


def book_name(path: Path) -> str:
    """The book's name from a file name such as `203-婴童类萃.txt`."""
    return NUMBERED_STEM.sub("", path.stem) or path.stem


def parse_book(lines: list[str]) -> Book:
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    header: dict = {}
    position = start
    if start < len(lines) and lines[start].startswith(CHAPTER):
        # The opening <篇名> names the book when header lines follow it.
        probe = start + 1
        while probe < len(lines) and probe <= start + 8 and not lines[probe].startswith("<"):
            key, sep, value = lines[probe].partition("：")
            if sep and key.strip() in HEADER_KEYS:
                header[HEADER_KEYS[key.strip()]] = value.strip() or None
            probe += 1
        if header:
            position = probe
            header.setdefault("book", lines[start][len(CHAPTER):].strip() or None)
    chapters: list[Chapter] = []
    front: list[str] = []
    volume: str | None = None
    current: Chapter | None = None
    for line in lines[position:]:
        if not line.startswith("<"):  # the common case: a line of text (markers open with <)
            (current.lines if current is not None else front).append(line)
        elif line.startswith(VOLUMES):
            # Every chapter carries its own <目录> line; an empty one means no volume.
            volume = _volume(line[len(VOLUMES[0]):])
            current = None
        elif line.startswith(CHAPTER):
            current = Chapter(line[len(CHAPTER):].strip(), volume)
            chapters.append(current)
        elif current is not None:
            current.lines.append(line)
        else:
            front.append(line)
    for chapter in chapters:
        chapter.prefix = _strip_content_prefix(chapter.lines)
    return Book(header, chapters, front if not chapters else [])


def _volume(text: str) -> str | None:
    levels = [level.strip() for level in text.split("\\") if level.strip()]
    return "/".join(levels) or None


def _strip_content_prefix(lines: list[str]) -> int:
    for i, line in enumerate(lines):
        if line.strip():
            lines[i] = CONTENT_PREFIX.sub("", line, count=1)
            return len(line) - len(lines[i])
    return 0


def wrap_width(lines: list[str]) -> int:
    """The width a file was hard-wrapped at: its most common length among longer lines."""
    lengths = Counter(length for length in map(len, map(str.rstrip, lines)) if length >= 16)
    return lengths.most_common(1)[0][0] if lengths else 0


def strip_markers(line: str) -> str:
    if "\\" not in line:
        return line
    line = IMAGE.sub("", line).replace(EMPHASIS, "")
    return line.replace("\\", "")


def clean_text(lines: list[str], width: int, prefix: int = 0) -> str:
    """Chapter lines → text: markers removed, wrapped lines re-joined, one paragraph a line.

    `prefix` is the length of the 内容： removed from the first line: it still took up width."""
    paragraphs: list[str] = []
    current: list[str] | None = None  # the paragraph being built, in pieces (never empty)
    previous_raw = ""
    last = ""  # the last character of the previous line, markers removed
    for raw in lines:
        raw = raw.rstrip()
        line = strip_markers(raw).rstrip() if "\\" in raw else raw
        if not line:  # right-stripped: empty exactly when blank
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
            if _spaced(last, line):
                current.append(" ")
            current.append(line)
        previous_raw = raw
        last = line[-1]
    if current:
        paragraphs.append("".join(current))
    return "\n".join(paragraphs).strip()


_BREAK_OPENERS = (EMPHASIS, *ENTRY_OPENERS)


def keeps_break(previous_raw: str, joined: str, next_raw: str, width: int) -> bool:
    """Whether the break between two right-stripped lines is the author's, not the wrap's.

    `joined` is the text built so far (markers removed), or its last character: the previous
    line's end."""
    # (lstrip copies the line: only a line opening with a space needs it)
    if next_raw.startswith(INDENT) or (next_raw.lstrip() if next_raw[:1].isspace() else next_raw).startswith(_BREAK_OPENERS):
        return True
    last = joined[-1]
    if last in SENTENCE_END:
        return True
    previous = previous_raw.lstrip()
    if previous.startswith(EMPHASIS) and previous.endswith(EMPHASIS):
        return True  # a line that is all emphasis is a heading
    fills_line = width and len(previous_raw) >= width - 2
    if last in CLOSING:
        return not fills_line
    if fills_line:
        return False
    # A short line with no prose punctuation is a list line or a title, not a wrapped sentence;
    # very short ones are fragments left where a glyph was lost, and are joined.
    text = strip_markers(previous).replace(" ", "")
    return len(text) >= 4 and PROSE_PUNCTUATION.isdisjoint(text)


def _spaced(left: str, right: str) -> bool:
    """Two wrapped pieces of Latin text or numbers keep a space between them."""
    return left[-1:].isascii() and left[-1:].isalnum() and right[:1].isascii() and right[:1].isalnum()
