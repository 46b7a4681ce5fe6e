"""Duplicate clusters: the global decision of deduplication, one pure core for every engine.

Rows are described by their fingerprints (exact key, MinHash signature, shingle set, length,
quality, source rank), never by their text. Rows with the same exact key, and rows whose
signatures share an LSH band (the candidates) and whose shingle sets have an exact Jaccard
similarity of at least `threshold`, are joined by union-find; in each cluster one row is kept, by
policy; the others are rejected naming it. The signature only proposes pairs: verified on its
estimate, a true pair just above the threshold is dropped about half the time (the estimate's
standard deviation at 128 values is about 0.035). A row without a shingle set (an index segment
written before they were stored) is verified on the estimate. Rows of the corpus built before
(the persistent index) always win: they are already in the corpus.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa

from . import minhash

# Criteria of the keep policy, in the order given by the config; the input position breaks ties.
KEEP_CRITERIA = ("quality", "longest", "source", "first")
_EMPTY = np.uint32(0xFFFFFFFF)


@dataclass
class Fingerprints:
    """Columns describing rows for duplicate detection, in input order."""

    ids: np.ndarray  # object (str)
    keys: np.ndarray  # S16: digest of the match form
    lengths: np.ndarray  # int64: characters of the text
    quality: np.ndarray  # float64, NaN where unknown
    sources: np.ndarray  # object (str)
    signatures: np.ndarray | None = None  # (n, num_perm) uint32, None for exact dedup only
    shingles: np.ndarray | None = None  # object: per row a sorted uint32 array (minhash.shingle_sets_of_keys) or None

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, num_perm: int | None) -> "Fingerprints":
        return cls(
            ids=np.empty(0, object),
            keys=np.empty(0, "S16"),
            lengths=np.empty(0, np.int64),
            quality=np.empty(0, np.float64),
            sources=np.empty(0, object),
            signatures=None if num_perm is None else np.empty((0, num_perm), np.uint32),
            shingles=None if num_perm is None else np.empty(0, object),
        )

    @classmethod
    def concat(cls, parts: Sequence["Fingerprints"]) -> "Fingerprints":
        parts = list(parts)
        signed = all(p.signatures is not None for p in parts)
        return cls(
            ids=np.concatenate([p.ids for p in parts]),
            keys=np.concatenate([p.keys for p in parts]),
            lengths=np.concatenate([p.lengths for p in parts]),
            quality=np.concatenate([p.quality for p in parts]),
            sources=np.concatenate([p.sources for p in parts]),
            signatures=np.concatenate([p.signatures for p in parts]) if signed else None,
            shingles=_concat_shingles(parts) if signed else None,
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> "Fingerprints":
        signatures = None
        if "signature" in table.schema.names:
            column = table.column("signature").combine_chunks()
            width = column.type.list_size
            values = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
            signatures = values.reshape(len(table), width)
        shingles = None
        if "shingles" in table.schema.names:
            column = table.column("shingles").combine_chunks()
            flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False)
            offsets = column.offsets.to_numpy()
            shingles = _object_array([flat[offsets[i] : offsets[i + 1]] for i in range(len(table))])
        return cls(
            ids=np.array(table.column("id").to_pylist(), dtype=object),
            keys=np.array(table.column("key").to_pylist(), dtype="S16"),
            lengths=table.column("length").to_numpy().astype(np.int64),
            quality=table.column("quality").to_numpy(zero_copy_only=False).astype(np.float64),
            sources=np.array(table.column("source").to_pylist(), dtype=object),
            signatures=signatures,
            shingles=shingles,
        )

    def to_table(self) -> pa.Table:
        columns = {
            "id": pa.array(self.ids.tolist(), pa.string()),
            "key": pa.array(self.keys.tolist(), pa.binary(16)),
            "length": pa.array(self.lengths, pa.int64()),
            "quality": pa.array(self.quality, pa.float64()),
            "source": pa.array(self.sources.tolist(), pa.string()),
        }
        if self.signatures is not None:
            width = self.signatures.shape[1]
            columns["signature"] = pa.FixedSizeListArray.from_arrays(pa.array(self.signatures.ravel(), pa.uint32()), width)
        if self.shingles is not None and all(s is not None for s in self.shingles):
            lengths = np.fromiter((len(s) for s in self.shingles), np.int64, count=len(self.shingles))
            offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
            values = np.concatenate(list(self.shingles)) if len(self.shingles) else np.empty(0, np.uint32)
            columns["shingles"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.uint32()))
        return pa.table(columns)

    def take(self, rows: np.ndarray) -> "Fingerprints":
        return Fingerprints(
            self.ids[rows], self.keys[rows], self.lengths[rows], self.quality[rows], self.sources[rows],
            None if self.signatures is None else self.signatures[rows],
            None if self.shingles is None else self.shingles[rows],
        )


def _object_array(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _concat_shingles(parts: Sequence["Fingerprints"]) -> np.ndarray:
    return _object_array([s for p in parts for s in (p.shingles if p.shingles is not None else [None] * len(p))])


class UnionFind:
    """Disjoint sets over 0..n-1 with union by size and path halving."""

    def __init__(self, n: int):
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(x) for x in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


@dataclass
class Decisions:
    """What happens to the new rows: reasons by position, and the audit of every cluster."""

    reasons: dict[int, str]  # position among the new rows -> exact_duplicate_of:<id> | near_duplicate_of:<id>
    clusters: pa.Table  # one row per member of a cluster of two or more rows
    exact_groups: int
    near_pairs_checked: int
    near_pairs_similar: int


def _exact_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    head = first[inverse]
    rows = np.arange(len(keys))
    linked = head != rows
    return head[linked], rows[linked]


def similarities(rows: Fingerprints, first: np.ndarray, other: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Jaccard similarity of each pair (first[i], other[i]): exact on the shingle sets where both
    rows have one, else the signatures' estimate."""
    values = np.empty(len(first), dtype=np.float64)
    for start in range(0, len(first), chunk):
        end = start + chunk
        values[start:end] = minhash.estimated_jaccard(rows.signatures[first[start:end]], rows.signatures[other[start:end]])
    if rows.shingles is not None:
        for i, (a, b) in enumerate(zip(first.tolist(), other.tolist())):
            left, right = rows.shingles[a], rows.shingles[b]
            if left is not None and right is not None:
                values[i] = minhash.exact_jaccard(left, right)
    return values


