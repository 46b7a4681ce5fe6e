"""Entries: what a reader counts in a text, and whether a short text is a whole entry.

A book chapter, a monograph or a web page with a heading opens with its title on a line of its
own (the importers and extraction put it there: `南瓜\\n甘温，补中益气，同羊肉食则壅气。`). The
title names the subject; it is not content. So the length rules count the body: the characters
after the title line, spaces and cross-references (（方见伤寒）) not counted. A title alone is
never an entry, and the 南瓜 entry has a body of 16 characters.

`body_tags(texts, titles, matcher)` gives two columns per text:

| body_kind | when | `[select]` floor |
|---|---|---|
| `sentence` | titled; the body ends a sentence (。！？…, then closing brackets or a source tag such as 〔证〕) | `min_entry_chars` |
| `list` | titled; a recipe: lines that list lexicon terms or doses (a formula's composition), with unpunctuated or finished lines beside them | `min_entry_chars` |
| `unpunctuated` | titled; classical text without punctuation (白文: 即淘米汁也, 即六君子汤加麦冬小麦乌梅治霍乱), at most three runs | `min_entry_chars` |
| `cross_reference` | the body only points elsewhere (见心寒。 （方见伤寒） 同上), or a pointer with an unfinished clause beside it (方见寒门 治烦躁) | `min_chars` |
| `fragment` | titled, none of the above: a catalogue note (山草类三十一种, 附咳嗽), lost text (原本佚), a line cut off | `min_chars` |
| `untitled` | the text has no title line | `min_chars` |

and `body_chars`, the characters a reader counts. Selection (transforms/select.py) applies the
floors, so a changed threshold never recomputes these columns.
"""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A pointer to another place: 见/载 opening a clause or after 方, 俱, 并, 互, 详, 参 ...
# (not 不见日火, 不见用). In brackets it is stripped wherever it stands; outside, a whole
# sentence of the body that is only a pointer (见心寒。 详载于下 同上 治同前).
POINTER_LEAD = r"(?:^|(?<=[（(〔。，；\s])|(?<=[方俱具并互详注说义解论治证即又亦已皆仍宜参]))"
BRACKETED_POINTER = re.compile(
    r"[（(〔][^（）()〔〕]*?(?:" + POINTER_LEAD + r"(?:见|载)|参看|参阅|同上|同前)[^（）()〔〕]*[）)〕]"
)
POINTER_SENTENCE = re.compile(
    r"^(?:(?:[一二三四五六七八九十]+方)?[方治法制证说义解注论详俱具并互已余又亦皆仍宜参]{0,4}(?:见|载)[^。！？；，\s]{0,24}"
    r"|(?:[方治法制证]{0,2})同(?:上|前)(?:法|症|证|方)?|参看[^。！？；，\s]{0,24}|详载于下)[。；]?$"
)
_POINTER_MARK = re.compile(r"[见载同参]")
# A part of SENTENCE_SPLIT (text up to and with a sentence end or space) holding a mark.
_MARKED_SENTENCE = re.compile(r"(?:(?<=[。！？；\s])|^)[^。！？；\s]*[见载同参][^。！？；\s]*[。！？；\s]?")
SENTENCE_SPLIT = re.compile(r"(?<=[。！？；\s])")
SENTENCE_END = set("。！？!?…")
# After a sentence's end: closing brackets and quotes, and a source tag (〔证〕 〔嘉〕); or a
# bracketed note after it (（并治吞竹木） （《肘后方》）).
CLOSERS = re.compile(r"(?:[）)」』”’》\]]|〔[^〔〕]{1,4}〕|\s)+$")
TRAILING_NOTE = re.compile(r"(?:[（(][^（）()]*[）)]|〔[^〔〕]{1,4}〕|\s)+$")
SPACE = re.compile(r"\s+")
_NOT_SPACE = re.compile(r"\S")
# What follows a title at the start of a text: a line break, or a term's colon (with its
# synonyms first: 蟠蛇疬（又称锁颈疬）：), or the comma of an entry that opens with its name
# (白药，今为治马肺热药).
TITLE_SEPARATOR = re.compile(r"[ \t]*\n\s*|(?:[（(][^（）()\n]{0,40}[）)])?[：:，,]\s*")
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# A dose: a number (Arabic or Chinese) and a unit (三钱, 10g, 半两, 一枚): a line of a formula.
DOSE = re.compile(r"[0-9一二三四五六七八九十百半两.]+\s*(?:克|g|钱|两|分|枚|个|片|升|合|斤|铢|毫升|ml|mg|粒|条|只|匙|钱匕)")

