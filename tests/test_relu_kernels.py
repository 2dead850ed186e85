"""Tests for mfarray.kernels.relu (closed-form infinite-width ReLU NNGP / NTK).

Independent references used here:
  * a 50-digit mpmath evaluation of the textbook recursion (arccos form);
  * 1-d adaptive quadrature of the bivariate-Gaussian ReLU expectations
    (checks the Cho & Saul arc-cosine formulas themselves);
  * Monte Carlo over finite, NTK-parameterised ReLU MLPs written here in NumPy
    with a hand-written Jacobian, itself checked against finite differences.
"""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, special

from mfarray.kernels import relu as relu_mod
from mfarray.kernels.relu import (
    relu_kernels,
    relu_kernels_diag,
    relu_nngp,
    relu_nngp_diag,
    relu_ntk,
    relu_ntk_diag,
)

TABLE1 = dict(sigma_w=5.716, sigma_b=80.52)  # paper, Table 1 (ReLU column)
HYPERS = [
    dict(depth=1, sigma_w=1.0, sigma_b=0.0),
    dict(depth=1, **TABLE1),
    dict(depth=3, sigma_w=1.3, sigma_b=0.4),
    dict(depth=3, **TABLE1),
    dict(depth=5, sigma_w=1.5, sigma_b=0.05),
]


# --------------------------------------------------------------------------
# 50-digit reference
# --------------------------------------------------------------------------
def mp_kernels(x, y, depth, sigma_w, sigma_b, dps=50):
    """Textbook recursion (arccos form) in mpmath; returns (nngp, ntk, scale)."""
    with mp.workdps(dps):
        x = [mp.mpf(float(v)) for v in x]
        y = [mp.mpf(float(v)) for v in y]
        d = len(x)
        a = mp.mpf(sigma_w) ** 2
        b = mp.mpf(sigma_b) ** 2
        k11 = a * mp.fsum(v * v for v in x) / d + b
        k22 = a * mp.fsum(v * v for v in y) / d + b
        k12 = a * mp.fsum(u * v for u, v in zip(x, y)) / d + b
        t = k12
        for _ in range(depth):
            s = mp.sqrt(k11 * k22)
            cth = min(max(k12 / s, mp.mpf(-1)), mp.mpf(1))
            th = mp.acos(cth)
            kt = s / (2 * mp.pi) * (mp.sin(th) + (mp.pi - th) * mp.cos(th))
            kd = (mp.pi - th) / (2 * mp.pi)
            k12 = a * kt + b
            t = k12 + a * kd * t
            k11 = a * k11 / 2 + b
            k22 = a * k22 / 2 + b
        return float(k12), float(t), float(mp.sqrt(k11 * k22))


def _pairs(seed=1, d=6):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4, d))
    return [
        (X[0], X[1]),
        (X[2], X[3]),
        (X[0], X[0].copy()),                                 # identical
        (X[1], X[1] + 1e-6 * rng.normal(size=d)),            # |x - x'| ~ 1e-6
        (X[2], X[2] + 1e-8 * rng.normal(size=d)),
        (X[3], X[3] * (1 + 1e-7)),                           # (almost) parallel
        (X[1], X[1] + 1e-3 * rng.normal(size=d)),
        (X[2], X[2] + 1e-2 * rng.normal(size=d)),
        (3.0 * X[0], 1e-3 * X[3]),                           # very different norms
    ]


@pytest.mark.parametrize("hp", HYPERS, ids=lambda h: f"L{h['depth']}-w{h['sigma_w']}-b{h['sigma_b']}")
def test_matches_mpmath_50_digits(hp):
    worst = 0.0
    for x, y in _pairs():
        K, T = relu_kernels(x[None], y[None], **hp)
        k_ref, t_ref, _ = mp_kernels(x, y, **hp)
        worst = max(worst, abs(K[0, 0] / k_ref - 1), abs(T[0, 0] / t_ref - 1))
        # each single-output function agrees with the joint one
        assert relu_ntk(x[None], y[None], **hp)[0, 0] == T[0, 0]
        assert relu_nngp(x[None], y[None], **hp)[0, 0] == K[0, 0]
    # brief asks for <= 1e-12; measured ~7e-16.
    assert worst <= 1e-13, worst


