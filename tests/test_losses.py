"""Losses and their Hermitian gradients (mfarray.losses), checked by finite differences of the TOTAL loss.

Convention under test: dL = (1/N) sum_x Re tr(G(x)^dagger dg(x)) with L = losses.total (the mean).
"""

import numpy as np
import pytest

import mfarray as mf
from mfarray import losses
from mfarray.geometry.fubini_study import hermitian_det

N = 200


def _hermitian(rng, n, k, scale=1.0):
    A = rng.standard_normal((n, k, k)) + 1j * rng.standard_normal((n, k, k))
    return scale * (A + np.conj(np.swapaxes(A, 1, 2))) / 2


def _inner(A, B):
    """sum_x Re tr(A(x)^dagger B(x))."""
    return float(np.sum(np.real(np.conj(A) * B)))


@pytest.fixture(scope="module", params=["quintic", "cubic"])
def setup(request):
    X = mf.fermat_quintic() if request.param == "quintic" else mf.cubic_curve()
    ds = mf.sample_points(X, N, seed=0).compute()
    rng = np.random.default_rng(1)
    k = X.dim
    assert ds.g_fs.shape == (N, k, k)
    B = rng.standard_normal((N, k, k)) + 1j * rng.standard_normal((N, k, k))
    g = ds.g_fs.values + 0.02 * B @ np.conj(np.swapaxes(B, 1, 2))  # another Hermitian PD metric
    data = losses.make_loss_data(ds)
    return ds, g, data


def _fd(loss, g, data, H, eps):
    return (losses.total(loss, g + eps * H, data) - losses.total(loss, g - eps * H, data)) / (2 * eps)


SIGMAS = [losses.sigma_loss, losses.sigma_loss_dynamic, losses.sigma_squared_loss]


