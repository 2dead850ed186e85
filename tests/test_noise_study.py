"""The noise study of Figure 3 left (issue 11): mfarray.experiments.noise and the flagged off-X
point sets it scores (mfarray.pointset.offsurface.points_in_chart)."""

import functools
import json

import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray.experiments.noise import NOISE_STREAM, noise_draw, noise_study, noised_points
from mfarray.geometry import fs_distance_rows
from mfarray.pointset.offsurface import points_in_chart
from mfarray.pointset.provenance import VERSION_KEYS, undocumented

X = mf.fermat_quintic()
GAUSS = functools.partial(mf.kernels.gaussian_fs, sigma=0.05, squared=True)
GAUSS_LABEL = "gaussian_fs(sigma=0.05, squared=True)"
SCALES = (0.0, 1e-6, 1e-4, 1e-2, 1.0)


@pytest.fixture(scope="module")
def train():
    return mf.select_chart(mf.sample_points(X, 6500, seed=11, chunk_size=6500)).isel(point=slice(0, 300)).compute()


@pytest.fixture(scope="module")
def study(train):
    return noise_study(train, [GAUSS, "delta"], scales=SCALES, steps=40, seed=3)


# ----------------------------------------------------------------- the study's findings
def test_scale_zero_gives_the_train_gain(study):
    at0 = study.sel(scale=0.0)
    for variant in ("paper", "projected"):
        s = at0.sel(variant=variant)
        assert float(s.distance_to_train) <= 1e-15 and float(s.distance_to_source) <= 1e-15
        np.testing.assert_allclose(s.sigma_test_initial, study.sigma_train_initial, rtol=1e-14)
        # the flowed sigma is ~1e-10 of the initial one: agreement to rounding of the initial sigma
        np.testing.assert_allclose(s.sigma_test_final, study.sigma_train_final, rtol=0,
                                   atol=1e-14 * float(study.sigma_train_initial.max()))
        # so the gains agree to that rounding over sigma_final ~1e-5 (measured: 6e-11 and 6e-14)
        np.testing.assert_allclose(s.gain_test, study.gain_train, rtol=1e-8)
    assert (study.gain_train > 1e4).all()  # both kernels reduce the train sigma a lot in 40 steps
    assert float(study.invalid_fraction.sel(scale=0.0).max()) == 0


def test_gain_falls_with_scale_for_the_gaussian_kernel(study):
    for variant in ("paper", "projected"):
        gain = study.gain_test.sel(kernel=GAUSS_LABEL, variant=variant).values
        assert (np.diff(np.log(gain)) < 0.05).all(), gain  # non-increasing up to noise
        assert gain[1] > 1e3 * gain[-1] and gain[-1] < 3  # from ~train gain to ~1 at distance ~1


def test_distances_grow_with_scale(study):
    for variant in ("paper", "projected"):
        s = study.sel(variant=variant)
        assert (np.diff(s.distance_to_source.values) > 0).all()
        assert (np.diff(s.distance_to_train.values) >= 0).all()
        # the nearest train point is never farther than the point's own source ...
        assert (s.distance_to_train <= s.distance_to_source * (1 + 1e-12)).all()
        # ... and saturates: at noise 1 the source is ~1 away, the nearest train point much closer
        assert float(s.distance_to_source[-1]) > 0.8 and float(s.distance_to_train[-1]) < 0.7
        # small noise: distances proportional to the scale
        ratio = s.distance_to_source.values[1:4] / np.array(SCALES[1:4])
        np.testing.assert_allclose(ratio, ratio[0], rtol=0.02)


