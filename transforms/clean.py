"""The clean stage over record batches: normalise text, then reject what is too thin to train on.

Each function takes a batch and the `[clean]` parameters and returns (kept, rejected); every
input row is in exactly one of the two, and a rejected row says which rule and value removed it.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from schemas import CONVERSATIONS, DOCUMENTS, ROLES, conform

from .normalize import han_count, normalize_text

# A text counts as traditional when at least this share of its Han characters changed.
TRADITIONAL_SHARE = 0.05


def _split(table: pa.Table, reasons: list[str | None]) -> tuple[pa.Table, pa.Table]:
    is_rejected = pa.array([r is not None for r in reasons])
    kept = table.filter(pc.invert(is_rejected))
    rejected = table.filter(is_rejected)
    rejected = rejected.append_column("reason", pa.array([r for r in reasons if r is not None], pa.string()))
    return kept, rejected


def clean_documents(batch: pa.RecordBatch | pa.Table, params: dict) -> tuple[pa.Table, pa.Table]:
    table = conform(batch, DOCUMENTS)
    opencc, form = params.get("opencc", "t2s"), params.get("unicode_form", "NFKC")
    min_chars, min_han = params.get("min_chars", 20), params.get("min_han_ratio", 0.0)
    texts, traditional, reasons = [], [], []
    for raw in table.column("text").to_pylist():
        text, changed = normalize_text(raw or "", opencc, form)
        han = han_count(text)
        texts.append(text)
        traditional.append(han > 0 and changed / han >= TRADITIONAL_SHARE)
        if not text:
            reasons.append("empty")
        elif len(text) < min_chars:
            reasons.append(f"too_short:chars={len(text)}<min_chars={min_chars}")
        elif min_han and han / len(text) < min_han:
            reasons.append(f"low_han_ratio:{han / len(text):.2f}<min_han_ratio={min_han}")
        else:
            reasons.append(None)
    # Rejected rows keep the text as it came in, so nothing the stage changed is lost.
    original = table
    table = table.set_column(table.schema.get_field_index("text"), "text", pa.array(texts, pa.string()))
    table = _with_column(table, "traditional", pa.array(traditional, pa.bool_()))
    kept, _ = _split(table, reasons)
    _, rejected = _split(original, reasons)
    return kept, rejected


def clean_conversations(batch: pa.RecordBatch | pa.Table, params: dict) -> tuple[pa.Table, pa.Table]:
    table = conform(batch, CONVERSATIONS)
    opencc, form = params.get("opencc", "t2s"), params.get("unicode_form", "NFKC")
    min_turn = params.get("min_turn_chars", 1)
    conversations, traditional, reasons = [], [], []
    for messages in table.column("messages").to_pylist():
        cleaned, changed, han = [], 0, 0
        for message in messages or []:
            content, n = normalize_text(message.get("content") or "", opencc, form)
            cleaned.append({"role": message.get("role"), "content": content})
            changed, han = changed + n, han + han_count(content)
        conversations.append(cleaned)
        traditional.append(han > 0 and changed / han >= TRADITIONAL_SHARE)
        reasons.append(_conversation_problem(cleaned, min_turn))
    original = table
    index = table.schema.get_field_index("messages")
    table = table.set_column(index, table.schema.field(index), pa.array(conversations, table.schema.field(index).type))
    table = _with_column(table, "traditional", pa.array(traditional, pa.bool_()))
    kept, _ = _split(table, reasons)
    _, rejected = _split(original, reasons)
    return kept, rejected


def _conversation_problem(messages: list[dict], min_turn: int) -> str | None:
    """Why a conversation cannot be trained on, or None: roles must alternate user/assistant
    after an optional system turn, and end with the assistant."""
    if not messages:
        return "empty"
    turns = messages[1:] if messages[0]["role"] == "system" else messages
    if not turns:
        return "empty"
    for i, message in enumerate(turns):
        if message["role"] not in ROLES:
            return f"bad_role:{message['role']}"
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            return f"roles_not_alternating:turn={i}"
        if len(message["content"]) < min_turn:
            return f"short_turn:turn={i}<min_turn_chars={min_turn}"
    if turns[-1]["role"] != "assistant":
        return "no_answer"
    return None


def _with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.schema.names:
        return table.set_column(table.schema.get_field_index(name), name, values)
    return table.append_column(name, values)


STEPS = {DOCUMENTS: clean_documents, CONVERSATIONS: clean_conversations}
