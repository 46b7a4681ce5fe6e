"""The ingest stage: import file and dataset sources, extract documents from crawled pages."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa

from schemas import CONVERSATIONS, DOCUMENTS, PAGES
from schemas.dataset import DatasetWriter, StageManifest, iter_batches

from transforms.engines.local import add_count


def run_ingest(sources: list[dict], page_inputs: list[Path], output, params, manifest, progress=None) -> StageManifest:
    """Import the file and dataset sources, and extract documents from crawled pages.

    Each source is {"name", "category", "path", "format", "encoding"}; crawled pages come from
    the crawl stage's dataset, with per-source extraction rules in params["extract_rules"]."""
    from .extract import pages_to_documents
    from .importers import SourceError, import_file, list_files

    flush_rows = int(params.get("batch_rows", 2048))
    with DatasetWriter(output, manifest) as writer:
        kept: dict[str, list[dict]] = {DOCUMENTS: [], CONVERSATIONS: []}
        removed: dict[str, list[dict]] = {DOCUMENTS: [], CONVERSATIONS: []}

        def flush(force: bool = False) -> None:
            for kind in kept:
                if kept[kind] and (force or len(kept[kind]) >= flush_rows):
                    writer.write(kind, pa.Table.from_pylist(kept[kind]))
                    kept[kind] = []
                if removed[kind] and (force or len(removed[kind]) >= flush_rows):
                    writer.reject(kind, pa.Table.from_pylist(removed[kind]))
                    removed[kind] = []

        files_read = {}
        import_counts: dict[str, Counter] = {}
        untrained_meta: dict[str, Counter] = {}
        seen_ids: dict[str, set[str]] = {DOCUMENTS: set(), CONVERSATIONS: set()}
        for source in sources:
            path = Path(source["path"])
            files = list_files(path, source["format"])
            if not files:
                raise SourceError(f"source {source['name']}: no {source['format']} files at {path}")
            files_read[source["name"]] = len(files)
            for file in files:
                for item in import_file(file, source["format"], source["name"], source["category"], {"encoding": source.get("encoding", "auto")}):
                    add_count(manifest, "rows_in", item.kind, 1)
                    import_counts.setdefault(source["name"], Counter()).update(item.tally)
                    untrained_meta.setdefault(source["name"], Counter()).update(item.untrained)
                    row_id = item.row.get("id")
                    if not item.reason and row_id in seen_ids[item.kind]:
                        # The same content again in another file of the source: one id, one row.
                        item.reason = f"repeated_record:{row_id}"
                    if item.reason:
                        removed[item.kind].append({**item.row, "reason": item.reason})
                    else:
                        seen_ids[item.kind].add(row_id)
                        kept[item.kind].append(item.row)
                flush()
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
        manifest.stats["import_counts"] = {name: dict(sorted(c.items())) for name, c in import_counts.items() if c}
        # Meta keys holding a record's own content that no message or text carries (what is
        # set aside, not trained), with the rows that have each.
        manifest.stats["untrained_meta"] = {name: dict(sorted(c.items())) for name, c in untrained_meta.items() if c}
        return writer.commit()
