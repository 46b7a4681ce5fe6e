"""MinHash signatures and LSH band keys for near-duplicate detection, computed vectorised.

Pure numpy, no process state: the same texts give the same signatures in every process, on every
machine, in a Spark executor as in a test.

How the hashing works, and why it is sound:
- Shingles are the character n-grams of the match form of a text (`normalize.match_key`: NFKC,
  simplified, without punctuation or spacing). A text shorter than n is one shingle, itself.
- A shingle's hash is computed from its code points only: each code point (UTF-32) is mixed by
  splitmix64, the n mixed values are combined with n fixed odd 64-bit multipliers (multilinear
  hashing, almost-universal: Lemire & Kaser 2014) and the sum is mixed again by splitmix64. Every
  constant is derived from fixed numbers by splitmix64 itself, so nothing depends on Python's
  per-process salted hash(), on numpy's random streams, or on the byte order of the machine.
  Two distinct shingles of one corpus collide with probability about 2^-64 per pair.
- The signature is one-permutation hashing with optimal densification (Li, Owen & Zhang 2012;
  Shrivastava 2017): each shingle's hash, re-mixed with the seed, picks one of `num_perm` bins from
  its high 32 bits and offers its low 32 bits as the bin's value; a bin keeps its minimum. A bin no
  shingle fell into borrows the value of another bin, chosen by a sequence of bins that depends
  only on the empty bin's number and the seed, so two texts borrow alike. The probability that
  two signatures agree in a bin equals the Jaccard similarity of the shingle sets, as for classic
  k-permutation MinHash, and the estimator's variance is no larger for texts that fill most bins
  (tests/test_dedup.py compares its error with datasketch's on real text). It costs one hash per
  shingle instead of one per shingle and permutation: that is what makes it fast.
- A band key mixes the band's `rows` values and the band's number with fixed multipliers and
  splitmix64: equal bands give equal keys, different bands collide with probability about 2^-64,
  and the same values in two different bands give different keys, so all bands share one table.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from transforms.clean.normalize import match_key, match_keys
from transforms.clean.textstats import lookup

_U64 = np.uint64
_LOW32 = _U64(0xFFFFFFFF)
_EMPTY = np.uint32(0xFFFFFFFF)
# Characters hashed together: bounds the working arrays (about 80 bytes per character).
_CHUNK_CHARS = 1 << 19
_BAND_CHUNK_ROWS = 1 << 12
# Values mixed at once by splitmix64 (512 KB of uint64): a block and its spare fit in a core's cache.
_MIX_BLOCK = 1 << 16


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """Sebastiano Vigna's splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    z = np.asarray(z, dtype=_U64)
    with np.errstate(over="ignore"):
        mixed = _splitmix64_inplace(np.atleast_1d(z + _U64(0x9E3779B97F4A7C15)))
    return mixed[0] if z.ndim == 0 else mixed


def _splitmix64_inplace(z: np.ndarray) -> np.ndarray:
    """splitmix64's mixing steps on `z` (uint64, already offset by the golden-ratio constant),
    in place: the same numbers as `_splitmix64`, without a temporary array per operation. A
    block of _MIX_BLOCK values (rows of a 2-D array) at a time, so that the eight passes over it
    stay in the cache."""
    shifted = np.empty_like(z[:_MIX_BLOCK])
    with np.errstate(over="ignore"):
        for lo in range(0, len(z), _MIX_BLOCK):
            block = z[lo : lo + _MIX_BLOCK]
            spare = shifted[: len(block)]
            for shift, multiplier in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
                np.right_shift(block, _U64(shift), out=spare)
                np.bitwise_xor(block, spare, out=block)
                np.multiply(block, _U64(multiplier), out=block)
            np.right_shift(block, _U64(31), out=spare)
            np.bitwise_xor(block, spare, out=block)
    return z


