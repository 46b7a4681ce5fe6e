"""The dedup stage: repeated paragraphs, exact and MinHash near-duplicates, on any engine."""
from __future__ import annotations

from schemas.dataset import StageManifest

from .deduplicate import run_dedup_stage


def run_dedup(inputs, output, params, manifest, engine, progress=None) -> StageManifest:
    """Repeated paragraphs, exact and MinHash near-duplicates; see transforms/dedup/deduplicate.py."""
    if engine.name == "spark":
        from transforms.engines.spark import stages as spark_stages

        return spark_stages.run_dedup(inputs, output, params, manifest, engine, progress)
    return run_dedup_stage(inputs, output, params, manifest, engine, progress)
