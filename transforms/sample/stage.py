"""The sample stage: order everything by priority sampling and write the corpus shards, on any engine."""
from __future__ import annotations

from schemas.dataset import StageManifest

from transforms.engines import Engine, Progress
from transforms.engines.local import LocalEngine


def run_sample(inputs, output, params, manifest: StageManifest, config_hash: str, progress: Progress | None = None, engine: Engine | None = None) -> StageManifest:
    """Order everything by priority sampling and write shards `part-NNNNN.parquet` in that order,
    with `_corpus_manifest.json` describing them (see transforms.sample.shards); on the local
    engine unless another is given."""
    engine = engine if engine is not None else LocalEngine()
    return engine.sample(inputs, output, params, manifest, config_hash, progress)
