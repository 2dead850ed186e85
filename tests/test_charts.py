"""Charts, Omega and the pulled-back Fubini-Study metric, against independent computations."""

import numpy as np
import pytest

import mfarray as mf
from mfarray.geometry import charts, fubini_study
from mfarray.geometry.local import chart_geometry
from conftest import random_polynomial


def _points(surface, n=60, seed=3):
    return mf.sample_points(surface, n, seed=seed).z.values


def _embed(surface, z0, patch, elim, local, x):
    """z(x) in chart (patch, elim): local coords x, z_patch = 1, z_elim solved by Newton."""
    z = z0.copy()
    z[local] = x
    for _ in range(30):
        p, dp = surface.value_and_gradient(z[None])
        z[elim] -= p[0] / dp[0, elim]
    return z


def _fs_from_kahler_potential(surface, z0, patch, elim, local, h=1e-4):
    """g_{b cbar} = d_b dbar_c log|z(x)|^2 by central finite differences in the 2k real coords."""
    k = len(local)
    x0 = z0[local]

    def K(x):
        z = _embed(surface, z0, patch, elim, local, x)
        return np.log(np.sum(np.abs(z) ** 2))

    def d2(e1, e2):
        return (K(x0 + h * e1 + h * e2) - K(x0 + h * e1 - h * e2) - K(x0 - h * e1 + h * e2)
                + K(x0 - h * e1 - h * e2)) / (4 * h * h)

    basis = np.eye(k)
    g = np.zeros((k, k), dtype=complex)
    for b in range(k):
        for c in range(k):
            xb, yb, xc, yc = basis[b], 1j * basis[b], basis[c], 1j * basis[c]
            # d_b dbar_c = 1/4 (d_xb - i d_yb)(d_xc + i d_yc)
            g[b, c] = 0.25 * (d2(xb, xc) + 1j * d2(xb, yc) - 1j * d2(yb, xc) + d2(yb, yc))
    return g


@pytest.mark.parametrize("surface", [mf.fermat_quintic(), mf.cubic_curve(), random_polynomial(3, 4, 7)])
def test_pulled_back_fs_metric_is_ddbar_log_norm_squared(surface):
    z = _points(surface, 4)
    geo = chart_geometry(surface, z)
    for i in range(len(z)):
        g_fd = _fs_from_kahler_potential(surface, geo.z[i], geo.patch[i], geo.elim[i], geo.local[i])
        assert np.allclose(geo.g_fs[i], g_fd, atol=2e-6 * np.abs(g_fd).max()), (geo.g_fs[i], g_fd)


def test_closed_form_pullback_equals_matrix_pullback():
    X = random_polynomial(4, 5, 11)
    z = _points(X, 50)
    geo = chart_geometry(X, z)
    jac = charts.embedding_jacobian(X.n_ambient, geo.elim, geo.local, geo.slopes)
    g = fubini_study.pullback(jac, fubini_study.fs_metric_ambient(geo.z))
    assert np.allclose(g, geo.g_fs, rtol=1e-12, atol=1e-14)
    assert np.allclose(fubini_study.hermitian_det(g), np.linalg.det(g).real, rtol=1e-12)
    # Hermitian and positive definite
    assert np.allclose(g, np.conj(np.swapaxes(g, -1, -2)))
    assert np.all(np.linalg.eigvalsh(g) > 0)


def test_implicit_slopes_match_finite_differences():
    X = mf.fermat_quintic()
    z = _points(X, 3)
    geo = chart_geometry(X, z)
    h = 1e-6
    for i in range(3):
        for b, j in enumerate(geo.local[i]):
            e = np.zeros(3, dtype=complex)
            e[b] = h
            zp = _embed(X, geo.z[i], geo.patch[i], geo.elim[i], geo.local[i], geo.z[i][geo.local[i]] + e)
            zm = _embed(X, geo.z[i], geo.patch[i], geo.elim[i], geo.local[i], geo.z[i][geo.local[i]] - e)
            fd = (zp[geo.elim[i]] - zm[geo.elim[i]]) / (2 * h)
            assert abs(fd - geo.slopes[i, b]) < 1e-7 * max(1, abs(fd))


def test_paper_chart_choice():
    X = mf.fermat_quintic()
    z = _points(X, 200)
    geo = chart_geometry(X, z)
    assert np.allclose(np.abs(geo.z).max(axis=1), 1.0)
    assert np.allclose(geo.z[np.arange(200), geo.patch], 1.0)
    dp = np.abs(X.gradient(geo.z))
    dp[np.arange(200), geo.patch] = -1
    assert np.array_equal(geo.elim, dp.argmax(axis=1))
    # the eliminated coordinate gives the smallest |Omega|^2 among the valid choices
    for e in range(5):
        mask = geo.patch != e
        other = chart_geometry(X, z[mask], patch=geo.patch[mask], elim=np.full(mask.sum(), e))
        assert np.all(geo.omega2[mask] <= other.omega2 * (1 + 1e-12))


def _all_charts(n1):
    return [(a, e) for a in range(n1) for e in range(n1) if a != e]


