"""The pack stage on Spark: one task per corpus shard, tokenized and packed in `mapInArrow`.

A shard is the unit of packing on every engine (its items are packed on their own), so a task
reads its corpus shard, runs `transforms.pack.stage.pack_shard` (the local engine's step) and
writes its packed shard into the output's temporary folder; the rejected rows and the figures
come back to the driver, which commits the dataset as the local engine does. The output is
therefore byte for byte the local engine's. The output folder must be on a file system every
executor sees (a local path in local mode, a shared mount on a cluster).
"""
from __future__ import annotations

import pickle
from typing import Callable, Iterator, Optional

import pyarrow as pa

from schemas import CORPUS
from schemas.dataset import DatasetWriter, StageManifest

RESULT_SCHEMA = pa.schema([pa.field("shard", pa.int64()), pa.field("result", pa.binary())])


def _pack_tasks(shards: list[dict], context: dict) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from transforms.pack.stage import pack_shard

        for batch in batches:
            for index in batch.column(0).to_pylist():
                result = pack_shard(shards[index], context)
                payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
                yield pa.RecordBatch.from_arrays([pa.array([index], pa.int64()), pa.array([payload], pa.binary())], schema=RESULT_SCHEMA)

    return run


def run_pack(shards: list[dict], output, params: dict, manifest: StageManifest, engine, tokenizer, progress: Optional[Callable[[str, int], None]] = None) -> StageManifest:
    """Pack `shards` ([{"index", "path"}]) with one Spark task each into `output`."""
    from transforms.pack.stage import finish

    from .stages import spark_schema

    spark = engine.session
    with DatasetWriter(output, manifest) as writer:
        results: list[dict] = []
        if shards:
            # Tasks run in parallel on the executors: one tokenizer thread each.
            context = {"params": params, "folder": str(writer.folder), "single_threaded": True}
            # spark.range with as many slices as shards: exactly one shard per task.
            tasks = spark.range(0, len(shards), 1, numPartitions=len(shards))
            frame = tasks.mapInArrow(_pack_tasks(shards, context), spark_schema(RESULT_SCHEMA))
            for row in sorted(frame.collect(), key=lambda r: r["shard"]):
                results.append(pickle.loads(row["result"]))
        for result in results:
            writer.reject(CORPUS, result["rejected"])
            if progress:
                progress(CORPUS, result["figures"]["rows_in"])
        return finish(writer, manifest, results, tokenizer, params)