def test_naive_angle_would_fail_the_mpmath_check():
    """Disabling the cancellation-free input layer (refine_tol=0) must visibly
    lose digits on near-coincident pairs: shows the mpmath test can fail."""
    hp = dict(depth=1, **TABLE1)
    worst = 0.0
    for x, y in _pairs()[3:6]:
        T = relu_ntk(x[None], y[None], refine_tol=0.0, **hp)
        t_ref = mp_kernels(x, y, **hp)[1]
        worst = max(worst, abs(T[0, 0] / t_ref - 1))
    assert worst > 1e-11


def test_antipodal_inputs_absolute_error():
    # sigma_b = 0, x' ~ -x: theta ~ pi, the kernel vanishes like (pi - theta)^3;
    # error is absolute in units of sqrt(K11 K22).
    rng = np.random.default_rng(5)
    x = rng.normal(size=5)
    for y in [-x, -x + 1e-7 * rng.normal(size=5), -x + 1e-3 * rng.normal(size=5)]:
        for depth in (1, 2, 4):
            K, T = relu_kernels(x[None], y[None], depth=depth, sigma_w=1.2, sigma_b=0.0)
            k_ref, t_ref, scale = mp_kernels(x, y, depth, 1.2, 0.0)
            assert abs(K[0, 0] - k_ref) <= 1e-14 * scale
            assert abs(T[0, 0] - t_ref) <= 1e-14 * scale * (depth + 1)


# --------------------------------------------------------------------------
# arc-cosine formulas vs quadrature (independent of Cho & Saul)
# --------------------------------------------------------------------------
def _relu_expectations_quad(k11, k12, k22):
    """E[relu(u)relu(v)], E[1(u>0)1(v>0)] for (u,v) ~ N(0, [[k11,k12],[k12,k22]])."""
    s1, s2 = math.sqrt(k11), math.sqrt(k22)
    rho = k12 / (s1 * s2)
    sig = s2 * math.sqrt(max(1 - rho * rho, 0.0))

    def e_relu(z):  # E[relu(v) | u = s1 z]
        mu = rho * s2 * z
        return mu * special.ndtr(mu / sig) + sig * math.exp(-0.5 * (mu / sig) ** 2) / math.sqrt(2 * math.pi)

    def p_pos(z):
        return special.ndtr(rho * s2 * z / sig)

    phi = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    kt = integrate.quad(lambda z: phi(z) * s1 * z * e_relu(z), 0, np.inf, epsabs=0, epsrel=1e-13)[0]
    kd = integrate.quad(lambda z: phi(z) * p_pos(z), 0, np.inf, epsabs=0, epsrel=1e-13)[0]
    return kt, kd


@pytest.mark.parametrize("sw,sb", [(1.0, 0.0), (1.7, 0.9), (TABLE1["sigma_w"], TABLE1["sigma_b"])])
def test_depth1_matches_quadrature(sw, sb):
    rng = np.random.default_rng(11)
    X = rng.normal(size=(4, 3))
    K, T = relu_kernels(X, X, depth=1, sigma_w=sw, sigma_b=sb)
    a, b, d = sw * sw, sb * sb, 3
    for i in range(4):
        for j in range(4):
            if i == j:
                continue
            k0 = lambda u, v: a * (u @ v) / d + b  # noqa: E731
            kt, kd = _relu_expectations_quad(k0(X[i], X[i]), k0(X[i], X[j]), k0(X[j], X[j]))
            k1 = a * kt + b
            assert K[i, j] == pytest.approx(k1, rel=1e-10)
            assert T[i, j] == pytest.approx(k1 + a * kd * k0(X[i], X[j]), rel=1e-10)


# --------------------------------------------------------------------------
# structural properties
# --------------------------------------------------------------------------
@pytest.mark.parametrize("hp", HYPERS, ids=lambda h: f"L{h['depth']}-w{h['sigma_w']}-b{h['sigma_b']}")
def test_diagonal_matches_diag_functions(hp):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(257, 7)) * rng.uniform(0.1, 3.0, size=(257, 1))
    K, T = relu_kernels(x, x, **hp)
    np.testing.assert_allclose(np.diag(T), relu_ntk_diag(x, **hp), rtol=4e-16 * (hp["depth"] + 2), atol=0)
    np.testing.assert_allclose(np.diag(K), relu_nngp_diag(x, **hp), rtol=4e-16 * (hp["depth"] + 2), atol=0)
    kd, td = relu_kernels_diag(x, **hp)
    assert kd.shape == td.shape == (257,)
    np.testing.assert_array_equal(td, relu_ntk_diag(x, **hp))


