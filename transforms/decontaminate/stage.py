"""The decontaminate stage: remove or flag rows that overlap the benchmarks' items, on any engine."""
from __future__ import annotations

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import StageManifest

from transforms.engines import Engine, Progress

from .contamination import ContaminationIndex, contamination_report, decontaminate_with_hits, report_files

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)


def _decontaminate_step(batch, context):
    kind, index, action = context
    return decontaminate_with_hits(batch, kind, index, action)


def run_decontaminate(inputs, output, params, manifest: StageManifest, engine: Engine, items: list[dict], progress: Progress | None = None) -> StageManifest:
    """Index the benchmark `items` once, then remove (or flag) the rows holding one; the hits of
    every batch, in dataset order, make `contamination.json` / `contamination.md` in the output."""
    index = ContaminationIndex.from_params(items, params)
    index.screen()  # built once here; it travels with the index to the engine's workers
    action = params.get("action", "remove")
    manifest.stats.update(index.reference_stats())
    hits: list[dict] = []

    def finish(write_file) -> None:
        report = contamination_report(index, hits, action)
        for name, text in report_files(report).items():
            write_file(name, text, len(hits))
        manifest.stats["contamination"] = report["benchmarks"]

    return engine.map_stage(
        _decontaminate_step, inputs, output, manifest, TEXT_KINDS, lambda kind: (kind, index, action), progress,
        extras=lambda kind, found: hits.extend(found), finish=finish,
    )


def contamination_hits(manifest: StageManifest) -> dict[str, int]:
    return {k: v for k, v in manifest.rejected_by_reason.items() if k.startswith("contaminated")}
