"""The decontaminate stage: remove or flag rows that overlap the benchmarks' items."""
from __future__ import annotations

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import DatasetWriter, StageManifest

from transforms.engines.local import add_count, kinds_present, read_batches

from .contamination import ContaminationIndex, contamination_report, decontaminate_with_hits, write_reports

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)


def _decontaminate_step(batch, context):
    kind, index, action = context
    return decontaminate_with_hits(batch, kind, index, action)


def run_decontaminate(inputs, output, params, manifest, engine, items: list[dict], progress=None) -> StageManifest:
    if engine.name == "spark":
        from transforms.engines.spark import stages as spark_stages

        return spark_stages.run_decontaminate(inputs, output, params, manifest, engine, items, progress)
    index = ContaminationIndex.from_params(items, params)
    action = params.get("action", "remove")
    manifest.stats.update(index.reference_stats())
    hits: list[dict] = []
    with DatasetWriter(output, manifest) as writer:
        for kind in kinds_present(inputs, TEXT_KINDS):
            for kept, rejected, found in engine.map(_decontaminate_step, read_batches(inputs, kind, engine.batch_rows), (kind, index, action)):
                writer.write(kind, kept)
                writer.reject(kind, rejected)
                hits.extend(found)
                add_count(manifest, "rows_in", kind, kept.num_rows + rejected.num_rows)
                if progress:
                    progress(kind, kept.num_rows + rejected.num_rows)
        report = contamination_report(index, hits, action)
        for name in write_reports(writer.folder, report):
            writer.add_file(name, len(hits))
        manifest.stats["contamination"] = report["benchmarks"]
        return writer.commit()


def contamination_hits(manifest: StageManifest) -> dict[str, int]:
    return {k: v for k, v in manifest.rejected_by_reason.items() if k.startswith("contaminated")}
