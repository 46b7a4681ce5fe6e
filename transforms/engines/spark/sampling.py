"""The sample stage on Spark: the same training order, shards and `_corpus_manifest.json` as
`transforms.sample.shards.write_corpus`, apart from each shard's bytes and sha256 (the same rows, but
a Parquet file's bytes also depend on the writer's batching).

Keys: each row's fine-tuning copies and sort keys come from `sample.expanded_keys` in
`mapInArrow`, with category and source codes from the whole input (collected first: one row per
distinct category and source). One global sort by (key, dataset position, epoch) is the training
order, as the local argsort over the keys (rows with equal keys, which only repeated ids can
give, are ordered by position here). Positions come from per-partition row counts of the sorted
frame; shard K holds positions [K * shard_rows, (K + 1) * shard_rows). Each shard is written on an
executor by pyarrow (zstd, `row_group_rows` rows per group), its tokens counted there; one line
per shard reaches the driver.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import Counter
from functools import reduce

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import CATEGORIES, CORPUS, SCHEMA_VERSION, nullable_schema
from schemas.dataset import DatasetError, StageManifest

from transforms.sample.order import Codes, expand_copies, expanded_keys, id_hashes, item_weights, to_corpus_rows, with_positions
from transforms.sample.shards import CORPUS_MANIFEST, DATASET_CARD, FORMAT_OF, ITEM_KINDS, dataset_card
from transforms.sample.tokens import TokenCounter
from .datasets import FILE_ORDINAL, ROW_INDEX, HadoopStore, SparkDatasetWriter, join, kind_files, read_files, with_order
from .stages import spark_schema

SORT_KEY = "_tcm_key"
EPOCH = "_tcm_epoch"
SHARD = "_tcm_shard"
ITEM_SCHEMA = pa.schema([f for f in nullable_schema(CORPUS) if f.name != "position"])
KEYED_SCHEMA = pa.schema(
    [*ITEM_SCHEMA, pa.field(SORT_KEY, pa.float64()), pa.field(FILE_ORDINAL, pa.int64()), pa.field(ROW_INDEX, pa.int64()), pa.field(EPOCH, pa.int64())]
)
SHARD_SCHEMA = "number long, path string, rows long, first_position long, bytes long, sha256 string, row_groups long, tokens double, tokens_by_category string"


def _keyed_items(batches, kind: str, params: dict, categories: list[str], sources: list[str]):
    sft_epochs = int(params.get("sft_epochs", 1))
    for batch in batches:
        table = pa.Table.from_batches([batch])
        items = to_corpus_rows(table.drop_columns([FILE_ORDINAL, ROW_INDEX]), kind)
        category_codes = Codes(tuple(categories)).encode(items.column("category"))
        source_codes = Codes(tuple(sources)).encode(items.column("source"))
        _, item_of, epoch, keys = expanded_keys(id_hashes(items.column("id")), category_codes, source_codes, categories, sources, params)
        expanded = expand_copies(items, item_of, epoch, sft_epochs)
        rows = pa.array(item_of, pa.int64())
        out = expanded.select(ITEM_SCHEMA.names).cast(ITEM_SCHEMA)
        out = out.append_column(SORT_KEY, pa.array(keys, pa.float64()))
        out = out.append_column(FILE_ORDINAL, table.column(FILE_ORDINAL).take(rows).cast(pa.int64()))
        out = out.append_column(ROW_INDEX, table.column(ROW_INDEX).take(rows).cast(pa.int64()))
        out = out.append_column(EPOCH, pa.array(epoch, pa.int64()))
        yield from out.to_batches()


def _filesystem(path: str):
    from pyarrow import fs

    if path.startswith("file:"):
        return fs.LocalFileSystem(), "/" + path[len("file:") :].lstrip("/")
    if "://" not in path and ":" not in path.split("/", 1)[0]:
        return fs.LocalFileSystem(), path
    return fs.FileSystem.from_uri(path)


def _write_shards(batches, folder: str, shard_rows: int, row_group_rows: int, params: dict, categories: list[str]):
    """Each shard of this partition (rows sorted by shard, then position) as one Parquet file."""
    import pyarrow.parquet as pq

    counter = TokenCounter.from_params(params)
    filesystem, root = _filesystem(folder)

    def write(number: int, parts: list[pa.RecordBatch]):
        table = pa.Table.from_batches(parts)
        table = table.take(pc.sort_indices(table.column("position")))
        start = number * shard_rows
        positions = table.column("position").to_numpy()
        if not np.array_equal(positions, np.arange(start, start + table.num_rows)):
            raise DatasetError(f"shard {number}: positions are not contiguous from {start}")
        table = with_positions(table.drop_columns(["position", SHARD]), positions)
        name = f"part-{number:05d}.parquet"
        path = f"{root.rstrip('/')}/{name}"
        pq.write_table(table, path, compression="zstd", row_group_size=row_group_rows, filesystem=filesystem)
        digest, size = hashlib.sha256(), 0
        with filesystem.open_input_stream(path) as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
        with filesystem.open_input_file(path) as handle:
            row_groups = pq.ParquetFile(handle).metadata.num_row_groups
        tokens = counter.row_tokens(table)
        codes = Codes(tuple(categories)).encode(table.column("category"))
        by_category = np.bincount(codes, weights=tokens, minlength=len(categories)) if len(tokens) else []
        by_category = {categories[i]: float(v) for i, v in enumerate(by_category) if v}
        return pa.RecordBatch.from_pylist(
            [{"number": number, "path": name, "rows": table.num_rows, "first_position": start, "bytes": size, "sha256": digest.hexdigest(),
              "row_groups": row_groups, "tokens": float(tokens.sum()), "tokens_by_category": json.dumps(by_category)}]
        )

    current, parts = None, []
    for batch in batches:
        shards = batch.column(SHARD).to_numpy()
        for number in np.unique(shards):
            chosen = batch.filter(pa.array(shards == number))
            if current is not None and number != current:
                yield write(current, parts)
                parts = []
            current = int(number)
            parts.append(chosen)
    if current is not None:
        yield write(current, parts)


def _bucket(position, edges: list[int]):
    """Which 1% of training positions a position falls in (`sample.sampling_curve`'s buckets)."""
    from pyspark.sql import functions as F

    inner = edges[1:-1]
    if not inner:
        return F.lit(0)
    return reduce(lambda a, b: a + b, [F.when(position >= int(e), 1).otherwise(0) for e in inner])


def sampling_curve(frame, n: int, buckets: int = 100) -> list[dict[str, float]]:
    from pyspark.sql import functions as F

    if n == 0:
        return []
    edges = np.linspace(0, n, min(buckets, n) + 1).astype(np.int64).tolist()
    counts = frame.groupBy(_bucket(F.col("position"), edges).alias("b"), "category").count().collect()
    names = sorted({c for _, c, _ in counts})
    share: dict[int, dict[str, int]] = {}
    for b, category, count in counts:
        share.setdefault(b, {})[category] = count
    return [
        {name: round(float(share.get(i, {}).get(name, 0)) / float(hi - lo), 4) for name in names}
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))
    ]


