"""The dedup stage on the local engine: repeated paragraphs, then exact and near-duplicates.

Three passes over the input, the per-row work parallel through the engine, the decisions global:
1. count the lines of each source's documents (repeated paragraphs);
2. fingerprint each row (exact key, MinHash signature) after removing its repeated lines;
3. cluster all fingerprints with those of the corpus built before (the persistent index), then
   write kept rows, rejected rows with their reason, and the audits `clusters` and
   `repeated_paragraphs` as kinds of the output dataset.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import DatasetWriter, StageManifest, fingerprint, iter_batches, kind_files, kinds_in
from schemas.records import CLUSTERS, REPEATED_PARAGRAPHS

from . import minhash, paragraphs
from .clusters import KEEP_CRITERIA, Fingerprints, _object_array, cluster_duplicates
from .keys import exact_key, quality_key, text_of
from .index import DedupIndex, segment_name
from transforms.clean.normalize import match_key

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)
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


def fingerprint_batch(table: pa.Table, kind: str, params: minhash.MinHashParams | None, quality_column: str | None) -> tuple[Fingerprints, np.ndarray]:
    """Fingerprints of a batch, and which rows have no words left (empty match form).
    Raises ValueError when a named `quality_column` is not in the batch."""
    texts = text_of(table, kind)
    keys = [match_key(t) for t in texts]
    digests = [exact_key(k) for k in keys]
    if quality_column is None:
        quality = quality_key(table)
    elif quality_column in table.schema.names:
        quality = pc.cast(table.column(quality_column), pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        raise ValueError(f"dedup.quality_column {quality_column!r} is not a column of the {kind} input; leave it unset to rank copies by clean's tags")
    rows = Fingerprints(
        ids=np.array(table.column("id").to_pylist(), dtype=object),
        keys=np.array(digests, dtype="S16"),
        lengths=np.fromiter((len(t) for t in texts), np.int64, count=len(texts)),
        quality=quality,
        sources=np.array(table.column("source").to_pylist(), dtype=object),
        signatures=None if params is None else minhash.signatures_of_keys(keys, params),
        shingles=None if params is None else _object_array(minhash.shingle_sets_of_keys(keys, params.ngram)),
    )
    return rows, np.array([not k for k in keys], dtype=bool)


# Steps run by the engine: plain functions of (batch, context), picklable.


def _count_step(batch, context):
    min_chars, categories = context
    return paragraphs.count_lines(_table(batch), min_chars, categories)


def _fingerprint_step(batch, context):
    kind, params, quality_column, repeated = context
    table = _table(batch)
    emptied = np.zeros(table.num_rows, dtype=bool)
    if kind == DOCUMENTS and repeated:
        before = np.array([bool(match_key(t or "")) for t in table.column("text").to_pylist()])
        table, _, _ = paragraphs.strip_batch(table, repeated)
        rows, empty = fingerprint_batch(table, kind, params, quality_column)
        emptied = before & empty
    else:
        rows, _ = fingerprint_batch(table, kind, params, quality_column)
    return rows, emptied


def _strip_step(batch, repeated):
    return paragraphs.strip_batch(_table(batch), repeated)


def _unchanged_step(batch, _):
    return _table(batch), Counter(), {}


def _table(batch) -> pa.Table:
    return batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])


def _batches(inputs: Iterable[Path], kind: str, rows: int):
    for path in inputs:
        yield from iter_batches(path, kind, rows)


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


def _split(table: pa.Table, reasons: dict[int, str], offset: int) -> tuple[pa.Table, pa.Table]:
    positions = range(offset, offset + table.num_rows)
    mask = pa.array([p in reasons for p in positions], pa.bool_())
    rejected = table.filter(mask).append_column("reason", pa.array([reasons[p] for p in positions if p in reasons], pa.string()))
    return table.filter(pc.invert(mask)), rejected


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
    found = {kind for path in inputs for kind in kinds_in(path)}
    stats = method_stats(settings.method, mh_params)
    groups: dict[str, int] = {}
    with DatasetWriter(output, manifest) as writer:
        for kind in (k for k in TEXT_KINDS if k in found):
            kind_stats: dict = {}
            repeated = None
            categories = settings.paragraph_option("categories", ["web"])
            categories = None if categories is None else frozenset(categories)
            if kind == DOCUMENTS and settings.paragraph_option("enabled", True) and _holds(inputs, kind, categories):
                min_chars = settings.paragraph_option("min_chars", 8)
                holding, documents = Counter(), Counter()
                context = (min_chars, categories)
                for batch_holding, batch_documents in engine.map(_count_step, _batches(inputs, kind, engine.batch_rows), context):
                    holding.update(batch_holding)
                    documents.update(batch_documents)
                repeated = paragraphs.RepeatedLines.choose(
                    holding, documents, min_chars,
                    settings.paragraph_option("min_documents", 5), settings.paragraph_option("min_share", 0.05),
                )
                del holding
            parts, emptied = [], []
            context = (kind, mh_params, settings.quality_column, repeated)
            for rows, batch_emptied in engine.map(_fingerprint_step, _batches(inputs, kind, engine.batch_rows), context):
                parts.append(rows)
                emptied.append(batch_emptied)
            new = Fingerprints.concat(parts) if parts else Fingerprints.empty(mh_params.num_perm if mh_params else None)
            emptied_rows = np.concatenate(emptied) if emptied else np.zeros(0, bool)
            reasons = {int(p): BOILERPLATE_ONLY for p in np.flatnonzero(emptied_rows)}
            candidates = np.flatnonzero(~emptied_rows)
            prior, segments = index.load(kind, exclude=segment) if index else (None, [])
            decisions = cluster_duplicates(
                new.take(candidates), prior, mh_params, settings.keep, settings.source_priority, kind
            )
            for position, reason in decisions.reasons.items():
                reasons[int(candidates[position])] = reason
            if index:
                survivors = np.array(sorted(set(range(len(new))) - set(reasons)), dtype=np.int64)
                index.write(kind, segment, new.take(survivors))
            removed_lines, first_seen = Counter(), {}
            offset = 0
            batches = _batches(inputs, kind, engine.batch_rows)
            # Without lines to strip the write pass is a copy: no worker pool for it.
            written = engine.map(_strip_step, batches, repeated) if repeated else (_unchanged_step(b, None) for b in batches)
            for table, batch_removed, batch_first in written:
                if batch_removed:
                    removed_lines.update(batch_removed)
                    for key, line in batch_first.items():
                        first_seen.setdefault(key, line)
                kept, rejected = _split(table, reasons, offset)
                offset += table.num_rows
                writer.write(kind, kept)
                writer.reject(kind, rejected)
                manifest.rows_in[kind] = manifest.rows_in.get(kind, 0) + table.num_rows
                if progress:
                    progress(kind, table.num_rows)
            writer.write(CLUSTERS, decisions.clusters)
            if repeated is not None:
                writer.write(REPEATED_PARAGRAPHS, paragraphs.audit_table(repeated, removed_lines, first_seen))
                kind_stats["repeated_paragraphs"] = {
                    "lines": len(removed_lines),
                    "occurrences_removed": sum(removed_lines.values()),
                    "documents_emptied": len(np.flatnonzero(emptied_rows)),
                }
            labels = Counter(r.split(":", 1)[0] for r in reasons.values())
            clusters = decisions.clusters
            groups[kind] = len(set(clusters.column("cluster").to_pylist())) if clusters.num_rows else 0
            kind_stats.update(
                {
                    "exact_duplicates": labels.get("exact_duplicate_of", 0),
                    "near_duplicates": labels.get("near_duplicate_of", 0),
                    "clusters": groups[kind],
                    "candidate_pairs_checked": decisions.near_pairs_checked,
                    "candidate_pairs_similar": decisions.near_pairs_similar,
                    "prior_rows": 0 if prior is None else len(prior),
                    "prior_segments": segments,
                }
            )
            stats[kind] = kind_stats
        manifest.stats["duplicate_groups"] = groups
        manifest.stats["dedup"] = stats
        if index:
            manifest.stats["dedup"]["index"] = {"path": str(index.root), "segment": segment}
        return writer.commit()
