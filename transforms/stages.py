"""Each stage of the build as a function over datasets on disk, run by an engine.

A stage reads its input dataset folders, writes one output dataset through a DatasetWriter (a
temporary folder renamed into place), and fills the manifest's ledger: for every record kind it
reads, rows in = rows kept + rows rejected. Orchestration (skipping finished stages, logging,
retries) belongs to the caller; nothing here knows about Prefect.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import CONVERSATIONS, CORPUS, DOCUMENTS, PAGES, SCHEMA_VERSION
from schemas.dataset import DatasetWriter, StageManifest, iter_batches, kinds_in, read_kind

from . import clean, dedup
from .convert import convert_documents
from .decontaminate import ContaminationIndex, decontaminate_batch
from .engine import LocalEngine
from .export import export_corpus
from .shards import CORPUS_MANIFEST, write_corpus

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)
Progress = Callable[[str, int], None]


def _batches(inputs: Iterable[Path], kind: str, rows: int):
    for path in inputs:
        yield from iter_batches(path, kind, rows)


def _present(inputs: list[Path], kinds: Iterable[str]) -> list[str]:
    found = {kind for path in inputs for kind in kinds_in(path)}
    return [kind for kind in kinds if kind in found]


def _count(manifest: StageManifest, field: str, kind: str, n: int) -> None:
    counts = getattr(manifest, field)
    counts[kind] = counts.get(kind, 0) + n


# -- clean ------------------------------------------------------------------------------------


def _clean_step(batch, context):
    kind, params = context
    return clean.STEPS[kind](batch, params)


def run_map_stage(step, inputs, output, manifest, engine, kinds, context_of, progress: Progress | None = None):
    """Run `step` over every batch of each kind; each result is (kept, rejected)."""
    with DatasetWriter(output, manifest) as writer:
        for kind in _present(inputs, kinds):
            for kept, rejected in engine.map(step, _batches(inputs, kind, engine.batch_rows), context_of(kind)):
                writer.write(kind, kept)
                writer.reject(kind, rejected)
                _count(manifest, "rows_in", kind, kept.num_rows + rejected.num_rows)
                if progress:
                    progress(kind, kept.num_rows + rejected.num_rows)
        return writer.commit()


def run_clean(inputs, output, params, manifest, engine: LocalEngine, progress=None) -> StageManifest:
    return run_map_stage(_clean_step, inputs, output, manifest, engine, TEXT_KINDS, lambda kind: (kind, params), progress)


# -- dedup ------------------------------------------------------------------------------------


def _keys_step(batch, kind):
    return dedup.dedup_keys(batch, kind)


def run_dedup(inputs, output, params, manifest, engine: LocalEngine, progress=None) -> StageManifest:
    with DatasetWriter(output, manifest) as writer:
        groups = {}
        for kind in _present(inputs, TEXT_KINDS):
            keys = engine.map(_keys_step, _batches(inputs, kind, engine.batch_rows), kind)
            duplicate_of = dedup.choose_survivors(keys, params.get("keep", "first"))
            groups[kind] = len(set(duplicate_of.values()))
            offset = 0
            for batch in _batches(inputs, kind, engine.batch_rows):
                kept, rejected = dedup.split_duplicates(batch, duplicate_of, offset)
                offset += batch.num_rows
                writer.write(kind, kept)
                writer.reject(kind, rejected)
                _count(manifest, "rows_in", kind, batch.num_rows)
                if progress:
                    progress(kind, batch.num_rows)
        manifest.stats["duplicate_groups"] = groups
        return writer.commit()


# -- decontaminate ----------------------------------------------------------------------------


def _decontaminate_step(batch, context):
    kind, index, action = context
    return decontaminate_batch(batch, kind, index, action)


def run_decontaminate(inputs, output, params, manifest, engine: LocalEngine, items: list[dict], progress=None) -> StageManifest:
    index = ContaminationIndex.build(
        items, params.get("ngram", 13), params.get("min_overlap", 0.5), params.get("min_question_chars", 8)
    )
    manifest.stats["reference_items"] = len(index.items)
    manifest.stats["benchmarks"] = dict(Counter(item[0] for item in index.items))
    result = run_map_stage(
        _decontaminate_step,
        inputs,
        output,
        manifest,
        engine,
        TEXT_KINDS,
        lambda kind: (kind, index, params.get("action", "remove")),
        progress,
    )
    return result


def contamination_hits(manifest: StageManifest) -> dict[str, int]:
    return {k: v for k, v in manifest.rejected_by_reason.items() if k.startswith("contaminated")}


# -- convert ----------------------------------------------------------------------------------


def _convert_step(batch, params):
    return convert_documents(batch, params)


def run_convert(inputs, output, params, manifest, engine: LocalEngine, progress=None) -> StageManifest:
    if params.get("backend", "template") != "template":
        raise ValueError(f"convert.backend {params['backend']!r} cannot run in this build; use 'template'")
    with DatasetWriter(output, manifest) as writer:
        converted = repeated = 0
        produced_ids: set[str] = set()
        for result in engine.map(_convert_step, _batches(inputs, DOCUMENTS, engine.batch_rows), params):
            # Two entries can yield the same question and answer (an entry printed twice).
            conversations = result[CONVERSATIONS]
            ids = conversations.column("id").to_pylist()
            fresh = [i not in produced_ids and not produced_ids.add(i) for i in ids]
            repeated += fresh.count(False)
            writer.write(CONVERSATIONS, conversations.filter(pa.array(fresh, pa.bool_())))
            writer.write(DOCUMENTS, result[DOCUMENTS])
            writer.reject(DOCUMENTS, result["rejected"])
            n = result["converted"] + result[DOCUMENTS].num_rows + result["rejected"].num_rows
            _count(manifest, "rows_in", DOCUMENTS, n)
            converted += result["converted"]
            if progress:
                progress(DOCUMENTS, n)
        produced = writer.rows_written(CONVERSATIONS)
        # Native conversations pass through as they are.
        native = 0
        for batch in _batches(inputs, CONVERSATIONS, engine.batch_rows):
            writer.write(CONVERSATIONS, batch)
            _count(manifest, "rows_in", CONVERSATIONS, batch.num_rows)
            native += batch.num_rows
        manifest.stats.update(
            {
                "documents_converted": converted,
                "conversations_from_documents": produced,
                "repeated_conversations_not_written": repeated,
                "conversations_native": native,
                "documents_left_as_text": writer.rows_written(DOCUMENTS),
            }
        )
        return writer.commit()


# -- sample -----------------------------------------------------------------------------------


def run_sample(inputs, output, params, manifest, config_hash: str, progress=None) -> StageManifest:
    """Order everything by priority sampling and write shards `part-NNNNN.parquet` in that order,
    with `_corpus_manifest.json` describing them (see transforms.shards)."""
    with DatasetWriter(output, manifest) as writer:
        corpus = write_corpus(inputs, writer.folder, params, config_hash, progress=progress)
        manifest.rows_in.update(corpus["input_rows"])
        for shard in corpus["shards"]:
            writer.add_file(shard["path"], shard["rows"])
        (writer.folder / CORPUS_MANIFEST).write_text(json.dumps(corpus, ensure_ascii=False, indent=2), encoding="utf-8")
        manifest.rows_out[CORPUS] = corpus["rows"]
        manifest.stats.update({"shards": len(corpus["shards"]), "tokens": corpus["tokens"]["total"], "rows_per_format": corpus["counts"]["format"]})
        return writer.commit()


# -- export -----------------------------------------------------------------------------------


def run_export(inputs, output, formats: list[str], manifest: StageManifest, progress=None) -> StageManifest:
    with DatasetWriter(output, manifest) as writer:
        counts = export_corpus(inputs, writer.folder, formats, lambda n: _count(manifest, "rows_in", CORPUS, n))
        for name, rows in sorted(counts.items()):
            writer.add_file(name, rows)
        manifest.stats["files"] = dict(counts)
        return writer.commit()


# -- ingest -----------------------------------------------------------------------------------


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
        seen_ids: dict[str, set[str]] = {DOCUMENTS: set(), CONVERSATIONS: set()}
        for source in sources:
            path = Path(source["path"])
            files = list_files(path, source["format"])
            if not files:
                raise SourceError(f"source {source['name']}: no {source['format']} files at {path}")
            files_read[source["name"]] = len(files)
            for file in files:
                for item in import_file(file, source["format"], source["name"], source["category"], {"encoding": source.get("encoding", "auto")}):
                    _count(manifest, "rows_in", item.kind, 1)
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
                documents, rejected_pages = pages_to_documents(batch, extract_params)
                writer.write(DOCUMENTS, documents)
                writer.reject(PAGES, rejected_pages)
                _count(manifest, "rows_in", PAGES, batch.num_rows)
                _count(manifest, "rows_kept", PAGES, documents.num_rows)
        manifest.stats["files_read"] = files_read
        return writer.commit()
