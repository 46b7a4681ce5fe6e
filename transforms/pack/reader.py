"""Packed sequences for a PyTorch trainer: an IterableDataset over the pack stage's shards.

Needs torch (`pip install 'tcm-corpus[train]'`); nothing in the pipeline imports this module.

    dataset = PackedDataset("build/packed", batch_size=8)      # rank and world from torch.distributed
    loader = dataset.loader(num_workers=2)                     # a DataLoader that keeps the count
    for batch in loader:
        loss = model(batch["input_ids"], position_ids=batch["position_ids"],
                     cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"]) ...
    torch.save({"data": dataset.state_dict(), ...}, "ckpt.pt")  # resume: dataset.load_state_dict(...)

Order and splitting: the packed sequences of all shards, in order, are one stream; sequence i
belongs to rank i % world_size, and each rank keeps the same count (the remainder is dropped
with `drop_last`, so every rank takes the same number of steps). Inside a rank, consecutive
blocks of `batch_size` sequences go to the DataLoader workers in turn, which is the order the
DataLoader delivers them in: a rank sees its sequences in stream order, whatever the number of
workers, and `state_dict()` (how many the trainer has taken) resumes at the exact sequence.

Each item is a dict of tensors: `input_ids`, `labels`, `position_ids` (int64, [L]),
`cu_seqlens` (int32, [segments + 1]: the packed items, then the padding as a segment of its
own), `max_seqlen` (int) and `index` (the sequence's place in the rank's stream).
`collate_packed` joins a batch into one row [1, sum L] with merged `cu_seqlens`, the input of
flash-attention's varlen kernels (`flash_attn_varlen_func`) and of Hugging Face models'
padding-free path; `collate_stacked` stacks equal-length rows into [B, L] with `seq_lens` per
row, for a block-diagonal mask (`block_causal_mask`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

COLUMNS = ["input_ids", "labels", "position_ids", "seq_lens"]


def _shards(path: Path) -> list[Path]:
    folder = path / "sequences" if (path / "sequences").is_dir() else path
    files = sorted(folder.glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{path}: no packed shards (sequences/part-*.parquet)")
    return files


class PackedDataset(IterableDataset):
    """The packed shards under `path` (the pack stage's output folder) for one rank.

    `batch_size`: the DataLoader's, so that workers take whole batches in turn. `rank`,
    `world_size`: default from torch.distributed when it is initialised, else 0 and 1."""

    def __init__(self, path: str | Path, batch_size: int = 1, rank: Optional[int] = None, world_size: Optional[int] = None, drop_last: bool = True):
        self.path = Path(path)
        self.files = _shards(self.path)
        if world_size is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            world_size = torch.distributed.get_world_size() if distributed else 1
            rank = torch.distributed.get_rank() if distributed else 0
        self.rank, self.world_size = int(rank or 0), int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        self.batch_size = int(batch_size)
        # Row groups: (file, group, first global sequence index, rows); footers only.
        self.groups: list[tuple[int, int, int, int]] = []
        total = 0
        for f, file in enumerate(self.files):
            meta = pq.ParquetFile(file).metadata
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g).num_rows
                self.groups.append((f, g, total, rows))
                total += rows
        self.total = total
        per_rank = total // self.world_size if drop_last else -(-(total - self.rank) // self.world_size)
        self.length = per_rank
        self.consumed = 0  # sequences of this rank's stream the trainer has taken
        self.manifest = self._manifest()

    def _manifest(self) -> dict:
        manifest = self.path / "_manifest.json"
        if manifest.is_file():
            return json.loads(manifest.read_text(encoding="utf-8")).get("stats", {}).get("pack", {})
        return {}

    def __len__(self) -> int:
        return self.length

    def state_dict(self) -> dict:
        """Where the trainer is: sequences taken from this rank's stream, and what they came from."""
        return {"consumed": self.consumed, "rank": self.rank, "world_size": self.world_size, "total": self.total,
                "tokenizer_sha256": self.manifest.get("tokenizer", {}).get("sha256")}

    def load_state_dict(self, state: dict) -> None:
        """Resume after `state["consumed"]` sequences; the data and world size must be the same."""
        if state.get("total") not in (None, self.total) or state.get("world_size") not in (None, self.world_size):
            raise ValueError(f"state of {state.get('total')} sequences over {state.get('world_size')} ranks "
                             f"does not match {self.total} over {self.world_size}")
        self.consumed = int(state["consumed"])

    def _mine(self, worker: int, workers: int, start: int) -> Iterator[int]:
        """Local indices (in this rank's stream) this worker yields, from `start` on."""
        for local in range(start, self.length):
            if ((local - start) // self.batch_size) % workers == worker:
                yield local

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        start = self.consumed
        wanted = iter(self._mine(worker, workers, start))
        nxt = next(wanted, None)
        for f, g, first, rows in self.groups:
            if nxt is None:
                break
            # Global index of local j is j * world + rank; skip groups holding none of ours.
            last_local = (first + rows - 1 - self.rank) // self.world_size
            if last_local < nxt:
                continue
            table = pq.ParquetFile(self.files[f]).read_row_group(g, columns=COLUMNS)
            columns = {name: table.column(name).combine_chunks() for name in COLUMNS}
            while nxt is not None and nxt * self.world_size + self.rank < first + rows:
                row = nxt * self.world_size + self.rank - first
                item = self._item(columns, row)
                item["index"] = nxt
                if info is None:
                    self.consumed = nxt + 1
                yield item
                nxt = next(wanted, None)

    @staticmethod
    def _item(columns: dict, row: int) -> dict:
        def values(name):
            array = columns[name]
            lo, hi = array.offsets[row].as_py(), array.offsets[row + 1].as_py()
            return array.values.slice(lo, hi - lo).to_numpy()

        ids = values("input_ids")
        seq_lens = values("seq_lens").astype(np.int64)
        segments = np.append(seq_lens, len(ids) - seq_lens.sum()) if len(ids) > seq_lens.sum() else seq_lens
        cu = np.concatenate([[0], np.cumsum(segments)]).astype(np.int32)
        return {
            "input_ids": torch.from_numpy(ids.astype(np.int64)),
            "labels": torch.from_numpy(values("labels").astype(np.int64)),
            "position_ids": torch.from_numpy(values("position_ids").astype(np.int64)),
            "cu_seqlens": torch.from_numpy(cu),
            "seq_lens": torch.from_numpy(seq_lens),
            "max_seqlen": int(segments.max()) if len(segments) else 0,
        }

    def loader(self, num_workers: int = 0, collate: str = "packed", **kwargs) -> "CountingLoader":
        """A DataLoader over this dataset with `batch_size`, that counts what the trainer takes
        so `state_dict()` is exact with workers too. `collate`: "packed" or "stacked"."""
        collate_fn = collate_packed if collate == "packed" else collate_stacked
        if num_workers > 0:
            # spawn, not fork: a trainer process holds threads (CUDA, NCCL, logging) that fork does not copy safely.
            kwargs.setdefault("multiprocessing_context", "spawn")
        return CountingLoader(self, DataLoader(self, batch_size=self.batch_size, num_workers=num_workers, collate_fn=collate_fn, **kwargs))


class CountingLoader:
    """Iterates a DataLoader and records, after each batch, how far the rank's stream has gone."""

    def __init__(self, dataset: PackedDataset, loader: DataLoader):
        self.dataset, self.loader = dataset, loader

    def __len__(self) -> int:
        return -(-(len(self.dataset) - self.dataset.consumed) // self.dataset.batch_size)

    def __iter__(self):
        for batch in self.loader:
            self.dataset.consumed = int(batch["index"].max()) + 1
            yield batch


def collate_packed(items: list[dict]) -> dict:
    """A batch as one row [1, sum L]: ids, labels and position ids joined, cu_seqlens merged."""
    lengths = [len(item["input_ids"]) for item in items]
    cu = [items[0]["cu_seqlens"]]
    offset = lengths[0]
    for item, length in zip(items[1:], lengths[1:]):
        cu.append(item["cu_seqlens"][1:] + offset)
        offset += length
    return {
        "input_ids": torch.cat([i["input_ids"] for i in items]).unsqueeze(0),
        "labels": torch.cat([i["labels"] for i in items]).unsqueeze(0),
        "position_ids": torch.cat([i["position_ids"] for i in items]).unsqueeze(0),
        "cu_seqlens": torch.cat(cu).to(torch.int32),
        "max_seqlen": max(i["max_seqlen"] for i in items),
        "seq_lens": torch.cat([i["seq_lens"] for i in items]),
        "index": torch.tensor([i["index"] for i in items]),
    }


def collate_stacked(items: list[dict]) -> dict:
    """Equal-length rows stacked [B, L]; `seq_lens` stays a list per row (for the mask)."""
    return {
        "input_ids": torch.stack([i["input_ids"] for i in items]),
        "labels": torch.stack([i["labels"] for i in items]),
        "position_ids": torch.stack([i["position_ids"] for i in items]),
        "cu_seqlens": [i["cu_seqlens"] for i in items],
        "seq_lens": [i["seq_lens"] for i in items],
        "index": torch.tensor([i["index"] for i in items]),
    }


def block_causal_mask(cu_seqlens: torch.Tensor, length: Optional[int] = None) -> torch.Tensor:
    """Bool [L, L]: True where query i may attend key j (same segment, j <= i). Segments by
    `cu_seqlens` ([0, ..., L]); what flash-attention's varlen kernels compute without the mask."""
    cu = cu_seqlens.to(torch.int64)
    length = int(cu[-1]) if length is None else length
    segment = torch.bucketize(torch.arange(length, device=cu.device), cu[1:], right=True)
    same = segment[:, None] == segment[None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=cu.device).tril()
    return same & causal
