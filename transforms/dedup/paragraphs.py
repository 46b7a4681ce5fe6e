"""Repeated paragraphs: lines that recur across many documents of one source (site navigation and
footers, a preface copied into every volume) are removed from the text, counted and audited.

The one place cross-document boilerplate is removed. A line is a paragraph here: ingest has
already re-joined hard-wrapped lines, so a line is a paragraph of a book or a block of a page.
Lines are compared in match form (simplified, without punctuation or spacing), per source, and
counted once per document. A line is repeated when it occurs in at least `min_documents`
documents and at least `min_share` of the source's documents: the share keeps a formula quoted in
many commentaries of a large collection from counting as boilerplate. Only sources of the
configured categories are judged (default: web): in a reference work a line shared by many
entries is content (【用法与用量】9～15g。 in fifty herb monographs), not boilerplate.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from transforms.clean.normalize import match_key, match_keys

_BLANK_LINES = re.compile(r"\n{3,}")


def _line_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def line_hashes(text: str, min_chars: int) -> list[int | None]:
    """The hash of each line's match form, None for a line too short to judge."""
    hashes = []
    for line in text.split("\n"):
        key = match_key(line) if line.strip() else ""
        hashes.append(_line_hash(key) if len(key) >= min_chars else None)
    return hashes


def batch_line_hashes(texts: list[str], min_chars: int) -> list[list[int | None]]:
    """`line_hashes` of each text, the match forms of all their lines taken at once
    (`normalize.match_keys`)."""
    lines = [text.split("\n") for text in texts]
    keys = iter(match_keys([line for text_lines in lines for line in text_lines]))
    out = []
    for text_lines in lines:
        hashes = []
        for _ in text_lines:
            key = next(keys)
            hashes.append(_line_hash(key) if len(key) >= min_chars else None)
        out.append(hashes)
    return out


def count_lines(table: pa.Table, min_chars: int, categories: frozenset[str] | None = None) -> tuple[Counter, Counter]:
    """(documents holding each (source, line hash), documents per source) of one batch, for the
    documents of the given categories (all when None)."""
    names, codes, hashes, documents = line_keys(table, min_chars, categories)
    return Counter(zip([names[c] for c in codes.tolist()], hashes.tolist())), documents


def line_keys(table: pa.Table, min_chars: int, categories: frozenset[str] | None = None) -> tuple[list, np.ndarray, np.ndarray, Counter]:
    """`count_lines` as arrays, for `LineCounts`: (the batch's source names, the source number
    (int32, into those names) and line hash (uint64) of each distinct line of each document,
    documents per source)."""
    documents: Counter = Counter()
    if categories is not None and "category" in table.schema.names:
        table = table.filter(pa.array([c in categories for c in table.column("category").to_pylist()], pa.bool_()))
    names: dict = {}
    codes: list[int] = []
    hashes: list[int] = []
    sources, texts = table.column("source").to_pylist(), [text or "" for text in table.column("text").to_pylist()]
    for source, text_hashes in zip(sources, batch_line_hashes(texts, min_chars)):
        documents[source] += 1
        code = names.setdefault(source, len(names))
        lines = {h for h in text_hashes if h is not None}
        codes.extend([code] * len(lines))
        hashes.extend(lines)
    return list(names), np.array(codes, np.int32), np.array(hashes, np.uint64), documents


class LineCounts:
    """Documents holding each (source, line hash), summed over batches in sorted arrays: about
    20 bytes per distinct line (a dict of tuples takes about 150), merged when the batches added
    since the last merge hold as many lines as the merged arrays."""

    def __init__(self) -> None:
        self.names: list = []
        self._code: dict = {}
        self.codes = np.empty(0, np.int32)
        self.hashes = np.empty(0, np.uint64)
        self.counts = np.empty(0, np.int64)
        self.documents: Counter = Counter()
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0

    def add(self, names: list, codes: np.ndarray, hashes: np.ndarray, documents: Counter) -> None:
        """One batch's `line_keys`."""
        mapping = np.array([self._code.setdefault(n, len(self._code)) for n in names], np.int32)
        self.names = list(self._code)
        self.documents.update(documents)
        if len(codes):
            self._pending.append((mapping[codes], hashes))
            self._pending_rows += len(codes)
        if self._pending_rows >= max(len(self.codes), 1 << 20):
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        codes = np.concatenate([self.codes, *(c for c, _ in self._pending)])
        hashes = np.concatenate([self.hashes, *(h for _, h in self._pending)])
        counts = np.concatenate([self.counts, np.ones(self._pending_rows, np.int64)])
        self._pending, self._pending_rows = [], 0
        order = np.lexsort((hashes, codes))
        codes, hashes, counts = codes[order], hashes[order], counts[order]
        del order
        starts = np.ones(len(codes), bool)
        starts[1:] = (codes[1:] != codes[:-1]) | (hashes[1:] != hashes[:-1])
        first = np.flatnonzero(starts)
        self.counts = np.add.reduceat(counts, first) if len(first) else counts
        self.codes, self.hashes = codes[first], hashes[first]

    def repeated(self, min_chars: int, min_documents: int, min_share: float) -> "RepeatedLines":
        """The lines to remove, as `RepeatedLines.choose` picks them from the same counts."""
        self._merge()
        chosen = RepeatedLines(min_chars=min_chars, source_documents=dict(self.documents))
        per_source = np.array([self.documents[n] for n in self.names], np.float64)
        keep = (self.counts >= min_documents) & (self.counts >= min_share * per_source[self.codes]) if len(self.codes) else np.zeros(0, bool)
        for code, line, count in zip(self.codes[keep].tolist(), self.hashes[keep].tolist(), self.counts[keep].tolist()):
            source = self.names[code]
            chosen.lines.setdefault(source, set()).add(line)
            chosen.documents[(source, line)] = count
        return chosen


