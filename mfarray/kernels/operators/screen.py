r"""Screening: which pairs of points are close in Fubini-Study distance, in one pass per tile.

The local operators need, of the ``n_out x n_in`` pairs, only the few within a distance R (the
sparse Gaussian, whose entries beyond R are below ``tol``) or each point's nearest (the Delta
kernel).  On quintic points no spatial tree prunes that search: the projective embedding
``u u^*`` of P^4 is 25-dimensional and the points spread over all of it (principal variances
within 2x of each other), so a k-d tree query of 4 neighbours costs ~190 s per 10^5 queries at
10^5 points and a ball tree ~630 s (benchmarks/RESULTS.md).  Instead every pair is screened by

.. math::  c_2 = |\langle u, v\rangle|^2, \qquad d = \arccos\sqrt{c_2}\ \text{(eq. 3.2), decreasing in } c_2,

in the fused loop of the kernel tiles (:mod:`mfarray.kernels.fused`: the dot product unrolled
in registers, vectorised over a block of columns; no arccos, no exp, no ``(n1, n2)``
temporaries), and only the survivors get exact distances (:func:`mfarray.geometry.distance.
fs_distance_pairs`, the entrywise sine form, bit for bit that of ``fs_distance_block``).

Rigour.  The screened c2 of unit vectors carries the rounding of a 2m-term dot product and
its square (< 1e-14 for m <= 10); every threshold is lowered by :data:`SLACK` = 1e-12.  Since
:math:`|dd/dc_2| = 1 / (2\sqrt{c_2(1 - c_2)}) \ge 1` on [0, 1], a pair screened out by
``c2 < cos^2(R) - SLACK`` has distance > R exactly, and a pair with ``c2 < max_j c2 - SLACK``
is strictly farther than the nearest (by more than the sine form's few ulps).

Work: ``n_out * n_in`` screened pairs (half of them for one point set), ~1.6 ns a pair on
one core, on threads (``nogil``) in a fixed tile order (:func:`.tiled._in_order`), so the
output does not depend on the number of threads.  Without numba a NumPy tile (one complex
GEMM and ``|.|^2``) does the same, more slowly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ... import backend
from ...geometry.distance import fs_distance_pairs, unit_vectors
from .. import fused
from ..fused import COLS, _cnorm2, _cut, _jit, _take
from .protocol import bounds, check_positive
from .tiled import _in_order

__all__ = ["SCREEN_BLOCK", "SLACK", "Screened", "TooManyPairs", "host_units", "nearest_screened", "pair_distances", "screen_pairs"]

#: subtracted from every screening threshold on c2 = |<u, v>|^2 (module docstring)
SLACK = 1e-12
#: points per side of a screening tile (a task of the threads: 16M pairs, ~25 ms)
SCREEN_BLOCK = 4096


def host_units(z: Any, name: str) -> np.ndarray:
    """Unit vectors (n, m) complex128 of homogeneous points z (n, n+1) (Dask computed, CuPy
    copied to the host), refusing NaN/inf coordinates and zero vectors by name."""
    if backend.is_dask(z):
        z = z.compute()
    z = backend.to_numpy(z)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"{name} must be homogeneous points (n, n+1) of P^n, n >= 1; got shape {z.shape}")
    u = np.asarray(unit_vectors(z), dtype=np.complex128)
    if not bool(np.all(np.isfinite(u))):
        raise ValueError(f"{name} contains NaN/inf coordinates or zero vectors (which are not points of P^n)")
    return u


# ----------------------------------------------------------------------------- tiles


@_jit()
def _screen_tile(ura, uia, vra, via, thr, c2_count, diag, mirror, ii, jj, n_row, n_col):
    """Pairs (i, j) of the rows of u (tuples of m coordinate rows, n1 points) and the columns
    of v (n2 points) with c2_ij >= thr[i] (only j >= i when ``diag``) written to ii, jj (as
    long as they have room) and counted in the return value; n_row[i] (and with ``mirror``
    n_col[j]) count the pairs with c2_ij >= c2_count (not touched when c2_count >= 2)."""
    n1 = ura[0].shape[0]
    n2 = vra[0].shape[0]
    cap = ii.shape[0]
    counting = c2_count < 2.0  # 2 (the default of screen_pairs): no counts wanted, passes skipped
    row = np.empty(COLS)
    count = 0
    for j0 in range(0, n2, COLS):
        nb = min(COLS, n2 - j0)
        br = _cut(vra, j0, j0 + nb)
        bi = _cut(via, j0, j0 + nb)
        for i in range(n1):
            ar = _take(ura, i)
            ai = _take(uia, i)
            t = thr[i]
            found = 0
            for j in range(nb):  # vectorised: c2 and the count of pairs kept
                c = _cnorm2(ar, ai, br, bi, j)
                row[j] = c
                found += 1 if c >= t else 0
            if counting:
                hits = 0
                for j in range(nb):  # vectorised
                    hits += 1 if row[j] >= c2_count else 0
                n_row[i] += hits
                if mirror:
                    cols = n_col[j0:j0 + nb]
                    for j in range(nb):  # vectorised
                        cols[j] += 1 if row[j] >= c2_count else 0
            if found:
                for j in range(nb):
                    if row[j] >= t and (j0 + j >= i or not diag):
                        if count < cap:
                            ii[count] = i
                            jj[count] = j0 + j
                        count += 1
    return count


@_jit()
def _rowmax_tile(ura, uia, vra, via, best):
    """best[i] = max(best[i], max_j c2_ij) over the columns of v."""
    n1 = ura[0].shape[0]
    n2 = vra[0].shape[0]
    row = np.empty(COLS)
    for j0 in range(0, n2, COLS):
        nb = min(COLS, n2 - j0)
        br = _cut(vra, j0, j0 + nb)
        bi = _cut(via, j0, j0 + nb)
        for i in range(n1):
            ar = _take(ura, i)
            ai = _take(uia, i)
            for j in range(nb):  # vectorised
                row[j] = _cnorm2(ar, ai, br, bi, j)
            m = best[i]
            for j in range(nb):
                m = max(m, row[j])
            best[i] = m


def _c2_numpy(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """|<u_i, v_j>|^2 (n1, n2) by one complex GEMM (the fallback without numba)."""
    c = np.conj(u) @ v.T
    return c.real * c.real + c.imag * c.imag


class _Tile(NamedTuple):
    r0: int
    c0: int
    u: tuple
    v: tuple


def _soa(u: np.ndarray) -> tuple:
    """(real rows, imaginary rows) of unit vectors (n, m) as tuples of m contiguous arrays (the
    layout of the fused kernel tiles)."""
    return fused._soa(u)[2:]


def _tiles(u_out: np.ndarray, u_in: np.ndarray, block: int, symmetric: bool) -> list[tuple[tuple, tuple]]:
    rows, cols = bounds(u_out.shape[0], block), bounds(u_in.shape[0], block)
    if symmetric:
        return [(rows[a], rows[b]) for a in range(len(rows)) for b in range(a, len(rows))]
    return [(r, c) for r in rows for c in cols]


def _workers(workers: int | None, n: int) -> int:
    return max(1, min(check_positive(workers, "workers") if workers is not None else backend.cores(), n))


# ----------------------------------------------------------------------------- pairs


class Screened(NamedTuple):
    """Pairs (i, j) with c2_ij >= c2_min (i < n_out, j < n_in; for one point set only i <= j),
    in a fixed order, and ``counts`` (n_out,): per row of the whole (n_out, n_in) matrix (for
    one point set the mirrored pairs too), the number of pairs with c2 >= c2_count."""

    i: np.ndarray
    j: np.ndarray
    counts: np.ndarray


class TooManyPairs(ValueError):
    """More pairs passed the screening than the caller allowed (``max_pairs``)."""


def screen_pairs(u_out: np.ndarray, u_in: np.ndarray | None, c2_min: float, c2_count: float = 2.0, *,
                 block: int = SCREEN_BLOCK, workers: int | None = None, max_pairs: int | None = None) -> Screened:
    """Every pair of unit vectors u_out (n_out, m), u_in (n_in, m) (``None``: u_out, one point
    set, pairs i <= j) whose screened c2 = |<u, v>|^2 is >= ``c2_min``, and the per-point
    counts of pairs with c2 >= ``c2_count`` (2: none).  The callers lower their thresholds by
    :data:`SLACK` (module docstring); this function compares exactly as asked.  Memory: the
    pairs found (16 bytes each; :class:`TooManyPairs` as soon as there are more than
    ``max_pairs``), plus ``AHEAD * workers`` tiles' pairs in flight."""
    symmetric = u_in is None
    u_in = u_out if symmetric else u_in
    block = check_positive(block, "block")
    counts = np.zeros(u_out.shape[0], dtype=np.int64)
    tiles = _tiles(u_out, u_in, block, symmetric)
    found_i, found_j = [], []
    total = [0]

    def task(rows, cols):  # on a worker thread: the tile's pairs and counts (tile coordinates)
        (r0, r1), (c0, c1) = rows, cols
        diag = symmetric and rows == cols
        mirror = symmetric and not diag
        if not fused.available():
            c2 = _c2_numpy(u_out[r0:r1], u_in[c0:c1])
            keep = c2 >= c2_min
            if diag:
                keep &= np.arange(c1 - c0)[None, :] >= np.arange(r1 - r0)[:, None]
            i, j = np.nonzero(keep)
            hits = c2 >= c2_count
            return i, j, hits.sum(axis=1), hits.sum(axis=0) if mirror else None
        ur, ui = _soa(u_out[r0:r1])
        vr, vi = _soa(u_in[c0:c1])
        thr = np.full(r1 - r0, float(c2_min))
        n_row, n_col = np.zeros(r1 - r0, dtype=np.int64), np.zeros(c1 - c0, dtype=np.int64)
        cap = 4 * (r1 - r0)
        while True:
            ii, jj = np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64)
            n_row[:] = 0
            n_col[:] = 0
            count = _screen_tile(ur, ui, vr, vi, thr, float(c2_count), diag, mirror, ii, jj, n_row, n_col)
            if count <= cap:
                return ii[:count], jj[:count], n_row, n_col if mirror else None
            cap = count

    def consume(rows, cols, result):  # in the calling thread, in tile order
        i, j, n_row, n_col = result
        (r0, r1), (c0, c1) = rows, cols
        total[0] += len(i)
        if max_pairs is not None and total[0] > max_pairs:
            raise TooManyPairs(f"more than max_pairs = {max_pairs} pairs pass the screening")
        found_i.append(i + r0)
        found_j.append(j + c0)
        counts[r0:r1] += n_row
        if n_col is not None:  # one point set, above the diagonal: the mirrored pairs' rows
            counts[c0:c1] += n_col

    if tiles:
        _in_order(task, consume, tiles, _workers(workers, len(tiles)))
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return Screened(cat(found_i), cat(found_j), counts)


