"""The frozen-kernel metric flow (2.12): closed forms, local limit, test prediction, guards."""

import functools

import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray import losses
from mfarray.flows import FlowError, evaluate, kernel_flow
from mfarray.kernels import DenseOperator, delta, gaussian_fs


@pytest.fixture(scope="module")
def quintic_chart():
    """Fermat-quintic points of one chart (rejection sampling, §3.1)."""
    return mf.select_chart(mf.sample_points(mf.fermat_quintic(), 12_000, seed=3).compute())


@pytest.fixture(scope="module")
def cubic_chart():
    return mf.select_chart(mf.sample_points(mf.cubic_curve(), 3000, seed=3).compute())


def _local_kernel(ds):
    """The local kernel delta_{x x'} Omega(x) with Omega shaped by the rescaling trick (2.18):
    Omega = h^2 = 1/(w eta^2 tr g^-2) at the initial metric, so every point relaxes at one rate."""
    g0 = ds.g_fs.values
    inv = np.linalg.inv(g0)
    tr = np.real(np.einsum("nab,nba->n", inv, inv))
    data = losses.make_loss_data(ds)
    eta0 = np.linalg.det(g0).real / (data.kappa * ds.omega2.values)
    return DenseOperator(np.diag(0.5 / (ds.weight.values * eta0**2 * tr)))


@pytest.mark.parametrize("name", ["cubic_chart", "quintic_chart"])
def test_local_flow_drives_train_sigma_below_1e_6_of_fs(name, request):
    ds = request.getfixturevalue(name)
    r = kernel_flow(ds, _local_kernel(ds), steps=150, lr=0.5, adaptive=True, loss="sigma_squared")
    s = r.sigma_train.values
    assert s[-1] < 1e-6 * s[0], (s[0], s[-1])
    assert np.all(np.isfinite(r.g_train.values))
    assert evaluate(r, ds)["positive_fraction_train"].item() == 1.0


def test_delta_kernel_flow_on_the_cubic_reaches_1e_6(cubic_chart):
    """The Delta kernel of §3.2 is the identity on the train set: the pointwise flow (2.14)."""
    ds = cubic_chart
    r = kernel_flow(ds, delta, steps=400, lr=1.0, adaptive=True, loss="sigma_squared")
    assert r.sigma_train.values[-1] < 1e-6 * r.sigma_train.values[0]


def test_fixed_steps_follow_the_mse_closed_form(quintic_chart):
    """For the MSE loss the frozen flow is linear: e_{n+1} = (1 - 2 lr K W) e_n, e = g - g_target,
    and tends to the kernel exponential exp(-2 K W t) as lr -> 0 at fixed t = n lr."""
    ds = quintic_chart.isel(point=slice(0, 150))
    z = ds.z.values
    K = gaussian_fs(z, z, sigma=0.1, squared=True)
    W = np.diag(ds.weight.values)
    rng = np.random.default_rng(0)
    A = rng.standard_normal((150, 3, 3)) + 1j * rng.standard_normal((150, 3, 3))
    target = ds.g_fs.values + 0.1 * A @ np.conj(np.swapaxes(A, 1, 2))
    e0 = (ds.g_fs.values - target).reshape(150, 9)
    kern = functools.partial(gaussian_fs, sigma=0.1, squared=True)
    lr, n = 0.02, 25
    r = kernel_flow(ds, kern, steps=n, lr=lr, loss="mse", target=target, adaptive=False)
    step = np.eye(150) - 2 * lr * K @ W
    expected = target + (np.linalg.matrix_power(step, n) @ e0).reshape(150, 3, 3)
    assert np.allclose(r.g_train.values, expected, rtol=1e-11, atol=1e-12)
    # continuous-time limit: error of the Euler flow at t = 0.5 shrinks linearly with lr
    from scipy.linalg import expm

    exact = target + (expm(-2 * 0.5 * K @ W) @ e0).reshape(150, 3, 3)
    errs = []
    for lr in (0.05, 0.025, 0.0125):
        g = kernel_flow(ds, kern, steps=round(0.5 / lr), lr=lr, loss="mse", target=target,
                        adaptive=False).g_train.values
        errs.append(np.abs(g - exact).max())
    assert errs[0] > errs[1] > errs[2]
    assert 1.6 < errs[0] / errs[1] < 2.4 and 1.6 < errs[1] / errs[2] < 2.4


