"""The pack stage: corpus shards -> packed token sequences, one packed shard per corpus shard.

Each corpus shard (`part-NNNNN.parquet`, rows in training order) is tokenized and packed on its
own (`pack_table`), so memory is bounded by one shard whatever the corpus size, the shards run in
parallel, and the Spark engine packs each shard in its own task with the same function. Output::

    OUT/sequences/part-NNNNN.parquet   one row per sequence (schemas.records.SEQUENCE_SCHEMA)
    OUT/rejected/corpus/part-*.parquet corpus rows not packed, with a reason
    OUT/megatron/tokens.bin, .idx      with outputs = ["megatron"]
    OUT/hf/                            with outputs = ["hf"] (datasets' save_to_disk)
    OUT/_manifest.json                 the ledger; stats["pack"] holds the figures below

Corpus rows in = rows packed + rows rejected. A text longer than seq_len is split into pieces
(each an item of its own, `item_offsets` saying where it starts) or truncated or rejected; a
dialogue is truncated (when an answer token remains) or rejected, per `overflow`.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from schemas import CORPUS
from schemas.dataset import DatasetWriter, StageManifest, kind_files
from schemas.records import SEQUENCE_SCHEMA, SEQUENCES

from .packing import pack
from .render import IGNORE_INDEX, _ranges, render_batch
from .tokenizer import PackTokenizer

PACK_MANIFEST_KEY = "pack"
RENDER_ROWS = 2048  # corpus rows rendered at once: bounds the Python lists of token ids
CORPUS_COLUMNS = ("id", "position", "source", "category", "format", "messages", "text", "meta")

_tokenizers: dict[tuple, PackTokenizer] = {}


def load_tokenizer(params: dict) -> PackTokenizer:
    """The stage's tokenizer, loaded once per process (keyed by path and file times)."""
    path = Path(params["tokenizer"])
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.iterdir())) if path.is_dir() else (path.stat().st_mtime_ns,)
    key = (str(path), stamp, params.get("eos_token"), params.get("pad_token"), params.get("encoder", "auto"))
    if key not in _tokenizers:
        _tokenizers[key] = PackTokenizer(path, params.get("eos_token"), params.get("pad_token"), params.get("encoder", "auto"))
    return _tokenizers[key]


