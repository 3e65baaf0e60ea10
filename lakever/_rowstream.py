"""What an upload remembers of the rows it has read: their digest and their keys.

An upload id is a promise about its rows. `RowDigest` is a running digest of
every row an upload received, in order, so a retry that sends other rows
under a finished or interrupted upload's id is refused instead of being
taken for the same upload. `KeySet` holds the keys met so far, so the first
copy of a key is kept and every later copy is rejected (rule
``duplicate_key``) whether the copies share a chunk or not: the result does
not depend on `chunk_rows`.

Both are rebuilt on resume from the rows the retry skips (it reads them
anyway to find its place), so nothing but the digest is stored.
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np
import polars as pl

#: Tells digests apart that different Polars versions made (its hashes may change).
SCHEME = f"p{pl.__version__}"


class RowDigest:
    """A running SHA-256 over one 64-bit hash per row, the same however rows are batched.

    A row's hash is the wrapping sum, over its non-null columns, of a hash of
    the value seeded by the column's name and table. Column order, a column
    missing from one batch (null in every row there) and integer-or-float
    spellings of one number therefore give the same hash.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def feed(self, table: str, rows: pl.DataFrame) -> None:
        """Take the next rows of `table`, in order."""
        if rows.is_empty():
            return
        total = np.zeros(rows.height, dtype=np.uint64)
        for name in rows.columns:
            column = _canonical(rows[name])
            if column is None:
                continue
            seed = zlib.crc32(f"{table}\0{name}".encode())
            hashed = _hash(column, seed).to_numpy().astype(np.uint64, copy=False)
            valid = column.is_not_null().to_numpy()
            total += np.where(valid, hashed, np.uint64(0))
        self._sha.update(total.astype("<u8").tobytes())

    def value(self) -> str:
        """The digest of every row taken so far, with the scheme that made it."""
        return f"{SCHEME}:{self._sha.copy().hexdigest()}"


def same_rows(recorded: str | None, now: str) -> bool:
    """Whether a recorded digest and this one tell of the same rows (unknown counts as same)."""
    if not recorded or recorded.split(":", 1)[0] != now.split(":", 1)[0]:
        return True  # recorded before digests, or by another Polars: cannot tell
    return recorded == now


def _canonical(column: pl.Series) -> pl.Series | None:
    dtype = column.dtype
    if dtype == pl.Null:
        return None
    if dtype.is_numeric():
        return column.cast(pl.Float64)
    if isinstance(dtype, (pl.Categorical, pl.Enum)):
        return column.cast(pl.String)
    return column


def _hash(column: pl.Series, seed: int) -> pl.Series:
    try:
        return column.hash(seed=seed)
    except pl.exceptions.PolarsError:  # a type Polars cannot hash: hash its text
        return pl.Series([None if v is None else repr(v) for v in column.to_list()]).hash(seed)


class KeySet:
    """The keys met so far (as two 64-bit hashes each: 16 bytes a key), exact in practice.

    Kept as sorted runs merged as they grow (a log-structured set), so
    marking a chunk costs about its size times the log of the keys held.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []

    def met_before(self, keys: pl.Series) -> pl.Series:
        """Mark each key met earlier (before this call, or earlier in `keys`); remember all.

        Null keys are never marked (they break another rule).
        """
        valid = keys.is_not_null()
        later = ~keys.is_first_distinct() & valid
        h1 = keys.hash(seed=1).to_numpy()
        h2 = keys.hash(seed=2).to_numpy()
        hit = later.to_numpy().copy()
        for run in self._runs:
            hit |= _member(run, h1, h2)
        hit &= valid.to_numpy()
        new = valid.to_numpy() & ~hit
        self._add(h1[new], h2[new])
        return pl.Series(keys.name, hit)

    def _add(self, h1: np.ndarray, h2: np.ndarray) -> None:
        if not len(h1):
            return
        order = np.lexsort((h2, h1))
        self._runs.append((h1[order], h2[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (a1, a2), (b1, b2) = self._runs.pop(), self._runs.pop()
            m1, m2 = np.concatenate([a1, b1]), np.concatenate([a2, b2])
            order = np.lexsort((m2, m1))
            self._runs.append((m1[order], m2[order]))


def _member(run: tuple[np.ndarray, np.ndarray], h1: np.ndarray, h2: np.ndarray) -> np.ndarray:
    """Which (h1, h2) pairs the sorted run holds."""
    r1, r2 = run
    left = np.searchsorted(r1, h1, side="left")
    right = np.searchsorted(r1, h1, side="right")
    found = np.zeros(len(h1), dtype=bool)
    single = right - left == 1
    found[single] = r2[left[single]] == h2[single]
    for i in np.flatnonzero(right - left > 1):  # equal first hashes: look at each
        found[i] = bool((r2[left[i] : right[i]] == h2[i]).any())
    return found
