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
    as_operator,
)
from mfarray.kernels.operators.local import coherent_order, nearest_local

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
    op = as_operator(k, z, z, method="local", block=128, sparse=sparse)
    assert isinstance(op, LocalGaussianOperator) and op.sparse == sparse
    v = _v(len(z), complex_=squared)
    err = np.abs(op.matvec(v) - dense_ops(sigma, squared).matvec(v)).max()
    assert err <= op.error_bound(v) + _rounding(op, v)
    # the stated form of the bound
    assert op.error_factor <= op.tol * op.max_skipped_per_row * (1 + 1e-12)
    info = op.describe()
    json.dumps(info)
    assert info["error_factor"] == op.error_factor and info["tol"] == 1e-12


def test_sigma_005_heat_kernel_bound_is_not_vacuous(z, dense_ops):
    """Measured at 2504 points: 14.9% of the 64-point tile pairs skipped, 0.34% of the entries
    kept (>= 1e-12); error_factor ~ 7.6e-11, against a measured error of ~4e-12."""
    k = gaussian_fs.bind(sigma=0.05, squared=True)
    op = as_operator(k, z, z, method="local", block=64)
    assert op.skipped_tile_fraction > 0.10
    assert op.nnz < 0.01 * len(z) ** 2
    assert 0 < op.error_factor < 1e-9
    v = _v(len(z), seed=3)
    ref = dense_ops(0.05, True).matvec(v)
    err = np.abs(op.matvec(v) - ref).max()
    assert err <= op.error_bound(v) + _rounding(op, v)
    assert err > 0  # entries really were left out, and the bound covers them
    # tiles only: the same skipped tiles, bound from them alone
    tiles = as_operator(k, z, z, method="local", block=64, sparse=False)
    assert tiles.skipped_tile_fraction == op.skipped_tile_fraction
    assert np.abs(tiles.matvec(v) - ref).max() <= tiles.error_bound(v) + _rounding(tiles, v)


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
    for block in (16, 128):
        np.testing.assert_array_equal(nearest_local(zz, zz, block), mf.kernels.nearest_index(zz, zz))
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
    with pytest.raises(ValueError, match="sparse_max_bytes"):
        as_operator(gaussian_fs.bind(sigma=0.3), z[:300], method="local", sparse=True, sparse_max_bytes=10_000)
    fallback = as_operator(gaussian_fs.bind(sigma=0.3), z[:300], method="local", sparse_max_bytes=10_000)
    assert not fallback.sparse