def _first_seen(frames, column: str) -> list[str]:
    """Distinct values of `column` in order of first sight in the dataset (`sample.Codes` order)."""
    from pyspark.sql import functions as F

    seen = {}
    for frame in frames:
        for value, place in frame.groupBy(column).agg(F.min(F.struct(FILE_ORDINAL, ROW_INDEX))).collect():
            if value is None:
                raise DatasetError(f"id, category and source must not be null (a row has no {column})")
            seen[value] = min(seen.get(value, tuple(place)), tuple(place))
    return sorted(seen, key=seen.get)


def run_sample(inputs, output, params, manifest: StageManifest, config_hash: str, engine, progress=None) -> StageManifest:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    spark = engine.session
    store = HadoopStore(spark)
    # Files in the local engine's order: input by input, conversations before documents.
    files = {kind: [] for kind in ITEM_KINDS}
    ordinal_of: dict[str, int] = {}
    input_rows: dict[str, int] = {}
    for path in inputs:
        for kind in ITEM_KINDS:
            for file in kind_files(store, str(path), kind):
                ordinal_of[file] = len(ordinal_of)
                files[kind].append(file)
    placed = {}
    for kind in sorted((k for k in ITEM_KINDS if files[k]), key=lambda k: ordinal_of[files[k][0]]):
        raw = read_files(spark, files[kind])
        for column in ("id", "category", "source"):
            if column not in raw.columns:
                raise DatasetError(f"{files[kind][0]}: {kind} rows need column(s) {column}")
        placed[kind] = _with_global_order(spark, raw, files[kind], ordinal_of).persist(StorageLevel.DISK_ONLY)
        input_rows[kind] = placed[kind].count()
    present = _first_seen(placed.values(), "category")
    category_names = list(CATEGORIES) + [c for c in present if c not in CATEGORIES]
    source_names = _first_seen(placed.values(), "source")
    # An unknown category weight is one line here, not a trace from an executor.
    codes = np.array([category_names.index(c) for c in present], np.int32)
    item_weights(codes, np.zeros(len(codes), np.int32), category_names, source_names or [""], params)
    keyed = [
        frame.mapInArrow(
            functools.partial(_keyed_items, kind=kind, params=params, categories=category_names, sources=source_names), spark_schema(KEYED_SCHEMA)
        )
        for kind, frame in placed.items()
    ]
    shard_rows = int(params.get("shard_rows", 100_000))
    row_group_rows = max(1, min(int(params.get("row_group_rows", 1000)), shard_rows))
    with SparkDatasetWriter(spark, output, manifest) as writer:
        ordered = None
        try:
            total, shards, counts, curve = 0, [], {"category": {}, "source": {}, "format": {}, "items_by_category": {}}, []
            if keyed:
                ordered = reduce(lambda a, b: a.unionByName(b), keyed).orderBy(SORT_KEY, FILE_ORDINAL, ROW_INDEX, EPOCH).persist(StorageLevel.DISK_ONLY)
                sizes = dict(ordered.groupBy(F.spark_partition_id().alias("p")).count().collect())
                starts = []
                for p in range(max(sizes, default=-1) + 1):
                    starts.append(total)
                    total += sizes.get(p, 0)
                start_of = F.element_at(F.array(*[F.lit(s) for s in starts or [0]]), F.spark_partition_id() + 1)
                # monotonically_increasing_id's low 33 bits count rows within a partition.
                positioned = ordered.withColumn("position", start_of + F.expr("monotonically_increasing_id() & 8589934591"))
                shard_count = math.ceil(total / shard_rows)
                write = functools.partial(
                    _write_shards, folder=store.qualify(writer.folder), shard_rows=shard_rows, row_group_rows=row_group_rows, params=params, categories=category_names
                )
                with_shard = positioned.withColumn(SHARD, F.floor(F.col("position") / shard_rows).cast("long"))
                lines = (
                    with_shard.repartition(max(1, shard_count), SHARD)
                    .sortWithinPartitions(SHARD, "position")
                    .select(*[n for n in nullable_schema(CORPUS).names], SHARD)
                    .mapInArrow(write, SHARD_SCHEMA)
                    .collect()
                )
                shards = [row.asDict() for row in sorted(lines, key=lambda r: r["number"])]
                if [s["number"] for s in shards] != list(range(shard_count)):
                    raise DatasetError(f"sample: {len(shards)} shards written, {shard_count} expected")
                frequency = lambda column: dict(positioned.groupBy(column).count().collect())  # noqa: E731
                by_category, by_source, by_format = frequency("category"), frequency("source"), frequency("format")
                items = Counter()
                for frame in placed.values():
                    items.update(dict(frame.groupBy("category").count().collect()))
                counts = {
                    "category": {n: by_category[n] for n in category_names if by_category.get(n)},
                    "source": {n: by_source[n] for n in source_names if by_source.get(n)},
                    "format": {FORMAT_OF[k]: by_format[FORMAT_OF[k]] for k in ITEM_KINDS if by_format.get(FORMAT_OF[k])},
                    "items_by_category": {n: items[n] for n in category_names if items.get(n)},
                }
                curve = sampling_curve(positioned, total)
        finally:
            if ordered is not None:
                ordered.unpersist()
            for frame in placed.values():
                frame.unpersist()
        counter = TokenCounter.from_params(params)
        tokens_by_category: Counter = Counter()
        for shard in shards:
            shard.pop("number")
            tokens_by_category.update(json.loads(shard.pop("tokens_by_category")))
            shard["tokens"] = int(round(shard["tokens"]))
            writer.add_file(shard["path"], shard["rows"])
        corpus = {
            "schema_version": SCHEMA_VERSION,
            "config_hash": config_hash,
            "rows": total,
            "items": sum(input_rows.values()),
            "input_rows": input_rows,
            "sampling": {
                **{k: params.get(k) for k in ("mode", "weights", "source_weights", "sft_epochs", "seed")},
                "unmatched_source_weights": sorted(set(params.get("source_weights") or {}) - set(source_names)),
            },
            "counts": counts,
            "tokens": {
                **counter.describe(),
                "total": int(round(sum(s["tokens"] for s in shards))),
                "by_category": {k: int(round(v)) for k, v in sorted(tokens_by_category.items())},
            },
            "shard_rows": shard_rows,
            "row_group_rows": row_group_rows,
            "sampling_curve": curve,
            "shards": shards,
        }
        store.write_text(join(writer.folder, CORPUS_MANIFEST), json.dumps(corpus, ensure_ascii=False, indent=2))
        store.write_text(join(writer.folder, DATASET_CARD), dataset_card(corpus))
        manifest.rows_in.update(input_rows)
        manifest.rows_out[CORPUS] = total
        manifest.stats.update({"shards": len(shards), "tokens": corpus["tokens"]["total"], "rows_per_format": counts["format"]})
        if progress:
            progress(CORPUS, total)
        return writer.commit()


def _with_global_order(spark, frame, kind_paths: list[str], ordinal_of: dict[str, int]):
    """with_order, with ordinals that count the files of both kinds in the local order."""
    from pyspark.sql import functions as F

    placed = with_order(spark, frame, kind_paths)
    mapping = spark.createDataFrame([(i, ordinal_of[p]) for i, p in enumerate(kind_paths)], "_tcm_local long, _tcm_global long")
    return (
        placed.join(F.broadcast(mapping), placed[FILE_ORDINAL] == mapping["_tcm_local"], "left")
        .drop(FILE_ORDINAL, "_tcm_local")
        .withColumnRenamed("_tcm_global", FILE_ORDINAL)
    )
