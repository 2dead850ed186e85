"""Operators of local kernels (method="local", mfarray.kernels.operators.local): the Gaussian on
FS distance within its stated bound of the dense operator, with a bound that is not vacuous; the
Delta kernel equal to the dense one exactly; flows with method="local" equal to method="dense"
within a stated tolerance; bad options refused by name.

Points: 2504 quintic points of one chart (50,000 sampled, seed 1)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import mfarray as mf
from mfarray.kernels import delta, gaussian_fs, relu_ntk
from mfarray.kernels.operators import (
    LocalGaussianOperator,
    NearestOperator,
    SparseGaussianOperator,
    as_operator,
)
from mfarray.kernels.operators.local import coherent_order
from mfarray.kernels.operators.screen import host_units, nearest_screened, screen_pairs
from mfarray.kernels.operators.sparse import gaussian_radius

EPS = np.finfo(np.float64).eps


@pytest.fixture(scope="module")
def chart():
    return mf.select_chart(mf.sample_points(mf.fermat_quintic(), 50_000, seed=1)).compute()


@pytest.fixture(scope="module")
def z(chart):
    return chart["z"].values


@pytest.fixture(scope="module")
def dense_ops(z):
    """The dense operators, once per kernel (the reference)."""
    cache = {}

    def get(sigma, squared):
        key = (sigma, squared)
        if key not in cache:
            cache[key] = as_operator(gaussian_fs.bind(sigma=sigma, squared=squared), z, z, method="dense")
        return cache[key]

    return get


def _v(n, seed=0, complex_=False):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, 3, 3))
    return v + 1j * rng.standard_normal((n, 3, 3)) if complex_ else v


def _rounding(op, v):
    """Allowance for the rounding of the kept entries and sums (different summation orders):
    4 eps n_in |v|_inf (|K| <= 1)."""
    return 4 * EPS * op.shape[1] * float(np.abs(v).max())


@pytest.mark.parametrize("sigma", [0.05, 0.3])
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("sparse", [True, False])
def test_gaussian_matvec_within_its_stated_bound(z, dense_ops, sigma, squared, sparse):
    k = gaussian_fs.bind(sigma=sigma, squared=squared)
    local = gaussian_radius(1e-12, sigma, squared) < math.pi / 2  # only the heat kernel at 0.05
    if sparse and not local:  # every entry is >= tol: a sparse copy of the full matrix is refused by name
        with pytest.raises(ValueError, match="sparse=True.*nothing can be dropped"):
            as_operator(k, z, z, method="local", block=128, sparse=True)
        return
    op = as_operator(k, z, z, method="local", block=128, sparse=sparse)
    assert isinstance(op, SparseGaussianOperator if sparse else LocalGaussianOperator) and op.sparse == sparse
    v = _v(len(z), complex_=squared)
    err = np.abs(op.matvec(v) - dense_ops(sigma, squared).matvec(v)).max()
    assert err <= op.error_bound(v) + _rounding(op, v)
    # the stated form of the bound
    assert op.error_factor <= op.tol * op.max_skipped_per_row * (1 + 1e-12)
    info = op.describe()
    json.dumps(info)
    assert info["error_factor"] == op.error_factor and info["tol"] == 1e-12


def test_sigma_005_heat_kernel_bound_is_not_vacuous(z, dense_ops):
    """Measured at 2504 points: 0.34% of the entries kept (>= 1e-12) by the sparse form (the
    default), its error_factor ~1e-10 against a measured error of ~4e-12; the tiles skip 14.9% of
    the 64-point tile pairs."""
    k = gaussian_fs.bind(sigma=0.05, squared=True)
    op = as_operator(k, z, z, method="local")
    assert isinstance(op, SparseGaussianOperator)
    assert op.nnz < 0.01 * len(z) ** 2
    assert 0 < op.error_factor < 1e-9
    v = _v(len(z), seed=3)
    ref = dense_ops(0.05, True).matvec(v)
    err = np.abs(op.matvec(v) - ref).max()
    assert err <= op.error_bound(v) + _rounding(op, v)
    assert err > 0  # entries really were left out, and the bound covers them
    # tiles only: the skipped tiles, bound from them alone
    tiles = as_operator(k, z, z, method="local", block=64, sparse=False)
    assert tiles.skipped_tile_fraction > 0.10
    assert np.abs(tiles.matvec(v) - ref).max() <= tiles.error_bound(v) + _rounding(tiles, v)


@pytest.mark.parametrize("squared", [True, False])
def test_sparse_keeps_exactly_the_entries_at_least_tol(z, squared):
    """The screening loses nothing: the CSR pattern is exactly {K_ij >= tol} of the dense matrix
    (at a tol where the paper's form is local too), and the values are the kernel's to rounding:
    a few ulps of the distance, times the exponent's size (<= ln(1/tol) ~ 28) in exp."""
    sigma, tol = (0.05, 1e-12) if squared else (0.02, 1e-9)
    k = gaussian_fs.bind(sigma=sigma, squared=squared)
    zz = z[:1500]
    K = np.asarray(k(zz, zz))
    op = SparseGaussianOperator(k, zz, tol=tol, block=256)
    D = op.to_dense()
    np.testing.assert_array_equal(D != 0, K >= tol)
    np.testing.assert_allclose(D[D != 0], K[D != 0], rtol=16 * EPS * math.log(1 / tol), atol=0)
    rect = SparseGaussianOperator(k, zz[:600], zz[600:], tol=tol, block=200, workers=3)
    np.testing.assert_array_equal(rect.to_dense() != 0, K[:600, 600:] >= tol)


def test_screen_pairs_finds_every_pair_and_counts_rows(z):
    """screen_pairs against |<u, v>|^2 of the whole matrix: the pairs (i <= j for one set) with
    c2 >= c2_min, the row counts (mirrored pairs too) with c2 >= c2_count; any block, workers."""
    u = host_units(z[:1200], "z")
    c2 = np.abs(np.conj(u) @ u.T) ** 2
    lo, hi = math.cos(0.4) ** 2, math.cos(0.6) ** 2
    want = set(zip(*np.nonzero(np.triu(c2 >= lo + 1e-9)))), set(zip(*np.nonzero(np.triu(c2 >= lo - 1e-9))))
    for block, workers in ((100, 1), (512, 3), (4096, None)):
        s = screen_pairs(u, None, lo, hi, block=block, workers=workers)
        got = set(zip(s.i.tolist(), s.j.tolist()))
        assert want[0] <= got <= want[1] and len(got) == len(s.i)
        assert np.all(np.abs(s.counts - (c2 >= hi).sum(axis=1)) <= ((np.abs(c2 - hi) < 1e-9).sum(axis=1)))
    r = screen_pairs(u[:500], u[500:], lo, hi, block=128)
    got = set(zip(r.i.tolist(), r.j.tolist()))
    assert set(zip(*np.nonzero(c2[:500, 500:] >= lo + 1e-9))) <= got
    assert got <= set(zip(*np.nonzero(c2[:500, 500:] >= lo - 1e-9)))


def test_not_local_kernels_are_exact(z):
    """The paper's exp(-d / (2 sigma)) at sigma = 0.05 never drops below ~1.5e-7 on P^4 (d <= pi/2):
    nothing is skipped and the bound is 0."""
    op = as_operator(gaussian_fs.bind(sigma=0.05), z, z, method="local")
    assert op.skipped_tile_fraction == 0 and op.error_factor == 0
    assert not op.sparse  # "auto": nothing can be dropped, so no sparse copy of a full matrix


def test_test_train_operator_transpose_diagonal_dense(z):
    zo, zi = z[:700], z[700:1500]
    k = gaussian_fs.bind(sigma=0.05, squared=True)
    K = np.asarray(k(zo, zi))
    for sparse in (True, False):
        op = as_operator(k, zo, zi, method="local", block=64, sparse=sparse)
        D = op.to_dense()
        assert D.shape == (700, 800)
        assert np.abs(D - K).max() <= max(op.error_factor, 1e-12) + 1e-15
        np.testing.assert_allclose(op.T.to_dense(), D.T, atol=1e-15, rtol=0)
        v = _v(800, seed=5)
        np.testing.assert_allclose(op.matvec(v), np.einsum("ab,bij->aij", D, v), atol=1e-12, rtol=0)
    sym = as_operator(k, zo, zo, method="local", block=64)
    np.testing.assert_array_equal(sym.diagonal(), np.ones(700))
    assert sym.T is sym


def test_coherent_order_is_a_deterministic_permutation(z):
    p = coherent_order(z, 100)
    assert np.array_equal(np.sort(p), np.arange(len(z)))
    assert np.array_equal(p, coherent_order(z.copy(), 100))


# ----------------------------------------------------------------------------- flows

STEPS = 4
FLOW_TOL = 1e-8  # sigma histories and final metrics, local vs dense (mat-vec bound ~1e-10 |v|)


@pytest.fixture(scope="module")
def parts(chart):
    return mf.split(chart, test=0.2, seed=0)


@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_kernel_flow_local_matches_dense(parts, sigma):
    train, test = parts
    k = gaussian_fs.bind(sigma=sigma, squared=True)
    runs = {m: mf.kernel_flow(train, k, steps=STEPS, test=test, method=m) for m in ("dense", "local")}
    d, loc = runs["dense"], runs["local"]
    assert d.sizes["step"] == loc.sizes["step"]
    for name in ("sigma_train", "sigma_test", "loss"):
        np.testing.assert_allclose(loc[name].values, d[name].values, atol=FLOW_TOL, rtol=0)
    for name in ("g_train", "g_test"):
        np.testing.assert_allclose(loc[name].values, d[name].values, atol=FLOW_TOL, rtol=0)
    assert loc.attrs["method"] == "local"
    # the operators' own account travels with the result: the stated bound on the mat-vec error
    ops = json.loads(loc.attrs["operators"])
    assert set(ops) == {"train", "test"} and all("error_factor" in ops[k] for k in ops)
    assert json.loads(d.attrs["operators"]) == {}  # dense operators state no approximation
    # the flow moved: the comparison is not between two initial states
    assert abs(d["sigma_train"].values[-1] - d["sigma_train"].values[0]) > 1e-3


# ----------------------------------------------------------------------------- Delta


def test_delta_local_equals_dense_exactly(z):
    v = _v(len(z), seed=7, complex_=True)
    op = as_operator(delta, z, z, method="local")
    assert isinstance(op, NearestOperator)
    dense = as_operator(delta, z, z, method="dense")
    np.testing.assert_array_equal(op.matvec(v), dense.matvec(v))
    np.testing.assert_array_equal(op.index, np.arange(len(z)))  # distinct points: the identity
    # test x train: every test point's nearest train point
    zo, zi = z[:900], z[900:]
    np.testing.assert_array_equal(as_operator(delta, zo, zi, method="local").to_dense(),
                                  as_operator(delta, zo, zi, method="dense").to_dense())


def test_delta_with_duplicates_and_phases(z):
    """Exact duplicates, sign flips (distance exactly 0) and near-duplicates: the first index
    among equally near points, as the dense kernel."""
    base = z[:600]
    zz = np.concatenate([base, base[:50], -base[50:80], base[80:100] * np.exp(0.3j), base[100:120] * (1 + 1e-12)])
    for block in (16, 128, 4096):
        np.testing.assert_array_equal(nearest_screened(zz, zz, block=block), mf.kernels.nearest_index(zz, zz))
    np.testing.assert_array_equal(nearest_screened(zz[::3], zz, block=100, workers=3),
                                  mf.kernels.nearest_index(zz[::3], zz))
    op = as_operator(delta, zz, zz, method="local")
    np.testing.assert_array_equal(op.to_dense(), as_operator(delta, zz, zz, method="dense").to_dense())
    v = _v(len(zz), seed=2)
    np.testing.assert_array_equal(op.matvec(v), as_operator(delta, zz, zz, method="dense").matvec(v))
    np.testing.assert_array_equal(op.T.matvec(v), np.einsum("ba,bij->aij", op.to_dense(), v))


def test_delta_flow_local_equals_dense(parts):
    train, test = parts
    runs = {m: mf.kernel_flow(train, delta, steps=3, test=test, method=m) for m in ("dense", "local")}
    for name in ("sigma_train", "sigma_test", "g_train", "g_test"):
        np.testing.assert_array_equal(runs["local"][name].values, runs["dense"][name].values)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("tol", [0, 0.0, -1e-3, 1.0, math.nan, math.inf, "1e-12", True])
def test_bad_tol_is_refused_by_name(z, tol):
    with pytest.raises(ValueError, match="tol"):
        as_operator(gaussian_fs.bind(sigma=0.05), z[:50], method="local", tol=tol)


def test_non_local_kernels_are_refused_with_the_methods_that_fit(z):
    x = np.random.default_rng(0).standard_normal((40, 8))
    with pytest.raises(ValueError, match="method='local'.*relu_ntk.*'dense', 'blockwise' or 'zarr'"):
        as_operator(relu_ntk.bind(depth=1), x, method="local")
    rescaled = gaussian_fs.bind(sigma=0.1).rescale(lambda q: np.ones(q.shape[0]))
    with pytest.raises(ValueError, match="rescaled"):
        as_operator(rescaled, z[:40], method="local")


def test_bad_options_are_refused_by_name(z):
    k = gaussian_fs.bind(sigma=0.05)
    for options, name in (({"sparse": "yes"}, "sparse"), ({"cache_bytes": -1}, "cache_bytes"),
                          ({"block": 0}, "block"), ({"workers": 0}, "workers"), ({"bogus": 1}, "bogus"),
                          ({"sparse_max_bytes": -1}, "sparse_max_bytes")):
        with pytest.raises(ValueError, match=name):
            as_operator(k, z[:50], method="local", **options)
    with pytest.raises(ValueError, match="only block"):
        as_operator(delta, z[:50], method="local", tol=1e-9)
    heat = gaussian_fs.bind(sigma=0.05, squared=True)
    with pytest.raises(ValueError, match="sparse_max_bytes"):
        as_operator(heat, z[:300], method="local", sparse=True, sparse_max_bytes=1_000)
    fallback = as_operator(heat, z[:300], method="local", sparse_max_bytes=1_000)
    assert isinstance(fallback, LocalGaussianOperator) and not fallback.sparse


# ----------------------------------------------------------------------------- determinism


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint8), b.view(np.uint8))


