"""Priority sampling: the training order of the corpus.

HuatuoGPT-II orders its unified data by one weighted permutation without replacement: each item
is drawn with probability proportional to its class weight among the items not yet drawn, so
domain text comes first and fine-tuning data rises as the domain pools drain. Drawing with
exponential keys gives exactly that distribution: each item gets key -ln(u)/w with u uniform in
(0, 1), and the permutation is the items sorted by key. Keys are computed per item from a hash of
(seed, id, epoch), so the order depends on neither input order nor engine, and a sort scales
where a sequential multinomial draw (exact only below 2^24 items in torch) does not.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from schemas import CONVERSATIONS, CORPUS, CORPUS_SCHEMA, DOCUMENTS, conform, dumps_meta, loads_meta, nullable_schema

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


def id_hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "little") for i in ids),
        dtype=np.uint64,
        count=len(ids),
    )


def uniform_draws(hashes: np.ndarray, epochs: np.ndarray, seed: int) -> np.ndarray:
    """One uniform number in (0, 1) per (seed, id, epoch), reproducible on any engine."""
    with np.errstate(over="ignore"):
        salt = _splitmix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) + epochs.astype(np.uint64) * np.uint64(0x632BE59BD9B4E019))
    bits = _splitmix64(hashes ^ salt) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) / float(1 << 53)


def sort_keys(hashes: np.ndarray, epochs: np.ndarray, weights: np.ndarray, is_sft: np.ndarray, mode: str, seed: int) -> np.ndarray:
    """The sort key of each item; ascending keys are the training order."""
    u = uniform_draws(hashes, epochs, seed)
    if mode == "priority":
        return -np.log(u) / weights
    if mode == "uniform":
        return -np.log(u)
    if mode == "sequential":  # all domain items (shuffled), then all fine-tuning items
        return is_sft.astype(np.float64) * 2.0 + u
    raise ValueError(f"unknown sampling mode {mode!r}")


def item_weights(categories: list[str], sources: list[str], params: dict) -> np.ndarray:
    weights = params.get("weights") or {}
    by_source = params.get("source_weights") or {}
    return np.array([float(by_source.get(s, weights.get(c, 1.0))) for c, s in zip(categories, sources)], dtype=np.float64)


def to_corpus_rows(table: pa.Table, kind: str) -> pa.Table:
    """Conversations become chat rows, documents text rows, in the corpus schema (no position yet)."""
    n = table.num_rows
    if kind == CONVERSATIONS:
        table = conform(table, CONVERSATIONS, extra=False)
        messages, text, fmt = table.column("messages"), pa.nulls(n, pa.string()), "chat"
    else:
        table = conform(table, DOCUMENTS, extra=False)
        messages, text, fmt = pa.nulls(n, CORPUS_SCHEMA.field("messages").type), table.column("text"), "text"
    metas = []
    for row in table.select(["meta", *(["title", "url"] if kind == DOCUMENTS else ["origin_id"])]).to_pylist():
        meta = loads_meta(row.pop("meta"))
        meta.update({k: v for k, v in row.items() if v is not None})
        metas.append(dumps_meta(meta))
    return pa.table(
        {
            "id": table.column("id"),
            "source": table.column("source"),
            "category": table.column("category"),
            "format": pa.array([fmt] * n, pa.string()),
            "messages": messages,
            "text": text,
            "meta": pa.array(metas, pa.string()),
        }
    )


def priority_order(items: pa.Table, params: dict) -> tuple[pa.Table, np.ndarray]:
    """Expand fine-tuning items to `sft_epochs` copies and return (expanded items, order).

    Copies of one item get ids `<id>@<epoch>` and meta {"epoch"}; `order` indexes the expanded
    table in training order."""
    epochs_of_sft = int(params.get("sft_epochs", 1))
    categories = items.column("category").to_pylist()
    is_sft = np.array([c == "sft" for c in categories], dtype=bool)
    repeats = np.where(is_sft, epochs_of_sft, 1)
    source_rows = np.repeat(np.arange(items.num_rows), repeats)
    epochs = np.concatenate([np.arange(r) for r in repeats]) if len(repeats) else np.zeros(0, dtype=np.int64)
    expanded = items.take(pa.array(source_rows, pa.int64()))
    if epochs_of_sft > 1 and is_sft.any():
        ids, metas = expanded.column("id").to_pylist(), expanded.column("meta").to_pylist()
        sft_rows = is_sft[source_rows]
        new_ids, new_metas = [], []
        for i, (row_id, meta, epoch) in enumerate(zip(ids, metas, epochs)):
            if sft_rows[i]:
                new_ids.append(f"{row_id}@{epoch}")
                new_metas.append(dumps_meta({**loads_meta(meta), "epoch": int(epoch), "origin_id": loads_meta(meta).get("origin_id", row_id)}))
            else:
                new_ids.append(row_id)
                new_metas.append(meta)
        expanded = expanded.set_column(0, "id", pa.array(new_ids, pa.string()))
        expanded = expanded.set_column(expanded.schema.get_field_index("meta"), "meta", pa.array(new_metas, pa.string()))
    base_ids = items.column("id").to_pylist()
    hashes = id_hashes(base_ids)[source_rows]
    weights = item_weights(categories, items.column("source").to_pylist(), params)[source_rows]
    keys = sort_keys(hashes, epochs.astype(np.uint64), weights, is_sft[source_rows], params.get("mode", "priority"), int(params.get("seed", 0)))
    return expanded, np.argsort(keys, kind="stable")


def with_positions(table: pa.Table, start: int) -> pa.Table:
    positions = pa.array(np.arange(start, start + table.num_rows, dtype=np.int64))
    table = table.add_column(1, "position", positions)
    return table.select(CORPUS_SCHEMA.names).cast(nullable_schema(CORPUS))
