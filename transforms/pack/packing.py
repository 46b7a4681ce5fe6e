"""Packing: which items share a training sequence. Pure functions over item lengths (tokens).

Both keep the corpus's priority order: `greedy` exactly (HuatuoGPT-II's way: fill a sequence in
corpus order, start the next when an item does not fit); `best_fit` at the scale of a window of
`window` consecutive items, inside which items are placed first-fit-decreasing (longest first,
each into the first open sequence with room), which leaves far less padding. A sequence never
holds items of two windows, so an item is never more than `window` items away from its place.
"""
from __future__ import annotations

import numpy as np


def greedy(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Sequence number (0, 1, ...) of each item; every length must be <= capacity."""
    bins = np.empty(len(lengths), dtype=np.int64)
    current, used = 0, 0
    for i, length in enumerate(lengths.tolist()):
        if used + length > capacity and used > 0:
            current, used = current + 1, 0
        bins[i] = current
        used += length
    return bins


def best_fit(lengths: np.ndarray, capacity: int, window: int) -> np.ndarray:
    """Sequence number of each item, first-fit-decreasing inside each window of consecutive
    items; sequences are numbered in the order of their earliest item."""
    n = len(lengths)
    bins = np.empty(n, dtype=np.int64)
    next_bin = 0
    for start in range(0, n, window):
        stop = min(n, start + window)
        part = lengths[start:stop]
        order = np.argsort(-part, kind="stable")
        room = np.empty(len(part), dtype=np.int64)  # free tokens of each open sequence
        opened = 0
        local = np.empty(len(part), dtype=np.int64)
        for i in order.tolist():
            length = part[i]
            fits = np.flatnonzero(room[:opened] >= length)
            if len(fits):
                b = fits[0]
            else:
                b = opened
                room[b] = capacity
                opened += 1
            room[b] -= length
            local[i] = b
        # Number this window's sequences by their earliest item, so output follows corpus order.
        first = np.full(opened, len(part), dtype=np.int64)
        np.minimum.at(first, local, np.arange(len(part)))
        rank = np.empty(opened, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(opened)
        bins[start:stop] = next_bin + rank[local]
        next_bin += opened
    return bins


def pack(lengths: np.ndarray, capacity: int, method: str, window: int = 1000) -> np.ndarray:
    """Sequence number of each item by `method` ("greedy" or "best_fit")."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and int(lengths.max()) > capacity:
        raise ValueError(f"an item of {int(lengths.max())} tokens exceeds the sequence length {capacity}")
    if method == "greedy":
        return greedy(lengths, capacity)
    if method == "best_fit":
        return best_fit(lengths, capacity, window)
    raise ValueError(f"unknown packing {method!r}; use 'greedy' or 'best_fit'")
