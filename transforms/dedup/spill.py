"""Fingerprints kept on disk while the local dedup stage runs, not in memory.

The shingle sets of every row (4 bytes per distinct shingle, about 4 bytes per character of
text) and, when the persistent index is written, the MinHash signatures (4 bytes x num_perm per
row) are written once, in row order, as the rows are fingerprinted, and read back only for the
rows that need them: the rows of candidate pairs, the near-duplicate members of clusters and
their kept rows, and the rows written to the index. Reads map the file in slices of a few
thousand rows and unmap them, so the pages read do not stay resident.

Row numbers are those of `clusters.ClusterRows`: the corpus built before first, then the new
rows in input order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .clusters import ShingleSets, ranges_index

# Rows gathered per mapping of a spill file: at most this many rows' pages are resident at once.
_READ_ROWS = 4096


class ShingleSpill:
    """The shingle sets of rows 0..capacity-1, appended in order, in one file of uint32 values;
    the offsets (8 bytes per row) stay in memory."""

    def __init__(self, path: Path, capacity: int):
        self.path = Path(path)
        self.file = open(self.path, "wb")
        self.offsets = np.zeros(capacity + 1, np.int64)
        self.rows = 0

    def append(self, values: np.ndarray, counts: np.ndarray) -> None:
        """The next len(counts) rows: their sets one after the other in `values` (uint32)."""
        k = len(counts)
        if self.rows + k > len(self.offsets) - 1:
            raise ValueError(f"shingle spill holds {len(self.offsets) - 1} rows; {self.rows + k} appended")
        np.ascontiguousarray(values, dtype=np.uint32).tofile(self.file)
        np.cumsum(counts, out=self.offsets[self.rows + 1 : self.rows + k + 1])
        self.offsets[self.rows + 1 : self.rows + k + 1] += self.offsets[self.rows]
        self.rows += k

    def read(self, rows: np.ndarray) -> ShingleSets:
        """The sets of `rows` (ascending row numbers), in that order."""
        self.file.flush()
        rows = np.asarray(rows, np.int64)
        starts, sizes = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        values = np.empty(int(offsets[-1]), np.uint32)
        if not len(values):
            return ShingleSets(values, offsets)
        for lo in range(0, len(rows), _READ_ROWS):
            hi = min(lo + _READ_ROWS, len(rows))
            count = int(offsets[hi] - offsets[lo])
            if not count:
                continue
            mapped = np.memmap(self.path, np.uint32, "r", shape=(int(self.offsets[self.rows]),))
            values[offsets[lo] : offsets[hi]] = mapped[ranges_index(starts[lo:hi], sizes[lo:hi], count)]
            del mapped
        return ShingleSets(values, offsets)

    def close(self) -> None:
        self.file.close()


class SignatureSpill:
    """MinHash signatures of rows 0..n-1, appended in order, in one file of (n, num_perm) uint32."""

    def __init__(self, path: Path, num_perm: int):
        self.path = Path(path)
        self.file = open(self.path, "wb")
        self.num_perm = num_perm
        self.rows = 0

    def append(self, signatures: np.ndarray) -> None:
        np.ascontiguousarray(signatures, dtype=np.uint32).tofile(self.file)
        self.rows += len(signatures)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The signatures of `rows` (any order), shape (len(rows), num_perm)."""
        self.file.flush()
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.num_perm), np.uint32)
        if not len(rows):
            return out
        for lo in range(0, len(rows), _READ_ROWS):
            mapped = np.memmap(self.path, np.uint32, "r", shape=(self.rows, self.num_perm))
            out[lo : lo + _READ_ROWS] = mapped[rows[lo : lo + _READ_ROWS]]
            del mapped
        return out

    def close(self) -> None:
        self.file.close()
