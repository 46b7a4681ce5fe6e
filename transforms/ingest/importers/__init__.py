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
    instructions  JSON list or JSONL of fine-tuning records in any common shape, one
                  Conversation per record
    benchmark     evaluation sets (CSV, JSON, JSONL), as Documents holding question and options;
                  decontamination reads them through load_benchmark instead

Options (all optional): `encoding` names a text encoding ("auto" or absent: detect it); `book`
(book) and `title` (text) override the names read from the file; `benchmark` names a benchmark.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from .base import Imported, SourceError, reject_repeats
from .benchmarks import import_benchmark, load_benchmark
from .books import import_book, import_text
from .instructions import import_instructions
from .monographs import import_monographs, import_terms

__all__ = [
    "FORMATS",
    "Imported",
    "SourceError",
    "import_file",
    "list_files",
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

# Which files of a folder each format reads.
SUFFIXES = {
    "book": (".txt",),
    "text": (".txt", ".md"),
    "monograph": (".txt",),
    "terms": (".txt",),
    "instructions": (".json", ".jsonl"),
    "benchmark": (".csv", ".json", ".jsonl"),
}


def import_file(
    path: Path, fmt: str, source: str, category: str, options: dict | None = None
) -> Iterator[Imported]:
    """Every record of one file, kept or rejected; a record repeating an earlier one of the same
    file is rejected as `repeated_record:<id>`. An unknown format or a missing file is an error
    at the call; a file that cannot be read raises SourceError when iteration starts."""
    path = Path(path)
    importer = _importer(fmt)
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    return reject_repeats(importer(path, source, category, options))


def list_files(path: Path, fmt: str) -> list[Path]:
    """A file, or every file of the format under a folder (sorted, hidden files skipped)."""
    path = Path(path)
    _importer(fmt)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SourceError(f"{path}: no such file or folder")
    suffixes = SUFFIXES[fmt]
    return sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )


def _importer(fmt: str) -> Importer:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown import format {fmt!r}; known: {', '.join(sorted(FORMATS))}") from None
