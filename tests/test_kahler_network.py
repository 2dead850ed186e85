"""phi-networks (mfarray.kahler.network) and their training (mfarray.kahler.training).

The metric g = g_FS + i dd-bar phi of the network is checked against finite differences of phi in
local coordinates of several charts, for projective invariance, Hermiticity and chart
independence; the hand-written parameter gradient against central differences; training for
progress, thread-count independence and bit-identical resumption from checkpoints."""

import warnings

import numpy as np
import pytest
import zarr

import mfarray as mf
from mfarray import linalg, losses
from mfarray.geometry import charts, hypersurface, local
from mfarray.kahler import network as pn
from mfarray.kahler import sections as sec
from mfarray.kahler import training

SURFACE = hypersurface.fermat_quintic()


@pytest.fixture(scope="module")
def pts():
    return mf.sample_points(SURFACE, 400, seed=11).compute()


@pytest.fixture(scope="module")
def few(pts):
    ds = pts.isel(point=slice(0, 8))
    return ds.z.values, ds.patch.values, ds.elim.values


def _frame(cfg, z, patch=None, elim=None):
    return sec.section_frame(SURFACE, z, sec.section_exponents(SURFACE, cfg.k), patch, elim)


def _other_chart(z):
    """For each point a second chart: the second-largest |z_i| scaled to 1, the best elim there."""
    patch = np.argsort(np.abs(z), axis=1)[:, -2]
    za = charts.to_patch(z, patch)
    return patch, charts.elim_index(SURFACE.gradient(za), patch)


def _net(act="gelu", k=1, par="ntk", widths=(7, 6)):
    cfg = pn.PhiNetwork(widths=widths, activation=act, k=k, seed=3, parameterization=par, zero_head=False)
    return cfg, pn.init(cfg, SURFACE)


# ----------------------------------------------------------------------------- finite differences
def _phi_at_local(cfg, params, z, patch, elim, x):
    """phi at the point of X with local coordinates x (N, kd) in the charts (patch, elim):
    z_patch = 1, z_local = x, z_elim from p(z) = 0 by Newton's method from z's own value."""
    geo = local.chart_geometry(SURFACE, z, patch, elim)
    zz = geo.z.copy()
    np.put_along_axis(zz, geo.local, x, axis=1)
    e = geo.elim[:, None]
    for _ in range(50):
        p, dp = SURFACE.value_and_gradient(zz)
        step = p / np.take_along_axis(dp, e, 1)[:, 0]
        np.put_along_axis(zz, e, (np.take_along_axis(zz, e, 1)[:, 0] - step)[:, None], 1)
        if np.max(np.abs(step)) < 1e-15:
            break
    assert np.max(np.abs(SURFACE(zz))) < 1e-12
    return pn.phi(cfg, params, _frame(cfg, zz, geo.patch, geo.elim))


def _fd_jets(cfg, params, z, patch, elim, h):
    """(d_a phi, d_a dbar_b phi) by central differences in the real and imaginary parts x_a, y_a."""
    geo = local.chart_geometry(SURFACE, z, patch, elim)
    x0 = np.take_along_axis(geo.z, geo.local, 1)
    kd = x0.shape[1]
    dirs = [np.eye(kd)[a] * unit for a in range(kd) for unit in (1.0, 1j)]  # x_0, y_0, x_1, ...

    def f(*steps):
        return _phi_at_local(cfg, params, z, geo.patch, geo.elim, x0 + h * sum(steps, np.zeros(kd)))

    f0 = f()
    grad = np.stack([(f(d) - f(-d)) / (2 * h) for d in dirs], 1)
    hess = np.empty((len(z), 2 * kd, 2 * kd))
    for i, di in enumerate(dirs):
        hess[:, i, i] = (f(di) - 2 * f0 + f(-di)) / h**2
        for j in range(i):
            dj = dirs[j]
            hess[:, i, j] = hess[:, j, i] = (f(di, dj) - f(di, -dj) - f(-di, dj) + f(-di, -dj)) / (4 * h * h)
    d = 0.5 * (grad[:, 0::2] - 1j * grad[:, 1::2])  # d_a = (d_x - i d_y)/2
    X, Y = slice(0, None, 2), slice(1, None, 2)  # d_a dbar_b = (d_xa - i d_ya)(d_xb + i d_yb)/4
    dd = 0.25 * (hess[:, X, X] + hess[:, Y, Y] + 1j * (hess[:, X, Y] - hess[:, Y, X]))
    return d, dd


