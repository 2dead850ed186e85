"""Finite MLPs (mfarray.networks) and the empirical metric-NTK (2.7) built on them."""

import importlib.util

import numpy as np
import pytest

from mfarray import networks as nw
from mfarray.kernels.empirical import (
    empirical_ntk,
    empirical_ntk_operator,
    empirical_ntk_products,
    empirical_ntk_trace,
    empirical_ntk_upper,
    ntk_matvec,
)

CASES = [
    (widths, act, sb)
    for widths in [(3, 7, 2), (3, 6, 5, 4, 3)]  # depth 1 and 3
    for act in ["relu", "tanh"]
    for sb in [0.0, 0.7]
]


def _setup(widths, act, sb, n=5, seed=0):
    cfg = nw.MLP(widths, act, sigma_w=1.4, sigma_b=sb)
    params = nw.init(cfg, seed)
    x = np.random.default_rng(seed + 100).standard_normal((n, widths[0]))
    return cfg, params, x


def _random_tree(cfg, seed):
    return nw.unflatten(cfg, np.random.default_rng(seed).standard_normal(nw.num_params(cfg)))


def _fd_jacobian(cfg, params, x, eps=1e-6):
    """Central finite-difference Jacobian d f_i(x_n) / d theta_I, shape (n, c, P)."""
    theta = nw.flatten(params)
    cols = []
    for I in range(theta.shape[0]):
        e = np.zeros_like(theta)
        e[I] = eps
        fp = nw.apply(cfg, nw.unflatten(cfg, theta + e), x)
        fm = nw.apply(cfg, nw.unflatten(cfg, theta - e), x)
        cols.append((fp - fm) / (2 * eps))
    return np.stack(cols, axis=-1)


# ------------------------------------------------------------------ networks
def test_config_validation_and_shapes():
    cfg = nw.MLP((10, 64, 64, 9))
    assert cfg.depth == 2 and cfg.n_layers == 3 and cfg.c_out == 9
    assert nw.num_params(cfg) == 10 * 64 + 64 + 64 * 64 + 64 + 64 * 9 + 9
    for bad in [{"widths": (3,)}, {"widths": (3, 0, 1)}, {"widths": (3, 2), "activation": "elu"},
                {"widths": (3, 2), "sigma_w": -1.0}, {"widths": (3, 2), "sigma_b": float("nan")}]:
        with pytest.raises(ValueError):
            nw.MLP(**bad)
    params = nw.init(cfg, 3)
    with pytest.raises(ValueError, match="shape"):
        nw.apply(cfg, params, np.zeros((4, 9)))
    with pytest.raises(ValueError, match="layers"):
        nw.apply(nw.MLP((10, 9)), params, np.zeros((4, 10)))


def test_init_reproducible_and_standard_normal():
    cfg = nw.MLP((4, 300, 300, 2))
    p1, p2, p3 = nw.init(cfg, 5), nw.init(cfg, 5), nw.init(cfg, 6)
    for (W1, b1), (W2, b2), (W3, _) in zip(p1, p2, p3):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)
        assert not np.array_equal(W1, W3)
        assert W1.dtype == np.float64
    W = p1[1][0]
    assert abs(W.mean()) < 0.01 and abs(W.std() - 1) < 0.01


def test_apply_matches_explicit_formula():
    cfg, params, x = _setup((3, 7, 5, 2), "tanh", 0.3)
    (W0, b0), (W1, b1), (W2, b2) = params
    h = np.tanh(1.4 / np.sqrt(3) * x @ W0 + 0.3 * b0)
    h = np.tanh(1.4 / np.sqrt(7) * h @ W1 + 0.3 * b1)
    f = 1.4 / np.sqrt(5) * h @ W2 + 0.3 * b2
    np.testing.assert_allclose(nw.apply(cfg, params, x), f, rtol=1e-14, atol=1e-14)
    relu = nw.MLP((3, 7, 2), "relu")
    p = nw.init(relu, 1)
    g = np.maximum(x @ p[0][0] / np.sqrt(3), 0) @ p[1][0] / np.sqrt(7)
    np.testing.assert_allclose(nw.apply(relu, p, x), g, rtol=1e-14, atol=1e-14)