@pytest.mark.parametrize("make", SIGMAS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("which", ["g_fs", "perturbed"])
def test_sigma_gradients_match_finite_differences(setup, make, which):
    ds, g, data = setup
    g = ds.g_fs.values if which == "g_fs" else g
    loss = make()
    # keep away from the |1 - eta| kinks: every eta must move far less than its distance to 1
    assert np.abs(1 - mf.eta(ds, g).values).min() > 1e-5  # eta with the dynamic kappa
    fixed_eta = hermitian_det(g) / (data.kappa * data.omega2)
    assert np.abs(1 - fixed_eta).min() > 1e-5
    rng = np.random.default_rng(2)
    for _ in range(3):
        H = _hermitian(rng, *g.shape[:2], 1e-2)
        fd = _fd(loss, g, data, H, 1e-6)
        an = _inner(loss.gradient(g, data), H) / N
        assert an == pytest.approx(fd, rel=1e-6, abs=1e-10)
        assert abs(an) > 1e-6  # a real check, not 0 == 0


def test_dynamic_gradient_differs_from_fixed_and_is_scale_invariant(setup):
    ds, g, data = setup
    dyn = losses.sigma_loss_dynamic().gradient(g, data)
    fixed = losses.sigma_loss().gradient(g, losses.make_loss_data(ds, g))  # same kappa, no kappa term
    assert not np.allclose(dyn, fixed)  # the global term matters
    # L(c g) = L(g) => the derivative along H = g vanishes
    assert abs(_inner(dyn, g)) < 1e-10 * np.sum(np.abs(dyn))
    assert abs(_inner(fixed, g)) > 1e-3


@pytest.mark.parametrize("make", SIGMAS + [losses.mse_loss], ids=lambda f: f.__name__)
def test_gradients_are_hermitian(setup, make):
    ds, g, data = setup
    data = losses.make_loss_data(ds, target=ds.g_fs.values)
    G = make().gradient(g, data)
    assert G.shape == g.shape and G.dtype == np.complex128
    assert np.array_equal(G, np.conj(np.swapaxes(G, 1, 2)))
    assert np.all(np.isfinite(G))


@pytest.mark.parametrize("via", ["argument", "data"])
def test_mse_gradient_matches_finite_differences(setup, via):
    ds, g, data = setup
    t = ds.g_fs.values
    if via == "argument":
        loss = losses.mse_loss(t)
    else:
        loss, data = losses.mse_loss(), losses.make_loss_data(ds, target=t)
    rng = np.random.default_rng(3)
    H = _hermitian(rng, *g.shape[:2])
    an = _inner(loss.gradient(g, data), H) / N
    assert an == pytest.approx(_fd(loss, g, data, H, 1e-5), rel=1e-7)
    # value: w ||g - t||_F^2 with the trace inner product
    assert losses.total(loss, g, data) == pytest.approx(np.mean(ds.weight.values * np.sum(np.abs(g - t) ** 2, axis=(1, 2))))
    assert losses.total(loss, t, data) == 0.0


def test_det_gradient_is_det_times_inverse(setup):
    _, g, _ = setup
    rng = np.random.default_rng(4)
    H = _hermitian(rng, *g.shape[:2], 0.1)
    eps = 1e-5
    fd = (hermitian_det(g + eps * H) - hermitian_det(g - eps * H)) / (2 * eps)
    D = losses.det_gradient(g)
    an = np.real(np.sum(np.conj(D) * H, axis=(1, 2)))
    assert np.allclose(an, fd, rtol=1e-7, atol=1e-12)
    assert np.allclose(D, np.linalg.det(g).real[:, None, None] * np.linalg.inv(g))
    # also against a generic LU determinant
    fd_lu = (np.linalg.det(g + eps * H).real - np.linalg.det(g - eps * H).real) / (2 * eps)
    assert np.allclose(an, fd_lu, rtol=1e-6, atol=1e-12)


def test_totals_equal_the_sigma_measure(setup):
    ds, g, data = setup
    sigma = mf.sigma_measure(ds, g)
    assert losses.total(losses.sigma_loss_dynamic(), g, data) == pytest.approx(sigma, rel=1e-12)
    assert losses.total(losses.sigma_loss(), g, losses.make_loss_data(ds, g)) == pytest.approx(sigma, rel=1e-12)
    assert losses.total(losses.sigma_loss(), ds.g_fs.values, data) == pytest.approx(mf.sigma_measure(ds), rel=1e-12)
    assert float(losses.current_kappa(g, data)) == pytest.approx(mf.kappa(ds, g), rel=1e-12)
    # fixed kappa is that of g_FS, not of g: a different number
    assert losses.total(losses.sigma_loss(), g, data) != pytest.approx(sigma, rel=1e-3)
    # on a subset the weights are used as given: total = mean(w) sigma; zero-weight points are passive
    sub = ds.isel(point=slice(0, 37))
    wbar = sub.weight.values.mean()
    assert abs(wbar - 1) > 1e-3
    assert losses.total(losses.sigma_loss_dynamic(), g[:37], losses.make_loss_data(sub)) == pytest.approx(
        wbar * mf.sigma_measure(sub, g[:37]), rel=1e-12)
    w0 = data.weight * (np.arange(N) < 37)
    passive = losses.LossData(data.omega2, w0, losses.make_loss_data(sub).kappa)
    sub_data = losses.make_loss_data(sub)
    for loss in SIGMAS:
        assert losses.total(loss(), g, passive) * N == pytest.approx(losses.total(loss(), g[:37], sub_data) * 37, rel=1e-12)
        G = loss().gradient(g, passive)
        assert np.allclose(G[:37], loss().gradient(g[:37], sub_data), rtol=1e-12, atol=0) and np.all(G[37:] == 0)


def test_scale_invariance(setup):
    ds, g, data = setup
    dyn, fixed = losses.sigma_loss_dynamic(), losses.sigma_loss()
    fdata = losses.make_loss_data(ds, g)
    c = 1.7
    assert losses.total(dyn, c * g, data) == pytest.approx(losses.total(dyn, g, data), rel=1e-12)
    assert np.allclose(dyn.gradient(c * g, data), dyn.gradient(g, data) / c)
    assert losses.total(fixed, c * g, fdata) != pytest.approx(losses.total(fixed, g, fdata), rel=1e-3)


def test_sign_zero_at_the_kink():
    g = np.eye(2, dtype=complex)[None].repeat(4, axis=0)
    data = losses.LossData(omega2=np.ones(4), weight=np.ones(4), kappa=1.0)  # eta = 1 exactly
    assert np.all(losses.sigma_loss().value(g, data) == 0)
    assert np.all(losses.sigma_loss().gradient(g, data) == 0)
    assert np.all(losses.sigma_loss_dynamic().gradient(g, data) == 0)


def test_make_loss_data(setup):
    ds, g, data = setup
    assert data.weight.shape == (N,) and data.omega2.shape == (N,)
    assert np.array_equal(data.weight, ds.weight.values)  # as given
    assert np.mean(data.weight) == pytest.approx(1.0, rel=1e-14)
    assert data.kappa == pytest.approx(mf.kappa(ds), rel=1e-12)
    assert losses.make_loss_data(ds, g).kappa == pytest.approx(mf.kappa(ds, g), rel=1e-12)
    assert data.target is None
    with pytest.raises(ValueError, match="g0"):
        losses.make_loss_data(ds, g[:5])
    with pytest.raises(ValueError, match="g0 must be positive definite"):
        losses.make_loss_data(ds, -g)


def test_make_loss_data_from_a_lazy_point_set():
    lazy = mf.sample_points(mf.cubic_curve(), 30, seed=5)
    data = losses.make_loss_data(lazy)
    assert isinstance(data.weight, np.ndarray)
    assert losses.total(losses.sigma_loss(), lazy.g_fs.values, data) == pytest.approx(mf.sigma_measure(lazy), rel=1e-12)


# --------------------------------------------------------------------------- real flattening
def test_real_flattening_round_trip_and_isometry(setup):
    _, g, _ = setup
    k = g.shape[-1]
    rng = np.random.default_rng(5)
    r = losses.hermitian_to_real(g)
    assert r.shape == (N, k * k) and r.dtype == np.float64
    back = losses.real_to_hermitian(r, k)
    assert np.allclose(back, g, rtol=0, atol=1e-15)
    assert np.array_equal(back, np.conj(np.swapaxes(back, 1, 2)))  # exactly Hermitian
    s = rng.standard_normal((N, k * k))
    assert np.allclose(losses.hermitian_to_real(losses.real_to_hermitian(s, k)), s)
    H = _hermitian(rng, N, k)
    assert np.allclose(np.sum(losses.hermitian_to_real(H) * r, axis=1), np.real(np.sum(np.conj(H) * g, axis=(1, 2))))
    # the basis is orthonormal and spans the Hermitian matrices
    B = losses.real_to_hermitian(np.eye(k * k), k)
    gram = np.real(np.einsum("iab,jab->ij", np.conj(B), B))
    assert np.allclose(gram, np.eye(k * k))
    # adjointness for non-Hermitian input: <R(s), M> = s . r(M)
    M = rng.standard_normal((N, k, k)) + 1j * rng.standard_normal((N, k, k))
    assert _inner(losses.real_to_hermitian(s, k), M) == pytest.approx(np.sum(s * losses.hermitian_to_real(M)))
    # leading dimensions are free
    assert losses.hermitian_to_real(g[:6].reshape(2, 3, k, k)).shape == (2, 3, k * k)


def test_real_coordinates_explicit_form():
    g = np.array([[[2.0, 1 + 3j], [1 - 3j, 5.0]]])
    r = losses.hermitian_to_real(g)
    assert np.allclose(r, [[2.0, 5.0, np.sqrt(2) * 1, np.sqrt(2) * 3]])


@pytest.mark.parametrize("make", [losses.sigma_loss, losses.sigma_loss_dynamic], ids=lambda f: f.__name__)
def test_gradient_in_real_coordinates_is_the_flattened_gradient(setup, make):
    ds, g, data = setup
    k = g.shape[-1]
    loss = make()
    r0 = losses.hermitian_to_real(g)
    expected = losses.hermitian_to_real(loss.gradient(g, data))  # d(N L)/dr
    rng = np.random.default_rng(6)
    eps = 1e-6
    for x in rng.choice(N, 3, replace=False):
        for j in range(k * k):
            rp, rm = r0.copy(), r0.copy()
            rp[x, j] += eps
            rm[x, j] -= eps
            fd = N * (losses.total(loss, losses.real_to_hermitian(rp, k), data)
                      - losses.total(loss, losses.real_to_hermitian(rm, k), data)) / (2 * eps)
            assert fd == pytest.approx(expected[x, j], rel=1e-5, abs=1e-9)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make", SIGMAS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("method", ["value", "gradient"])
def test_bad_metrics_are_refused(setup, make, method):
    ds, g, data = setup
    k = g.shape[-1]
    f = getattr(make(), method)
    bad = g.copy()
    bad[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="g has non-finite"):
        f(bad, data)
    bad[3, 0, 0] = np.inf
    with pytest.raises(ValueError, match="g has non-finite"):
        f(bad, data)
    with pytest.raises(ValueError, match="g must be positive definite"):
        f(-g, data)
    with pytest.raises(ValueError, match=r"g must have shape \(N, k, k\)"):
        f(g[:, 0], data)
    with pytest.raises(ValueError, match="g has 10 points"):
        f(g[:10], data)
    with pytest.raises(ValueError, match="data must be a LossData"):
        f(g, (data.omega2, data.weight, data.kappa))
    if k > 1:
        # det > 0 but not positive definite (two negative eigenvalues)
        neg = np.broadcast_to(np.diag([-1.0, -1.0] + [1.0] * (k - 2)).astype(complex), g.shape).copy()
        assert np.all(hermitian_det(neg) > 0)
        with pytest.raises(ValueError, match="g must be positive definite"):
            f(neg, data)
        skew = g.copy()
        skew[:, 0, 1] += 0.1
        with pytest.raises(ValueError, match="g must be Hermitian"):
            f(skew, data)
    else:
        with pytest.raises(ValueError, match="g must be Hermitian"):
            f(g + 0.1j, data)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_overflow_is_refused_not_passed_on():
    g = np.eye(3, dtype=complex)[None].repeat(2, axis=0) * 1e120  # det = 1e360 overflows
    data = losses.LossData(omega2=np.ones(2), weight=np.ones(2), kappa=1.0)
    for loss in (losses.sigma_loss(), losses.sigma_loss_dynamic()):
        with pytest.raises(ValueError, match="positive definite|not finite"):
            loss.value(g, data)
        with pytest.raises(ValueError, match="positive definite|not finite"):
            loss.gradient(g, data)


def test_bad_loss_data_is_refused(setup):
    ds, g, data = setup
    w, o = data.weight, data.omega2
    with pytest.raises(ValueError, match="omega2 has 5 points"):
        losses.LossData(o[:5], w, 1.0)
    with pytest.raises(ValueError, match=r"weight must have shape \(N,\)"):
        losses.LossData(o, w[:, None], 1.0)
    with pytest.raises(ValueError, match="omega2 .* must be > 0"):
        losses.LossData(np.where(np.arange(N) == 0, 0.0, o), w, 1.0)
    with pytest.raises(ValueError, match="weight has non-finite"):
        losses.LossData(o, np.where(np.arange(N) == 0, np.nan, w), 1.0)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        losses.LossData(o, -w, 1.0)
    for kappa in (0.0, -1.0, np.nan, np.inf, "a"):
        with pytest.raises(ValueError, match="kappa"):
            losses.LossData(o, w, kappa)
    with pytest.raises(ValueError, match="target"):
        losses.LossData(o, w, 1.0, target=g[:3])
    with pytest.raises(ValueError, match="mse_loss needs a target"):
        losses.mse_loss().value(g, data)
    with pytest.raises(ValueError, match="target has shape"):
        losses.mse_loss(g[:3]).value(g, data)
    with pytest.raises(ValueError, match="target has non-finite"):
        losses.mse_loss(np.full_like(g, np.nan))


def test_bad_real_flattening_input():
    with pytest.raises(ValueError, match=r"r must have shape \(\.\.\., 9\)"):
        losses.real_to_hermitian(np.zeros((4, 8)), 3)
    with pytest.raises(ValueError, match="r must be real"):
        losses.real_to_hermitian(np.zeros((4, 9), complex), 3)
    with pytest.raises(ValueError, match="r has non-finite"):
        losses.real_to_hermitian(np.full((4, 1), np.nan), 1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        losses.real_to_hermitian(np.zeros((4, 1)), 0)
    with pytest.raises(ValueError, match=r"g must have shape \(\.\.\., k, k\)"):
        losses.hermitian_to_real(np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="g has non-finite"):
        losses.hermitian_to_real(np.full((4, 2, 2), np.inf))


def test_user_defined_loss_plugs_in(setup):
    """A user loss l = w tr(g) with dl/dg = w 1: total and gradient follow the convention."""
    _, g, data = setup
    k = g.shape[-1]
    trace = losses.PointwiseLoss(
        "trace", lambda g, d: d.weight * np.real(np.trace(g, axis1=1, axis2=2)),
        lambda g, d: d.weight[:, None, None] * np.eye(k))
    assert isinstance(trace, losses.Loss)
    H = _hermitian(np.random.default_rng(7), N, k)
    assert _inner(trace.gradient(g, data), H) / N == pytest.approx(_fd(trace, g, data, H, 1e-3), rel=1e-9)
    bad = losses.PointwiseLoss("bad", lambda g, d: np.zeros(3), lambda g, d: g)
    with pytest.raises(ValueError, match="returned shape"):
        losses.total(bad, g, data)


def test_losses_accept_ill_conditioned_positive_metrics():
    """Condition number 1e10 (chart metrics far from their patch): positive definite for the
    losses as for the flow guard; cofactor minors call a third of these indefinite."""
    from mfarray.flows import positive_definite

    rng = np.random.default_rng(0)
    n = 500
    q, _ = np.linalg.qr(rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3)))
    lam = np.stack([np.full(n, 1e8), 10 ** rng.uniform(-2, 0, n), 10 ** rng.uniform(-2, 0, n)], 1)
    g = np.einsum("nab,nb,ncb->nac", q, lam, q.conj())
    g = 0.5 * (g + np.conj(np.swapaxes(g, 1, 2)))
    data = losses.LossData(omega2=np.ones(n), weight=np.ones(n), kappa=1.0)
    assert positive_definite(g).all()
    eta = losses.sigma_squared_loss().value(g, data)  # w (1 - det g)^2 with det = prod(lam)
    assert np.allclose(1 + np.sqrt(eta), lam.prod(axis=1), rtol=1e-5)  # det g >= 1e4 > 1


def test_a_user_loss_with_complex_values_or_a_nan_gradient_is_refused_by_name():
    """A purely imaginary loss totalled 0.0 (float() kept the real part) and a flow ran on it; a NaN
    gradient surfaced as 'g has non-finite entries' deep inside."""
    rng = np.random.default_rng(0)
    g = 0.1 * _hermitian(rng, 6, 3) + 3 * np.eye(3)  # well inside the positive cone
    data = losses.loss_data(np.ones(6), np.ones(6), g)
    imaginary = losses.PointwiseLoss("imaginary", lambda g, d: 1j * np.ones(g.shape[0]), lambda g, d: g)
    with pytest.raises(TypeError, match="imaginary.*complex"):
        losses.total(imaginary, g, data)
    nan_grad = losses.PointwiseLoss("nan_grad", lambda g, d: np.ones(g.shape[0]), lambda g, d: np.full(g.shape, np.nan))
    with pytest.raises(ValueError, match="gradient of loss 'nan_grad'"):
        losses.gradient(nan_grad, mf.linalg.metrics(g), data)
