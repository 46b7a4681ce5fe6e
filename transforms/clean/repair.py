"""Repair of damage the digitised sources carry: word-level mis-conversions corrected from a
versioned table, and lost glyphs filled where the TCM lexicon admits exactly one completion;
what the evidence does not decide is counted, never guessed.

Corrections (`resources/corrections.tsv`, `wrong<TAB>right<TAB>reason`, `# version:`): matched
leftmost-longest (Aho-Corasick), so 气浓味薄 wins over 浓味 and a real 野狼 (written 野野狼 by the
converter) comes back as 野狼.

Placeholders (`PLACEHOLDERS`): the mark an upstream encoder wrote for a glyph it could not encode,
「KT 」 with its space (「项背强KT KT ，无汗」 is 项背强几几, 「KTKT 」 the same without the first
space; 1,403 marks in 118 of the 261 shared books), becomes a 「□」 (kind `placeholder`) and so
a lost glyph: filled below where the lexicon decides, else counted. A mark touching another
letter or digit (「KTV」, 「OKT」) is left alone; one that follows another mark is a mark.

Lost glyphs (`resources/lost_glyphs.tsv`: the glyphs the sources are known to lose, 芪 first).
A blank is one space or 「□」 right after a Han character. A completion is a glyph g of that
table and a lexicon term T = a + g + b, where a is the last j >= 1 Han characters before the
blank and b the first m >= 0 characters after it, such that:
  1. no lexicon term longer than a ends at the blank (大黄 , 地黄 : the blank closes a word);
  2. when T ends at the blank (m = 0, 「黄 三两」: only one side is evidence), T starts a word:
     the character before a is not Han, or is a function or preparation character (加 用 以 炙
     ...), or ends a lexicon term (白术黄 各一钱), so 鸡子黄 , 面黄 stay; and
  3. what follows is what follows an item of a prescription: a dose (a number and a unit, 各,
     等分), a bracket, list punctuation, another blank, the end, or a lexicon term (the next
     herb); 「黄 一点」 is not a dose.
A term that spans the blank (m >= 1: 「黄 桂枝五物汤」, 「当归黄 汤」) needs rule 1 only.
Exactly one glyph -> the blank is replaced (kind `lost_glyph`); by the glyph and a space when the
term ends at the blank and the next herb follows (「炙黄 人参」 -> 「炙黄芪 人参」: in a list
spaced by blanks the lost glyph took its separator with it). Several -> the blank stays and is
counted in `lost_glyphs`; none -> a 「□」 is counted, a space is a space.

A name that lost a glyph (kind `lost_name`): a text titled by one Han character T (「萆」, 「芎」,
「黄」: 萆薢, 芎䓖, 黄芪 whose second glyph the source could not encode, the title line included)
whose own body writes T before a blank (「与萆 相乱」, 「故名芎 。」) at least as often as T
otherwise. Each such blank after T becomes a 「□」 and a 「□」 is written after the opening T (the
blank there becomes it when the text opens 「萆 用根」 with no title line), so
the entry no longer states its facts under a one-character name that is another word (黄 is no
herb); the marks are then lost glyphs like any other: filled where the lexicon decides (「黄□」
before a line end is 黄芪), else counted, once a row (one glyph of one name, however often named). A title T that the body uses mostly whole (鸡 in 鸡内金,
鸡子 with one 「鸡 。」) is left alone. The same holds for a glyph lost before T (藁本 titled 本,
萹蓄 as 蓄: 「原文∶ 蓄，味辛」, 「蔚香， 本也」): a blank right after a Han character or a
punctuation mark and before T marks it, unless the blank only separates a line's opening label
(「发明 獐之性」); the title becomes 「□本」.

Every repair is kept per row as (offset, original, replacement, kind), the offset in code points
into the repaired text, so `undo` gives the text back exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

RESOURCES = "transforms.resources"
CORRECTIONS_FILE = "corrections.tsv"
LOST_GLYPHS_FILE = "lost_glyphs.tsv"
KINDS = ("correction", "placeholder", "lost_name", "lost_glyph")
LOST_MARK = "□"
# The marks for a glyph the source could not encode (module doc); each becomes LOST_MARK.
PLACEHOLDERS = ("KT ", "KT")
_ASCII_WORD = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
BLANKS = (" ", LOST_MARK)
REPAIR_TYPE = pa.list_(
    pa.struct([("offset", pa.int32()), ("original", pa.string()), ("replacement", pa.string()), ("kind", pa.string())])
)
# Characters that may stand right before a herb's name in a prescription or a note on it.
FUNCTION_CHARS = set("加用以与和及同倍去减恶入宜并兼佐君臣使合配伍炙生蜜酒盐姜醋煨炒焙蒸制净好真嫩老大小上中")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
# A dose: a number and a unit (三两, 一钱五分, 10g), or 各 / 等分.
_DOSE = re.compile(r"(?:[一二三四五六七八九十百半0-9０-９]+[两钱分厘斤升合枚个片克g]|各|等分)")
_HAN_RUN = re.compile(_HAN.pattern + r"+\Z")
_LIST_MARKS = set("（(、，,。；;：:)）\n")
MAX_SIDE = 12
_BLANK = re.compile("|".join(map(re.escape, BLANKS)))
# What follows a blank that stands for a glyph: a Han character or the punctuation of a sentence.
_AFTER_BLANK = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff，。、；：∶（）]"
# What precedes a blank that stands for a name's first glyph, and a line's opening label.
_BEFORE_BLANK = "[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff，。、；：∶（]"
# One-character headings of a book's front and back matter: whole words, never a truncated name
# (产宝's 序 ends 「海昌许 序于平度州署」, a blank in its author's name).
FRONT_MATTER = frozenset("序叙跋引")
_AFTER_BLANK_CHAR = re.compile(_AFTER_BLANK)
_BEFORE_BLANK_CHAR = re.compile(_BEFORE_BLANK)
_LINE_LABEL = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]{1,4}")


class RepairError(ValueError):
    """A correction or lost-glyph table that cannot be read; names the file and line."""


@dataclass(frozen=True)
class Repair:
    offset: int  # code points into the repaired text
    original: str
    replacement: str
    kind: str  # correction | placeholder | lost_name | lost_glyph

    def as_dict(self) -> dict:
        return {"offset": self.offset, "original": self.original, "replacement": self.replacement, "kind": self.kind}


@dataclass
class Repaired:
    text: str
    repairs: list[Repair]
    lost_glyphs: int  # blanks the evidence did not decide
    title: str | None = None  # the title as the text now opens with it, when a lost_name mark changed it


def read_table(name: str, columns: int, path: str | Path | None = None) -> tuple[str, list[list[str]]]:
    """(version, rows) of a shipped table (or of `path`): '#' comments, `# version: V`, rows of at
    least `columns` tab-separated fields."""
    origin = str(path) if path else name
    try:
        text = Path(path).read_text(encoding="utf-8") if path else resources.files(RESOURCES).joinpath(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RepairError(f"{origin} cannot be read ({exc})") from None
    version = re.search(r"^# version: *(\S+)", text, re.M)
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) < columns or not all(fields[:columns]):
            raise RepairError(f"{origin}:{number}: expected {columns} tab-separated fields")
        rows.append(fields)
    return (version.group(1) if version else "0"), rows


def table_versions() -> dict[str, str]:
    return {name: read_table(name, 2)[0] for name in (CORRECTIONS_FILE, LOST_GLYPHS_FILE)}


def default_terms() -> set[str]:
    """The lexicon shipped with the package: the seed list and the jieba TCM user dictionary."""
    from .lexicon import seed_terms

    terms = {term for term, _ in seed_terms()}
    text = resources.files(RESOURCES).joinpath("tcm_user_dict.txt").read_text(encoding="utf-8")
    terms.update(line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return terms


class Repairer:
    """Corrections and lost-glyph filling over texts; build once per process (`repairer()`)."""

    def __init__(self, terms: Iterable[str], corrections: list[tuple[str, str]], lost: Iterable[str]):
        import ahocorasick_rs

        self.terms = {t for t in terms if len(t) >= 2}
        self.corrections = {mark: LOST_MARK for mark in PLACEHOLDERS}
        self.corrections.update(corrections)
        self.automaton = (
            ahocorasick_rs.AhoCorasick(list(self.corrections), matchkind=ahocorasick_rs.MatchKind.LeftmostLongest)
            if self.corrections
            else None
        )
        self.lost = set(lost)
        # a (the part before the glyph) -> [(b, glyph)]
        self.by_left: dict[str, list[tuple[str, str]]] = {}
        for term in self.terms:
            for k, glyph in enumerate(term):
                if glyph in self.lost and k >= 1:
                    self.by_left.setdefault(term[:k], []).append((term[k + 1 :], glyph))
        self.max_term = max((len(t) for t in self.terms), default=2)
        self.glyph_after = {a[-1] for a in self.by_left}
        # The blanks a glyph may fill: after a Han character that some term has before a lost
        # glyph (matched with it: those characters are rarer than blanks). Any other blank has
        # no completion, so the scan finds only these.
        before_glyph = "".join(sorted(re.escape(c) for c in self.glyph_after if _HAN.fullmatch(c)))
        blanks = "".join(map(re.escape, BLANKS))
        self.fillable = re.compile(f"[{before_glyph}][{blanks}]") if before_glyph else None
        # RE2 (pyarrow): what a text must hold for `repair` to change it or count a lost glyph in
        # it, a one-character title aside: a correction's word or a placeholder, a 「□」, or a
        # blank `fillable` finds. Every character spelled by its code point.
        words = [_re2_literal(word) for word in self.corrections] + [_re2_literal(LOST_MARK)]
        if self.fillable is not None:
            after = "".join(_re2_literal(c) for c in sorted(self.glyph_after) if _HAN.fullmatch(c))
            words.append(f"[{after}][{''.join(map(_re2_literal, BLANKS))}]")
        self.screen = "|".join(words)

    def may_repair(self, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Per text (bool): whether `repair` may change it or count a lost glyph in it, leaving
        aside a title (`names_itself` tells which titles `repair` may mark). False is certain: a
        text that holds no correction's word or placeholder, no 「□」 and no blank `fillable`
        finds comes back from `repair` as it is, with no repairs and no lost glyph. One RE2 pass
        over the batch instead of a call per text."""
        if len(texts) == 0:
            return np.zeros(0, bool)
        found = pc.fill_null(pc.match_substring_regex(texts, self.screen), False)
        return found.to_numpy(zero_copy_only=False).astype(bool, copy=False)

    def repair(self, text: str, title: str | None = None) -> Repaired:
        """`text` corrected, its name's lost glyph marked (when `title` is given, module doc) and its
        blanks filled or counted; `Repaired.title` is set when the title changed."""
        repairs: list[Repair] = []
        if self.automaton is not None:
            text, repairs = self._correct(text)
        new_title, names = None, set()
        if title is not None:
            text, repairs, new_title, names = _mark_lost_name(text, title, repairs)
        if not any(blank in text for blank in BLANKS):
            return Repaired(text, repairs, 0)
        result = self._fill(text, repairs, names)
        if new_title is not None:
            result.title = result.text[: len(new_title)]
        return result

    def _correct(self, text: str) -> tuple[str, list[Repair]]:
        matches = self.automaton.find_matches_as_indexes(text)
        if not matches:
            return text, []
        pieces, repairs, last, shift, mark_end = [], [], 0, 0, -1
        for index, start, end in matches:
            wrong = text[start:end]
            right = self.corrections[wrong]
            kind = "correction"
            if wrong in PLACEHOLDERS and right == LOST_MARK:
                # a mark, unless it is part of a Latin word or number (a mark may follow a mark)
                if (start > 0 and start != mark_end and text[start - 1] in _ASCII_WORD) or (
                    wrong[-1] != " " and text[end : end + 1] in _ASCII_WORD and not text.startswith(PLACEHOLDERS[1], end)
                ):
                    continue
                kind, mark_end = "placeholder", end
            pieces.append(text[last:start])
            pieces.append(right)
            repairs.append(Repair(start + shift, wrong, right, kind))
            shift += len(right) - len(wrong)
            last = end
        pieces.append(text[last:])
        return "".join(pieces), repairs

    def _fill(self, text: str, repairs: list[Repair], names: set[int] = frozenset()) -> Repaired:
        # Every 「□」 is a lost glyph unless a fill takes it; a blank no glyph can fill stays as it is.
        # `names`: the 「□」 of a name's lost glyph (_mark_lost_name), counted once however many.
        lost = text.count(LOST_MARK)
        fills: list[tuple[int, str]] = []  # (position of the blank, replacement)
        for blank in self.fillable.finditer(text) if self.fillable is not None else ():
            i = blank.start() + 1
            ch = text[i]
            lost -= ch == LOST_MARK
            found = self.completions(text, i)
            if len(found) == 1:
                glyph, spans = found.popitem()
                # 「炙黄 人参」 was 「炙黄芪 人参」: the blank was the glyph and the list's space.
                after = text[i + 1 : i + 1 + MAX_SIDE]
                separator = ch == " " and not spans and _HAN.match(after[:1] or "x") and not _DOSE.match(after)
                fills.append((i, glyph + " " if separator else glyph))
            elif found or ch == LOST_MARK:
                lost += 1
        lost -= max(len(set(names) - {i for i, _ in fills}) - 1, 0)
        if not fills:
            return Repaired(text, repairs, lost)
        pieces, last, shift, moved = [], 0, 0, []
        for i, replacement in fills:
            pieces.append(text[last:i])
            pieces.append(replacement)
            moved.append(Repair(i + shift, text[i], replacement, "lost_glyph"))
            shift += len(replacement) - 1
            last = i + 1
        pieces.append(text[last:])
        # Corrections came first; a fill that added a separator before one moves it.
        for r in repairs:
            grown = sum(len(rep) - 1 for i, rep in fills if i < r.offset)
            moved.append(Repair(r.offset + grown, r.original, r.replacement, r.kind))
        return Repaired("".join(pieces), sorted(moved, key=lambda r: r.offset), lost)

    def completions(self, text: str, i: int) -> dict[str, bool]:
        """The glyphs the lexicon admits for the blank at text[i] (rules 1-3 of the module doc),
        each with whether a term admitting it continues past the blank."""
        # The run of Han characters (at most MAX_SIDE) that ends at the blank.
        run = _HAN_RUN.search(text, max(i - MAX_SIDE, 0), i)
        left = run.group() if run else ""
        right = text[i + 1 : i + 1 + MAX_SIDE]
        # Rule 1: the longest lexicon term ending at the blank.
        closing = max((j for j in range(2, len(left) + 1) if left[-j:] in self.terms), default=0)
        glyphs: dict[str, bool] = {}
        for j in range(1, min(len(left), self.max_term) + 1):
            if closing > j:
                continue
            starts_word = None  # asked only of a term that ends at the blank
            for b, glyph in self.by_left.get(left[-j:], ()):
                if not right.startswith(b):
                    continue
                if not b:
                    if starts_word is None:
                        before = text[i - j - 1] if i - j - 1 >= 0 else ""
                        starts_word = not before or not _HAN.match(before) or before in FUNCTION_CHARS or self._term_ends(left[:-j])
                    if not starts_word:  # rule 2
                        continue
                    if not self._item_follows(right):  # rule 3
                        continue
                glyphs[glyph] = glyphs.get(glyph, False) or bool(b)
        return glyphs

    def _term_ends(self, left: str) -> bool:
        """Whether a lexicon term ends `left` (白术黄 : 黄 follows the herb 白术)."""
        return any(left[-n:] in self.terms for n in range(2, min(len(left), self.max_term) + 1))

    def _item_follows(self, right: str) -> bool:
        if not right or right[0] in _LIST_MARKS or right[0] in BLANKS or _DOSE.match(right):
            return True
        return any(right[:n] in self.terms for n in range(2, min(len(right), self.max_term) + 1))


