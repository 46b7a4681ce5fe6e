"""Reading and checking what the LLM wrote.

`read_field` finds a JSON object in a reply however it is wrapped (bare, in a ``` fence, after a
preamble, followed by a remark) and returns one string field. The checks return None for a good
question or answer, else a rejection reason naming the rule and the parameter that decided it
(`drift:coverage=0.04<min_passage_coverage=0.15`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional

FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
LETTER = re.compile(r"[A-Za-z\u00c0-\u024f\u0400-\u04ff\u3040-\u30ff\uac00-\ud7af]")
NOT_COMPARED = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaffA-Za-z0-9]+")

# Words that give away that an answer was written from a source text the asker never saw.
DEFAULT_LEAK_PHRASES = [
    "参考", "原文", "根据上述", "根据上文", "根据以上", "上述内容", "上述资料", "以上资料", "文中", "本文", "文章",
    "材料", "所给", "所提供", "提供的信息", "提供的知识", "给出的知识", "这段知识", "该段", "这段话", "段落", "资料显示", "资料中",
]
# A question must not point at a text either: the asker has none.
DEFAULT_QUESTION_LEAK_PHRASES = [
    "文中", "本文", "原文", "上文", "材料", "文章", "这段", "该段", "段落", "资料", "所给", "以上内容", "上述",
]


class Unreadable(ValueError):
    """A reply with no JSON object holding the wanted field."""


def _objects(text: str):
    """Every balanced {...} span in `text`, outermost first, in order."""
    depth, start, in_string, escaped = 0, None, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                yield text[start : i + 1]


def read_field(reply: str, name: str) -> str:
    candidates = [m.group(1) for m in FENCE.finditer(reply)] + [reply]
    for candidate in candidates:
        for span in _objects(candidate):
            for text in (span, re.sub(r",\s*([}\]])", r"\1", span)):  # a trailing comma is forgiven
                try:
                    value = json.loads(text)
                except ValueError:
                    continue
                if isinstance(value, dict) and isinstance(value.get(name), str) and value[name].strip():
                    return value[name].strip()
    raise Unreadable(f"no JSON object with a {name!r} string")


def han_share(text: str) -> float:
    """Han characters among all letters (Han, Latin, Cyrillic, kana, Hangul)."""
    han = len(HAN.findall(text))
    letters = han + len(LETTER.findall(text))
    return han / letters if letters else 0.0


def ngrams(text: str, n: int) -> set[str]:
    compact = NOT_COMPARED.sub("", text)
    if len(compact) < n:
        return {compact} if compact else set()
    return {compact[i : i + n] for i in range(len(compact) - n + 1)}


def grounding(answer: str, passage: str, n: int) -> tuple[float, float]:
    """(overlap, coverage): the share of the answer's character n-grams found in the passage, and
    the share of the passage's n-grams the answer uses."""
    a, p = ngrams(answer, n), ngrams(passage, n)
    if not a or not p:
        return 0.0, 0.0
    common = len(a & p)
    return common / len(a), common / len(p)


@dataclass
class Checks:
    max_question_chars: int = 150
    min_question_chars: int = 6
    min_han_share: float = 0.6
    min_answer_chars: int = 30
    min_answer_ratio: float = 0.2  # of the passage's length
    ngram: int = 2
    min_answer_overlap: float = 0.25
    min_passage_coverage: float = 0.15
    leak_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_LEAK_PHRASES))
    question_leak_phrases: list[str] = field(default_factory=lambda: list(DEFAULT_QUESTION_LEAK_PHRASES))

    @classmethod
    def from_params(cls, params: dict) -> "Checks":
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in params.items() if k in known and v is not None})

    def question(self, question: str, passage: str = "") -> Optional[str]:
        length = len(question)
        if length > self.max_question_chars:
            return f"question_too_long:chars={length}>max_question_chars={self.max_question_chars}"
        if length < self.min_question_chars:
            return f"question_too_short:chars={length}<min_question_chars={self.min_question_chars}"
        share = han_share(question)
        if share < self.min_han_share:
            return f"question_not_chinese:han={share:.2f}<min_han_share={self.min_han_share}"
        for phrase in self.question_leak_phrases:
            if phrase in question and phrase not in passage:
                return f"question_refers_to_source:{phrase}"
        return None

    def answer(self, answer: str, passage: str) -> Optional[str]:
        for phrase in self.leak_phrases:
            # A word the passage itself uses (参考剂量, 药材料) is content, not a reference to it.
            if phrase in answer and phrase not in passage:
                return f"answer_leaks_source:{phrase}"
        share = han_share(answer)
        if share < self.min_han_share:
            return f"answer_not_chinese:han={share:.2f}<min_han_share={self.min_han_share}"
        floor = max(self.min_answer_chars, int(self.min_answer_ratio * len(passage)))
        if len(answer) < floor:
            return f"answer_too_short:chars={len(answer)}<{floor}(min_answer_chars={self.min_answer_chars},min_answer_ratio={self.min_answer_ratio})"
        overlap, coverage = grounding(answer, passage, self.ngram)
        if overlap < self.min_answer_overlap:
            return f"drift:overlap={overlap:.2f}<min_answer_overlap={self.min_answer_overlap}"
        if coverage < self.min_passage_coverage:
            return f"drift:coverage={coverage:.2f}<min_passage_coverage={self.min_passage_coverage}"
        return None


def judge_verdict(reply: str) -> Optional[str]:
    """None when the judge passes the pair, else `judge:<its reason>`."""
    verdict = read_field(reply, "verdict").lower()
    if verdict in ("pass", "通过", "合格", "yes", "true"):
        return None
    try:
        why = read_field(reply, "reason")
    except Unreadable:
        why = verdict
    return f"judge:{why[:80]}"