def test_test_prediction_equals_flowing_passive_points(quintic_chart):
    """g_test(t) = g_test(0) - Theta(test, train) A(t): the same as carrying the test points along
    in the flow with zero weight (they feel the train points but do not pull on them)."""
    ds = quintic_chart
    train, test = ds.isel(point=slice(0, 300)), ds.isel(point=slice(300, 400))
    kern = functools.partial(gaussian_fs, sigma=0.05, squared=True)
    r = kernel_flow(train, kern, steps=20, lr=0.05, test=test)
    both = xr.concat([train, test.assign(weight=test.weight * 0)], dim="point")
    r2 = kernel_flow(both, kern, steps=20, lr=0.05)
    assert np.allclose(r2.g_train.values[300:], r.g_test.values, rtol=1e-10, atol=1e-13)
    assert np.allclose(r2.g_train.values[:300], r.g_train.values, rtol=1e-10, atol=1e-13)
    assert r.sigma_test.dims == ("step",) and np.isfinite(r.sigma_test.values).all()
    summary = evaluate(r, train, test)
    assert summary["gain_train"].item() > 1.0
    assert 0 <= summary["positive_fraction_test"].item() <= 1


def test_delta_kernel_moves_a_test_point_by_its_nearest_train_point(quintic_chart):
    ds = quintic_chart
    train, test = ds.isel(point=slice(0, 200)), ds.isel(point=slice(200, 260))
    r = kernel_flow(train, delta, steps=5, lr=0.2, test=test)
    idx = mf.nearest(test.z.values, train.z.values)[0]
    moved = r.g_test.values - test.g_fs.values
    assert np.allclose(moved, -r.dual.values[idx], rtol=1e-12, atol=1e-15)


def test_mixed_charts_are_refused():
    ds = mf.sample_points(mf.fermat_quintic(), 200, seed=0).compute()
    with pytest.raises(ValueError, match="different charts"):
        kernel_flow(ds, delta, steps=1, lr=0.1)
    one = mf.express_in_chart(ds, 0, 1)  # every point moved into one chart: accepted
    r = kernel_flow(one, delta, steps=2, lr=0.1)
    assert np.all(np.isfinite(r.g_train.values))


def test_positivity_guard_shortens_steps_and_an_impossible_step_is_reported(quintic_chart):
    ds = quintic_chart.isel(point=slice(0, 100))
    r = kernel_flow(ds, delta, steps=10, lr=1e3)  # far too large: steps are shortened
    assert r.rejected.values.sum() > 0
    assert np.all(np.linalg.eigvalsh(r.g_train.values)[:, 0] > 0)
    # a loss whose gradient pushes every metric to -infinity cannot be followed
    huge = losses.PointwiseLoss(
        "huge", lambda g, d: np.zeros(g.shape[0]),
        lambda g, d: np.broadcast_to(1e300 * np.eye(3), g.shape).copy())
    with pytest.raises(FlowError, match="positive definite"):
        kernel_flow(ds, delta, steps=1, lr=1.0, loss=huge)


def test_bad_arguments(quintic_chart):
    ds = quintic_chart.isel(point=slice(0, 50))
    with pytest.raises(ValueError, match="lr must be"):
        kernel_flow(ds, delta, steps=1, lr=0.0)
    with pytest.raises(ValueError, match="steps"):
        kernel_flow(ds, delta, steps=-1, lr=0.1)
    with pytest.raises(ValueError, match="target"):
        kernel_flow(ds, delta, steps=1, lr=0.1, loss="mse")
    with pytest.raises(ValueError, match="loss must be"):
        kernel_flow(ds, delta, steps=1, lr=0.1, loss="l2")
    with pytest.raises(ValueError, match="operator has shape"):
        kernel_flow(ds, DenseOperator(np.eye(3)), steps=1, lr=0.1)


def test_local_limit_of_the_cosine_net_kernel(quintic_chart):
    """(2.14, 2.31): as the width sigma = sqrt(d)/sigma_w of the cosine-net NTK (a Gaussian in
    feature space, 2.35) shrinks, the frozen flow tends to the pointwise flow (identity kernel).
    The kernel is scaled to 1 on the diagonal (amplitude sqrt 2), i.e. Omega(x) = 1."""
    from mfarray.kernels import cosine_ntk

    ds = quintic_chart.isel(point=slice(0, 300))
    kw = dict(steps=20, lr=0.02, loss="sigma_squared")
    local = kernel_flow(ds, DenseOperator(np.eye(300)), **kw).g_train.values
    errors = []
    for width in (0.3, 0.1, 0.03):
        kern = functools.partial(cosine_ntk, sigma_w=np.sqrt(10) / width, amplitude=np.sqrt(2))
        g = kernel_flow(ds, kern, **kw).g_train.values
        errors.append(np.abs(g - local).max())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-3 * errors[0]


