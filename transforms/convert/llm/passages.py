"""Passages: a document cut into pieces an LLM can turn into one question and its answer.

Cuts fall on paragraph ends, then on sentence ends (。！？；… and ASCII !?; with any closing
quotes or brackets that follow), never inside a sentence. Only a sentence longer than the whole
passage bound is cut on commas (，、：), and a clause longer still is cut at the bound; both are
recorded on the passage (`cut`), so a reader can find them.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterator

SENTENCE_END = re.compile(r"(?:……|…+|[。！？；!?;])[”’」』）)》\"']*")
CLAUSE_END = re.compile(r"[，、：,:][”’」』）)》\"']*")


@dataclass(frozen=True)
class Passage:
    text: str
    index: int  # 0-based position in its document
    cut: str = "paragraph"  # roughest cut inside it: paragraph | sentence | comma | hard

    @property
    def digest(self) -> str:
        return passage_hash(self.text)


def passage_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _pieces(text: str, pattern: re.Pattern) -> list[str]:
    """`text` cut after every match of `pattern`; the pieces joined give `text` back."""
    pieces, start = [], 0
    for match in pattern.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    if start < len(text):
        pieces.append(text[start:])
    return [p for p in pieces if p.strip()]


def sentences(paragraph: str) -> list[str]:
    return _pieces(paragraph, SENTENCE_END)


def _units(text: str, max_chars: int) -> Iterator[tuple[str, str, bool]]:
    """(piece, how it was cut, ends a paragraph), every piece at most `max_chars` long."""
    for paragraph in (p.strip() for p in re.split(r"\n\s*", text)):
        if not paragraph:
            continue
        if len(paragraph) <= max_chars:
            yield paragraph, "paragraph", True
            continue
        parts = sentences(paragraph)
        for number, sentence in enumerate(parts):
            last = number == len(parts) - 1
            if len(sentence) <= max_chars:
                yield sentence, "sentence", last
                continue
            clauses = _pieces(sentence, CLAUSE_END)
            for k, clause in enumerate(clauses):
                end = last and k == len(clauses) - 1
                if len(clause) <= max_chars:
                    yield clause, "comma", end
                else:
                    for start in range(0, len(clause), max_chars):
                        yield clause[start : start + max_chars], "hard", end and start + max_chars >= len(clause)


CUT_RANK = {"paragraph": 0, "sentence": 1, "comma": 2, "hard": 3}


def split_passages(text: str, min_chars: int, max_chars: int) -> list[Passage]:
    """Greedy packing of paragraphs and sentences into passages of at most `max_chars`; a short
    tail joins the passage before it when both fit, so few passages fall under `min_chars`.
    A passage's `cut` is the roughest cut among its pieces."""
    if max_chars < 1 or min_chars > max_chars:
        raise ValueError(f"passage bounds: min_chars={min_chars} must not exceed max_chars={max_chars}")
    chunks: list[list] = []  # [text, cut]
    current, cut = "", "paragraph"
    for piece, how, paragraph_end in _units(text, max_chars):
        if current and len(current.rstrip("\n")) + 1 + len(piece) > max_chars:
            chunks.append([current, cut])
            current, cut = "", "paragraph"
        current += piece + ("\n" if paragraph_end else "")
        cut = max(cut, how, key=CUT_RANK.__getitem__)
    if current.strip():
        chunks.append([current, cut])
    merged: list[list] = []
    for body, how in chunks:
        body = body.strip()
        if merged and len(body) < min_chars and len(merged[-1][0]) + 1 + len(body) <= max_chars:
            merged[-1][0] += "\n" + body
            merged[-1][1] = max(merged[-1][1], how, key=CUT_RANK.__getitem__)
        else:
            merged.append([body, how])
    return [Passage(body, i, how) for i, (body, how) in enumerate(merged)]