@pytest.fixture
def jitter(monkeypatch):
    """Kernel tiles of the local operator after a random pause (up to 1 ms, own generator): the
    threads finish them in another order every mat-vec."""
    import threading
    import time

    from mfarray.kernels.operators import local

    rng, lock, tile = np.random.default_rng(0), threading.Lock(), local.kernel_block

    def jittered(*args, **kw):
        with lock:
            pause = rng.uniform(0.0, 1e-3)
        time.sleep(pause)
        return tile(*args, **kw)

    monkeypatch.setattr(local, "kernel_block", jittered)


def _local_pair(z, shape):
    """(x_out, x_in) of a symmetric or a rectangular local operator (block 32: many tile pairs,
    some skipped at sigma = 0.05)."""
    return (z[:600], z[:600]) if shape == "symmetric" else (z[:300], z[1000:1500])


def _local_serial_order(op, v):
    """LocalGaussianOperator.matvec's documented order of the tile path, one tile at a time in
    this thread with one BLAS thread: in tile order, row tile a is ((c_ab1 + c_ab2) + ...) over
    the kept pairs in increasing b (zeros if none), c_ab = apply_block(K_ab, v_b), and for a
    symmetric operator below the diagonal c_ab = apply_block(K_ba, v_b, transpose=True); then
    the rows back in the original order."""
    from mfarray import backend
    from mfarray.kernels.operators.protocol import apply_block

    v2 = v.reshape(v.shape[0], -1)
    xo, xi, vp = op.x_out[op.perm_out], op.x_in[op.perm_in], v2[op.perm_in]
    kept = set(op.kept)
    pieces = []
    with backend.one_blas_thread():
        for a, (r0, r1) in enumerate(op.rows):
            acc = np.zeros((r1 - r0, v2.shape[1]), dtype=np.result_type(v2.dtype, np.float64))
            first = True
            for b, (c0, c1) in enumerate(op.cols):
                if op.symmetric and b < a:
                    if (b, a) not in kept:
                        continue
                    c = apply_block(np.asarray(op.kernel(xi[c0:c1], xo[r0:r1])), vp[c0:c1], transpose=True)
                elif (a, b) in kept:
                    c = apply_block(np.asarray(op.kernel(xo[r0:r1], xi[c0:c1])), vp[c0:c1])
                else:
                    continue
                acc, first = (c.copy() if first else acc + c), False
            pieces.append(acc)
    out = np.empty((op.shape[0], v2.shape[1]), dtype=pieces[0].dtype)
    out[op.perm_out] = np.concatenate(pieces)
    return out.reshape((op.shape[0], *v.shape[1:]))


