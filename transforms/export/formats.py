"""The corpus in the formats trainers read (LLaMA-Factory, axolotl): JSON lines in training order.

- `sharegpt`: {"id", "conversations": [{"from": human|gpt, "value"}], "system"}
- `alpaca`: {"instruction", "input", "output", "history": [[q, a], ...], "system"}
- `jsonl`: every corpus column as it is (file `corpus.jsonl`).
`system` is on every chat row, "" when the conversation has no system turn: LLaMA-Factory reads
every column its `dataset_info.json` entry maps, and a column no row holds is not in the loaded
dataset at all. Plain text rows have no place in a chat format: they go once, whatever the chat
formats, to `pretrain.jsonl` as {"id", "text"} (two copies registered under two names would
double the book text for a user who registers both).
A `dataset_info.json` beside the files registers them with LLaMA-Factory.
"""
from __future__ import annotations

import json
from collections import Counter
from json.encoder import encode_basestring as _quote
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CORPUS
from schemas.dataset import iter_batches

FORMATS = ("sharegpt", "alpaca", "jsonl")
EXPORT_ROLES = {"system": "system", "user": "human", "assistant": "gpt"}
DATASET_INFO = "dataset_info.json"


def export_record(row: dict, fmt: str) -> tuple[str, dict]:
    """(file stem, record) of one corpus row in a trainer's format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    messages = row.get("messages") or []
    if fmt == "jsonl":
        return "corpus", {k: row[k] for k in ("id", "position", "source", "category", "format", "messages", "text", "meta")}
    if row["format"] == "text":
        return "pretrain", {"id": row["id"], "text": row["text"]}
    has_system = bool(messages) and messages[0]["role"] == "system"
    system = messages[0]["content"] if has_system else ""
    turns = messages[1:] if has_system else messages
    if fmt == "sharegpt":
        conversations = [{"from": EXPORT_ROLES[m["role"]], "value": m["content"]} for m in turns]
        return "sharegpt", {"id": row["id"], "conversations": conversations, "system": system}
    pairs = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
    *history, (instruction, output) = pairs
    return "alpaca", {"instruction": instruction, "input": "", "output": output, "history": [list(p) for p in history], "system": system}


def file_name(fmt: str, stem: str) -> str:
    """`sharegpt.jsonl`, `alpaca.jsonl`, `corpus.jsonl`, and `pretrain.jsonl` shared by the chat formats."""
    return f"{stem}.jsonl"


def llama_factory_info(names: list[str], prefix: str = "tcm") -> dict:
    """LLaMA-Factory's dataset_info.json entries for the exported files."""
    info = {}
    for name in names:
        stem = name.removesuffix(".jsonl")
        if stem == "sharegpt":
            info[f"{prefix}_sharegpt"] = {
                "file_name": name,
                "formatting": "sharegpt",
                "columns": {"messages": "conversations", "system": "system"},
                "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"},
            }
        elif stem == "alpaca":
            info[f"{prefix}_alpaca"] = {
                "file_name": name,
                "columns": {"prompt": "instruction", "query": "input", "response": "output", "history": "history", "system": "system"},
            }
        elif stem == "pretrain":
            info[f"{prefix}_pretrain"] = {"file_name": name, "columns": {"prompt": "text"}}
    return info


def export_corpus(inputs: list[Path], folder: Path, formats: list[str], counted: Callable[[int], None] | None = None) -> Counter:
    """Write each format's files into `folder`, rows in training order; returns rows per file."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; known: {', '.join(FORMATS)}")
    handles = {}
    counts: Counter = Counter()
    first_chat = next((f for f in formats if f != "jsonl"), None)
    try:
        for fmt in formats:
            # The chat formats read four columns; `jsonl` writes every column.
            columns = None if fmt == "jsonl" else list(CHAT_COLUMNS)
            for path in inputs:
                for batch in iter_batches(path, CORPUS, 4096, columns):
                    if counted and fmt == formats[0]:
                        counted(batch.num_rows)
                    lines: dict[str, list[str]] = {}
                    for stem, line in _batch_lines(batch, fmt):
                        if stem == "pretrain" and fmt != first_chat:
                            continue  # written once, by the first chat format
                        lines.setdefault(file_name(fmt, stem), []).append(line)
                    for name, written in lines.items():
                        if name not in handles:
                            handles[name] = open(folder / name, "w", encoding="utf-8")
                        handles[name].write("".join(written))
                        counts[name] += len(written)
    finally:
        for handle in handles.values():
            handle.close()
    info = llama_factory_info(sorted(counts))
    if info:
        (folder / DATASET_INFO).write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    return counts


CHAT_COLUMNS = ("id", "format", "messages", "text")
# json.dumps(record, ensure_ascii=False) of the records export_record makes, one line each.
_RECORD = json.JSONEncoder(ensure_ascii=False)


def _json_string(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _batch_lines(batch: pa.RecordBatch, fmt: str) -> Iterator[tuple[str, str]]:
    """(file stem, JSON line) of each row of a corpus batch, in order: the line
    `json.dumps(export_record(row, fmt)[1], ensure_ascii=False)` writes. ShareGPT and plain
    text rows are written from the columns' strings (no dict per row or per turn)."""
    messages = batch.column("messages")
    turns = pc.list_flatten(messages)  # a null list (a text row's) holds no turns
    if fmt != "sharegpt" or turns.null_count:
        for row in batch.to_pylist():
            stem, record = export_record(row, fmt)
            yield stem, _RECORD.encode(record) + "\n"
        return
    roles, contents = turns.field("role").to_pylist(), turns.field("content").to_pylist()
    ends = np.cumsum(pc.list_value_length(messages).fill_null(0).to_numpy(zero_copy_only=False)).tolist()
    start = 0
    for row_id, row_format, text, end in zip(
        batch.column("id").to_pylist(), batch.column("format").to_pylist(), batch.column("text").to_pylist(), ends
    ):
        if row_format == "text":
            yield "pretrain", f'{{"id": {_json_string(row_id)}, "text": {_json_string(text)}}}\n'
        else:
            first = start
            system = '""'
            if end > start and roles[start] == "system":
                system, first = _json_string(contents[start]), start + 1
            conversation = ", ".join(
                f'{{"from": {_quote(EXPORT_ROLES[roles[i]])}, "value": {_json_string(contents[i])}}}' for i in range(first, end)
            )
            yield "sharegpt", f'{{"id": {_json_string(row_id)}, "conversations": [{conversation}], "system": {system}}}\n'
        start = end