def pack_table(table: pa.Table, tokenizer: PackTokenizer, params: dict) -> tuple[pa.Table, pa.Table, dict]:
    """Tokenize and pack one corpus shard (rows in training order).

    Returns (sequences as SEQUENCE_SCHEMA, rejected corpus rows with `reason`, figures). Raises
    ValueError for an unknown packing method."""
    seq_len = int(params["seq_len"])
    overflow = params.get("overflow") or {"text": "split", "chat": "reject"}
    ids_parts, label_parts, offset_parts, reasons = [], [], [np.zeros(1, np.int64)], {}
    base = 0
    for start in range(0, table.num_rows, RENDER_ROWS):
        rendered = render_batch(table.slice(start, RENDER_ROWS), tokenizer, params.get("template", "tokenizer"))
        ids_parts.append(rendered.ids)
        label_parts.append(rendered.labels)
        offset_parts.append(rendered.offsets[1:] + base)
        base += len(rendered.ids)
        reasons.update({start + row: reason for row, reason in rendered.reasons.items()})
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    labels = np.concatenate(label_parts) if label_parts else np.zeros(0, np.int32)
    offsets = np.concatenate(offset_parts)
    lengths = np.diff(offsets)
    formats = table.column("format").to_pylist()

    # Items: (row, start in ids, length, offset inside the row's tokens); overflow per format.
    item_row, item_start, item_len, item_offset = [], [], [], []
    split_rows = truncated_rows = truncated_tokens = 0
    truncated_ids: list[str] = []
    row_ids = table.column("id").to_pylist()
    for row in range(table.num_rows):
        if row in reasons:
            continue
        start, length = int(offsets[row]), int(lengths[row])
        if length <= seq_len:
            item_row.append(row), item_start.append(start), item_len.append(length), item_offset.append(0)
            continue
        kind = "chat" if formats[row] == "chat" else "text"
        policy = overflow[kind]
        if policy == "reject":
            reasons[row] = f"too_long:tokens={length}>seq_len={seq_len}"
        elif policy == "truncate":
            if not np.any(labels[start : start + seq_len] != IGNORE_INDEX):
                reasons[row] = f"too_long_no_answer:tokens={length}>seq_len={seq_len}"
                continue
            item_row.append(row), item_start.append(start), item_len.append(seq_len), item_offset.append(0)
            truncated_rows += 1
            truncated_tokens += length - seq_len
            if len(truncated_ids) < 20:
                truncated_ids.append(row_ids[row])
        else:  # split (text only)
            split_rows += 1
            for offset in range(0, length, seq_len):
                piece = min(seq_len, length - offset)
                item_row.append(row), item_start.append(start + offset), item_len.append(piece), item_offset.append(offset)
    item_row = np.asarray(item_row, dtype=np.int64)
    item_start = np.asarray(item_start, dtype=np.int64)
    item_len = np.asarray(item_len, dtype=np.int64)
    item_offset = np.asarray(item_offset, dtype=np.int64)

    bins = pack(item_len, seq_len, params.get("packing", "best_fit"), int(params.get("window", 1000)))
    order = np.argsort(bins, kind="stable")  # items of a sequence stay in corpus order
    item_row, item_start, item_len, item_offset, bins = item_row[order], item_start[order], item_len[order], item_offset[order], bins[order]
    n_seq = int(bins[-1]) + 1 if len(bins) else 0
    items_per_seq = np.bincount(bins, minlength=n_seq)
    used = np.bincount(bins, weights=item_len, minlength=n_seq).astype(np.int64)
    multiple = params.get("pad_to_multiple_of")
    if multiple is None:
        padded = np.full(n_seq, seq_len, dtype=np.int64)
    else:
        padded = -(-used // int(multiple)) * int(multiple)
    pads = padded - used
    row_offsets = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)

    # Item tokens to their place in the padded rows; padding is its own segment at each row's end.
    src = _ranges(item_start, item_len)
    pad_before = row_offsets[:-1] - np.concatenate([[0], np.cumsum(used)[:-1]]).astype(np.int64)
    dest = np.arange(len(src), dtype=np.int64) + np.repeat(pad_before[bins], item_len)
    total = int(row_offsets[-1])
    out_ids = np.full(total, tokenizer.pad_id, dtype=np.int32)
    out_labels = np.full(total, IGNORE_INDEX, dtype=np.int32)
    out_pos = np.empty(total, dtype=np.int32)
    item_first_token = np.concatenate([[0], np.cumsum(item_len)[:-1]]).astype(np.int64)
    item_labels = labels[src]
    # No label on an item's first token: nothing before it in the item predicts it, so a
    # shifted loss over the packed row never reaches across items.
    item_labels[item_first_token[item_len > 0]] = IGNORE_INDEX
    out_ids[dest] = ids[src]
    out_labels[dest] = item_labels
    out_pos[dest] = _ranges(np.zeros(len(item_len), np.int64), item_len)
    pad_dest = _ranges(row_offsets[:-1] + used, pads)
    out_pos[pad_dest] = _ranges(np.zeros(n_seq, np.int64), pads)

    item_offsets_in_list = np.concatenate([[0], np.cumsum(items_per_seq)]).astype(np.int32)
    positions = table.column("position").to_numpy()
    first_item = item_offsets_in_list[:-1].astype(np.int64)
    ids_col = pa.array(row_ids, pa.string()).take(pa.array(item_row))
    sequences = pa.Table.from_arrays(
        [
            _lists(row_offsets, out_ids),
            _lists(row_offsets, out_labels),
            _lists(row_offsets, out_pos),
            _lists(item_offsets_in_list, item_len.astype(np.int32)),
            pa.ListArray.from_arrays(pa.array(item_offsets_in_list), ids_col),
            _lists(item_offsets_in_list, item_offset.astype(np.int32)),
            pa.array(positions[item_row[first_item]] if n_seq else np.zeros(0, np.int64), pa.int64()),
        ],
        schema=SEQUENCE_SCHEMA,
    )

    rejected_rows = sorted(reasons)
    rejected = table.take(pa.array(rejected_rows, pa.int64())).append_column(
        "reason", pa.array([reasons[r] for r in rejected_rows], pa.string())
    )
    # Figures: tokens and trained tokens per category, padding, items per sequence.
    categories = np.asarray(table.column("category").to_pylist(), dtype=object)
    trained = (item_labels != IGNORE_INDEX).astype(np.int64)
    trained_per_item = np.add.reduceat(trained, item_first_token) if len(item_len) else np.zeros(0, np.int64)
    tokens_by_category: Counter = Counter()
    trained_by_category: Counter = Counter()
    for category, n, t in zip(categories[item_row].tolist(), item_len.tolist(), trained_per_item.tolist()):
        tokens_by_category[category] += n
        trained_by_category[category] += t
    figures = {
        "rows_in": table.num_rows,
        "rows_packed": table.num_rows - len(rejected_rows),
        "rows_rejected": len(rejected_rows),
        "rejected_by_reason": dict(Counter(r.split(":", 1)[0] for r in reasons.values())),
        "items": len(item_len),
        "sequences": n_seq,
        "tokens": int(item_len.sum()),
        "trained_tokens": int(trained.sum()),
        "padding_tokens": int(pads.sum()),
        "capacity_tokens": n_seq * seq_len,
        "tokens_by_category": dict(tokens_by_category),
        "trained_by_category": dict(trained_by_category),
        "items_per_sequence_max": int(items_per_seq.max()) if n_seq else 0,
        "items_per_sequence_histogram": {str(k): int(v) for k, v in sorted(Counter(items_per_seq.tolist()).items())},
        "split_rows": split_rows,
        "split_pieces": int(np.count_nonzero(item_offset)) + split_rows,
        "truncated_rows": truncated_rows,
        "truncated_tokens": truncated_tokens,
        "truncated_ids": truncated_ids,
    }
    return sequences, rejected, figures


