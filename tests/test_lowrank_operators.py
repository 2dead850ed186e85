"""Low-rank operators from a pivoted Cholesky (mfarray/kernels/operators/lowrank.py, issue 10).

At 2000 quintic points of one chart (1600 train, 400 test): the stated bound holds against the
dense matrix, mat-vecs are within it, the flow is within a stated tolerance of the dense flow,
and kernels that are NOT low rank on the points say so.  Measured here (1600 train points):

* cosine_ntk (sigma_w = 1, a wide Gaussian of the features) is low rank: rank 577 at tol 1e-6
  (of the trace), 1493 at 1e-10; 20 flow steps at tol 1e-6 move sigma by 4e-7 (train and test);
* relu_ntk and gaussian_fs sigma = 0.3 (eq. 3.5, exp(-d / 2 sigma)) are NOT: both have a kink
  at zero distance, and need rank 1125 and 1540 of 1600 for a residual trace of 1e-2 of the
  trace (1600 = full rank at 1e-4 / 1e-6); at rank 400 the 20-step flow is 3e-2 off in sigma;
* gaussian_fs sigma = 0.05 (local) needs rank 1582 of 1600 at 1e-2.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mfarray as mf
from mfarray.flows import frozen
from mfarray.kernels import cosine_ntk, gaussian_fs, relu_ntk
from mfarray.kernels.features import patch_features
from mfarray.kernels.operators import FactoredOperator, acts_componentwise
from mfarray.kernels.operators.lowrank import (
    LowRankOperator,
    LowRankWarning,
    lowrank_operator,
    lowrank_operators,
    pivoted_cholesky,
)

N_TRAIN, N_TEST = 1600, 400
RELU = relu_ntk
COSINE = cosine_ntk.bind(sigma_w=1.0)
WIDE = gaussian_fs.bind(sigma=0.3)
LOCAL = gaussian_fs.bind(sigma=0.05)


@pytest.fixture(scope="module")
def sets():
    pts = mf.select_chart(mf.sample_points(mf.fermat_quintic(), 40_000, seed=1)).compute()
    assert pts.sizes["point"] >= N_TRAIN + N_TEST
    return pts.isel(point=slice(0, N_TRAIN)), pts.isel(point=slice(N_TRAIN, N_TRAIN + N_TEST))


def _inputs(kernel, ds):
    z = ds.z.values
    return z if frozen.kernel_spec(kernel).inputs == "points" else patch_features(z)


@pytest.fixture(scope="module")
def dense(sets):
    """name -> (x_train, x_test, K (N, N), K(test, train))."""
    train, test = sets
    out = {}
    for name, k in (("relu", RELU), ("cosine", COSINE), ("wide", WIDE)):
        x, xt = _inputs(k, train), _inputs(k, test)
        out[name] = (k, x, xt, k(x, x), k(xt, x))
    return out


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LowRankWarning)
        return fn(*args, **kwargs)


@pytest.mark.parametrize("name, options", [("relu", {"rank": 300}), ("wide", {"rank": 300}),
                                           ("cosine", {"tol": 1e-4})])
def test_residual_trace_bounds_the_error(dense, name, options):
    k, x, xt, K, Kt = dense[name]
    pc = _quiet(pivoted_cholesky, k, x, **options)
    L = pc.factor
    R = K - L @ L.T
    np.testing.assert_allclose(np.diag(R), pc.residual_diag, atol=1e-10 * pc.trace / N_TRAIN)
    assert np.allclose(L[pc.pivots], np.tril(L[pc.pivots]))  # lower triangular in pivot order
    assert np.linalg.norm(R) <= pc.residual_trace * (1 + 1e-9) + 1e-12  # ||R||_2 <= ||R||_F <= trace R
    assert np.abs(R).max() <= pc.residual_diag.max() + 1e-10 * pc.trace / N_TRAIN
    # the test factor: the off-diagonal block of the joint PSD residual, |R_ij|^2 <= R_ii R_jj
    L_test, res_test = pc.factor_at(xt)
    Rt = Kt - L_test @ L.T
    assert np.linalg.norm(Rt) <= np.sqrt(res_test.sum() * pc.residual_trace) * (1 + 1e-9) + 1e-12
    np.testing.assert_allclose(np.diag(k(xt, xt)) - np.einsum("ij,ij->i", L_test, L_test), res_test,
                               atol=1e-9 * pc.trace / N_TRAIN)


def test_ranks_smooth_and_local(sets, dense):
    """cosine_ntk converges at a rank far below N; relu_ntk, gaussian_fs 0.3 (kinked) and 0.05
    (local) reach rank N/8 with a large residual and say so."""
    x = dense["cosine"][1]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LowRankWarning)
        pc = pivoted_cholesky(COSINE, x, tol=1e-6)
    assert pc.converged and pc.relative_residual <= 1e-6 and pc.rank < 0.45 * N_TRAIN  # measured 577
    z = sets[0].z.values
    for kernel, inp, least in ((RELU, dense["relu"][1], 0.02), (WIDE, z, 0.05), (LOCAL, z, 0.3)):
        with pytest.warns(LowRankWarning, match="not low rank"):
            pc = pivoted_cholesky(kernel, inp, rank=N_TRAIN // 8, tol=1e-6)
        assert pc.rank == N_TRAIN // 8 and not pc.converged
        assert pc.relative_residual > least  # measured 0.061 (relu), 0.165 (0.3), 0.69 (0.05)
    with pytest.raises(ValueError, match="not low rank"):
        pivoted_cholesky(LOCAL, z, rank=50, tol=1e-6, shortfall="raise")


def test_matvec_within_bound(dense):
    k, x, xt, K, Kt = dense["cosine"]
    A, B = lowrank_operators(k, x, xt, tol=1e-4)
    assert isinstance(A, LowRankOperator) and isinstance(A, FactoredOperator) and acts_componentwise(A)
    assert A.shape == (N_TRAIN, N_TRAIN) and B.shape == (N_TEST, N_TRAIN)
    rng = np.random.default_rng(0)
    v = rng.standard_normal((N_TRAIN, 9))
    vc = rng.standard_normal((N_TRAIN, 3, 3)) + 1j * rng.standard_normal((N_TRAIN, 3, 3))
    for op, M in ((A, K), (B, Kt)):
        for w in (v, vc):
            exact = np.tensordot(M, w, axes=(1, 0))
            err = np.linalg.norm(op.matvec(w) - exact)
            assert err <= op.error_bound(w) * (1 + 1e-9)
            assert err > 0
    d = A.describe()
    assert d["method"] == "lowrank" and d["rank"] == A.rank and d["norm_bound"] == A.cholesky.residual_trace
    assert B.describe()["role"] == "test x train" and B.norm_bound > 0
    np.testing.assert_allclose(A.diagonal(), np.diag(K) - A.cholesky.residual_diag, atol=1e-12 * K.max())


@pytest.mark.parametrize("name, kernel, options, within", [
    ("cosine", COSINE, {"tol": 1e-6}, 1e-5),  # measured 3.7e-7 / 4.4e-7 (rank 577)
    ("relu", RELU, {"rank": 400}, 0.06),  # measured 3.3e-2: relu_ntk is not low rank here
])
def test_flow_close_to_dense(sets, name, kernel, options, within):
    train, test = sets
    op = _quiet(lowrank_operator, kernel, _inputs(kernel, train), **options)  # held: the flow reuses it
    ref = mf.kernel_flow(train, kernel, steps=20, test=test)
    got = _quiet(mf.kernel_flow, train, kernel, steps=20, test=test, method="lowrank", operator_options=options)
    for var in ("sigma_train", "sigma_test"):
        gap = float(np.abs(got[var].values - ref[var].values).max())
        print(name, var, "max |sigma - sigma_dense| =", gap, "rank", op.rank)
        assert gap <= within, (name, var, gap)
    # the operator object alone (train points only) gives the same train flow
    alone = mf.kernel_flow(train, op, steps=20)
    np.testing.assert_allclose(alone.sigma_train.values, got.sigma_train.values, rtol=1e-10, atol=1e-13)


def test_train_and_test_operators_share_the_factorisation(dense):
    k, x, xt = dense["cosine"][:3]
    A = lowrank_operator(k, x, x.copy(), tol=1e-3)
    B = lowrank_operator(k, xt, x.copy(), tol=1e-3)
    assert B.cholesky is A.cholesky and B.phi_in is A.phi_in
    C = lowrank_operator(k, xt, x.copy(), tol=1e-4)  # other options: a new factorisation
    assert C.cholesky is not A.cholesky and C.rank > A.rank


def test_bad_options_and_kernels(dense, sets):
    k, x = dense["cosine"][:2]
    for rank in (0, -3, 2.5, True, "10", None):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            pivoted_cholesky(k, x, rank=rank)
    for tol in (float("nan"), -1e-6, 1.0, float("inf"), True, "1e-6", None):
        with pytest.raises((ValueError, TypeError), match="tol must be"):
            lowrank_operators(k, x, tol=tol)
    with pytest.raises(ValueError, match="shortfall must be"):
        pivoted_cholesky(k, x, shortfall="loud")
    with pytest.raises(ValueError, match="not pairwise"):
        pivoted_cholesky(mf.kernels.delta, sets[0].z.values)
    with pytest.raises(ValueError, match="x_in has 10 features"):
        lowrank_operators(k, x, np.zeros((3, 4)))
    not_psd = gaussian_fs.bind(sigma=1.0, squared=True)  # a Gaussian of d^2 on CP^4: negative eigenvalues
    with pytest.raises(ValueError, match="not positive semi-definite"):
        pivoted_cholesky(not_psd, sets[0].z.values, rank=200)