@pytest.mark.parametrize("act, k", [("gelu", 1), ("tanh", 1), ("softplus", 1), ("gelu", 2)])
@pytest.mark.parametrize("chart", ["own", "other"])
def test_ddbar_phi_equals_finite_differences_in_local_coordinates(few, act, k, chart):
    z, patch, elim = few
    if chart == "other":
        patch, elim = _other_chart(z)
    cfg, params = _net(act, k)
    frame = _frame(cfg, z, patch, elim)
    phi, dphi, ddphi = pn.phi_jets(cfg, params, frame)
    d_fd, dd_fd = _fd_jets(cfg, params, z, patch, elim, h=2e-4)
    np.testing.assert_allclose(phi, pn.phi(cfg, params, frame), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(dphi, d_fd, rtol=0, atol=1e-6 * np.abs(dphi).max())
    np.testing.assert_allclose(ddphi, dd_fd, rtol=0, atol=1e-5 * np.abs(ddphi).max())
    g = pn.metric(cfg, params, frame, chunk=3)
    np.testing.assert_allclose(g, frame.g_fs + ddphi, rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------- invariance
def test_features_are_the_projector_coordinates(few):
    z, patch, elim = few
    for k in (1, 2):
        frame = sec.section_frame(SURFACE, z, sec.section_exponents(SURFACE, k), patch, elim)
        f = pn.features(frame)
        M = frame.s[:, :, None] * np.conj(frame.s)[:, None, :]
        np.testing.assert_allclose(f.u, linalg.hermitian_to_real(M), atol=1e-15)
        np.testing.assert_allclose(f.ddu, np.conj(np.swapaxes(f.ddu, 1, 2)), atol=1e-15)  # Hermitian in (a, b)
    # k = 1: the entries of z zbar^T / |z|^2
    frame = sec.section_frame(SURFACE, z, sec.section_exponents(SURFACE, 1), patch, elim)
    P = z[:, :, None] * np.conj(z)[:, None, :] / np.sum(np.abs(z) ** 2, axis=1)[:, None, None]
    np.testing.assert_allclose(pn.features(frame).u, linalg.hermitian_to_real(P), atol=1e-14)


def test_phi_and_metric_are_projectively_invariant(few):
    z, _, _ = few
    rng = np.random.default_rng(0)
    lam = (rng.uniform(0.2, 3.0, len(z)) * np.exp(2j * np.pi * rng.uniform(size=len(z))))[:, None]
    for k in (1, 2):
        cfg, params = _net(k=k)
        exps = sec.section_exponents(SURFACE, k)
        a, b = _frame(cfg, z), _frame(cfg, lam * z)
        np.testing.assert_allclose(pn.phi(cfg, params, b), pn.phi(cfg, params, a), rtol=1e-12)
        np.testing.assert_allclose(pn.metric(cfg, params, b), pn.metric(cfg, params, a), rtol=1e-11, atol=1e-14)
        # the features of the raw representatives, s(lam z)/|lam z|^k, not only of the affine ones
        for w in (z, lam * z):
            s = sec.sections(w, exps) / np.linalg.norm(w, axis=1)[:, None] ** k
            u = linalg.hermitian_to_real(s[:, :, None] * np.conj(s)[:, None, :])
            np.testing.assert_allclose(u, pn.features(a).u, atol=1e-14)


def test_metric_is_one_tensor_in_two_charts(few):
    z, patch, elim = few
    p2, e2 = _other_chart(z)
    assert np.all(p2 != patch)
    for act in ("gelu", "tanh"):
        cfg, params = _net(act, k=2)
        g1 = pn.metric(cfg, params, _frame(cfg, z, patch, elim))
        g2 = pn.metric(cfg, params, _frame(cfg, z, p2, e2))
        np.testing.assert_allclose(g1, np.conj(np.swapaxes(g1, 1, 2)), rtol=0, atol=0)  # exactly Hermitian
        geo1 = local.chart_geometry(SURFACE, z, patch, elim)
        geo2 = local.chart_geometry(SURFACE, z, p2, e2)
        eta1 = linalg.hermitian_det(g1) / geo1.omega2
        eta2 = linalg.hermitian_det(g2) / geo2.omega2
        np.testing.assert_allclose(eta2, eta1, rtol=1e-9)
        # the full tensor law g_2 = T^T g_1 conj(T), T = d x^(1) / d x^(2)
        jac2 = charts.embedding_jacobian(SURFACE.n_ambient, geo2.elim, geo2.local, geo2.slopes)
        T = charts.chart_transition(geo2.z, jac2, geo1.patch, geo1.local)
        np.testing.assert_allclose(charts.transform_metric(g1, T), g2, rtol=0, atol=1e-9 * np.abs(g2).max())


def test_zero_head_starts_at_fubini_study(few):
    z, patch, elim = few
    cfg = pn.PhiNetwork(widths=(5, 4), seed=1)
    params = pn.init(cfg, SURFACE)
    frame = _frame(cfg, z, patch, elim)
    np.testing.assert_array_equal(pn.metric(cfg, params, frame), linalg.hermitian_part(frame.g_fs))
    grad = pn.metric_vjp(cfg, params, frame, np.broadcast_to(np.eye(3), (len(z), 3, 3)).astype(complex))
    assert np.abs(grad).max() > 0  # the head's gradient is not zero


def test_standard_and_ntk_parameterisations_agree_at_initialisation(few):
    z, patch, elim = few
    ntk = pn.PhiNetwork(widths=(9, 8), seed=4, zero_head=False)
    std = pn.PhiNetwork(widths=(9, 8), seed=4, zero_head=False, parameterization="standard")
    frame = _frame(ntk, z, patch, elim)
    np.testing.assert_allclose(pn.metric(std, pn.init(std, SURFACE), frame),
                               pn.metric(ntk, pn.init(ntk, SURFACE), frame), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(pn.init(ntk, SURFACE), pn.init(ntk, SURFACE))
    assert pn.num_params(ntk, SURFACE) == pn.init(ntk, SURFACE).shape[0] == 25 * 9 + 9 + 9 * 8 + 8 + 8 + 1


# ----------------------------------------------------------------------------- parameter gradients
def _random_hermitian(rng, n, k=3):
    a = rng.standard_normal((n, k, k)) + 1j * rng.standard_normal((n, k, k))
    return a + np.conj(np.swapaxes(a, 1, 2))


@pytest.mark.parametrize("act", ["gelu", "tanh", "softplus"])
@pytest.mark.parametrize("par", ["ntk", "standard"])
def test_parameter_gradient_equals_central_differences(pts, act, par):
    ds = pts.isel(point=slice(0, 40))
    cfg, params = _net(act, par=par, widths=(8, 7, 6))
    frame = _frame(cfg, ds.z.values, ds.patch.values, ds.elim.values)
    rng = np.random.default_rng(5)
    G = _random_hermitian(rng, 40)

    def L(p):
        return float(np.sum(np.real(np.conj(G) * pn.metric(cfg, p, frame))))

    grad = pn.metric_vjp(cfg, params, frame, G, chunk=13)
    g, pullback = pn.metric_and_pullback(cfg, params, frame)
    np.testing.assert_allclose(pullback(G), grad, rtol=1e-12, atol=1e-14 * np.abs(grad).max())
    np.testing.assert_array_equal(g, pn.metric(cfg, params, frame))
    eps = 1e-5
    for _ in range(3):
        v = rng.standard_normal(params.shape)
        fd = (L(params + eps * v) - L(params - eps * v)) / (2 * eps)
        assert abs(fd - grad @ v) <= 1e-6 * abs(fd)
    scale = np.abs(grad).max()
    for i in rng.choice(len(params), 12, replace=False):  # single coordinates of every kind
        e = np.zeros_like(params)
        e[i] = eps
        fd = (L(params + e) - L(params - e)) / (2 * eps)
        assert abs(fd - grad[i]) <= 1e-6 * max(abs(fd), 1e-2 * scale), (i, fd, grad[i])


def test_gradient_of_the_sigma_squared_loss(pts):
    ds = pts.isel(point=slice(0, 60))
    cfg, params = _net("gelu", par="standard", widths=(8, 8))
    params = 0.05 * params  # a positive-definite metric near g_FS
    frame = _frame(cfg, ds.z.values, ds.patch.values, ds.elim.values)
    data = losses.loss_data(ds.omega2.values, ds.weight.values, frame.g_fs)
    loss = losses.sigma_squared_loss()

    def L(p):
        return losses.total(loss, pn.metric(cfg, p, frame), data)

    g = pn.metric(cfg, params, frame)
    grad = pn.metric_vjp(cfg, params, frame, loss.gradient(g, data)) / data.n  # G(x) = N dL/dg(x)
    v = np.random.default_rng(6).standard_normal(params.shape)
    eps = 1e-6
    fd = (L(params + eps * v) - L(params - eps * v)) / (2 * eps)
    assert abs(fd - grad @ v) <= 1e-6 * abs(fd)


def test_bad_arguments_are_refused(few):
    z, patch, elim = few
    with pytest.raises(ValueError, match="activation"):
        pn.PhiNetwork(activation="relu")
    with pytest.raises(ValueError, match="widths"):
        pn.PhiNetwork(widths=())
    with pytest.raises(ValueError, match="parameterization"):
        pn.PhiNetwork(parameterization="mup")
    with pytest.raises(ValueError, match="k must be"):
        pn.PhiNetwork(k=0)
    cfg, params = _net(k=1)
    frame2 = _frame(pn.PhiNetwork(k=2), z, patch, elim)
    with pytest.raises(ValueError, match="k = 2"):
        pn.metric(cfg, params, frame2)
    with pytest.raises(ValueError, match="flat vector"):
        pn.metric(cfg, params[:-1], _frame(cfg, z, patch, elim))
    with pytest.raises(ValueError, match="G must have shape"):
        pn.metric_vjp(cfg, params, _frame(cfg, z, patch, elim), np.zeros((2, 3, 3), complex))
    with pytest.raises(TypeError, match="SectionFrame"):
        pn.metric(cfg, params, z)
    assert pn.PhiNetwork.from_attrs(cfg.to_attrs()) == cfg


# ----------------------------------------------------------------------------- training
SMALL = pn.PhiNetwork(widths=(12, 12), activation="gelu", parameterization="standard", seed=2)


@pytest.fixture(scope="module")
def split(pts):
    return pts.isel(point=slice(0, 300)), pts.isel(point=slice(300, 400))


def _same_run(a, b):
    for name in a.data_vars:
        if name not in ("time", "cpu_time", "eval_time"):
            np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    assert a.attrs == b.attrs


def test_training_lowers_sigma(split):
    train, test = split
    res = training.train_phi_network(train, SMALL, 4, 32, 2e-2, test=test)
    assert list(res.epoch.values) == [0, 1, 2, 3, 4]
    assert res.sizes["param"] == pn.num_params(SMALL, SURFACE)
    s = res["sigma_train"].values
    assert s[-1] < 0.8 * s[0]
    assert res["sigma_test"].values[-1] < res["sigma_test"].values[0]
    assert np.isnan(res["loss"].values[0]) and np.all(np.isfinite(res["loss"].values[1:]))
    np.testing.assert_allclose(res.attrs["kappa"], losses.make_loss_data(train).kappa, rtol=1e-12)
    # the recorded sigma is that of the returned parameters
    g = training.phi_network_metric(res, test)
    sigma = mf.geometry.measures.sigma(linalg.hermitian_det(g), test.omega2.values, test.weight.values)
    np.testing.assert_allclose(sigma, res["sigma_test"].values[-1], rtol=1e-12)


def test_the_thread_count_does_not_change_the_numbers(split):
    train, _ = split
    a = training.train_phi_network(train, SMALL, 2, 100, 3e-3, loss="sigma_squared", threads=1)
    b = training.train_phi_network(train, SMALL, 2, 100, 3e-3, loss="sigma_squared", threads=2)
    _same_run(a, b)


def test_an_interrupted_run_resumes_with_identical_results(split, tmp_path, monkeypatch):
    train, test = split
    kw = {"batch": 48, "lr": 4e-3, "test": test, "seed": 3, "lr_decay": 0.8}
    full = training.train_phi_network(train, SMALL, 5, **kw)

    # a run stopped after 2 epochs, continued to 5
    ck = tmp_path / "ck"
    training.train_phi_network(train, SMALL, 2, checkpoint=ck, **kw)
    assert training.read_checkpoint(ck).attrs["epochs"] == 2
    _same_run(full, training.train_phi_network(train, SMALL, 5, checkpoint=ck, **kw))

    # a run killed in the middle of epoch 3: resumes from epoch 2
    ck2 = tmp_path / "ck2"
    real_update = training.optim.adam

    def dying_adam(lr):
        init, update = real_update(lr)
        per_epoch = -(-300 // 48)

        def update_or_die(grad, state):
            if state.step == 2 * per_epoch + 3:
                raise KeyboardInterrupt("killed")
            return update(grad, state)

        return init, update_or_die

    monkeypatch.setattr(training.optim, "adam", dying_adam)
    with pytest.raises(KeyboardInterrupt):
        training.train_phi_network(train, SMALL, 5, checkpoint=ck2, **kw)
    monkeypatch.setattr(training.optim, "adam", real_update)
    assert training.read_checkpoint(ck2).attrs["epochs"] == 2
    _same_run(full, training.train_phi_network(train, SMALL, 5, checkpoint=ck2, **kw))

    # the latest slot interrupted while being written: the other, complete one is used
    zarr.open_group(str(ck2 / training.SLOTS[5 % 2]), mode="r+").attrs["mfarray_complete"] = False
    assert training.read_checkpoint(ck2).attrs["epochs"] == 4
    _same_run(full, training.train_phi_network(train, SMALL, 5, checkpoint=ck2, **kw))

    # a finished run is returned as it is; another run's checkpoint is refused
    _same_run(full, training.train_phi_network(train, SMALL, 5, checkpoint=ck, **kw))
    with pytest.raises(ValueError, match="another run"):
        training.train_phi_network(train, SMALL, 5, checkpoint=ck, **{**kw, "lr": 1e-3})
    with pytest.raises(ValueError, match="more than epochs"):
        training.train_phi_network(train, SMALL, 3, checkpoint=ck, **kw)


def test_training_refuses_bad_arguments(split):
    train, _ = split
    with pytest.raises(ValueError, match="loss must be one of"):
        training.train_phi_network(train, SMALL, 1, 32, 1e-3, loss="mse")
    with pytest.raises(ValueError, match="epochs"):
        training.train_phi_network(train, SMALL, 0, 32, 1e-3)
    with pytest.raises(ValueError, match="lacks"):
        training.train_phi_network(train.drop_vars("omega2"), SMALL, 1, 32, 1e-3)
    with pytest.raises(TypeError, match="PhiNetwork"):
        training.train_phi_network(train, {"widths": (4,)}, 1, 32, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        training.train_phi_network(train, SMALL, 1, 32, 0.0)
    with pytest.raises(ValueError, match="lr_decay"):
        training.train_phi_network(train, SMALL, 1, 32, 1e-3, lr_decay=1.5)


def test_a_workspace_gives_the_same_numbers_and_guards_its_pullbacks(pts):
    cfg, params = _net("tanh", par="standard", widths=(8, 7))
    G = _random_hermitian(np.random.default_rng(7), 30)
    frames = [_frame(cfg, pts.z.values[i:i + 30], pts.patch.values[i:i + 30], pts.elim.values[i:i + 30])
              for i in (0, 30)]
    ws = pn.Workspace()
    for frame in frames:  # the second block reuses the first one's arrays
        g, pullback = pn.metric_and_pullback(cfg, params, frame, workspace=ws)
        g0, pullback0 = pn.metric_and_pullback(cfg, params, frame)
        np.testing.assert_array_equal(g, g0)
        np.testing.assert_array_equal(pullback(G), pullback0(G))
        np.testing.assert_array_equal(pn.metric(cfg, params, frame, workspace=pn.Workspace()), g0)
    _, stale = pn.metric_and_pullback(cfg, params, frames[0], workspace=ws)
    pn.metric(cfg, params, frames[1], workspace=ws)
    with pytest.raises(RuntimeError, match="another forward pass"):
        stale(G)


# ----------------------------------------------------------------------------- forward mode in the parameters
@pytest.mark.parametrize("act", ["gelu", "tanh", "softplus"])
@pytest.mark.parametrize("par", ["ntk", "standard"])
def test_metric_jvp_equals_central_differences(pts, act, par):
    ds = pts.isel(point=slice(0, 30))
    cfg, params = _net(act, par=par, widths=(8, 7, 6))
    frame = _frame(cfg, ds.z.values, ds.patch.values, ds.elim.values)
    rng = np.random.default_rng(8)
    eps = 1e-5
    for _ in range(3):
        v = rng.standard_normal(params.shape)
        dg = pn.metric_jvp(cfg, params, frame, v, chunk=11)
        fd = (pn.metric(cfg, params + eps * v, frame) - pn.metric(cfg, params - eps * v, frame)) / (2 * eps)
        assert dg.shape == fd.shape == (30, 3, 3)
        np.testing.assert_allclose(dg, fd, rtol=0, atol=1e-7 * np.abs(fd).max())
        np.testing.assert_array_equal(dg, np.conj(np.swapaxes(dg, 1, 2)))  # exactly Hermitian
        dphi = pn.phi_jvp(cfg, params, frame, v)
        fd_phi = (pn.phi(cfg, params + eps * v, frame) - pn.phi(cfg, params - eps * v, frame)) / (2 * eps)
        np.testing.assert_allclose(dphi, fd_phi, rtol=0, atol=1e-8 * np.abs(fd_phi).max())


def test_metric_jvp_is_the_transpose_of_the_vjp(pts):
    """<G, J v> = <J^T G, v> with <A, B> = sum Re tr(A^dagger B): to rounding, over random pairs."""
    ds = pts.isel(point=slice(0, 50))
    cfg, params = _net("gelu", widths=(9, 8))
    frame = _frame(cfg, ds.z.values, ds.patch.values, ds.elim.values)
    rng = np.random.default_rng(9)
    for _ in range(4):
        G, v = _random_hermitian(rng, 50), rng.standard_normal(params.shape)
        lhs = float(np.sum(np.real(np.conj(G) * pn.metric_jvp(cfg, params, frame, v))))
        rhs = float(pn.metric_vjp(cfg, params, frame, G) @ v)
        assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + abs(rhs))
        c = rng.standard_normal(50)
        lhs, rhs = c @ pn.phi_jvp(cfg, params, frame, v), pn.phi_vjp(cfg, params, frame, c) @ v
        assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + abs(rhs))


def test_metric_jvp_refuses_a_wrong_direction(few):
    cfg, params = _net()
    frame = _frame(cfg, few[0], few[1], few[2])
    with pytest.raises(ValueError, match="dparams"):
        pn.metric_jvp(cfg, params, frame, params[:-1])
    with pytest.raises(ValueError, match="dparams"):
        pn.metric_jvp(cfg, params, frame, np.ones(params.shape, dtype=np.complex128))


def test_widths_must_be_integers():
    """A string or fractional widths were truncated silently ("64" -> (6, 4), 4.7 -> 4)."""
    for widths in ("64", (4.7, 2.2), (8, 2.5), (8, 4.0), (True,), 8):
        with pytest.raises((TypeError, ValueError), match="widths"):
            pn.PhiNetwork(widths=widths)
    assert pn.PhiNetwork(widths=[np.int64(8), 4]).widths == (8, 4)
    assert pn.PhiNetwork(widths=np.array([5, 3])).widths == (5, 3)


def test_points_of_another_surface_or_not_finite_are_refused(split):
    """train_phi_network and phi_network_metric refuse points that are empty, not finite or on
    another surface than the network was trained on, naming the argument (not an internal g0, a
    NaN metric passed on, or a shape error inside)."""
    train, test = split
    res = training.train_phi_network(train, SMALL, 1, 64, 1e-3)
    dwork = mf.sample_points(mf.dwork_quintic(0.5), 20, seed=1).compute()
    k3 = mf.sample_points(mf.quartic_k3(), 20, seed=1).compute()
    for other in (dwork, k3):
        with pytest.raises(ValueError, match="`points` lie on .* another surface than the network's train points"):
            training.phi_network_metric(res, other)
    with pytest.raises(ValueError, match="points holds no points"):
        training.phi_network_metric(res, test.isel(point=slice(0, 0)))
    with pytest.raises(ValueError, match="points of `test` lie on .* another surface than the train points"):
        training.train_phi_network(train, SMALL, 1, 64, 1e-3, test=dwork)
    bad = test.copy(deep=True)
    bad["z"].values[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"points\.z has non-finite entries"):
        training.phi_network_metric(res, bad)
    with pytest.raises(ValueError, match=r"test\.z has non-finite entries"):
        training.train_phi_network(train, SMALL, 1, 64, 1e-3, test=bad)
    badtrain = train.copy(deep=True)
    badtrain["z"].values[3, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # refused before numpy warns about the NaN
        with pytest.raises(ValueError, match=r"train\.z has non-finite entries"):
            training.train_phi_network(badtrain, SMALL, 1, 64, 1e-3)
    badw = train.copy(deep=True)
    badw["weight"].values[0] = np.inf
    with pytest.raises(ValueError, match=r"train\.weight has non-finite entries"):
        training.train_phi_network(badw, SMALL, 1, 64, 1e-3)


def test_a_kill_while_a_checkpoint_slot_is_replaced_does_not_block_the_run(split, tmp_path, killed_after):
    """A kill at any file while a checkpoint replaces its slot (to_zarr overwrite) leaves a slot the
    next write replaces, and the resumed run gives the numbers of an uninterrupted one (a kill
    there blocked every later run with FileExistsError).  A user's file in a slot is never removed."""
    train, _ = split
    kw = {"batch": 64, "lr": 4e-3, "seed": 1}
    full = training.train_phi_network(train, SMALL, 4, **kw)
    for kill_at in (0, 3, 9):
        ck = tmp_path / f"ck{kill_at}"
        training.train_phi_network(train, SMALL, 2, checkpoint=ck, **kw)  # even: epoch 2, odd: epoch 1
        with killed_after(kill_at), pytest.raises(KeyboardInterrupt):  # while epoch 3 replaces epoch 1
            training.train_phi_network(train, SMALL, 4, checkpoint=ck, **kw)
        assert training.read_checkpoint(ck).attrs["epochs"] == 2
        _same_run(full, training.train_phi_network(train, SMALL, 4, checkpoint=ck, **kw))
        assert training.read_checkpoint(ck).attrs["epochs"] == 4

    ck = tmp_path / "foreign"
    training.train_phi_network(train, SMALL, 2, checkpoint=ck, **kw)
    (ck / "odd.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="odd.zarr"):
        training.train_phi_network(train, SMALL, 4, checkpoint=ck, **kw)
    assert (ck / "odd.zarr" / "notes.txt").read_text() == "mine"


def test_the_degree_has_the_section_models_cap():
    """PhiNetwork(k=13) was accepted where SectionPotential stops at k = 12 (n_s = 1490 on the quintic)."""
    from mfarray.kahler.sections import MAX_DEGREE

    pn.PhiNetwork(k=MAX_DEGREE)
    with pytest.raises(ValueError, match=rf"k must be an integer in \[1, {MAX_DEGREE}\]"):
        pn.PhiNetwork(k=MAX_DEGREE + 1)