BRACKET_CHARS = frozenset("（）()〔〕【】[]")
BRACKETS = re.compile(f"[{re.escape(''.join(sorted(BRACKET_CHARS)))}]")
PUNCTUATION = re.compile(r"[。，、；：！？,.;:!?∶…—]")
UNPUNCTUATED_HAN_SHARE = 0.8
# More runs than this, separated by spaces, make a list (of diseases, of a chapter's contents).
UNPUNCTUATED_RUNS = 3
# Notes of a catalogue, not entries: 地水类三十种, 卤石类二十种，附录二十七种, 十三首、附方二,
# 附咳嗽, 大风疾附; items that are all classes (山草类, 水草类 石草类 苔类); and lost text (原本佚, 方缺).
NUMBER = "[〇一二三四五六七八九十百千两0-9]+"
CATALOGUE = re.compile(
    rf"^(?:(?:凡|共)?[^，。]{{0,8}}?{NUMBER}(?:种|道|首|条|方|则|篇)(?:[，、\s]*附(?:录|方)?{NUMBER}(?:种|道|首|条|方|则)?)?"
    r"|(?:原本|原书|原|方)?(?:佚|缺|阙|脱)(?:文)?)$"
)
# A bracketed note of what a section appends: （附咳嗽） （附∶胁痛） （口疮附） 华佗注仓公传（附）.
APPENDIX_NOTE = re.compile(r"^(?:[（(]附[∶:]?[^（）()]*[）)]|[（(][^（）()]*附[）)]|[^，。；]{1,12}[（(]附[）)])$")
CATALOGUE_ITEM = re.compile(r"^\S{1,6}[类部门][上中下]?$")

KINDS = ("sentence", "list", "unpunctuated", "cross_reference", "fragment", "untitled")
# The kinds whose body is a whole entry, judged by the lower `min_entry_chars`.
COMPLETE = frozenset({"sentence", "list", "unpunctuated"})


def title_prefix(texts: list[str], titles: list[str | None]) -> np.ndarray:
    """Per text, the length of the title that opens it, with its separator: a line of its own
    (`南瓜\n`), or a term and its definition (`急性肾衰：`); 0 when the text does not open with
    its title, or nothing follows it."""
    out = np.zeros(len(texts), np.int64)
    for i, (text, title) in enumerate(zip(texts, titles)):
        title = (title or "").strip()
        if title and text and text.startswith(title):
            separator = TITLE_SEPARATOR.match(text, len(title))
            if separator and _NOT_SPACE.search(text, separator.end()):
                out[i] = separator.end()
    return out


def opens_with_title_line(texts: list[str], prefix: np.ndarray) -> np.ndarray:
    """Whether the title is a line of its own (a heading the line rules leave out)."""
    return np.array([bool(n) and "\n" in text[:n] for text, n in zip(texts, prefix)], bool)


def body_tags(texts: list[str], prefix: np.ndarray, matcher, text_array: pa.Array | pa.ChunkedArray | None = None) -> dict[str, np.ndarray]:
    """{"body_chars": int64, "body_kind": object (str)} per text; `prefix` from `title_prefix`,
    `matcher` a `transforms.clean.lexicon.LexiconMatcher` (for lists). `text_array`: the same
    texts as an Arrow string array, when the caller holds them so (not encoded again). Only the
    texts `may_hold_pointers` flags are searched for cross-references."""
    chars = np.zeros(len(texts), np.int64)
    kinds = np.empty(len(texts), object)
    pointing = may_hold_pointers(text_array if text_array is not None else texts).tolist()
    for i, (text, n, pointers) in enumerate(zip(texts, prefix.tolist(), pointing)):
        chars[i], kinds[i] = _judge((text or "")[n:], bool(n), matcher, pointers)
    return {"body_chars": chars, "body_kind": kinds}