def _policy_order(rows: Fingerprints, prior: int, roots: np.ndarray, keep: Sequence[str], source_rank: dict[str, int]) -> np.ndarray:
    """Row numbers sorted by cluster, then best first: a prior row, then the keep criteria."""
    n = len(rows)
    position = np.arange(n)
    keys = [position]  # lexsort: last key is primary
    for criterion in reversed(list(keep)):
        if criterion == "quality":
            keys.append(np.where(np.isnan(rows.quality), np.inf, -rows.quality))
        elif criterion == "longest":
            keys.append(-rows.lengths)
        elif criterion == "source":
            unranked = len(source_rank)
            keys.append(np.fromiter((source_rank.get(s, unranked) for s in rows.sources), np.int64, count=n))
        elif criterion == "first":
            keys.append(position)
        else:
            raise ValueError(f"unknown keep criterion {criterion!r}; expected one of {', '.join(KEEP_CRITERIA)}")
    keys.append(position >= prior)  # rows of the corpus built before come first
    keys.append(roots)
    return np.lexsort(keys)


def kept_member(members: Fingerprints, keep: Sequence[str], source_priority: Sequence[str] = ()) -> int:
    """Which row of one cluster (rows in input order) the keep policy keeps: the same rule
    `cluster_duplicates` applies, for engines that find the clusters themselves."""
    roots = np.zeros(len(members), np.int64)
    return int(_policy_order(members, 0, roots, keep, {s: i for i, s in enumerate(source_priority)})[0])


