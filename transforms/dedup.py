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


def choose_survivors(keys: Iterable[pa.Table], keep: str = "first") -> dict[int, str]:
    """Map the position (row number across all key tables, in input order) of each duplicate row
    to the id of the copy that survives.

    Decided by position, not id: two copies can share an id (the same text from two files of one
    source). `first` keeps the earliest row; `longest` keeps the longest text, the earliest among
    equals. Rows absent from the map survive."""
    best: dict[bytes, tuple[int, int, str]] = {}  # key -> (-length or 0, position, id)
    losers: dict[bytes, list[int]] = {}
    position = 0
    for table in keys:
        for row_id, key, length in zip(
            table.column("id").to_pylist(), table.column("key").to_pylist(), table.column("length").to_pylist()
        ):
            rank = (-length if keep == "longest" else 0, position, row_id)
            position += 1
            if key not in best:
                best[key] = rank
            elif rank < best[key]:
                losers.setdefault(key, []).append(best[key][1])
                best[key] = rank
            else:
                losers.setdefault(key, []).append(rank[1])
    return {loser: best[key][2] for key, positions in losers.items() for loser in positions}


def split_duplicates(
    batch: pa.RecordBatch | pa.Table, duplicate_of: dict[int, str], offset: int
) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected) of a batch whose first row is at `offset` in the input order."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    positions = range(offset, offset + table.num_rows)
    mask = pa.array([p in duplicate_of for p in positions])
    rejected = table.filter(mask)
    reasons = [f"exact_duplicate_of:{duplicate_of[p]}" for p in positions if p in duplicate_of]
    rejected = rejected.append_column("reason", pa.array(reasons, pa.string()))
    return table.filter(pc.invert(mask)), rejected