def may_hold_pointers(texts: list[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Per text (bool): whether `strip_pointers` may remove a cross-reference from its body (the
    text less any title prefix). False is certain: BRACKETED_POINTER matches nowhere in the text
    and no sentence of it is a POINTER_SENTENCE, so `strip_pointers` of its body only drops
    blank lines. One RE2 pass over the batch (`_POINTER_SCREEN`) instead of a search per
    sentence holding 见, 载, 同 or 参."""
    array = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(texts, pa.string())
    if len(array) == 0:
        return np.zeros(0, bool)
    found = pc.fill_null(pc.match_substring_regex(array, _POINTER_SCREEN), False)
    return found.to_numpy(zero_copy_only=False).astype(bool, copy=False)


def _judge(body: str, titled: bool, matcher, pointers: bool = True) -> tuple[int, str]:
    content = strip_pointers(body) if pointers else _without_blank_lines(body)
    chars = len("".join(content.split()))  # spaces not counted
    pointed = content != body.strip()
    if body.strip() and not HAN.search(content):
        return chars, "cross_reference"
    if not titled:
        return chars, "untitled"
    if _catalogue_note(content):
        return chars, "fragment"
    if ends_sentence(content):
        return chars, "sentence"
    # Lines of a recipe: a composition (a list of terms, or doses) and unpunctuated instructions.
    listed = unpunctuated_only = True
    for line in (line for line in content.split("\n") if line.strip()):
        if not unpunctuated_only and _finished_or_unpunctuated(line):
            # A list is known already: whether this line lists too changes nothing.
            continue
        if DOSE.search(line) or matcher.recognises_list(line):
            unpunctuated_only = False
        elif not _finished_or_unpunctuated(line):
            listed = False
            break
    if listed and not unpunctuated_only:
        return chars, "list"
    if pointed:
        # A pointer with an unfinished clause beside it (方见寒门 治烦躁): the entry is elsewhere.
        return chars, "cross_reference"
    return chars, "unpunctuated" if listed else "fragment"


def _finished_or_unpunctuated(line: str) -> bool:
    """A line a recipe may hold beside its list: unpunctuated text, or a finished sentence."""
    return unpunctuated((BRACKETS.sub("", line) if _has_bracket(line) else line).strip()) or ends_sentence(line)


def _catalogue_note(content: str) -> bool:
    """Whether the body is a note of a catalogue or an appendix: CATALOGUE or _all_catalogue_items
    of the body without brackets and outer spaces, or APPENDIX_NOTE of the body without outer
    spaces. Each is tried only when the body ends as its matches end: CATALOGUE in a count word,
    a numeral or a word for lost text, catalogue items in 类 部 门 (上 中 下), APPENDIX_NOTE in
    a closing bracket (after 附 somewhere)."""
    end = len(content)
    while end and content[end - 1].isspace():
        end -= 1
    if end and content[end - 1] in "）)" and "附" in content and APPENDIX_NOTE.match(content.strip()):
        return True
    while end and (content[end - 1] in BRACKET_CHARS or content[end - 1].isspace()):
        end -= 1
    # Without a character left, the bare form is empty: no items, all of them classes.
    if not end or content[end - 1] in _CATALOGUE_ENDS or content[end - 1] in _CLASS_ENDS:
        bare = (BRACKETS.sub("", content) if _has_bracket(content) else content).strip()
        return bool(CATALOGUE.match(bare)) or _all_catalogue_items(bare)
    return False


# How a catalogue item (CATALOGUE_ITEM) can end.
_CLASS_ENDS = frozenset("类部门上中下")
# The characters a CATALOGUE match can end with: a count word, a numeral (NUMBER), lost text.
_CATALOGUE_ENDS = frozenset("种道首条方则篇" + "〇一二三四五六七八九十百千两0123456789" + "佚缺阙脱文")


def _all_catalogue_items(bare: str) -> bool:
    """Whether every space-separated item of `bare` is a class of a catalogue (山草类 水草类);
    true of no items. Each such item holds 类, 部 or 门: a text without one needs no split."""
    if bare and "类" not in bare and "部" not in bare and "门" not in bare:
        return False
    return all(CATALOGUE_ITEM.match(item) for item in bare.split())


def _has_bracket(text: str) -> bool:
    for bracket in _BRACKET_LIST:
        if bracket in text:
            return True
    return False


_BRACKET_LIST = tuple(sorted(BRACKET_CHARS))


def unpunctuated(text: str) -> bool:
    """Classical text written without punctuation (白文): Han, at most three runs, no marks."""
    if not text or PUNCTUATION.search(text) or len(text.split()) > UNPUNCTUATED_RUNS:
        return False
    letters = SPACE.sub("", text)
    return len(HAN.findall(letters)) >= UNPUNCTUATED_HAN_SHARE * len(letters)


def strip_pointers(body: str) -> str:
    """The body less its cross-references: bracketed pointers anywhere, and sentences that are
    only a pointer."""
    if ("（" in body or "(" in body or "〔" in body) and _may_point(body):
        body = BRACKETED_POINTER.sub("", body)
    # Every pointer holds a mark (见 载 同上/同前 参看): only the sentences holding one are judged,
    # each as SENTENCE_SPLIT cuts it within its line (a line's own end stays).
    if "见" in body or "载" in body or "同" in body or "参" in body:
        kept, last = [], 0
        for start, end in _marked_sentences(body):
            # A pointer sentence is at most 30 characters (and its end) unless it opens with a
            # numbered formula (三方见上): a longer one is content.
            if end - start > _POINTER_MAX + 1 and body[start] not in _NUMERALS:
                continue
            sentence = body[start:end]
            if POINTER_SENTENCE.match(sentence.strip()):
                kept.append(body[last:start])
                last = end - sentence.endswith("\n")
        if kept:
            kept.append(body[last:])
            body = "".join(kept)
    return _without_blank_lines(body)


def _without_blank_lines(body: str) -> str:
    """The body less its blank lines (empty or all spaces); "" for a blank body of one line."""
    if "\n" not in body:
        return body if body.strip() else ""
    # A blank line is empty or all spaces: the body opens with a space or a newline, ends with a
    # newline, holds two newlines together or a space after one. Most bodies have none.
    if body[0].isspace() or body[-1] == "\n" or "\n\n" in body or _SPACE_AFTER_NEWLINE.search(body):
        return "\n".join(line for line in body.split("\n") if line.strip())
    return body


_SPACE_AFTER_NEWLINE = re.compile(r"\n[^\S\n]")


def _pointer_screen() -> str:
    """An RE2 pattern (pyarrow's) that matches every text whose body holds a BRACKETED_POINTER
    match or a sentence that is a POINTER_SENTENCE, and few others:
    - brackets: BRACKETED_POINTER without its lookbehind (RE2 has none), so it matches more;
    - sentences: a part of SENTENCE_SPLIT that is a pointer is, but for its end, a match of
      POINTER_SENTENCE's alternatives, whose character classes hold no sentence end; so it
      stands after a sentence end or the start of the text (or of the body: a title separator
      ends in ：:，, or a space) and before 。 ；, a space or the end of the text. A part ending
      in ！ or ？ is never a pointer.
    Spaces are Python's \\s, spelled out: RE2's \\s is ASCII only."""
    # Every character Python counts as a space lies in the Basic Multilingual Plane.
    bmp = "".join(map(chr, range(0xD800))) + "".join(map(chr, range(0xE000, 0x10000)))
    space = "".join(f"\\x{{{ord(c):x}}}" for c in re.findall(r"\s", bmp))
    word = f"[^。！？；，{space}]{{0,24}}"
    sentence = (
        f"(?:[一二三四五六七八九十]+方)?[方治法制证说义解注论详俱具并互已余又亦皆仍宜参]{{0,4}}(?:见|载){word}"
        f"|[方治法制证]{{0,2}}同(?:上|前)(?:法|症|证|方)?|参看{word}|详载于下"
    )
    pointer_sentence = f"(?:^|[。！？；：:，,{space}])(?:{sentence})(?:[。；{space}]|$)"
    bracketed = r"[（(〔][^（）()〔〕]*?(?:见|载|参看|参阅|同上|同前)[^（）()〔〕]*[）)〕]"
    return f"(?:{pointer_sentence})|(?:{bracketed})"


_POINTER_SCREEN = _pointer_screen()


# The longest POINTER_SENTENCE match that does not open with a numeral, and those numerals.
_POINTER_MAX = 30
_NUMERALS = frozenset("一二三四五六七八九十")


def _may_point(body: str) -> bool:
    """Whether the body holds a word every BRACKETED_POINTER match holds."""
    return "见" in body or "载" in body or "参看" in body or "参阅" in body or "同上" in body or "同前" in body


# What ends a part of SENTENCE_SPLIT.
_SENTENCE_END_MARK = re.compile(r"[。！？；\s]")


def _marked_sentences(body: str):
    """(start, end) of each match of _MARKED_SENTENCE in `body`, in order, found from the marks:
    a match is a whole part (text between two sentence ends, the first from the start) holding
    a mark, with the end that closes it. Two searches per marked part, instead of the pattern
    tried at every position of the body."""
    size = len(body)
    reversed_body = None
    position = 0
    for mark in _POINTER_MARK.finditer(body):
        at = mark.start()
        if at < position:
            continue
        if reversed_body is None:
            reversed_body = body[::-1]
        before = _SENTENCE_END_MARK.search(reversed_body, size - at)
        start = size - before.start() if before else 0
        after = _SENTENCE_END_MARK.search(body, at)
        position = after.end() if after else size
        yield start, position


def ends_sentence(body: str) -> bool:
    """Whether the body's last sentence is finished; a body that is all one bracketed note
    (（皆出四川。）) is judged by what is inside."""
    body = body.rstrip()
    if body and body[-1] in SENTENCE_END:  # nothing to strip: most bodies end so
        return True
    for tail in (strip_closers(body), strip_trailing_notes(body)):
        if tail and tail[-1] in SENTENCE_END:
            return True
    # CLOSERS.sub("", BRACKETS.sub("", body)) ends with the last character that is no bracket, closer or space.
    end = len(body)
    while end and (body[end - 1] in BRACKET_CHARS or body[end - 1] in _CLOSING or body[end - 1].isspace()):
        end -= 1
    return bool(end) and body[end - 1] in SENTENCE_END


# CLOSERS.sub("", text) and TRAILING_NOTE.sub("", text), read from the end: the last character
# decides which token can end the text (a closer or space, a 〔source tag〕, a (note)), so
# taking tokens off the end until none fits strips the longest run the patterns match, without
# the regex trying every position of a long body.
_CLOSING = frozenset("）)」』”’》]")


def _source_tag_start(text: str, end: int) -> int:
    """Where the 〔X〕 (1 to 4 characters inside) that ends text[:end] opens, or -1."""
    for k in range(end - 2, max(end - 7, -1), -1):
        if text[k] in "〔〕":
            return k if text[k] == "〔" and k < end - 2 else -1
    return -1


def strip_closers(text: str) -> str:
    """`text` less its trailing closing brackets, quotes, spaces and 〔source tags〕 (CLOSERS)."""
    end = len(text)
    while end:
        last = text[end - 1]
        if last in _CLOSING or last.isspace():
            end -= 1
        elif last == "〕" and (start := _source_tag_start(text, end)) >= 0:
            end = start
        else:
            break
    return text[:end]


def strip_trailing_notes(text: str) -> str:
    """`text` less its trailing bracketed notes, 〔source tags〕 and spaces (TRAILING_NOTE)."""
    end = len(text)
    while end:
        last = text[end - 1]
        if last.isspace():
            end -= 1
        elif last == "〕" and (start := _source_tag_start(text, end)) >= 0:
            end = start
        elif last in "）)" and (start := max(text.rfind(b, 0, end - 1) for b in "（）()")) >= 0 and text[start] in "（(":
            end = start
        else:
            break
    return text[:end]
