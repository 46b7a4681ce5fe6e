"""The ingest stage: import file and dataset sources, extract documents from crawled pages."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa

from schemas import CONVERSATIONS, DOCUMENTS, PAGES
from schemas.records import SCHEMAS, rejected_schema
from schemas.dataset import DatasetWriter, StageManifest, iter_batches

from transforms.engines.local import add_count


def run_ingest(sources: list[dict], page_inputs: list[Path], output, params, manifest, progress=None) -> StageManifest:
    """Import the file and dataset sources, and extract documents from crawled pages.

    Each source is {"name", "category", "path", "format", "encoding", "fields"?,
    "allow_all_rejected"?}; crawled pages come from the crawl stage's dataset, with per-source
    extraction rules in params["extract_rules"]. The manifest's stats say, per file read, its
    format, compression, encoding (and who chose it), replaced bytes and rows (`source_files`);
    every file of a folder not read and why (`skipped_files`); rows per source with the most
    common rejection (`sources`, see `sources_all_rejected`); and the dialogue repairs made
    (`repairs`: joined_turns, dropped_opening, dropped_unanswered)."""
    from schemas.records import loads_meta

    from .extract import pages_to_documents
    from .importers import SourceError, import_file, scan_source
    from .importers.base import well_formed

    flush_rows = int(params.get("batch_rows", 2048))
    with DatasetWriter(output, manifest) as writer:
        kept: dict[str, list[dict]] = {DOCUMENTS: [], CONVERSATIONS: []}
        removed: dict[str, list[dict]] = {DOCUMENTS: [], CONVERSATIONS: []}

        def flush(force: bool = False) -> None:
            for kind in kept:
                if kept[kind] and (force or len(kept[kind]) >= flush_rows):
                    writer.write(kind, _rows_table(kept[kind], SCHEMAS[kind]))
                    kept[kind] = []
                if removed[kind] and (force or len(removed[kind]) >= flush_rows):
                    writer.reject(kind, _rows_table(removed[kind], rejected_schema(kind)))
                    removed[kind] = []

        files_read = {}
        source_files: list[dict] = []
        skipped_files: list[dict] = []
        per_source: dict[str, dict] = {}
        repairs: Counter = Counter()
        import_counts: dict[str, Counter] = {}
        untrained_meta: dict[str, Counter] = {}
        seen_ids: dict[str, set[str]] = {DOCUMENTS: set(), CONVERSATIONS: set()}
        for source in sources:
            path = Path(source["path"])
            files, skipped = scan_source(path, source["format"])
            skipped_files += [{"source": source["name"], **entry} for entry in skipped]
            if not files:
                raise SourceError(f"source {source['name']}: no {source['format']} files at {path}")
            files_read[source["name"]] = len(files)
            reasons: Counter = Counter()
            counts = {"rows": 0, "kept": 0, "rejected": 0}
            tally = import_counts.setdefault(source["name"], Counter())
            untrained = untrained_meta.setdefault(source["name"], Counter())
            # Rows per tuple of untrained keys (few distinct tuples), counted per key after the source.
            untrained_tuples: Counter = Counter()
            for file in files:
                report: dict = {}
                options = {"encoding": source.get("encoding", "auto"), "fields": source.get("fields") or {}, "report": report}
                file_counts = {"rows": 0, "kept": 0, "rejected": 0}
                rows_in: Counter = Counter()  # per kind, in order of first sight; into the manifest per file
                for item in import_file(file, source["format"], source["name"], source["category"], options):
                    rows_in[item.kind] += 1
                    if item.tally:
                        tally.update(item.tally)
                    if item.untrained:
                        untrained_tuples[item.untrained] += 1
                    row_id = item.row.get("id")
                    if not item.reason and row_id in seen_ids[item.kind]:
                        # The same content again in another file of the source: one id, one row.
                        item.reason = f"repeated_record:{row_id}"
                    file_counts["rows"] += 1
                    if item.reason:
                        removed[item.kind].append({**item.row, "reason": item.reason})
                        file_counts["rejected"] += 1
                        reasons[item.reason.split(":", 1)[0] if item.reason.startswith("repeated_record") else item.reason] += 1
                    else:
                        seen_ids[item.kind].add(row_id)
                        kept[item.kind].append(item.row)
                        file_counts["kept"] += 1
                        if item.kind == CONVERSATIONS:
                            repairs.update(loads_meta(item.row["meta"]).get("repairs") or {})
                for kind, rows in rows_in.items():
                    add_count(manifest, "rows_in", kind, rows)
                flush()
                source_files.append({"source": source["name"], "path": str(file), "format": source["format"], **report, **file_counts})
                for key in counts:
                    counts[key] += file_counts[key]
            for keys, rows in untrained_tuples.items():
                for key in keys:
                    untrained[key] += rows
            per_source[source["name"]] = {
                **counts,
                "top_reason": reasons.most_common(1)[0][0] if reasons else None,
                "allow_all_rejected": bool(source.get("allow_all_rejected")),
            }
        flush(force=True)

        extract_params = {"min_chars": params.get("min_chars", 20), "rules": params.get("extract_rules", {})}
        for path in page_inputs:
            for batch in iter_batches(path, PAGES, flush_rows):
                documents, rejected_pages = pages_to_documents(batch, extract_params, seen_ids[DOCUMENTS])
                writer.write(DOCUMENTS, documents)
                writer.reject(PAGES, rejected_pages)
                add_count(manifest, "rows_in", PAGES, batch.num_rows)
                add_count(manifest, "rows_kept", PAGES, documents.num_rows)
        manifest.stats["files_read"] = files_read
        manifest.stats["source_files"] = source_files
        manifest.stats["skipped_files"] = skipped_files
        manifest.stats["sources"] = per_source
        manifest.stats["repairs"] = dict(sorted(repairs.items()))
        manifest.stats["import_counts"] = {name: dict(sorted(c.items())) for name, c in import_counts.items() if c}
        # Meta keys holding a record's own content that no message or text carries (what is
        # set aside, not trained), with the rows that have each.
        manifest.stats["untrained_meta"] = {name: dict(sorted(c.items())) for name, c in untrained_meta.items() if c}
        manifest.stats = well_formed(manifest.stats)  # file names that are not UTF-8 cannot be written as such
        return writer.commit()


def _rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """The rows as a table; typed by `schema` (no inference: a third of the cost) when every row
    holds exactly its columns, as the importers' rows do, else inferred (nothing dropped)."""
    names = set(schema.names)
    if all(row.keys() == names for row in rows):
        return pa.Table.from_pylist(rows, schema=schema)
    return pa.Table.from_pylist(rows)


