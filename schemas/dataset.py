"""Datasets on disk: folders of Parquet files per record kind, a `rejected/` folder, a manifest.

Layout of a dataset directory::

    DIR/_manifest.json                  what the stage read, wrote, removed, and with what config
    DIR/documents/part-00000.parquet    kept rows, one sub-folder per record kind
    DIR/conversations/part-00000.parquet
    DIR/rejected/documents/part-00000.parquet   removed rows, same columns plus `reason`

A writer fills `DIR.tmp-<pid>` and renames it into place only when complete, so a dataset
directory with a manifest is always whole, and a crash leaves nothing that looks finished.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .records import CORPUS, KINDS, SCHEMA_VERSION, conform, kind_of, nullable_schema, rejected_schema

MANIFEST = "_manifest.json"
REJECTED = "rejected"


class DatasetError(Exception):
    """A dataset that is missing, incomplete or not of the expected shape."""


@dataclass
class StageManifest:
    stage: str
    schema_version: str = SCHEMA_VERSION
    code_version: str = ""
    config_hash: str = ""
    inputs: list[dict] = field(default_factory=list)  # [{"path", "fingerprint"}]
    rows_in: dict[str, int] = field(default_factory=dict)  # per record kind, as they came in
    # Rows of a kind the stage made from rows of another (convert: conversations from documents);
    # per kind, in + made = kept + rejected.
    rows_made: dict[str, int] = field(default_factory=dict)
    rows_kept: dict[str, int] = field(default_factory=dict)  # rows (in or made) accounted for in the output
    rows_rejected: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)  # rows written (conversion may fan out)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    files: list[dict] = field(default_factory=list)  # [{"path", "rows", "bytes"}]
    stats: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    fingerprint: str = ""

    def key(self) -> dict:
        """What must match for a finished stage to be reused instead of run again."""
        return {
            "stage": self.stage,
            "schema_version": self.schema_version,
            "code_version": self.code_version,
            "config_hash": self.config_hash,
            "inputs": [i["fingerprint"] for i in self.inputs],
        }

    def settle(self, written: dict[str, int], rejected: dict[str, int], reasons: dict[str, int]) -> None:
        """Close the ledger when a writer commits: rows written and rejected per kind, kept as
        in + made - rejected for each kind a stage did not count itself, the reasons sorted."""
        self.rows_out = {**self.rows_out, **written}
        self.rows_rejected = {**{k: 0 for k in (*self.rows_in, *self.rows_made)}, **rejected}
        for kind in dict.fromkeys([*self.rows_in, *self.rows_made]):
            self.rows_kept.setdefault(kind, self.rows_in.get(kind, 0) + self.rows_made.get(kind, 0) - self.rows_rejected.get(kind, 0))
        self.rejected_by_reason = dict(sorted(reasons.items()))

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "StageManifest":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_manifest(path: str | os.PathLike) -> StageManifest | None:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return StageManifest.from_dict(json.loads(manifest.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"{manifest}: unreadable manifest ({exc})") from exc


def fingerprint(path: str | os.PathLike) -> str:
    """A short identity of a dataset folder or input file: a finished dataset's own fingerprint,
    else the names, sizes and modification times of the files under it."""
    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest and manifest.fingerprint:
        return manifest.fingerprint
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if file != path else file.name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def hash_config(section: object) -> str:
    text = json.dumps(section, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def kind_files(path: str | os.PathLike, kind: str) -> list[Path]:
    """The Parquet files holding rows of `kind` in a dataset folder.

    A plain folder of Parquet files (a user's own data) counts as one kind, told by its columns."""
    path = Path(path)
    sub = path / kind
    if sub.is_dir():
        return sorted(sub.glob("*.parquet"))
    loose = sorted(path.glob("*.parquet"))
    if loose and kind_of(pq.read_schema(loose[0])) == kind:
        return loose
    return []


def kinds_in(path: str | os.PathLike) -> list[str]:
    return [kind for kind in (*KINDS, CORPUS) if kind_files(path, kind)]


def check_input(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"input folder {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"input {path} is not a folder")
    try:
        kinds = kinds_in(path)
        for kind in kinds:
            for file in kind_files(path, kind):
                pq.read_metadata(file)  # the footer only: cheap, and it catches truncated files
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"input folder {path}: a Parquet file cannot be read ({_first_line(exc)})") from None
    if not kinds:
        raise DatasetError(f"input folder {path} holds no dataset (no Parquet files of a known kind)")
    return path


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def iter_batches(path: str | os.PathLike, kind: str, batch_size: int = 1024, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The rows of `kind` in a dataset folder, file by file, `batch_size` rows at a time; only
    `columns` (all when None) are read, those of them a file holds (a reader conforms the rest)."""
    for file in kind_files(path, kind):
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"{file}: not a readable Parquet file ({exc})") from exc
        held = None if columns is None else [name for name in columns if name in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=batch_size, columns=held):
            yield batch


def read_kind(path: str | os.PathLike, kind: str) -> pa.Table:
    files = kind_files(path, kind)
    if not files:
        return conform(pa.Table.from_pylist([], schema=nullable_schema(kind)), kind)
    return pa.concat_tables([conform(pq.read_table(f), kind) for f in files], promote_options="permissive")


def count_rows(path: str | os.PathLike, kind: str) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in kind_files(path, kind))


# How a stage's parts are written. A row group gathers the rows of several write calls (a
# stage writes batch by batch): per row group the writer flushes pages, compresses and keeps
# statistics, so groups of a batch's 2,000 rows cost a third more CPU to write and read. Groups
# stay a few MB on disk so that a Spark scan can still spread a part over several tasks.
ROW_GROUP_ROWS = 16_384
ROW_GROUP_BYTES = 32 << 20  # of Arrow data: a kind of long rows gets groups of fewer rows
# Columns a dictionary pays for: few distinct values, repeated (leaf names; `role` of messages,
# `kind` of repairs). Tried on text, ids and JSON, a dictionary outgrows its page at once and
# falls back to plain encoding after the work of building it.
DICTIONARY_COLUMNS = frozenset({"source", "category", "lang", "format", "body_kind", "role", "kind"})
# LZ4 (Parquet's LZ4_RAW): a stage's output is written once and read two or three times (the
# next stage, the suites), and zstd cost about twice its CPU for files a third smaller. The
# corpus shards users keep are written by the sample stage, in zstd.
COMPRESSION = "lz4"


def parquet_leaves(schema: pa.Schema) -> list[str]:
    """The Parquet column paths of an Arrow schema's leaves, as writer properties name them
    (`messages.list.element.role`)."""

    def leaves(prefix: str, dtype: pa.DataType) -> list[str]:
        if pa.types.is_struct(dtype):
            return [p for i in range(dtype.num_fields) for p in leaves(f"{prefix}.{dtype.field(i).name}", dtype.field(i).type)]
        if pa.types.is_map(dtype):
            return leaves(f"{prefix}.key_value.key", dtype.key_type) + leaves(f"{prefix}.key_value.value", dtype.item_type)
        if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
            return leaves(f"{prefix}.list.element", dtype.value_type)
        return [prefix]

    return [path for field in schema for path in leaves(field.name, field.type)]


def part_writer(path: str | os.PathLike, schema: pa.Schema) -> pq.ParquetWriter:
    """A Parquet writer for one part of a dataset: COMPRESSION, dictionaries on DICTIONARY_COLUMNS only."""
    dictionary = [p for p in parquet_leaves(schema) if p.rsplit(".", 1)[-1] in DICTIONARY_COLUMNS]
    return pq.ParquetWriter(path, schema, compression=COMPRESSION, use_dictionary=dictionary)


class _PartWriter:
    """Writes one record kind as numbered Parquet parts of at most `part_rows` rows, in row
    groups of at most ROW_GROUP_ROWS rows (or about ROW_GROUP_BYTES of data, whichever comes first)."""

    def __init__(self, folder: Path, kind: str, part_rows: int, schema_of):
        self.folder, self.kind, self.part_rows, self.schema_of = folder, kind, part_rows, schema_of
        self.writer: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None
        self.part = 0
        self.rows_in_part = 0
        self.rows = 0
        self.files: list[dict] = []
        self._pending: list[pa.Table] = []  # rows of the open part not yet in a row group
        self._pending_rows = 0
        self._pending_bytes = 0

    def write(self, table: pa.Table) -> None:
        table = self.schema_of(table)
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            table = table.select([n for n in self.schema.names if n in table.schema.names])
            table = conform_to(table, self.schema)
        offset = 0
        while offset < table.num_rows:
            if self.writer is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                name = self.folder / f"part-{self.part:05d}.parquet"
                self.writer = part_writer(name, self.schema)
                self.files.append({"path": str(name), "rows": 0})
            take = min(self.part_rows - self.rows_in_part, table.num_rows - offset)
            piece = table.slice(offset, take)
            self._pending.append(piece)
            self._pending_rows += take
            self._pending_bytes += piece.nbytes
            offset += take
            self.rows_in_part += take
            self.rows += take
            self.files[-1]["rows"] += take
            if self.rows_in_part >= self.part_rows or self._pending_bytes >= ROW_GROUP_BYTES:
                self._flush(whole=True)
            elif self._pending_rows >= ROW_GROUP_ROWS:
                self._flush(whole=False)
            if self.rows_in_part >= self.part_rows:
                self._close_part()

    def _flush(self, whole: bool) -> None:
        """Write the pending rows as row groups of ROW_GROUP_ROWS: all of them (`whole`, the last
        group smaller), or only full groups, the rest left pending for the next write."""
        if not self._pending_rows:
            return
        pending = pa.concat_tables(self._pending)
        ready = pending.num_rows if whole else pending.num_rows - pending.num_rows % ROW_GROUP_ROWS
        self.writer.write_table(pending.slice(0, ready), row_group_size=ROW_GROUP_ROWS)
        rest = pending.slice(ready)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows, self._pending_bytes = rest.num_rows, rest.nbytes if rest.num_rows else 0

    def _close_part(self) -> None:
        if self.writer is not None:
            self._flush(whole=True)
            self.writer.close()
            self.writer = None
            self.part += 1
            self.rows_in_part = 0

    def close(self) -> None:
        self._close_part()


def conform_to(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for f in schema:
        if f.name in table.schema.names:
            col = table.column(f.name)
            columns.append(col.cast(f.type) if col.type != f.type else col)
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


class DatasetWriter:
    """Builds a dataset in a temporary folder and moves it into place on `commit`."""

    def __init__(self, output: str | os.PathLike, manifest: StageManifest, part_rows: int = 50_000):
        self.output = Path(output)
        self.tmp = self.output.with_name(f"{self.output.name}.tmp-{os.getpid()}")
        remove_stale_temporaries(self.output)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.manifest = manifest
        self.manifest.started_at = self.manifest.started_at or _now()
        self.part_rows = part_rows
        self._kept: dict[str, _PartWriter] = {}
        self._rejected: dict[str, _PartWriter] = {}
        self.reasons: Counter[str] = Counter()
        self._extra_files: list[dict] = []
        self._t0 = time.perf_counter()

    @property
    def folder(self) -> Path:
        """Where files that are not record parts (reports, indexes) go while the stage runs."""
        return self.tmp

    def write(self, kind: str, rows: pa.Table | pa.RecordBatch) -> None:
        if rows.num_rows == 0:
            return
        if kind not in self._kept:
            self._kept[kind] = _PartWriter(self.tmp / kind, kind, self.part_rows, lambda t: conform(t, kind))
        self._kept[kind].write(_as_table(rows))

    def reject(self, kind: str, rows: pa.Table | pa.RecordBatch) -> None:
        """Rows removed by the stage; each must carry a `reason`."""
        if rows.num_rows == 0:
            return
        table = _as_table(rows)
        if "reason" not in table.schema.names:
            raise ValueError("rejected rows need a reason column")
        if kind not in self._rejected:
            self._rejected[kind] = _PartWriter(
                self.tmp / REJECTED / kind, kind, self.part_rows, lambda t: _conform_rejected(t, kind)
            )
        self._rejected[kind].write(table)
        for reason in table.column("reason").to_pylist():
            self.reasons[reason.split(":", 1)[0] if reason else "unknown"] += 1

    def add_file(self, name: str, rows: int) -> None:
        """Record a file the stage wrote itself into `folder` (shards, exports)."""
        self._extra_files.append({"path": name, "rows": rows, "bytes": (self.tmp / name).stat().st_size})

    def rows_written(self, kind: str) -> int:
        return self._kept[kind].rows if kind in self._kept else 0

    def rows_rejected(self, kind: str) -> int:
        return self._rejected[kind].rows if kind in self._rejected else 0

    def commit(self) -> StageManifest:
        for part_writer in (*self._kept.values(), *self._rejected.values()):
            part_writer.close()
        m = self.manifest
        m.settle({k: w.rows for k, w in self._kept.items()}, {k: w.rows for k, w in self._rejected.items()}, self.reasons)
        files = []
        for part_writer in (*self._kept.values(), *self._rejected.values()):
            for entry in part_writer.files:
                path = Path(entry["path"])
                files.append(
                    {"path": str(path.relative_to(self.tmp)), "rows": entry["rows"], "bytes": path.stat().st_size}
                )
        m.files = sorted(files + self._extra_files, key=lambda f: f["path"])
        m.timings.setdefault("seconds", round(time.perf_counter() - self._t0, 3))
        m.finished_at = _now()
        m.fingerprint = hash_config({"key": m.key(), "files": m.files})
        (self.tmp / MANIFEST).write_text(m.to_json(), encoding="utf-8")
        replace_folder(self.tmp, self.output)
        return m

    def abort(self) -> None:
        for part_writer in (*self._kept.values(), *self._rejected.values()):
            try:
                part_writer.close()
            except Exception:  # noqa: BLE001 - cleaning up after a failure already being raised
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def remove_stale_temporaries(output: str | os.PathLike) -> list[Path]:
    """Remove `OUTPUT.tmp-<pid>` and `OUTPUT.old-<pid>` folders whose process is gone.

    A killed or cancelled stage leaves its temporary folder; the stage starts again from
    nothing, so the folder is only disk space. A folder whose process still runs is left alone."""
    output = Path(output)
    removed = []
    if not output.parent.is_dir():
        return removed
    for candidate in output.parent.glob(glob.escape(output.name) + ".*-*"):
        tag, _, pid = candidate.name[len(output.name) + 1:].rpartition("-")
        if tag not in ("tmp", "old") or not pid.isdigit() or not candidate.is_dir():
            continue
        if int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def replace_folder(new: Path, target: Path) -> None:
    """Put `new` at `target`; an older `target` is moved aside first and removed after."""
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    if old.exists():
        shutil.rmtree(old)


def _as_table(rows: pa.Table | pa.RecordBatch) -> pa.Table:
    return pa.Table.from_batches([rows]) if isinstance(rows, pa.RecordBatch) else rows


def _conform_rejected(table: pa.Table, kind: str) -> pa.Table:
    reason = table.column("reason")
    body = conform(table.drop_columns(["reason"]), kind, extra=False)
    return body.append_column(rejected_schema(kind).field("reason"), reason.cast(pa.string()))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
