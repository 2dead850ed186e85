"""The linear phi-model g = g_FS + i dd-bar phi (Appendix B) and its flow: sections modulo p,
i dd-bar against finite differences in every chart, one tensor in every chart, Kähler, projective
invariance, the frozen phi-NTK flow against its closed form, predictions in any chart."""

import functools
import math

import numpy as np
import pytest

import mfarray as mf
from mfarray import linalg, losses
from mfarray.flows.integrate import StepControl, integrate
from mfarray.flows.models import PotentialModel
from mfarray.flows.sites import materialize
from mfarray.geometry import local
from mfarray.kahler import (
    SectionPotential,
    phi_features,
    phi_metric,
    phi_values,
    section_frame,
)
from mfarray.kahler import sections as S

QUINTIC = mf.fermat_quintic()


@functools.cache
def _points(n, seed, surface_name="quintic"):
    surface = mf.geometry.surface_named(surface_name)
    return mf.sample_points(surface, n, seed=seed).compute()


def _random_hermitian(n, seed, scale):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))
    return scale * (a + a.conj().T) / 2


# ----------------------------------------------------------------------------- sections
@pytest.mark.parametrize("k, count", [(1, 5), (2, 15), (3, 35), (4, 70), (5, 125), (6, 205), (7, 315), (8, 460)])
def test_quintic_section_counts_are_the_hilbert_function(k, count):
    assert S.section_count(QUINTIC, k) == count == math.comb(k + 4, 4) - math.comb(k - 1, 4)


def test_sections_modulo_p_are_a_basis_on_x():
    """The 126 monomials of degree 5 are dependent on X (p itself); the 125 kept ones are not."""
    z = _points(400, 3).z.values
    full = S.sections(z, S.monomials(5, 5))
    kept = S.sections(z, S.section_exponents(QUINTIC, 5))
    assert np.linalg.matrix_rank(full / np.abs(full).max(1, keepdims=True), tol=1e-9) == 125
    assert np.linalg.matrix_rank(kept / np.abs(kept).max(1, keepdims=True), tol=1e-9) == 125
    dwork = mf.dwork_quintic(0.5)
    assert S.leading_monomial(dwork) == (5, 0, 0, 0, 0)


def test_section_gradient_matches_finite_differences():
    z = _points(5, 4).z.values
    e = S.section_exponents(QUINTIC, 3)
    _, ds = S.section_gradient(z, e)
    h = 1e-6
    for i in range(5):
        dz = np.zeros(5, complex)
        dz[i] = h
        fd = (S.sections(z + dz, e) - S.sections(z - dz, e)) / (2 * h)
        np.testing.assert_allclose(ds[..., i], fd, rtol=1e-7, atol=1e-9)


def test_normalised_sections_are_projectively_invariant():
    """s_hat(lambda z) = (lambda/|lambda|)^k s_hat(z): every bilinear s_hat s_hat^dagger is invariant."""
    z = _points(20, 5).z.values
    e = S.section_exponents(QUINTIC, 4)
    lam = 0.3 * np.exp(1.1j) * (1 + np.arange(20))[:, None]

    def outer(zz):
        s = S.sections(zz, e) / np.linalg.norm(zz, axis=1)[:, None] ** 4
        return s[:, :, None] * s.conj()[:, None, :]

    np.testing.assert_allclose(outer(lam * z), outer(z), atol=1e-14)


# ----------------------------------------------------------------------------- i dd-bar
def _move(surface, geo, i, x):
    """The point of X with local coordinates x in point i's chart (Newton on the eliminated one)."""
    za = geo.z[i].copy()
    za[geo.local[i]] = x
    e = geo.elim[i]
    for _ in range(50):
        step = surface(za[None])[0] / surface.gradient(za[None])[0][e]
        za[e] -= step
        if abs(step) < 1e-16:
            break
    return za


