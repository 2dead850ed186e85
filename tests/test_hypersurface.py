"""The polynomial layer: evaluation, gradient, homogeneity and input validation."""

import numpy as np
import pytest

import mfarray as mf
from conftest import random_polynomial


def _rand_z(n1, N, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, n1)) + 1j * rng.standard_normal((N, n1))


def test_fermat_and_dwork_match_explicit_formulas():
    z = _rand_z(5, 50, 0)
    assert np.allclose(mf.fermat_quintic()(z), np.sum(z**5, axis=1), rtol=1e-13)
    psi = 0.3 + 0.2j
    X = mf.dwork_quintic(psi)
    assert np.allclose(X(z), np.sum(z**5, axis=1) - 5 * psi * np.prod(z, axis=1), rtol=1e-13)
    dp = X.gradient(z)
    expected = 5 * z**4 - 5 * psi * np.prod(z, axis=1, keepdims=True) / z
    assert np.allclose(dp, expected, rtol=1e-12)


@pytest.mark.parametrize("surface", [mf.fermat_quintic(), mf.dwork_quintic(0.7j), random_polynomial(3, 4, 5)])
def test_gradient_matches_finite_differences(surface):
    z = _rand_z(surface.n_ambient, 10, 1)
    h = 1e-6
    dp = surface.gradient(z)
    for j in range(surface.n_ambient):
        e = np.zeros(surface.n_ambient)
        e[j] = h
        fd = (surface(z + e) - surface(z - e)) / (2 * h)  # holomorphic: real step suffices
        fdi = (surface(z + 1j * e) - surface(z - 1j * e)) / (2j * h)
        assert np.allclose(dp[:, j], fd, rtol=1e-7, atol=1e-7)
        assert np.allclose(dp[:, j], fdi, rtol=1e-7, atol=1e-7)


def test_homogeneity_and_euler_identity():
    X = random_polynomial(4, 5, 2)
    z = _rand_z(5, 20, 3)
    lam = 0.7 - 1.9j
    assert np.allclose(X(lam * z), lam**5 * X(z), rtol=1e-12)
    assert np.allclose(np.sum(z * X.gradient(z), axis=1), 5 * X(z), rtol=1e-11)


def test_attrs_round_trip_is_exact():
    X = mf.dwork_quintic(0.5 + 0.25j)
    assert mf.Hypersurface.from_attrs(X.to_attrs()) == X
    assert hash(mf.Hypersurface.from_attrs(X.to_attrs())) == hash(X)


def test_properties():
    X = mf.fermat_quintic()
    assert (X.n, X.degree, X.dim, X.is_calabi_yau) == (4, 5, 3, True)
    assert mf.cubic_curve().dim == 1 and mf.quartic_k3().dim == 2
    assert not random_polynomial(3, 3, 0).is_calabi_yau


@pytest.mark.parametrize(
    "monomials, coefficients, match",
    [
        ([[2, 0, 0], [0, 1, 0]], [1, 1], "not homogeneous"),
        ([[3]], [1], "n >= 1"),
        ([[3, 0], [3, 0]], [1, 1], "duplicate"),
        ([[-1, 2]], [1], "non-negative"),
        ([[1, 1]], [np.nan], "finite"),
        ([[1, 1], [2, 0]], [1], "one per monomial"),
        ([1, 2, 3], [1], "2-D"),
        ([[0, 0]], [1], "constant"),
        ([[1, 1]], [0], "vanishes identically"),
    ],
)
def test_bad_polynomials_are_refused_with_a_clear_message(monomials, coefficients, match):
    with pytest.raises(ValueError, match=match):
        mf.Hypersurface(monomials, coefficients)


def test_bad_dimensions_and_non_cy_requests():
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        mf.fermat(0)
    with pytest.raises(ValueError, match="Calabi-Yau"):
        random_polynomial(3, 3, 0).require_calabi_yau("sigma_measure")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 5\)"):
        mf.fermat_quintic()(np.ones((3, 4)))
