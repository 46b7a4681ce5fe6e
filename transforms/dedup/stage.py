"""The dedup stage: repeated paragraphs, exact and MinHash near-duplicates, on any engine."""
from __future__ import annotations

from schemas.dataset import StageManifest

from transforms.engines import Engine, Progress


def run_dedup(inputs, output, params, manifest: StageManifest, engine: Engine, progress: Progress | None = None) -> StageManifest:
    """Repeated paragraphs, exact and MinHash near-duplicates, as the engine runs them: locally
    `transforms/dedup/deduplicate.py`, on Spark `transforms/engines/spark/dedup.py`."""
    return engine.dedup(inputs, output, params, manifest, progress)