def _ddbar_fd(f, x0, h=1e-3):
    """d_a dbar_b f (complex local coordinates) by central differences of the real function f."""
    kd = len(x0)
    out = np.zeros((kd, kd), complex)

    def d2(u, v):
        return (f(x0 + h * (u + v)) - f(x0 + h * (u - v)) - f(x0 - h * (u - v)) + f(x0 - h * (u + v))) / (4 * h * h)

    for a in range(kd):
        for b in range(kd):
            ea, eb = np.eye(kd)[a], np.eye(kd)[b]
            xx, yy, xy, yx = d2(ea, eb), d2(1j * ea, 1j * eb), d2(ea, 1j * eb), d2(1j * ea, eb)
            out[a, b] = 0.25 * ((xx + yy) + 1j * (xy - yx))
    return out


def _balanced_point(seed):
    """A point of the Fermat quintic with all |z_i| within a factor 1.3: every one of its 20
    charts is well conditioned (|dp/dz_j| = 5 |z_j|^4 comparable), so finite differences in
    local coordinates are accurate in all of them (in a chart with slopes ~100 they lose 4
    digits to rounding; the chart-transition test covers those charts)."""
    rng = np.random.default_rng(seed)
    while True:
        z = np.exp(2j * np.pi * rng.random(4))
        rest = -np.sum(z**5)
        if 0.5 < abs(rest) < 1.5:
            return np.append(z, rest ** 0.2)[None]


def test_ddbar_phi_equals_finite_differences_in_every_chart():
    e = S.section_exponents(QUINTIC, 2)
    H = _random_hermitian(len(e), 0, 0.1)
    z = _balanced_point(6)
    worst = 0.0
    for patch, elim in [(np.array([p]), np.array([q])) for p in range(5) for q in range(5) if p != q]:
        frame = section_frame(QUINTIC, z, e, patch, elim)
        analytic = phi_metric(frame, H, g0=0.0)[0]
        geo = local.chart_geometry(QUINTIC, z, patch, elim)

        def phi(x, geo=geo, chart=(patch, elim)):
            zz = _move(QUINTIC, geo, 0, x)[None]
            return phi_values(section_frame(QUINTIC, zz, e, *chart), H)[0]

        x0, h = geo.z[0][geo.local[0]], 1e-3
        fd = (4 * _ddbar_fd(phi, x0, h / 2) - _ddbar_fd(phi, x0, h)) / 3  # Richardson: O(h^4)
        worst = max(worst, np.abs(fd - analytic).max() / np.abs(analytic).max())
    assert worst < 1e-7


def test_phi_metric_is_one_tensor_in_every_chart():
    """g computed in each point's chart and moved by the chart transition equals g computed in
    the target chart (mfarray.to_chart: an independent code path through charts.chart_transition)."""
    ds = _points(200, 7)
    pot = SectionPotential(3)
    theta = linalg.hermitian_to_real(_random_hermitian(35, 1, 0.05))
    g_own = pot.metric(theta, pot.prepare(QUINTIC, ds.z.values, ds.patch.values, ds.elim.values))
    moved = mf.to_chart(ds, g_own, 0, 1).values
    there = mf.express_in_chart(ds, 0, 1)
    g_there = pot.metric(theta, pot.prepare(QUINTIC, there.z.values, there.patch.values, there.elim.values))
    scale = np.abs(g_there).max(axis=(1, 2))[:, None, None]
    assert np.abs((moved - g_there) / scale).max() < 1e-9


def test_phi_metric_is_kahler():
    """dJ = 0: d_c g_{a bbar} = d_a g_{c bbar} (finite differences along the chart)."""
    ds = _points(3, 8)
    pot = SectionPotential(2)
    theta = linalg.hermitian_to_real(_random_hermitian(15, 2, 0.1))
    z = ds.z.values[:1]
    geo = local.chart_geometry(QUINTIC, z)

    def g_at(x):
        zz = _move(QUINTIC, geo, 0, x)[None]
        return pot.metric(theta, pot.prepare(QUINTIC, zz, geo.patch, geo.elim))[0]

    x0, h, kd = geo.z[0][geo.local[0]], 1e-5, 3
    dg = []  # dg[c][a, b] = d_c g_{a bbar} = (d_x - i d_y)/2
    for c in range(kd):
        ec = np.eye(kd)[c]
        dx = (g_at(x0 + h * ec) - g_at(x0 - h * ec)) / (2 * h)
        dy = (g_at(x0 + 1j * h * ec) - g_at(x0 - 1j * h * ec)) / (2 * h)
        dg.append((dx - 1j * dy) / 2)
    dg = np.array(dg)  # (c, a, b)
    assert np.abs(dg).max() > 1e-2  # the metric does vary
    np.testing.assert_allclose(dg, dg.transpose(1, 0, 2), atol=1e-8 * np.abs(dg).max())
    # and a non-Kähler perturbation (adding x_1 to one entry) would fail the same check


