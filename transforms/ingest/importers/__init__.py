"""Importers of local files and datasets: each turns one file into Documents or Conversations.

    for record in import_file(path, "book", source="ancient-books", category="books"):
        if record.reason: ...  # rejected, with the row as read
        else: ...              # record.row holds the columns of record.kind's schema

Formats (the name a source's config gives):
    book          classical books (<篇名>/<目录> layout, GB18030 or Big5 or UTF-8); one Document
                  per chapter; a file without that layout is one Document
    text          any plain text file, one Document
    monograph     pharmacopoeia herb monographs, one Document per herb with its sections in meta
    terms         national standard terminology (code, term, synonyms, definition), one per term
    instructions  records in any common shape (Q&A, Alpaca, ShareGPT, OpenAI messages, text)
                  from JSON, JSONL, CSV, TSV, Parquet, Arrow or a datasets folder: one
                  Conversation per dialogue record, one Document per text record
    benchmark     evaluation sets (CSV, JSON, JSONL), as Documents holding question and options;
                  decontamination reads them through load_benchmark instead

Every file may be compressed (.gz, .bz2, .xz, .zst; its first bytes decide).

Options (all optional): `encoding` names a text encoding ("auto" or absent: detect it); `fields`
maps shape names to a records file's own field names (instructions); `book` (book) and `title`
(text) override the names read from the file; `benchmark` names a benchmark; `report`, a dict the
importer fills with what it learnt of the file (`encoding`, `detector`, `replaced_bytes`, `format`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterator

from .base import Imported, SourceError, SourceRejected, reject_repeats
from .compression import COMPRESSIONS, logical_suffix, sniff_file
from .benchmarks import import_benchmark, load_benchmark
from .books import import_book, import_text
from .instructions import import_instructions
from .monographs import import_monographs, import_terms

__all__ = [
    "FORMATS",
    "Imported",
    "SourceError",
    "SourceRejected",
    "check_file",
    "import_file",
    "list_files",
    "scan_source",
    "load_benchmark",
]

Importer = Callable[[Path, str, str, dict | None], Iterator[Imported]]

FORMATS: dict[str, Importer] = {
    "book": import_book,
    "text": import_text,
    "monograph": import_monographs,
    "terms": import_terms,
    "instructions": import_instructions,
    "benchmark": import_benchmark,
}

# Which files of a folder each format reads (each also compressed: .gz, .bz2, .xz, .zst).
SUFFIXES = {
    "book": (".txt",),
    "text": (".txt", ".md"),
    "monograph": (".txt",),
    "terms": (".txt",),
    "instructions": (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".arrow", ".feather", ".ipc"),
    "benchmark": (".csv", ".json", ".jsonl"),
}
TEXT_FORMATS = ("book", "text", "monograph", "terms")


def import_file(
    path: Path, fmt: str, source: str, category: str, options: dict | None = None
) -> Iterator[Imported]:
    """Every record of one file, kept or rejected; a record repeating an earlier one of the same
    file is rejected as `repeated_record:<id>`. An unknown format or a missing file is an error
    at the call; a file that cannot be read raises SourceError when iteration starts."""
    path = Path(path)
    importer = _importer(fmt)
    if not (path.is_file() or (fmt == "instructions" and path.is_dir())):
        raise SourceError(f"{path}: no such file")
    return reject_repeats(importer(path, source, category, options))


def list_files(path: Path, fmt: str) -> list[Path]:
    """A file, or every file of the format under a folder (sorted, hidden files skipped); a
    datasets folder (save_to_disk, or with a dataset card) stands for itself."""
    return scan_source(path, fmt)[0]


def scan_source(path: Path, fmt: str) -> tuple[list[Path], list[dict]]:
    """(files to read, skipped): what a source's path holds for `fmt`, and every file under a
    folder that is not read, as {"path", "reason"}. A hidden file or folder is skipped as one
    entry (reason `hidden`); a file of another kind as `not <fmt>: <suffix>`."""
    from .records import is_datasets_folder

    path = Path(path)
    _importer(fmt)
    if path.is_file() or (fmt == "instructions" and is_datasets_folder(path)):
        return [path], []
    if not path.is_dir():
        raise SourceError(f"{path}: no such file or folder")
    suffixes = SUFFIXES[fmt]
    files: list[Path] = []
    skipped: list[dict] = []

    seen: set[str] = {os.path.realpath(path)}

    def walk(folder: Path) -> None:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                skipped.append({"path": str(entry), "reason": "hidden"})
            elif entry.is_dir() and os.path.realpath(entry) in seen:  # a link back to a folder already read: a loop
                skipped.append({"path": str(entry), "reason": "folder already read (a link loop)"})
            elif entry.is_dir():
                seen.add(os.path.realpath(entry))
                if fmt == "instructions" and is_datasets_folder(entry):
                    files.append(entry)
                else:
                    walk(entry)
            elif not entry.is_file():
                skipped.append({"path": str(entry), "reason": "not a regular file"})
            elif logical_suffix(entry) in suffixes:
                files.append(entry)
            else:
                skipped.append({"path": str(entry), "reason": f"not {fmt}: {entry.suffix.lower() or 'no suffix'}"})

    walk(path)
    return files, skipped


def check_file(path: Path, fmt: str) -> None:
    """Raise SourceError (one line: the file, what it is, what would read it) when `fmt` cannot
    read the file at all: a binary file for a text format, an unsupported kind for records.
    Reads a few bytes only; what a file holds row by row is the importer's business."""
    path = Path(path)
    if fmt == "instructions":
        from .records import record_format

        record_format(path)
        return
    if path.is_dir():
        raise SourceError(f"{path}: a folder, not a {fmt} file")
    kind = sniff_file(path)
    if kind in ("parquet", "arrow", "arrow-stream"):
        raise SourceError(f"{path}: a {kind.split('-')[0].title()} file; format = \"instructions\" reads records (its `text` column as documents)")
    if kind is not None and kind not in COMPRESSIONS.values():
        raise SourceError(f"{path}: a {kind} file, not text; format {fmt!r} reads plain text files (optionally .gz/.bz2/.xz/.zst)")
    if fmt in TEXT_FORMATS and logical_suffix(path) in (".json", ".jsonl", ".ndjson", ".csv", ".tsv"):
        raise SourceError(f"{path}: a {logical_suffix(path)[1:].upper()} file; format = \"instructions\" reads records")


def _importer(fmt: str) -> Importer:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown import format {fmt!r}; known: {', '.join(sorted(FORMATS))}") from None
