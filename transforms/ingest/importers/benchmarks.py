"""Evaluation sets, read as the references decontamination must keep out of the corpus.

Every item becomes {"benchmark", "item", "question", "options", "answer", "answer_label"},
whatever the file's columns, all text. The answer of a multiple-choice item is the text of the
option(s) its letter(s) name ("D" -> "肾阴虚而心火旺"; "AC" -> both, one a line), since a corpus
quoting the answer quotes its words, not its letter; the letters stay in answer_label.
Shapes:
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
ITEM_FIELDS = {*QUESTION_KEYS, *ANSWER_KEYS, *ID_KEYS, *OPTION_LETTERS, "options", "choices", "instruction", "input"}
MARKUP = re.compile(r"</?(?:text|question|context|passage)>")
# "A", "A、C", "A,C", "AC": the letters of a multiple-choice answer, less separators.
ANSWER_LETTERS = re.compile(r"[\s,，、;；]+")


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
                "answer_label": item["answer_label"], "file": path.name}
        if item["other_fields"]:
            meta["other_fields"] = item["other_fields"]  # an explanation (parse), a source
        record = document(text, source, category, title=f"{name}:{item['item']}", meta=meta,
                          reason=None if item["question"] else "malformed:no_question",
                          fallback_key=(path.name, item["item"]))
        # An evaluation item's answer and explanation are never training data.
        record.untrained = tuple(k for k in ("item", "answer", "answer_label", "other_fields") if meta.get(k))
        yield record


def _rows(path: Path) -> list[Any]:
    if path.suffix.lower() == ".csv":
        text = read_source(path).text
        return list(csv.DictReader(io.StringIO(text)))
    return [record for _, record, raw_error in read_records(path) if raw_error is None]


def _item(row: Any, index: int, name: str, boilerplate: set[str]) -> dict:
    if not isinstance(row, dict):
        return {"benchmark": name, "item": str(index), "question": "", "options": "", "answer": "", "answer_label": "",
                "other_fields": {}}
    item_id = next((str(row[k]) for k in ID_KEYS if k in row and str(row[k]).strip()), str(index))
    question = _first(row, QUESTION_KEYS)
    boilerplate_instruction = ""
    if not question and ("input" in row or "instruction" in row):
        instruction = _clean(row.get("instruction"))
        question = _clean(row.get("input"))
        if instruction and instruction not in boilerplate:
            question = f"{instruction}\n{question}".strip()
        elif instruction:
            boilerplate_instruction = instruction
    options = _options(row)
    answer, label = _first(row, ANSWER_KEYS), ""
    letters = ANSWER_LETTERS.sub("", answer)
    if options and isinstance(options, dict) and letters.isascii() and letters.isalpha() and set(letters) <= set(options):
        label, answer = letters, "\n".join(options[letter] for letter in letters)
    return {
        "benchmark": name,
        "item": item_id,
        "question": question,
        "options": "\n".join(f"{key}. {value}" for key, value in options.items())
        if isinstance(options, dict) else options,
        "answer": answer,
        "answer_label": label,
        # Fields no part of the item reads (an explanation, a source), kept as they are.
        "other_fields": {
            **{str(k): _clean(v) for k, v in row.items() if k not in ITEM_FIELDS and _clean(v)},
            **({"instruction": boilerplate_instruction} if boilerplate_instruction else {}),
        },
    }


def _options(row: dict) -> dict[str, str] | str:
    """Options by letter, or the options as the file wrote them when they are one string."""
    options = row.get("options", row.get("choices"))
    if isinstance(options, dict):
        return {str(key).strip(): _clean(value) for key, value in options.items()}
    if isinstance(options, list):
        return {OPTION_LETTERS[i] if i < len(OPTION_LETTERS) else str(i + 1): _clean(v) for i, v in enumerate(options)}
    if isinstance(options, str):
        return options.strip()
    return {letter: _clean(row[letter]) for letter in OPTION_LETTERS if letter in row and _clean(row[letter])}


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
