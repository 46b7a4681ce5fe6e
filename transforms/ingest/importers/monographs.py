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

import re
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
    for start, end in entry_spans(lines):
        entry = parse_entry(lines[start:end])
        meta = {
            "kind": "monograph",
            "name": entry["name"],
            "pinyin": entry["pinyin"],
            "latin": entry["latin"],
            "description": entry["description"],
            "sections": entry["sections"],
            "file": path.name,
            "line": start + 1,
        }
        text = entry_text(entry)
        reason = None if entry["sections"] or entry["description"] else "empty_entry"
        yield document(text, source, category, title=entry["name"], meta=meta, reason=reason,
                       fallback_key=(path.name, str(start)))


def entry_spans(lines: list[str]) -> list[tuple[int, int]]:
    """(start, end) line ranges of the entries of a pharmacopoeia text."""
    starts = []
    for i, line in enumerate(lines):
        if not NAME.match(line) or line == PROCESSED:
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if PINYIN.match(following) and i + 2 < len(lines) and is_latin(lines[i + 2]):
            starts.append(i)
        elif DESCRIPTION.match(following) and (i == 0 or lines[i - 1].startswith(ENTRY_END)):
            starts.append(i)
    return list(zip(starts, [*starts[1:], len(lines)]))


def is_latin(line: str) -> bool:
    letters = [c for c in line if c.isalpha()]
    return (
        len(letters) >= 4
        and bool(LATIN.match(line))
        and sum(c.isupper() for c in letters) >= 0.7 * len(letters)
    )


def parse_entry(lines: list[str]) -> dict:
    entry = {"name": lines[0], "pinyin": None, "latin": None, "description": None, "sections": {},
             "body": []}
    position = 1
    if position + 1 < len(lines) and PINYIN.match(lines[position]) and is_latin(lines[position + 1]):
        entry["pinyin"], entry["latin"] = lines[position], lines[position + 1]
        position += 2
    description = []
    while position < len(lines) and lines[position] and not HEADINGS.match(lines[position]) \
            and lines[position] != PROCESSED:
        description.append(lines[position])
        position += 1
    entry["description"] = "\n".join(description) or None
    parts: dict[str, list[list[str]]] = {}
    processed = appendix = False
    current: list[str] = []  # the section part the lines being read belong to
    for line in lines[position:]:
        if not line or line.startswith("缺："):
            continue
        entry["body"].append(line)
        if line == PROCESSED:
            processed, current = True, []
            continue
        appendix = appendix or line.startswith(APPENDIX)
        if appendix:
            continue
        names, heading_text = _headings(line)
        if not names:
            current.append(line)
            continue
        current = [heading_text]
        for name in names:
            if name not in parts:
                if not (processed and heading_text.startswith(SAME_AS_CRUDE)):
                    parts[name] = [current]
            elif not processed:
                parts[name].append(current)
    for name, name_parts in parts.items():
        text = "\n".join("\n".join(part).strip() for part in name_parts).strip()
        if text:
            entry["sections"][name] = text
    return entry


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


def entry_text(entry: dict) -> str:
    lines = [entry["name"]]
    if entry["pinyin"]:
        lines.append(f"拼音名：{entry['pinyin']}")
    if entry["latin"]:
        lines.append(f"拉丁名：{entry['latin']}")
    if entry["description"]:
        lines.append(entry["description"])
    lines.extend(entry["body"])
    return "\n".join(lines)


def import_terms(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    decoded = read_source(path, options)
    lines = [line.strip() for line in decoded.text.splitlines()]
    codes = [i for i, line in enumerate(lines) if TERM_CODE.match(line)]
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
        meta = {"kind": "term", **term, "file": path.name}
        reason = None if term["definition"] else "empty_definition"
        yield document(text, source, category, title=term["term"], meta=meta, reason=reason,
                       fallback_key=(path.name, term["code"]))


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
