"""Issue 9 (geometry part): checks that could be switched off, and unclear errors.

Every bad argument gets a ValueError or TypeError naming the argument; the on-X and
smoothness checks mean something at every degree (Fermat n = 3 ... 40).
"""

import numpy as np
import pytest

import mfarray as mf
from mfarray import pointset

# ------------------------------------------------------------ 1. tolerances


def _conifold():
    """Dwork psi=1 and a batch with one singular point (1,1,1,1,1) among smooth ones."""
    X = mf.dwork_quintic(1.0)
    z = mf.sample_points(X, 3, seed=0).z.values.copy()
    z[1] = 1.0
    return X, z


BAD_TOLS = [
    (float("nan"), ValueError, "finite"),
    (float("inf"), ValueError, "finite"),
    (-1e-8, ValueError, "non-negative"),
    (True, TypeError, "real number"),
    ("1e-8", TypeError, "real number"),
    (1j, TypeError, "real number"),
]


@pytest.mark.parametrize("value, exc, match", BAD_TOLS)
def test_points_from_z_refuses_bad_tol(value, exc, match):
    z = np.array([[1, 1, 0, 0, 0]], dtype=complex)  # off X: a NaN tol used to let it through
    with pytest.raises(exc, match=rf"tol.*{match}"):
        mf.points_from_z(mf.fermat_quintic(), z, tol=value)


@pytest.mark.parametrize("value, exc, match", BAD_TOLS + [(None, TypeError, "real number")])
def test_points_from_z_refuses_bad_singular_tol(value, exc, match):
    X, z = _conifold()  # singular_tol=nan used to give omega2 = inf and NaN weights
    with pytest.raises(exc, match=rf"singular_tol.*{match}"):
        mf.points_from_z(X, z, singular_tol=value)


def test_good_tolerances_still_work():
    X, z = _conifold()
    with pytest.raises(ValueError, match=r"1 point\(s\) are \(numerically\) singular.*\[1\]"):
        mf.points_from_z(X, z)
    with pytest.raises(ValueError, match="singular"):
        mf.points_from_z(X, z, singular_tol=np.float32(1e-10), tol=None)
    ok = mf.points_from_z(X, z[[0, 2]], tol=np.float64(1e-8), singular_tol=0)
    assert np.isfinite(ok.weight.values).all()
    off = np.array([[1, 1, 0, 0, 0]], dtype=complex)
    mf.points_from_z(mf.fermat_quintic(), off, tol=None)  # documented: None skips the check
    with pytest.raises(ValueError, match="not on X"):
        mf.points_from_z(mf.fermat_quintic(), off, tol=0)


# ----------------------------------------------- 2. scales meaningful at any degree
DEGREES = [3, 5, 10, 22, 24, 30, 40]


@pytest.mark.parametrize("n", DEGREES)
def test_fermat_sampled_points_pass_and_random_points_fail_at_every_degree(n):
    X = mf.fermat(n)
    z = mf.sample_points(X, 200, seed=0).z.values
    res, grad = X.relative_residual(z), X.relative_gradient(z)
    assert np.all(res <= 1e-12), (n, res.max())
    assert np.all(grad > 1e-10), (n, grad.min())
    ds = mf.points_from_z(X, z)  # default tol and singular_tol: every sampled point accepted
    assert np.isfinite(ds.weight.values).all()
    rng = np.random.default_rng(n)
    off = rng.standard_normal((200, n + 1)) + 1j * rng.standard_normal((200, n + 1))
    assert np.all(X.relative_residual(off) > 1e-8), (n, X.relative_residual(off).min())
    with pytest.raises(ValueError, match="200 point\\(s\\) of z are not on X"):
        mf.points_from_z(X, off)


