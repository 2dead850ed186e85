"""Feature learning, measured (issue 13): the metric-network training loop, kernel statistics on a
probe, the width scan, the after-kernel flow and the phi-network kernel -- each checked against
something independent (closed forms, finite differences, full Jacobians, the infinite-width NTK)."""

import functools
import math

import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray import linalg, losses
from mfarray import networks as nw
from mfarray.experiments.after_kernel import (
    MODELS,
    NetworkKernelOperator,
    after_kernel_experiment,
    network_kernel_operators,
)
from mfarray.experiments.feature_learning import (
    batch_gradient,
    default_checkpoints,
    fit_width_rate,
    kernel_evolution,
    metric_mlp,
    network_params,
    train_metric_network,
)
from mfarray.experiments.probe_kernel import (
    ProbeKernel,
    analytic_distance,
    distance_from_products,
    kernel_alignment,
    kernel_distance,
    kernel_statistics,
)
from mfarray.flows import kernel_flow, network_flow
from mfarray.flows.evolving import network_inputs, network_metric
from mfarray.geometry import measures
from mfarray.kernels import DenseOperator, gaussian_fs, relu_ntk


@pytest.fixture(scope="module")
def chart_points():
    """700 Fermat-quintic points of one chart."""
    return mf.sample_chart(mf.fermat_quintic(), 700, seed=7).compute()


@pytest.fixture(scope="module")
def split(chart_points):
    ds = chart_points
    return ds.isel(point=slice(0, 300)), ds.isel(point=slice(300, 400)), ds.isel(point=slice(400, 430))


def _dense_kernel(config, params, x1, x2=None):
    """Theta[a, b, i, j] = sum_I J[a, i, I] J[b, j, I] from full Jacobians (independent of empirical_ntk)."""
    J1 = nw.jacobian(config, params, x1)
    J2 = J1 if x2 is None else nw.jacobian(config, params, x2)
    return np.einsum("aip,bjp->abij", J1, J2)


# ----------------------------------------------------------------------------- kernel_flow with a pair
def test_kernel_flow_with_an_operator_pair_equals_the_kernel_spec(chart_points):
    train, test = chart_points.isel(point=slice(0, 120)), chart_points.isel(point=slice(120, 170))
    kern = functools.partial(gaussian_fs, sigma=0.1, squared=True)
    ref = kernel_flow(train, kern, steps=15, lr=0.05, test=test)
    z, zt = train.z.values, test.z.values
    pair = (DenseOperator(gaussian_fs(z, z, sigma=0.1, squared=True)),
            DenseOperator(gaussian_fs(zt, z, sigma=0.1, squared=True)))
    got = kernel_flow(train, pair, steps=15, lr=0.05, test=test)
    moved = np.abs(ref.g_test.values - ref.g_test_initial.values).max()
    assert moved > 1e-3 * np.abs(ref.g_test.values).max()  # the test points moved
    for name in ("g_train", "g_test", "sigma_train", "sigma_test", "lr"):
        np.testing.assert_allclose(got[name].values, ref[name].values, rtol=1e-12, atol=1e-14)
    # without test points a (K, None) pair is the single operator
    alone = kernel_flow(train, (pair[0], None), steps=5, lr=0.05)
    np.testing.assert_allclose(alone.g_train.values, kernel_flow(train, pair[0], steps=5, lr=0.05).g_train.values,
                               rtol=0, atol=0)


def test_kernel_flow_refuses_bad_pairs(chart_points):
    train, test = chart_points.isel(point=slice(0, 40)), chart_points.isel(point=slice(40, 50))
    K, Kt = DenseOperator(np.eye(40)), DenseOperator(np.zeros((10, 40)))
    with pytest.raises(ValueError, match="pair of operators"):
        kernel_flow(train, K, steps=1, test=test)
    with pytest.raises(ValueError, match="without test points"):
        kernel_flow(train, (K, Kt), steps=1)
    with pytest.raises(ValueError, match="K_test_train"):
        kernel_flow(train, (K, None), steps=1, test=test)
    with pytest.raises(ValueError, match=r"kernel\[1\].*\(10, 40\)"):
        kernel_flow(train, (K, DenseOperator(np.zeros((9, 40)))), steps=1, test=test)
    with pytest.raises(ValueError, match=r"kernel\[0\]"):
        kernel_flow(train, (DenseOperator(np.eye(39)), Kt), steps=1, test=test)
    with pytest.raises(TypeError, match="pair of operators"):
        kernel_flow(train, (K, Kt, Kt), steps=1, test=test)


