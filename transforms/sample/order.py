"""Priority sampling: the training order of the corpus.

HuatuoGPT-II orders its unified data by one weighted permutation without replacement: each item
is drawn with probability proportional to its class weight among the items not yet drawn, so
domain text comes first and fine-tuning data rises as the domain pools drain. Drawing with
exponential keys gives exactly that distribution: each item gets key -ln(u)/w with u uniform in
(0, 1), and the permutation is the items sorted by key. Keys are computed per item from a hash of
(seed, id, epoch), so the order depends on neither input order nor engine, and a sort scales
where a sequential multinomial draw (exact only below 2^24 items in torch) does not.

The order needs only each item's id, category and source: `plan_order` works on those (per
million items, a fifth of them fine-tuning data in 3 epochs: 46 MB kept, 115 MB at the peak of
the sort), and the rows themselves are gathered afterwards in a stream (`transforms.sample.shards`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CATEGORIES, CONVERSATIONS, CORPUS, CORPUS_SCHEMA, DOCUMENTS, conform, dumps_meta, loads_meta, nullable_schema

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
MODES = ("priority", "uniform", "sequential")
SFT = "sft"


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return x ^ (x >> np.uint64(31))


FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)


def id_hashes(ids: list[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """64-bit FNV-1a of each id's UTF-8 bytes, mixed by splitmix64: a hash any engine can compute
    the same way. Vectorised over the Arrow buffers, one pass per byte position, so ids are never
    turned into Python strings (about 0.1 us an id against 1.6 us for a hashlib call per id)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks() if ids.num_chunks else pa.array([], pa.string())
    array = ids if isinstance(ids, pa.Array) else pa.array(ids, pa.string())
    array = array.cast(pa.large_string())
    n = len(array)
    if array.null_count:
        raise ValueError("ids must not be null")
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + n + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if array.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    by_length = np.argsort(-lengths, kind="stable")  # longest first: the ids still running are a prefix
    # ids longer than j, for each byte position j
    sorted_starts, sorted_lengths = starts[by_length], lengths[by_length]
    running = np.full(n, FNV_OFFSET, dtype=np.uint64)
    longest = int(sorted_lengths[0]) if n else 0
    still = n - np.searchsorted(sorted_lengths[::-1], np.arange(longest), side="right")
    for j in range(longest):
        k = int(still[j])
        head = running[:k]
        head ^= data[sorted_starts[:k] + j].astype(np.uint64)
        head *= FNV_PRIME
    hashes = np.empty(n, dtype=np.uint64)
    hashes[by_length] = running
    return _splitmix64(hashes)


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
    raise ValueError(f"unknown sampling mode {mode!r}; known: {', '.join(MODES)}")


