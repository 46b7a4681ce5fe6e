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

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import minhash
from .clusters import Fingerprints, binary16

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

    def _readable(self, kind: str, exclude: str | None) -> list[tuple[Path, pq.ParquetFile]]:
        """The segments of `kind` but `exclude`, opened and checked."""
        opened = []
        for file in self.segments(kind):
            if file.stem == exclude:
                continue
            try:
                parquet = pq.ParquetFile(file)
            except (pa.ArrowInvalid, OSError) as exc:
                raise IndexMismatch(f"dedup index {file} cannot be read ({exc})") from None
            self._check(file, parquet.schema_arrow)
            opened.append((file, parquet))
        return opened

    def rows(self, kind: str, exclude: str | None = None) -> int:
        """Rows in every segment of `kind` but `exclude`, from the files' metadata."""
        return sum(parquet.metadata.num_rows for _, parquet in self._readable(kind, exclude))

    def load_into(self, kind: str, exclude: str | None, store, params: minhash.MinHashParams | None, batch_rows: int = 65536) -> list[str]:
        """Append the fingerprints of every segment but `exclude` to `store` (a
        `deduplicate.RowStore`: band keys and compact columns in memory, shingle sets and
        signatures to its spill files), batch by batch; the names of the segments read."""
        names = []
        for file, parquet in self._readable(kind, exclude):
            try:
                for batch in parquet.iter_batches(batch_size=batch_rows):
                    store.append(**_columns(batch, params))
            except (pa.ArrowInvalid, OSError) as exc:
                raise IndexMismatch(f"dedup index {file} cannot be read ({exc})") from None
            names.append(file.stem)
        return names

    def write_tables(self, kind: str, segment: str, tables) -> Path:
        """Replace segment `segment` of `kind` with the rows of `tables` (`index_table`s, at
        least one, all of one schema), written one after the other, atomically."""
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{segment}.parquet"
        tmp = folder / f".{segment}.tmp-{os.getpid()}"
        writer = None
        try:
            for table in tables:
                table = table.replace_schema_metadata(self.schema_metadata())
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        os.replace(tmp, target)
        return target

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


def index_table(ids: pa.Array, keys: np.ndarray, lengths: np.ndarray, quality: np.ndarray, sources: pa.Array,
                signatures: np.ndarray | None = None, shingles=None) -> pa.Table:
    """One table of index rows, as `Fingerprints.to_table` writes them: id, key (16 bytes),
    length, quality, source, and with MinHash the signature and the shingle set
    (`clusters.ShingleSets` of these rows)."""
    columns = {
        "id": ids.cast(pa.string()),
        "key": binary16(keys),
        "length": pa.array(lengths, pa.int64()),
        "quality": pa.array(quality, pa.float64()),
        "source": sources.cast(pa.string()),
    }
    if signatures is not None:
        columns["signature"] = pa.FixedSizeListArray.from_arrays(pa.array(signatures.ravel(), pa.uint32()), signatures.shape[1])
    if shingles is not None:
        columns["shingles"] = pa.ListArray.from_arrays(pa.array(shingles.offsets.astype(np.int32), pa.int32()), pa.array(shingles.values, pa.uint32()))
    return pa.table(columns)


def _columns(batch: pa.RecordBatch, params: minhash.MinHashParams | None) -> dict:
    """`RowStore.append` arguments of one batch of an index segment."""
    names = batch.schema.names
    keys = batch.column(names.index("key"))
    out = {
        "ids": batch.column(names.index("id")),
        "sources": batch.column(names.index("source")),
        "keys": np.frombuffer(keys.buffers()[1], "S16", count=len(keys), offset=keys.offset * 16).copy(),
        "lengths": batch.column(names.index("length")).to_numpy(zero_copy_only=False).astype(np.int64),
        "quality": batch.column(names.index("quality")).to_numpy(zero_copy_only=False).astype(np.float64),
    }
    if params is None:
        return out
    column = batch.column(names.index("signature"))
    signatures = column.flatten().to_numpy(zero_copy_only=False).astype(np.uint32, copy=False).reshape(len(batch), column.type.list_size)
    out.update(
        bands=minhash.band_hashes(signatures, params) if len(batch) else np.empty((0, params.bands), np.uint64),
        wordless=(signatures == np.uint32(0xFFFFFFFF)).all(axis=1),
        signatures=signatures,
    )
    if "shingles" in names:
        column = batch.column(names.index("shingles"))
        offsets = column.offsets.to_numpy()
        out.update(shingle_values=column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]].astype(np.uint32),
                   shingle_counts=np.diff(offsets).astype(np.int64))
    else:
        out.update(shingle_values=np.empty(0, np.uint32), shingle_counts=np.zeros(len(batch), np.int64), has_shingles=False)
    return out