def _csr_serial_order(op, v):
    """The sparse path's documented order: row i of K v is ((K_ij1 v_j1 + K_ij2 v_j2) + ...) over
    its stored entries in increasing column j (SciPy's serial CSR product)."""
    csr, v2 = op._csr, v.reshape(v.shape[0], -1)
    assert csr.has_sorted_indices
    out = np.zeros((op.shape[0], v2.shape[1]), dtype=np.result_type(v2.dtype, csr.dtype))
    for i in range(op.shape[0]):
        acc = out[i].copy()
        for jj in range(csr.indptr[i], csr.indptr[i + 1]):
            acc = acc + csr.data[jj] * v2[csr.indices[jj]]
        out[i] = acc
    return out.reshape((op.shape[0], *v.shape[1:]))


@pytest.mark.parametrize("shape", ["symmetric", "rect"])
@pytest.mark.parametrize("kind", ["real", "complex"])
@pytest.mark.parametrize("run", [1, 5], ids=["1-tile-tasks", "5-tile-tasks"])
def test_local_matvec_same_bits_every_run_and_thread_count(z, jitter, monkeypatch, shape, kind, run):
    """Repeated mat-vecs, any workers option and any default thread count (backend.cores), jittered
    tile timing, tasks of 1 or 5 tile pairs: the same bits, the documented serial order."""
    from mfarray import backend
    from mfarray.kernels.operators import local

    monkeypatch.setattr(local, "TASK_ENTRIES", run * 32**2)

    x_out, x_in = _local_pair(z, shape)
    k = gaussian_fs.bind(sigma=0.05, squared=True)
    make = lambda **kw: LocalGaussianOperator(k, x_out, x_out if shape == "symmetric" else x_in, block=32, **kw)
    v = _v(len(x_in), seed=3, complex_=kind == "complex")
    one = make(workers=1)
    assert not one.sparse and one.symmetric == (shape == "symmetric")
    assert 0 < len(one.kept) < len(one.rows) * len(one.cols)  # some tile pairs skipped, some kept
    ref = one.matvec(v)
    assert _same_bits(ref, _local_serial_order(one, v))
    ops = [make(workers=w) for w in (2, 3, 7)]
    for ncores in (1, 4):  # the default thread count follows backend.cores()
        monkeypatch.setattr(backend, "cores", lambda n=ncores: n)
        ops.append(make())
    for op in ops:
        for _ in range(3):
            assert _same_bits(op.matvec(v), ref), f"workers={op.workers}"


