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

A file is worked whole, as an array of its code points with each line's start and end: the
chapters are found from the marker lines, and each rule above is computed for every line of
the book at once (numpy), not decided line by line; only lines holding markers are rewritten
one by one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from json.encoder import encode_basestring as _quote
from pathlib import Path
from typing import Iterator

import numpy as np

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
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _table(characters) -> np.ndarray:
    """Whether each code point of the Basic Multilingual Plane is one of `characters`; the last
    entry (False) stands for every code point beyond it (look-ups clip to it)."""
    table = np.zeros(0x10001, bool)
    table[[ord(c) for c in characters]] = True
    return table


# What str.strip() strips: str.isspace, all of it in the Basic Multilingual Plane.
WHITESPACE = "".join(c for c in map(chr, range(0x10000)) if c.isspace())
_WHITE = _table(WHITESPACE)
_ENDS_CLAUSE = _table(SENTENCE_END)
_CLOSES = _table(CLOSING)
_PROSE = _table(PROSE_PUNCTUATION)
_ASCII_ALNUM = _table("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")  # isascii and isalnum
_BACKSLASH, _X, _SPACE, _TAB, _NEWLINE, _MARKER = (ord(c) for c in "\\x \t\n<")
_IDEOGRAPHIC_SPACE = ord(INDENT[0])
_ENTRY_OPENERS = [ord(c) for c in ENTRY_OPENERS]


@dataclass
class Lines:
    """A text and its lines (between line breaks: \r\n, \r or \n; a break at the end leaves an
    empty last line), as positions in the text's code points: line i is
    `text[starts[i]:ends[i]]`, and `text[starts[i]:rstripped[i]]` is that line right-stripped."""
    text: str
    points: np.ndarray  # uint32, the text's code points (lone surrogates included)
    starts: np.ndarray  # int64
    ends: np.ndarray
    rstripped: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def line(self, index: int) -> str:
        return self.text[self.starts[index]:self.ends[index]]


@dataclass
class Chapter:
    title: str
    volume: str | None


@dataclass
class Book:
    header: dict
    chapters: list[Chapter]
    # Indices of the chapters' lines, one chapter after another (or, for a file with no chapters
    # at all, of its lines after the header, the front); `counts`: lines per chapter (or front);
    # `starts`: where each of those lines starts, after the 内容： prefix a chapter's first line
    # with text opens with; `prefixes`: each chapter's prefix length (it took up width in its line).
    lines: np.ndarray
    counts: np.ndarray
    starts: np.ndarray
    prefixes: np.ndarray


