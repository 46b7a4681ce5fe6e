"""The clean stage: normalise, redact and tag every text row, on any engine."""
from __future__ import annotations

from collections import Counter

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import DatasetWriter, StageManifest

from transforms.engines.local import add_count, kinds_present, read_batches

from . import steps as clean

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)


def _clean_step(batch, context):
    kind, params = context
    stats: dict = {}
    kept, rejected = clean.STEPS[kind](batch, params, stats)
    return kept, rejected, stats


def run_clean(inputs, output, params, manifest, engine, progress=None) -> StageManifest:
    """Normalise, redact and tag; the manifest's stats count redactions per kind of personal
    data and record the CPU seconds each step took (summed over workers)."""
    if engine.name == "spark":
        from transforms.engines.spark import stages as spark_stages

        return spark_stages.run_clean(inputs, output, params, manifest, engine, progress)
    redactions: dict[str, dict[str, int]] = {}
    seconds: Counter = Counter()
    with DatasetWriter(output, manifest) as writer:
        for kind in kinds_present(inputs, TEXT_KINDS):
            counts = redactions.setdefault(kind, {})
            for kept, rejected, stats in engine.map(_clean_step, read_batches(inputs, kind, engine.batch_rows), (kind, params)):
                writer.write(kind, kept)
                writer.reject(kind, rejected)
                add_count(manifest, "rows_in", kind, kept.num_rows + rejected.num_rows)
                for name, n in stats.get("pii_redactions", {}).items():
                    counts[name] = counts.get(name, 0) + n
                seconds.update(stats.get("seconds", {}))
                clean.merge_counts(manifest.stats, kind, stats)
                if progress:
                    progress(kind, kept.num_rows + rejected.num_rows)
        manifest.stats["pii_redactions"] = redactions
        manifest.stats["cpu_seconds_per_step"] = {k: round(v, 3) for k, v in sorted(seconds.items())}
        return writer.commit()
