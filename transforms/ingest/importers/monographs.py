"""Structured reference texts: pharmacopoeia monographs and terminology standards.

A monograph entry, as printed in the pharmacopoeia::

    黄芪                                   name
    Huangqi                                pinyin
    ASTRAGALI RADIX                        Latin name, upper case
    本品为豆科植物蒙古黄芪...的干燥根。     description
    【性状】本品呈圆柱形...                 sections, each running on until the next one
    【鉴别】(1)...
    (2)...
    饮片                                   the processed slices: sections after it describe them
    【炮制】...
    【性味与归经】甘，微温。归肺、脾经。

An entry starts at a name line followed by a pinyin line and an upper-case Latin line; the OCR
text slips inside both (`RHIZoMA`, `MaqianziFen`, `Cang'erzi`), so they are matched loosely. A name
line followed directly by a 本品为/由/系 description, right after the end of an entry, starts an
entry without pinyin and Latin (人工牛黄). Section names with an OCR slip (【用法写用量】) are
mapped to the known name they differ from by one character.

meta["sections"] maps a section name (without 【】) to its text, continuation lines included.
Under 饮片 a section the crude drug already has is printed again only to say how the slices
differ (often just 同药材): it stays in the text, and meta keeps the crude drug's own. Sections
first given under 饮片 (炮制, often 性味与归经 and the rest) go to meta as printed. A 附： block
describes other substances (人工牛黄's raw materials) and is kept out of the sections.

A terminology standard lists `3.1.1` code lines, each followed by the term, its synonyms (short
lines without punctuation) and its definition (wrapped over lines), and an optional 注： note.
"""
from __future__ import annotations

import itertools
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from .base import Imported, document, read_source

SECTIONS = (
    "性状", "鉴别", "检查", "浸出物", "含量测定", "特征图谱", "指纹图谱", "炮制", "性味与归经", "性味",
    "功能与主治", "用法与用量", "注意", "禁忌", "规格", "贮藏", "制法", "用途", "制剂", "处方", "类别",
)
PROCESSED = "饮片"
SAME_AS_CRUDE = "同药材"
NOTE = "注"
APPENDIX = ("附：", "附:")

NAME = re.compile(r"^[\u4e00-\u9fff（）()·、]{1,20}$")
SPACING = re.compile(r"[\s\u00a0\u3000]+")
CAPITALISED = re.compile(r"^(?:[A-Z][a-z]+\s?){2,}$")
PINYIN_LABEL, LATIN_LABEL = "拼音名：", "拉丁名："
MISSING = "缺："
PINYIN = re.compile(r"^[A-Z][A-Za-zü']*(?:\s[A-Za-zü']+)*$")
LATIN = re.compile(r"^[A-Za-z.\-\s\u0370-\u03ffⅠ-Ⅻ王]+$")
DESCRIPTION = re.compile(r"^本品[为由系]")
HEADINGS = re.compile(r"^((?:[【\[][^】\]]{1,8}[】\]])+)\s*(.*)$")
HEADING_NAME = re.compile(r"[【\[]([^】\]]+)[】\]]")
ENTRY_END = ("【贮藏】", "[贮藏]", "缺：")
TERM_CODE = re.compile(r"^\d+(?:\.\d+)+$")
SENTENCE_PUNCTUATION = set("，。；：、,;")
RUN_ON_TERM = re.compile(r"^(.{2,20}?[证病])(?=泛指|因|是指)")


