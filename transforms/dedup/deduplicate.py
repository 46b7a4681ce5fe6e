"""The dedup stage on the local engine: repeated paragraphs, then exact and near-duplicates.

Three passes over the input, the per-row work parallel through the engine, the decisions global:
1. count the lines of each source's documents (repeated paragraphs);
2. fingerprint each row (exact key, MinHash signature) after removing its repeated lines;
3. cluster all fingerprints with those of the corpus built before (the persistent index), then
   write kept rows, rejected rows with their reason, and the audits `clusters` and
   `repeated_paragraphs` as kinds of the output dataset.

Memory: the driver holds, per row, compact columns only (`clusters.ClusterRows`: exact key,
length, quality, source code, id, LSH band keys, about 150 bytes for short ids and 9 bands); the
shingle sets and signatures go to a spill file in the output's temporary folder (`spill.py`) and
come back only for candidate pairs, cluster members and index rows. Decisions are arrays, turned
into reason strings batch by batch as the rows are written. Measured with
benchmarks/dedup_memory.py; figures in docs/SCALING.md.
"""
from __future__ import annotations

import logging
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import DatasetWriter, StageManifest, count_rows, fingerprint, iter_batches, kind_files, kinds_in
from schemas.records import CLUSTERS, REPEATED_PARAGRAPHS

from . import minhash, paragraphs
from .clusters import KEEP_CRITERIA, ClusterRows, Fingerprints, _object_array, find_clusters
from .keys import QUALITY_TAGS, exact_key, quality_key, text_of
from .index import DedupIndex, index_table, segment_name
from .spill import ShingleSpill, SignatureSpill
from transforms.clean.normalize import match_keys

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)
_EMPTY_VALUE = np.uint32(0xFFFFFFFF)
log = logging.getLogger(__name__)
BOILERPLATE_ONLY = "repeated_paragraphs_only"


@dataclass
class DedupSettings:
    """The dedup section of the config, with the defaults a bare call gets."""

    method: str = "minhash"
    keep: list[str] = field(default_factory=lambda: ["quality", "longest", "source"])
    # None: the keep rule's `quality` is `keys.quality_key`, computed from clean's tags; a name
    # reads that column instead (higher is better), which every input row must have.
    quality_column: str | None = None
    source_priority: list[str] = field(default_factory=list)
    threshold: float = 0.8
    num_perm: int = 128
    ngram: int = 5
    seed: int = 1
    false_negative_weight: float = 0.9
    index_path: str | None = None
    paragraphs: dict = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: dict) -> "DedupSettings":
        known = {k: v for k, v in params.items() if k in cls.__dataclass_fields__}
        settings = cls(**known)
        settings.keep = [settings.keep] if isinstance(settings.keep, str) else list(settings.keep)
        unknown = [c for c in settings.keep if c not in KEEP_CRITERIA]
        if unknown:
            raise ValueError(f"dedup.keep: unknown criterion {unknown[0]!r}; expected {', '.join(KEEP_CRITERIA)}")
        return settings

    def minhash_params(self) -> minhash.MinHashParams | None:
        if self.method != "minhash":
            return None
        return minhash.MinHashParams.from_threshold(
            self.threshold, self.num_perm, self.ngram, self.seed, false_negative_weight=self.false_negative_weight
        )

    def paragraph_option(self, name: str, default):
        return self.paragraphs.get(name, default)


def method_stats(method: str, mh_params: minhash.MinHashParams | None) -> dict:
    """The manifest's record of how the stage compared rows (the same on every engine)."""
    stats: dict = {"method": method}
    if mh_params:
        stats["minhash"] = {
            "threshold": mh_params.threshold, "num_perm": mh_params.num_perm, "bands": mh_params.bands,
            "rows": mh_params.rows, "ngram": mh_params.ngram, "seed": mh_params.seed,
        }
    return stats


def _quality(table: pa.Table, kind: str, quality_column: str | None) -> np.ndarray:
    if quality_column is None:
        return quality_key(table)
    if quality_column in table.schema.names:
        return pc.cast(table.column(quality_column), pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64)
    raise ValueError(f"dedup.quality_column {quality_column!r} is not a column of the {kind} input; leave it unset to rank copies by clean's tags")


