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
from pathlib import Path
from typing import Callable

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
            for path in inputs:
                for batch in iter_batches(path, CORPUS, 4096):
                    if counted and fmt == formats[0]:
                        counted(batch.num_rows)
                    for row in batch.to_pylist():
                        stem, record = export_record(row, fmt)
                        if stem == "pretrain" and fmt != first_chat:
                            continue  # written once, by the first chat format
                        name = file_name(fmt, stem)
                        if name not in handles:
                            handles[name] = open(folder / name, "w", encoding="utf-8")
                        handles[name].write(json.dumps(record, ensure_ascii=False) + "\n")
                        counts[name] += 1
    finally:
        for handle in handles.values():
            handle.close()
    info = llama_factory_info(sorted(counts))
    if info:
        (folder / DATASET_INFO).write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    return counts