# What each format reads, and what to write for a text file it does not fit: said when a source
# yields no rows at all.
FORMAT_READS = {
    "monograph": "pharmacopoeia monographs (a herb's name on its own line, then 【性味与归经】-style headings)",
    "terms": "terminology standards (a numbered code, the term, its definition)",
    "book": "classical books", "text": "plain text", "instructions": "records", "benchmark": "evaluation items",
}
TEXT_HINT = 'for classical books write format = "book", for any other plain text format = "text"'


def sources_all_rejected(stats: dict) -> list[str]:
    """One line per source of an ingest whose rows were all rejected (and that does not allow
    it): the source, its rows and its most common rejection reason; for a source that yielded no
    rows, the file(s) read, what its format reads and what to write instead."""
    lines = []
    for name, figures in (stats.get("sources") or {}).items():
        if figures.get("allow_all_rejected"):
            continue
        if figures["rows"] and not figures["kept"]:
            lines.append(
                f"source {name}: all {figures['rows']} rows rejected, most often {figures['top_reason']} "
                f"(see rejected/ in the output; allow_all_rejected = true in the source accepts this)"
            )
        elif not figures["rows"]:
            files = [f for f in stats.get("source_files") or [] if f.get("source") == name]
            if not files:
                lines.append(f"source {name}: no rows read (allow_all_rejected = true in the source accepts this)")
                continue
            fmt = files[0].get("format", "")
            where = files[0]["path"] + (f" and {len(files) - 1} more files" if len(files) > 1 else "")
            hint = f"; {TEXT_HINT}" if fmt in ("monograph", "terms") else ""
            lines.append(
                f"source {name}: {where}: no rows read as format = \"{fmt}\", which reads {FORMAT_READS.get(fmt, fmt)}"
                f"{hint} (allow_all_rejected = true in the source accepts no rows)"
            )
    return lines
