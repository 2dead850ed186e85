"""The evolving-kernel network flow (2.8) and the linearised network (2.10)."""

import numpy as np
import pytest

import mfarray as mf
from mfarray import losses
from mfarray import networks as nw
from mfarray.flows import FlowError, kernel_flow, positive_definite
from mfarray.flows.evolving import (RealBasisOperator, metric_ntk_operator, network_flow,
                                    network_inputs, network_metric, parameter_gradient)
from mfarray.kernels import DenseOperator, empirical_ntk

CFG = nw.MLP((10, 32, 32, 9), "relu")


@pytest.fixture(scope="module")
def quintic_chart():
    """Fermat-quintic points of one chart (rejection sampling, §3.1)."""
    return mf.select_chart(mf.sample_points(mf.fermat_quintic(), 12_000, seed=3).compute())


@pytest.fixture(scope="module")
def split(quintic_chart):
    return quintic_chart.isel(point=slice(0, 60)), quintic_chart.isel(point=slice(60, 100))


@pytest.fixture(scope="module")
def params0():
    return nw.init(CFG, 0)


@pytest.fixture(scope="module")
def small_params():
    """Output layer scaled by 0.1: g_FS + R(f_theta0) is positive definite (uncentred model)."""
    p = nw.init(CFG, 1)
    return p[:-1] + ((0.1 * p[-1][0], p[-1][1]),)


def _target(ds, seed=0):
    rng = np.random.default_rng(seed)
    n = ds.sizes["point"]
    A = rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))
    return ds.g_fs.values + 0.05 * A @ np.conj(np.swapaxes(A, 1, 2))


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_uncentred_random_network_is_not_positive_definite(split, params0):
    """Why center=True exists: an N(0,1) network's outputs swamp g_FS."""
    train, _ = split
    assert not np.all(positive_definite(network_metric(CFG, params0, train)))
    with pytest.raises(ValueError, match="positive definite"):
        network_flow(train, CFG, params0, steps=1, lr=1e-3)


@pytest.mark.parametrize("case", ["centred_sigma_squared", "uncentred_mse"])
def test_linearised_network_equals_frozen_empirical_ntk_flow(split, params0, small_params, case):
    """Gradient descent of the linear model (2.10) = kernel_flow with Theta^L = Theta(theta0) (2.11)."""
    train, _ = split
    if case == "centred_sigma_squared":
        p, kw, loss, lr, target = params0, dict(center=True), "sigma_squared", 2e-3, None
        g0 = train.g_fs.values
    else:
        p, kw, loss, lr, target = small_params, {}, "mse", 1e-3, _target(train)
        g0 = network_metric(CFG, p, train)
    steps = 6
    r = network_flow(train, CFG, p, steps=steps, lr=lr, loss=loss, linearized=True, target=target, **kw)
    # The mixing kernel (n, n, c, c) read in the orthonormal Hermitian basis.
    x = network_inputs(train)
    theta = empirical_ntk(CFG, p, x, x)
    op = RealBasisOperator(DenseOperator(theta), 3)
    ref = kernel_flow(train, op, steps=steps, lr=lr, loss=loss, g0=g0, target=target)
    assert r.rejected.sum() == 0 and ref.rejected.sum() == 0
    assert np.allclose(r.g_train_initial.values, g0, rtol=0, atol=1e-14)
    err = _rel(r.g_train.values, ref.g_train.values)
    assert err < 1e-10, err
    assert np.allclose(r.loss.values, ref.loss.values, rtol=1e-10, atol=0)
    assert np.allclose(r.sigma_train.values, ref.sigma_train.values, rtol=1e-10, atol=0)
    assert r.loss.values[-1] < 0.97 * r.loss.values[0]  # the flow moved
    # The helper builds the same operator.
    G = losses.sigma_squared_loss().gradient(train.g_fs.values, losses.make_loss_data(train))
    assert np.allclose(metric_ntk_operator(CFG, p, train).matvec(G), op.matvec(G), rtol=0, atol=1e-12)
    # ... while the nonlinear network departs from the linear model at second order.
    nl = network_flow(train, CFG, p, steps=steps, lr=lr, loss=loss, target=target, **kw)
    assert _rel(nl.g_train.values, ref.g_train.values) > 1e3 * err


@pytest.mark.parametrize("activation, lrs", [
    ("tanh", (4e-4, 2e-4, 1e-4)),
    # ReLU nets are only piecewise smooth: steps must be short enough that no pre-activation
    # crosses zero (larger ones give ratios far from 4).
    ("relu", (2e-5, 1e-5, 5e-6)),
])
def test_first_nonlinear_step_matches_the_linearised_one_to_order_lr_squared(split, activation, lrs):
    train, _ = split
    cfg = nw.MLP((10, 32, 32, 9), activation)
    params = nw.init(cfg, 0)
    diffs = []
    for lr in lrs:
        a = network_flow(train, cfg, params, steps=1, lr=lr, center=True)
        b = network_flow(train, cfg, params, steps=1, lr=lr, center=True, linearized=True)
        # same gradient at theta0 -> same parameters after one step
        assert np.allclose(a.theta.values, b.theta.values, rtol=0, atol=1e-15)
        moved = np.abs(a.g_train.values - a.g_train_initial.values).max()
        diffs.append(np.abs(a.g_train.values - b.g_train.values).max())
        assert diffs[-1] < 1e-2 * moved
    assert diffs[-1] > 1e-11  # well above rounding
    ratios = [diffs[0] / diffs[1], diffs[1] / diffs[2]]
    assert all(3 < q < 5 for q in ratios), (diffs, ratios)


