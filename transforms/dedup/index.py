"""The persistent dedup index: fingerprints (exact key, MinHash signature) of the corpus kept so
far, so that a new crawl is deduplicated against it without reading or hashing that corpus again.

Layout: INDEX/<kind>/<segment>.parquet, one segment per dedup run, named by that run's inputs.
A run reads every segment but its own and then replaces its own: running the same inputs again
gives the same answer instead of finding each row a duplicate of itself. Band keys are not
stored: they are recomputed from the signatures, so changing the threshold keeps the index.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .clusters import Fingerprints

_META_KEY = b"tcm_corpus.dedup_index"


class IndexMismatch(ValueError):
    """An index built with other signature parameters than the config asks for."""


def segment_name(input_fingerprints: list[str]) -> str:
    return "segment-" + hashlib.sha256("\n".join(input_fingerprints).encode()).hexdigest()[:20]


class DedupIndex:
    def __init__(self, root: str | os.PathLike, signature_params: dict):
        # What makes two signatures comparable: the shingles and the hashing, not the banding.
        self.root = Path(root)
        self.signature_params = signature_params

    def _check(self, file: Path, schema: pa.Schema) -> None:
        stored = json.loads((schema.metadata or {}).get(_META_KEY, b"{}"))
        if stored != self.signature_params:
            raise IndexMismatch(
                f"dedup index {file} was built with {stored or 'unknown parameters'}, "
                f"the config asks for {self.signature_params}: point dedup.index_path elsewhere or rebuild it"
            )

    def schema_metadata(self) -> dict[bytes, bytes]:
        """What a segment's Parquet schema carries: the signature parameters it was built with."""
        return {_META_KEY: json.dumps(self.signature_params, sort_keys=True).encode()}

    def check_file(self, file: Path) -> None:
        """Raise IndexMismatch when a segment cannot be read or was built with other parameters
        (its footer only: for engines that read the rows themselves)."""
        try:
            schema = pq.read_schema(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise IndexMismatch(f"dedup index {file} cannot be read ({exc})") from None
        self._check(file, schema)

    def segments(self, kind: str) -> list[Path]:
        folder = self.root / kind
        return sorted(folder.glob("segment-*.parquet")) if folder.is_dir() else []

    def load(self, kind: str, exclude: str | None = None) -> tuple[Fingerprints | None, list[str]]:
        """The fingerprints of every segment but `exclude`, and the names of those read."""
        parts, names = [], []
        for file in self.segments(kind):
            if file.stem == exclude:
                continue
            try:
                table = pq.read_table(file)
            except (pa.ArrowInvalid, OSError) as exc:
                raise IndexMismatch(f"dedup index {file} cannot be read ({exc})") from None
            self._check(file, table.schema)
            parts.append(Fingerprints.from_table(table))
            names.append(file.stem)
        return (Fingerprints.concat(parts) if parts else None), names

    def write(self, kind: str, segment: str, rows: Fingerprints) -> Path:
        """Replace segment `segment` of `kind` with `rows`, atomically."""
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        table = rows.to_table()
        table = table.replace_schema_metadata(self.schema_metadata())
        target = folder / f"{segment}.parquet"
        tmp = folder / f".{segment}.tmp-{os.getpid()}"
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, target)
        return target