def _lists(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.asarray(offsets, dtype=np.int32)), pa.array(values))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pack_shard(task: dict, context: dict) -> dict:
    """One corpus shard -> `sequences/part-NNNNN.parquet` in context["folder"] (an engine step).

    task: {"index", "path"}; context: {"params", "folder"}. Returns the rejected rows, the
    figures and the written file's name, rows, bytes and sha256."""
    started = time.process_time()
    if context.get("single_threaded"):
        # Shards already run in parallel processes: the tokenizer's own threads would only contend.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    params = context["params"]
    tokenizer = load_tokenizer(params)
    table = pq.read_table(task["path"], columns=list(CORPUS_COLUMNS))
    before = tokenizer.encoded.copy()
    tokenizer.switched = False
    sequences, rejected, figures = pack_table(table, tokenizer, params)
    differences = 0
    if tokenizer.switched:  # the tiktoken twin differed on a checked text: the whole shard from tokenizers
        differences = tokenizer.encoded["differences"] - before["differences"]
        before = tokenizer.encoded.copy()
        sequences, rejected, figures = pack_table(table, tokenizer, params)
    figures["encoder"] = {**dict(tokenizer.encoded - before), **({"differences": differences} if differences else {})}
    name = f"{SEQUENCES}/part-{task['index']:05d}.parquet"
    path = Path(context["folder"]) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(sequences, path, compression="zstd", row_group_size=int(params.get("row_group_rows", 256)))
    # CPU of this process (the tokenizer's threads included), for tokens per second per core.
    figures["cpu_seconds"] = round(time.process_time() - started, 3)
    return {"rejected": rejected, "figures": figures, "file": {"path": name, "rows": sequences.num_rows, "bytes": path.stat().st_size, "sha256": sha256_file(path)}}


def corpus_shards(inputs: list[Path]) -> list[dict]:
    """The corpus files to pack, in training order: {"index", "path"}."""
    files = [file for path in inputs for file in kind_files(path, CORPUS)]
    return [{"index": i, "path": str(file)} for i, file in enumerate(files)]


def merge_figures(shards: list[dict], tokenizer: PackTokenizer, params: dict) -> dict:
    """The pack manifest: the shards' figures summed, shares, the tokenizer and files."""
    total: dict = {}
    for figures in shards:
        for key, value in figures.items():
            if isinstance(value, dict):
                bucket = total.setdefault(key, Counter())
                bucket.update(value)
            elif isinstance(value, list):
                total.setdefault(key, []).extend(value)
            elif key == "cpu_seconds":
                total[key] = round(total.get(key, 0) + value, 3)
            elif key == "items_per_sequence_max":
                total[key] = max(total.get(key, 0), value)
            else:
                total[key] = total.get(key, 0) + value
    total = {k: (dict(sorted(v.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0])) if isinstance(v, Counter) else v) for k, v in total.items()}
    total["truncated_ids"] = total.get("truncated_ids", [])[:20]
    sequences = total.get("sequences", 0)
    capacity = total.get("capacity_tokens", 0)
    stored = total.get("tokens", 0) + total.get("padding_tokens", 0)
    total.update(
        {
            "seq_len": int(params["seq_len"]),
            "template": params.get("template"),
            "packing": params.get("packing"),
            "window": params.get("window") if params.get("packing") == "best_fit" else None,
            "pad_to_multiple_of": params.get("pad_to_multiple_of"),
            # Unused share of sequences x seq_len: what a fixed-length trainer pays in padding.
            "padding_share": round(1 - total.get("tokens", 0) / capacity, 6) if capacity else 0.0,
            "stored_padding_share": round(total.get("padding_tokens", 0) / stored, 6) if stored else 0.0,
            "items_per_sequence": round(total.get("items", 0) / sequences, 3) if sequences else 0.0,
            "trained_share": round(total.get("trained_tokens", 0) / total["tokens"], 6) if total.get("tokens") else 0.0,
            "tokenizer": tokenizer.describe(),
        }
    )
    return total