def test_variants_agree_as_scale_goes_to_zero(study):
    paper, projected = study.sel(variant="paper"), study.sel(variant="projected")
    for name in ("sigma_test_initial", "sigma_test_final", "distance_to_source"):
        diff = np.abs(paper[name] - projected[name])
        assert float(diff.sel(scale=0.0).max()) <= 1e-15 * max(1.0, float(np.abs(paper[name]).max()))
        # linear in the scale: 100 times less noise, ~100 times closer
        small, larger = float(diff.sel(scale=1e-6).max()), float(diff.sel(scale=1e-4).max())
        assert small <= 0.03 * larger, (name, small, larger)
    assert (projected.residual_test <= 1e-15).all()  # projected points lie on X ...
    assert float(paper.residual_test.sel(scale=1e-6)) > 1e-9  # ... noised ones do not
    assert (study.projection_failed == 0).all()
    assert float(study.projection_distance.sel(scale=1e-4)) < float(paper.distance_to_source.sel(scale=1e-4))


def test_the_dataset_records_its_settings(study, train):
    assert dict(study.sizes) == {"kernel": 2, "variant": 2, "scale": len(SCALES)}
    assert study.kernel.values.tolist() == [GAUSS_LABEL, "delta()"]
    assert study.variant.values.tolist() == ["paper", "projected"]
    assert study.on_surface.values.tolist() == [False, True] and study.approximate.values.tolist() == [True, False]
    assert undocumented(study) == []
    attrs = study.attrs
    json.dumps(attrs)  # Zarr-safe
    assert attrs["seed"] == 3 and attrs["steps"] == 40 and attrs["scales"] == list(SCALES)
    assert attrs["n_train"] == 300 and attrs["chart"] == train.attrs["chart"]
    assert attrs["noise_stream"] == NOISE_STREAM and "N(0, scale^2)" in attrs["noise"]
    kernels = json.loads(attrs["kernels"])
    assert [k["label"] for k in kernels] == study.kernel.values.tolist()
    assert kernels[0]["hyper"] == {"sigma": 0.05, "squared": True}
    assert attrs["call"].startswith("mfarray.experiments.noise.noise_study(") and set(VERSION_KEYS) <= set(attrs)
    assert attrs["train_call"] == train.attrs["call"]
    assert (study.steps_done == 40).all()
    small = study.sel(scale=slice(0, 1e-2))
    assert (small.n_test == 300).all() and float(small.chart_failed.max()) == 0


# ----------------------------------------------------------------- the test sets
def test_noise_is_the_documented_draw(train):
    xi = noise_draw(train.sizes["point"], 5, 3)
    np.testing.assert_array_equal(xi, noise_draw(300, 5, 3))
    rng = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(NOISE_STREAM,)))
    np.testing.assert_array_equal(xi.real, rng.standard_normal((300, 5)))
    ds, info = noised_points(train, 0.01, variant="paper", seed=3)
    assert info == {"chart_failed": 0.0}
    assert fs_distance_rows(ds.z.values, train.z.values + 0.01 * xi).max() <= 1e-15  # the same points of P^n
    np.testing.assert_allclose(ds.z.values[:, train.attrs["chart"][0]], 1, rtol=0, atol=1e-15)  # the train chart
    np.testing.assert_array_equal(ds.source_z.values, train.z.values)
    np.testing.assert_array_equal(ds.point.values, train.point.values)
    assert ds.attrs["on_surface"] is False and ds.attrs["approximate"] is True
    assert "OFF X" in ds.g_fs.attrs["description"] and "OFF X" in ds.weight.attrs["description"]
    projected, info = noised_points(train, 0.01, variant="projected", seed=3)
    assert info["projection_failed"] == 0 and 0 < info["projection_distance"] < 0.05
    assert projected.attrs["on_surface"] is True and projected.residual.max() <= 2e-15


def test_points_in_chart_refuses_off_x_points_unless_flagged(train):
    patch, elim = train.attrs["chart"]
    z = train.z.values[:20] + 1e-3
    with pytest.raises(ValueError, match="not on X.*on_surface=False"):
        points_in_chart(X, z, patch=patch, elim=elim)
    off = points_in_chart(X, z, patch=patch, elim=elim, on_surface=False)
    assert off.attrs["on_surface"] is False and off.attrs["approximate"] is True and off.attrs["chart"] == [patch, elim]
    assert (off.residual > 1e-6).all() and undocumented(off) == []
    on = points_in_chart(X, train.z.values, patch=patch, elim=elim, point=train.point.values)
    assert on.attrs["on_surface"] is True and on.attrs["approximate"] is False
    for name in ("z", "g_fs", "omega2", "det_g_fs"):  # on X in its own chart: points_from_z's geometry
        np.testing.assert_allclose(on[name].values, train[name].values, rtol=1e-14)  # z_patch: 1 or 1 - ulp
    np.testing.assert_allclose(on.weight.values, train.weight.values / train.weight.values.mean(), rtol=1e-14)
    assert xr.Dataset.equals(on.point, train.point)