def import_monographs(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    decoded = read_source(path, options)
    lines = [line.strip() for line in decoded.text.splitlines()]
    for start, entry in read_entries(lines):
        identity = entry["identity"]
        meta = {
            "kind": "monograph",
            "name": entry["name"],
            "pinyin": entry["pinyin"],
            "latin": entry["latin"],
            "description": entry["description"],
            "sections": entry["sections"],
            "identity": identity["status"],
            "file": path.name,
            "line": start + 1,
        }
        untrained: tuple[str, ...] = ()
        if identity["status"] == RENAMED or identity.get("reason"):
            # The heading as printed: a wrong name, kept for the audit and never trained.
            meta["printed_name"] = identity["printed"]
            untrained = ("printed_name",)
        if entry["missing"]:
            meta["missing_entries"] = entry["missing"]
            untrained += ("missing_entries",)
        text = entry_text(entry)
        reason = identity.get("reason")
        if reason is None and not (entry["sections"] or entry["description"]):
            reason = "empty_entry"
        record = document(text, source, category, title=entry["name"], meta=meta, reason=reason,
                          fallback_key=(path.name, str(start)))
        record.tally = (f"identity:{identity['status']}",)
        record.untrained = untrained
        yield record


def read_entries(lines: list[str]) -> Iterator[tuple[int, dict]]:
    """(first line index, parsed entry with its identity checked) for each entry of a
    pharmacopoeia text, in order."""
    for start, end in entry_spans(lines):
        entry = parse_entry(lines[start:end])
        entry["identity"] = check_identity(entry)
        if entry["identity"]["status"] == RENAMED:
            entry["name"] = entry["identity"]["name"]
        yield start, entry


def name_of(line: str) -> str | None:
    """The herb name a line prints, its spacing removed (`锁   阳` -> 锁阳), or None."""
    compact = SPACING.sub("", line)
    return compact if NAME.match(compact) and compact != PROCESSED else None


def entry_spans(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of the entries of a pharmacopoeia text. A name line followed by
    a pinyin line and a Latin line starts an entry wherever it stands (the file has no blank
    lines between entries); a name line followed by a description starts one only right after
    the end of an entry."""
    starts = []
    for i, line in enumerate(lines):
        if name_of(line) is None:
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if PINYIN.match(following) and i + 2 < len(lines) and is_latin(lines[i + 2]):
            starts.append(i)
        elif DESCRIPTION.match(following) and (i == 0 or lines[i - 1].startswith(ENTRY_END)):
            starts.append(i)
    return list(zip(starts, [*starts[1:], len(lines)]))


def is_latin(line: str) -> bool:
    """A Latin name line: mostly upper case (SCHISANDRAECHINENSISFRUCTUS, MEL, l-BORNEOLUM) or
    capitalised words (AchillisHerba)."""
    letters = [c for c in line if c.isalpha()]
    return (
        len(letters) >= 3
        and bool(LATIN.match(line))
        and (sum(c.isupper() for c in letters) >= 0.7 * len(letters) or bool(CAPITALISED.match(line)))
    )


# -- identity ---------------------------------------------------------------------------------

CONFIRMED, PINYIN_SLIP, LATIN_CONFIRMED, RENAMED, MISMATCH, UNCHECKED = (
    "confirmed", "pinyin_slip", "latin_confirmed", "renamed", "mismatch", "unchecked")
# Letters the OCR of the pinyin lines confuses (Ghuanmutong, Fianranbingpian, HaiIong).
OCR_LETTERS = ({"c", "g"}, {"t", "f"}, {"l", "i"}, {"o", "0"})
LATIN_WORD = re.compile(r"[A-Za-z]{5,}")
HAN_RUN = re.compile(r"[\u4e00-\u9fff]+")


def check_identity(entry: dict) -> dict:
    """Whether an entry is the herb its heading names, decided by the entry's own lines.

    The heading's readings (pypinyin, every reading of a polyphonic character) are compared
    with the pinyin line. `confirmed`: one reading is the pinyin; `pinyin_slip`: one differs from
    it by OCR slips of the pinyin line (see ocr_close); `renamed`: the heading is wrong, a name
    printed in the entry's own lines reads as the pinyin, the Latin line agrees with the Latin
    binomial of the description and the description never names the heading (the name sharing
    most characters with the heading wins, then the most frequent); `latin_confirmed`: no name
    in the entry reads as the pinyin (a reading pypinyin lacks: 荜茇 Bibo), but the description
    names the heading and its binomial agrees with the Latin line; `mismatch`: none of these,
    rejected with reason `name_mismatch:...`; `unchecked`: no pinyin line.
    Returns {"status", "name", "printed", "reason"?}."""
    printed = entry["name"]
    result = {"status": UNCHECKED, "name": printed, "printed": printed}
    if not entry.get("pinyin"):
        return result
    target = normalized_pinyin(entry["pinyin"])
    readings = set().union(*(name_readings(name) for name in heading_names(printed)))
    if target in readings:
        return {**result, "status": CONFIRMED}
    if any(ocr_close(target, reading) for reading in readings):
        return {**result, "status": PINYIN_SLIP}
    description = entry.get("description") or ""
    latin_ok = latin_agrees(entry.get("latin") or "", description)
    named = any(name in description for name in heading_names(printed))
    found = names_reading([description, *entry.get("body", [])], target)
    if found and latin_ok and not named:
        best = max(found, key=lambda name: (len(set(name) & set(printed)), found[name]))
        return {**result, "status": RENAMED, "name": best}
    if named and latin_ok and not found:
        return {**result, "status": LATIN_CONFIRMED}
    return {**result, "status": MISMATCH,
            "reason": f"name_mismatch:name={printed},pinyin={entry['pinyin']},latin={entry.get('latin')}"}


def heading_names(printed: str) -> list[str]:
    """`延胡索（元胡）` -> [延胡索, 元胡]; the name and its bracketed aliases."""
    return [part for part in re.split(r"[（）()、]", printed) if part]


def normalized_pinyin(text: str) -> str:
    """Lower case letters only, ü and v written u (the printed lines write 女 Nu, 榈 lv)."""
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("ü", "u").replace("v", "u"))


@lru_cache(maxsize=None)
def char_readings(char: str) -> tuple[str, ...]:
    from pypinyin import Style, pinyin

    return tuple(dict.fromkeys(normalized_pinyin(r) for r in pinyin(char, style=Style.NORMAL, heteronym=True)[0]))


def name_readings(name: str, limit: int = 512) -> set[str]:
    """Every reading of a name, one per combination of its characters' readings (at most
    `limit`; past it, each character's first reading)."""
    options = [char_readings(char) for char in name]
    count = 1
    for option in options:
        count *= len(option)
    if count > limit:
        return {"".join(option[0] for option in options), phrase_reading(name)}
    readings = {"".join(combination) for combination in itertools.product(*options)}
    return readings | {phrase_reading(name)}


@lru_cache(maxsize=None)
def phrase_reading(name: str) -> str:
    """pypinyin's reading of the name as a phrase (its phrase table knows 荜茇 bibo)."""
    from pypinyin import Style, lazy_pinyin

    return normalized_pinyin("".join(lazy_pinyin(name, style=Style.NORMAL)))


def ocr_close(printed: str, reading: str) -> bool:
    """A few OCR slips apart: a confused letter pair (cost 1) or a letter missing or added
    (cost 1), at most 1 in all, 2 for 10 letters or more; any other substitution (wubeizi for
    wuweizi) is another name, never a slip."""
    allowed = 1 if max(len(printed), len(reading)) < 10 else 2
    if abs(len(printed) - len(reading)) > allowed:
        return False
    previous = list(range(len(reading) + 1))
    for i, a in enumerate(printed, 1):
        row = [i]
        for j, b in enumerate(reading, 1):
            substitution = 0 if a == b else 1 if {a, b} in OCR_LETTERS else allowed + 1
            row.append(min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + substitution))
        previous = row
    return previous[-1] <= allowed


def names_reading(lines: list[str], target: str, longest: int = 8) -> Counter:
    """How often each Han string of the lines reads as `target`."""
    found: Counter = Counter()
    for line in lines:
        for run in HAN_RUN.findall(line):
            for i in range(len(run)):
                prefixes = {""}
                for j in range(i, min(len(run), i + longest)):
                    prefixes = {p + r for p in prefixes for r in char_readings(run[j]) if target.startswith(p + r)}
                    if not prefixes:
                        break
                    if target in prefixes:
                        found[run[i:j + 1]] += 1
    return found


def latin_agrees(latin: str, description: str) -> bool:
    """The Latin line names the genus of a binomial the description prints (SCHISANDRAE...
    and Schisandrachinensis share `schis`)."""
    latin = re.sub(r"[^a-z]", "", latin.lower())
    return bool(latin) and any(word[:5].lower() in latin for word in LATIN_WORD.findall(description))


# -- sections ---------------------------------------------------------------------------------


def parse_entry(lines: list[str]) -> dict:
    """An entry's printed lines -> {"name", "pinyin", "latin", "description", "sections",
    "body", "blocks"}; see parse_body for the last three."""
    entry = {"name": name_of(lines[0]) or lines[0], "pinyin": None, "latin": None, "description": None}
    position = 1
    if position + 1 < len(lines) and PINYIN.match(lines[position]) and is_latin(lines[position + 1]):
        entry["pinyin"], entry["latin"] = lines[position], lines[position + 1]
        position += 2
    return _read_rest(entry, lines, position)


def read_entry_text(text: str) -> dict:
    """The entry a monograph document's text holds (entry_text's layout, cleaned or not), parsed
    as parse_entry parses the printed lines."""
    lines = [line.strip() for line in text.splitlines()]
    entry = {"name": lines[0] if lines else "", "pinyin": None, "latin": None, "description": None}
    position = 1
    for key, label in (("pinyin", PINYIN_LABEL), ("latin", LATIN_LABEL)):
        if position < len(lines) and lines[position].startswith(label):
            entry[key] = lines[position][len(label):].strip()
            position += 1
    return _read_rest(entry, lines, position)


def _read_rest(entry: dict, lines: list[str], position: int) -> dict:
    description = []
    while position < len(lines) and lines[position] and not HEADINGS.match(lines[position]) \
            and lines[position] != PROCESSED:
        description.append(lines[position])
        position += 1
    entry["description"] = "\n".join(description) or None
    body = [line for line in lines[position:] if line and not line.startswith(MISSING)]
    # 「缺：丁公藤」: the file notes an entry it does not print; not the entry's content.
    entry["missing"] = [line[len(MISSING):].strip() for line in lines[position:] if line.startswith(MISSING)]
    entry["sections"], entry["blocks"] = parse_body(body)
    entry["body"] = body
    return entry


def parse_body(lines: list[str]) -> tuple[dict[str, str], list[dict]]:
    """Sections and blocks of an entry's body (the lines after the description).

    Every line belongs to one block {"names", "lines", "sections"}: a heading line and the
    lines up to the next heading, or lines outside any section (饮片, a 附： block, a
    processed slice's own description). `names`: the section names its heading opens;
    `sections`: those whose text the block gives (a section printed again under 饮片 gives
    nothing, see the module doc). sections maps a name to its text, heading removed."""
    blocks: list[dict] = []
    given: dict[str, list[int]] = {}
    texts: dict[int, list[str]] = {}
    processed = appendix = False
    current: dict | None = None
    for line in lines:
        if line == PROCESSED:
            processed, current = True, None
            blocks.append({"names": [], "lines": [line], "sections": []})
            continue
        appendix = appendix or line.startswith(APPENDIX)
        names, heading_text = ([], line) if appendix else _headings(line)
        if not names:
            if current is None:
                current = {"names": [], "lines": [], "sections": []}
                blocks.append(current)
            current["lines"].append(line)
            texts.setdefault(id(current), []).append(line)
            continue
        current = {"names": names, "lines": [line], "sections": []}
        blocks.append(current)
        texts[id(current)] = [heading_text]
        for name in names:
            if name not in given:
                if not (processed and heading_text.startswith(SAME_AS_CRUDE)):
                    given[name] = [len(blocks) - 1]
            elif not processed:
                given[name].append(len(blocks) - 1)
    sections = {}
    for name, indexes in given.items():
        text = "\n".join("\n".join(texts[id(blocks[i])]).strip() for i in indexes).strip()
        if text:
            sections[name] = text
            for i in indexes:
                blocks[i]["sections"].append(name)
    return sections, blocks


def _headings(line: str) -> tuple[list[str], str]:
    """The section names a line opens (several when it reads 【鉴别】【检查】同药材), and its text."""
    if line.startswith(("注：", "注:")):
        return [NOTE], line[2:]
    heading = HEADINGS.match(line)
    if not heading:
        return [], line
    names = [section_name(printed) for printed in HEADING_NAME.findall(heading.group(1))]
    if not all(names):
        return [], line
    return names, heading.group(2)


def section_name(printed: str) -> str | None:
    """A printed section name, or the known one it differs from by one OCR slip, or None."""
    printed = printed.strip()
    if printed in SECTIONS:
        return printed
    for known in SECTIONS:
        if len(known) == len(printed) > 1 and sum(a != b for a, b in zip(known, printed)) == 1:
            return known
    return None


def entry_text(entry: dict, blocks: list[dict] | None = None, description: bool = True) -> str:
    """The entry as one text: name, 拼音名：, 拉丁名：, description and body lines (read back by
    read_entry_text). `blocks` / `description`: only these blocks, with or without the
    description (what convert leaves as text once sections became questions)."""
    lines = [entry["name"]]
    if entry["pinyin"]:
        lines.append(f"{PINYIN_LABEL}{entry['pinyin']}")
    if entry["latin"]:
        lines.append(f"{LATIN_LABEL}{entry['latin']}")
    if description and entry["description"]:
        lines.append(entry["description"])
    if blocks is None:
        lines.extend(entry["body"])
    else:
        for block in blocks:
            lines.extend(block["lines"])
    return "\n".join(lines)


def import_terms(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    """One Document per term; the standard's front matter (title, scope, the lines before the
    first code) as one more text Document (meta kind `standard_front`); each term's meta
    `chapter` names the category heading it sits under (`3外感病类术语`)."""
    decoded = read_source(path, options)
    lines = [line.strip() for line in decoded.text.splitlines()]
    codes = [i for i, line in enumerate(lines) if TERM_CODE.match(line)]
    front = [line for line in lines[: codes[0] if codes else len(lines)] if line]
    if front:
        record = document("\n".join(front), source, category, title=front[0],
                          meta={"kind": "standard_front", "file": path.name}, fallback_key=(path.name, "front"))
        yield record
    chapter = next((line for line in reversed(front) if _is_section_heading(line)), None)
    for start, end in zip(codes, [*codes[1:], len(lines)]):
        term = parse_term(lines[start:end])
        if term is None:
            continue
        text = term["term"]
        if term["synonyms"]:
            text += f"（又称{'、'.join(term['synonyms'])}）"
        text += f"：{term['definition']}" if term["definition"] else ""
        if term["note"]:
            text += f"\n注：{term['note']}"
        meta = {"kind": "term", **term, "chapter": chapter, "file": path.name}
        reason = None if term["definition"] else "empty_definition"
        record = document(text, source, category, title=term["term"], meta=meta, reason=reason,
                          fallback_key=(path.name, term["code"]))
        # The standard's numbering (3.1.1) and the category heading the term sits under.
        record.untrained = ("code", "chapter") if chapter else ("code",)
        yield record
        # A category heading ends the last term of a chapter and names the next terms' one.
        chapter = next((line for line in reversed(lines[start:end]) if _is_section_heading(line)), chapter)


def parse_term(lines: list[str]) -> dict | None:
    code, rest = lines[0], [line for line in lines[1:] if line]
    if not rest:
        return None
    term, synonyms, definition, note = rest[0], [], [], []
    run_on = RUN_ON_TERM.match(term) if SENTENCE_PUNCTUATION.intersection(term) else None
    if run_on:
        # The term line swallowed its definition: `正盛邪实证泛指因病邪炽盛...`.
        term, definition = run_on.group(1), [term[len(run_on.group(1)):]]
    target = definition
    for line in rest[1:]:
        if _is_section_heading(line):
            break  # a chapter heading such as `4外感病类术语` ends the last term of a chapter
        if line.startswith(("注：", "注:")):
            target = note
            line = line[2:]
        elif target is definition and not definition and len(line) <= 16 \
                and not SENTENCE_PUNCTUATION.intersection(line):
            synonyms.append(line)
            continue
        target.append(line)
    # Definitions are hard-wrapped mid-sentence: the pieces join without a break.
    return {"code": code, "term": term, "synonyms": synonyms, "definition": "".join(definition),
            "note": "".join(note) or None}


def _is_section_heading(line: str) -> bool:
    return bool(re.match(r"^\d+[\u4e00-\u9fff]", line)) and len(line) <= 20 \
        and not SENTENCE_PUNCTUATION.intersection(line)