@dataclass
class RepeatedLines:
    """The lines to remove, per source, with the figures of the audit."""

    min_chars: int
    lines: dict[str, set[int]] = field(default_factory=dict)
    documents: dict[tuple[str, int], int] = field(default_factory=dict)
    source_documents: dict[str, int] = field(default_factory=dict)

    @classmethod
    def choose(cls, holding: Counter, documents: Counter, min_chars: int, min_documents: int, min_share: float) -> "RepeatedLines":
        chosen = cls(min_chars=min_chars, source_documents=dict(documents))
        for (source, line), count in holding.items():
            if count >= min_documents and count >= min_share * documents[source]:
                chosen.lines.setdefault(source, set()).add(line)
                chosen.documents[(source, line)] = count
        return chosen

    def __bool__(self) -> bool:
        return bool(self.lines)

    def strip(self, source: str, text: str, hashes: list[int | None] | None = None) -> tuple[str, list[tuple[int, str]]]:
        """The text without its repeated lines, and the (hash, line) removed; `hashes`: the
        text's `line_hashes` when already known."""
        repeated = self.lines.get(source)
        if not repeated or not text:
            return text, []
        kept, removed = [], []
        for line, line_hash in zip(text.split("\n"), line_hashes(text, self.min_chars) if hashes is None else hashes):
            if line_hash is not None and line_hash in repeated:
                removed.append((line_hash, line.strip()))
            else:
                kept.append(line)
        if not removed:
            return text, []
        return _BLANK_LINES.sub("\n\n", "\n".join(kept)).strip(), removed


def strip_batch(table: pa.Table, repeated: RepeatedLines) -> tuple[pa.Table, Counter, dict[tuple[str, int], str]]:
    """The batch with repeated lines removed from `text`; occurrences removed per (source, hash),
    and the text of each removed line as first seen."""
    removed: Counter = Counter()
    first_seen: dict[tuple[str, int], str] = {}
    if not repeated:
        return table, removed, first_seen
    texts = []
    sources, originals = table.column("source").to_pylist(), [text or "" for text in table.column("text").to_pylist()]
    # Lines are hashed only for the texts of sources that have repeated lines.
    judged = [i for i, (source, text) in enumerate(zip(sources, originals)) if text and source in repeated.lines]
    hashes = dict(zip(judged, batch_line_hashes([originals[i] for i in judged], repeated.min_chars)))
    for i, (source, text) in enumerate(zip(sources, originals)):
        stripped, lines = repeated.strip(source, text, hashes.get(i))
        texts.append(stripped)
        for line_hash, line in lines:
            removed[(source, line_hash)] += 1
            first_seen.setdefault((source, line_hash), line)
    position = table.schema.get_field_index("text")
    return table.set_column(position, table.schema.field(position), pa.array(texts, pa.string())), removed, first_seen


def audit_table(repeated: RepeatedLines, removed: Counter, first_seen: dict[tuple[str, int], str]) -> pa.Table:
    """One row per repeated line that was removed at least once."""
    rows = sorted(removed, key=lambda k: (k[0], -removed[k], first_seen.get(k, "")))
    return pa.table(
        {
            "source": pa.array([s for s, _ in rows], pa.string()),
            "paragraph": pa.array([first_seen.get(k, "") for k in rows], pa.string()),
            "documents": pa.array([repeated.documents.get(k, 0) for k in rows], pa.int64()),
            "share": pa.array([repeated.documents.get(k, 0) / max(1, repeated.source_documents.get(k[0], 1)) for k in rows], pa.float64()),
            "removed": pa.array([removed[k] for k in rows], pa.int64()),
        }
    )