class Codes:
    """Small integer codes for repeated strings (categories, sources), in order of first sight."""

    def __init__(self, names: tuple[str, ...] = ()):
        self.names: list[str] = list(names)
        self._index = {name: i for i, name in enumerate(self.names)}

    def encode(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        encoded = column.dictionary_encode() if not isinstance(column, pa.ChunkedArray) else column.combine_chunks().dictionary_encode()
        local = []
        for name in encoded.dictionary.to_pylist():
            if name not in self._index:
                self._index[name] = len(self.names)
                self.names.append(name)
            local.append(self._index[name])
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        return np.asarray(local, dtype=np.int32)[indices] if len(indices) else np.zeros(0, dtype=np.int32)


@dataclass
class SamplingPlan:
    """Where every item and fine-tuning copy goes. Copies of item i are the expanded indices
    starts[i] .. starts[i+1]-1, with epochs 0, 1, ...; position[e] is copy e's training position."""

    starts: np.ndarray  # int64, items + 1
    epoch: np.ndarray  # int32 per expanded index
    position: np.ndarray  # int64 per expanded index
    category_in_order: np.ndarray  # int32 category code at each training position

    @property
    def rows(self) -> int:
        return int(self.starts[-1])


def item_weights(category_codes: np.ndarray, source_codes: np.ndarray, categories: list[str], sources: list[str], params: dict) -> np.ndarray:
    """Each item's weight: its source's override when configured, else its category's weight."""
    weights = params.get("weights") or {}
    by_source = params.get("source_weights") or {}
    unknown = [categories[code] for code in np.unique(category_codes) if categories[code] not in weights]
    if params.get("mode", "priority") == "priority" and unknown:
        raise ValueError(f"category {unknown[0]!r} has no sampling weight (weights are given for {', '.join(weights)})")
    per_category = np.array([float(weights.get(name, 1.0)) for name in categories] or [1.0], dtype=np.float64)
    per_source = np.array([float(by_source.get(name, np.nan)) for name in sources] or [np.nan], dtype=np.float64)
    chosen = per_source[source_codes] if len(source_codes) else np.zeros(0)
    return np.where(np.isnan(chosen), per_category[category_codes] if len(category_codes) else chosen, chosen)


def expanded_keys(hashes: np.ndarray, category_codes: np.ndarray, source_codes: np.ndarray, categories: list[str], sources: list[str], params: dict):
    """(starts, item_of, epoch, keys): items expanded into their fine-tuning copies, and the sort
    key of each copy. Any slice of the items gives the same keys: engines key rows batch by batch."""
    mode = params.get("mode", "priority")
    sft_epochs = int(params.get("sft_epochs", 1))
    sft_code = categories.index(SFT) if SFT in categories else -1
    is_sft = category_codes == sft_code
    repeats = np.where(is_sft, sft_epochs, 1).astype(np.int64)
    starts = np.zeros(len(repeats) + 1, dtype=np.int64)
    np.cumsum(repeats, out=starts[1:])
    item_of = np.repeat(np.arange(len(repeats), dtype=np.int64), repeats)
    epoch = (np.arange(len(item_of), dtype=np.int64) - starts[item_of]).astype(np.int32)
    weights = item_weights(category_codes, source_codes, categories, sources, params)
    keys = sort_keys(hashes[item_of], epoch, weights[item_of], is_sft[item_of], mode, int(params.get("seed", 0)))
    return starts, item_of, epoch, keys


def plan_order(hashes: np.ndarray, category_codes: np.ndarray, source_codes: np.ndarray, categories: list[str], sources: list[str], params: dict) -> SamplingPlan:
    """The training position of every item and fine-tuning copy, from ids, categories and sources."""
    starts, item_of, epoch, keys = expanded_keys(hashes, category_codes, source_codes, categories, sources, params)
    order = np.argsort(keys)
    del keys
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order), dtype=np.int64)
    return SamplingPlan(starts=starts, epoch=epoch, position=position, category_in_order=category_codes[item_of[order]])


def priority_order(items: pa.Table, params: dict) -> tuple[pa.Table, np.ndarray]:
    """The whole order of a table in memory: (rows with fine-tuning copies expanded, indices of
    those rows in training order). The stage itself plans from ids and gathers in a stream."""
    categories, sources = Codes(CATEGORIES), Codes()
    plan = plan_order(
        id_hashes(items.column("id")),
        categories.encode(items.column("category")),
        sources.encode(items.column("source")),
        categories.names,
        sources.names,
        params,
    )
    copies_of_row = np.repeat(np.arange(items.num_rows), np.diff(plan.starts))
    expanded = expand_copies(items, copies_of_row, plan.epoch, int(params.get("sft_epochs", 1)))
    order = np.empty(plan.rows, dtype=np.int64)
    order[plan.position] = np.arange(plan.rows, dtype=np.int64)
    return expanded, order


def sampling_curve(category_in_order: np.ndarray, categories: list[str], buckets: int = 100) -> list[dict[str, float]]:
    """Share of each category in each 1% of training positions."""
    n = len(category_in_order)
    if n == 0:
        return []
    edges = np.linspace(0, n, min(buckets, n) + 1).astype(np.int64)
    sizes = np.diff(edges)
    names = sorted(set(categories[c] for c in np.unique(category_in_order)))
    curve = [dict.fromkeys(names, 0.0) for _ in sizes]
    for name in names:
        hits = (category_in_order == categories.index(name)).astype(np.int64)
        counts = np.add.reduceat(hits, edges[:-1])
        for bucket, (count, size) in enumerate(zip(counts, sizes)):
            curve[bucket][name] = round(float(count) / float(size), 4)
    return curve


