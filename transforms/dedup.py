"""Exact deduplication: texts equal after normalisation (Unicode, traditional/simplified,
punctuation and spacing) are one text; one copy survives, the others are rejected naming it.

Two steps, so each engine can run them its own way: `dedup_keys` maps a batch to keys (parallel),
`choose_survivors` is the global decision over all keys (one pure core for every engine).
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from schemas import CONVERSATIONS, conversation_text

from .normalize import match_key


def text_of(table: pa.Table, kind: str) -> list[str]:
    """The words of each row that duplicate detection compares."""
    if kind == CONVERSATIONS:
        return [conversation_text(m or []) for m in table.column("messages").to_pylist()]
    return [t or "" for t in table.column("text").to_pylist()]


def dedup_keys(batch: pa.RecordBatch | pa.Table, kind: str) -> pa.Table:
    """id, key (digest of the normalised text) and length of each row, in input order."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    texts = text_of(table, kind)
    keys = [hashlib.blake2b(match_key(t).encode("utf-8"), digest_size=16).digest() for t in texts]
    return pa.table(
        {
            "id": table.column("id"),
            "key": pa.array(keys, pa.binary(16)),
            "length": pa.array([len(t) for t in texts], pa.int64()),
        }
    )


def choose_survivors(keys: Iterable[pa.Table], keep: str = "first") -> dict[str, str]:
    """Map each duplicate row's id to the id of the copy that survives.

    `first` keeps the earliest row (input order: source order of the config); `longest` keeps
    the longest text, the earliest among equals. Rows absent from the map survive."""
    best: dict[bytes, tuple[int, int, str]] = {}  # key -> (-length or 0, order, id)
    members: dict[bytes, list[str]] = {}
    order = 0
    for table in keys:
        for row_id, key, length in zip(
            table.column("id").to_pylist(), table.column("key").to_pylist(), table.column("length").to_pylist()
        ):
            rank = (-length if keep == "longest" else 0, order, row_id)
            order += 1
            if key not in best:
                best[key] = rank
                continue
            members.setdefault(key, []).append(best[key][2] if rank < best[key] else row_id)
            if rank < best[key]:
                best[key] = rank
    duplicate_of: dict[str, str] = {}
    for key, ids in members.items():
        survivor = best[key][2]
        for row_id in ids:
            if row_id != survivor:
                duplicate_of[row_id] = survivor
    return duplicate_of


def split_duplicates(batch: pa.RecordBatch | pa.Table, duplicate_of: dict[str, str]) -> tuple[pa.Table, pa.Table]:
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    ids = table.column("id").to_pylist()
    mask = pa.array([row_id in duplicate_of for row_id in ids])
    rejected = table.filter(mask)
    reasons = [f"exact_duplicate_of:{duplicate_of[i]}" for i in ids if i in duplicate_of]
    rejected = rejected.append_column("reason", pa.array(reasons, pa.string()))
    return table.filter(pc.invert(mask)), rejected