# ----------------------------------------------------------------------------- the training loop
def test_adam_minibatches_reach_the_least_squares_minimum(split):
    """A linear 'network' (no hidden layer) with the MSE loss is weighted linear least squares:
    Adam on mini-batches (decaying rate) must reach the lstsq minimum, a target it cannot fit exactly."""
    train = split[0]
    n = train.sizes["point"]
    cfg = nw.MLP((10, 9), "identity", 1.0, 1.0)
    x = network_inputs(train)
    F = np.concatenate([cfg.layer_scales[0] * x, np.full((n, 1), cfg.sigma_b)], axis=1)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))
    g_fs, w = train.g_fs.values, train.weight.values
    target = g_fs + 0.05 * (noise + np.conj(np.swapaxes(noise, 1, 2))) + linalg.real_to_hermitian(
        F @ (0.3 * rng.standard_normal((11, 9))), 3)
    R = linalg.hermitian_to_real(target - g_fs)
    sw = np.sqrt(w)[:, None]
    beta, *_ = np.linalg.lstsq(sw * F, sw * R, rcond=None)
    loss_min = float(np.sum(w[:, None] * (F @ beta - R) ** 2)) / n
    r = train_metric_network(train, cfg, 60, 32, 0.05, loss="mse", target=target, lr_decay=0.9)
    g = network_metric(cfg, r.params.values, train, params0=r.params_initial.values)  # an independent path
    loss = float(np.sum(w * np.sum(np.abs(g - target) ** 2, axis=(1, 2)))) / n
    loss0 = float(np.sum(w * np.sum(np.abs(g_fs - target) ** 2, axis=(1, 2)))) / n
    assert loss0 > 3 * loss_min
    assert loss_min <= loss < (1 + 1e-3) * loss_min, (loss, loss_min)