@pytest.mark.parametrize("loss", ["sigma_squared", "sigma"])
def test_parameter_gradient_matches_finite_differences(split, small_params, loss):
    train, _ = split
    data = losses.make_loss_data(train, network_metric(CFG, small_params, train))
    loss_fn = mf.flows.frozen.resolve_loss(loss)
    n = train.sizes["point"]
    theta0 = nw.flatten(small_params)

    def total(theta):  # N * L: what the flow descends
        return n * losses.total(loss_fn, network_metric(CFG, theta, train), data)

    grad = parameter_gradient(CFG, small_params, train, loss=loss, data=data)
    rng = np.random.default_rng(5)
    eps = 1e-6
    for _ in range(4):
        v = rng.standard_normal(theta0.shape)
        v /= np.linalg.norm(v)
        fd = (total(theta0 + eps * v) - total(theta0 - eps * v)) / (2 * eps)
        assert abs(fd - grad @ v) < 1e-6 * np.linalg.norm(grad), (fd, grad @ v)
    # and it is the direction the flow steps along
    r = network_flow(train, CFG, small_params, steps=1, lr=1e-4, loss=loss)
    assert np.allclose(r.theta.values, theta0 - 1e-4 * grad, rtol=0, atol=1e-14)


@pytest.mark.parametrize("linearized", [False, True])
def test_huge_steps_are_shortened_and_metrics_stay_positive(split, params0, linearized):
    train, test = split
    r = network_flow(train, CFG, params0, steps=4, lr=10.0, center=True, linearized=linearized, test=test)
    assert r.rejected.values.sum() > 0
    assert r.lr.values[1] < 10.0
    assert np.all(positive_definite(r.g_train.values))
    assert np.all(np.isfinite(r.loss.values)) and np.all(np.isfinite(r.sigma_train.values))
    with pytest.raises(FlowError):
        network_flow(train, CFG, params0, steps=1, lr=10.0, center=True, linearized=linearized,
                     max_halvings=0)


def test_test_predictions_are_the_network_at_the_final_parameters(split, params0, small_params):
    train, test = split
    # uncentred network
    r = network_flow(train, CFG, small_params, steps=5, lr=5e-4, test=test, record_every=2)
    theta = r.theta.values
    assert not np.allclose(theta, r.theta_initial.values)
    assert np.allclose(r.g_test.values, network_metric(CFG, theta, test), rtol=0, atol=1e-14)
    assert np.allclose(r.g_train.values, network_metric(CFG, theta, train), rtol=0, atol=1e-14)
    assert list(r.step.values) == [0, 2, 4, 5]
    assert np.isclose(r.sigma_test.values[-1], mf.sigma_measure(test, r.g_test.values), rtol=1e-12)
    # centred network
    r = network_flow(train, CFG, params0, steps=3, lr=5e-4, test=test, center=True)
    assert np.allclose(r.g_test_initial.values, test.g_fs.values, rtol=0, atol=1e-14)
    assert np.allclose(r.g_test.values, network_metric(CFG, r.theta.values, test, params0=params0),
                       rtol=0, atol=1e-14)
    # linearised model: g(theta0) + R(J(theta0)(theta - theta0)) at the test points
    r = network_flow(train, CFG, small_params, steps=3, lr=5e-4, test=test, linearized=True)
    x = network_inputs(test)
    d = nw.unflatten(CFG, r.theta.values - r.theta_initial.values)
    lin = network_metric(CFG, small_params, test) + losses.real_to_hermitian(nw.jvp(CFG, small_params, x, d), 3)
    assert np.allclose(r.g_test.values, lin, rtol=0, atol=1e-14)


@pytest.mark.parametrize("center, linearized", [(True, False), (True, True), (False, False), (False, True)])
def test_non_finite_parameters_are_refused_by_name(split, params0, center, linearized):
    """A NaN parameter was flowed (center=True kept it in theta) or blamed on the metric not being
    positive definite."""
    train, test = split
    flat = nw.flatten(params0).copy()
    flat[0] = np.nan
    for p in (flat, nw.unflatten(CFG, flat)):
        with pytest.raises(ValueError, match="params .*NaN or inf"):
            network_flow(train, CFG, p, steps=2, lr=1e-3, test=test, center=center, linearized=linearized)
    with pytest.raises(ValueError, match="params .*NaN or inf"):
        network_metric(CFG, flat, train)
    with pytest.raises(ValueError, match="params0 .*NaN or inf"):
        network_metric(CFG, params0, train, params0=flat)