def to_corpus_rows(table: pa.Table | pa.RecordBatch, kind: str) -> pa.Table:
    """Conversations become chat rows, documents text rows, in the corpus schema (no position yet)."""
    n = table.num_rows
    if kind == CONVERSATIONS:
        table = conform(table, CONVERSATIONS, extra=False)
        messages, text, fmt = table.column("messages"), pa.nulls(n, pa.string()), "chat"
    else:
        table = conform(table, DOCUMENTS, extra=False)
        messages, text, fmt = pa.nulls(n, CORPUS_SCHEMA.field("messages").type), table.column("text"), "text"
    # Provenance columns move into meta; only rows that have one go through JSON, and only
    # their metas leave Arrow.
    extras = ["title", "url"] if kind == DOCUMENTS else ["origin_id"]
    metas = table.column("meta")
    has_extra = np.zeros(n, dtype=bool)
    for name in extras:
        has_extra |= table.column(name).is_valid().to_numpy(zero_copy_only=False)
    if has_extra.any():
        moved = []
        for row in table.select(["meta", *extras]).filter(pa.array(has_extra)).to_pylist():
            meta = loads_meta(row.pop("meta"))
            meta.update({k: v for k, v in row.items() if v is not None})
            moved.append(dumps_meta(meta))
        metas = pc.replace_with_mask(_one_chunk(metas), pa.array(has_extra), pa.array(moved, pa.string()))
    return pa.table(
        {
            "id": table.column("id"),
            "source": table.column("source"),
            "category": table.column("category"),
            "format": pa.array([fmt] * n, pa.string()),
            "messages": messages,
            "text": text,
            "meta": _one_chunk(metas),
        }
    )


def _one_chunk(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if not isinstance(column, pa.ChunkedArray):
        return column
    return column.combine_chunks() if column.num_chunks else pa.array([], column.type)


def expand_copies(rows: pa.Table, copies_of_row: np.ndarray, epochs: np.ndarray, sft_epochs: int) -> pa.Table:
    """Row i of `rows` repeated per `copies_of_row` (its index for each copy); fine-tuning copies
    get ids `<id>@<epoch>` and meta {"epoch", "origin_id"} when there is more than one epoch."""
    expanded = rows.take(pa.array(copies_of_row, pa.int64()))
    if sft_epochs <= 1:
        return expanded
    is_sft = pc.fill_null(pc.equal(rows.column("category"), SFT), False).to_numpy(zero_copy_only=False)
    copy_is_sft = is_sft[copies_of_row] if len(copies_of_row) else np.zeros(0, dtype=bool)
    if not copy_is_sft.any():
        return expanded
    ids, metas = rows.column("id").to_pylist(), rows.column("meta").to_pylist()
    sft_copies = np.flatnonzero(copy_is_sft)
    new_ids, new_metas = [], []
    copies_meta: dict[int, tuple[dict, bool, str | None]] = {}
    for i, epoch in zip(copies_of_row[sft_copies].tolist(), epochs[sft_copies].tolist()):
        if i not in copies_meta:
            # A row's meta is read and written once for all its copies: each copy's JSON is the
            # row's with the new keys added at its end, as the dict's own JSON would be.
            meta = loads_meta(metas[i])
            appends = isinstance(meta, dict) and "epoch" not in meta
            copies_meta[i] = (meta, appends, dumps_meta(meta) if appends else None)
        meta, appends, written = copies_meta[i]
        if not appends:
            new_metas.append(dumps_meta({**meta, "epoch": int(epoch), "origin_id": meta.get("origin_id", ids[i])}))
        else:
            added = f'"epoch": {int(epoch)}' + ("" if "origin_id" in meta else f', "origin_id": {_json_value(ids[i])}')
            new_metas.append(f"{written[:-1]}, {added}}}" if written else f"{{{added}}}")
        new_ids.append(f"{ids[i]}@{int(epoch)}")
    mask = pa.array(copy_is_sft)
    expanded = expanded.set_column(0, "id", pc.replace_with_mask(_one_chunk(expanded.column("id")), mask, pa.array(new_ids, pa.string())))
    meta_at = expanded.schema.get_field_index("meta")
    return expanded.set_column(meta_at, "meta", pc.replace_with_mask(_one_chunk(expanded.column("meta")), mask, pa.array(new_metas, pa.string())))


def _json_value(value) -> str:
    """A value as JSON, as dumps_meta writes it inside a meta."""
    return dumps_meta({"": value})[5:-1]


def with_positions(table: pa.Table, positions: np.ndarray) -> pa.Table:
    table = table.add_column(1, "position", pa.array(positions, pa.int64()))
    return table.select(CORPUS_SCHEMA.names).cast(nullable_schema(CORPUS))