def test_flatten_unflatten_roundtrip():
    cfg, params, _ = _setup((3, 6, 5, 4, 3), "relu", 0.5)
    v = nw.flatten(params)
    assert v.shape == (nw.num_params(cfg),)
    back = nw.unflatten(cfg, v)
    for (W, b), (W2, b2) in zip(params, back):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    assert np.array_equal(v[:18], params[0][0].reshape(-1))  # W_0 first, row-major
    with pytest.raises(ValueError):
        nw.unflatten(cfg, v[:-1])


@pytest.mark.parametrize("widths,act,sb", CASES)
def test_jvp_matches_finite_differences(widths, act, sb):
    cfg, params, x = _setup(widths, act, sb)
    t = _random_tree(cfg, 1)
    eps = 1e-6
    theta, tv = nw.flatten(params), nw.flatten(t)
    fd = (nw.apply(cfg, nw.unflatten(cfg, theta + eps * tv), x)
          - nw.apply(cfg, nw.unflatten(cfg, theta - eps * tv), x)) / (2 * eps)
    np.testing.assert_allclose(nw.jvp(cfg, params, x, t), fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("widths,act,sb", CASES)
def test_vjp_and_jacobian_match_finite_differences(widths, act, sb):
    cfg, params, x = _setup(widths, act, sb)
    Jfd = _fd_jacobian(cfg, params, x)
    u = np.random.default_rng(2).standard_normal((x.shape[0], cfg.c_out))
    g = nw.flatten(nw.vjp(cfg, params, x, u))
    np.testing.assert_allclose(g, np.einsum("nc,ncp->p", u, Jfd), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(nw.jacobian(cfg, params, x), Jfd, rtol=1e-6, atol=1e-7)
    if sb == 0.0:  # bias gradients vanish, but the biases are still parameters
        assert np.all(g[cfg.widths[0] * cfg.widths[1]:][:cfg.widths[1]] == 0)


@pytest.mark.parametrize("widths,act,sb", CASES[::3])
def test_jvp_vjp_adjoint(widths, act, sb):
    cfg, params, x = _setup(widths, act, sb, n=8)
    t = _random_tree(cfg, 3)
    u = np.random.default_rng(4).standard_normal((8, cfg.c_out))
    lhs = np.sum(nw.jvp(cfg, params, x, t) * u)
    rhs = nw.tree_vdot(t, nw.vjp(cfg, params, x, u))
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + 1)


def test_identity_activation_is_linear_in_x():
    cfg = nw.MLP((3, 5, 4, 2), "identity", sigma_b=0.0)
    p = nw.init(cfg, 0)
    x = np.random.default_rng(0).standard_normal((4, 3))
    np.testing.assert_allclose(nw.apply(cfg, p, 2 * x), 2 * nw.apply(cfg, p, x), rtol=1e-13)


# ------------------------------------------------------------------ empirical NTK
@pytest.mark.parametrize("widths,act,sb", [((3, 6, 5, 4, 3), "tanh", 0.7),
                                           ((3, 7, 3), "relu", 0.0),
                                           ((3, 3), "relu", 0.5)])
def test_empirical_ntk_equals_jjt_and_fd(widths, act, sb):
    cfg, params, x1 = _setup(widths, act, sb, n=5)
    x2 = np.random.default_rng(9).standard_normal((4, widths[0]))
    K = empirical_ntk(cfg, params, x1, x2, block_rows=2)
    assert K.shape == (5, 4, 3, 3)
    J1, J2 = nw.jacobian(cfg, params, x1), nw.jacobian(cfg, params, x2)
    np.testing.assert_allclose(K, np.einsum("aip,bkp->abik", J1, J2), rtol=1e-12, atol=1e-12)
    F1, F2 = _fd_jacobian(cfg, params, x1), _fd_jacobian(cfg, params, x2)
    np.testing.assert_allclose(K, np.einsum("aip,bkp->abik", F1, F2), rtol=1e-6, atol=1e-6)
    off = K[:, :, ~np.eye(3, dtype=bool)]
    if len(widths) > 2:  # component mixing: off-diagonal c-blocks are nonzero
        assert np.abs(off).max() > 1e-2 * np.abs(K).max()
    else:  # linear model: Theta_ik = (s^2 x.x' + sigma_b^2) delta_ik
        assert np.all(off == 0)
        G = 1.4 ** 2 / 3 * x1 @ x2.T + sb ** 2
        np.testing.assert_allclose(K[:, :, 1, 1], G, rtol=1e-13)


def test_empirical_ntk_blocks_defaults_and_swap():
    cfg, params, x = _setup((3, 6, 5, 4), "relu", 0.3, n=11)
    y = np.random.default_rng(5).standard_normal((7, 3))
    ref = empirical_ntk(cfg, params, x, y, block_rows=1)
    for br in [3, 11, 100, None]:
        np.testing.assert_allclose(empirical_ntk(cfg, params, x, y, block_rows=br), ref,
                                   rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(empirical_ntk(cfg, params, y, x), ref.transpose(1, 0, 3, 2),
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(empirical_ntk(cfg, params, x), empirical_ntk(cfg, params, x, x))


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_empirical_ntk_symmetric_psd(act):
    cfg = nw.MLP((4, 16, 16, 3), act, sigma_w=1.2, sigma_b=0.4)
    params = nw.init(cfg, 2)
    x = np.random.default_rng(0).standard_normal((40, 4))
    n, c = 40, 3
    M = empirical_ntk(cfg, params, x).transpose(0, 2, 1, 3).reshape(n * c, n * c)
    np.testing.assert_allclose(M, M.T, rtol=1e-13, atol=1e-13 * np.abs(M).max())
    ev = np.linalg.eigvalsh(M)
    assert ev.min() >= -1e-10 * ev.max()
    # rank <= P: 120 = n c > P only if the net is small; here P > 120, so full rank expected
    assert ev.min() > 0 or nw.num_params(cfg) < n * c


def test_ntk_matvec_and_operator():
    cfg, params, x_in = _setup((3, 6, 5, 4), "tanh", 0.5, n=9)
    x_out = np.random.default_rng(7).standard_normal((6, 3))
    v = np.random.default_rng(8).standard_normal((9, 4))
    K = empirical_ntk(cfg, params, x_out, x_in)
    np.testing.assert_allclose(ntk_matvec(cfg, params, x_out, x_in, v),
                               np.einsum("abik,bk->ai", K, v), rtol=1e-12, atol=1e-12)
    op = empirical_ntk_operator(cfg, params, x_in)
    M = empirical_ntk(cfg, params, x_in).transpose(0, 2, 1, 3).reshape(36, 36)
    np.testing.assert_allclose(op.matvec(v.reshape(-1)), M @ v.reshape(-1), rtol=1e-12, atol=1e-12)
    V = np.random.default_rng(9).standard_normal((36, 2))
    np.testing.assert_allclose(op.matmat(V), M @ V, rtol=1e-12, atol=1e-12)


def test_empirical_ntk_trace():
    cfg, params, x = _setup((3, 6, 5, 4), "relu", 0.5, n=6)
    y = np.random.default_rng(3).standard_normal((5, 3))
    K = empirical_ntk(cfg, params, x, y)
    tr = np.einsum("abii->ab", K)
    np.testing.assert_allclose(empirical_ntk_trace(cfg, params, x, y, normalize=False), tr,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(empirical_ntk_trace(cfg, params, x, y), tr / 4, rtol=1e-12,
                               atol=1e-12)


# ------------------------------------------------------------------ wide-network limit
_HAS_RELU = importlib.util.find_spec("mfarray.kernels.relu") is not None


@pytest.mark.skipif(not _HAS_RELU, reason="mfarray.kernels.relu (closed-form ReLU NTK) absent")
def test_wide_relu_network_approaches_infinite_width_ntk():
    relu = pytest.importorskip("mfarray.kernels.relu")
    if not hasattr(relu, "relu_ntk"):
        pytest.skip("relu_ntk not available")
    depth, sw, sb, width = 2, 1.5, 0.3, 2048
    x = np.random.default_rng(0).standard_normal((12, 5))
    ref = np.asarray(relu.relu_ntk(x, x, depth=depth, sigma_w=sw, sigma_b=sb))
    # c = 4 output rows: Theta_ik -> delta_ik Theta_bar; fluctuations ~ 1/sqrt(width)
    # (measured: ~9%, 3%, 1.5% of max|Theta_bar| at widths 256, 1024, 4096).
    cfg = nw.MLP((5,) + (width,) * depth + (4,), "relu", sigma_w=sw, sigma_b=sb)
    Ks = [empirical_ntk(cfg, nw.init(cfg, seed), x) for seed in (0, 1)]
    scale = np.abs(ref).max()
    diag_mean = sum(np.einsum("abii->ab", K) for K in Ks) / 8
    assert np.abs(diag_mean - ref).max() < 0.06 * scale
    assert max(np.abs(K[:, :, 0, 1]).max() for K in Ks) < 0.06 * scale
    # a narrow network is visibly further from the limit
    small = nw.MLP((5, 16, 16, 4), "relu", sigma_w=sw, sigma_b=sb)
    Ks = np.einsum("abii->ab", empirical_ntk(small, nw.init(small, 0), x)) / 4
    assert np.abs(Ks - ref).max() > np.abs(diag_mean - ref).max()


def test_empirical_ntk_threads_and_generic_path(monkeypatch):
    import mfarray.kernels.empirical as emp

    cfg, params, x = _setup((3, 6, 5, 4), "tanh", 0.3, n=13)
    for method in ("fused", "array"):
        ref = empirical_ntk(cfg, params, x, block_rows=2, n_threads=1, method=method)
        np.testing.assert_array_equal(empirical_ntk(cfg, params, x, block_rows=2, n_threads=3, method=method), ref)
    # the array-API fallback (no ``out=`` arguments) used for namespaces other than NumPy/CuPy
    monkeypatch.setattr(emp, "_raw_module", lambda xp: None)
    np.testing.assert_allclose(empirical_ntk(cfg, params, x, block_rows=5, method="array"), ref, rtol=1e-14,
                               atol=1e-14)
    with pytest.raises(ValueError, match="method"):
        empirical_ntk(cfg, params, x, method="jax")


# ------------------------------------------------------------------ symmetric kernels: upper blocks, streamed sums
SYMMETRIC_CASES = [((3, 4), "relu", 0.5),  # no hidden layer: delta_ik (Gram + sigma_b^2)
                   ((3, 7, 2), "relu", 0.0),  # one hidden layer: each c x c block symmetric
                   ((3, 6, 5, 4, 3), "tanh", 0.7)]  # component mixing: Theta_ik(x, x') != Theta_ki(x, x')


def _jjt(cfg, params, x):
    J = nw.jacobian(cfg, params, x)
    return np.einsum("aip,bkp->abik", J, J)


@pytest.mark.parametrize("method", ["fused", "array"])
@pytest.mark.parametrize("widths,act,sb", SYMMETRIC_CASES)
def test_symmetric_path_equals_general_path(widths, act, sb, method):
    """Upper row blocks mirrored by Theta_ik(x', x) = Theta_ki(x, x') (half the GEMMs) give the numbers
    of the general path, which computes every block; ragged blocks, a block of one row, one block."""
    cfg, params, x = _setup(widths, act, sb, n=23)
    general = empirical_ntk(cfg, params, x, x.copy(), block_rows=5, method=method)  # another array: general
    np.testing.assert_allclose(general, _jjt(cfg, params, x), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(empirical_ntk(cfg, params, x, symmetric=False, block_rows=5, method=method),
                                  general)
    scale = np.abs(general).max()
    for rows in (1, 5, 23, None):
        for threads in (1, 3):
            sym = empirical_ntk(cfg, params, x, block_rows=rows, n_threads=threads, method=method)
            np.testing.assert_allclose(sym, general, rtol=1e-13, atol=1e-13 * scale)
    if len(widths) > 3:  # the mirror must transpose the c x c blocks too
        assert np.abs(general - general.transpose(0, 1, 3, 2)).max() > 1e-3 * scale
    with pytest.raises(ValueError, match="symmetric"):
        empirical_ntk(cfg, params, x, x.copy(), symmetric=True)


def test_fused_and_array_paths_agree_on_rectangular_kernels():
    cfg, params, x = _setup((3, 6, 5, 4, 3), "relu", 0.4, n=150)  # more than one COLS tile of columns
    y = np.random.default_rng(5).standard_normal((140, 3))
    fused = empirical_ntk(cfg, params, x, y, method="fused")
    array = empirical_ntk(cfg, params, x, y, method="array")
    np.testing.assert_allclose(fused, array, rtol=1e-13, atol=1e-13 * np.abs(array).max())
    np.testing.assert_allclose(fused[::37, ::29], _jjt(cfg, params, np.concatenate([x, y]))[:150:37, 150::29],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("widths,act,sb", SYMMETRIC_CASES)
def test_upper_blocks_and_streamed_products_equal_the_dense_sums(widths, act, sb):
    """empirical_ntk_upper: the layout of its blocks, the whole kernel and |Theta|^2; empirical_ntk_products
    (never forming Theta): <Theta_0, Theta>, |Theta|^2, |Theta - Theta_0|^2 of the whole (n, n, c, c) arrays."""
    cfg, p0, x = _setup(widths, act, sb, n=29)
    p1 = nw.unflatten(cfg, nw.flatten(p0) + 0.3 * nw.flatten(_random_tree(cfg, 7)))
    K0, K1 = _jjt(cfg, p0, x), _jjt(cfg, p1, x)
    c = widths[-1]
    up = empirical_ntk_upper(cfg, p0, x, block_rows=4)
    assert (up.n, up.c, up.rows, len(up.blocks), up.dtype) == (29, c, 4, 8, np.float64)
    for j, blk in enumerate(up.blocks):
        r0, r1 = 4 * j, min(29, 4 * j + 4)
        assert blk.shape == (r1 - r0, c, (29 - r0) * c)
        np.testing.assert_allclose(blk.reshape(r1 - r0, c, 29 - r0, c).transpose(0, 2, 1, 3), K0[r0:r1, r0:],
                                   rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(up.dense(), K0, rtol=1e-12, atol=1e-12)
    assert up.norm2 == pytest.approx(np.vdot(K0, K0), rel=1e-13)
    got = empirical_ntk_products(cfg, p1, x, up)
    want = (np.vdot(K0, K1), np.vdot(K1, K1), np.vdot(K1 - K0, K1 - K0))
    if len(widths) == 2:  # no hidden layer: the kernel does not depend on the parameters
        assert got[2] == 0.0 and got[0] == pytest.approx(want[0], rel=1e-13)
    else:
        assert want[2] > 1e-3 * want[1]  # the kernel moved
        np.testing.assert_allclose(got, want, rtol=1e-12)
    # the same sums for any thread count (block order), and for another blocking
    assert empirical_ntk_products(cfg, p1, x, up, n_threads=1) == empirical_ntk_products(cfg, p1, x, up,
                                                                                         n_threads=3)
    np.testing.assert_allclose(empirical_ntk_products(cfg, p1, x, empirical_ntk_upper(cfg, p0, x)), want,
                               rtol=1e-12)
    with pytest.raises(ValueError, match="points"):
        empirical_ntk_products(cfg, p1, x[:-1], up)


def test_float32_upper_blocks():
    """dtype=float32: float32 layer products and blocks, sums still float64: the products within float32
    rounding of the float64 ones (and not equal to them: float32 did run)."""
    cfg, p0, x = _setup((3, 16, 16, 3), "tanh", 0.3, n=40)
    p1 = nw.unflatten(cfg, nw.flatten(p0) + 0.05 * nw.flatten(_random_tree(cfg, 2)))
    up64 = empirical_ntk_upper(cfg, p0, x, block_rows=6)
    up32 = empirical_ntk_upper(cfg, p0, x, block_rows=6, dtype="float32")
    assert up32.dtype == np.float32 and all(b.dtype == np.float32 for b in up32.blocks)
    np.testing.assert_allclose(up32.dense(), up64.dense(), rtol=0, atol=1e-5 * np.abs(up64.dense()).max())
    got, want = empirical_ntk_products(cfg, p1, x, up32), empirical_ntk_products(cfg, p1, x, up64)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got != want
    with pytest.raises(ValueError, match="dtype"):
        empirical_ntk_upper(cfg, p0, x, dtype="float16")


def test_mlp_refuses_fractional_widths_and_non_numbers():
    """A width of 2.5 was truncated to 2, a sigma_w of '1' gave a bare 'must be real number'."""
    for widths in [(10, 2.5, 9), (10, "16", 9), (10, True, 9), "109", 5, (10, None)]:
        with pytest.raises((TypeError, ValueError), match="widths"):
            nw.MLP(widths)
    for name in ("sigma_w", "sigma_b"):
        for bad in ("1", None, 1j, True):
            with pytest.raises(TypeError, match=name):
                nw.MLP((10, 9), **{name: bad})
    cfg = nw.MLP((np.int64(10), 4, np.int32(9)), sigma_w=np.float32(1.5), sigma_b=np.int64(0))
    assert cfg.widths == (10, 4, 9) and all(type(w) is int for w in cfg.widths)
    assert cfg.sigma_w == 1.5 and type(cfg.sigma_w) is float


@pytest.mark.parametrize("method", ["fused", "array"])
def test_empirical_ntk_refuses_what_the_scalar_kernels_refuse(method):
    """NaN inputs gave NaN entries, complex inputs lost their imaginary part, flat parameters (which
    network_flow takes) an IndexError."""
    from mfarray.kernels import NonFiniteKernelError

    cfg, params, x = _setup((4, 6, 3), "relu", 0.5, n=7)
    bad = x.copy()
    bad[2, 1] = np.nan
    with pytest.raises(NonFiniteKernelError, match="x1 has NaN"):
        empirical_ntk(cfg, params, bad, method=method)
    with pytest.raises(NonFiniteKernelError, match="x2 has NaN"):
        empirical_ntk(cfg, params, x, bad, method=method)
    with pytest.raises(TypeError, match="x1 is complex"):
        empirical_ntk(cfg, params, x + 1j * x, method=method)
    with pytest.raises(TypeError, match="x2 is complex"):
        empirical_ntk(cfg, params, x, x + 1j, method=method)
    flat = nw.flatten(params)
    np.testing.assert_array_equal(empirical_ntk(cfg, flat, x, method=method), empirical_ntk(cfg, params, x, method=method))
    inf = flat.copy()
    inf[5] = np.inf
    for p in (inf, nw.unflatten(cfg, inf)):
        with pytest.raises(ValueError, match="params .*NaN or inf"):
            empirical_ntk(cfg, p, x, method=method)
    with pytest.raises(ValueError, match="params"):
        empirical_ntk(cfg, flat[:-1], x, method=method)


def test_empirical_ntk_trace_and_upper_blocks_refuse_bad_inputs():
    from mfarray.kernels import NonFiniteKernelError

    cfg, params, x = _setup((4, 6, 3), "tanh", 0.5, n=7)
    bad = x.copy()
    bad[0, 0] = np.inf
    ref = empirical_ntk_upper(cfg, params, x)
    for fn in (lambda y: empirical_ntk_trace(cfg, params, y), lambda y: empirical_ntk_upper(cfg, params, y),
               lambda y: empirical_ntk_products(cfg, params, y, ref)):
        with pytest.raises(NonFiniteKernelError, match="NaN or inf"):
            fn(bad)
        with pytest.raises(TypeError, match="complex"):
            fn(x + 1j)
    flat = nw.flatten(params)
    np.testing.assert_array_equal(empirical_ntk_trace(cfg, flat, x), empirical_ntk_trace(cfg, params, x))
    assert empirical_ntk_products(cfg, flat, x, ref)[2] == 0.0


def test_an_overflowing_network_is_refused_not_passed_on():
    """Finite inputs and parameters whose kernel overflows (sigma_w = 1e200) gave inf/NaN entries."""
    from mfarray.kernels.checks import NonFiniteKernelError

    cfg = nw.MLP((4, 8, 4), "relu", sigma_w=1e200)
    x = np.random.default_rng(0).normal(size=(5, 4))
    for method in ("fused", "array"):
        with np.errstate(all="ignore"), pytest.raises(NonFiniteKernelError, match="empirical_ntk"):
            empirical_ntk(cfg, nw.init(cfg, 0), x, method=method)
