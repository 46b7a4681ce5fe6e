"""Records (one dict per row) from the files a user already has.

    JSON        a list of records, one record, or an object wrapping one list ({"data": [...]});
                a list of strings is a list of texts
    JSON lines  .jsonl / .ndjson, one record (or one string) a line; a .json that is not one
                JSON value is read as JSON lines too (the content decides, not the extension)
    CSV, TSV    a header row, then one record a row; quoted fields may hold newlines and
                delimiters; .tsv is tab-separated, .csv comma-separated unless its header line
                has tabs and no commas
    Parquet     every row group, nested columns (messages: list<struct>) as lists of dicts
    Arrow       IPC files or streams (.arrow, .feather, .ipc)
    datasets    a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
                (state.json or dataset_dict.json), and a local `datasets` folder with a dataset
                card (README.md whose YAML front matter has `configs:`, or .huggingface.yaml:
                a corpus this pipeline built is one), read through the
                `datasets` library with the hub switched off; every split, in order

Any file may be compressed (.gz, .bz2, .xz, .zst): its first bytes decide. Text formats are
decoded by `encoding.decode_bytes` (BOM, UTF-8, per-line mixtures, GB18030, Big5), and the
encoding read goes to `options["report"]` when the caller passes a dict there.

`record_format(path)` names the format or raises SourceError with one line naming the file, what
it is and what is read; `read_records` yields (index, record, None), or (index, None, raw line)
for a JSON line that does not parse.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .base import SourceError, read_source
from .compression import COMPRESSIONS, logical_suffix, read_bytes, sniff, sniff_file

SUFFIXES = {
    ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
    ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".ipc": "arrow",
}
READ = "JSON, JSON lines, CSV, TSV, Parquet, Arrow, datasets folders (save_to_disk or with a dataset card), each file optionally .gz/.bz2/.xz/.zst"
BATCH_ROWS = 1024


def is_datasets_folder(path: Path) -> bool:
    """A folder the `datasets` library reads as one dataset."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return True
    if (path / ".huggingface.yaml").is_file():
        return True
    card = path / "README.md"
    if card.is_file():
        head = card.read_text(encoding="utf-8", errors="replace")[:20_000]
        if head.startswith("---") and "\nconfigs:" in head.split("\n---", 2)[0] + "\n":
            return True
    return False


def record_format(path: Path) -> str:
    """json, jsonl, csv, tsv, parquet, arrow or datasets; SourceError for anything else."""
    path = Path(path)
    if path.is_dir():
        if is_datasets_folder(path):
            return "datasets"
        raise SourceError(f"{path}: a folder that is not a datasets folder (no state.json, dataset_dict.json or dataset card)")
    with open(path, "rb") as handle:
        head = handle.read(64)
    kind = sniff(head)
    compressed = kind in ("gzip", "bzip2", "xz", "zstd")
    if compressed:
        try:
            inner = _decompressed_head(path, kind)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt file
            raise SourceError(f"{path}: corrupt {kind} data ({exc})") from None
        kind = sniff(inner) or kind
        head = inner
    if kind == "parquet":
        if not compressed:  # uncompressed: its footer is cheap to read, and a cut file has none
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowException) as exc:
                raise SourceError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        return "parquet"
    if kind in ("arrow", "arrow-stream"):
        return "arrow"
    by_name = SUFFIXES.get(logical_suffix(path))
    if by_name in ("parquet", "arrow"):
        raise SourceError(f"{path}: named {logical_suffix(path)} but its first bytes are not {by_name}")
    if kind not in (None, "gzip", "bzip2", "xz", "zstd"):
        raise SourceError(f"{path}: a {kind} file, not records; instructions sources read {READ}")
    if _looks_binary(head):
        raise SourceError(f"{path}: binary data of an unknown kind; instructions sources read {READ}")
    if by_name is None and not _opens_json(head):
        raise SourceError(f"{path}: plain text ({_text_encoding(path)}), not records: instructions sources read {READ}; "
                          f"for a book or other text write kind = \"files\" with format = \"book\" (or \"text\")")
    return by_name or "json"  # told apart from JSON lines by content