@pytest.mark.parametrize("surface", [mf.fermat_quintic(), mf.quartic_k3(), mf.dwork_quintic(0.4 + 0.1j)])
def test_weight_and_eta_ratio_do_not_depend_on_the_chart(surface):
    z = _points(surface, 40)
    ref = chart_geometry(surface, z)
    w_ref = ref.omega2 / ref.det_g_fs
    # a chart where z_patch or dp/dz_elim is tiny is ill-conditioned: its metric has eigenvalues
    # spread by (max|dp|/|dp_elim|)^2 and det g loses that many digits; compare where it is tame
    za = np.abs(ref.z)
    dp = np.abs(ref.dp)
    checked = 0
    for a, e in _all_charts(surface.n_ambient):
        geo = chart_geometry(surface, z, patch=a, elim=e)
        tame = (za[:, a] > 0.2) & (dp[:, e] / dp.max(axis=1) > 0.05)
        ratio = geo.omega2 / geo.det_g_fs
        assert np.allclose(ratio[tame], w_ref[tame], rtol=1e-9), (a, e)
        assert np.all(np.isfinite(ratio)) and np.all(ratio > 0)
        checked += tame.sum()
    assert checked > 5 * len(z)


def test_to_chart_reproduces_the_metric_computed_in_that_chart(quintic_points):
    ds = quintic_points.isel(point=slice(0, 300))
    X = mf.surface_of(ds)
    for a, e in [(0, 1), (3, 2), (4, 0)]:
        moved = mf.to_chart(ds, None, a, e).values
        direct = chart_geometry(X, ds.z.values, patch=a, elim=e).g_fs
        scale = np.abs(direct).max(axis=(1, 2), keepdims=True)
        assert np.all(np.abs(moved - direct) <= 1e-10 * scale)


def test_to_chart_keeps_det_over_omega2_for_any_metric(quintic_points):
    ds = quintic_points.isel(point=slice(0, 200))
    X = mf.surface_of(ds)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((200, 3, 3)) + 1j * rng.standard_normal((200, 3, 3))
    g = ds.g_fs.values + 0.05 * A @ np.conj(np.swapaxes(A, 1, 2))  # another Hermitian metric
    ratio = np.linalg.det(g).real / ds.omega2.values
    za, dp = np.abs(ds.z.values), np.abs(X.gradient(ds.z.values))
    for a, e in [(1, 0), (2, 4)]:
        moved = mf.to_chart(ds, g, a, e).values
        om = chart_geometry(X, ds.z.values, patch=a, elim=e).omega2
        tame = (za[:, a] > 0.2) & (dp[:, e] / dp.max(axis=1) > 0.05)  # see the test above
        assert tame.sum() > 50
        assert np.allclose((np.linalg.det(moved).real / om)[tame], ratio[tame], rtol=1e-9)
    # and a round trip through another chart comes back
    there = mf.to_chart(ds, g, 1, 0).values
    fake = ds.assign(patch=ds.patch * 0 + 1, elim=ds.elim * 0)
    back = np.stack([
        mf.to_chart(fake.isel(point=[i]), there[[i]], int(a), int(e)).values[0]
        for i, (a, e) in enumerate(zip(ds.patch.values[:20], ds.elim.values[:20]))
    ])
    assert np.allclose(back, g[:20], rtol=1e-9, atol=1e-12)


def test_to_chart_refuses_bad_charts(quintic_points):
    with pytest.raises(ValueError, match="differ"):
        mf.to_chart(quintic_points, None, 1, 1)
    with pytest.raises(ValueError, match="patch must be an integer"):
        mf.to_chart(quintic_points, None, 7, 1)
    with pytest.raises(ValueError, match="shape"):
        mf.to_chart(quintic_points, np.zeros((3, 3, 3)), 0, 1)
    # a chart whose patch coordinate vanishes at a point is singular there
    X = mf.fermat_quintic()
    z = np.array([[0, 1, -1, 0, 0]], dtype=complex)  # on X, z_0 = 0
    ds = mf.points_from_z(X, z)
    with pytest.raises(ValueError, match="singular"):
        mf.to_chart(ds, None, 0, 3)


def test_express_in_chart_moves_every_point_into_one_chart(quintic_points):
    ds = quintic_points.isel(point=slice(0, 400))
    X = mf.surface_of(ds)
    one = mf.express_in_chart(ds, 2, 0)
    assert np.all(one.patch.values == 2) and np.all(one.elim.values == 0)
    assert np.allclose(one.z.values[:, 2], 1.0)
    # the metric is the one to_chart produces, and weights are unchanged
    assert np.allclose(one.g_fs.values, mf.to_chart(ds, None, 2, 0).values, rtol=1e-9, atol=1e-12)
    assert np.array_equal(one.weight.values, ds.weight.values)
    za, dp = np.abs(ds.z.values), np.abs(X.gradient(ds.z.values))
    tame = (za[:, 2] > 0.2) & (dp[:, 0] / dp.max(axis=1) > 0.05)
    ratio_own = ds.det_g_fs.values / ds.omega2.values
    ratio_one = one.det_g_fs.values / one.omega2.values
    assert np.allclose(ratio_one[tame], ratio_own[tame], rtol=1e-9)
    # lazy input stays lazy
    lazy = mf.express_in_chart(mf.sample_points(X, 100, seed=1, chunk_size=40), 0, 1)
    assert hasattr(lazy.g_fs.data, "dask")
    with pytest.raises(ValueError, match="differ"):
        mf.express_in_chart(ds, 1, 1)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_hermitian_det_matches_lu(k):
    rng = np.random.default_rng(k)
    A = rng.standard_normal((50, k, k)) + 1j * rng.standard_normal((50, k, k))
    g = A @ np.conj(np.swapaxes(A, 1, 2)) + 0.1 * np.eye(k)
    assert np.allclose(fubini_study.hermitian_det(g), np.linalg.det(g).real, rtol=1e-12)
