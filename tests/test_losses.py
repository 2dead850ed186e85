"""Losses and their Hermitian gradients, checked by finite differences of the total loss."""

import numpy as np
import pytest

import mfarray as mf
from mfarray import losses


def _hermitian(rng, N, k, scale=1.0):
    A = rng.standard_normal((N, k, k)) + 1j * rng.standard_normal((N, k, k))
    return scale * (A + np.conj(np.swapaxes(A, 1, 2))) / 2


@pytest.fixture(scope="module", params=["quintic", "cubic"])
def setup(request):
    X = mf.fermat_quintic() if request.param == "quintic" else mf.cubic_curve()
    ds = mf.sample_points(X, 200, seed=0).compute()
    rng = np.random.default_rng(1)
    k = X.dim
    B = rng.standard_normal((200, k, k)) + 1j * rng.standard_normal((200, k, k))
    g = ds.g_fs.values + 0.02 * B @ np.conj(np.swapaxes(B, 1, 2))  # another PD metric
    data = losses.make_loss_data(ds)
    return ds, g, data, rng


def _directional_fd(loss, g, data, H, eps=1e-6):
    return (losses.total(loss, g + eps * H, data) - losses.total(loss, g - eps * H, data)) / (2 * eps)


def _directional_grad(loss, g, data, H):
    G = loss.gradient(g, data)
    return np.sum(np.real(np.conj(G) * H)) / g.shape[0]


@pytest.mark.parametrize("make", [losses.sigma_loss, losses.sigma_loss_dynamic])
def test_sigma_gradients_match_finite_differences(setup, make):
    ds, g, data, rng = setup
    loss = make()
    for _ in range(3):
        H = _hermitian(rng, *g.shape[:2], 1e-2) * (np.abs(1 - mf.eta(ds, g).values) > 1e-3)[:, None, None]
        fd = _directional_fd(loss, g, data, H)
        an = _directional_grad(loss, g, data, H)
        assert an == pytest.approx(fd, rel=1e-6, abs=1e-12)
    G = loss.gradient(g, data)
    assert np.allclose(G, np.conj(np.swapaxes(G, 1, 2)))


def test_mse_gradient_matches_finite_differences(setup):
    ds, g, data, rng = setup
    data = losses.LossData(data.omega2, data.weight, data.kappa, target=ds.g_fs.values)
    H = _hermitian(rng, *g.shape[:2])
    loss = losses.mse_loss()
    assert _directional_grad(loss, g, data, H) == pytest.approx(_directional_fd(loss, g, data, H), rel=1e-7)


def test_det_derivative_is_det_times_inverse(setup):
    _, g, _, rng = setup
    H = _hermitian(rng, *g.shape[:2], 1e-3)
    eps = 1e-6
    fd = (np.linalg.det(g + eps * H).real - np.linalg.det(g - eps * H).real) / (2 * eps)
    an = np.real(np.sum(np.conj(np.linalg.det(g).real[:, None, None] * np.linalg.inv(g)) * H, axis=(1, 2)))
    assert np.allclose(an, fd, rtol=1e-6)


def test_totals_equal_the_sigma_measure(setup):
    ds, g, data, _ = setup
    assert losses.total(losses.sigma_loss_dynamic(), g, data) == pytest.approx(mf.sigma_measure(ds, g), rel=1e-12)
    fixed = losses.make_loss_data(ds, g)
    assert losses.total(losses.sigma_loss(), g, fixed) == pytest.approx(mf.sigma_measure(ds, g), rel=1e-12)
    # dynamic kappa: invariant under g -> c g (volume is absorbed), fixed kappa is not
    c = 1.7 ** (1 / g.shape[-1])
    assert losses.total(losses.sigma_loss_dynamic(), c * g, data) == pytest.approx(
        losses.total(losses.sigma_loss_dynamic(), g, data), rel=1e-12)
    assert losses.total(losses.sigma_loss(), c * g, fixed) != pytest.approx(losses.total(losses.sigma_loss(), g, fixed))


def test_real_flattening_is_an_isometry(setup):
    _, g, _, rng = setup
    k = g.shape[-1]
    r = losses.hermitian_to_real(g)
    assert r.shape == (g.shape[0], k * k) and r.dtype == np.float64
    assert np.allclose(losses.real_to_hermitian(r, k), g)
    H = _hermitian(rng, g.shape[0], k)
    assert np.allclose(np.sum(losses.hermitian_to_real(H) * r, axis=1),
                       np.real(np.sum(np.conj(H) * g, axis=(1, 2))))


def test_bad_metrics_are_refused(setup):
    ds, g, data, _ = setup
    loss = losses.sigma_loss()
    bad = g.copy()
    bad[3, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        loss.gradient(bad, data)
    with pytest.raises(ValueError, match="positive definite"):
        loss.gradient(-g, data)
    with pytest.raises(ValueError, match="shape"):
        loss.value(g[:, 0], data)
    with pytest.raises(ValueError, match="points"):
        loss.value(g[:10], data)