# ----------------------------------------------------------------------------- nearest


def nearest_screened(z_out: Any, z_in: Any, *, block: int = SCREEN_BLOCK, workers: int | None = None) -> np.ndarray:
    """Index (n_out,) int64 of the nearest point of z_in (n_in, n+1) to each point of z_out
    (n_out, n+1), the first index among equally near ones: exactly
    :func:`mfarray.kernels.nearest_index` (the same entrywise distances and tie rule).

    Two screening passes: the largest c2 of every row, then every pair within :data:`SLACK` of
    it (usually the nearest alone; ties and duplicates all), whose exact distances decide; on
    one point set (``z_in is z_out``) one pass over the pairs i <= j (a point is its own
    best).  ``n_out * n_in`` pairs screened twice (one set: half of them once)."""
    same = z_in is z_out
    u_out = host_units(z_out, "z_out")
    u_in = u_out if same else host_units(z_in, "z_in")
    if u_out.shape[1] != u_in.shape[1]:
        raise ValueError(f"z_out and z_in must live in the same P^n: {u_out.shape[1]} vs {u_in.shape[1]} coordinates")
    if u_in.shape[0] == 0:
        raise ValueError("z_in is empty: there is no nearest point")
    block = check_positive(block, "block")
    n_out = u_out.shape[0]
    if same:
        # one point set: a point's own c2 rounds to within 1e-15 of 1, so every pair within
        # SLACK of a row's best has c2 >= 1 - 2 SLACK: one screening of the pairs i <= j
        found = screen_pairs(u_out, None, 1.0 - 2.0 * SLACK, block=block, workers=workers)
        off = found.i != found.j
        i, j = np.concatenate([found.i, found.j[off]]), np.concatenate([found.j, found.i[off]])
        return _decide(u_out, u_in, i, j, n_out)
    best = np.full(n_out, -1.0)
    tiles = _tiles(u_out, u_in, block, False)

    def rowmax(rows, cols):  # on a worker thread: the tile's row maxima
        (r0, r1), (c0, c1) = rows, cols
        if not fused.available():
            return _c2_numpy(u_out[r0:r1], u_in[c0:c1]).max(axis=1)
        m = np.full(r1 - r0, -1.0)
        _rowmax_tile(*_soa(u_out[r0:r1]), *_soa(u_in[c0:c1]), m)
        return m

    def take_max(rows, cols, m):
        np.maximum(best[rows[0]:rows[1]], m, out=best[rows[0]:rows[1]])

    workers = _workers(workers, len(tiles))
    _in_order(rowmax, take_max, tiles, workers)
    pairs_i, pairs_j = [], []

    def candidates(rows, cols):  # on a worker thread: the pairs within SLACK of their row's best
        (r0, r1), (c0, c1) = rows, cols
        thr = best[r0:r1] - SLACK
        if not fused.available():
            i, j = np.nonzero(_c2_numpy(u_out[r0:r1], u_in[c0:c1]) >= thr[:, None])
            return i, j
        cap = 2 * (r1 - r0)
        counts = np.zeros(max(r1 - r0, c1 - c0), dtype=np.int64)  # (not wanted: c2_count 2 counts nothing)
        while True:
            ii, jj = np.empty(cap, dtype=np.int64), np.empty(cap, dtype=np.int64)
            count = _screen_tile(*_soa(u_out[r0:r1]), *_soa(u_in[c0:c1]), thr, 2.0, False, False, ii, jj,
                                 counts, counts)
            if count <= cap:
                return ii[:count], jj[:count]
            cap = count

    def take_pairs(rows, cols, ij):
        pairs_i.append(ij[0] + rows[0])
        pairs_j.append(ij[1] + cols[0])

    _in_order(candidates, take_pairs, tiles, workers)
    i = np.concatenate(pairs_i) if pairs_i else np.zeros(0, dtype=np.int64)
    j = np.concatenate(pairs_j) if pairs_j else np.zeros(0, dtype=np.int64)
    return _decide(u_out, u_in, i, j, n_out)