def fingerprint_batch(table: pa.Table, kind: str, params: minhash.MinHashParams | None, quality_column: str | None) -> tuple[Fingerprints, np.ndarray]:
    """Fingerprints of a batch, and which rows have no words left (empty match form).
    Raises ValueError when a named `quality_column` is not in the batch."""
    texts = text_of(table, kind)
    keys = match_keys(texts)
    digests = [exact_key(k) for k in keys]
    quality = _quality(table, kind, quality_column)
    signatures = shingles = None
    if params is not None:
        signatures, values, counts = minhash.fingerprints_of_keys(keys, params)
        shingles = _object_array(np.split(values, np.cumsum(counts)[:-1]) if len(counts) else [])
    rows = Fingerprints(
        ids=np.array(table.column("id").to_pylist(), dtype=object),
        keys=np.array(digests, dtype="S16"),
        lengths=np.fromiter((len(t) for t in texts), np.int64, count=len(texts)),
        quality=quality,
        sources=np.array(table.column("source").to_pylist(), dtype=object),
        signatures=signatures,
        shingles=shingles,
    )
    return rows, np.array([not k for k in keys], dtype=bool)


@dataclass
class BatchFingerprints:
    """What the driver keeps of one batch, computed in a worker: which rows repeated paragraphs
    emptied, and compact fingerprints of the others (no Python object per row)."""

    emptied: np.ndarray  # bool, one per row of the batch
    ids: pa.Array  # the rows not emptied, in order
    sources: pa.Array
    keys: np.ndarray  # S16
    lengths: np.ndarray  # int64
    quality: np.ndarray  # float64
    bands: np.ndarray | None = None  # (rows, bands) uint64
    wordless: np.ndarray | None = None  # bool: all-empty signature
    shingle_values: np.ndarray | None = None  # uint32, the rows' sets one after the other
    shingle_counts: np.ndarray | None = None  # int64
    signatures: np.ndarray | None = None  # (rows, num_perm) uint32, only when the index is written


def compact_fingerprints(table: pa.Table, kind: str, params: minhash.MinHashParams | None, quality_column: str | None,
                         repeated: paragraphs.RepeatedLines | None = None, signatures: bool = False) -> BatchFingerprints:
    """`BatchFingerprints` of a batch, after removing its repeated lines (documents); a document
    that had words and has none left is `emptied`. The same keys, band keys and shingle sets as
    `fingerprint_batch`. Raises ValueError when a named `quality_column` is not in the batch."""
    emptied = np.zeros(table.num_rows, dtype=bool)
    if kind == DOCUMENTS and repeated:
        originals = text_of(table, kind)
        table, _, _ = paragraphs.strip_batch(table, repeated)
    texts = text_of(table, kind)
    keys = match_keys(texts)
    if kind == DOCUMENTS and repeated:
        # Whether a text had words before: its key says so unless stripping changed it.
        before = np.array([bool(k) for k in keys], dtype=bool)
        changed = [i for i, (original, text) in enumerate(zip(originals, texts)) if original != text]
        before[changed] = [bool(k) for k in match_keys([originals[i] for i in changed])]
        emptied = before & np.array([not k for k in keys], dtype=bool)
        if emptied.any():
            table = table.filter(pa.array(~emptied))
            texts = [t for t, e in zip(texts, emptied.tolist()) if not e]
            keys = [k for k, e in zip(keys, emptied.tolist()) if not e]
    out = BatchFingerprints(
        emptied=emptied,
        ids=table.column("id").combine_chunks(),
        sources=table.column("source").combine_chunks(),
        keys=np.array([exact_key(k) for k in keys], dtype="S16").reshape(len(keys)),
        lengths=np.fromiter((len(t) for t in texts), np.int64, count=len(texts)),
        quality=_quality(table, kind, quality_column),
    )
    if params is not None:
        sig, out.shingle_values, out.shingle_counts = minhash.fingerprints_of_keys(keys, params)
        out.bands = minhash.band_hashes(sig, params) if len(keys) else np.empty((0, params.bands), np.uint64)
        out.wordless = (sig == _EMPTY_VALUE).all(axis=1)
        out.signatures = sig if signatures else None
    return out


