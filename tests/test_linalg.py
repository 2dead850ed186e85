"""mfarray.linalg: the one validity rule and the closed-form k = 3 row arithmetic, checked
against NumPy's eigen-decomposition, determinant and inverse, and against the generic path."""

import numpy as np
import pytest

from mfarray import linalg


def _hermitian(rng, n, k, lam):
    q, _ = np.linalg.qr(rng.standard_normal((n, k, k)) + 1j * rng.standard_normal((n, k, k)))
    g = np.einsum("nab,nb,ncb->nac", q, lam, q.conj())
    return 0.5 * (g + np.conj(np.swapaxes(g, 1, 2)))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_det_inverse_and_rule_agree_with_numpy(k):
    rng = np.random.default_rng(k)
    n = 3000
    lam = rng.uniform(-1, 1, (n, k)) * 10.0 ** rng.uniform(-3, 3, (n, 1))
    lam[np.abs(lam) < 1e-6] = 1e-6
    g = _hermitian(rng, n, k, lam)
    m = linalg.metrics(g)
    positive = lam.min(1) > 0
    ratio = np.abs(lam).min(1) / np.abs(lam).max(1)
    assert np.array_equal(m.valid, positive & (ratio >= k * k * linalg.MARGIN) | (m.valid & positive))
    assert np.array_equal(m.valid[ratio > 1e-10], positive[ratio > 1e-10])
    ok = m.valid
    np.testing.assert_allclose(m.det[ok], np.prod(lam[ok], axis=1), rtol=1e-9)
    inv = np.linalg.inv(g[ok])
    err = np.abs(m.take(np.nonzero(ok)[0]).inverse - inv).max(axis=(1, 2)) / np.abs(inv).max(axis=(1, 2))
    assert err.max() < 1e-8
    # rcond = 1 / (tr g tr g^-1), the bound that makes the rule a guarantee
    rc = 1 / (lam[ok].sum(1) * (1 / lam[ok]).sum(1))
    np.testing.assert_allclose(m.rcond[ok], rc, rtol=1e-8)


@pytest.mark.parametrize("k", [2, 3])
def test_hermitian_det_is_accurate_for_ill_conditioned_positive_metrics(k):
    """det g to a backward-stable error (~ eps cond g, against 50-digit mpmath) where the cofactor
    expansion cancels: it lost 9 % of det g_FS at a quintic point moved into a far chart (cond 5e9)."""
    import mpmath

    rng = np.random.default_rng(k + 10)
    n = 400
    lam = 10.0 ** rng.uniform(-10, 0, (n, k))
    h = _hermitian(rng, n, k, lam)
    d = 10.0 ** rng.uniform(-3, 3, (n, k))  # and badly scaled coordinates, as in a far chart
    g = h * d[:, :, None] * d[:, None, :]
    with mpmath.workdps(50):
        exact = np.array([float(mpmath.re(mpmath.det(mpmath.matrix(m.tolist())))) for m in g])
    cond = np.linalg.cond(h)  # of the scaled matrix: LDL^H does not see a diagonal scaling
    err = np.abs(linalg.hermitian_det(g) / exact - 1)
    assert np.all(err <= 10 * np.finfo(float).eps * np.maximum(cond, 1e7)), (err / cond).max()
    assert err.max() < 1e-4  # the closed form alone: 1.0 (k = 3), 1.7e-7 (k = 2)


def test_express_in_chart_det_is_the_det_of_its_metric():
    import mfarray as mf

    ds = mf.sample_points(mf.fermat_quintic(), 300, seed=4).compute()
    e = mf.express_in_chart(ds, 0, 1)
    det = np.prod(linalg.ldl_pivots(e.g_fs.values), axis=-1)
    np.testing.assert_allclose(e.det_g_fs.values, det, rtol=1e-6)
    assert abs(mf.sigma_measure(e) - mf.sigma_measure(ds)) < 1e-7


def test_rows_path_equals_generic_path_for_k3():
    rng = np.random.default_rng(0)
    lam = 10.0 ** rng.uniform(-12, 2, (2000, 3)) * rng.choice([-1, 1], (2000, 3), p=[0.2, 0.8])
    g = _hermitian(rng, 2000, 3, lam)
    rows = linalg.to_rows(g)
    fast = linalg.metrics_rows(rows, 3)
    slow = linalg._metrics_generic(rows, 3, linalg.MARGIN)
    assert np.array_equal(fast.valid, slow.valid)
    ok = fast.valid
    # both are backward stable: they agree to about eps times the condition number (~ 1/rcond)
    bound = 50 * np.finfo(float).eps / fast.rcond[ok]
    assert np.all(np.abs(fast.det[ok] / slow.det[ok] - 1) <= bound)
    inv_err = np.abs(fast.inverse_rows[:, ok] - linalg.to_rows(slow.inverse)[:, ok]).max(axis=0)
    assert np.all(inv_err <= bound * np.abs(fast.inverse_rows[:, ok]).max(axis=0))
    assert ok.sum() > 500 and (~ok).sum() > 500


def test_rows_round_trip_and_isometry():
    rng = np.random.default_rng(3)
    g = _hermitian(rng, 50, 3, rng.uniform(0.1, 2, (50, 3)))
    rows = linalg.to_rows(g)
    assert rows.shape == (9, 50) and rows.flags.c_contiguous
    np.testing.assert_allclose(linalg.from_rows(rows, 3), g, rtol=0, atol=1e-15)
    h = _hermitian(rng, 50, 3, rng.uniform(-1, 1, (50, 3)))
    inner = np.real(np.einsum("nab,nab->n", np.conj(g), h))
    np.testing.assert_allclose((rows * linalg.to_rows(h)).sum(0), inner, rtol=1e-12)


def test_non_finite_and_non_hermitian_metrics_are_invalid_not_errors():
    g = np.broadcast_to(np.eye(3, dtype=complex), (4, 3, 3)).copy()
    g[0, 0, 0] = np.nan
    g[1, 1, 2] = np.inf
    g[2, 0, 1] += 0.1  # not Hermitian
    m = linalg.metrics(g)
    assert m.valid.tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="3 of 4 metrics are not valid"):
        linalg.require_valid(g, "g")
