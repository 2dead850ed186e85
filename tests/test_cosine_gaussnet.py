"""Tests for the cosine network NTK (paper §2.3.2, eqs. 2.32-2.37) and Gauss-net.

References used here are independent of the code under test: tensor-grid quadrature over the
parameter distributions, scipy quadrature over R^d, exact rational arithmetic, finite
differences of the network function, and Monte Carlo over independent networks.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate

from mfarray.kernels.cosine import (
    VARIANTS,
    cosine_features,
    cosine_net_apply,
    cosine_net_init,
    cosine_normalized_amplitude,
    cosine_ntk,
    cosine_ntk_empirical,
    cosine_ntk_width,
    sq_distances,
)
from mfarray.kernels.gaussnet import (
    gaussnet_apply,
    gaussnet_hidden,
    gaussnet_init,
    gaussnet_nngp,
    gaussnet_ntk,
    gaussnet_ntk_empirical,
)

EPS = np.finfo(np.float64).eps


# ------------------------------------------------------------------ squared distances
def _exact_sq_dists(x1, x2):
    out = np.empty((x1.shape[0], x2.shape[0]))
    for i in range(x1.shape[0]):
        for j in range(x2.shape[0]):
            out[i, j] = float(sum((Fraction(a) - Fraction(b)) ** 2 for a, b in zip(x1[i], x2[j])))
    return out


def test_sq_distances_direct_is_accurate_for_nearly_equal_points():
    rng = np.random.default_rng(0)
    x1 = 1e3 + rng.normal(size=(6, 3))  # large offset: worst case for |x|^2+|x'|^2-2x.x'
    x2 = np.concatenate([x1 + 1e-7 * rng.normal(size=x1.shape), rng.normal(size=(2, 3)) + 1e3])
    exact = _exact_sq_dists(x1, x2)
    direct = sq_distances(x1, x2, method="direct")
    np.testing.assert_allclose(direct, exact, rtol=8 * EPS, atol=0)
    np.testing.assert_array_equal(sq_distances(x1, x2), direct)  # auto == direct for small d
    gemm = sq_distances(x1, x2, method="gemm")
    assert np.all(gemm >= 0)
    c = np.concatenate([x1, x2]).mean(axis=0)
    bound = 16 * EPS * (((x1 - c) ** 2).sum(1)[:, None] + ((x2 - c) ** 2).sum(1)[None, :])
    assert np.all(np.abs(gemm - exact) <= bound + 16 * EPS * exact)
    np.testing.assert_array_equal(np.diag(sq_distances(x1, x1, method="direct")), 0.0)


def test_sq_distances_gemm_used_for_large_d_and_accurate_for_separated_points():
    rng = np.random.default_rng(1)
    x1, x2 = rng.normal(size=(7, 40)), rng.normal(size=(5, 40))
    exact = _exact_sq_dists(x1, x2)
    np.testing.assert_allclose(sq_distances(x1, x2), exact, rtol=1e-12)
    # identical, widely spread points: |x|^2 + |x|^2 - 2 x.x rounds to +-ulps; clamped at 0
    y = rng.normal(size=(50, 40)) * 1e3
    g = sq_distances(y, y)
    assert np.all(g >= 0)
    assert np.all(np.diag(g) <= 16 * EPS * 2 * ((y - y.mean(0)) ** 2).sum(1))


# ---------------------------------------------- analytic kernel = parameter expectation
def _param_grid(d, sigma_w):
    """Tensor-product quadrature for w ~ N(0, sigma_w^2/d I_d), b ~ U(-pi, pi).

    Trapezoid rule in w (spectrally accurate for Gaussian-weighted smooth integrands) and the
    midpoint rule in b with 16 nodes (exact for trigonometric polynomials of degree < 16).
    """
    nw = {1: 241, 2: 121, 3: 61}[d]
    t = np.linspace(-9.0, 9.0, nw)
    wt = np.exp(-0.5 * t**2) / math.sqrt(2 * math.pi) * (t[1] - t[0])
    mesh = np.meshgrid(*([t] * d), indexing="ij")
    w = np.stack([m.ravel() for m in mesh], axis=1) * sigma_w / math.sqrt(d)  # (M, d)
    ww = np.ones(w.shape[0])
    for m in np.meshgrid(*([wt] * d), indexing="ij"):
        ww = ww * m.ravel()
    nb = 16
    b = -math.pi + 2 * math.pi * (np.arange(nb) + 0.5) / nb
    return w, ww, b


def _features_2_32(x, w, b, variant):
    """Features of one point x (d,) for all grid nodes: shape (M, nb[, d]), eq. (2.32)."""
    if variant == "rff":
        return np.cos((w @ x)[:, None] + b[None, :])
    z = np.cos((w * x[None, :])[:, None, :] + b[None, :, None])  # (M, nb, d)
    return z.sum(axis=2) if variant == "coordinatewise" else z


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("d", [1, 2, 3])
def test_analytic_ntk_equals_expectation_over_parameters(variant, d):
    sigma_w, amp = 1.7, 1.3
    rng = np.random.default_rng(10 + d)
    x1, x2 = rng.normal(size=(3, d)), rng.normal(size=(3, d))
    w, ww, b = _param_grid(d, sigma_w)
    ref = np.empty((3, 3))
    for i in range(3):
        fi = _features_2_32(x1[i], w, b, variant)
        for j in range(3):
            prod = fi * _features_2_32(x2[j], w, b, variant)
            if variant == "additive":
                prod = prod.sum(axis=2)
            ref[i, j] = amp**2 * np.einsum("m,mk->", ww, prod) / b.size
    got = cosine_ntk(x1, x2, sigma_w=sigma_w, amplitude=amp, variant=variant)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)


def test_rff_ntk_is_the_papers_gaussian_2_35_and_variants_differ():
    rng = np.random.default_rng(3)
    d, sigma_w, amp = 3, 2.2, 0.9
    x1, x2 = rng.normal(size=(5, d)), rng.normal(size=(4, d))
    r2 = ((x1[:, None, :] - x2[None, :, :]) ** 2).sum(-1)
    paper = amp**2 / 2 * np.exp(-0.5 * sigma_w**2 / d * r2)
    np.testing.assert_allclose(cosine_ntk(x1, x2, sigma_w=sigma_w, amplitude=amp), paper, rtol=1e-14)
    # the literal (2.32)/(2.33) networks do NOT give (2.35) for d > 1
    for variant in ("coordinatewise", "additive"):
        k = cosine_ntk(x1, x2, sigma_w=sigma_w, amplitude=amp, variant=variant)
        assert np.max(np.abs(k - paper)) > 0.1 * np.max(paper)
    # ... but all three coincide for d = 1
    y1, y2 = rng.normal(size=(6, 1)), rng.normal(size=(5, 1))
    k1 = cosine_ntk(y1, y2, sigma_w=sigma_w)
    for variant in ("coordinatewise", "additive"):
        np.testing.assert_allclose(cosine_ntk(y1, y2, sigma_w=sigma_w, variant=variant), k1, rtol=1e-13)


# ------------------------------------------------------------ normalisation (2.36-2.37)
def _grid_moments(kernel_of_offsets, d, sigma):
    """Trapezoid rule over the cube [-12 sigma, 12 sigma]^d (spectral accuracy for Gaussians)."""
    n = {1: 401, 2: 161, 3: 73}[d]
    t = np.linspace(-12 * sigma, 12 * sigma, n)
    h = t[1] - t[0]
    pts = np.stack([m.ravel() for m in np.meshgrid(*([t] * d), indexing="ij")], axis=1)
    k = kernel_of_offsets(pts) * h**d
    m0 = k.sum()
    m2 = (pts[:, 0] ** 2 * k).sum()
    m11 = (pts[:, 0] * pts[:, -1] * k).sum() if d > 1 else 0.0
    return m0, m2, m11


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("sigma_w", [0.8, 3.0])
def test_normalised_cosine_ntk_integrates_to_one_with_width_sqrt_d_over_sigma_w(d, sigma_w):
    rng = np.random.default_rng(d)
    x0 = rng.normal(size=(1, d))  # kernel as a function of x - x0 (translation invariance)
    sigma = cosine_ntk_width(d, sigma_w)
    assert sigma == pytest.approx(math.sqrt(d) / sigma_w, rel=1e-15)

    def k_of(offsets):
        return cosine_ntk(x0 + offsets, x0, sigma_w=sigma_w, normalized=True)[:, 0]

    m0, m2, m11 = _grid_moments(k_of, d, sigma)
    assert m0 == pytest.approx(1.0, abs=1e-10)
    assert m2 == pytest.approx(sigma**2, rel=1e-10)  # variance d / sigma_w^2 per coordinate
    assert m11 == pytest.approx(0.0, abs=1e-12)

    # adaptive scipy quadrature as a second, independent reference
    lim = 12 * sigma
    if d == 1:
        val, err = integrate.quad(lambda u: k_of(np.array([[u]]))[0], -np.inf, np.inf, epsabs=1e-13)
        var, _ = integrate.quad(lambda u: u * u * k_of(np.array([[u]]))[0], -np.inf, np.inf, epsabs=1e-13)
        assert var == pytest.approx(sigma**2, rel=1e-9)
    elif d == 2:
        val, err = integrate.dblquad(
            lambda v, u: k_of(np.array([[u, v]]))[0], -lim, lim, -lim, lim, epsabs=1e-11
        )
    else:
        # integrate the d-dim kernel on lines: inner 2-D integral by grid, outer by quad
        t = np.linspace(-lim, lim, 161)
        h = t[1] - t[0]
        uv = np.stack([m.ravel() for m in np.meshgrid(t, t, indexing="ij")], axis=1)

        def slab(z):
            pts = np.concatenate([uv, np.full((uv.shape[0], 1), z)], axis=1)
            return k_of(pts).sum() * h * h

        val, err = integrate.quad(slab, -lim, lim, epsabs=1e-12)
    assert val == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("d,sigma_w", [(1, 1.0), (2, 1.0), (3, 5.0)])
def test_papers_amplitude_2_36_does_not_normalise(d, sigma_w):
    a_paper = 2 ** 0.25 * (sigma_w / math.sqrt(2 * math.pi * d)) ** (d / 4)
    sigma = math.sqrt(d) / sigma_w
    m0, _, _ = _grid_moments(
        lambda p: cosine_ntk(p, np.zeros((1, d)), sigma_w=sigma_w, amplitude=a_paper)[:, 0], d, sigma
    )
    assert abs(m0 - 1.0) > 0.05
    # the paper's A is the square root of the correct one: A_paper^2 = A_correct
    assert a_paper**2 == pytest.approx(cosine_normalized_amplitude(d, sigma_w), rel=1e-14)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_normalised_gaussnet_ntk_integrates_to_one(d):
    sigma_w = 2.0
    sigma = math.sqrt(d) / sigma_w
    m0, m2, _ = _grid_moments(
        lambda p: gaussnet_ntk(p, np.zeros((1, d)), sigma_w=sigma_w, normalized=True)[:, 0], d, sigma
    )
    assert m0 == pytest.approx(1.0, abs=1e-10)
    assert m2 == pytest.approx(sigma**2, rel=1e-10)


def test_normalized_rejects_non_integrable_settings():
    x = np.zeros((2, 2))
    with pytest.raises(ValueError):
        cosine_ntk(x, x, sigma_w=1.0, normalized=True, variant="coordinatewise")
    with pytest.raises(ValueError):
        cosine_ntk(x, x, sigma_w=1.0, normalized=True, amplitude=2.0)
    with pytest.raises(ValueError):
        gaussnet_ntk(x, x, sigma_w=1.0, sigma_b=0.1, normalized=True)
    with pytest.raises(ValueError):
        cosine_ntk(x, np.zeros((2, 3)), sigma_w=1.0)
    with pytest.raises(ValueError):
        cosine_ntk(np.zeros(3), np.zeros(3), sigma_w=1.0)


# -------------------------------------------- empirical NTK = J J^T (finite differences)
def _fd_jacobian(f, a, h=0.5):
    """Central differences of f w.r.t. every entry of a (exact up to rounding for linear f)."""
    flat = a.ravel()
    cols = []
    for k in range(flat.size):
        e = np.zeros_like(flat)
        e[k] = h
        cols.append((f((flat + e).reshape(a.shape)) - f((flat - e).reshape(a.shape))) / (2 * h))
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_empirical_cosine_ntk_is_jacobian_gram(variant):
    d, width, sigma_w, amp, seed = 3, 40, 1.7, 1.4, 5
    rng = np.random.default_rng(7)
    x = rng.normal(size=(9, d))
    params = cosine_net_init(d, width, sigma_w=sigma_w, seed=seed, variant=variant)

    def f(a):
        return cosine_net_apply({**params, "a": a}, x, amp, variant=variant)

    jac = _fd_jacobian(f, params["a"])
    emp = cosine_ntk_empirical(x, x, sigma_w=sigma_w, width=width, amplitude=amp, seed=seed, variant=variant)
    np.testing.assert_allclose(emp, jac @ jac.T, rtol=1e-11, atol=1e-12 * np.abs(emp).max())

    # the paper's finite-width formula (2.33), written out literally
    w, b = params["w"], params["b"]
    c = np.cos(x[:, None, :] * w[None, :, :] + b[None, :, None])  # (n, N, d)
    eq233 = amp**2 / width * np.einsum("ikj,lkj->il", c, c)
    if variant == "additive":
        np.testing.assert_allclose(emp, eq233, rtol=1e-12)
    elif variant == "coordinatewise":  # the NTK of (2.32) as written is not (2.33)
        assert np.max(np.abs(emp - eq233)) > 0.2 * np.max(np.abs(emp))


def test_empirical_gaussnet_ntk_is_jacobian_gram():
    d, width, amp, seed = 2, 30, 1.2, 3
    x = np.random.default_rng(8).normal(size=(7, d)) * 0.7
    kw = dict(sigma_w=1.5, sigma_b0=0.4, sigma_b=0.6)
    params = gaussnet_init(d, width, seed=seed, **kw)
    theta = np.concatenate([params["a"], params["beta"][None]])

    def f(th):
        return gaussnet_apply({**params, "a": th[:-1], "beta": th[-1]}, x, amp)

    jac = _fd_jacobian(f, theta)
    emp = gaussnet_ntk_empirical(x, x, width=width, amplitude=amp, seed=seed, **kw)
    np.testing.assert_allclose(emp, jac @ jac.T, rtol=1e-11, atol=1e-12 * np.abs(emp).max())


def test_init_distributions():
    """w ~ N(0, sigma_w^2/d), b ~ U(-pi, pi), a ~ N(0, sigma_a^2) (eq. 2.32), by KS tests."""
    from scipy import stats

    d, sigma_w, sigma_a = 3, 2.5, 0.7
    p = cosine_net_init(d, 4000, sigma_w=sigma_w, sigma_a=sigma_a, seed=11)
    assert p["w"].shape == (4000, d) and p["b"].shape == (4000,) and p["a"].shape == (4000,)
    assert stats.kstest(p["w"].ravel() / (sigma_w / math.sqrt(d)), "norm").pvalue > 1e-3
    assert stats.kstest(p["b"], "uniform", args=(-math.pi, 2 * math.pi)).pvalue > 1e-3
    assert stats.kstest(p["a"] / sigma_a, "norm").pvalue > 1e-3
    g = gaussnet_init(d, 4000, sigma_w=sigma_w, sigma_b0=0.4, sigma_a=sigma_a, seed=12)
    assert stats.kstest(g["w"].ravel() / (sigma_w / math.sqrt(d)), "norm").pvalue > 1e-3
    assert stats.kstest(g["b0"] / 0.4, "norm").pvalue > 1e-3
    # same seed -> same draw; different seed -> different draw
    np.testing.assert_array_equal(cosine_net_init(d, 5, sigma_w=1.0, seed=3)["w"], cosine_net_init(d, 5, sigma_w=1.0, seed=3)["w"])
    assert not np.array_equal(cosine_net_init(d, 5, sigma_w=1.0, seed=3)["w"], cosine_net_init(d, 5, sigma_w=1.0, seed=4)["w"])


def test_cosine_features_match_apply_for_all_variants():
    x = np.random.default_rng(2).normal(size=(4, 2))
    for variant in VARIANTS:
        p = cosine_net_init(2, 11, sigma_w=1.0, sigma_a=0.7, seed=1, variant=variant)
        f = cosine_features(p, x, variant=variant)
        np.testing.assert_allclose(
            cosine_net_apply(p, x, 2.0, variant=variant), 2.0 / math.sqrt(11) * f @ p["a"].ravel()
        )


# ----------------------------------------- empirical -> analytic with O(1/sqrt(N)) error
WIDTHS = (100, 400, 1600, 6400)
N_SEEDS = 64  # RMS over 64 independent draws per width: ~5% noise on the RMS


def _rms_errors(empirical, analytic):
    rms = []
    for n in WIDTHS:
        sq = [np.mean((empirical(n, np.random.SeedSequence([n, s])) - analytic) ** 2) for s in range(N_SEEDS)]
        rms.append(math.sqrt(np.mean(sq)))
    return np.array(rms)


def _check_rate(rms, predicted_const):
    slope = np.polyfit(np.log(WIDTHS), np.log(rms), 1)[0]
    scaled = rms * np.sqrt(WIDTHS)
    assert -0.6 <= slope <= -0.4, slope
    assert scaled.max() / scaled.min() < 1.5, scaled
    # the O(1/sqrt(N)) constant predicted from the per-neuron variance
    assert np.mean(scaled) / predicted_const == pytest.approx(1.0, abs=0.10)
    return slope, scaled


def test_empirical_cosine_ntk_converges_at_inverse_sqrt_width():
    d, sigma_w, amp = 3, 2.0, 1.3
    x = np.random.default_rng(21).normal(size=(30, d)) * 0.7
    analytic = cosine_ntk(x, x, sigma_w=sigma_w, amplitude=amp)
    rms = _rms_errors(
        lambda n, ss: cosine_ntk_empirical(x, x, sigma_w=sigma_w, width=n, amplitude=amp, seed=ss), analytic
    )
    # Var[cos(u+b)cos(v+b)] = 1/4 + exp(-2q)/8 - exp(-q)/4, q = sigma_w^2 |x-x'|^2 / d
    q = sigma_w**2 * _exact_free_sq(x) / d
    var = 0.25 + np.exp(-2 * q) / 8 - np.exp(-q) / 4
    _check_rate(rms, amp**2 * math.sqrt(var.mean()))


def test_empirical_gaussnet_ntk_converges_at_inverse_sqrt_width():
    # Gauss-net neurons are log-normal: the sampling noise of the RMS itself grows like
    # exp(c (sigma_b0^2 + sigma_w^2 |x|^2 / d)), so stay where its higher moments are moderate
    # (with sigma_w=1.5, sigma_b0=0.3, |x|~0.6 the RMS of 16 draws scattered by +-50%).
    d, sigma_w, sigma_b0, amp = 2, 1.0, 0.1, 0.8
    x = np.random.default_rng(22).normal(size=(30, d)) * 0.3
    analytic = gaussnet_ntk(x, x, sigma_w=sigma_w, amplitude=amp)
    rms = _rms_errors(
        lambda n, ss: gaussnet_ntk_empirical(
            x, x, sigma_w=sigma_w, sigma_b0=sigma_b0, width=n, amplitude=amp, seed=ss
        ),
        analytic,
    )
    # Var[h h'] = exp(4 sigma_b0^2 + 4 sigma_w^2 x.x'/d) - exp(-sigma_w^2 |x-x'|^2/d)
    var = np.exp(4 * sigma_b0**2 + 4 * sigma_w**2 * (x @ x.T) / d) - np.exp(-(sigma_w**2) * _exact_free_sq(x) / d)
    _check_rate(rms, amp**2 * math.sqrt(var.mean()))


def _exact_free_sq(x):
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


def test_coordinatewise_empirical_converges_to_its_own_kernel_not_the_gaussian():
    d, sigma_w = 2, 1.5
    x = np.random.default_rng(23).normal(size=(12, d))
    emp = cosine_ntk_empirical(x, x, sigma_w=sigma_w, width=20000, seed=4, variant="coordinatewise")
    own = cosine_ntk(x, x, sigma_w=sigma_w, variant="coordinatewise")
    gauss = cosine_ntk(x, x, sigma_w=sigma_w)
    err_own = np.sqrt(np.mean((emp - own) ** 2))
    err_gauss = np.sqrt(np.mean((emp - gauss) ** 2))
    assert err_own < 0.05 * err_gauss


# ----------------------------------------------------------- Gauss-net NNGP by Monte Carlo
def test_gaussnet_nngp_matches_monte_carlo_over_networks():
    d, width, m = 2, 8, 6000
    kw = dict(sigma_w=1.3, sigma_b0=0.3, sigma_a=0.8, sigma_b=0.5)
    amp = 1.2
    x = np.array([[0.0, 0.0], [0.3, -0.2], [0.8, 0.5], [-0.6, 0.4]])
    f = np.stack([gaussnet_apply(gaussnet_init(d, width, seed=s, **kw), x, amp) for s in range(m)])
    prods = f[:, :, None] * f[:, None, :]
    mc, se = prods.mean(0), prods.std(0, ddof=1) / math.sqrt(m)
    nngp = gaussnet_nngp(x, x, sigma_w=kw["sigma_w"], sigma_b=kw["sigma_b"], sigma_a=kw["sigma_a"], amplitude=amp)
    assert np.all(np.abs(mc - nngp) < 5 * se), (mc - nngp) / se
    # unit second moment of the normalised hidden units (sigma_b0 cancels)
    h = gaussnet_hidden(gaussnet_init(d, 200000, **kw), x)
    np.testing.assert_allclose((h**2).mean(1), 1.0, atol=5 * (h**2).std(1).max() / math.sqrt(200000))


# ---------------------------------------------------------------- symmetry and PSD
def _kernels(x, sigma_w):
    yield cosine_ntk(x, x, sigma_w=sigma_w)
    yield cosine_ntk(x, x, sigma_w=sigma_w, variant="coordinatewise")
    yield cosine_ntk(x, x, sigma_w=sigma_w, variant="additive")
    yield gaussnet_nngp(x, x, sigma_w=sigma_w, sigma_b=0.3, sigma_a=0.7)
    yield gaussnet_ntk(x, x, sigma_w=sigma_w, normalized=True)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**32 - 1),
    d=st.sampled_from([1, 2, 3, 6, 40]),
    n=st.integers(2, 60),
    log_sigma_w=st.floats(-2.0, 2.5),
    near_duplicates=st.booleans(),
)
def test_kernels_symmetric_psd(seed, d, n, log_sigma_w, near_duplicates):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    if near_duplicates:
        x = np.concatenate([x, x + 1e-9 * rng.normal(size=x.shape)])
    for k in _kernels(x, math.exp(log_sigma_w)):
        assert np.all(np.isfinite(k))
        np.testing.assert_allclose(k, k.T, rtol=1e-13, atol=1e-13 * np.abs(k).max())
        ev = np.linalg.eigvalsh(0.5 * (k + k.T))
        assert ev.min() >= -1e-10 * ev.max(), (ev.min(), ev.max())


def test_swapping_arguments_transposes():
    rng = np.random.default_rng(4)
    x1, x2 = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    for variant in VARIANTS:
        np.testing.assert_allclose(
            cosine_ntk(x1, x2, sigma_w=1.1, variant=variant),
            cosine_ntk(x2, x1, sigma_w=1.1, variant=variant).T,
            rtol=1e-14,
        )


def test_dtypes():
    x32 = np.random.default_rng(5).normal(size=(4, 2)).astype(np.float32)
    assert cosine_ntk(x32, x32, sigma_w=1.0).dtype == np.float32
    xi = np.arange(6).reshape(3, 2)
    k = cosine_ntk(xi, xi, sigma_w=1.0)
    assert k.dtype == np.float64
    np.testing.assert_array_equal(np.diag(k), 0.5)
    assert gaussnet_ntk(xi, xi, sigma_w=1.0).dtype == np.float64