def _second_charts(surface, z):
    """Each point's patch with its second-best eliminated coordinate (the next largest |dp/dz_j|):
    another chart, still well conditioned (a fixed chart such as (2, 4) is not at every point)."""
    geo = local.chart_geometry(surface, z)
    dp = np.abs(surface.gradient(geo.z))
    dp[np.arange(len(z)), geo.patch] = -1
    dp[np.arange(len(z)), geo.elim] = -1
    return geo.patch, np.argmax(dp, axis=1)


def test_sigma_does_not_depend_on_which_charts_the_points_use():
    ds = _points(300, 9)
    pot = SectionPotential(2)
    theta = linalg.hermitian_to_real(_random_hermitian(15, 3, 0.05))
    z, w = ds.z.values, ds.weight.values

    def sigma(patch, elim):
        geo = local.chart_geometry(QUINTIC, z, patch, elim)
        g = pot.metric(theta, pot.prepare(QUINTIC, z, patch, elim))
        return mf.geometry.measures.sigma(linalg.hermitian_det(g), geo.omega2, w)

    patch, elim = _second_charts(QUINTIC, z)
    assert np.all(elim != ds.elim.values)
    assert abs(sigma(ds.patch.values, ds.elim.values) - sigma(patch, elim)) < 1e-12
    assert sigma(patch, elim) > 0.1


def test_features_carry_phi_and_the_vjp_is_the_adjoint():
    ds = _points(50, 10)
    pot = SectionPotential(2)
    frame = pot.prepare(QUINTIC, ds.z.values, ds.patch.values, ds.elim.values)
    theta = np.random.default_rng(4).normal(size=pot.size(QUINTIC))
    np.testing.assert_allclose(phi_features(frame) @ theta, phi_values(frame, pot.hermitian(theta, frame)),
                               atol=1e-13)
    G = linalg.real_to_hermitian(np.random.default_rng(5).normal(size=(50, 9)), 3)
    d = np.random.default_rng(6).normal(size=theta.shape)
    lhs = np.sum(np.real(np.conj(G) * pot.ddbar(d, frame)))  # <G, J d>
    assert abs(lhs - pot.vjp(theta, frame, G) @ d) < 1e-12 * abs(lhs) + 1e-14


# ----------------------------------------------------------------------------- flows
def test_phi_ntk_flow_with_mse_matches_its_closed_form():
    """theta <- theta - lr J^T G with G = 2 w (g - target): r_t = (I - 2 lr J J^T W)^t r_0."""
    ds = _points(30, 11)
    tr = materialize(ds, one_chart=False)[0]
    pot = SectionPotential(1)
    frame = pot.prepare(QUINTIC, tr.z, tr.patch, tr.elim)
    P = pot.size(QUINTIC)
    J = np.stack([linalg.to_rows(pot.ddbar(np.eye(P)[j], frame)).ravel() for j in range(P)], axis=1)
    target = 1.2 * tr.g_fs
    data = losses.loss_data(tr.omega2, tr.weight, tr.g_fs, target=target)
    lr, steps = 0.02, 25
    model = PotentialModel(pot, pot.init(QUINTIC), frame)
    traj = integrate(model, losses.mse_loss(), data, StepControl(lr=lr, adaptive=False), steps, tr)
    W = np.kron(np.eye(9), np.diag(tr.weight))  # rows are (component, point), flattened row-major
    r0 = (linalg.to_rows(tr.g_fs) - linalg.to_rows(target)).ravel()
    rt = np.linalg.matrix_power(np.eye(len(r0)) - 2 * lr * J @ J.T @ W, steps) @ r0
    got = traj.train.rows.ravel() - linalg.to_rows(target).ravel()
    np.testing.assert_allclose(got, rt, atol=1e-12 * np.abs(r0).max())
    assert np.abs(rt - r0).max() > 0.1 * np.abs(r0).max()  # it moved