def _re2_literal(text: str) -> str:
    """`text` as an RE2 pattern that matches it alone: each character by its code point."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in text)


def names_itself(text: str, title: str | None) -> bool:
    """Whether `text` opens with `title`, one Han character that is no front-matter heading: the
    titles whose lost glyph `repair` may mark (module doc)."""
    return title is not None and _names_itself(text, title)


def _names_itself(text: str, title: str) -> bool:
    """Whether `text` opens with `title`, one Han character that is no front-matter heading."""
    return len(title) == 1 and _HAN.match(title) is not None and title not in FRONT_MATTER and text.startswith(title)


def _as_evidence(blanks: list[int], text: str, title: str) -> list[int]:
    """`blanks` when the body writes T beside them at least as often as T otherwise, else []."""
    return blanks if blanks and 2 * len(blanks) >= text.count(title, 1) else []


def lost_name_blanks(text: str, title: str) -> list[int]:
    """Where the body of `text` writes its one-character `title` before a blank that stands for the
    name's lost glyph: the blanks' offsets, or [] when the title is not one Han character opening
    the text, or T stands whole in the body more often than before a blank (module doc)."""
    if not _names_itself(text, title) or text[1:2] == LOST_MARK:
        return []
    # T then 「□」, or T then a space before a Han character or a sentence's punctuation.
    blanks = []
    at = text.find(title, 1)
    while at >= 0:
        follower = text[at + 1 : at + 2]
        if follower == LOST_MARK or (follower == " " and _AFTER_BLANK_CHAR.match(text, at + 2)):
            blanks.append(at + 1)
        at = text.find(title, at + 1)
    return _as_evidence(blanks, text, title)


def lost_name_blanks_before(text: str, title: str) -> list[int]:
    """Where the body of `text` writes its one-character `title` after a blank that stands for
    the name's lost first glyph (「原文∶ 蓄，」): the blanks' offsets, or [] as `lost_name_blanks`
    decides; a blank that follows a line's opening label of 1-4 Han characters (「发明 獐」) is a
    separator, not evidence."""
    if not _names_itself(text, title):
        return []
    # A space before T, after a Han character or a sentence's punctuation.
    blanks = []
    needle = " " + title
    at = text.find(needle, 1)
    while at >= 0:
        if _BEFORE_BLANK_CHAR.match(text, at - 1) and not _LINE_LABEL.fullmatch(text[text.rfind("\n", 0, at) + 1 : at]):
            blanks.append(at)
        at = text.find(needle, at + 1)
    return _as_evidence(blanks, text, title)


def _mark_lost_name(text: str, title: str, repairs: list[Repair]) -> tuple[str, list[Repair], str | None, set[int]]:
    """The name's lost glyph written 「□」 after the opening title (in place of the blank there,
    when the text opens 「萆 用根」 with no title line) and in place of each blank
    `lost_name_blanks` finds; else before the opening title and in place of each blank
    `lost_name_blanks_before` finds. Earlier repairs' offsets moved past an inserted mark. The
    last item: where the name's 「□」 stand in the new text (those already 「□」 too)."""
    blanks = lost_name_blanks(text, title)
    if blanks:
        # The mark after the title: inserted at 1, or in place of an opening blank there.
        at = 1
        inserted = not (text[1:2] == " " and _AFTER_BLANK_CHAR.match(text[2:3]) is not None)
    else:
        blanks = lost_name_blanks_before(text, title)
        if not blanks:
            return text, repairs, None, set()
        at, inserted = 0, True
    grow = int(inserted)
    chars = list(text)
    if not inserted:
        chars[at] = LOST_MARK
    marks = [Repair(at, "" if inserted else " ", LOST_MARK, "lost_name")]
    for i in blanks:
        if chars[i] == " ":
            chars[i] = LOST_MARK
            marks.append(Repair(i + grow, " ", LOST_MARK, "lost_name"))
    if inserted:
        chars.insert(at, LOST_MARK)
    moved = [Repair(r.offset + grow * (r.offset >= at), r.original, r.replacement, r.kind) for r in repairs]
    new_title = title + LOST_MARK if at == 1 else LOST_MARK + title
    return "".join(chars), sorted(moved + marks, key=lambda r: r.offset), new_title, {at} | {i + grow for i in blanks}