def test_duplicate_points_give_identical_rows():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4))
    x[17] = x[3]
    T = relu_ntk(x, x, depth=3, **TABLE1)
    np.testing.assert_allclose(T[17], T[3], rtol=1e-15, atol=0)
    assert T[3, 17] == pytest.approx(T[3, 3], rel=1e-15)


@pytest.mark.parametrize("hp", HYPERS, ids=lambda h: f"L{h['depth']}-w{h['sigma_w']}-b{h['sigma_b']}")
def test_symmetric_psd_finite(hp):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 6))
    x[:20] = x[20:40] + 1e-7 * rng.normal(size=(20, 6))  # near-duplicates
    K, T = relu_kernels(x, x, **hp)
    for M in (K, T):
        assert np.all(np.isfinite(M))
        # error bound is relative to the scale sqrt(K_ii K_jj) for entries that
        # are small because theta is large (see module docstring)
        scale = np.sqrt(np.outer(np.diag(M), np.diag(M)))
        assert np.all(np.abs(M - M.T) <= 1e-14 * np.abs(M) + 1e-15 * scale)
        ev = np.linalg.eigvalsh(0.5 * (M + M.T))
        assert ev[0] >= -1e-10 * ev[-1], (ev[0], ev[-1])


def test_table1_large_inputs_finite_and_sane():
    rng = np.random.default_rng(6)
    x, y = 1e3 * rng.normal(size=(40, 10)), rng.normal(size=(30, 10))
    K, T = relu_kernels(x, y, depth=1, **TABLE1)
    assert np.all(np.isfinite(K)) and np.all(np.isfinite(T))
    assert np.all(K > 0)  # K^1 = a E[relu relu] + b > 0
    for i, j in [(0, 0), (3, 7), (39, 29)]:
        k_ref, t_ref, _ = mp_kernels(x[i], y[j], 1, **TABLE1)
        assert K[i, j] == pytest.approx(k_ref, rel=1e-13)
        assert T[i, j] == pytest.approx(t_ref, rel=1e-13)
    np.testing.assert_allclose(np.diag(relu_nngp(x, x, depth=1, **TABLE1)),
                               relu_nngp_diag(x, depth=1, **TABLE1), rtol=1e-15)


def test_blocking_and_threads_do_not_change_result():
    rng = np.random.default_rng(7)
    x1, x2 = rng.normal(size=(103, 5)), rng.normal(size=(61, 5))
    ref = relu_ntk(x1, x2, depth=3, sigma_w=1.4, sigma_b=0.3, block_rows=103, n_threads=1)
    for br, nt in [(1, 1), (7, 2), (50, 3), (None, None)]:
        out = relu_ntk(x1, x2, depth=3, sigma_w=1.4, sigma_b=0.3, block_rows=br, n_threads=nt)
        np.testing.assert_allclose(out, ref, rtol=1e-14, atol=0)


def test_generic_array_api_path_matches(monkeypatch):
    """The namespace-generic path (used for non-NumPy/CuPy arrays) agrees."""
    rng = np.random.default_rng(8)
    x1, x2 = rng.normal(size=(40, 4)), rng.normal(size=(30, 4))
    x2[:5] = x1[:5] + 1e-9
    x2[5] = x1[5]
    x2[6] = -x1[6]
    for hp in HYPERS:
        ref = relu_kernels(x1, x2, **hp)
        orig = relu_mod._Ops.__init__

        def generic_init(self, xp, _orig=orig):
            _orig(self, xp)
            self.m = None

        monkeypatch.setattr(relu_mod._Ops, "__init__", generic_init)
        out = relu_kernels(x1, x2, **hp)
        monkeypatch.setattr(relu_mod._Ops, "__init__", orig)
        for r, o in zip(ref, out):
            np.testing.assert_allclose(o, r, rtol=1e-14, atol=0)


def test_depth0_is_linear_kernel_and_shapes():
    rng = np.random.default_rng(9)
    x1, x2 = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    K, T = relu_kernels(x1, x2, depth=0, sigma_w=2.0, sigma_b=0.5)
    np.testing.assert_allclose(K, 4.0 * x1 @ x2.T / 3 + 0.25, rtol=1e-14)
    np.testing.assert_array_equal(K, T)
    assert relu_ntk(x1, x2).shape == (5, 4) and relu_ntk(x1, x2).dtype == np.float64
    assert relu_ntk(x1.astype(np.int64), x2).dtype == np.float64
    with pytest.raises(ValueError):
        relu_ntk(x1, rng.normal(size=(4, 2)))
    with pytest.raises(ValueError):
        relu_ntk(x1, x2, depth=-1)