@pytest.mark.parametrize("loss", ["sigma", "sigma_squared"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_batch_gradient_matches_finite_differences(split, loss, activation):
    train = split[0].isel(point=slice(0, 50))
    cfg = metric_mlp((16, 16), activation)
    p0 = nw.init(cfg, 3)
    rng = np.random.default_rng(1)
    theta = nw.flatten(p0) + 0.05 * rng.standard_normal(nw.num_params(cfg))  # away from theta0
    x = network_inputs(train)
    kappa = losses.make_loss_data(train).kappa
    data = losses.LossData(omega2=train.omega2.values, weight=train.weight.values, kappa=kappa)
    loss_fn = mf.flows.frozen.resolve_loss(loss)

    def total(t):  # the mean loss, through network_metric (the centred model of network_flow)
        return losses.total(loss_fn, network_metric(cfg, t, train, params0=p0), data)

    value, grad, skipped = batch_gradient(cfg, theta, x, linalg.to_rows(train.g_fs.values), nw.apply(cfg, p0, x),
                                          data, loss)
    assert skipped == 0
    assert abs(value - total(theta)) < 1e-13
    eps = 1e-6 if activation == "tanh" else 1e-7  # ReLU: short steps cross no kink
    for _ in range(3):
        v = rng.standard_normal(theta.shape)
        v /= np.linalg.norm(v)
        fd = (total(theta + eps * v) - total(theta - eps * v)) / (2 * eps)
        assert abs(fd - grad @ v) < 1e-6 * np.linalg.norm(grad), (fd, grad @ v)


def test_training_records_sigma_and_kernels(split):
    train, test, probe = split
    r = train_metric_network(train, metric_mlp((32, 32)), 4, 32, 1e-2, test=test, probe=probe, checkpoints=(2,))
    assert list(r.checkpoint.values) == [0, 2]
    for name in r.data_vars:
        assert r[name].attrs["description"], name
    assert r.sigma_train.values[-1] < 0.8 * r.sigma_train.values[0]
    s0 = linalg.hermitian_det(train.g_fs.values)
    assert r.sigma_train.values[0] == pytest.approx(float(measures.sigma(
        s0, train.omega2.values, train.weight.values)), rel=1e-12)
    assert r.kernel_distance.values[0] < 1e-14 and r.kernel_change.values[0] == 0
    assert r.kernel_distance.values[1] > 1e-4  # Adam moved the kernel
    assert np.all(r.kernel_time.values > 0) and 0 < r.attrs["kernel_overhead"] < np.inf
    cfg, p, p0 = network_params(r)
    assert cfg.widths == (10, 32, 32, 9)
    g = network_metric(cfg, p, test, params0=p0)
    sigma = measures.sigma(linalg.hermitian_det(g), test.omega2.values, test.weight.values)
    assert float(sigma) == pytest.approx(float(r.sigma_test.values[-1]), rel=1e-10)
    # same seed, same numbers; float32 probe kernels, the same statistics to float32 rounding
    again = train_metric_network(train, metric_mlp((32, 32)), 4, 32, 1e-2, test=test, probe=probe,
                                 checkpoints=(2,), probe_dtype="float32")
    np.testing.assert_array_equal(again.params.values, r.params.values)
    assert again.attrs["probe_dtype"] == "float32" and r.attrs["probe_dtype"] == "float64"
    np.testing.assert_allclose(again.kernel_distance.values[1:], r.kernel_distance.values[1:], rtol=1e-5)


def test_training_refuses_bad_arguments(split, chart_points):
    train = split[0]
    with pytest.raises(ValueError, match="loss must be"):
        train_metric_network(train, None, 1, 32, 1e-3, loss="l1")
    with pytest.raises(ValueError, match="optimizer"):
        train_metric_network(train, None, 1, 32, 1e-3, optimizer="rmsprop")
    with pytest.raises(ValueError, match="checkpoints"):
        train_metric_network(train, None, 2, 32, 1e-3, probe=split[2], checkpoints=(3,))
    with pytest.raises(ValueError, match="target"):
        train_metric_network(train, None, 1, 32, 1e-3, loss="mse")
    with pytest.raises(ValueError, match="d_in"):
        train_metric_network(train, metric_mlp(d_in=8), 1, 32, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        train_metric_network(train, None, 1, 32, 0.0)
    with pytest.raises(ValueError, match="probe_dtype"):
        train_metric_network(train, None, 1, 32, 1e-3, probe=split[2], probe_dtype="float16")
    other = mf.sample_chart(mf.fermat_quintic(), 20, seed=7, chart=(1, 0))
    with pytest.raises(ValueError, match="chart"):
        train_metric_network(train, None, 1, 32, 1e-3, probe=other)


# ----------------------------------------------------------------------------- kernel statistics
def test_probe_kernel_statistics_equal_those_of_full_jacobians(split, monkeypatch):
    """Upper row blocks (ragged: 7 rows of 30), streamed tiles, |J^T y|^2 for y^T Theta y -- against J J^T."""
    from mfarray.experiments import probe_kernel

    probe = split[2]
    cfg = metric_mlp((16, 16), "tanh")
    p0, p1 = nw.init(cfg, 0), nw.init(cfg, 1)
    x = network_inputs(probe)
    y = np.random.default_rng(2).standard_normal((probe.sizes["point"], 9))
    pk = ProbeKernel(cfg, p0, x, block_rows=7)
    K0, K1 = _dense_kernel(cfg, p0, x), _dense_kernel(cfg, p1, x)
    np.testing.assert_allclose(pk.kernel(), K0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pk.kernel(p1), K1, rtol=1e-12, atol=1e-12)
    ref = kernel_statistics(K0, K1, y)

    def refuse(*args, **kwargs):
        raise AssertionError("statistics formed a kernel")

    with monkeypatch.context() as m:  # the statistics stream tiles: no kernel, no blocks of Theta_t
        m.setattr(probe_kernel, "empirical_ntk", refuse)
        m.setattr(probe_kernel, "empirical_ntk_upper", refuse)
        got = pk.statistics(p1, y)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-11), key
    assert ProbeKernel(cfg, p0, x, block_rows=7, n_threads=1).statistics(p1, y) == got  # any thread count
    other = ProbeKernel(cfg, p0, x).statistics(p1, y)  # default blocking: the same up to rounding
    for key in ref:
        assert other[key] == pytest.approx(ref[key], rel=1e-11), key
    assert pk.statistics(p0, y)["kernel_distance"] == 0.0
    # the definitions themselves, on small arrays
    assert kernel_distance(K0, 3.0 * K0) == pytest.approx(0.0, abs=1e-14)
    assert ref["kernel_change"] == pytest.approx(np.linalg.norm(K1 - K0) / np.linalg.norm(K0), rel=1e-12)
    yy = np.einsum("ai,bj->abij", y, y)  # Theta = y y^T is perfectly aligned
    assert kernel_alignment(yy, y) == pytest.approx(1.0, rel=1e-12)
    assert 0 < ref["alignment"] < 1
    with pytest.raises(ValueError, match="dtype"):
        ProbeKernel(cfg, p0, x, dtype=np.float16)


@pytest.mark.parametrize(("scale", "eps"), [(1.0, 1e-6), (1.5, 1e-3)])
def test_distance_from_products_keeps_small_distances_accurate(scale, eps):
    """Theta = scale (Theta_0 + Delta), Delta orthogonal to Theta_0, |Delta| = eps |Theta_0|: 1 - cos =
    1 - (1 + eps^2)^(-1/2) exactly.  The Lagrange form keeps the relative accuracy of |Delta|^2 at a
    distance of 5e-13, where 1 - <K0, K>/(|K0| |K|) has lost 3-4 digits to cancellation."""
    rng = np.random.default_rng(0)
    K0 = rng.standard_normal((6, 6, 4, 4))
    E = rng.standard_normal(K0.shape)
    E -= np.vdot(E, K0) / np.vdot(K0, K0) * K0
    D = eps * np.linalg.norm(K0) / np.linalg.norm(E) * E
    K = scale * (K0 + D)
    exact = -math.expm1(-0.5 * math.log1p(eps**2))
    got = distance_from_products(np.vdot(K0, K0), np.vdot(K0, K), np.vdot(K, K), np.vdot(K - K0, K - K0))
    assert got == pytest.approx(exact, rel=1e-9, abs=0)
    naive = kernel_distance(K0, K)
    if eps > 1e-4:
        assert naive == pytest.approx(exact, rel=1e-8, abs=0)
    else:  # what the Lagrange form is for
        assert abs(naive / exact - 1) > 1e-5


def test_float32_probe_statistics_stay_within_tolerance_of_float64():
    """probe_dtype float32 against float64 in the lazy regime (width 512, small step: kernel distance ~1e-5):
    the distance within 1e-5 relative (measured: ~1e-7, widths 64-4096), the other statistics too."""
    cfg = metric_mlp((512,), "relu")
    p0 = nw.init(cfg, 0)
    p1 = nw.unflatten(cfg, nw.flatten(p0) + 2e-3 * np.random.default_rng(1).standard_normal(nw.num_params(cfg)))
    x = np.random.default_rng(2).standard_normal((60, 10))
    y = np.random.default_rng(3).standard_normal((60, 9))
    s64 = ProbeKernel(cfg, p0, x).statistics(p1, y)
    s32 = ProbeKernel(cfg, p0, x, dtype="float32").statistics(p1, y)
    assert 1e-7 < s64["kernel_distance"] < 1e-3
    for key in s64:
        assert s32[key] == pytest.approx(s64[key], rel=1e-5), key
    assert s32["kernel_distance"] != s64["kernel_distance"]  # float32 did run


def test_wide_networks_are_near_the_analytic_ntk_and_move_less(split):
    """Lazy regime: at width 4096 the empirical metric-NTK is closer to delta_ij Theta_bar (relu_ntk)
    than at width 64, and training moves it less."""
    train, test, probe = split
    r = kernel_evolution(train, probe.isel(point=slice(0, 12)), widths=(64, 4096), epochs=2, batch=64, lr=0.05,
                         test=test)
    a64, a4096 = r.analytic_distance.values
    assert a4096 < 0.3 * a64, (a64, a4096)  # ~ width^-1/2: a factor 8
    c64, c4096 = r.kernel_change.values
    assert 0 < c4096 < 0.3 * c64, (c64, c4096)
    d64, d4096 = r.kernel_distance.values
    assert 0 < d4096 < 0.1 * d64
    assert r.attrs["change_rate"] < -0.3 and r.attrs["rate"] < -0.6
    assert np.all(np.isfinite(r.sigma_train.values))
    for name in r.data_vars:
        assert r[name].attrs["description"], name


def test_analytic_distance_is_the_frobenius_distance_to_delta_times_relu_ntk(split):
    x = network_inputs(split[2].isel(point=slice(0, 10)))
    cfg = metric_mlp((256,), "relu", sigma_w=1.3, sigma_b=0.4)
    p = nw.init(cfg, 5)
    K = _dense_kernel(cfg, p, x)
    bar = relu_ntk(x, x, depth=1, sigma_w=1.3, sigma_b=0.4)
    ref = np.einsum("ab,ij->abij", bar, np.eye(9))
    assert analytic_distance(cfg, p, x) == pytest.approx(np.linalg.norm(K - ref) / np.linalg.norm(ref), rel=1e-10)
    assert np.isnan(analytic_distance(metric_mlp((8,), "tanh"), nw.init(metric_mlp((8,), "tanh"), 0), x))


def test_fit_width_rate_and_default_checkpoints():
    w = np.array([64, 256, 1024, 4096])
    slope, icpt, se = fit_width_rate(w, 3.0 * w ** -0.5)
    assert slope == pytest.approx(-0.5, abs=1e-12) and np.exp(icpt) == pytest.approx(3.0) and se < 1e-12
    assert default_checkpoints(10) == (0, 1, 2, 4, 8, 10)
    assert default_checkpoints(1) == (0, 1)
    with pytest.raises(ValueError, match="positive"):
        fit_width_rate(w, [1.0, 0.0, 1.0, 1.0])


# ----------------------------------------------------------------------------- the after-kernel
@pytest.mark.parametrize("method", ["dense", "matvec"])
def test_after_kernel_flow_with_mse_matches_its_closed_form(split, method):
    """Frozen Theta (from full Jacobians here), MSE, fixed steps: train residuals r_t = (I - 2 lr Theta W)^t r_0,
    test metrics g_test(t) = g_test(0) - Theta(test, train) A(t) with A(t) = sum_s lr 2 W r_s."""
    train, test = split[0].isel(point=slice(0, 40)), split[1].isel(point=slice(0, 15))
    cfg = metric_mlp((16, 16), "tanh")
    params = nw.init(cfg, 4)
    x, xt = network_inputs(train), network_inputs(test)
    n, c = 40, 9
    K = _dense_kernel(cfg, params, x)
    Kt = _dense_kernel(cfg, params, xt, x)
    T = K.transpose(2, 0, 3, 1).reshape(c * n, c * n)  # rows (component, point), as linalg.to_rows
    Tt = Kt.transpose(2, 0, 3, 1).reshape(c * 15, c * n)
    W = np.kron(np.eye(c), np.diag(train.weight.values))
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((n, 3, 3)) + 1j * rng.standard_normal((n, 3, 3))
    target = train.g_fs.values + 0.1 * noise @ np.conj(np.swapaxes(noise, 1, 2))
    lr = 0.3 / np.max(np.abs(np.linalg.eigvals(2 * T @ W)))
    steps = 20
    r = (linalg.to_rows(train.g_fs.values) - linalg.to_rows(target)).ravel()
    A = np.zeros_like(r)
    for _ in range(steps):
        A += lr * 2 * W @ r
        r = r - 2 * lr * T @ W @ r
    pair = network_kernel_operators(cfg, params, train, test, method=method)
    got = kernel_flow(train, pair, steps=steps, lr=lr, loss="mse", target=target, adaptive=False, test=test)
    r_got = (linalg.to_rows(got.g_train.values) - linalg.to_rows(target)).ravel()
    r0 = (linalg.to_rows(train.g_fs.values) - linalg.to_rows(target)).ravel()
    np.testing.assert_allclose(r_got, r, atol=1e-11 * np.abs(r0).max())
    assert np.abs(r - r0).max() > 0.1 * np.abs(r0).max()  # it moved
    gt = linalg.to_rows(test.g_fs.values).ravel() - Tt @ A
    np.testing.assert_allclose(linalg.to_rows(got.g_test.values).ravel(), gt, atol=1e-11 * np.abs(gt).max())


def test_network_kernel_operator_is_the_empirical_ntk(split):
    x, xt = network_inputs(split[0].isel(point=slice(0, 20))), network_inputs(split[1].isel(point=slice(0, 7)))
    cfg = metric_mlp((16,), "relu")
    p = nw.init(cfg, 2)
    op = NetworkKernelOperator(cfg, p, xt, x)
    assert op.shape == (7, 20)
    v = np.random.default_rng(0).standard_normal((20, 9))
    np.testing.assert_allclose(op.matvec(v), np.einsum("abij,bj->ai", _dense_kernel(cfg, p, xt, x), v),
                               rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(op.matvec(v.reshape(20, 3, 3)), op.matvec(v).reshape(7, 3, 3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="shape"):
        op.matvec(np.zeros((19, 9)))


def test_after_kernel_experiment_compares_the_five_models(split):
    train, test, _ = split
    r = train_metric_network(train, metric_mlp((32,)), 3, 32, 1e-2, test=test)
    ds = after_kernel_experiment(train, test, result=r, flow_steps=6)
    assert list(ds.model.values) == list(MODELS)
    for name in ds.data_vars:
        assert ds[name].attrs["description"], name
    assert ds.gain_test.sel(model="fs") == 1.0
    assert float(ds.sigma_test.sel(model="network")) == pytest.approx(float(r.sigma_test.values[-1]), rel=1e-12)
    assert float(ds.sigma_train.sel(model="fs")) == pytest.approx(float(r.sigma_train.values[0]), rel=1e-12)
    assert np.all(ds.gain_train.sel(model=["initial_ntk", "analytic_ntk", "after_kernel"]).values > 1.0)
    # the frozen initial kernel is the linearised network (2.10-2.11): the same flow, test points too
    cfg, _, p0 = network_params(r)
    lin = network_flow(train, cfg, p0, steps=6, lr=1.0, loss="sigma_squared", test=test, linearized=True,
                       center=True)
    assert float(ds.sigma_test.sel(model="initial_ntk")) == pytest.approx(float(lin.sigma_test.values[-1]),
                                                                          rel=1e-9)
    with pytest.raises(ValueError, match="trained on"):
        after_kernel_experiment(train.isel(point=slice(0, 50)), test, result=r)


# ----------------------------------------------------------------------------- the phi-network kernel
def test_phi_network_ntk_is_the_gram_of_finite_difference_jacobians():
    from mfarray.experiments.phi_kernel import phi_frame, phi_jacobian, phi_network_ntk
    from mfarray.kahler import network as pn

    pts = mf.sample_points(mf.fermat_quintic(), 6, seed=4).compute()  # mixed charts
    cfg = pn.PhiNetwork((8,), "tanh", zero_head=False)
    frame, surface = phi_frame(pts, cfg)
    theta = pn.init(cfg, surface)
    J = phi_jacobian(cfg, theta, frame)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for _ in range(3):
        v = rng.standard_normal(theta.shape)
        fd = (linalg.hermitian_to_real(pn.metric(cfg, theta + eps * v, frame))
              - linalg.hermitian_to_real(pn.metric(cfg, theta - eps * v, frame))) / (2 * eps)
        np.testing.assert_allclose(J @ v, fd, rtol=1e-6, atol=1e-8 * np.abs(fd).max())
    K = phi_network_ntk(cfg, theta, pts)
    np.testing.assert_allclose(K, np.einsum("aip,bjp->abij", J, J), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(K, K.transpose(1, 0, 3, 2), rtol=0, atol=1e-12 * np.abs(K).max())


def test_phi_kernel_evolution_measures_an_uninterrupted_run():
    from mfarray.experiments.phi_kernel import phi_kernel_evolution
    from mfarray.kahler import network as pn
    from mfarray.kahler.training import train_phi_network

    q = mf.fermat_quintic()
    train, probe = mf.sample_points(q, 200, seed=5).compute(), mf.sample_points(q, 8, seed=6).compute()
    cfg = pn.PhiNetwork((16,), "tanh")
    r = phi_kernel_evolution(train, cfg, 3, 64, 2e-2, probe, checkpoints=(1,))
    plain = train_phi_network(train, cfg, 3, 64, 2e-2)
    np.testing.assert_array_equal(r.params.values, plain.params.values)  # segments resume exactly
    np.testing.assert_array_equal(r.sigma_train.values, plain.sigma_train.values)
    assert list(r.checkpoint.values) == [0, 1]  # epoch 0 always, then the ones asked for
    assert r.kernel_distance.values[0] == pytest.approx(0.0, abs=1e-14)
    assert np.all(r.kernel_distance.values[1:] > 1e-3)
    assert np.all((r.alignment.values >= 0) & (r.alignment.values <= 1))
    for name in ("kernel_distance", "alignment", "kernel_time"):
        assert r[name].attrs["description"]


# ----------------------------------------------------------------------------- the plot
def test_plot_kernel_evolution_draws_both_kinds():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mfarray.plots import plot_kernel_evolution

    w = np.array([64, 256, 1024])
    scan = xr.Dataset({"kernel_distance": ("width", 1e-2 * (w / 64.0) ** -1.0),
                       "kernel_change": ("width", 1e-1 * (w / 64.0) ** -0.5)}, coords={"width": w})
    for key, name in (("rate", "kernel_distance"), ("change_rate", "kernel_change")):
        s, i, _ = fit_width_rate(w, scan[name].values)
        scan.attrs.update({key: s, f"{key}_intercept": i})
    _fig, ax = plt.subplots()
    assert plot_kernel_evolution(scan, ax=ax) is ax
    assert len(ax.lines) == 6
    run = xr.Dataset({name: ("checkpoint", np.array([0.0, 0.1, 0.2])) for name in
                      ("kernel_distance", "alignment", "alignment_initial_kernel")}, coords={"checkpoint": [0, 1, 2]})
    assert len(plot_kernel_evolution(run).lines) == 3
    with pytest.raises(ValueError, match="kernel_evolution"):
        plot_kernel_evolution(xr.Dataset({"a": ("x", [1.0])}))
    plt.close("all")


def test_an_operator_pair_pulls_each_train_gradient_back_once(split, monkeypatch):
    """K(train, train) and K(test, train) share J_train^T v: a flow step applies both to the same
    v, so one reverse pass serves both, with the bits of ntk_matvec; a new v is pulled back anew."""
    from mfarray.experiments import after_kernel
    from mfarray.kernels.empirical import ntk_matvec

    train, test = split[0].isel(point=slice(0, 30)), split[1].isel(point=slice(0, 12))
    cfg = metric_mlp((16,), "relu")
    p = nw.init(cfg, 4)
    K, K_test = after_kernel.network_kernel_operators(cfg, p, train, test)
    calls = []
    real_vjp = nw.vjp
    monkeypatch.setattr(nw, "vjp", lambda *a, **kw: calls.append(1) or real_vjp(*a, **kw))
    rng = np.random.default_rng(1)
    x, xt = network_inputs(train), network_inputs(test)
    for _ in range(2):
        v = rng.standard_normal((30, 9))
        out, out_test = K.inner.matvec(v), K_test.inner.matvec(v.copy())  # equal values, another array
        np.testing.assert_array_equal(out, ntk_matvec(cfg, p, x, x, v))
        np.testing.assert_array_equal(out_test, ntk_matvec(cfg, p, xt, x, v))
    assert len(calls) == 2 + 4  # one pull-back per v for the pair, one per ntk_matvec call
    r = mf.kernel_flow(train, (K, K_test), steps=3, test=test)
    assert np.all(np.isfinite(r.sigma_test.values))


def test_a_shared_pullback_is_not_reused_across_parameters(split):
    from mfarray.experiments import after_kernel
    from mfarray.kernels.empirical import ntk_matvec

    x = network_inputs(split[0].isel(point=slice(0, 20)))
    cfg = metric_mlp((16,), "relu")
    p1, p2 = nw.init(cfg, 1), nw.init(cfg, 2)
    shared = after_kernel._Pullback()
    v = np.random.default_rng(2).standard_normal((20, 9))
    a = after_kernel.NetworkKernelOperator(cfg, p1, x, x, shared).matvec(v)
    b = after_kernel.NetworkKernelOperator(cfg, p2, x, x, shared).matvec(v)
    np.testing.assert_array_equal(a, ntk_matvec(cfg, p1, x, x, v))
    np.testing.assert_array_equal(b, ntk_matvec(cfg, p2, x, x, v))


def test_metric_mlp_refuses_fractional_widths():
    """metric_mlp cast each width with int(), so 2.5 hidden units became 2 before MLP could refuse it."""
    with pytest.raises(TypeError, match="not an integer"):
        metric_mlp((16, 2.5))


# ----------------------------------------------------------------------------- arguments refused up front
def _never(*args, **kwargs):
    raise AssertionError("reached the training: the arguments should have been refused before it")


def test_kernel_evolution_measures_the_last_epoch_whatever_the_checkpoints(split):
    """checkpoints (0, 1) with epochs = 3 reported the epoch-1 kernel distance as "after the last
    epoch" beside the epoch-3 sigma, and fitted the rate to it."""
    train, probe = split[0].isel(point=slice(0, 48)), split[2].isel(point=slice(0, 6))
    ev = kernel_evolution(train, probe, widths=(8, 16), epochs=3, batch=16, lr=0.05, checkpoints=[0, 1])
    assert list(ev.checkpoint.values) == [0, 1, 3]
    np.testing.assert_array_equal(ev.kernel_distance.values, ev.kernel_distance_curve.values[:, -1])
    one = train_metric_network(train, metric_mlp((8,), d_in=10, k=3), 3, 16, 0.05, probe=probe, checkpoints=[0, 1, 3],
                               optimizer="sgd")
    assert float(ev.kernel_distance.sel(width=8)) == float(one.kernel_distance.values[-1])
    assert float(ev.sigma_train.sel(width=8)) == float(one.sigma_train.values[-1])
    # checkpoints (0,) alone: the last epoch still measured, not a fit of log 0
    only0 = kernel_evolution(train, probe, widths=(8, 16), epochs=2, batch=16, lr=0.05, checkpoints=[0])
    assert list(only0.checkpoint.values) == [0, 2] and np.all(only0.kernel_distance.values > 0)


def test_kernel_evolution_refuses_duplicate_widths_and_bad_checkpoints_before_training(split, monkeypatch):
    from mfarray.experiments import feature_learning as fl

    train, probe = split[0].isel(point=slice(0, 40)), split[2].isel(point=slice(0, 6))
    monkeypatch.setattr(fl, "train_metric_network", _never)
    with pytest.raises(ValueError, match="widths must be distinct"):
        kernel_evolution(train, probe, widths=(8, 8), epochs=2)
    with pytest.raises(ValueError, match="widths must be distinct"):
        kernel_evolution(train, probe, widths=(np.int64(8), 8, 16), epochs=2)
    with pytest.raises(ValueError, match="checkpoints"):
        kernel_evolution(train, probe, widths=(8, 16), epochs=2, checkpoints=[0, 5])
    with pytest.raises(TypeError, match="checkpoints"):
        kernel_evolution(train, probe, widths=(8, 16), epochs=2, checkpoints=[0.5])
    with pytest.raises(ValueError, match="distinct"):
        fit_width_rate([8, 8], [1e-3, 2e-3])
    with pytest.raises(ValueError, match="distinct"):
        fit_width_rate([8, 8, 16], [1e-3, 2e-3, 3e-3])


def test_train_metric_network_refuses_a_probe_on_another_surface(split):
    train = split[0].isel(point=slice(0, 40))
    other = mf.select_chart(mf.sample_points(mf.dwork_quintic(0.5), 400, seed=3), like=train.compute())
    other = other.isel(point=slice(0, 6))
    with pytest.raises(ValueError, match="probe.*another surface"):
        train_metric_network(train, metric_mlp((8,)), 1, 16, 1e-2, probe=other)
    with pytest.raises((TypeError, ValueError), match="checkpoints"):
        train_metric_network(train, metric_mlp((8,)), 2, 16, 1e-2, probe=split[2], checkpoints=(0.5,))


def test_phi_kernel_evolution_refuses_other_surfaces_and_fractional_checkpoints(monkeypatch):
    from mfarray.experiments import phi_kernel
    from mfarray.kahler import network as pn

    q = mf.fermat_quintic()
    train, probe = mf.sample_points(q, 30, seed=5).compute(), mf.sample_points(q, 4, seed=6).compute()
    other = mf.sample_points(mf.dwork_quintic(0.5), 4, seed=6).compute()
    cfg = pn.PhiNetwork((8,), "tanh")
    monkeypatch.setattr(phi_kernel, "train_phi_network", _never)
    monkeypatch.setattr(phi_kernel, "phi_network_ntk", _never)
    with pytest.raises(ValueError, match="probe.*another surface"):
        phi_kernel.phi_kernel_evolution(train, cfg, 1, 16, 1e-2, other)
    with pytest.raises(ValueError, match="test.*another surface"):
        phi_kernel.phi_kernel_evolution(train, cfg, 1, 16, 1e-2, probe, test=other)
    with pytest.raises(TypeError, match="checkpoints"):
        phi_kernel.phi_kernel_evolution(train, cfg, 2, 16, 1e-2, probe, checkpoints=[0.7, 1.9])
    with pytest.raises(ValueError, match="checkpoints"):
        phi_kernel.phi_kernel_evolution(train, cfg, 2, 16, 1e-2, probe, checkpoints=[3])
    with pytest.raises(ValueError, match="batch"):
        phi_kernel.phi_kernel_evolution(train, cfg, 2, 0, 1e-2, probe)
    with pytest.raises(ValueError, match="lr_decay"):
        phi_kernel.phi_kernel_evolution(train, cfg, 2, 16, 1e-2, probe, lr_decay=5.0)


def test_after_kernel_experiment_checks_the_result_against_the_train_points(chart_points):
    train, test = chart_points.isel(point=slice(0, 40)), chart_points.isel(point=slice(40, 60))
    cfg = metric_mlp((8,))
    elsewhere = mf.sample_chart(mf.fermat_quintic(), 40, seed=7, chart=(1, 0))
    with pytest.raises(ValueError, match=r"chart \[1, 0\]"):
        after_kernel_experiment(train, test, result=train_metric_network(elsewhere, cfg, 1, 16), flow_steps=1)
    others = train_metric_network(chart_points.isel(point=slice(60, 100)), cfg, 1, 16)
    with pytest.raises(ValueError, match="other train points"):
        after_kernel_experiment(train, test, result=others, flow_steps=1)
    r = train_metric_network(train, cfg, 1, 16)
    ds = after_kernel_experiment(train, test, result=r, flow_steps=1)
    call = ds.attrs["call"]
    assert "result=<Dataset" in call and "epochs=" not in call and "batch=" not in call and "flow_steps=1" in call
    # a result that does not record its points' fingerprint is checked by count and chart
    old = r.copy()
    del old.attrs["train_z_sha256"]
    after_kernel_experiment(train, test, result=old, flow_steps=1)


def test_after_kernel_experiment_refuses_bad_flow_settings_before_training(split, monkeypatch):
    from mfarray.experiments import after_kernel

    train, test = split[0].isel(point=slice(0, 40)), split[1].isel(point=slice(0, 10))
    monkeypatch.setattr(after_kernel, "train_metric_network", _never)
    for kwargs, error, match in (({"flow_steps": -1}, ValueError, "flow_steps"),
                                 ({"flow_steps": 1.5}, TypeError, "flow_steps"),
                                 ({"flow_lr": 0.0}, ValueError, "flow_lr"),
                                 ({"flow_loss": "mse"}, ValueError, "flow_loss"),
                                 ({"flow_loss": "l1"}, ValueError, "flow_loss")):
        with pytest.raises(error, match=match):
            after_kernel_experiment(train, test, metric_mlp((8,)), 1, 16, **kwargs)
