"""The sampled corpus on disk: Parquet shards in training order and the corpus manifest.

Three passes, so that no step holds the corpus's text at once:
1. keys: read only `id`, `category` and `source` of every input row and plan the order
   (`sample.plan_order`; tens of bytes per row, see there);
2. gather: stream the rows, expand fine-tuning copies, and append each to its shard's spill file
   (Arrow IPC), at most `SPILL_ROWS` rows buffered;
3. shards: read one spill file at a time, sort it by position, write `part-NNNNN.parquet`.
Rows are read twice in input order; the same files in the same order give the same row numbers.
"""
from __future__ import annotations

import hashlib
import json
import resource
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas import CATEGORIES, CONVERSATIONS, CORPUS, DOCUMENTS, SCHEMA_VERSION, SCHEMAS, nullable_schema
from schemas.dataset import DatasetError, DatasetWriter, StageManifest, kind_files

from .order import Codes, SamplingPlan, expand_copies, id_hashes, plan_order, sampling_curve, to_corpus_rows, with_positions
from .tokens import TokenCounter

# The corpus manifest: named with a leading underscore so that Arrow's and pandas' discovery of
# the folder as one dataset skip it, like the stage manifest beside it.
CORPUS_MANIFEST = "_corpus_manifest.json"
# The `datasets` library's standalone card (YAML), naming the shards, so that
# `datasets.load_dataset(folder)` reads the Parquet parts at any shard count: without it, the two
# JSON manifests can outnumber one part and the library picks its JSON builder. A dot file, so
# Arrow's and pandas' discovery of the folder skip it as they skip the manifests.
DATASET_CARD = ".huggingface.yaml"
SPILL = "_spill"
SPILL_ROWS = 65_536
KEY_COLUMNS = ["id", "category", "source"]
ITEM_KINDS = (CONVERSATIONS, DOCUMENTS)
FORMAT_OF = {CONVERSATIONS: "chat", DOCUMENTS: "text"}
Progress = Callable[[str, int], None]


@dataclass
class ItemKeys:
    """What the order needs of every input row, in input order."""

    hashes: np.ndarray
    category_codes: np.ndarray
    source_codes: np.ndarray
    kind_codes: np.ndarray
    categories: Codes
    sources: Codes
    rows_per_kind: dict[str, int] = field(default_factory=dict)


def _files(inputs: list[Path]) -> Iterator[tuple[str, Path]]:
    for path in inputs:
        for kind in ITEM_KINDS:
            for file in kind_files(path, kind):
                yield kind, file


def read_item_keys(inputs: list[Path], batch_rows: int = 65_536) -> ItemKeys:
    hashes, category_codes, source_codes, kind_codes = [], [], [], []
    categories, sources = Codes(CATEGORIES), Codes()
    rows_per_kind: Counter = Counter()
    for kind, file in _files(inputs):
        parquet = pq.ParquetFile(file)
        missing = [c for c in KEY_COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise DatasetError(f"{file}: {kind} rows need column(s) {', '.join(missing)}")
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=KEY_COLUMNS):
            if batch.column(0).null_count or batch.column(1).null_count or batch.column(2).null_count:
                raise DatasetError(f"{file}: id, category and source must not be null")
            hashes.append(id_hashes(batch.column(0)))
            category_codes.append(categories.encode(batch.column(1)))
            source_codes.append(sources.encode(batch.column(2)))
            kind_codes.append(np.full(batch.num_rows, ITEM_KINDS.index(kind), dtype=np.int8))
            rows_per_kind[kind] += batch.num_rows

    def joined(parts, dtype):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return ItemKeys(
        hashes=joined(hashes, np.uint64),
        category_codes=joined(category_codes, np.int32),
        source_codes=joined(source_codes, np.int32),
        kind_codes=joined(kind_codes, np.int8),
        categories=categories,
        sources=sources,
        rows_per_kind=dict(rows_per_kind),
    )