def pair_distances(u_out: np.ndarray, u_in: np.ndarray, i: np.ndarray, j: np.ndarray,
                   step: int = 1 << 20) -> np.ndarray:
    """FS distances (len(i),) of the pairs (u_out[i], u_in[j]) by the entrywise sine form
    (:func:`mfarray.geometry.distance.fs_distance_pairs`), gathered ``step`` pairs at a time
    (bounded copies)."""
    out = np.empty(i.shape[0])
    for s in range(0, i.shape[0], step):
        out[s:s + step] = fs_distance_pairs(u_out[i[s:s + step]], u_in[j[s:s + step]])
    return out


def _decide(u_out: np.ndarray, u_in: np.ndarray, i: np.ndarray, j: np.ndarray, n_out: int) -> np.ndarray:
    """Per row of the candidate pairs (i, j): the j at the smallest exact distance, the smallest
    j among equally near ones (the tie rule of the streamed nearest search)."""
    d = pair_distances(u_out, u_in, i, j)
    order = np.lexsort((j, d, i))
    i, j = i[order], j[order]
    first = np.ones(i.shape[0], dtype=bool)
    first[1:] = i[1:] != i[:-1]
    if int(first.sum()) != n_out:  # pragma: no cover - every row has its best among the candidates
        raise AssertionError("screening lost a row's nearest candidate")
    index = np.empty(n_out, dtype=np.int64)
    index[i[first]] = j[first]
    return index