def test_kahler_flow_uses_every_point_and_predicts_any_chart():
    train = mf.sample_points(QUINTIC, 600, seed=12)  # lazy, mixed charts
    test = mf.sample_points(QUINTIC, 400, seed=13)
    assert len(mf.chart_counts(train)) > 1
    r = mf.kahler_flow(train, 2, steps=15, test=test)
    assert r.sizes["point"] == 600 and r.attrs["chart"] == "own"
    assert r.sigma_train.values[-1] < 0.5 * r.sigma_train.values[0]
    assert r.sigma_test.values[-1] < 0.7 * r.sigma_test.values[0]
    g = mf.predict(r, test)
    np.testing.assert_allclose(g.values, r.g_test.values, atol=1e-13)
    tame = test.compute()
    tame = tame.isel(point=np.flatnonzero((tame.patch.values == 1) & (np.abs(tame.z.values[:, 0]) > 0.6)))
    moved = mf.predict(r, mf.express_in_chart(tame, 1, 0))  # the same points in another chart
    g_own = r.g_test.sel(test_point=tame.point.values).values
    np.testing.assert_allclose(mf.to_chart(tame, g_own, 1, 0).values, moved.values, rtol=1e-9,
                               atol=1e-12 * np.abs(moved.values).max())
    ev = mf.evaluate(r)
    assert float(ev.gain_test) > 1.4


def test_kahler_flow_refuses_bad_models():
    train = _points(20, 14)
    with pytest.raises(TypeError, match="Kähler potential spec"):
        mf.kahler_flow(train, "quadratic", steps=1)
    with pytest.raises(ValueError, match="k must be an integer"):
        SectionPotential(0)
    with pytest.raises(ValueError, match="theta0 must have shape"):
        mf.kahler_flow(train, 1, steps=1, theta0=np.zeros(3))


def test_cosine_features_ddbar_equals_finite_differences_and_flow():
    """The cosine-net phi-model: i dd-bar of each feature against finite differences in local
    coordinates (two charts), projective invariance, and a flow that lowers sigma and predicts."""
    from mfarray.kahler import CosinePotential

    pot = CosinePotential(n_features=64, scale=2.0, seed=1)
    theta = np.random.default_rng(7).normal(size=64) * 0.05
    z = _balanced_point(8)
    for patch, elim in [(np.array([0]), np.array([1])), (np.array([3]), np.array([2]))]:
        data = pot.prepare(QUINTIC, z, patch, elim)
        analytic = pot.ddbar(theta, data)[0]
        geo = local.chart_geometry(QUINTIC, z, patch, elim)

        def phi(x, geo=geo, chart=(patch, elim)):
            return pot.values(theta, pot.prepare(QUINTIC, _move(QUINTIC, geo, 0, x)[None], *chart))[0]

        x0, h = geo.z[0][geo.local[0]], 1e-3
        fd = (4 * _ddbar_fd(phi, x0, h / 2) - _ddbar_fd(phi, x0, h)) / 3
        assert np.abs(fd - analytic).max() < 1e-7 * np.abs(analytic).max()
    lam = 0.7 * np.exp(0.4j)
    d1, d2 = (pot.prepare(QUINTIC, zz, np.array([0]), np.array([1])) for zz in (z, lam * z))
    np.testing.assert_allclose(pot.values(theta, d1), pot.values(theta, d2), atol=1e-14)
    train, test = _points(1500, 15), _points(400, 16)
    r = mf.kahler_flow(train, CosinePotential(n_features=512, scale=1.0), steps=10, test=test)
    assert r.sigma_test.values[-1] < 0.85 * r.sigma_test.values[0]
    np.testing.assert_allclose(mf.predict(r, test).values, r.g_test.values, atol=1e-13)


def test_cosine_potential_takes_numpy_scalars():
    from mfarray.kahler import CosinePotential

    assert CosinePotential(8, scale=np.float32(1.5)).describe()["scale"] == 1.5
    assert CosinePotential(np.int64(8), scale=np.int32(2)).describe()["scale"] == 2.0
    for scale in (np.float32(np.nan), np.float64(-1.0), "1", True):
        with pytest.raises(ValueError, match="scale must be"):
            CosinePotential(8, scale=scale)