@settings(max_examples=40, deadline=None)
@given(
    lam=st.floats(1e-3, 1e3),
    mu=st.floats(1e-3, 1e3),
    depth=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_positive_homogeneity_without_bias(lam, mu, depth, seed):
    # With sigma_b = 0 every layer is positively homogeneous:
    # K(lam x, mu x') = lam mu K(x, x'), same for Theta.
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(3, 4)), rng.normal(size=(2, 4))
    K, T = relu_kernels(x, y, depth=depth, sigma_w=1.3)
    Ks, Ts = relu_kernels(lam * x, mu * y, depth=depth, sigma_w=1.3)
    np.testing.assert_allclose(Ks, lam * mu * K, rtol=1e-12, atol=1e-14 * lam * mu * np.abs(K).max())
    np.testing.assert_allclose(Ts, lam * mu * T, rtol=1e-12, atol=1e-14 * lam * mu * np.abs(T).max())


# --------------------------------------------------------------------------
# finite NTK-parameterised ReLU MLP (reference for Monte Carlo)
# --------------------------------------------------------------------------
def init_mlp(rng, widths):
    """Standard-normal weights/biases; widths = [d, n_1, ..., n_L, 1]."""
    return [(rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out))
            for n_in, n_out in zip(widths[:-1], widths[1:])]


def mlp_forward(params, x, sw, sb):
    """Returns output f (n,), layer inputs hs[l] (n, n_l) and pre-activations zs."""
    h, hs, zs = x, [], []
    for W, bvec in params:
        hs.append(h)
        z = (sw / math.sqrt(W.shape[1])) * (h @ W.T) + sb * bvec
        zs.append(z)
        h = np.maximum(z, 0.0)
    return zs[-1][:, 0], hs, zs


def mlp_backward(params, zs, sw):
    """delta_l = d f / d z^l for every layer l (list of (n, n_l))."""
    deltas = [np.ones_like(zs[-1])]
    for l in range(len(params) - 1, 0, -1):
        W = params[l][0]
        deltas.insert(0, (deltas[0] @ W) * (sw / math.sqrt(W.shape[1])) * (zs[l - 1] > 0))
    return deltas


def empirical_ntk(params, x1, x2, sw, sb):
    """sum_l <delta_l(x1), delta_l(x2)> * (sw^2/n_{l-1} <h(x1), h(x2)> + sb^2)."""
    _, h1, z1 = mlp_forward(params, x1, sw, sb)
    _, h2, z2 = mlp_forward(params, x2, sw, sb)
    d1, d2 = mlp_backward(params, z1, sw), mlp_backward(params, z2, sw)
    out = 0.0
    for l, (W, _) in enumerate(params):
        out = out + (d1[l] @ d2[l].T) * ((sw * sw / W.shape[1]) * (h1[l] @ h2[l].T) + sb * sb)
    return out


def mlp_jacobian(params, x, sw, sb):
    """Per-point gradient of f w.r.t. all (W, b), flattened: (n, P)."""
    _, hs, zs = mlp_forward(params, x, sw, sb)
    ds = mlp_backward(params, zs, sw)
    blocks = []
    for l, (W, _) in enumerate(params):
        dW = ds[l][:, :, None] * hs[l][:, None, :] * (sw / math.sqrt(W.shape[1]))
        blocks += [dW.reshape(len(x), -1), sb * ds[l]]
    return np.concatenate(blocks, axis=1)


def test_hand_written_jacobian_vs_finite_differences():
    rng = np.random.default_rng(10)
    sw, sb = 1.4, 0.7
    params = init_mlp(rng, [3, 5, 4, 6, 1])
    x = rng.normal(size=(4, 3))
    J = mlp_jacobian(params, x, sw, sb)
    flat = np.concatenate([np.concatenate([W.ravel(), bv]) for W, bv in params])
    assert J.shape == (4, flat.size)

    def unflat(v):
        out, k = [], 0
        for W, bv in params:
            nW = W.size
            out.append((v[k:k + nW].reshape(W.shape), v[k + nW:k + nW + bv.size]))
            k += nW + bv.size
        return out

    h = 1e-6
    Jfd = np.empty_like(J)
    for p in range(flat.size):
        e = np.zeros_like(flat)
        e[p] = h
        fp = mlp_forward(unflat(flat + e), x, sw, sb)[0]
        fm = mlp_forward(unflat(flat - e), x, sw, sb)[0]
        Jfd[:, p] = (fp - fm) / (2 * h)
    np.testing.assert_allclose(J, Jfd, rtol=1e-6, atol=1e-8 * np.abs(J).max())
    # the layer-structured empirical NTK equals J J^T
    np.testing.assert_allclose(empirical_ntk(params, x, x, sw, sb), J @ J.T, rtol=1e-12)