class RowStore:
    """The `ClusterRows` of a dedup run, filled batch by batch into arrays sized up front
    (prior rows first, then the new rows that were not emptied); shingle sets and signatures go
    to spill files in `folder`."""

    def __init__(self, capacity: int, params: minhash.MinHashParams | None, folder: Path, signatures: bool):
        self.size = 0
        self.prior = 0
        self.keys = np.empty(capacity, "S16")
        self.lengths = np.empty(capacity, np.int64)
        self.quality = np.empty(capacity, np.float64)
        self.source_codes = np.empty(capacity, np.int32)
        self.source_names: list = []
        self._source_code: dict = {}
        self._ids: list[pa.Array] = []
        self._id_chunks: list[pa.Array] = []
        self.params = params
        self.bands = self.wordless = self.shingles = self.signatures = self.has_shingles = None
        if params is not None:
            self.bands = np.empty((params.bands, capacity), np.uint64)  # one contiguous array per band
            self.wordless = np.empty(capacity, bool)
            self.shingles = ShingleSpill(folder / "shingles.u32", capacity)
            if signatures:
                self.signatures = SignatureSpill(folder / "signatures.u32", params.num_perm)

    def _codes(self, sources: pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(sources, null_encoding="encode")
        mapping = []
        for name in encoded.dictionary.to_pylist():
            if name not in self._source_code:
                self._source_code[name] = len(self.source_names)
                self.source_names.append(name)
            mapping.append(self._source_code[name])
        return np.array(mapping, np.int32)[encoded.indices.to_numpy(zero_copy_only=False)] if mapping else np.empty(0, np.int32)

    def _add_ids(self, ids: pa.Array) -> None:
        self._ids.append(ids.cast(pa.large_string()))
        if len(self._ids) >= 256:  # fewer, larger chunks: one array in the end
            self._id_chunks.append(pa.concat_arrays(self._ids))
            self._ids = []

    def append(self, ids: pa.Array, sources: pa.Array, keys: np.ndarray, lengths: np.ndarray, quality: np.ndarray,
               bands: np.ndarray | None = None, wordless: np.ndarray | None = None,
               shingle_values: np.ndarray | None = None, shingle_counts: np.ndarray | None = None,
               signatures: np.ndarray | None = None, has_shingles: bool = True) -> None:
        lo, hi = self.size, self.size + len(keys)
        self._add_ids(ids)
        self.keys[lo:hi], self.lengths[lo:hi], self.quality[lo:hi] = keys, lengths, quality
        self.source_codes[lo:hi] = self._codes(sources)
        if self.params is not None:
            self.bands[:, lo:hi] = bands.T
            self.wordless[lo:hi] = wordless
            self.shingles.append(shingle_values, shingle_counts)
            if self.signatures is not None:
                self.signatures.append(signatures)
            if not has_shingles:
                if self.has_shingles is None:
                    self.has_shingles = np.ones(len(self.keys), bool)
                self.has_shingles[lo:hi] = False
        self.size = hi

    def append_batch(self, batch: BatchFingerprints) -> None:
        self.append(batch.ids, batch.sources, batch.keys, batch.lengths, batch.quality, batch.bands, batch.wordless,
                    batch.shingle_values, batch.shingle_counts, batch.signatures)

    def rows(self) -> ClusterRows:
        """The rows appended so far, for `clusters.find_clusters`."""
        n = self.size
        chunks = self._id_chunks + ([pa.concat_arrays(self._ids)] if self._ids else [])
        ids = pa.concat_arrays(chunks) if chunks else pa.array([], pa.large_string())
        self._ids, self._id_chunks = [], []
        return ClusterRows(
            ids=ids, keys=self.keys[:n], lengths=self.lengths[:n], quality=self.quality[:n],
            source_codes=self.source_codes[:n], source_names=self.source_names, prior=self.prior,
            bands=None if self.bands is None else self.bands[:, :n],
            wordless=None if self.wordless is None else self.wordless[:n],
            shingles=None if self.shingles is None else self.shingles.read,
            has_shingles=None if self.has_shingles is None else self.has_shingles[:n],
            signatures=None if self.signatures is None else self.signatures.read,
        )

    def close(self) -> None:
        for spill in (self.shingles, self.signatures):
            if spill is not None:
                spill.close()


# Steps run by the engine: plain functions of (batch, context), picklable.


def _count_step(batch, context):
    min_chars, categories = context
    return paragraphs.line_keys(_table(batch), min_chars, categories)


def _fingerprint_step(batch, context):
    kind, params, quality_column, repeated, signatures = context
    return compact_fingerprints(_table(batch), kind, params, quality_column, repeated, signatures)


def _strip_step(batch, repeated):
    return paragraphs.strip_batch(_table(batch), repeated)


def _unchanged_step(batch, _):
    return _table(batch), Counter(), {}


def _table(batch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def _batches(inputs: Iterable[Path], kind: str, rows: int, columns: list[str] | None = None):
    for path in inputs:
        yield from iter_batches(path, kind, rows, columns)


# The columns each pass reads (those an input has): counting lines and fingerprinting need the
# words, their source and the keep rule's tags, not the rest of the row (its meta is most of a book's).
_LINE_COLUMNS = ["source", "category", "text"]


def _fingerprint_columns(kind: str, quality_column: str | None) -> list[str]:
    return ["id", "source", "text" if kind == DOCUMENTS else "messages", *QUALITY_TAGS, *([quality_column] if quality_column else [])]


def _holds(inputs: Iterable[Path], kind: str, categories: frozenset | None) -> bool:
    """Whether any row is of one of the categories: read from the category column alone."""
    if categories is None:
        return True
    for path in inputs:
        for file in kind_files(path, kind):
            values = pq.read_table(file, columns=["category"]).column("category").unique().to_pylist()
            if categories.intersection(values):
                return True
    return False


def _input_rows(inputs: Iterable[Path], kind: str) -> int:
    return sum(count_rows(path, kind) for path in inputs)


def _reason_column(table: pa.Table, emptied: np.ndarray, new_start: int, rejected: tuple, ids) -> tuple[pa.Table, pa.Table]:
    """(kept, rejected with `reason`) of one batch: `emptied` its rows left without words,
    `new_start` the row number of its first other row among the new rows, `rejected` the
    clusters' (new-row positions, kept rows, exact) of the whole input."""
    positions, kept_rows, exact = rejected
    present = np.flatnonzero(~emptied)
    lo, hi = np.searchsorted(positions, [new_start, new_start + len(present)])
    reasons = np.full(table.num_rows, None, dtype=object)
    reasons[emptied] = BOILERPLATE_ONLY
    if hi > lo:
        kept_ids = ids.take(pa.array(kept_rows[lo:hi])).to_pylist()
        labels = np.where(exact[lo:hi], "exact_duplicate_of", "near_duplicate_of").tolist()
        reasons[present[positions[lo:hi] - new_start]] = [f"{label}:{i}" for label, i in zip(labels, kept_ids)]
    mask = reasons != None  # noqa: E711 - elementwise over an object array
    if not mask.any():
        return table, table.slice(0, 0).append_column("reason", pa.array([], pa.string()))
    flags = pa.array(mask)
    rejected_rows = table.filter(flags).append_column("reason", pa.array(reasons[mask].tolist(), pa.string()))
    return table.filter(pc.invert(flags)), rejected_rows


def _index_tables(rows, store: RowStore, rejected_positions: np.ndarray, chunk: int = 65536):
    """The fingerprints of the new rows that were kept, in input order, as index tables."""
    start = store.prior
    for lo in range(start, max(store.size, start + 1), chunk):
        hi = min(lo + chunk, store.size)
        keep = np.ones(max(hi - lo, 0), bool)
        r_lo, r_hi = np.searchsorted(rejected_positions, [lo - start, hi - start])
        keep[rejected_positions[r_lo:r_hi] - (lo - start)] = False
        chosen = lo + np.flatnonzero(keep)
        yield index_table(
            rows.ids.take(pa.array(chosen)), rows.keys[chosen], rows.lengths[chosen], rows.quality[chosen],
            rows.sources(chosen),
            None if store.signatures is None else store.signatures.read(chosen),
            None if store.shingles is None else store.shingles.read(chosen),
        )


def run_dedup_stage(
    inputs: Sequence[Path],
    output,
    params: dict,
    manifest: StageManifest,
    engine,
    progress: Callable[[str, int], None] | None = None,
) -> StageManifest:
    settings = DedupSettings.from_params(params)
    mh_params = settings.minhash_params()
    inputs = [Path(p) for p in inputs]
    index = None
    segment = segment_name([i["fingerprint"] for i in manifest.inputs] or [fingerprint(p) for p in inputs])
    if settings.index_path:
        index = DedupIndex(
            settings.index_path,
            {"method": settings.method, **({"num_perm": mh_params.num_perm, "ngram": mh_params.ngram, "seed": mh_params.seed} if mh_params else {})},
        )
    found_kinds = {kind for path in inputs for kind in kinds_in(path)}
    stats = method_stats(settings.method, mh_params)
    groups: dict[str, int] = {}
    with DatasetWriter(output, manifest) as writer:
        for kind in (k for k in TEXT_KINDS if k in found_kinds):
            kind_stats: dict = {}
            repeated = None
            categories = settings.paragraph_option("categories", ["web"])
            categories = None if categories is None else frozenset(categories)
            if kind == DOCUMENTS and settings.paragraph_option("enabled", True) and _holds(inputs, kind, categories):
                _phase(f"{kind}: counting lines")
                min_chars = settings.paragraph_option("min_chars", 8)
                counts = paragraphs.LineCounts()
                context = (min_chars, categories)
                for batch_counts in engine.map(_count_step, _batches(inputs, kind, engine.batch_rows, _LINE_COLUMNS), context):
                    counts.add(*batch_counts)
                repeated = counts.repeated(
                    min_chars, settings.paragraph_option("min_documents", 5), settings.paragraph_option("min_share", 0.05),
                )
                del counts
            new_rows = _input_rows(inputs, kind)
            prior_rows = index.rows(kind, exclude=segment) if index else 0
            with tempfile.TemporaryDirectory(prefix=f"dedup-{kind}-", dir=writer.folder) as spill:
                store = RowStore(prior_rows + new_rows, mh_params, Path(spill), signatures=index is not None)
                try:
                    segments = []
                    if index:
                        _phase(f"{kind}: reading the index")
                        segments = index.load_into(kind, segment, store, mh_params)
                    store.prior = store.size
                    _phase(f"{kind}: fingerprints")
                    emptied = np.zeros(new_rows, dtype=bool)
                    offset = 0
                    context = (kind, mh_params, settings.quality_column, repeated, index is not None)
                    for batch in engine.map(_fingerprint_step, _batches(inputs, kind, engine.batch_rows, _fingerprint_columns(kind, settings.quality_column)), context):
                        emptied[offset : offset + len(batch.emptied)] = batch.emptied
                        offset += len(batch.emptied)
                        store.append_batch(batch)
                    rows = store.rows()
                    store.bands = None  # find_clusters frees them once the candidate pairs are found
                    _phase(f"{kind}: clusters")
                    found = find_clusters(rows, mh_params, settings.keep, settings.source_priority)
                    rejected = found.rejected()
                    if index:
                        _phase(f"{kind}: writing the index")
                        index.write_tables(kind, segment, _index_tables(rows, store, rejected[0]))
                finally:
                    store.close()
            _phase(f"{kind}: writing")
            removed_lines, first_seen = Counter(), {}
            offset = new_start = 0
            batches = _batches(inputs, kind, engine.batch_rows)
            # Without lines to strip the write pass is a copy: no worker pool for it.
            written = engine.map(_strip_step, batches, repeated) if repeated else (_unchanged_step(b, None) for b in batches)
            for table, batch_removed, batch_first in written:
                if batch_removed:
                    removed_lines.update(batch_removed)
                    for key, line in batch_first.items():
                        first_seen.setdefault(key, line)
                batch_emptied = emptied[offset : offset + table.num_rows]
                kept, rejected_rows = _reason_column(table, batch_emptied, new_start, rejected, rows.ids)
                offset += table.num_rows
                new_start += int((~batch_emptied).sum())
                writer.write(kind, kept)
                writer.reject(kind, rejected_rows)
                manifest.rows_in[kind] = manifest.rows_in.get(kind, 0) + table.num_rows
                if progress:
                    progress(kind, table.num_rows)
            for audit in found.audit(rows, kind):
                writer.write(CLUSTERS, audit)
            if repeated is not None:
                writer.write(REPEATED_PARAGRAPHS, paragraphs.audit_table(repeated, removed_lines, first_seen))
                kind_stats["repeated_paragraphs"] = {
                    "lines": len(removed_lines),
                    "occurrences_removed": sum(removed_lines.values()),
                    "documents_emptied": int(emptied.sum()),
                }
            exact_rows = int(rejected[2].sum())
            groups[kind] = found.count(rows)
            kind_stats.update(
                {
                    "exact_duplicates": exact_rows,
                    "near_duplicates": len(rejected[2]) - exact_rows,
                    "clusters": groups[kind],
                    "candidate_pairs_checked": found.near_pairs_checked,
                    "candidate_pairs_similar": found.near_pairs_similar,
                    "prior_rows": prior_rows,
                    "prior_segments": segments,
                }
            )
            stats[kind] = kind_stats
            del rows, found, rejected, emptied
        manifest.stats["duplicate_groups"] = groups
        manifest.stats["dedup"] = stats
        if index:
            manifest.stats["dedup"]["index"] = {"path": str(index.root), "segment": segment}
        _phase("committing")
        return writer.commit()


def _phase(name: str) -> None:
    """Marks where the stage is, at debug level (benchmarks/dedup_memory.py --phases reads it)."""
    log.debug("dedup phase: %s", name)