def test_relative_measures_are_scale_invariant_and_exact_on_special_points():
    X = mf.dwork_quintic(0.3 + 0.1j)
    z = mf.sample_points(X, 50, seed=1).z.values
    for lam in (1e-30, 1.0, 3e25 * np.exp(1j)):
        np.testing.assert_allclose(X.relative_residual(lam * z), X.relative_residual(z), atol=1e-15)
        np.testing.assert_allclose(X.relative_gradient(lam * z), X.relative_gradient(z), rtol=1e-12)
        dp = X.gradient(lam * z) if abs(lam) >= 1e-30 else None
        np.testing.assert_allclose(X.relative_gradient(lam * z, dp), X.relative_gradient(z), rtol=1e-12)
    conifold = mf.dwork_quintic(1.0)
    assert conifold.relative_gradient(np.ones((1, 5)))[0] < 1e-15
    assert np.all(mf.fermat(7).relative_gradient(mf.sample_points(mf.fermat(7), 20).z.values) > 0.1)
    # a point where every monomial vanishes lies exactly on X (and is singular there)
    Y = mf.Hypersurface([[2, 1, 0], [0, 2, 1]], [1, 1])
    assert Y.relative_residual(np.array([[0, 0, 1.0]]))[0] == 0
    assert Y.relative_gradient(np.array([[0, 0, 1.0]]))[0] == 0


# ------------------------------------------------------------------ 3. booleans
def test_fermat_refuses_bool():
    with pytest.raises(TypeError, match="n must be an integer"):
        mf.fermat(True)
    with pytest.raises(TypeError, match="n must be an integer"):
        mf.fermat(4.0)
    assert mf.fermat(np.int64(4)).n == 4


@pytest.mark.parametrize("kwargs", [{"n": True}, {"seed": True}, {"chunk_size": True},
                                    {"n": np.bool_(True)}, {"seed": False}])
def test_sample_points_refuses_bools(kwargs):
    name = next(iter(kwargs))
    args = {"n": 10, **kwargs}
    with pytest.raises(TypeError, match=rf"{name} must be .*integer.*bool"):
        mf.sample_points(mf.fermat_quintic(), **args)


# ------------------------------------------------------------- 4. huge n
@pytest.mark.parametrize("n", [10**20, 2**63, pointset.MAX_POINTS + 1])
def test_sample_points_refuses_n_beyond_the_maximum(n):
    with pytest.raises(ValueError, match=r"n = .* exceeds the maximum.*MAX_POINTS"):
        mf.sample_points(mf.fermat_quintic(), n)


def test_sample_points_refuses_too_many_chunks():
    with pytest.raises(ValueError, match=r"more than .*MAX_CHUNKS.*pass a larger chunk_size \(at least 1000000\)"):
        mf.sample_points(mf.fermat_quintic(), 10**12, chunk_size=10)
    with pytest.raises(ValueError, match="MAX_CHUNKS"):
        mf.sample_points(mf.fermat_quintic(), 10 * pointset.MAX_CHUNKS + 1, chunk_size=10)
    ds = mf.sample_points(mf.fermat_quintic(), 10**6)  # large but lazy: only the index is built
    assert ds.sizes["point"] == 10**6 and ds.z.chunks[0][0] == pointset.DEFAULT_CHUNK


# --------------------------------------------------------- 5. coefficients
@pytest.mark.parametrize("coefficients", [["1", "2"], ["a", "b"], [1, "x"], [None, 1],
                                          [True, 1], [object(), 1]])
def test_hypersurface_refuses_non_numeric_coefficients(coefficients):
    with pytest.raises(TypeError, match="coefficients must be .*numbers"):
        mf.Hypersurface([[2, 0], [0, 2]], coefficients)


@pytest.mark.parametrize("value", [np.nan, np.inf, complex(1, np.inf), -np.inf])
def test_hypersurface_refuses_non_finite_coefficients(value):
    with pytest.raises(ValueError, match="coefficients must be finite"):
        mf.Hypersurface([[2, 0], [0, 2]], [1, value])


@pytest.mark.parametrize("monomials", [[["2", "0"], ["0", "2"]], [[True, False], [False, True]]])
def test_hypersurface_refuses_non_numeric_monomials(monomials):
    with pytest.raises(TypeError, match="monomials must be integer"):
        mf.Hypersurface(monomials, [1, 1])


def test_numeric_coefficients_of_every_kind_are_accepted():
    from fractions import Fraction

    for c in ([1, 2], [1.5, 2j], np.array([1, 2], dtype=np.float32), [Fraction(1, 2), np.int8(3)]):
        X = mf.Hypersurface([[2, 0], [0, 2]], c)
        assert X.coefficients == tuple(complex(v) for v in c)