def _allow_open_files(needed: int) -> None:
    """Each shard's spill file stays open during the gather; raise the soft limit if we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 256
    if want <= soft:
        return
    if hard != resource.RLIM_INFINITY and want > hard:
        raise ValueError(f"{needed} shards need more open files than allowed ({hard}); raise sample.shard_rows")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_corpus(
    inputs: list[Path],
    folder: Path,
    params: dict,
    config_hash: str,
    batch_rows: int = 4096,
    progress: Progress | None = None,
) -> dict:
    """Write the shards of `inputs` in sampled order into `folder`; return the corpus manifest."""
    counter = TokenCounter.from_params(params)
    keys = read_item_keys(inputs)
    plan = plan_order(keys.hashes, keys.category_codes, keys.source_codes, keys.categories.names, keys.sources.names, params)
    shard_rows = int(params.get("shard_rows", 100_000))
    row_group_rows = max(1, min(int(params.get("row_group_rows", 1000)), shard_rows))
    shard_count = -(-plan.rows // shard_rows)

    spill = folder / SPILL
    spill.mkdir(parents=True, exist_ok=True)
    _allow_open_files(shard_count)
    schema = nullable_schema(CORPUS)
    try:
        _gather(inputs, spill, plan, params, schema, shard_rows, shard_count, batch_rows)
        shards = [_write_shard(folder, spill, number, shard_rows, row_group_rows, counter, keys.categories.names, progress) for number in range(shard_count)]
    finally:
        shutil.rmtree(spill, ignore_errors=True)

    repeats = np.diff(plan.starts)
    tokens_by_category: Counter = Counter()
    for shard in shards:
        tokens_by_category.update(shard.pop("tokens_by_category"))
    return {
        "schema_version": SCHEMA_VERSION,
        "config_hash": config_hash,
        "rows": plan.rows,
        "items": int(len(keys.hashes)),
        "input_rows": keys.rows_per_kind,
        "sampling": {
            **{k: params.get(k) for k in ("mode", "weights", "source_weights", "sft_epochs", "seed")},
            # A source weight for a source no row has is most likely a misspelt name.
            "unmatched_source_weights": sorted(set(params.get("source_weights") or {}) - set(keys.sources.names)),
        },
        "counts": {
            "category": _counts(keys.category_codes, repeats, keys.categories.names),
            "source": _counts(keys.source_codes, repeats, keys.sources.names),
            "format": _counts(keys.kind_codes.astype(np.int32), repeats, [FORMAT_OF[k] for k in ITEM_KINDS]),
            "items_by_category": _counts(keys.category_codes, None, keys.categories.names),
        },
        "tokens": {
            **counter.describe(),
            "total": int(round(sum(s["tokens"] for s in shards))),
            "by_category": {k: int(round(v)) for k, v in sorted(tokens_by_category.items())},
        },
        "shard_rows": shard_rows,
        "row_group_rows": row_group_rows,
        "sampling_curve": sampling_curve(plan.category_in_order, keys.categories.names),
        "shards": shards,
    }


def _counts(codes: np.ndarray, repeats: np.ndarray | None, names: list[str]) -> dict[str, int]:
    counts = np.bincount(codes, weights=repeats, minlength=len(names)) if len(codes) else np.zeros(len(names))
    return {name: int(n) for name, n in zip(names, counts) if n}


def _gather(inputs, spill: Path, plan: SamplingPlan, params, schema, shard_rows, shard_count, batch_rows) -> None:
    sft_epochs = int(params.get("sft_epochs", 1))
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    buffered: dict[int, list[pa.Table]] = {}
    held = 0

    def flush() -> None:
        for number, tables in buffered.items():
            if number not in writers:
                writers[number] = pa.ipc.new_stream(str(spill / f"{number:05d}.arrow"), schema)
            for table in tables:
                writers[number].write_table(table)
        buffered.clear()

    try:
        item = 0
        for kind, file in _files(inputs):
            parquet = pq.ParquetFile(file)
            # Only the kind's own columns: the corpus row is made of them, the rest (clean's tags,
            # a book's statistics) would be decoded to be dropped.
            columns = [name for name in SCHEMAS[kind].names if name in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
                rows = to_corpus_rows(batch, kind)
                first, last = plan.starts[item], plan.starts[item + batch.num_rows]
                copies_of_row = np.repeat(np.arange(batch.num_rows), np.diff(plan.starts[item : item + batch.num_rows + 1]))
                expanded = expand_copies(rows, copies_of_row, plan.epoch[first:last], sft_epochs)
                positions = plan.position[first:last]
                expanded = with_positions(expanded, positions)
                shard_of = positions // shard_rows
                for number in np.unique(shard_of):
                    chosen = expanded.filter(pa.array(shard_of == number))
                    buffered.setdefault(int(number), []).append(chosen)
                held += expanded.num_rows
                item += batch.num_rows
                if held >= SPILL_ROWS:
                    flush()
                    held = 0
        flush()
    finally:
        for writer in writers.values():
            writer.close()
    if item != len(plan.starts) - 1:
        raise DatasetError(f"inputs changed while sampling: {item} rows read, {len(plan.starts) - 1} planned")


def _write_shard(folder, spill, number, shard_rows, row_group_rows, counter: TokenCounter, categories, progress) -> dict:
    source = spill / f"{number:05d}.arrow"
    with pa.memory_map(str(source)) as handle:
        table = pa.ipc.open_stream(handle).read_all()
    table = table.take(pc.sort_indices(table.column("position")))
    start = number * shard_rows
    positions = table.column("position").to_numpy()
    if not np.array_equal(positions, np.arange(start, start + table.num_rows)):
        raise DatasetError(f"shard {number}: positions are not contiguous from {start}")
    path = folder / f"part-{number:05d}.parquet"
    pq.write_table(table, path, compression="zstd", row_group_size=row_group_rows)
    source.unlink()
    tokens = counter.row_tokens(table)
    category_codes = Codes(tuple(categories)).encode(table.column("category"))
    by_category = np.bincount(category_codes, weights=tokens, minlength=len(categories)) if len(tokens) else []
    if progress:
        progress(CORPUS, table.num_rows)
    return {
        "path": path.name,
        "rows": table.num_rows,
        "first_position": start,
        "bytes": path.stat().st_size,
        "sha256": _sha256(path),
        "row_groups": pq.ParquetFile(path).metadata.num_row_groups,
        "tokens": int(round(float(tokens.sum()))),
        "tokens_by_category": {categories[i]: float(v) for i, v in enumerate(by_category) if v},
    }


def dataset_card(corpus: dict) -> str:
    """The folder's `.huggingface.yaml`: the shards are the `train` split of the folder's one
    config, named `corpus-<digest of the shards' sha256>`. `datasets` (5.x) keys its cache by the
    folder's name, the config's name and the file pattern as written, so under a fixed name two
    builds' `corpus` folders read each other's cached rows; a name that changes with the shards
    gives each corpus its own cache and a rebuilt one a fresh one."""
    digest = hashlib.sha256("".join(shard["sha256"] for shard in corpus["shards"]).encode()).hexdigest()[:16]
    return (
        "# Read by datasets.load_dataset(<this folder>) and the Hugging Face hub; figures: _corpus_manifest.json\n"
        "configs:\n"
        f"- config_name: corpus-{digest}\n"
        "  data_files:\n"
        "  - split: train\n"
        '    path: "part-*.parquet"\n'
    )


def run_sample_stage(inputs, output, params, manifest: StageManifest, config_hash: str, progress=None) -> StageManifest:
    """The sample stage on this machine: `write_corpus` into a DatasetWriter's folder, the shards
    listed in the manifest and described in `_corpus_manifest.json`."""
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