def run_pack(inputs: list[Path], output, params: dict, manifest: StageManifest, engine, progress: Optional[Callable[[str, int], None]] = None) -> StageManifest:
    """Pack the corpus in `inputs` into `output` (see the module docstring)."""
    tokenizer = load_tokenizer(params)  # a bad tokenizer fails here, before any worker starts
    shards = corpus_shards(inputs)
    return engine.pack(shards, output, params, manifest, tokenizer, progress)


def run_pack_shards(shards: list[dict], output, params: dict, manifest: StageManifest, engine, tokenizer: PackTokenizer, progress: Optional[Callable[[str, int], None]] = None) -> StageManifest:
    """The pack stage on this machine: `pack_shard` over the shards through `engine.map`."""
    with DatasetWriter(output, manifest) as writer:
        workers = getattr(engine, "workers", 1)
        context = {"params": params, "folder": str(writer.folder), "single_threaded": workers > 1 and len(shards) > 1}
        results = []
        for result in engine.map(pack_shard, shards, context):
            results.append(result)
            writer.reject(CORPUS, result["rejected"])
            if progress:
                progress(CORPUS, result["figures"]["rows_in"])
        return finish(writer, manifest, results, tokenizer, params)


def finish(writer: DatasetWriter, manifest: StageManifest, results: list[dict], tokenizer: PackTokenizer, params: dict) -> StageManifest:
    """Ledger, manifest figures and the optional outputs, once every shard is written."""
    files = [r["file"] for r in results]
    for entry in files:
        writer.add_file(entry["path"], entry["rows"])
    figures = merge_figures([r["figures"] for r in results], tokenizer, params)
    figures["shards"] = [{"path": f["path"], "sequences": f["rows"], "bytes": f["bytes"], "sha256": f["sha256"]} for f in files]
    manifest.rows_in[CORPUS] = manifest.rows_in.get(CORPUS, 0) + figures.get("rows_in", 0)
    manifest.rows_out[SEQUENCES] = figures.get("sequences", 0)
    outputs = list(params.get("outputs") or [])
    sequence_files = [writer.folder / f["path"] for f in files]
    if "megatron" in outputs:
        from .megatron import write_megatron

        figures["megatron"] = write_megatron(sequence_files, writer.folder / "megatron" / "tokens", tokenizer.vocab_size)
    if "hf" in outputs:
        figures["hf"] = write_hf_dataset(sequence_files, writer.folder / "hf")
    manifest.stats[PACK_MANIFEST_KEY] = figures
    return writer.commit()


def _segment_numbers(batch: dict) -> dict:
    masks = []
    for ids, seq_lens in zip(batch["input_ids"], batch["seq_lens"]):
        numbers = np.repeat(np.arange(1, len(seq_lens) + 1, dtype=np.int32), seq_lens)
        masks.append(np.concatenate([numbers, np.zeros(len(ids) - len(numbers), np.int32)]))
    return {"attention_mask": masks}


def write_hf_dataset(files: list[Path], folder: Path) -> dict:
    """The packed sequences as a Hugging Face `datasets` folder (`load_from_disk`), as the
    released HuatuoGPT-II step saved them; its Arrow cache lives in a folder removed after."""
    import shutil

    try:
        import datasets
    except ImportError:
        raise ValueError("pack.outputs hf needs the `datasets` package (pip install datasets)") from None
    cache = folder.with_name(folder.name + ".cache")
    dataset = datasets.Dataset.from_parquet([str(f) for f in files], cache_dir=str(cache), keep_in_memory=False)
    # attention_mask: the item number (1, 2, ...) of each token, 0 on padding: the packed layout
    # of LLaMA-Factory's neat_packing, from which its collator builds the block-diagonal mask.
    dataset = dataset.map(_segment_numbers, batched=True, batch_size=256)
    dataset.save_to_disk(str(folder))
    rows = dataset.num_rows
    del dataset
    shutil.rmtree(cache, ignore_errors=True)
    return {"path": folder.name, "rows": rows}