_UNDO_FIRST = {"lost_name": 1, "lost_glyph": 2}


def undo(text: str, repairs: list[dict] | list[Repair]) -> str:
    """The text before the repairs (the `repairs` column of a row, in any order)."""
    items = [r.as_dict() if isinstance(r, Repair) else r for r in repairs]
    # At one offset a fill (lost_glyph) took the 「□」 a placeholder or a name's mark wrote: the
    # later step is undone first, whatever order the repairs come in.
    for r in sorted(items, key=lambda r: (r["offset"], _UNDO_FIRST.get(r["kind"], 0)), reverse=True):
        start = r["offset"]
        assert text[start : start + len(r["replacement"])] == r["replacement"], "repairs do not match the text"
        text = text[:start] + r["original"] + text[start + len(r["replacement"]) :]
    return text


@lru_cache(maxsize=4)
def repairer(lexicon: str | None = None, corrections: str | None = None) -> Repairer:
    """The process's Repairer: the shipped lexicon plus `lexicon` (a `flows lexicon build` file),
    the shipped corrections plus `corrections` (same format; a later entry for a word wins)."""
    from .lexicon import read_lexicon

    terms = default_terms()
    if lexicon:
        terms.update(read_lexicon(lexicon))
    table = [(row[0], row[1]) for row in read_table(CORRECTIONS_FILE, 2)[1]]
    if corrections:
        table += [(row[0], row[1]) for row in read_table(CORRECTIONS_FILE, 2, corrections)[1]]
    lost = [row[0] for row in read_table(LOST_GLYPHS_FILE, 2)[1]]
    return Repairer(terms, table, lost)