def cluster_duplicates(
    new: Fingerprints,
    prior: Fingerprints | None = None,
    params: minhash.MinHashParams | None = None,
    keep: Sequence[str] = ("quality", "longest", "source"),
    source_priority: Sequence[str] = (),
    kind: str = "",
) -> Decisions:
    """Exact and (with `params` and signatures) near-duplicate clusters of `new` rows, among
    themselves and against the `prior` corpus, whose rows are never rejected."""
    prior = prior if prior is not None else Fingerprints.empty(None if new.signatures is None else new.signatures.shape[1])
    rows = Fingerprints.concat([prior, new]) if len(prior) else new
    m, n = len(prior), len(rows)
    sets = UnionFind(n)
    first, other = _exact_pairs(rows.keys)
    exact_pairs = (first >= m) | (other >= m)
    for a, b in zip(first[exact_pairs].tolist(), other[exact_pairs].tolist()):
        sets.union(a, b)
    checked = similar_count = 0
    if params is not None and rows.signatures is not None and n:
        bands = minhash.band_hashes(rows.signatures, params)
        a, b = minhash.candidate_pairs(bands)
        del bands
        # A row without words has an all-empty signature, equal to every other such row's.
        wordless = rows.signatures[:, 0] == _EMPTY
        maybe = np.flatnonzero(wordless)
        wordless[maybe] = (rows.signatures[maybe] == _EMPTY).all(axis=1)
        if wordless.any():
            has_words = ~(wordless[a] | wordless[b])
            a, b = a[has_words], b[has_words]
        fresh = (a >= m) | (b >= m)  # two prior rows were decided when they were added
        a, b = a[fresh], b[fresh]
        same_key = rows.keys[a] == rows.keys[b]
        a, b = a[~same_key], b[~same_key]
        similar = similarities(rows, a, b) >= params.threshold
        checked, similar_count = len(a), int(similar.sum())
        for x, y in zip(a[similar].tolist(), b[similar].tolist()):
            sets.union(x, y)
    roots = sets.roots()
    order = _policy_order(rows, m, roots, keep, {s: i for i, s in enumerate(source_priority)})
    sorted_roots = roots[order]
    heads = np.ones(n, dtype=bool)
    heads[1:] = sorted_roots[1:] != sorted_roots[:-1]
    kept_of_root = {}
    for root, row in zip(sorted_roots[heads].tolist(), order[heads].tolist()):
        kept_of_root[root] = row
    sizes = np.bincount(roots, minlength=n)
    members = np.flatnonzero(sizes[roots] > 1)
    kept_rows = np.fromiter((kept_of_root[r] for r in roots[members].tolist()), np.int64, count=len(members))
    exact = rows.keys[members] == rows.keys[kept_rows]
    if rows.signatures is not None and len(members):
        similarity = np.ones(len(members))
        near = np.flatnonzero(~exact)
        similarity[near] = similarities(rows, members[near], kept_rows[near])
    else:
        similarity = np.ones(len(members))
    is_kept = members == kept_rows
    reasons = {}
    for member, kept_row, same in zip(members[~is_kept].tolist(), kept_rows[~is_kept].tolist(), exact[~is_kept].tolist()):
        if member >= m:
            label = "exact_duplicate_of" if same else "near_duplicate_of"
            reasons[member - m] = f"{label}:{rows.ids[kept_row]}"
    match = np.where(is_kept, "kept", np.where(exact, "exact", "near"))
    audit = pa.table(
        {
            "kind": pa.array([kind] * len(members), pa.string()),
            "id": pa.array(rows.ids[members].tolist(), pa.string()),
            "cluster": pa.array(rows.ids[kept_rows].tolist(), pa.string()),
            "kept": pa.array(is_kept),
            "similarity": pa.array(similarity, pa.float64()),
            "match": pa.array(match.tolist(), pa.string()),
            "source": pa.array(rows.sources[members].tolist(), pa.string()),
            "prior": pa.array(members < m),
        }
    )
    exact_groups = len({k for k in rows.keys[first[exact_pairs]].tolist()}) if exact_pairs.any() else 0
    return Decisions(reasons, audit, exact_groups, checked, similar_count)
