"""The convert stage: documents become conversations by the configured backend."""
from __future__ import annotations

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import DatasetWriter, StageManifest

from transforms.engines.local import read_batches

from .conversion import ConversionSink, convert_documents, normalize_native


def _convert_step(batch, params):
    return convert_documents(batch, params)


def run_convert(inputs, output, params, manifest, engine, progress=None, slot=None) -> StageManifest:
    """Documents become conversations by the configured backend; dataset conversations pass
    through normalised. `slot`: an async context manager factory entered around every LLM
    request, or a source of leases on a concurrency limit shared with other runs
    (`client.SlotSource`)."""
    backend = params.get("backend", "template")
    with DatasetWriter(output, manifest) as writer:
        sink = ConversionSink(writer)
        documents = read_batches(inputs, DOCUMENTS, engine.batch_rows)
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
        for batch in read_batches(inputs, CONVERSATIONS, engine.batch_rows):
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
                "remainder_text_rows": counts["remainder_text_rows"],
                "text_rows_written": writer.rows_written(DOCUMENTS),
                # Per section name: became a question, stayed in the text row, answer rejected, left
                # out of the text row for a lost number.
                "template_sections": {what: dict(sorted(c.items())) for what, c in sink.sections.items()},
                "template_digits_repaired": counts["template_digits_repaired"],
            }
        )
        return writer.commit()
