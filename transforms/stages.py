"""Each stage of the build as a function over datasets on disk, run by an engine.

A stage reads its input dataset folders, writes one output dataset through a DatasetWriter (a
temporary folder renamed into place), and fills the manifest's ledger: for every record kind it
reads, rows in = rows kept + rows rejected. Orchestration (skipping finished stages, logging,
retries) belongs to the caller; nothing here knows about Prefect.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

import pyarrow as pa

from schemas import CONVERSATIONS, CORPUS, DOCUMENTS, PAGES
from schemas.dataset import DatasetWriter, StageManifest, iter_batches, kinds_in

from . import clean
from . import select as selection
from .convert import ConversionSink, convert_documents, normalize_native
from .decontaminate import ContaminationIndex, contamination_report, decontaminate_with_hits, write_reports
from .deduplicate import run_dedup_stage
from .engine import LocalEngine
from .export import export_corpus
from .shards import CORPUS_MANIFEST, DATASET_CARD, dataset_card, write_corpus

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
    stats: dict = {}
    kept, rejected = clean.STEPS[kind](batch, params, stats)
    return kept, rejected, stats


def run_map_stage(step, inputs, output, manifest, engine, kinds, context_of, progress: Progress | None = None):
    """Run `step` over every batch of each kind; each result is (kept, rejected)."""
    if engine.name == "spark":
        from .spark import stages as spark_stages

        return spark_stages.run_map_stage(step, inputs, output, manifest, engine, kinds, context_of, progress)
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
    """Normalise, redact and tag; the manifest's stats count redactions per kind of personal
    data and record the CPU seconds each step took (summed over workers)."""
    if engine.name == "spark":
        from .spark import stages as spark_stages

        return spark_stages.run_clean(inputs, output, params, manifest, engine, progress)
    redactions: dict[str, dict[str, int]] = {}
    seconds: Counter = Counter()
    with DatasetWriter(output, manifest) as writer:
        for kind in _present(inputs, TEXT_KINDS):
            counts = redactions.setdefault(kind, {})
            for kept, rejected, stats in engine.map(_clean_step, _batches(inputs, kind, engine.batch_rows), (kind, params)):
                writer.write(kind, kept)
                writer.reject(kind, rejected)
                _count(manifest, "rows_in", kind, kept.num_rows + rejected.num_rows)
                for name, n in stats.get("pii_redactions", {}).items():
                    counts[name] = counts.get(name, 0) + n
                seconds.update(stats.get("seconds", {}))
                if progress:
                    progress(kind, kept.num_rows + rejected.num_rows)
        manifest.stats["pii_redactions"] = redactions
        manifest.stats["cpu_seconds_per_step"] = {k: round(v, 3) for k, v in sorted(seconds.items())}
        return writer.commit()


# -- select -----------------------------------------------------------------------------------


def _select_step(batch, context):
    kind, params = context
    return selection.select_batch(batch, kind, params)


def run_select(inputs, output, params, manifest, engine: LocalEngine, progress=None) -> StageManifest:
    """Apply the [select] thresholds to the tags the clean stage wrote."""
    result = run_map_stage(_select_step, inputs, output, manifest, engine, TEXT_KINDS, lambda kind: (kind, params), progress)
    return result


def _report_step(batch, context):
    kind, clean_params, select_params = context
    if clean_params is not None:
        batch, _ = clean.STEPS[kind](batch, clean_params)
    return selection.selection_report(batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch]), kind, select_params)


def selection_dry_run(inputs, select_params, engine: LocalEngine, clean_params: dict | None = None) -> dict:
    """What selection would remove, per kind and rule, with examples; writes nothing. With
    `clean_params`, the inputs are untagged and are cleaned and tagged in memory first."""
    report = {}
    for kind in _present(inputs, TEXT_KINDS):
        parts = list(engine.map(_report_step, _batches(inputs, kind, engine.batch_rows), (kind, clean_params, select_params)))
        report[kind] = selection.merge_reports(parts)
    return report


# -- dedup ------------------------------------------------------------------------------------


def run_dedup(inputs, output, params, manifest, engine: LocalEngine, progress=None) -> StageManifest:
    """Repeated paragraphs, exact and MinHash near-duplicates; see transforms/deduplicate.py."""
    if engine.name == "spark":
        from .spark import stages as spark_stages

        return spark_stages.run_dedup(inputs, output, params, manifest, engine, progress)
    return run_dedup_stage(inputs, output, params, manifest, engine, progress)


# -- decontaminate ----------------------------------------------------------------------------


def _decontaminate_step(batch, context):
    kind, index, action = context
    return decontaminate_with_hits(batch, kind, index, action)


def run_decontaminate(inputs, output, params, manifest, engine: LocalEngine, items: list[dict], progress=None) -> StageManifest:
    if engine.name == "spark":
        from .spark import stages as spark_stages

        return spark_stages.run_decontaminate(inputs, output, params, manifest, engine, items, progress)
    index = ContaminationIndex.from_params(items, params)
    action = params.get("action", "remove")
    manifest.stats.update(index.reference_stats())
    hits: list[dict] = []
    with DatasetWriter(output, manifest) as writer:
        for kind in _present(inputs, TEXT_KINDS):
            for kept, rejected, found in engine.map(_decontaminate_step, _batches(inputs, kind, engine.batch_rows), (kind, index, action)):
                writer.write(kind, kept)
                writer.reject(kind, rejected)
                hits.extend(found)
                _count(manifest, "rows_in", kind, kept.num_rows + rejected.num_rows)
                if progress:
                    progress(kind, kept.num_rows + rejected.num_rows)
        report = contamination_report(index, hits, action)
        for name in write_reports(writer.folder, report):
            writer.add_file(name, len(hits))
        manifest.stats["contamination"] = report["benchmarks"]
        return writer.commit()


def contamination_hits(manifest: StageManifest) -> dict[str, int]:
    return {k: v for k, v in manifest.rejected_by_reason.items() if k.startswith("contaminated")}


# -- convert ----------------------------------------------------------------------------------


def _convert_step(batch, params):
    return convert_documents(batch, params)


def run_convert(inputs, output, params, manifest, engine: LocalEngine, progress=None, slot=None) -> StageManifest:
    """Documents become conversations by the configured backend; dataset conversations pass
    through normalised. `slot`: an async context manager factory entered around every LLM
    request, for a concurrency limit shared with other runs."""
    backend = params.get("backend", "template")
    with DatasetWriter(output, manifest) as writer:
        sink = ConversionSink(writer)
        documents = _batches(inputs, DOCUMENTS, engine.batch_rows)
        if backend == "openai":
            from .llm.unify import convert_with_llm, default_cache_dir

            cache_dir = params.get("cache_dir") or default_cache_dir(output)
            manifest.stats.update(convert_with_llm(documents, sink, params, cache_dir, slot=slot, progress=progress))
            # Passages left unsent by the budget: the next run converts them, from the cache on.
            manifest.stats["unfinished"] = manifest.stats.get("passages_unsent_budget", 0) > 0
        elif backend == "template":
            for result in engine.map(_convert_step, documents, params):
                sink.template_result(result)
                if progress:
                    progress(DOCUMENTS, result["converted"] + result[DOCUMENTS].num_rows + result["rejected"].num_rows)
        else:  # native: documents stay as text
            for batch in documents:
                sink.counts["documents_in"] += batch.num_rows
                sink.counts["documents_left_as_text"] += batch.num_rows
                writer.write(DOCUMENTS, batch)
        for batch in _batches(inputs, CONVERSATIONS, engine.batch_rows):
            sink.native(normalize_native(batch, params))
        sink.close(manifest)
        counts = sink.counts
        manifest.stats.update(
            {
                "backend": backend,
                "documents_converted": counts["documents_converted"],
                "conversations_from_documents": writer.rows_written(CONVERSATIONS) - counts["conversations_native"],
                "conversations_from_templates": counts["conversations_from_templates"],
                "conversations_native": counts["conversations_native"],
                "documents_left_as_text": counts["documents_left_as_text"],
                "text_rows_written": writer.rows_written(DOCUMENTS),
            }
        )
        return writer.commit()


# -- sample -----------------------------------------------------------------------------------


def run_sample(inputs, output, params, manifest, config_hash: str, progress=None, engine=None) -> StageManifest:
    """Order everything by priority sampling and write shards `part-NNNNN.parquet` in that order,
    with `_corpus_manifest.json` describing them (see transforms.shards)."""
    if engine is not None and engine.name == "spark":
        from .spark import sampling as spark_sampling

        return spark_sampling.run_sample(inputs, output, params, manifest, config_hash, engine, progress)
    with DatasetWriter(output, manifest) as writer:
        corpus = write_corpus(inputs, writer.folder, params, config_hash, progress=progress)
        manifest.rows_in.update(corpus["input_rows"])
        for shard in corpus["shards"]:
            writer.add_file(shard["path"], shard["rows"])
        (writer.folder / CORPUS_MANIFEST).write_text(json.dumps(corpus, ensure_ascii=False, indent=2), encoding="utf-8")
        (writer.folder / DATASET_CARD).write_text(dataset_card(corpus), encoding="utf-8")
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

    Each source is {"name", "category", "path", "format", "encoding", "fields"?}; crawled pages
    come from the crawl stage's dataset, with per-source extraction rules in
    params["extract_rules"]. The manifest's stats say, per file read, its format, encoding (and
    who chose it), replaced bytes and rows (`source_files`); every file of a folder not read and
    why (`skipped_files`); rows per source with the most common rejection (`sources`); and the
    dialogue repairs made (`repairs`: joined_turns, dropped_opening, dropped_unanswered)."""
    from collections import Counter

    from schemas.records import loads_meta

    from .extract import pages_to_documents
    from .importers import SourceError, import_file, scan_source

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
        source_files: list[dict] = []
        skipped_files: list[dict] = []
        per_source: dict[str, dict] = {}
        repairs: Counter = Counter()
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
            for file in files:
                report: dict = {}
                options = {"encoding": source.get("encoding", "auto"), "fields": source.get("fields") or {}, "report": report}
                file_counts = {"rows": 0, "kept": 0, "rejected": 0}
                for item in import_file(file, source["format"], source["name"], source["category"], options):
                    _count(manifest, "rows_in", item.kind, 1)
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
                flush()
                source_files.append({"source": source["name"], "path": str(file), "format": source["format"], **report, **file_counts})
                for key in counts:
                    counts[key] += file_counts[key]
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
                _count(manifest, "rows_in", PAGES, batch.num_rows)
                _count(manifest, "rows_kept", PAGES, documents.num_rows)
        manifest.stats["files_read"] = files_read
        manifest.stats["source_files"] = source_files
        manifest.stats["skipped_files"] = skipped_files
        manifest.stats["sources"] = per_source
        manifest.stats["repairs"] = dict(sorted(repairs.items()))
        return writer.commit()


def sources_all_rejected(stats: dict) -> list[str]:
    """One line per source of an ingest whose rows were all rejected (and that does not allow
    it): the source, its rows and its most common rejection reason."""
    lines = []
    for name, figures in (stats.get("sources") or {}).items():
        if figures["rows"] and not figures["kept"] and not figures.get("allow_all_rejected"):
            lines.append(
                f"source {name}: all {figures['rows']} rows rejected, most often {figures['top_reason']} "
                f"(see rejected/ in the output; allow_all_rejected = true in the source accepts this)"
            )
        elif not figures["rows"] and not figures.get("allow_all_rejected"):
            lines.append(f"source {name}: no rows read (allow_all_rejected = true in the source accepts this)")
    return lines
