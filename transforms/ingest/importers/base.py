"""What every importer yields, and the rows it fills."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from schemas.records import CONVERSATIONS, DOCUMENTS, content_id, conversation_id, document_id, dumps_meta

from .encoding import Decoded, read_text


class SourceError(Exception):
    """A file that cannot be read at all; message is one line naming the file."""


class SourceRejected(SourceError):
    """A source every row of which was rejected; the message is one line naming the source and
    its most common reason."""


@dataclass
class Imported:
    kind: str  # schemas.records.DOCUMENTS or CONVERSATIONS
    row: dict  # columns of that kind's schema
    reason: str | None = None  # set when the record is rejected; row still holds what was read
    # Labels counted per source in the ingest manifest (stats.import_counts), e.g. identity:renamed.
    tally: tuple[str, ...] = ()
    # Meta keys holding the record's own content that no message or text carries: listed per
    # source with counts in the ingest manifest (stats.untrained_meta), so nothing is set
    # aside unseen.
    untrained: tuple[str, ...] = ()

    @property
    def rejected(self) -> bool:
        return self.reason is not None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def well_formed(value: Any) -> Any:
    """`value` with every lone surrogate (a JSON "\\ud800", an undecodable byte of a file name)
    replaced by U+FFFD, in strings nested in lists and dicts too: text that cannot be written
    as UTF-8 would fail the whole stage."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # fails exactly on a lone surrogate; faster than searching for one
        except UnicodeEncodeError:
            return _LONE_SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, list):
        return [well_formed(v) for v in value]
    if isinstance(value, dict):
        return {well_formed(k): well_formed(v) for k, v in value.items()}
    return value


def _holds_lone_surrogate(value: Any) -> bool:
    """Whether a string nested in `value` may hold a lone surrogate: its JSON writes every string
    as it is, so one search over that answers for all of them (True when it cannot be written)."""
    try:
        return _LONE_SURROGATE.search(_JSON.encode(value)) is not None
    except (TypeError, ValueError):
        return True


_JSON = json.JSONEncoder(ensure_ascii=False)


def well_formed_meta(meta: dict | None, dumped: str | None = None) -> str | None:
    """`dumps_meta(well_formed(meta))`: the JSON of a record's meta. JSON writes every string of
    it (keys too) as it is, so the JSON of a meta without lone surrogates is its answer, and
    only a meta with one is walked. `dumped`: dumps_meta(meta), where the caller has it."""
    if dumped is None:
        dumped = dumps_meta(meta)
    if dumped is not None and _LONE_SURROGATE.search(dumped):
        return dumps_meta(well_formed(meta))
    return dumped


def read_source(path: Path, options: dict | None = None) -> Decoded:
    """A file's text (decompressed), its encoding detected unless options["encoding"] names one;
    what was learnt goes to options["report"] when that is a dict (encoding, detector,
    replaced_bytes). An unreadable file or unknown encoding raises SourceError."""
    options = options or {}
    try:
        decoded = read_text(path, options.get("encoding"))
    except UnicodeError as exc:  # a byte-order mark that lies about the bytes after it
        raise SourceError(f"{path}: cannot be decoded as {exc.encoding} ({exc.reason})") from None
    except (OSError, LookupError) as exc:
        raise SourceError(f"{path}: cannot read ({exc})") from exc
    report = options.get("report")
    if isinstance(report, dict):
        report.update(encoding=decoded.encoding, detector=decoded.detector, replaced_bytes=decoded.replaced_bytes)
    return decoded


def replaced_in(text: str, decoded: Decoded) -> int:
    """Bytes of `text` (a part of `decoded.text`) that decoding replaced: its U+FFFD marks times
    the file's mean run of invalid bytes per mark. Goes to meta["debris_bytes"], which the
    clean stage counts as debris."""
    if not decoded.replaced_bytes:
        return 0
    marks = text.count("\ufffd")
    return round(marks * decoded.replaced_bytes / max(decoded.text.count("\ufffd"), 1)) if marks else 0


def document(
    text: str,
    source: str,
    category: str,
    *,
    title: str | None = None,
    url: str | None = None,
    meta: dict | None = None,
    reason: str | None = None,
    fallback_key: Iterable[str] = (),
    meta_json: str | None = None,
    well_formed_already: bool = False,
) -> Imported:
    """A Document; an empty text is rejected with `reason` and takes its id from `fallback_key`,
    since every empty text would otherwise share one id. `meta_json`: dumps_meta(meta), where the
    importer writes it itself. `well_formed_already`: the importer knows that no string given
    (meta_json included, which it then must give) holds a lone surrogate, so none is searched."""
    if well_formed_already:
        doc_id = document_id(source, text) if text else content_id("empty-doc", source, *fallback_key)
        return Imported(DOCUMENTS, {
            "id": doc_id, "text": text, "source": source, "category": category, "url": url, "title": title,
            "lang": None, "meta": meta_json,
        }, reason)
    text, title, url = well_formed(text), well_formed(title), well_formed(url)
    fallback_key = well_formed(list(fallback_key))
    doc_id = document_id(source, text) if text else content_id("empty-doc", source, *fallback_key)
    row = {
        "id": doc_id,
        "text": text,
        "source": source,
        "category": category,
        "url": url,
        "title": title,
        "lang": None,
        "meta": well_formed_meta(meta, meta_json),
    }
    return Imported(DOCUMENTS, row, reason)


def conversation(
    messages: list[dict],
    source: str,
    category: str,
    *,
    origin_id: str | None,
    meta: dict | None = None,
    reason: str | None = None,
    fallback_key: Iterable[str] = (),
) -> Imported:
    # Walked only when a lone surrogate may be in it; otherwise it is already well formed.
    messages = well_formed(messages) if _holds_lone_surrogate(messages) else messages
    origin_id = well_formed(origin_id)
    fallback_key = well_formed(list(fallback_key))
    conv_id = conversation_id(source, messages) if messages and reason is None else content_id(
        "malformed-conv", source, *fallback_key
    )
    row = {
        "id": conv_id,
        "messages": messages,
        "source": source,
        "category": category,
        "origin_id": origin_id,
        "meta": well_formed_meta(meta),
    }
    return Imported(CONVERSATIONS, row, reason)


def reject_repeats(records: Iterable[Imported]) -> Iterator[Imported]:
    """Content ids repeat when one source holds the same record twice; the second and later
    copies are rejected as `repeated_record:<id> (first as record <n>)`, naming the id (theirs
    too: ids are made from content) and where in the file the kept copy stands (n counts the
    file's records from 1, rejected ones included)."""
    first: dict[str, int] = {}
    for number, record in enumerate(records, 1):
        if record.reason is None:
            record_id = record.row["id"]
            if record_id in first:
                record.reason = f"repeated_record:{record_id} (first as record {first[record_id]})"
            else:
                first[record_id] = number
        yield record