def _opens_json(head: bytes) -> bool:
    """Whether the first bytes of a file named neither .json nor .jsonl open JSON (an object or
    an array, after any byte-order mark and white space); UTF-16/32 text is left to the reader."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return True
    stripped = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    return not stripped or stripped[:1] in (b"{", b"[")


def _text_encoding(path: Path) -> str:
    """The encoding a plain text file reads in, from its first 64 KiB: utf-8, or a legacy guess."""
    from .encoding import detect_legacy

    data = read_bytes(path)[:65536]
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(data) - 3:  # a character cut by the sample's end
            return "utf-8"
    return detect_legacy(data)[0]


def _decompressed_head(path: Path, kind: str) -> bytes:
    if kind == "zstd":
        import zstandard

        with open(path, "rb") as handle:
            return zstandard.ZstdDecompressor().stream_reader(handle).read(64)
    import bz2
    import gzip
    import lzma

    opener = {"gzip": gzip.open, "bzip2": bz2.open, "xz": lzma.open}[kind]
    with opener(path, "rb") as handle:
        return handle.read(64)


def _looks_binary(head: bytes) -> bool:
    # NUL bytes without a UTF-16/32 byte-order mark: no text encoding we read has them.
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
        return False
    return b"\x00" in head


def read_records(path: Path, options: dict | None = None) -> Iterator[tuple[int, Any, str | None]]:
    """Every record of a file or datasets folder, in order (see the module's doc for formats)."""
    path = Path(path)
    fmt = record_format(path)
    report = (options or {}).get("report")
    if isinstance(report, dict):
        report["format"] = fmt
        if path.is_file() and sniff_file(path) in COMPRESSIONS.values():
            report["compression"] = sniff_file(path)
    if fmt == "parquet":
        yield from _enumerate(_parquet_rows(path))
    elif fmt == "arrow":
        yield from _enumerate(_arrow_rows(path))
    elif fmt == "datasets":
        yield from _enumerate(_datasets_rows(path))
    elif fmt in ("csv", "tsv"):
        yield from _enumerate(_delimited_rows(path, fmt, options))
    else:
        yield from _json_records(path, options)


def _enumerate(rows: Iterator[Any]) -> Iterator[tuple[int, Any, None]]:
    for index, row in enumerate(rows):
        yield index, row, None


def _json_records(path: Path, options: dict | None) -> Iterator[tuple[int, Any, str | None]]:
    """A file that parses as one JSON value is a list of records, one record, or a wrapping
    object holding one list of records ({"data": [...]}); any other file is read as JSON lines."""
    text = read_source(path, options).text.lstrip("\ufeff \t\r\n")
    try:
        whole = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        if text.startswith("["):
            why = "nested too deeply" if isinstance(exc, RecursionError) else exc
            raise SourceError(f"{path}: not valid JSON ({why})") from None
        for index, line in enumerate(line for line in text.splitlines() if line.strip()):
            try:
                yield index, json.loads(line), None
            except (json.JSONDecodeError, RecursionError):  # a line nested past the parser's depth is not a record either
                yield index, None, line
        return
    records = whole if isinstance(whole, list) else [whole]
    if isinstance(whole, dict) and not _has_record_fields(whole):
        lists = [v for v in whole.values() if isinstance(v, list) and v and all(isinstance(r, (dict, str)) for r in v)]
        records = lists[0] if len(lists) == 1 else records
    for index, record in enumerate(records):
        yield index, record, None


# Fields that make a dict a record rather than a wrapper around a list of records.
RECORD_FIELDS = {"messages", "conversations", "dialogue", "text", "content", "instruction", "instruct",
                 "question", "query", "prompt", "input", "output", "answer", "response", "completion",
                 "history", "system", "id"}


def _has_record_fields(record: dict) -> bool:
    return bool(RECORD_FIELDS.intersection(record))


def _delimited_rows(path: Path, fmt: str, options: dict | None) -> Iterator[dict]:
    text = read_source(path, options).text.lstrip("\ufeff")
    if fmt == "csv":
        header = text.split("\n", 1)[0]
        delimiter = "\t" if "\t" in header and "," not in header else ","
    else:
        delimiter = "\t"
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    for row in reader:
        # A row longer than the header puts its extra cells under None: keep them visible.
        extra = row.pop(None, None)
        record = {key: value for key, value in row.items() if key is not None}
        if extra:
            record["_extra_cells"] = extra
        yield record


def _parquet_rows(path: Path) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        source = pa.BufferReader(read_bytes(path))
        parquet = pq.ParquetFile(source)
        for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from None


def _arrow_rows(path: Path) -> Iterator[dict]:
    import pyarrow as pa

    data = read_bytes(path)
    try:
        try:
            reader = pa.ipc.open_file(pa.BufferReader(data))
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        except pa.ArrowInvalid:
            batches = iter(pa.ipc.open_stream(pa.BufferReader(data)))
        for batch in batches:
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{path}: not a readable Arrow file ({exc})") from None


def _datasets_rows(path: Path) -> Iterator[dict]:
    """Rows of every split, through `datasets`, offline: nothing is fetched from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import datasets

    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    except Exception as exc:  # noqa: BLE001 - the library raises many kinds; one line names the folder
        raise SourceError(f"{path}: the datasets library cannot read this folder ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    splits = loaded.items() if isinstance(loaded, dict) else [(None, loaded)]
    for split, dataset in splits:
        for table in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS):
            for row in table.to_pylist():
                if split is not None and "split" not in row:
                    row["split"] = split
                yield row