@pytest.mark.parametrize("shape", ["symmetric", "rect"])
@pytest.mark.parametrize("kind", ["real", "complex"])
def test_sparse_matvec_same_bits_every_run_and_thread_count(z, monkeypatch, shape, kind):
    """The sparse form: the same CSR matrix, error bound and mat-vec bits for any workers, screening
    block and default thread count, and the documented serial order of the product."""
    from mfarray import backend

    x_out, x_in = _local_pair(z, shape)
    k = gaussian_fs.bind(sigma=0.05, squared=True)
    make = lambda **kw: SparseGaussianOperator(k, x_out, None if shape == "symmetric" else x_in, **kw)
    v = _v(len(x_in), seed=3, complex_=kind == "complex")
    one = make(workers=1)
    assert one.symmetric == (shape == "symmetric") and 0 < one.nnz < one.shape[0] * one.shape[1]
    ref = one.matvec(v)
    assert _same_bits(ref, _csr_serial_order(one, v))
    ops = [make(workers=w, block=b) for w, b in ((2, 64), (3, 100), (7, 4096))]
    for ncores in (1, 4):
        monkeypatch.setattr(backend, "cores", lambda n=ncores: n)
        ops.append(make(block=50))
    for op in ops:
        for _ in range(2):
            assert _same_bits(op.matvec(v), ref), f"workers={op.workers}"
        for name in ("data", "indices", "indptr"):
            assert _same_bits(getattr(op._csr, name), getattr(one._csr, name)), name
        assert op.error_factor == one.error_factor and op.nnz == one.nnz


