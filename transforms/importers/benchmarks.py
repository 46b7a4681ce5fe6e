"""Evaluation sets, read as the references decontamination must keep out of the corpus.

Every item becomes {"benchmark", "item", "question", "options", "answer"}, whatever the file's
columns:
    multiple choice   question/Question + options (a dict, a list, or A..H columns) + answer
    instruction sets  instruction/input/output: the question is the input (passage and question
                      of a reading-comprehension item, a medical case), prefixed by the
                      instruction unless the instruction is one boilerplate line shared by items
CSV is read with the csv module, JSON lists and JSON lines are told apart by content.
"""
from __future__ import annotations

import csv
import io
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from .base import Imported, document, read_source
from .instructions import read_records

QUESTION_KEYS = ("question", "Question", "问题", "题目", "stem")
ANSWER_KEYS = ("answer", "Answer", "答案", "output", "label")
ID_KEYS = ("id", "ID", "Id", "", "Unnamed: 0")
OPTION_LETTERS = "ABCDEFGH"
MARKUP = re.compile(r"</?(?:text|question|context|passage)>")


def load_benchmark(path: Path, name: str | None = None) -> list[dict]:
    """Every item of one benchmark file that has a question."""
    return [item for item in benchmark_items(Path(path), name) if item["question"]]


def benchmark_items(path: Path, name: str | None = None) -> list[dict]:
    name = name or path.stem
    rows = _rows(path)
    repeated = Counter(str(row.get("instruction", "")).strip() for row in rows if isinstance(row, dict))
    boilerplate = {text for text, count in repeated.items() if text and count > 1}
    return [_item(row, index, name, boilerplate) for index, row in enumerate(rows)]


def import_benchmark(path: Path, source: str, category: str, options: dict | None = None) -> Iterator[Imported]:
    """Benchmark items as Documents (question and options as text), for inspection and reports."""
    name = (options or {}).get("benchmark") or path.stem
    for item in benchmark_items(path, name):
        text = "\n".join(part for part in (item["question"], item["options"]) if part)
        meta = {"kind": "benchmark", "benchmark": name, "item": item["item"], "answer": item["answer"],
                "file": path.name}
        yield document(text, source, category, title=f"{name}:{item['item']}", meta=meta,
                       reason=None if item["question"] else "malformed:no_question",
                       fallback_key=(path.name, item["item"]))


def _rows(path: Path) -> list[Any]:
    if path.suffix.lower() == ".csv":
        text = read_source(path).text
        return list(csv.DictReader(io.StringIO(text)))
    return [record for _, record, raw_error in read_records(path) if raw_error is None]


def _item(row: Any, index: int, name: str, boilerplate: set[str]) -> dict:
    if not isinstance(row, dict):
        return {"benchmark": name, "item": str(index), "question": "", "options": "", "answer": ""}
    item_id = next((str(row[k]) for k in ID_KEYS if k in row and str(row[k]).strip()), str(index))
    question = _first(row, QUESTION_KEYS)
    if not question and ("input" in row or "instruction" in row):
        instruction = _clean(row.get("instruction"))
        question = _clean(row.get("input"))
        if instruction and instruction not in boilerplate:
            question = f"{instruction}\n{question}".strip()
    return {
        "benchmark": name,
        "item": item_id,
        "question": question,
        "options": _options(row),
        "answer": _first(row, ANSWER_KEYS),
    }


def _options(row: dict) -> str:
    options = row.get("options", row.get("choices"))
    if isinstance(options, dict):
        return "\n".join(f"{key}. {_clean(value)}" for key, value in options.items())
    if isinstance(options, list):
        return "\n".join(f"{OPTION_LETTERS[i] if i < len(OPTION_LETTERS) else i + 1}. {_clean(v)}"
                         for i, v in enumerate(options))
    if isinstance(options, str):
        return options.strip()
    return "\n".join(f"{letter}. {_clean(row[letter])}" for letter in OPTION_LETTERS
                     if letter in row and _clean(row[letter]))


def _first(row: dict, keys: tuple[str, ...]) -> str:
    for key in keys:
        if key in row and _clean(row[key]):
            return _clean(row[key])
    return ""


def _clean(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        value = "\n".join(str(v) for v in value)
    return MARKUP.sub("\n", str(value)).strip()