def test_points_in_chart_bad_inputs_are_named(train):
    patch, elim = train.attrs["chart"]
    z = train.z.values[:5]
    with pytest.raises(ValueError, match="patch"):
        points_in_chart(X, z, patch=7, elim=elim)
    with pytest.raises(ValueError, match="patch and elim must differ"):
        points_in_chart(X, z, patch=patch, elim=patch)
    with pytest.raises(TypeError, match="on_surface"):
        points_in_chart(X, z, patch=patch, elim=elim, on_surface="no")
    with pytest.raises(ValueError, match="z must have shape"):
        points_in_chart(X, z[:, :4], patch=patch, elim=elim)
    with pytest.raises(ValueError, match="point must be"):
        points_in_chart(X, z, patch=patch, elim=elim, point=[1, 2])
    with pytest.raises(ValueError, match="zero vectors"):
        points_in_chart(X, np.zeros((2, 5)), patch=patch, elim=elim, on_surface=False)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"train": "points"}, TypeError, "train"),
    ({"kernels": "gaussian"}, ValueError, "kernels"),
    ({"kernels": []}, ValueError, "kernels"),
    ({"kernels": [GAUSS, GAUSS]}, ValueError, "kernels must be distinct"),
    ({"scales": (0.1, -1.0)}, ValueError, "scales"),
    ({"scales": (0.1, np.nan)}, ValueError, "scales"),
    ({"scales": (0.1, 0.1)}, ValueError, "scales must be distinct"),
    ({"scales": ()}, ValueError, "scales"),
    ({"variants": ("paper", "exact")}, ValueError, "variants"),
    ({"seed": -1}, ValueError, "seed"),
    ({"steps": 0}, ValueError, "steps"),
    ({"flow_options": {"test": None}}, ValueError, "flow_options"),
    ({"projection": {"strict": True}}, ValueError, "projection"),
])
def test_bad_inputs_are_named(train, kwargs, error, match):
    args = {"train": train, "kernels": "delta", **kwargs}
    with pytest.raises(error, match=match):
        noise_study(args.pop("train"), args.pop("kernels"), **args)


def test_a_multi_chart_train_set_is_refused():
    with pytest.raises(ValueError, match="train must be in one chart"):
        noise_study(mf.sample_points(X, 200, seed=1), "delta")


def test_invalid_predictions_are_counted_not_scored(study, train):
    from mfarray.experiments.noise import _predict_valid

    invalid = study.invalid_fraction
    assert ((invalid >= 0) & (invalid <= 1)).all() and float(invalid.sel(scale=slice(0, 1e-2)).max()) == 0
    far = invalid.sel(kernel="delta()", scale=1.0)
    assert (far > 0).all() and (far < 0.5).all()  # far from the train set the Delta update overshoots g_FS
    assert np.isfinite(study.gain_test).all()
    result = mf.kernel_flow(train, mf.kernels.delta, steps=5)
    ds, _ = noised_points(train, 1.0, seed=3)
    g, valid = _predict_valid(result, ds, mf.kernels.delta)
    assert 0 < valid.sum() < valid.size and np.isnan(g[~valid]).all()
    kept = ds.isel(point=np.flatnonzero(valid))
    np.testing.assert_array_equal(g[valid], mf.predict(result, kept).values)  # exactly predict's metrics
    with pytest.raises(ValueError, match="predicted metrics"):
        mf.predict(result, ds)
    with pytest.raises(ValueError, match="invalid must be"):
        mf.predict(result, ds, invalid="drop")