def test_local_tile_cache_and_to_dense_give_the_same_bits(z, jitter):
    """Tiles cached (every one, or a few) or first computed by to_dense: the same bits as
    recomputed tiles; a mat-vec from a full cache runs on the tile threads too."""
    x = z[:600]
    k = gaussian_fs.bind(sigma=0.05, squared=True)
    v = _v(600, seed=4, complex_=True)
    ref = LocalGaussianOperator(k, x, block=32, workers=1).matvec(v)
    full = LocalGaussianOperator(k, x, block=32, workers=3, cache_bytes=1 << 30)
    part = LocalGaussianOperator(k, x, block=32, workers=3, cache_bytes=3 * 32 * 32 * 8)
    dense_first = LocalGaussianOperator(k, x, block=32, workers=3, cache_bytes=1 << 30)
    dense_first.to_dense()
    for op in (full, part, dense_first):
        for _ in range(3):
            assert _same_bits(op.matvec(v), ref)
    assert len(full._cache.tiles) == len(full.kept) and len(part._cache.tiles) == 3


def test_local_row_tiles_without_a_kept_pair_are_zero(z, jitter):
    """Rows whose tiles meet no kept pair (64 copies of one point, far from every point of x_in,
    at sigma = 0.01) are exact zeros; the other rows follow the documented order."""
    from mfarray.geometry.distance import fs_distance_block

    far = fs_distance_block(z[:1], z[1000:1500])[0] > 0.2
    x_in = z[1000:1500][far]
    phases = np.exp(2j * np.pi * np.random.default_rng(1).random(64))[:, None]
    x_out = np.concatenate([z[:1] * phases, z[100:164]])
    k = gaussian_fs.bind(sigma=0.01, squared=True)
    v = _v(len(x_in), seed=6)
    for workers in (1, 3):
        op = LocalGaussianOperator(k, x_out, x_in, block=32, workers=workers)
        out = op.matvec(v)
        assert np.all(out[:64] == 0) and np.any(out[64:] != 0)
        assert _same_bits(out, _local_serial_order(op, v))


