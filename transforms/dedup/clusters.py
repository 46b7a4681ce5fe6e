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

import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import minhash

# Criteria of the keep policy, in the order given by the config; the input position breaks ties.
KEEP_CRITERIA = ("quality", "longest", "source", "first")
_EMPTY = np.uint32(0xFFFFFFFF)
log = logging.getLogger(__name__)


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
            "key": binary16(self.keys),
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


def binary16(keys: np.ndarray) -> pa.Array:
    """Exact keys (S16) as Arrow fixed-size binary, byte for byte: `keys.tolist()` would drop a
    key's trailing zero bytes (numpy strips them) and the array would refuse it."""
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(keys), [None, pa.py_buffer(np.ascontiguousarray(keys, dtype="S16").tobytes())])


def _object_array(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _concat_shingles(parts: Sequence["Fingerprints"]) -> np.ndarray:
    return _object_array([s for p in parts for s in (p.shingles if p.shingles is not None else [None] * len(p))])


class UnionFind:
    """Disjoint sets over 0..n-1 with union by size and path halving (one pair at a time; the
    stage itself joins all pairs at once with `components`)."""

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


def _phase(name: str) -> None:
    """Marks where clustering is, at debug level (benchmarks/dedup_memory.py --phases reads it)."""
    log.debug("dedup phase: clusters: %s", name)


def components(n: int, first: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Connected components of rows 0..n-1 joined by the pairs (first[i], other[i]): a label per
    row (int32), equal for rows of one component. scipy's graph search over a sparse matrix: about
    4 bytes per row and 12 per pair, whatever the order of the pairs."""
    if not len(first):
        return np.arange(n, dtype=np.int32)
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    # float64 weights: the type the graph search works in, so the matrix is not copied again
    graph = coo_matrix((np.ones(len(first)), (first, other)), shape=(n, n)).tocsr()
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int32, copy=False)


@dataclass
class ShingleSets:
    """The shingle sets of some rows in one flat array: set i is values[offsets[i]:offsets[i+1]],
    sorted distinct uint32 (`minhash.shingle_values_of_keys`). 4 bytes per shingle, 8 per set."""

    values: np.ndarray  # uint32
    offsets: np.ndarray  # int64, one more than there are sets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def of_counts(cls, values: np.ndarray, counts: np.ndarray) -> "ShingleSets":
        offsets = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(values, offsets)

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, rows: np.ndarray) -> "ShingleSets":
        """The sets of `rows` (positions among these sets), in that order."""
        sizes = self.sizes()[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return ShingleSets(self.values[ranges_index(self.offsets[rows], sizes, int(offsets[-1]))], offsets)


def ranges_index(starts: np.ndarray, sizes: np.ndarray, total: int) -> np.ndarray:
    """Positions of the ranges [starts[i], starts[i] + sizes[i]) one after the other."""
    before = np.cumsum(sizes) - sizes
    return np.repeat(starts - before, sizes) + np.arange(total, dtype=np.int64)


def pair_jaccard(sets: ShingleSets, left: np.ndarray, right: np.ndarray, chunk_values: int = 1 << 22) -> np.ndarray:
    """Exact Jaccard of sets[left[i]] and sets[right[i]] (float64, 1.0 for two empty sets), as
    `minhash.exact_jaccard` computes it, vectorised: both sets of each pair tagged with the
    pair's number, sorted together, and a value seen twice is shared. Pairs in chunks of about
    `chunk_values` shingles, so the working arrays stay a few tens of MB."""
    sizes = sets.sizes()
    a_sizes, b_sizes = sizes[left], sizes[right]
    shared = np.zeros(len(left), np.int64)
    weight = np.cumsum(a_sizes + b_sizes)
    start = 0
    while start < len(left):
        base = weight[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(weight, base + chunk_values, side="right")))
        count = end - start
        tagged = []
        for rows, row_sizes in ((left[start:end], a_sizes[start:end]), (right[start:end], b_sizes[start:end])):
            total = int(row_sizes.sum())
            values = sets.values[ranges_index(sets.offsets[rows], row_sizes, total)].astype(np.uint64)
            values |= np.repeat(np.arange(count, dtype=np.uint64), row_sizes) << np.uint64(32)
            tagged.append(values)
        merged = np.sort(np.concatenate(tagged))
        del tagged
        twice = merged[1:][merged[1:] == merged[:-1]]
        shared[start:end] = np.bincount((twice >> np.uint64(32)).astype(np.int64), minlength=count)
        start = end
    union = a_sizes + b_sizes - shared
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, shared / np.maximum(union, 1), 1.0)


@dataclass
class ClusterRows:
    """Every row being deduplicated, the corpus built before (`prior` rows) first, as compact
    columns: no Python object per row. `shingles(rows)` and `signatures(rows)` fetch what only
    candidate pairs and cluster members need (from memory or from a spill file)."""

    ids: pa.Array | pa.ChunkedArray  # string
    keys: np.ndarray  # S16
    lengths: np.ndarray  # int64
    quality: np.ndarray  # float64, NaN where unknown
    source_codes: np.ndarray  # int32, into source_names
    source_names: list  # str (or None) per code
    prior: int = 0
    bands: np.ndarray | None = None  # (bands, n) uint64 LSH band keys; None for exact dedup only
    wordless: np.ndarray | None = None  # bool: an empty match form (an all-empty signature)
    shingles: Callable[[np.ndarray], ShingleSets] | None = None  # sorted distinct rows -> their sets
    has_shingles: np.ndarray | None = None  # bool; None when every row has a shingle set
    signatures: Callable[[np.ndarray], np.ndarray] | None = None  # rows -> (len, num_perm) uint32

    def __len__(self) -> int:
        return len(self.keys)

    def sources(self, rows: np.ndarray) -> pa.Array:
        return pa.array(self.source_names, pa.string()).take(pa.array(self.source_codes[rows]))

    def similarities(self, first: np.ndarray, other: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Jaccard similarity of each pair: exact on the shingle sets where both rows have one,
        else the signatures' estimate. `chunk` pairs at a time, each chunk fetching the sets of
        its own rows, so what is held is a chunk's sets, not those of every candidate row."""
        values = np.empty(len(first), np.float64)
        for start in range(0, len(first), chunk):
            a, b = first[start : start + chunk], other[start : start + chunk]
            exact = np.ones(len(a), bool)
            if self.shingles is None:
                exact[:] = False
            elif self.has_shingles is not None:
                exact = self.has_shingles[a] & self.has_shingles[b]
            part = np.empty(len(a), np.float64)
            if exact.any():
                needed = np.unique(np.concatenate([a[exact], b[exact]]))
                sets = self.shingles(needed)
                part[exact] = pair_jaccard(sets, np.searchsorted(needed, a[exact]), np.searchsorted(needed, b[exact]))
                del sets
            estimated = np.flatnonzero(~exact)
            if len(estimated):
                part[estimated] = minhash.estimated_jaccard(self.signatures(a[estimated]), self.signatures(b[estimated]))
            values[start : start + chunk] = part
        return values


@dataclass
class Clusters:
    """The members of every cluster of two or more rows (row numbers of `ClusterRows`, ascending),
    each with its cluster's kept row, whether its exact key is the kept row's, and its Jaccard
    similarity to the kept row (1.0 for the kept row and exact copies)."""

    members: np.ndarray  # int64
    kept: np.ndarray  # int64
    exact: np.ndarray  # bool
    similarity: np.ndarray  # float64
    prior: int
    exact_groups: int
    near_pairs_checked: int
    near_pairs_similar: int

    def rejected(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(new-row positions, kept row, exact) of every rejected new row, positions ascending:
        its reason is `exact_duplicate_of:<id of kept>` or `near_duplicate_of:<id of kept>`."""
        rejected = (self.members != self.kept) & (self.members >= self.prior)
        return self.members[rejected] - self.prior, self.kept[rejected], self.exact[rejected]

    def audit(self, rows: ClusterRows, kind: str, chunk: int = 65536) -> Iterator[pa.Table]:
        """The `clusters` audit, one row per member in row order, in tables of `chunk` rows (one
        empty table when there is no cluster)."""
        for start in range(0, max(len(self.members), 1), chunk):
            members, kept = self.members[start : start + chunk], self.kept[start : start + chunk]
            exact, is_kept = self.exact[start : start + chunk], members == kept
            match = np.where(is_kept, "kept", np.where(exact, "exact", "near"))
            yield pa.table(
                {
                    "kind": pa.array([kind] * len(members), pa.string()),
                    "id": rows.ids.take(pa.array(members)).cast(pa.string()),
                    "cluster": rows.ids.take(pa.array(kept)).cast(pa.string()),
                    "kept": pa.array(is_kept),
                    "similarity": pa.array(self.similarity[start : start + chunk], pa.float64()),
                    "match": pa.array(match.tolist(), pa.string()),
                    "source": rows.sources(members),
                    "prior": pa.array(members < self.prior),
                }
            )

    def count(self, rows: ClusterRows) -> int:
        """Clusters, counted as distinct ids of kept rows (the audit's `cluster` values)."""
        kept_rows = np.unique(self.kept)
        return len(pc.unique(_combined(rows.ids.take(pa.array(kept_rows))))) if len(kept_rows) else 0


def _combined(array) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _policy_order(positions: np.ndarray, quality: np.ndarray, lengths: np.ndarray, ranks: np.ndarray,
                  is_new: np.ndarray, roots: np.ndarray, keep: Sequence[str]) -> np.ndarray:
    """Indices into the given rows sorted by cluster, then best first: a prior row, then the keep
    criteria, then the row's position."""
    keys = [positions]  # lexsort: last key is primary
    for criterion in reversed(list(keep)):
        if criterion == "quality":
            keys.append(np.where(np.isnan(quality), np.inf, -quality))
        elif criterion == "longest":
            keys.append(-lengths)
        elif criterion == "source":
            keys.append(ranks)
        elif criterion == "first":
            keys.append(positions)
        else:
            raise ValueError(f"unknown keep criterion {criterion!r}; expected one of {', '.join(KEEP_CRITERIA)}")
    keys.append(is_new)  # rows of the corpus built before come first
    keys.append(roots)
    return np.lexsort(keys)


def _source_ranks(names: Sequence, source_priority: Sequence[str]) -> np.ndarray:
    rank = {s: i for i, s in enumerate(source_priority)}
    return np.array([rank.get(s, len(rank)) for s in names], np.int64)


def kept_member(members: Fingerprints, keep: Sequence[str], source_priority: Sequence[str] = ()) -> int:
    """Which row of one cluster (rows in input order) the keep policy keeps: the same rule
    `find_clusters` applies, for engines that find the clusters themselves."""
    n = len(members)
    ranks = _source_ranks(members.sources.tolist(), source_priority)
    order = _policy_order(np.arange(n), members.quality, members.lengths, ranks, np.zeros(n, bool), np.zeros(n, np.int64), keep)
    return int(order[0])


def _exact_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row paired with the first row of its exact key, for rows that are not that first."""
    n = len(keys)
    if not n:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    halves = np.ascontiguousarray(keys).view(np.uint64).reshape(n, 2)
    order = np.lexsort((halves[:, 1], halves[:, 0]))  # stable: equal keys in row order
    ordered = halves[order]
    starts = np.ones(n, dtype=bool)
    starts[1:] = (ordered[1:] != ordered[:-1]).any(axis=1)
    del ordered
    head = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
    linked = head != order
    return head[linked], order[linked]


def find_clusters(rows: ClusterRows, params: minhash.MinHashParams | None = None,
                  keep: Sequence[str] = ("quality", "longest", "source"), source_priority: Sequence[str] = ()) -> Clusters:
    """Exact and (with `params` and band keys) near-duplicate clusters of the rows after the
    first `rows.prior`, among themselves and against those prior rows, which are never rejected.
    Frees `rows.bands` once the candidate pairs are found."""
    m, n = rows.prior, len(rows)
    _phase("exact keys")
    first, other = _exact_pairs(rows.keys)
    fresh = (first >= m) | (other >= m)  # two prior rows were decided when they were added
    first, other = first[fresh], other[fresh]
    exact_groups = len(np.unique(first))
    checked = similar_count = 0
    if params is not None and rows.bands is not None and n:
        _phase("candidate pairs")
        a, b = minhash.candidate_pairs(rows.bands.T)
        rows.bands = None
        if rows.wordless is not None and rows.wordless.any():
            # A row without words has an all-empty signature, equal to every other such row's.
            has_words = ~(rows.wordless[a] | rows.wordless[b])
            a, b = a[has_words], b[has_words]
        fresh = (a >= m) | (b >= m)
        a, b = a[fresh], b[fresh]
        same_key = rows.keys[a] == rows.keys[b]
        a, b = a[~same_key], b[~same_key]
        _phase("verification")
        similar = rows.similarities(a, b) >= params.threshold
        checked, similar_count = len(a), int(similar.sum())
        first, other = np.concatenate([first, a[similar]]), np.concatenate([other, b[similar]])
        del a, b, similar
    _phase("components")
    labels = components(n, first, other)
    del first, other
    sizes = np.bincount(labels, minlength=n)
    members = np.flatnonzero(sizes[labels] > 1)
    del sizes
    roots = labels[members]
    del labels
    _phase("keep decision")
    ranks = _source_ranks(rows.source_names, source_priority)[rows.source_codes[members]]
    order = _policy_order(members, rows.quality[members], rows.lengths[members], ranks, members >= m, roots, keep)
    sorted_roots = roots[order]
    heads = np.ones(len(order), dtype=bool)
    heads[1:] = sorted_roots[1:] != sorted_roots[:-1]
    kept = np.empty(len(members), np.int64)
    kept[order] = members[order][np.flatnonzero(heads)[np.cumsum(heads) - 1]]
    exact = rows.keys[members] == rows.keys[kept]
    similarity = np.ones(len(members))
    if params is not None and (rows.shingles is not None or rows.signatures is not None) and len(members):
        _phase("similarity to the kept rows")
        near = np.flatnonzero(~exact)
        similarity[near] = rows.similarities(members[near], kept[near])
    return Clusters(members, kept, exact, similarity, m, exact_groups, checked, similar_count)


@dataclass
class Decisions:
    """What happens to the new rows: reasons by position, and the audit of every cluster."""

    reasons: dict[int, str]  # position among the new rows -> exact_duplicate_of:<id> | near_duplicate_of:<id>
    clusters: pa.Table  # one row per member of a cluster of two or more rows
    exact_groups: int
    near_pairs_checked: int
    near_pairs_similar: int


def cluster_rows(new: Fingerprints, prior: Fingerprints | None = None, params: minhash.MinHashParams | None = None) -> ClusterRows:
    """`ClusterRows` of fingerprints held in memory (prior rows first)."""
    rows = Fingerprints.concat([prior, new]) if prior is not None and len(prior) else new
    names = list(dict.fromkeys(rows.sources.tolist()))
    code = {s: i for i, s in enumerate(names)}
    signed = params is not None and rows.signatures is not None
    shingles = has_shingles = None
    if signed and rows.shingles is not None:
        has_shingles = np.fromiter((s is not None for s in rows.shingles), bool, count=len(rows))
        present = [s for s in rows.shingles if s is not None]
        sets = ShingleSets.of_counts(
            np.concatenate(present).astype(np.uint32) if present else np.empty(0, np.uint32),
            np.array([0 if s is None else len(s) for s in rows.shingles], np.int64),
        )
        shingles = sets.take
        has_shingles = None if has_shingles.all() else has_shingles
    return ClusterRows(
        ids=pa.array(rows.ids.tolist(), pa.string()),
        keys=rows.keys,
        lengths=rows.lengths,
        quality=rows.quality,
        source_codes=np.fromiter((code[s] for s in rows.sources.tolist()), np.int32, count=len(rows)),
        source_names=names,
        prior=len(rows) - len(new),
        bands=minhash.band_hashes(rows.signatures, params).T.copy() if signed else None,
        wordless=(rows.signatures == _EMPTY).all(axis=1) if signed else None,
        shingles=shingles,
        has_shingles=has_shingles,
        signatures=(lambda r: rows.signatures[r]) if signed else None,
    )


def cluster_duplicates(
    new: Fingerprints,
    prior: Fingerprints | None = None,
    params: minhash.MinHashParams | None = None,
    keep: Sequence[str] = ("quality", "longest", "source"),
    source_priority: Sequence[str] = (),
    kind: str = "",
) -> Decisions:
    """Exact and (with `params` and signatures) near-duplicate clusters of `new` rows, among
    themselves and against the `prior` corpus, whose rows are never rejected: `find_clusters` on
    fingerprints held in memory, its answer as a dict of reasons and one audit table."""
    rows = cluster_rows(new, prior, params)
    found = find_clusters(rows, params, keep, source_priority)
    positions, kept, exact = found.rejected()
    kept_ids = rows.ids.take(pa.array(kept)).to_pylist()
    reasons = {
        int(p): f"{'exact_duplicate_of' if same else 'near_duplicate_of'}:{i}"
        for p, i, same in zip(positions.tolist(), kept_ids, exact.tolist())
    }
    audit = pa.concat_tables(list(found.audit(rows, kind)))
    return Decisions(reasons, audit, found.exact_groups, found.near_pairs_checked, found.near_pairs_similar)
