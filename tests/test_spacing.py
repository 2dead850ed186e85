"""Figure 3 right (issue 11): nearest-train FS distance against N, its power-law fit, and the
points a kernel would need (mfarray.experiments.spacing).

The scaling is checked where it is known exactly.  For N uniform (FS) train points on P^n the
FS ball of radius r holds the fraction sin^(2n) r of the volume, so a test point's nearest
distance D has P(D > r) = (1 - sin^(2n) r)^N and

    E D = int_0^(pi/2) (1 - sin^(2n) r)^N dr     (P^1: (pi/2) C(2N, N) / 4^N ~ sqrt(pi / 4N)),

exponent -1/(2n); on the great circle z = (1, e^(i theta)) (length pi, d = |dtheta|/2),
E D = pi / (2 (N + 1)), exponent -1.  Uniform points on P^n are complex Gaussian vectors.
"""

import json
import math

import numpy as np
import pytest
import xarray as xr
from scipy.integrate import quad
from scipy.special import gammaln

import mfarray as mf
from mfarray.experiments import spacing as sp
from mfarray.pointset.provenance import undocumented

SIZES = (100, 300, 1000, 3000)


def _points(z):
    return xr.Dataset({"z": (("point", "ambient"), z)})


def _projective(n_points, n, seed):
    """FS-uniform points of P^n."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_points, n + 1)) + 1j * rng.standard_normal((n_points, n + 1))


def _circle(n_points, seed):
    theta = np.random.default_rng(seed).uniform(0, 2 * np.pi, n_points)
    return np.stack([np.ones(n_points), np.exp(1j * theta)], axis=1)


def _exact_projective(N, n):
    if n == 1:
        return np.pi / 2 * np.exp(gammaln(2 * N + 1) - 2 * gammaln(N + 1) - N * np.log(4))
    return np.array([quad(lambda r, k=k: (1 - np.sin(r) ** (2 * n)) ** k, 0, np.pi / 2, limit=200,
                          points=[0.01, 0.1])[0] for k in N])


def _exact_circle(N):
    return np.pi / (2 * (N + 1))


def _fitted_exponent(N, mu):
    """Exponent of the least-squares line through the exact means (their finite-N curvature)."""
    return np.polyfit(np.log(N), np.log(mu), 1)[0]


CASES = {  # name: (points, exact mean, real dimension m)
    "circle": (lambda n, s: _circle(n, s), _exact_circle, 1),
    "P1": (lambda n, s: _projective(n, 1, s), lambda N: _exact_projective(N, 1), 2),
    "P2": (lambda n, s: _projective(n, 2, s), lambda N: _exact_projective(N, 2), 4),
}


@pytest.fixture(scope="module")
def scaled():
    out = {}
    for name, (points, exact, m) in CASES.items():
        ds = sp.nearest_distance_scaling(_points(points(1000 + SIZES[-1], 7)), SIZES, n_test=1000, chart="any")
        out[name] = ds, exact(np.asarray(SIZES, dtype=float)), m
    return out


# ------------------------------------------------------------------ known scaling
@pytest.mark.parametrize("name", list(CASES))
def test_mean_nearest_distance_is_the_exact_one(scaled, name):
    ds, exact, _ = scaled[name]
    N = ds["n_train"].values
    # the test set's error (sem) and the train set's own: relative sd ~0.4/sqrt(N) (measured on P^1 over
    # 30 seeds: the mean at N = 100 scatters 2.3 sem about the exact value, at N = 3000 1.0 sem)
    sd = np.sqrt((ds["sem"].values / exact) ** 2 + 0.16 / N)
    assert np.all(np.abs(ds["mean"].values / exact - 1) < 4 * sd), (ds["mean"].values, exact)


@pytest.mark.parametrize("name", list(CASES))
def test_fitted_exponent_is_minus_one_over_the_dimension(scaled, name):
    ds, exact, m = scaled[name]
    fit = sp.fit_power_law(ds)
    b, se = float(fit["exponent"]), float(fit["exponent_se"])
    # the fit of the exact means (finite-N curvature: within 0.004 of -1/m at these N)
    target = _fitted_exponent(ds["n_train"].values, exact)
    assert abs(target + 1 / m) < 0.005
    assert abs(b - target) < 2 * se, (b, se, target)
    assert abs(b + 1 / m) < 2 * se + 0.005
    assert se < 0.05 / m  # and the error is small enough to mean something (5% of the exponent)
    np.testing.assert_allclose(fit["fitted"], fit["coefficient"] * fit["n_train"] ** fit["exponent"], rtol=1e-12)


def test_the_standard_error_is_calibrated():
    """Over independent samples the fitted exponent scatters about the exact one by ~1 stated
    standard error (weights='covariance' with its chi^2 scaling; P(|z| < 2) = 0.95)."""
    sizes = (30, 100, 300, 1000)
    target = _fitted_exponent(np.asarray(sizes, float), _exact_circle(np.asarray(sizes, float)))
    z = []
    for seed in range(16):
        ds = sp.nearest_distance_scaling(_points(_circle(300 + sizes[-1], 100 + seed)), sizes, n_test=300,
                                         chart="any")
        fit = sp.fit_power_law(ds)
        z.append((float(fit["exponent"]) - target) / float(fit["exponent_se"]))
    z = np.abs(z)
    assert np.mean(z < 2) >= 0.75 and 0.4 < np.sqrt(np.mean(z ** 2)) < 2.0, z


# ------------------------------------------------------------------ the curve itself
def test_nested_sets_give_monotone_curves_equal_to_direct_nearest():
    z = _projective(200 + 2000, 1, 3)
    sizes = (10, 50, 333, 2000)
    ds = sp.nearest_distance_scaling(_points(z), sizes, n_test=200, chart="any")
    d = ds["distance"].transpose("test", "n_train").values
    assert np.all(np.diff(d, axis=1) <= 0)
    for stat in sp.STATS:
        assert np.all(np.diff(ds[stat].values) <= 0), stat
    for k, n in enumerate(sizes):  # the incremental minimum is exactly the direct nearest neighbour
        _, direct = mf.nearest(z[:200], z[200:200 + n])
        np.testing.assert_array_equal(d[:, k], direct)
    np.testing.assert_allclose(ds["sem"], d.std(axis=0, ddof=1) / np.sqrt(200))
    np.testing.assert_array_equal(ds["test"], np.arange(200))


@pytest.fixture(scope="module")
def quintic():
    X = mf.fermat_quintic()
    return X, sp.nearest_distance_scaling(X, (100, 300, 1000), n_test=300, seed=2)


def test_quintic_one_chart_points_as_in_the_paper(quintic, tmp_path):
    X, ds = quintic
    assert ds.attrs["chart"] == [0, 1] and ds.attrs["chart_rule"] == "one" and ds.attrs["source"] == "sampled"
    assert ds.attrs["real_dimension"] == 6 and ds.attrs["expected_exponent"] == pytest.approx(-1 / 6)
    assert ds.attrs["n_sampled"] >= 15 * 1300  # about 1 point in 20 is in the chart
    assert not undocumented(ds)
    json.dumps(ds.attrs)
    mf.to_zarr(ds, str(tmp_path / "spacing"))
    back = mf.open_zarr(str(tmp_path / "spacing")).compute()
    assert back.attrs == ds.attrs
    np.testing.assert_array_equal(back["distance"], ds["distance"])
    assert "select_chart" in ds.attrs["points_call"] and ds.attrs["call"].startswith(
        "mfarray.experiments.nearest_distance_scaling(")
    fit = sp.fit_power_law(ds)
    assert -0.3 < float(fit["exponent"]) < -0.1  # the paper: -0.184; uniform points in 6 real dims: -1/6
    assert not undocumented(fit) and fit.attrs["real_dimension"] == 6
    # the same points given as a point set: the same distances
    given = mf.sample_points(X, ds.attrs["n_sampled"], seed=2)
    again = sp.nearest_distance_scaling(given, (100, 300, 1000), n_test=300)
    np.testing.assert_array_equal(again["distance"], ds["distance"])
    np.testing.assert_array_equal(again["test"], ds["test"])


def test_quintic_all_charts_are_denser_than_one_chart(quintic):
    X, one = quintic
    anywhere = sp.nearest_distance_scaling(X, (100, 300, 1000), n_test=300, seed=2, chart="any")
    assert anywhere.attrs["chart"] == "any" and anywhere.attrs["n_sampled"] == 1300
    # one chart covers ~1/20 of X: N points there are denser than N points spread over all of X
    assert np.all(one["mean"].values < anywhere["mean"].values)
    explicit = sp.nearest_distance_scaling(X, (100, 300), n_test=50, seed=2, chart=(0, 1))
    assert explicit.attrs["chart"] == [0, 1]


# ------------------------------------------------------------------ the fit
def test_fit_weights_and_records(scaled):
    ds, _, _ = scaled["P1"]
    fits = {w: sp.fit_power_law(ds, weights=w) for w in sp.WEIGHTS}
    for w, fit in fits.items():
        assert fit.attrs["weights"] == w and fit.attrs["stat"] == "mean" and fit.attrs["dof"] == len(SIZES) - 2
        assert -1 <= float(fit["correlation"]) <= 1 and fit.attrs["scale"] >= 1
    # ordinary least squares is numpy's polyfit on log-log axes
    b, ln_a = np.polyfit(np.log(SIZES), np.log(ds["mean"].values), 1)
    assert float(fits["none"]["exponent"]) == pytest.approx(b, abs=1e-12)
    assert float(fits["none"]["coefficient"]) == pytest.approx(math.exp(ln_a), rel=1e-12)
    assert fits["none"].attrs["exponent_minus_paper_in_se"] == pytest.approx(
        (b - sp.PAPER_EXPONENT) / float(fits["none"]["exponent_se"]))
    for stat in ("median", "min", "max"):
        assert float(sp.fit_power_law(ds, stat=stat, weights="none")["exponent"]) < 0


# ------------------------------------------------------------------ points needed
def test_the_paper_estimates_from_the_paper_fit():
    """Eq. 3.6 inverted with the paper's distances: 5e-3 -> 10^12.4 (paper: 10^12); 5e-2 -> 10^7.0,
    where the paper says 10^8 (its 10^8 would need d = 3.3e-2); 10^35 implies d = 3.5e-7."""
    paper = sp.paper_fit()
    log10 = sp.points_needed(paper, [5e-3, 5e-2])["log10_points"].values
    np.testing.assert_allclose(log10, np.log10([0.968 / 5e-3, 0.968 / 5e-2]) / 0.184, rtol=1e-12)
    assert round(log10[0]) == 12  # the paper's 10^12
    assert round(log10[1]) == 7  # not the paper's 10^8: a slip in the paper (10^6.99)
    np.testing.assert_allclose(sp.distance_for_points(paper, [1e12, 1e8, 1e35]), [6.0e-3, 3.27e-2, 3.5e-7], rtol=0.02)
    est = sp.paper_estimates()
    assert list(est["estimate"].values) == ["gaussian_gain_100", "delta_gain_100", "gain_1e6"]
    np.testing.assert_allclose(est["target_distance"][:2], [5e-3, 5e-2], rtol=1e-12)
    # gain 10^6 along the Gaussian line through (5e-3, 100) and (1, 1): d = 200^-3 = 1.25e-7
    assert float(est["target_distance"][2]) == pytest.approx(200.0 ** -3, rel=1e-12)
    assert list(est["extrapolated"].values) == [False, False, True]
    np.testing.assert_allclose(np.log10(est["points_paper_fit"]), [12.43, 6.99, 37.44], atol=0.01)
    np.testing.assert_array_equal(est["paper_points"], [1e12, 1e8, 1e35])
    assert not undocumented(est) and "points" not in est
    json.dumps(est.attrs)


def test_points_needed_range_from_the_fit():
    fit = sp.power_law(0.9, -0.17, log_coefficient_se=0.01, exponent_se=0.002, correlation=-0.9)
    out = sp.points_needed(fit, [0.1, 5e-3], n_sigma=1.0)
    x = np.log(out["points"].values)
    assert np.all(out["points_low"] < out["points"]) and np.all(out["points"] < out["points_high"])
    # small errors: the half-width of ln N is the delta method's se of (ln d - ln a) / b
    cov = np.array([[0.01 ** 2, -0.9 * 0.01 * 0.002], [-0.9 * 0.01 * 0.002, 0.002 ** 2]])
    grad = np.stack([np.full_like(x, 1 / 0.17), x / 0.17], axis=1)
    se = np.sqrt(np.einsum("ki,ij,kj->k", grad, cov, grad))
    half = (np.log(out["points_high"].values) - np.log(out["points_low"].values)) / 2
    np.testing.assert_allclose(half, se, rtol=0.05)
    # no uncertainty: a point; an exponent within n_sigma se of 0: unbounded
    exact = sp.points_needed(sp.power_law(0.9, -0.17), 0.01)
    np.testing.assert_allclose(exact["points_low"], exact["points"], rtol=1e-12)
    np.testing.assert_allclose(exact["points_high"], exact["points"], rtol=1e-12)
    loose = sp.points_needed(sp.power_law(0.9, -0.17, exponent_se=0.2), 0.01)
    assert loose["points_low"].item() == 0 and loose["points_high"].item() == np.inf


def test_distance_for_gain_inverts_a_power_law_relation():
    d = np.array([0.02, 0.1, 0.5, 1.0])
    gains = 3.0 * d ** -1.5
    target = np.array([5.0, 50.0, 1e4, 1.5])  # inside, inside, beyond the smallest distance, beyond the largest
    out = sp.distance_for_gain(target, d[::-1], gains[::-1])  # any order
    np.testing.assert_allclose(out["target_distance"], (target / 3.0) ** (-1 / 1.5), rtol=1e-12)
    assert list(out["extrapolated"].values) == [False, False, True, True]
    both = sp.points_for_gain(sp.paper_fit(), 100.0, *sp.PAPER_GAIN_DISTANCE["gaussian"])
    assert both["target_distance"].item() == pytest.approx(5e-3) and not both["extrapolated"].item()
    assert both["log10_points"].item() == pytest.approx(np.log10(0.968 / 5e-3) / 0.184)
    assert not undocumented(both) and not undocumented(out)


# ------------------------------------------------------------------ bad input, named
@pytest.mark.parametrize("kwargs, name", [
    ({"sizes": (100, 100)}, "sizes"), ({"sizes": (0, 10)}, "sizes"), ({"sizes": ()}, "sizes"),
    ({"sizes": (10.0, 20)}, "sizes"), ({"sizes": 5}, "sizes"), ({"n_test": 1}, "n_test"),
    ({"chart": "two"}, "chart"), ({"chart": (0,)}, "chart"), ({"seed": 1}, "seed"),
    ({"sizes": (10, 5000)}, "surface_or_points"),
])
def test_bad_scaling_input_is_named(kwargs, name):
    points = _points(_projective(300, 1, 0))
    args = {"sizes": (10, 20), "n_test": 10, "chart": "any", **kwargs}
    with pytest.raises(ValueError, match=name):
        sp.nearest_distance_scaling(points, **args)


def test_bad_fit_and_needed_input_is_named(scaled):
    ds, _, _ = scaled["P1"]
    for kwargs, name in [({"stat": "mode"}, "stat"), ({"weights": "equal"}, "weights"),
                         ({"stat": "median"}, "weights")]:
        with pytest.raises(ValueError, match=name):
            sp.fit_power_law(ds, **kwargs)
    with pytest.raises(ValueError, match="ds"):
        sp.fit_power_law(ds.isel(n_train=slice(0, 2)))
    with pytest.raises(ValueError, match="ds"):
        sp.fit_power_law(ds[["mean"]])
    with pytest.raises(TypeError, match="surface_or_points"):
        sp.nearest_distance_scaling(np.ones((10, 2)), (2, 3), n_test=2)
    with pytest.raises(ValueError, match="surface_or_points"):
        sp.nearest_distance_scaling(_points(_projective(30, 1, 0)), (2, 3), n_test=2)  # no chart data
    fit = sp.paper_fit()
    with pytest.raises(ValueError, match="target_distance"):
        sp.points_needed(fit, -1.0)
    with pytest.raises(ValueError, match="target_distance"):
        sp.points_needed(fit, [[0.1]])
    with pytest.raises(ValueError, match="n_sigma"):
        sp.points_needed(fit, 0.1, n_sigma=-1)
    with pytest.raises(ValueError, match="fit"):
        sp.points_needed(ds, 0.1)
    with pytest.raises(ValueError, match="fit"):
        sp.points_needed(sp.power_law(1.0, 0.2), 0.1)
    for kwargs, name in [({"coefficient": 0.0}, "coefficient"), ({"exponent": float("nan")}, "exponent"),
                         ({"exponent_se": -1.0}, "exponent_se"), ({"correlation": 2.0}, "correlation"),
                         ({"coefficient": True}, "coefficient")]:
        with pytest.raises(ValueError, match=name):
            sp.power_law(**{"coefficient": 1.0, "exponent": -0.2, **kwargs})
    with pytest.raises(ValueError, match="gains"):
        sp.distance_for_gain(10.0, [0.1, 0.2, 0.3], [100.0, 1.0, 10.0])
    with pytest.raises(ValueError, match="distances and gains"):
        sp.distance_for_gain(10.0, [0.1, 0.2], [100.0, 10.0, 1.0])
    with pytest.raises(ValueError, match="target_gain"):
        sp.distance_for_gain(0.0, [0.1, 0.2], [100.0, 10.0])