def test_local_honours_a_float32_kernel(z):
    """gaussian_fs bound to dtype='float32' makes a float32 operator with method='local' as with
    method='dense' (its entries rounded to float32), in the sparse form and in the tiles alike."""
    x = z[:300]
    k32 = gaussian_fs.bind(sigma=0.05, squared=True, dtype="float32")
    ref32 = np.asarray(as_operator(k32, x, method="dense").to_dense())
    ref64 = np.asarray(as_operator(gaussian_fs.bind(sigma=0.05, squared=True), x, method="dense").to_dense())
    assert ref32.dtype == np.float32
    for sparse in (True, False):
        op = as_operator(k32, x, method="local", sparse=sparse)
        M = np.asarray(op.to_dense())
        assert op.sparse is sparse and op.describe()["dtype"] == "float32" and M.dtype == np.float32
        assert np.abs(M - ref32).max() <= 1e-6 and np.abs(M - ref64).max() <= 1e-6
        assert not np.array_equal(M.astype(np.float64), ref64)  # rounded, not the float64 kernel
        v = _v(300)
        assert np.abs(op.matvec(v) - np.einsum("ab,b...->a...", ref64, v)).max() <= 1e-5 * np.abs(v).sum(0).max()
        assert np.asarray(op.diagonal()).dtype == np.float32
    op64 = as_operator(gaussian_fs.bind(sigma=0.05, squared=True), x, method="local")
    assert op64.describe()["dtype"] == "float64" and np.asarray(op64.to_dense()).dtype == np.float64
