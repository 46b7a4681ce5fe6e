"""Compressed files (.gz, .bz2, .xz, .zst) read through kept libraries, and file kinds told by
their first bytes.

The magic bytes decide, not the name: a `.jsonl` that is really gzip is read, and a `.gz` that
is not gzip is an error naming what it is. gzip, bz2 and xz come from the standard library,
Zstandard from `zstandard` (its frames may lack a content size, so it is read as a stream).
"""
from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd", ".zstd": "zstd"}

# First bytes of the kinds a user's folder holds; the compressions are read, the rest named.
MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PAR1", "parquet"),
    (b"ARROW1", "arrow"),
    (b"\xff\xff\xff\xff", "arrow-stream"),
    (b"%PDF", "pdf"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"\xd0\xcf\x11\xe0", "ole2 (old Word/Excel)"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"Rar!", "rar"),
    (b"SQLite format 3\x00", "sqlite"),
    (b"\x89PNG", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF8", "gif"),
    (b"\x7fELF", "elf"),
    (b"\x93NUMPY", "numpy"),
    (b"\x80\x04", "pickle"),
)


def sniff(head: bytes) -> str | None:
    """The kind named by a file's first bytes, or None for anything else (text, most likely)."""
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return None


def sniff_file(path: Path) -> str | None:
    with open(path, "rb") as handle:
        return sniff(handle.read(16))


def logical_name(path: Path) -> str:
    """The file name without its compression suffix: `alp.jsonl.zst` -> `alp.jsonl`."""
    name = Path(path).name
    for suffix in COMPRESSIONS:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def logical_suffix(path: Path) -> str:
    """The suffix that says the format, lower case: `.jsonl` for `alp.jsonl.gz`."""
    return Path(logical_name(path)).suffix.lower()


def decompress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.decompress(data)
    if kind == "bzip2":
        return bz2.decompress(data)
    if kind == "xz":
        return lzma.decompress(data)
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
    raise ValueError(f"not a compression: {kind}")


def read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed when its first bytes say gzip, bzip2, xz or zstd. A corrupt
    compressed file raises OSError (zstandard's error, lzma's and EOFError are wrapped)."""
    data = Path(path).read_bytes()
    kind = sniff(data[:16])
    if kind not in ("gzip", "bzip2", "xz", "zstd"):
        return data
    try:
        return decompress(data, kind)
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise OSError(f"corrupt {kind} data ({exc})") from exc
    except Exception as exc:  # zstandard.ZstdError does not derive from OSError
        raise OSError(f"corrupt {kind} data ({exc})") from exc