def _constants(tag: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` fixed pseudo-random uint64 numbers named by (tag, seed): same everywhere."""
    base = _splitmix64(np.array([(tag << 32) ^ (seed & 0xFFFFFFFF)], dtype=_U64))[0]
    with np.errstate(over="ignore"):
        return _splitmix64(base + np.arange(count, dtype=_U64))


@lru_cache(maxsize=32)
def _multipliers(tag: int, count: int) -> np.ndarray:
    return _constants(tag, count) | _U64(1)


@lru_cache(maxsize=64)
def _optimal_bands(threshold: float, num_perm: int, false_negative_weight: float) -> tuple[int, int]:
    """datasketch's choice (`datasketch.lsh._optimal_param`): bands x rows minimising the
    weighted false positive and false negative probability mass on either side of the
    threshold, the first (bands, rows) in its order among equals. Found here by `_band_errors`
    (numpy); datasketch itself (its import loads scipy.integrate, about a CPU-second in a
    fresh process) is asked only when another choice comes within _BAND_ERROR_MARGIN of the
    best, where its numerical integration could order them otherwise."""
    pairs, errors = _band_errors(threshold, num_perm, false_negative_weight)
    best = int(np.argmin(errors))
    if np.count_nonzero(errors <= errors[best] + _BAND_ERROR_MARGIN) == 1:
        return pairs[best]
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 1.0 - false_negative_weight, false_negative_weight)


# Far above the error of datasketch's integration (scipy's quad: 1.5e-8 at most, absolute or
# relative, on these integrals) and of the Gauss-Legendre sums, which are exact for them but
# for rounding.
_BAND_ERROR_MARGIN = 1e-6


def _band_errors(threshold: float, num_perm: int, false_negative_weight: float) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Every (bands, rows) with bands x rows <= num_perm, in datasketch's order (bands, then
    rows, ascending), and its weighted error: (1 - w) x the integral over [0, threshold] of
    P(candidate | s) = 1 - (1 - s^rows)^bands, plus w x the integral over [threshold, 1] of
    1 - P(candidate | s), w the false-negative weight. P is a polynomial of degree
    bands x rows <= num_perm, so Gauss-Legendre quadrature with num_perm // 2 + 1 nodes gives
    both integrals exactly but for rounding."""
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands = np.array([b for b, _ in pairs], np.float64)[:, None]
    rows = np.array([r for _, r in pairs], np.float64)[:, None]
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def integral(lo: float, hi: float, false_negative: bool) -> np.ndarray:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2
        candidate = 1.0 - (1.0 - s**rows) ** bands
        return ((1.0 - candidate) if false_negative else candidate) @ weights * ((hi - lo) / 2)

    errors = (1.0 - false_negative_weight) * integral(0.0, threshold, False) + false_negative_weight * integral(threshold, 1.0, True)
    return pairs, errors


@dataclass(frozen=True)
class MinHashParams:
    num_perm: int
    bands: int
    rows: int
    ngram: int
    seed: int
    threshold: float

    def __post_init__(self) -> None:
        if self.num_perm < 1 or self.bands < 1 or self.rows < 1 or self.ngram < 1:
            raise ValueError(f"MinHash parameters must be positive: {self}")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) exceeds num_perm ({self.num_perm})")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {self.threshold}")

    @classmethod
    def from_threshold(
        cls, threshold: float, num_perm: int = 128, ngram: int = 5, seed: int = 1, *, false_negative_weight: float = 0.5
    ) -> "MinHashParams":
        """Bands x rows as datasketch's MinHashLSH chooses them; a false-negative weight above 0.5
        trades more candidate pairs (each verified on the signatures) for fewer missed ones."""
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        if not 0.0 < false_negative_weight < 1.0:
            raise ValueError(f"false_negative_weight must lie strictly between 0 and 1, got {false_negative_weight}")
        bands, rows = _optimal_bands(float(threshold), int(num_perm), float(false_negative_weight))
        return cls(num_perm=num_perm, bands=bands, rows=rows, ngram=ngram, seed=seed, threshold=threshold)

    def candidate_probability(self, similarity: float) -> float:
        """Chance that two texts of this Jaccard similarity share at least one band."""
        return 1.0 - (1.0 - similarity**self.rows) ** self.bands


@lru_cache(maxsize=1)
def _mixed_bmp() -> np.ndarray:
    """splitmix64 of every code point of the Basic Multilingual Plane, NUL mixed to 0: a look-up
    instead of the mixing arithmetic for nearly every character."""
    table = _splitmix64(np.arange(0x10000, dtype=_U64))
    table[0] = 0
    return table


def _gram_hashes(keys: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, counts): the n-gram hashes of texts already in match form, concatenated in text
    order, and how many belong to each text."""
    lengths = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
    counts = np.where(lengths >= ngram, lengths - ngram + 1, np.minimum(lengths, 1))
    if not counts.sum():
        return np.empty(0, _U64), counts
    # Texts joined with n-1 NULs (never in match form): a window never spans two texts, and a text
    # shorter than n is one window padded with NULs, which add nothing to the hash.
    pad = "\0" * (ngram - 1)
    points = np.frombuffer((pad.join(keys) + pad).encode("utf-32-le"), dtype="<u4")
    if int(points.max()) < 0x10000:
        mixed = lookup(_mixed_bmp(), points)
    else:
        mixed = _splitmix64(points)
        mixed[points == 0] = 0
    windows = len(points) - ngram + 1
    multipliers = _multipliers(1, ngram)
    combined = np.empty(windows, _U64)
    term = np.empty(min(windows, _MIX_BLOCK), _U64)
    with np.errstate(over="ignore"):
        for lo in range(0, windows, _MIX_BLOCK):  # a block at a time, as in _splitmix64_inplace
            hi = min(lo + _MIX_BLOCK, windows)
            block, spare = combined[lo:hi], term[: hi - lo]
            np.multiply(mixed[lo:hi], multipliers[0], out=block)
            for k in range(1, ngram):
                np.multiply(mixed[lo + k : hi + k], multipliers[k], out=spare)
                block += spare
    del mixed, term
    # The windows of text i are the counts[i] starting at its first character.
    starts = np.zeros(len(keys), np.int64)
    np.cumsum(lengths[:-1] + (ngram - 1), out=starts[1:])
    # The others (a few per text, where a window reaches past its text's end) are found from
    # the gaps between one text's windows and the next text's first character.
    gap_starts = starts + counts
    ends = np.empty_like(starts)
    ends[:-1] = starts[1:]
    ends[-1:] = windows
    np.minimum(ends, windows, out=ends)
    gaps = ends - gap_starts
    skipped = np.arange(int(gaps.sum()), dtype=np.int64)
    skipped += np.repeat(gap_starts - (np.cumsum(gaps) - gaps), gaps)
    owned = np.ones(windows, dtype=bool)
    owned[skipped] = False
    return _splitmix64_inplace(np.add(combined[owned], _U64(0x9E3779B97F4A7C15))), counts


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """The distinct hashes (sorted uint64) of the character n-grams of the text's match form."""
    hashes, _ = _gram_hashes([match_key(text or "")], ngram)
    return np.unique(hashes)


def shingle_sets_of_keys(keys: Sequence[str], ngram: int) -> list[np.ndarray]:
    """Per text already in match form, its distinct shingle hashes as a sorted uint32 array (the
    low 32 bits of the 64-bit hash): what exact Jaccard is computed on. Two distinct shingles of
    one pair agree on 32 bits with probability 2^-32, so a pair of 500-character texts is off by
    about 6e-5 shared shingles: nothing at any threshold. 4 bytes per distinct shingle."""
    values, counts = shingle_values_of_keys(keys, ngram)
    return np.split(values, np.cumsum(counts)[:-1]) if len(counts) else []


def shingle_values_of_keys(keys: Sequence[str], ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """`shingle_sets_of_keys` as one flat array: (values, counts), the sorted distinct uint32
    shingle hashes of each text one after the other, and how many belong to each text (int64,
    one per text). No per-text array objects: 4 bytes per distinct shingle and 8 per text."""
    parts = [_distinct_values(*_gram_hashes(keys[lo:hi], ngram)) for lo, hi in _chunks(keys, ngram)]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([v for v, _ in parts]), np.concatenate([c for _, c in parts])


def fingerprints_of_keys(keys: Sequence[str], params: MinHashParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures, shingle values, shingle counts) of texts already in match form: what
    `signatures_of_keys` and `shingle_values_of_keys` give, from one hashing of the n-grams."""
    signatures_out, values_out, counts_out = [], [], []
    for lo, hi in _chunks(keys, params.ngram):
        hashes, counts = _gram_hashes(keys[lo:hi], params.ngram)
        signatures_out.append(_signature_of_hashes(hashes, counts, params))
        values, distinct = _distinct_values(hashes, counts)
        values_out.append(values)
        counts_out.append(distinct)
    if len(signatures_out) == 1:
        return signatures_out[0], values_out[0], counts_out[0]
    return np.concatenate(signatures_out), np.concatenate(values_out), np.concatenate(counts_out)


def _chunks(keys: Sequence[str], ngram: int) -> list[tuple[int, int]]:
    """(lo, hi) ranges of texts hashed together, about _CHUNK_CHARS characters each (at least one
    range, empty for no texts)."""
    bounds, start, size = [], 0, 0
    for end, key in enumerate(keys, 1):
        size += len(key) + ngram
        if size >= _CHUNK_CHARS:
            bounds.append((start, end))
            start, size = end, 0
    if start < len(keys) or not bounds:
        bounds.append((start, len(keys)))
    return bounds


def _distinct_values(hashes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct low 32 bits of each text's n-gram hashes, one text after the other,
    and how many each text has: one sort of (text number, value) packed in 64 bits."""
    texts = len(counts)
    packed = np.repeat(np.arange(texts, dtype=_U64) << _U64(32), counts)
    packed |= hashes & _LOW32
    packed.sort()
    first = np.ones(len(packed), dtype=bool)
    np.not_equal(packed[1:], packed[:-1], out=first[1:])
    packed = packed[first]
    # The text numbers (below 2^32) read as int64 in place: no copy of a value per shingle.
    return packed.astype(np.uint32), np.bincount((packed >> _U64(32)).view(np.int64), minlength=texts).astype(np.int64)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted distinct shingle arrays (`shingle_sets_of_keys`)."""
    if not len(a) and not len(b):
        return 1.0
    shared = len(np.intersect1d(a, b, assume_unique=True))
    return shared / (len(a) + len(b) - shared)


def _signature_chunk(keys: Sequence[str], params: MinHashParams) -> np.ndarray:
    return _signature_of_hashes(*_gram_hashes(keys, params.ngram), params)


def _signature_of_hashes(hashes: np.ndarray, counts: np.ndarray, params: MinHashParams) -> np.ndarray:
    n, perms = len(counts), params.num_perm
    signature = np.full(n * perms, _EMPTY, dtype=np.uint32)
    if not len(hashes):
        return signature.reshape(n, perms)
    # _splitmix64(hashes ^ seed constant) and each hash's bin, each step in place.
    seeded = np.bitwise_xor(hashes, _constants(2, 1, params.seed)[0])
    with np.errstate(over="ignore"):
        seeded += _U64(0x9E3779B97F4A7C15)
        _splitmix64_inplace(seeded)
        bins = np.right_shift(seeded, _U64(32))
        bins *= _U64(perms)
        bins >>= _U64(32)
    slots = np.repeat(np.arange(n, dtype=np.int64) * perms, counts)
    slots += bins.view(np.int64)
    np.minimum.at(signature, slots, seeded.astype(np.uint32))
    filled = np.zeros(n * perms, dtype=bool)
    filled[slots] = True
    _densify(signature, filled, counts > 0, perms, params.seed)
    return signature.reshape(n, perms)


# Attempts of the densification sequence walked bin by bin; the bins still empty after them (in
# texts with few shingles) take their donor from `_first_attempts` instead.
_WALKED_ATTEMPTS = 12
_TAIL_ROWS = 4096


@lru_cache(maxsize=8)
def _first_attempts(perms: int, seed: int) -> np.ndarray:
    """(perms, perms) int32: at [j, t], the first attempt at which empty bin j asks bin t
    (`_probe`). The first filled bin j asks is the filled t with the fewest attempts."""
    never = np.iinfo(np.int64).max
    first = np.full((perms, perms), never, np.int64)
    block = 256
    bins = np.repeat(np.arange(perms, dtype=np.int64), block)
    start = 0
    while (first == never).any():
        attempts = np.tile(np.arange(start, start + block, dtype=np.int64), perms)
        np.minimum.at(first, (bins, _probe(bins.astype(_U64), attempts.astype(_U64), perms, seed)), attempts)
        start += block
    return first.astype(np.int32)


def _probe(bins: np.ndarray, attempt, perms: int, seed: int) -> np.ndarray:
    """The bin each empty bin of `bins` (uint64) asks at `attempt` (one, or one per bin), as int64."""
    with np.errstate(over="ignore"):
        probe = _splitmix64(_constants(3, 1, seed)[0] + bins * _U64(0x100000001B3) + np.asarray(attempt, _U64))
        return (((probe >> _U64(32)) * _U64(perms)) >> _U64(32)).astype(np.int64)


def _densify(signature: np.ndarray, filled: np.ndarray, has_shingles: np.ndarray, perms: int, seed: int) -> None:
    """Optimal densification: an empty bin j takes the value of the first filled bin in a
    sequence that depends only on (j, attempt, seed). Texts without shingles stay all-empty.
    A donor is a filled bin, whose value this never changes, so donors are read in place."""
    empty = np.flatnonzero(~filled)
    empty = empty[has_shingles[empty // perms]]
    # At each attempt, how far the bin asked lies from the empty bin: the donor is the empty
    # position plus the step of its bin. Only the positions still empty are carried over.
    steps = _probe_table(perms, seed) - np.arange(perms, dtype=np.int64)
    for attempt in range(_WALKED_ATTEMPTS):
        if not len(empty):
            return
        donor = empty + steps[attempt][empty % perms]
        found = filled[donor]
        at = np.flatnonzero(found)
        signature[empty[at]] = signature[donor[at]]
        empty = empty[~found]
    if not len(empty):
        return
    bins = empty % perms
    rows = empty - bins
    first = _first_attempts(perms, seed)
    # Each text's filled bins as one row: a bin's row of flags is read whole, not bin by bin.
    by_text = filled.reshape(-1, perms)
    texts = rows // perms
    never = np.iinfo(np.int32).max
    for lo in range(0, len(empty), _TAIL_ROWS):
        part_texts, part_bins = texts[lo : lo + _TAIL_ROWS], bins[lo : lo + _TAIL_ROWS]
        attempts = np.where(by_text[part_texts], first[part_bins], never)
        signature[empty[lo : lo + _TAIL_ROWS]] = signature[rows[lo : lo + _TAIL_ROWS] + attempts.argmin(axis=1)]


@lru_cache(maxsize=8)
def _probe_table(perms: int, seed: int) -> np.ndarray:
    """(_WALKED_ATTEMPTS, perms) int64: the bin that empty bin j asks at each walked attempt."""
    bins = np.arange(perms, dtype=_U64)
    return np.stack([_probe(bins, attempt, perms, seed) for attempt in range(_WALKED_ATTEMPTS)])


def signatures(texts: Sequence[str], params: MinHashParams) -> np.ndarray:
    """MinHash signatures, shape (len(texts), num_perm), uint32. A text with no characters left
    in match form gets an all-0xFFFFFFFF signature; callers skip it for near-duplicates."""
    return signatures_of_keys(match_keys([t or "" for t in texts]), params)


def signatures_of_keys(keys: Sequence[str], params: MinHashParams) -> np.ndarray:
    """`signatures` of texts already in match form (skips normalising twice)."""
    parts = [_signature_chunk(keys[lo:hi], params) for lo, hi in _chunks(keys, params.ngram)]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def band_hashes(sig: np.ndarray, params: MinHashParams) -> np.ndarray:
    """One uint64 key per band, shape (n, bands); a band's number is part of its key."""
    sig = np.atleast_2d(sig)
    if len(sig) > _BAND_CHUNK_ROWS:  # the uint64 working copy is 8 bytes per signature value
        return np.concatenate([band_hashes(sig[i : i + _BAND_CHUNK_ROWS], params) for i in range(0, len(sig), _BAND_CHUNK_ROWS)])
    used = sig[:, : params.bands * params.rows].astype(_U64).reshape(len(sig), params.bands, params.rows)
    multipliers = _multipliers(4, params.rows)
    with np.errstate(over="ignore"):
        combined = (used * multipliers).sum(axis=2, dtype=_U64)
        combined += _constants(5, params.bands)
    return _splitmix64(combined)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Share of equal signature values: one float for two signatures, row-wise for 2-D arrays."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"signatures of different lengths: {a.shape[-1]} and {b.shape[-1]}")
    share = np.mean(a == b, axis=-1)
    return float(share) if np.ndim(share) == 0 else share


def candidate_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, other) row pairs sharing a band key: each row is paired with the lowest-numbered
    row of every band bucket it falls in (a star per bucket, enough for connected components,
    linear in the bucket size). Pairs are distinct, sorted, first < other. `keys` is (n, bands);
    pass the transpose of a (bands, n) array to make each band one contiguous column. One band
    at a time, each band's pairs merged into the distinct pairs so far: the working memory is a
    few arrays of one band and the distinct pairs, not all bands' pairs at once."""
    keys = np.atleast_2d(keys)
    n = len(keys)
    pairs = np.empty(0, np.int64)  # first * n + other, sorted and distinct
    for band in range(keys.shape[1]):
        column = keys[:, band]
        order = np.argsort(column, kind="stable")  # equal keys stay in row order: the head is the lowest row
        ordered = column[order]
        starts = np.ones(n, dtype=bool)
        starts[1:] = ordered[1:] != ordered[:-1]
        del ordered
        head = order[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
        del starts
        linked = head != order
        if linked.any():
            pairs = np.union1d(pairs, head[linked] * n + order[linked])
        del order, head, linked
    return pairs // max(n, 1), pairs % max(n, 1)