def test_normalised_updates_and_dual_side_clipping(quintic_chart):
    """normalize: the largest per-point change of g is exactly lr; clip: dl/dg is clipped per point
    before the kernel acts, so the test prediction stays the exact dual formula."""
    ds = quintic_chart
    train, test = ds.isel(point=slice(0, 200)), ds.isel(point=slice(200, 240))
    kern = functools.partial(gaussian_fs, sigma=0.05, squared=True)
    r = kernel_flow(train, kern, steps=1, lr=1e-3, normalize=True)
    change = np.sqrt(np.sum(np.abs(r.g_train.values - train.g_fs.values) ** 2, axis=(1, 2)))
    assert change.max() == pytest.approx(1e-3, rel=1e-12)
    data = losses.make_loss_data(train)
    G = losses.sigma_loss().gradient(train.g_fs.values, data)
    norms = np.sqrt(np.sum(np.abs(G) ** 2, axis=(1, 2)))
    clip = float(np.median(norms))
    r = kernel_flow(train, kern, steps=1, lr=1e-3, clip=clip, test=test, loss="sigma")
    Gc = G * np.minimum(1, clip / norms)[:, None, None]
    assert np.allclose(r.dual.values, 1e-3 * Gc, rtol=1e-12)
    K_test = gaussian_fs(test.z.values, train.z.values, sigma=0.05, squared=True)
    expected = test.g_fs.values - np.einsum("ij,jab->iab", K_test, r.dual.values)
    assert np.allclose(r.g_test.values, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_positivity_guard_agrees_with_eigenvalues(k):
    from mfarray.flows import positive_definite

    rng = np.random.default_rng(k)
    n = 4000
    q, _ = np.linalg.qr(rng.standard_normal((n, k, k)) + 1j * rng.standard_normal((n, k, k)))
    lam = rng.uniform(-1, 1, (n, k)) * 10.0 ** rng.uniform(-6, 3, (n, 1))
    lam[np.abs(lam) < 1e-9] = 1e-9  # keep every sign well above rounding
    g = np.einsum("nab,nb,ncb->nac", q, lam, q.conj())
    want = lam.min(axis=1) > 0
    assert 0.05 < want.mean() < 0.95 or k == 1
    assert np.array_equal(positive_definite(g), want)
    g[::7, 0, k - 1] = np.nan
    assert not positive_definite(g)[::7].any()
    # condition number 1e10, as for chart metrics far from their patch (cofactor minors fail)
    lam = 10.0 ** rng.uniform(-2, 0, (n, k))
    lam[:, 0] = 1e8
    g = np.einsum("nab,nb,ncb->nac", q, lam, q.conj())
    assert positive_definite(g).all() and positive_definite(1e-300 * g).all()
    assert positive_definite(1e300 * g).all()


def test_every_operator_gives_the_same_flow(quintic_chart, tmp_path):
    """Dense, lazy blockwise (symmetric tiles, threads), cached and Zarr-stored operators are one
    linear map: the flows and test predictions agree to rounding."""
    ds = quintic_chart
    train, test = ds.isel(point=slice(0, 300)), ds.isel(point=slice(300, 350))
    kern = functools.partial(gaussian_fs, sigma=0.1, squared=True)
    run = functools.partial(kernel_flow, train, kern, steps=4, lr=1e-3, loss="sigma_squared", test=test)
    ref = run(method="dense")
    variants = {
        "blockwise": run(method="blockwise", operator_options={"block": 64}),
        "cached": run(method="blockwise", operator_options={"block": 64, "cache_bytes": 1 << 22, "workers": 2}),
        # float64 store: the default float32 store rounds the kernel to ~6e-8 on purpose
        "zarr": run(method="zarr", operator_options={"block": 64, "path": str(tmp_path / "k.zarr"), "dtype": "float64"}),
    }
    assert (tmp_path / "k.zarr").exists() and (tmp_path / "k.zarr.test").exists()
    for name, r in variants.items():
        for var in ("g_train", "g_test", "dual"):
            err = np.abs(r[var].values - ref[var].values).max() / np.abs(ref[var].values).max()
            assert err < 1e-13, (name, var, err)
        assert np.allclose(r.sigma_train.values, ref.sigma_train.values, rtol=1e-12), name