def import_book(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    options = options or {}
    decoded = read_source(path, options)
    lines = split_lines(decoded.text)
    book = parse_book(lines)
    bodies = clean_texts(lines, book.lines, book.counts, wrap_width(lines), book.starts, book.prefixes)
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
        text = bodies[0]
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
    name = path.name
    # A chapter's strings are parts of the file's text: when neither that nor the book's meta
    # holds a lone surrogate, none of them needs searching for one.
    points = lines.points
    well_formed_already = not (np.any((points >= 0xD800) & (points <= 0xDFFF)) or _LONE_SURROGATE.search(book_json))
    book_untrained = _untrained(meta_base)
    for index, (chapter, body) in enumerate(zip(book.chapters, bodies)):
        title, volume = chapter.title, chapter.volume
        text = with_title(title, body)
        debris_bytes = replaced_in(body, decoded)
        meta_json = (f'{book_json}, "chapter": {_quote(title)}, "chapter_index": {index}, '
                     f'"volume": {"null" if volume is None else _quote(volume)}, "debris_bytes": {debris_bytes}}}')
        if well_formed_already:
            record = document(
                text, source, category, title=title, reason=None if text else "empty_chapter",
                fallback_key=(name, str(index)), meta_json=meta_json, well_formed_already=True,
            )
        else:
            meta = {**meta_base, "chapter": title, "chapter_index": index, "volume": volume, "debris_bytes": debris_bytes}
            record = document(
                text, source, category, title=title, meta=meta, reason=None if text else "empty_chapter",
                fallback_key=(name, str(index)), meta_json=meta_json,
            )
        # As _untrained of the chapter's meta: the book's keys, then its title and volume.
        record.untrained = book_untrained + ("chapter",) * bool(title) + ("volume",) * bool(volume)
        yield record


def _untrained(meta: dict) -> tuple[str, ...]:
    """The header and heading lines kept in meta rather than in a chapter's text (book, author,
    dynasty, year, the chapter's title, its volume)."""
    return tuple(key for key in ("book", "author", "dynasty", "year", "chapter", "volume") if meta.get(key))


def import_text(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    """A plain text file as one Document, wrapped lines re-joined the same way as books."""
    options = options or {}
    decoded = read_source(path, options)
    lines = split_lines(decoded.text)
    every = np.arange(len(lines))
    text = clean_texts(lines, every, np.array([len(lines)]), wrap_width(lines), lines.starts, np.zeros(1, np.int64))[0]
    meta = {"file": path.name, "encoding": decoded.encoding, "replaced_bytes": decoded.replaced_bytes,
            "debris_bytes": replaced_in(text, decoded)}
    yield document(
        text, source, category, title=options.get("title") or path.stem, url=options.get("url"),
        meta=meta, reason=None if text else "empty_text", fallback_key=(path.name,),
    )


def split_lines(text: str) -> Lines:
    """The lines of `text` between its line breaks (\\r\\n, \\r or \\n); a break at the end leaves
    an empty last line."""
    if "\r" in text:
        # Left to right, as a regular expression \r\n|\r|\n would split.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    points = _code_points(text)
    breaks = np.flatnonzero(points == _NEWLINE)
    starts = np.concatenate(([0], breaks + 1))
    ends = np.concatenate((breaks, [len(points)]))
    return Lines(text, points, starts, ends, _rstripped(points, starts, ends))


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)


# Runs of whitespace at a line's end or start are short: a step per character over all the
# lines still in one, for this many characters; the lines in longer runs then look up the
# nearest character that is not whitespace.
_STEPS = 8


def _rstripped(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Where each range of `points` ends once its trailing whitespace is left out."""
    ends = ends.copy()
    moving = np.flatnonzero(ends > starts)
    for _ in range(_STEPS):
        moving = moving[_WHITE.take(points[ends[moving] - 1], mode="clip")]
        ends[moving] -= 1
        moving = moving[ends[moving] > starts[moving]]
        if not len(moving):
            return ends
    filled = np.flatnonzero(~_WHITE.take(points, mode="clip"))
    last = np.searchsorted(filled, ends[moving]) - 1  # the last such character before the end
    found = filled[np.maximum(last, 0)] if len(filled) else np.zeros(len(moving), np.int64)
    ends[moving] = np.where((last >= 0) & (found >= starts[moving]), found + 1, starts[moving])
    return ends


def _lstripped(points: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Where each range of `points` starts once its leading whitespace is left out."""
    starts = starts.copy()
    moving = np.flatnonzero(starts < ends)
    for _ in range(_STEPS):
        moving = moving[_WHITE.take(points[starts[moving]], mode="clip")]
        starts[moving] += 1
        moving = moving[starts[moving] < ends[moving]]
        if not len(moving):
            return starts
    filled = np.flatnonzero(~_WHITE.take(points, mode="clip"))
    first = np.searchsorted(filled, starts[moving])  # the first such character from the start
    found = filled[np.minimum(first, len(filled) - 1)] if len(filled) else np.zeros(len(moving), np.int64)
    starts[moving] = np.where((first < len(filled)) & (found < ends[moving]), found, ends[moving])
    return starts


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


def parse_book(lines: Lines) -> Book:
    """The header, chapters and chapter lines of a book.

    After blank lines, an opening `<篇名>` line followed (within 8 lines, before any other
    marker) by header lines (书名：, 作者：...) names the book. Each `<目录>` line sets the volume
    of the chapters after it (an empty one: none) and ends the chapter before it; each `<篇名>`
    line starts a chapter; other lines belong to the chapter above them, and are dropped when
    there is none, unless the book has no chapter at all: then every line after the header but
    the volume lines is the book's text (its front)."""
    filled = lines.rstripped > lines.starts  # str.strip() leaves something
    start = int(np.argmax(filled)) if filled.any() else len(lines)
    header: dict = {}
    position = start
    opening = [lines.line(i) for i in range(start, min(start + 9, len(lines)))]
    if opening and opening[0].startswith(CHAPTER):
        # The opening <篇名> names the book when header lines follow it.
        probe = 1
        while probe < len(opening) and not opening[probe].startswith("<"):
            key, sep, value = opening[probe].partition("：")
            if sep and key.strip() in HEADER_KEYS:
                header[HEADER_KEYS[key.strip()]] = value.strip() or None
            probe += 1
        if header:
            position = start + probe
            header.setdefault("book", opening[0][len(CHAPTER):].strip() or None)
    starts = lines.starts[position:]
    marked = position + np.flatnonzero((lines.ends[position:] > starts) & (lines.points.take(starts, mode="clip") == _MARKER))
    # Which of them open with <目录> (<目錄>) or <篇名>: their next three code points say.
    following = lines.starts[marked][:, None] + np.arange(1, 4)
    opening = np.where(following < lines.ends[marked][:, None], lines.points.take(following, mode="clip"), 0)
    is_volume = np.zeros(len(marked), bool)
    for mark in VOLUMES:
        is_volume |= (opening == _code_points(mark[1:])).all(axis=1)
    volume_at = marked[is_volume]
    chapter_at = marked[(opening == _code_points(CHAPTER[1:])).all(axis=1)]
    # A chapter's volume is read from the last <目录> line above it (every chapter carries its
    # own; an empty one means no volume), each line read once.
    above = np.searchsorted(volume_at, chapter_at) - 1
    text, starts, ends = lines.text, lines.starts, lines.ends
    volumes: dict[str, str | None] = {}
    chapters: list[Chapter] = []
    for at, volume_line in zip(chapter_at.tolist(), np.where(above >= 0, volume_at[np.maximum(above, 0)] if len(volume_at) else 0, -1).tolist()):
        volume = None
        if volume_line >= 0:
            level = text[starts[volume_line] + len(VOLUMES[0]):ends[volume_line]]
            volume = volumes[level] if level in volumes else volumes.setdefault(level, _volume(level))
        chapters.append(Chapter(text[starts[at] + len(CHAPTER):ends[at]].strip(), volume))
    if not chapters:
        front = np.ones(len(lines), bool)
        front[:position] = False
        front[volume_at] = False
        kept = np.flatnonzero(front)
        return Book(header, [], kept, np.array([len(kept)]), lines.starts[kept], np.zeros(1, np.int64))
    # Each line belongs to the last <目录> or <篇名> line above it: kept when that is a chapter.
    opener = np.full(len(lines), -1, np.int64)
    opener[volume_at] = volume_at
    opener[chapter_at] = chapter_at
    owner = np.maximum.accumulate(opener)
    is_chapter = np.zeros(len(lines), bool)
    is_chapter[chapter_at] = True
    kept = np.flatnonzero((opener < 0) & (owner >= 0) & is_chapter[np.maximum(owner, 0)])
    chapter_of = np.searchsorted(np.array(chapter_at), kept, side="right") - 1
    counts = np.bincount(chapter_of, minlength=len(chapters))
    # A chapter's first line with text opens with 内容： (or 属性：), which is no part of the text.
    line_starts = lines.starts[kept]
    prefixes = np.zeros(len(chapters), np.int64)
    with_text = np.flatnonzero(filled[kept])
    if len(with_text):
        first = with_text[np.r_[True, chapter_of[with_text[1:]] != chapter_of[with_text[:-1]]]]
        for at in first.tolist():
            found = CONTENT_PREFIX.match(lines.line(kept[at]))
            if found:
                line_starts[at] += found.end()
                prefixes[chapter_of[at]] = found.end()
    return Book(header, chapters, kept, counts, line_starts, prefixes)


def _volume(text: str) -> str | None:
    levels = [level.strip() for level in text.split("\\") if level.strip()]
    return "/".join(levels) or None


def wrap_width(lines: Lines) -> int:
    """The width a file was hard-wrapped at: its most common length among longer lines (the
    first such length in the file where two are as common)."""
    lengths = lines.rstripped - lines.starts
    lengths = lengths[lengths >= 16]
    if not len(lengths):
        return 0
    values, first_seen, counts = np.unique(lengths, return_index=True, return_counts=True)
    most = counts == counts.max()
    return int(values[most][np.argmin(first_seen[most])])


def strip_markers(line: str) -> str:
    if "\\" not in line:
        return line
    line = IMAGE.sub("", line).replace(EMPHASIS, "")
    return line.replace("\\", "")


def clean_texts(lines: Lines, chosen: np.ndarray, counts: np.ndarray, width: int,
                starts: np.ndarray | None = None, prefixes: np.ndarray | None = None) -> list[str]:
    """Several texts made of `lines`: text k is made of the next `counts[k]` of the lines
    `chosen` (indices, in order), each starting at `starts` (default: where the line starts);
    markers removed, wrapped lines re-joined, one paragraph a line. `width` is the file's wrap
    width, `prefixes[k]` the length of the 内容： removed from text k's first line with text
    (it took up width).

    A break between two lines with text is the author's (kept) when the next line is indented
    or opens an entry or emphasis, or the previous line ends a sentence or clause, is all
    emphasis, or (not filling the line: `width - 2` characters or more) ends in a closing
    bracket or is a short line of 4 or more characters without prose punctuation (markers and
    spaces not counted). Any other break is the wrap's: joined, with a space between two pieces
    of Latin letters or digits. A blank line always ends a paragraph."""
    counts = np.asarray(counts, np.int64)
    texts = len(counts)
    points = lines.points
    chosen = np.asarray(chosen, np.int64)
    start = lines.starts[chosen] if starts is None else np.asarray(starts, np.int64)
    end = np.maximum(lines.rstripped[chosen], start)  # the raw line, right-stripped
    text_of = np.repeat(np.arange(texts), counts)

    # Lines holding markers (a backslash) are few: those are cleaned one by one.
    backslashes = np.flatnonzero(points == _BACKSLASH)
    marked = np.zeros(len(chosen), bool)
    if len(backslashes):
        holder = np.zeros(len(lines), bool)
        holder[np.searchsorted(lines.starts, backslashes, side="right") - 1] = True
        marked = holder[chosen]
        marked[marked] = (np.searchsorted(backslashes, start[marked]) < np.searchsorted(backslashes, end[marked]))
    marked_at = np.flatnonzero(marked)
    raw_marked = [lines.text[a:b] for a, b in zip(start[marked_at].tolist(), end[marked_at].tolist())]
    cleaned_marked = [strip_markers(raw).rstrip() for raw in raw_marked]
    clean_length = end - start
    clean_length[marked_at] = [len(line) for line in cleaned_marked]

    with_text = np.flatnonzero(clean_length)
    if not len(with_text):
        return [""] * texts
    # From here on, the lines with text only.
    row_of = np.full(len(chosen), -1, np.int64)
    row_of[with_text] = np.arange(len(with_text))
    text_of_row = text_of[with_text]
    start, end, marked = start[with_text], end[with_text], marked[with_text]
    marked_rows = row_of[marked_at]
    kept_marked = marked_rows >= 0
    marked_rows = marked_rows[kept_marked]
    raw_marked = [raw for raw, kept in zip(raw_marked, kept_marked.tolist()) if kept]
    cleaned_marked = [line for line, kept in zip(cleaned_marked, kept_marked.tolist()) if kept]

    opens = np.ones(len(with_text), bool)  # the text's first line with text
    opens[1:] = text_of_row[1:] != text_of_row[:-1]
    after_blank = np.ones(len(with_text), bool)
    after_blank[1:] = with_text[1:] - 1 != with_text[:-1]

    # The raw line: what the next line says of the break before it.
    left = _lstripped(points, start, end)  # raw.lstrip()
    first = points[start]
    second = points.take(np.minimum(start + 1, len(points) - 1))
    indented = (first == _IDEOGRAPHIC_SPACE) | (first == _TAB) | ((first == _SPACE) & (second == _SPACE) & (end - start >= 2))
    left_first = points[np.minimum(left, len(points) - 1)]
    left_second = points.take(np.minimum(left + 1, len(points) - 1))
    opens_emphasis = (left_first == _BACKSLASH) & (left_second == _X) & (end - left >= 2)
    next_keeps = indented | opens_emphasis | np.isin(left_first, _ENTRY_OPENERS) & (end > left)
    # ... and what the previous line says of the break after it.
    last = points[end - 1]  # of the cleaned line (below for the lines with markers)
    if len(marked_rows):
        last[marked_rows] = [ord(line[-1]) for line in cleaned_marked]
    ends_clause = _ENDS_CLAUSE.take(last, mode="clip")
    closes = _CLOSES.take(last, mode="clip")
    heading = opens_emphasis & (points[end - 1] == _X) & (points.take(np.maximum(end - 2, 0)) == _BACKSLASH)
    if width:
        length = end - start + np.where(opens, np.asarray(prefixes, np.int64)[text_of_row] if prefixes is not None else 0, 0)
        fills_line = length >= width - 2
    else:
        fills_line = np.zeros(len(with_text), bool)
    # A short line with no prose punctuation is a list line or a title, not a wrapped sentence;
    # very short ones are fragments left where a glyph was lost, and are joined. (Asked only
    # where it decides.)
    listing = np.zeros(len(with_text), bool)
    asked = ~(ends_clause | heading | fills_line | closes)
    asked_plain = np.flatnonzero(asked & ~marked)
    if len(asked_plain):
        asked_points = points[_ranges(left[asked_plain], end[asked_plain])]
        firsts = np.cumsum(end[asked_plain] - left[asked_plain]) - (end[asked_plain] - left[asked_plain])
        spaces = np.add.reduceat(asked_points == _SPACE, firsts, dtype=np.int64)
        prose = np.add.reduceat(_PROSE.take(asked_points, mode="clip"), firsts, dtype=np.int64)
        listing[asked_plain] = (end[asked_plain] - left[asked_plain] - spaces >= 4) & (prose == 0)
    if len(marked_rows):
        asked_marked = asked[marked_rows]
        for row, raw in zip(marked_rows[asked_marked].tolist(), (r for r, x in zip(raw_marked, asked_marked.tolist()) if x)):
            bare = strip_markers(raw.lstrip()).replace(" ", "")
            listing[row] = len(bare) >= 4 and PROSE_PUNCTUATION.isdisjoint(bare)
    previous_keeps = ends_clause | heading | (~fills_line & (closes | listing))

    breaks = opens | after_blank | next_keeps
    breaks[1:] |= previous_keeps[:-1]
    # Two wrapped pieces of Latin text or numbers keep a space between them.
    first_clean = first.copy()
    if len(marked_rows):
        first_clean[marked_rows] = [ord(line[0]) for line in cleaned_marked]
    spaced = np.zeros(len(with_text), bool)
    spaced[1:] = _ASCII_ALNUM.take(last[:-1], mode="clip") & _ASCII_ALNUM.take(first_clean[1:], mode="clip") & ~breaks[1:]

    # Each piece is a range of code points: of the text, or of the cleaned lines with markers
    # and the separators, placed after it.
    piece_start = np.where(breaks, left, start)
    piece_end = end.copy()
    extra_base = len(points)
    if len(marked_rows):
        pieces = [line.lstrip() if opened else line for line, opened in zip(cleaned_marked, breaks[marked_rows].tolist())]
        lengths = np.fromiter(map(len, pieces), np.int64, len(pieces))
        piece_start[marked_rows] = extra_base + np.cumsum(lengths) - lengths
        piece_end[marked_rows] = piece_start[marked_rows] + lengths
        extra = "".join(pieces)
    else:
        extra = ""
    buffer = np.concatenate((points, _code_points(extra + "\n ")))
    newline_at, space_at = len(buffer) - 2, len(buffer) - 1
    separator = np.where(opens, -1, np.where(breaks, newline_at, np.where(spaced, space_at, -1)))
    has_separator = separator >= 0
    # Interleave (separator, piece) ranges and gather them.
    range_start = np.stack((separator, piece_start), axis=1).ravel()
    range_length = np.stack((has_separator.astype(np.int64), piece_end - piece_start), axis=1).ravel()
    joined = buffer[_ranges(range_start, range_start + range_length)].tobytes().decode("utf-32-le", "surrogatepass")
    # Where each text's output ends.
    text_length = np.bincount(text_of_row, weights=range_length.reshape(-1, 2).sum(axis=1), minlength=texts).astype(np.int64)
    bounds = np.concatenate(([0], np.cumsum(text_length))).tolist()
    return [joined[a:b].strip() for a, b in zip(bounds[:-1], bounds[1:])]


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions of the ranges [starts[i], ends[i]), one range after another (32-bit where
    they fit: half the memory to write and read)."""
    lengths = ends - starts
    total = int(lengths.sum())
    wide = np.int32 if max(total, int(ends.max()) if len(ends) else 0) < 2**31 else np.int64
    starts, lengths = starts.astype(wide), lengths.astype(wide)
    return np.arange(total, dtype=wide) + np.repeat(starts - (np.cumsum(lengths, dtype=wide) - lengths), lengths)
