"""The sample stage: order everything by priority sampling and write the corpus shards."""
from __future__ import annotations

import json

from schemas import CORPUS
from schemas.dataset import DatasetWriter, StageManifest

from .shards import CORPUS_MANIFEST, DATASET_CARD, dataset_card, write_corpus


def run_sample(inputs, output, params, manifest, config_hash: str, progress=None, engine=None) -> StageManifest:
    """Order everything by priority sampling and write shards `part-NNNNN.parquet` in that order,
    with `_corpus_manifest.json` describing them (see transforms.sample.shards)."""
    if engine is not None and engine.name == "spark":
        from transforms.engines.spark import sampling as spark_sampling

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
