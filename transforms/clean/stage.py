"""The clean stage: normalise, redact and tag every text row, on any engine."""
from __future__ import annotations

from collections import Counter

from schemas import CONVERSATIONS, DOCUMENTS
from schemas.dataset import StageManifest

from transforms.engines import Engine, Progress

from . import steps as clean

TEXT_KINDS = (DOCUMENTS, CONVERSATIONS)


def _clean_step(batch, context):
    kind, params = context
    stats: dict = {}
    kept, rejected = clean.STEPS[kind](batch, params, stats)
    return kept, rejected, stats


def run_clean(inputs, output, params, manifest: StageManifest, engine: Engine, progress: Progress | None = None) -> StageManifest:
    """Normalise, redact and tag; the manifest's stats count redactions per kind of personal
    data and record the CPU seconds each step took (summed over workers)."""
    redactions: dict[str, dict[str, int]] = {}
    seconds: Counter = Counter()

    def gather(kind: str, stats: dict) -> None:
        counts = redactions.setdefault(kind, {})
        for name, n in stats.get("pii_redactions", {}).items():
            counts[name] = counts.get(name, 0) + n
        seconds.update(stats.get("seconds", {}))
        clean.merge_counts(manifest.stats, kind, stats)

    def finish(write_file) -> None:
        manifest.stats["pii_redactions"] = redactions
        manifest.stats["cpu_seconds_per_step"] = {k: round(v, 3) for k, v in sorted(seconds.items())}

    return engine.map_stage(_clean_step, inputs, output, manifest, TEXT_KINDS, lambda kind: (kind, params), progress, extras=gather, finish=finish)
