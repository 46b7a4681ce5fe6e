"""Megatron-LM's indexed dataset (`PREFIX.bin` + `PREFIX.idx`, megatron.core.datasets.indexed_dataset).

The items of the packed sequences, in packed order, each one sequence and one document, as
Megatron's own `tools/preprocess_data.py` writes a corpus (train with `--data-path PREFIX`;
Megatron builds its own samples of `--seq-length` from the documents). Beside it,
`PREFIX_loss_mask.bin/.idx` holds 1 where the item's label is trained (uint8, same layout), for an
SFT dataset class that masks the prompt.

`.idx` layout (little-endian): b"MMIDIDX\\x00\\x00", version u64 = 1, dtype code u8 (8 = uint16
when the vocabulary has fewer than 65,500 tokens, else 4 = int32; 1 = uint8), sequence count u64,
document count u64 (documents + 1), sequence lengths int32[], sequence byte offsets int64[],
document start indices int64[] ([0, 1, ..., n]).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from .render import IGNORE_INDEX, _ranges

INDEX_HEADER = b"MMIDIDX\x00\x00"
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.float64: 6, np.float32: 7, np.uint16: 8}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def token_dtype(vocab_size: int):
    """Megatron's choice: uint16 for vocabularies under 65,500 tokens, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


class _Builder:
    def __init__(self, prefix: Path, dtype):
        self.prefix, self.dtype = prefix, dtype
        self.data = open(f"{prefix}.bin", "wb")
        self.lengths: list[np.ndarray] = []

    def add(self, values: np.ndarray, lengths: np.ndarray) -> None:
        self.data.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())
        self.lengths.append(np.asarray(lengths, dtype=np.int32))

    def close(self) -> int:
        self.data.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, np.int32)
        itemsize = np.dtype(self.dtype).itemsize
        pointers = np.concatenate([[0], np.cumsum(lengths.astype(np.int64) * itemsize)[:-1]]).astype(np.int64) if len(lengths) else np.zeros(0, np.int64)
        documents = np.arange(len(lengths) + 1, dtype=np.int64)
        with open(f"{self.prefix}.idx", "wb") as index:
            index.write(INDEX_HEADER)
            index.write(struct.pack("<Q", 1))
            index.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            index.write(struct.pack("<Q", len(lengths)))
            index.write(struct.pack("<Q", len(documents)))
            index.write(lengths.tobytes(order="C"))
            index.write(pointers.tobytes(order="C"))
            index.write(documents.tobytes(order="C"))
        return len(lengths)


def write_megatron(sequence_files: list[Path], prefix: Path, vocab_size: int) -> dict:
    """Write the packed items of `sequence_files` (streamed a row group at a time) as
    PREFIX.bin/.idx and PREFIX_loss_mask.bin/.idx; returns what was written."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tokens = _Builder(prefix, token_dtype(vocab_size))
    mask = _Builder(prefix.with_name(prefix.name + "_loss_mask"), np.uint8)
    total = 0
    for file in sequence_files:
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["input_ids", "labels", "seq_lens"])
            ids = table.column("input_ids").combine_chunks()
            labels = table.column("labels").combine_chunks()
            seq_lens = table.column("seq_lens").combine_chunks()
            flat_ids = ids.values.to_numpy()
            flat_labels = labels.values.to_numpy()
            row_starts = ids.offsets.to_numpy()[:-1]
            lens = seq_lens.values.to_numpy().astype(np.int64)
            per_row = np.diff(seq_lens.offsets.to_numpy())
            used = np.add.reduceat(lens, seq_lens.offsets.to_numpy()[:-1]) if len(lens) else np.zeros(0, np.int64)
            used[per_row == 0] = 0
            # Items only: each row's first sum(seq_lens) tokens, its padding left out.
            keep = _ranges(row_starts.astype(np.int64), used)
            tokens.add(flat_ids[keep], lens)
            mask.add((flat_labels[keep] != IGNORE_INDEX).astype(np.uint8), lens)
            total += int(lens.sum())
    items = tokens.close()
    mask.close()
    return {"prefix": f"megatron/{prefix.name}", "documents": items, "tokens": total, "dtype": np.dtype(tokens.dtype).name}


def read_megatron(prefix: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sequence lengths, pointers, document indices, data) of an indexed dataset, read as
    Megatron's `_IndexReader` reads it; for checks and tests."""
    raw = Path(f"{prefix}.idx").read_bytes()
    if raw[:9] != INDEX_HEADER:
        raise ValueError(f"{prefix}.idx is not a Megatron index")
    version, = struct.unpack("<Q", raw[9:17])
    code, = struct.unpack("<B", raw[17:18])
    sequences, documents = struct.unpack("<QQ", raw[18:34])
    offset = 34
    lengths = np.frombuffer(raw, np.int32, sequences, offset)
    offset += lengths.nbytes
    pointers = np.frombuffer(raw, np.int64, sequences, offset)
    offset += pointers.nbytes
    doc_index = np.frombuffer(raw, np.int64, documents, offset)
    if version != 1:
        raise ValueError(f"{prefix}.idx: unknown version {version}")
    data = np.fromfile(f"{prefix}.bin", dtype=CODE_DTYPES[code])
    return lengths, pointers, doc_index, data
