"""Fubini-Study geodesic distance on P^n (paper eq. 3.2), accurate at every distance.

The paper's d = arccos(|<z, z'>| / |z||z'|) loses half of the digits for nearly equal points
(arccos(1 - eps) ~ sqrt(2 eps), §3.1 eq. 3.4) and patches this with a threshold.  We use
instead, with unit vectors u = z/|z|, v = z'/|z'|, c = <u, v> and the phase lam = conj(c)/|c|
that aligns v with u,

    d = 2 asin(|u - lam v| / 2),

which is the same angle (|u - lam v|^2 = 2 - 2|c| = 4 sin^2(d/2)) but computed from a
difference of nearly equal vectors, not from 1 - |c|: the absolute error is a few ulps at any
distance, so nearly equal points keep their relative accuracy (tested against mpmath).

:func:`fs_distance_block` is the bare formula on one block; :func:`fs_distance_block_gemm` is
the fast tile (one complex GEMM and arccos, the sine form only where d < NEAR_RADIUS);
:func:`fs_distance` lifts either over row blocks (in-memory inputs) or over Dask chunks;
:func:`nearest` streams reference blocks and never forms the full matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import backend

Array = Any  # a NumPy, CuPy or Dask array


def unit_vectors(z: Array) -> Array:
    """z / |z| with a pre-scaling by max |z_i| so huge or tiny coordinates do not overflow."""
    xp = backend.namespace(z)
    z = z / xp.max(xp.abs(z), axis=-1, keepdims=True)
    return z / xp.sqrt(xp.sum(xp.real(z) ** 2 + xp.imag(z) ** 2, axis=-1, keepdims=True))


# Below this distance arccos(|c|) is ill-conditioned (abs error ~ delta_c / sin d), so
# fs_distance_block_gemm recomputes those entries with the sine form; at d >= 0.5 the GEMM
# rounding is amplified at most 1 / sin(0.5) ~ 2.1 times.
NEAR_RADIUS = 0.5


def _sine_form(ua, vb):
    """d = 2 asin(|u - lam v| / 2) for pairs of unit vectors ua (..., m), vb (..., m).

    ua and vb broadcast against each other over the leading axes; the result has the broadcast
    shape, in [0, pi/2].  Everything is entrywise in a fixed order (c = <u, v> summed
    from zero over k = 0 .. m-1, each k adding its two real products in turn), so an entry does
    not depend on the block it is computed in.
    """
    xp = backend.namespace(ua, vb)
    m = ua.shape[-1]
    shape = np.broadcast_shapes(ua.shape[:-1], vb.shape[:-1])
    # real and imaginary parts, coordinate-major and contiguous, so every slice below streams
    ur, ui, vr, vi = (
        xp.stack([part(x[..., k]) for k in range(m)])
        for x in (ua, vb)
        for part in (xp.real, xp.imag)
    )
    # Work in place in a few buffers (out= is fine for NumPy and CuPy ufuncs): fresh (n1, n2)
    # temporaries, not flops, dominate the cost.  c in real arithmetic, each product rounded on
    # its own: a complex multiply may fuse them (NumPy's SIMD loops use FMA), which leaves
    # Im <u, u> ~ 1e-17 and so d(u, u) > 0.
    cr, ci, t = (xp.zeros(shape, dtype=ur.dtype) for _ in range(3))
    for k in range(m):
        cr += xp.multiply(ur[k], vr[k], out=t)
        cr += xp.multiply(ui[k], vi[k], out=t)
        ci += xp.multiply(ur[k], vi[k], out=t)
        ci -= xp.multiply(ui[k], vr[k], out=t)
    # lam = conj(c) / |c|, exactly 1 for u = v (sqrt(fl(x^2)) = |x|), so d(u, u) = 0 exactly.
    # sqrt of the squares, not hypot (~15x slower); where |c|^2 would lose bits to underflow
    # take lam = 1, which moves |u - lam v|^2 = 2 - 2 Re(lam c) by at most 4 |c| < 2^-498
    # (single precision: the guard 2^-100, since 2^-1000 rounds to 0; 4 |c| < 2^-48)
    s = cr * cr
    s += xp.multiply(ci, ci, out=t)
    normal = s >= (2.0**-1000 if s.dtype.itemsize >= 8 else 2.0**-100)
    a = xp.sqrt(xp.where(normal, s, 1.0))
    lr, li = xp.where(normal, cr / a, 1.0), xp.where(normal, -ci / a, 0.0)
    # |u - lam v|^2 = sum_k |lam v_k - u_k|^2, in the buffers of s and c (no longer needed)
    acc, dr, di = s, cr, ci
    acc[...] = 0.0
    for k in range(m):
        xp.multiply(lr, vr[k], out=dr)
        dr -= xp.multiply(li, vi[k], out=t)
        dr -= ur[k]
        xp.multiply(lr, vi[k], out=di)
        di += xp.multiply(li, vr[k], out=t)
        di -= ui[k]
        acc += xp.multiply(dr, dr, out=dr)
        acc += xp.multiply(di, di, out=di)
    d = xp.sqrt(acc, out=acc)
    d *= 0.5
    xp.asin(xp.minimum(d, 1.0, out=d), out=d)
    d *= 2.0
    # 2 asin(sqrt(2)/2) rounds one ulp above the float pi/2: clamp to the true range
    return xp.minimum(d, np.pi / 2, out=d)


def _chunk_entries(x) -> int:
    """Entries per _sine_form call: ~2^15 keep NumPy's temporaries in cache (~1.5x faster than
    whole blocks); a GPU wants large kernel launches instead."""
    return 1 << 22 if backend.is_cupy(x) else 1 << 15


def fs_distance_block(u: Array, v: Array) -> Array:
    """Distances between unit vectors u (n1, m) and v (n2, m) -> (n1, n2), in [0, pi/2].

    <u, v> is summed entry by entry (not a BLAS matmul, whose rounding depends on the block
    shape), so row blocks, Dask chunks and nearest() blocks give bit-identical distances.
    """
    xp = backend.namespace(u, v)
    rows = max(1, _chunk_entries(u) // max(v.shape[0], 1))
    chunks = range(0, max(u.shape[0], 1), rows)  # one (empty) chunk when n1 = 0
    return xp.concat([_sine_form(u[i : i + rows, None, :], v[None, :, :]) for i in chunks], axis=0)


def fs_distance_pairs(u: Array, v: Array) -> Array:
    """Distances between the pairs of unit vectors u[k], v[k] (both (n, m)) -> (n,), in [0, pi/2]:
    the entrywise sine form of :func:`fs_distance_block`, so ``fs_distance_pairs(u[i], v[j])``
    equals ``fs_distance_block(u, v)[i, j]`` bit for bit (for gathered pairs, e.g. candidates of
    a screening pass)."""
    if u.shape != v.shape or u.ndim != 2:
        raise ValueError(f"u and v must be paired unit vectors of one shape (n, m); got {tuple(u.shape)} and "
                         f"{tuple(v.shape)}")
    xp = backend.namespace(u, v)
    step = _chunk_entries(u)
    chunks = range(0, max(u.shape[0], 1), step)  # one (empty) chunk when n = 0
    return xp.concat([_sine_form(u[i : i + step], v[i : i + step]) for i in chunks], axis=0)


def fs_distance_block_gemm(u: Array, v: Array, *, near: float = NEAR_RADIUS) -> Array:
    """Distances between unit vectors u (n1, m) and v (n2, m) -> (n1, n2) float64, in [0, pi/2].

    The fast tile: c = conj(u) @ v.T as one complex GEMM, d = arccos(min(|c|, 1)), and the
    entries with d < ``near`` (where arccos is ill-conditioned) recomputed by the sine form on
    the gathered pairs only, O(m) each.  Those entries are bit-identical to
    :func:`fs_distance_block` (identical points: exactly 0); the others depend on the GEMM's
    summation order, so they may differ across block shapes by a few ulps.

    Error (u, v taken as exact unit vectors, unit roundoff eps = 2^-53): the GEMM rounding of
    c is at most gamma_{2m} sum_k |u_k||v_k| <= 2 m eps, and arccos amplifies it by 1 / sin d,
    so entries with d >= near have abs error <= 2 m eps / sin(near) + 1 ulp of arccos
    (~2.3e-15 worst case for m = 5, typically ~3e-16); entries with d < near have the sine
    form's few ulps.  (The rounding of the inputs' normalization adds to both alike.)
    """
    xp = backend.namespace(u, v)
    d = xp.abs(xp.matmul(xp.conj(u), v.T))
    xp.minimum(d, 1.0, out=d)  # |c| >= 0 already; rounding can push it above 1
    xp.acos(d, out=d)
    # flat indices: NumPy's 1-D nonzero is ~10x faster than its 2-D one (1.7 ns/entry)
    flat = xp.reshape(d, (-1,), copy=False)  # a view: writes below land in d
    idx = xp.nonzero(flat < near)[0]
    step = _chunk_entries(u)  # also bounds the gathered (pairs, m) copies when most are near
    for s in range(0, idx.shape[0], step):
        i = idx[s : s + step]
        flat[i] = _sine_form(u[i // d.shape[1], :], v[i % d.shape[1], :])
    return d


def _validate(z, name):
    if z.ndim != 2:
        raise ValueError(f"{name} must have shape (n_points, n+1); got shape {tuple(z.shape)}")
    if z.shape[-1] < 2:
        raise ValueError(f"{name} must have at least 2 homogeneous coordinates (P^n with n >= 1)")


def _check_values(u, name):
    xp = backend.namespace(u)
    if not bool(xp.all(xp.isfinite(u))):
        raise ValueError(
            f"{name} contains NaN/inf coordinates or zero vectors (which are not points of P^n)"
        )


def _block_rows(n2: int, budget: int = 1 << 21) -> int:
    return max(1, budget // max(n2, 1))


def fs_distance(z1: Array, z2: Array | None = None, *, block_elements: int = 1 << 21,
                method: str = "entrywise") -> Array:
    """FS geodesic distance matrix (n1, n2) between homogeneous points z1 (n1, n+1), z2 (n2, n+1).

    Dask inputs give a lazy Dask result with blocks (chunk of z1) x (chunk of z2); in-memory
    (NumPy/CuPy) inputs are processed in row blocks of about ``block_elements`` entries so the
    temporaries stay bounded.  ``z2=None`` means z2 = z1.  ``method="entrywise"``
    (:func:`fs_distance_block`) gives distances bit-identical across blocks; ``"gemm"``
    (:func:`fs_distance_block_gemm`) is several times faster and agrees to a few ulps.
    """
    if method not in ("entrywise", "gemm"):
        raise ValueError(f"method must be 'entrywise' or 'gemm'; got method={method!r}")
    block = fs_distance_block if method == "entrywise" else fs_distance_block_gemm
    return map_unit_pairs(block, z1, z2, block_elements=block_elements)


def map_unit_pairs(block: Callable[[Array, Array], Array], z1: Array, z2: Array | None = None, *,
                   block_elements: int | None = 1 << 21, dtype: Any = np.float64) -> Array:
    """``block(u, v)`` -> (n1, n2) ``dtype`` for the unit vectors u, v of homogeneous points z1
    (n1, n+1), z2 (n2, n+1) (``None``: z1), lifted as :func:`fs_distance` lifts its blocks.

    The points are validated (2-d, the same P^n, finite and non-zero) and normalised
    (:func:`unit_vectors`); Dask inputs give a lazy result, one ``block`` per pair of chunks;
    in-memory inputs are cut into row blocks of about ``block_elements`` entries (``None``: one
    call, for a block function without (n1, n2) temporaries of its own).
    """
    if z2 is None:
        z2 = z1
    _validate(z1, "z1")
    _validate(z2, "z2")
    if z1.shape[-1] != z2.shape[-1]:
        raise ValueError(
            f"z1 and z2 must live in the same P^n: {z1.shape[-1]} vs {z2.shape[-1]} coordinates"
        )
    if backend.is_dask(z1) or backend.is_dask(z2):
        import dask.array as da

        z1 = da.asarray(z1).rechunk({1: -1})
        z2 = da.asarray(z2).rechunk({1: -1})
        u = z1.map_blocks(_unit_checked, dtype=z1.dtype)
        v = z2.map_blocks(_unit_checked, dtype=z2.dtype)
        return da.blockwise(block, "ij", u, "ik", v, "jk", dtype=dtype, concatenate=True)
    xp = backend.namespace(z1, z2)
    u = _unit_checked(z1, "z1")
    v = _unit_checked(z2, "z2")
    rows = u.shape[0] if block_elements is None else _block_rows(v.shape[0], block_elements)
    if rows >= u.shape[0]:
        return block(u, v)
    return xp.concat(
        [block(u[i : i + rows], v) for i in range(0, u.shape[0], rows)], axis=0
    )


def _unit_checked(z, name="z"):
    u = unit_vectors(z)
    _check_values(u, name)
    return u


def _nearest_block(u, v, ref_rows):
    """Running nearest neighbour of each row of u among v, streaming v in row blocks."""
    xp = backend.namespace(u, v)
    best_d = xp.full((u.shape[0],), xp.inf, dtype=xp.float64)
    best_i = xp.zeros((u.shape[0],), dtype=xp.int64)
    for start in range(0, v.shape[0], ref_rows):
        d = fs_distance_block(u, v[start : start + ref_rows])
        i = xp.argmin(d, axis=1)
        di = xp.take_along_axis(d, i[:, None], axis=1)[:, 0]
        better = di < best_d
        best_d = xp.where(better, di, best_d)
        best_i = xp.where(better, i + start, best_i)
    return best_i, best_d


def nearest(z_query: Array, z_ref: Array, *, block_elements: int = 1 << 21) -> tuple[Array, Array]:
    """Nearest reference point of each query point: (index (nq,), distance (nq,)).

    The reference set is streamed in blocks against each query block, so memory stays at about
    ``block_elements`` distances, never (nq, nref).  A Dask ``z_query`` gives lazy results
    (the reference set is brought into memory once: (n+1) complex numbers per point).
    """
    _validate(z_query, "z_query")
    _validate(z_ref, "z_ref")
    if z_query.shape[-1] != z_ref.shape[-1]:
        raise ValueError("z_query and z_ref must live in the same P^n")
    if z_ref.shape[0] == 0:
        raise ValueError("z_ref is empty: there is no nearest point")
    if backend.is_dask(z_ref):
        z_ref = z_ref.compute()
    v = _unit_checked(z_ref, "z_ref")
    if backend.is_dask(z_query):
        zq = z_query.rechunk({1: -1})
        rows_of = lambda n: _block_rows(n, block_elements)

        def one(block):
            u = _unit_checked(block, "z_query")
            # the query block is the row block; stream the reference in pieces of the same budget
            return np.stack(
                [x.astype(np.float64) for x in _nearest_block(u, v, rows_of(u.shape[0]))], axis=1
            )

        out = zq.map_blocks(one, dtype=np.float64, chunks=(zq.chunks[0], (2,)))
        return out[:, 0].astype(np.int64), out[:, 1]
    xp = backend.namespace(z_query)
    u = _unit_checked(z_query, "z_query")
    q_rows = min(u.shape[0], 4096) or 1
    ref_rows = _block_rows(q_rows, block_elements)
    idx, dist = [], []
    for s in range(0, u.shape[0], q_rows):
        i, d = _nearest_block(u[s : s + q_rows], v, ref_rows)
        idx.append(i)
        dist.append(d)
    if not idx:
        return xp.zeros((0,), dtype=xp.int64), xp.zeros((0,), dtype=xp.float64)
    return xp.concat(idx), xp.concat(dist)