def _mc_points():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(4, 3))
    x[3] = x[0] + 0.05 * rng.normal(size=3)  # a close pair
    return x


def _assert_within(mean, stderr, exact, floor, nsig=5.0):
    iu = np.triu_indices(mean.shape[0])
    diff = np.abs(mean - exact)[iu]
    bound = (nsig * stderr + floor)[iu]
    assert np.all(diff < bound), np.max(diff / bound)
    # the check is informative: the statistical bound is small vs the kernel scale
    assert np.all(bound < 0.15 * np.abs(exact).max())


MC_HYPERS = [(1, 1.0, 0.0), (1, TABLE1["sigma_w"], TABLE1["sigma_b"]), (3, 1.3, 0.4), (3, 1.0, 0.0)]


@pytest.mark.slow
@pytest.mark.parametrize("depth,sw,sb", MC_HYPERS)
def test_mc_nngp_mean_of_f_f(depth, sw, sb):
    """Mean of f(x) f(x') over many random finite networks vs closed form."""
    x = _mc_points()
    width, n_nets = (128, 20000) if depth == 1 else (128, 4000)
    rng = np.random.default_rng(100 + depth)
    samples = np.empty((n_nets, 4, 4))
    for m in range(n_nets):
        f = mlp_forward(init_mlp(rng, [3] + [width] * depth + [1]), x, sw, sb)[0]
        samples[m] = np.outer(f, f)
    mean = samples.mean(0)
    stderr = samples.std(0, ddof=1) / math.sqrt(n_nets)
    exact = relu_nngp(x, x, depth=depth, sigma_w=sw, sigma_b=sb)
    # depth 1 is exact at any width; deeper nets have an O(depth/width) bias
    floor = (depth - 1) / width * np.abs(exact)
    _assert_within(mean, stderr, exact, floor)


@pytest.mark.slow
@pytest.mark.parametrize("depth,sw,sb", MC_HYPERS)
def test_mc_nngp_wide_conditional(depth, sw, sb):
    """Sharper NNGP check: E[f f' | last hidden layer] (exact Gaussian average
    over the read-out layer) averaged over wide networks."""
    x = _mc_points()
    width, n_nets = (4096, 500) if depth == 1 else (1024, 64)
    rng = np.random.default_rng(200 + depth)
    samples = np.empty((n_nets, 4, 4))
    for m in range(n_nets):
        params = init_mlp(rng, [3] + [width] * depth + [1])
        hs = mlp_forward(params, x, sw, sb)[1]
        samples[m] = sw * sw / width * (hs[-1] @ hs[-1].T) + sb * sb
    mean = samples.mean(0)
    stderr = samples.std(0, ddof=1) / math.sqrt(n_nets)
    exact = relu_nngp(x, x, depth=depth, sigma_w=sw, sigma_b=sb)
    floor = (depth - 1) / width * np.abs(exact)
    _assert_within(mean, stderr, exact, floor)


@pytest.mark.slow
@pytest.mark.parametrize("depth,sw,sb", MC_HYPERS)
def test_mc_empirical_ntk_wide_networks(depth, sw, sb):
    x = _mc_points()
    width, n_nets = (4000, 500) if depth == 1 else (2000, 20)
    rng = np.random.default_rng(300 + depth)
    samples = np.stack([
        empirical_ntk(init_mlp(rng, [3] + [width] * depth + [1]), x, x, sw, sb)
        for _ in range(n_nets)
    ])
    mean = samples.mean(0)
    stderr = samples.std(0, ddof=1) / math.sqrt(n_nets)
    exact = relu_ntk(x, x, depth=depth, sigma_w=sw, sigma_b=sb)
    floor = (depth - 1) / width * np.abs(exact)
    _assert_within(mean, stderr, exact, floor)
