"""Bayesian tuning (mfarray.tune): finds a known maximum, resumes exactly, runs batches in
parallel, records failures honestly, and scores the best parameters on unseen points."""

import json
import math

import numpy as np
import pytest
import xarray as xr

import mfarray as mf
from mfarray import tune as T
from mfarray.flows import FlowError


def bowl(params, seed):
    """Maximum 0 at log10(width) = -1 (width 0.1) and depth 2."""
    return -(math.log10(params["width"]) + 1.0) ** 2 - 0.1 * (params["depth"] - 2) ** 2


SPACE = {"width": T.real(1e-3, 10, log=True), "depth": T.integer(0, 4)}


def test_finds_a_known_maximum():
    ds = T.tune(bowl, SPACE, init=5, iterations=20, seed=1)
    best = T.best_params(ds)
    assert ds.sizes["evaluation"] == 25
    assert abs(math.log10(best["width"]) + 1) < 0.15 and best["depth"] == 2
    assert ds.attrs["best_target"] == pytest.approx(float(ds.target.max()))
    assert float(ds.width.min()) >= 1e-3 and float(ds.width.max()) <= 10


def test_resume_suggests_what_an_uninterrupted_run_would(tmp_path):
    whole = T.tune(bowl, SPACE, init=3, iterations=5, seed=2)
    state = tmp_path / "tune.json"
    T.tune(bowl, SPACE, init=3, iterations=1, seed=2, state=state)   # "interrupted" after 4
    calls = []

    def counting(params, seed):
        calls.append(params)
        return bowl(params, seed)

    resumed = T.tune(counting, SPACE, init=3, iterations=5, seed=2, state=state)
    assert len(calls) == 4  # only the missing evaluations ran
    np.testing.assert_allclose(resumed.width.values, whole.width.values, rtol=1e-12)
    np.testing.assert_array_equal(resumed.depth.values, whole.depth.values)
    np.testing.assert_array_equal(resumed.seed.values, whole.seed.values)


def test_a_state_of_another_space_is_refused(tmp_path):
    state = tmp_path / "tune.json"
    T.tune(bowl, SPACE, init=2, iterations=0, state=state)
    with pytest.raises(ValueError, match="another space"):
        T.tune(bowl, {**SPACE, "depth": T.integer(0, 5)}, init=2, iterations=1, state=state)


def test_a_state_of_another_objective_or_seed_is_refused(tmp_path):
    """Records scored by another objective (or seeded by another seed) must not be resumed as if
    they scored this one."""
    state = tmp_path / "tune.json"
    small = T.GainObjective("delta", n_train=30, n_test=20, flow={"steps": 2})
    T.tune(small, {"lr": T.real(0.05, 0.5, log=True)}, init=1, iterations=0, state=state, holdout=False)
    bigger = T.GainObjective("delta", n_train=40, n_test=20, flow={"steps": 2})
    with pytest.raises(ValueError, match="another objective"):
        T.tune(bigger, {"lr": T.real(0.05, 0.5, log=True)}, init=2, iterations=0, state=state, holdout=False)
    with pytest.raises(ValueError, match="another seed"):
        T.tune(small, {"lr": T.real(0.05, 0.5, log=True)}, init=2, iterations=0, state=state, seed=1, holdout=False)
    more = T.tune(small, {"lr": T.real(0.05, 0.5, log=True)}, init=2, iterations=0, state=state, holdout=False)
    assert more.sizes["evaluation"] == 2  # the same objective and seed resume


def test_batches_are_distinct_and_seeds_per_evaluation():
    seen = []

    def f(params, seed):
        seen.append(seed)
        return bowl(params, seed)

    ds = T.tune(f, SPACE, init=2, iterations=6, batch=3, seed=0)
    assert ds.sizes["evaluation"] == 8
    coords = {(round(float(w), 12), int(d)) for w, d in zip(ds.width.values, ds.depth.values)}
    assert len(coords) >= 7  # the constant liar spreads a batch out
    assert len(set(seen)) == 8 and sorted(seen) == sorted(ds.seed.values.tolist())


def test_failures_are_recorded_not_faked():
    def f(params, seed):
        if params["depth"] == 0:
            raise FlowError("cannot go on")
        return bowl(params, seed)

    ds = T.tune(f, {"width": T.real(0.01, 1, log=True), "depth": T.integer(0, 1)}, init=6, iterations=2, seed=3)
    failed = ds.failed.values
    assert failed.any() and not failed.all()
    assert np.isnan(ds.target.values[failed]).all()
    assert (ds.registered.values[failed] < np.nanmin(ds.target.values)).all()
    assert "FlowError" in str(ds.error.values[failed][0])


@pytest.mark.parametrize("bad, match", [({"init": -1}, "init"), ({"batch": 0}, "batch"), ({"init": 0, "iterations": 0}, "at least")])
def test_bad_settings_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        T.tune(bowl, SPACE, **bad)


def test_space_forms():
    s = T.as_space({"a": (0.1, 2.0), "b": (1, 3), "c": ["sigma", "mse"], "d": {"low": 1e-3, "high": 1, "log": True}})
    assert s["a"] == T.real(0.1, 2.0) and s["b"] == T.integer(1, 3) and s["c"] == T.choice("sigma", "mse")
    assert s["d"].log
    with pytest.raises(ValueError, match="low"):
        T.real(1, 1)
    with pytest.raises(ValueError, match="positive"):
        T.real(0, 1, log=True)


def test_gain_objective_tunes_a_kernel_and_scores_on_unseen_points():
    obj = T.GainObjective("gaussian_fs", n_train=120, n_test=60, flow={"steps": 10}, fixed={"squared": True})
    ds = T.tune(obj, {"sigma": T.real(0.02, 1.0, log=True), "loss": T.choice("sigma_squared", "sigma")},
                init=2, iterations=1, seed=0)
    assert not ds.failed.any()
    np.testing.assert_allclose(ds.target.values, np.log10(ds.gain_test.values))
    assert "holdout_gain_test" in ds.attrs and ds.attrs["holdout_gain_test"] > 0
    # the same parameters on the fixed set reproduce the recorded score; the holdout set is another one
    best = T.best_params(ds)
    again = obj(best, seed=12345)
    assert again["target"] == pytest.approx(ds.attrs["best_target"], rel=1e-12)
    assert ds.attrs["holdout_gain_test"] != pytest.approx(again["gain_test"], rel=1e-6)
    assert json.loads(ds.attrs["space"])["sigma"]["log"] is True


def test_fresh_points_differ_per_evaluation():
    obj = T.GainObjective("delta", n_train=80, n_test=40, fresh=True, flow={"steps": 3})
    a, b = obj({}, seed=1), obj({}, seed=2)
    assert a["gain_test"] != b["gain_test"]
    with pytest.raises(ValueError, match="kernel must be one of"):
        T.GainObjective("laplace")


def test_sample_chart_is_nested_and_exact():
    a = mf.sample_chart(n=200, seed=4)
    b = mf.sample_chart(n=500, seed=4)
    assert a.sizes["point"] == 200 and b.sizes["point"] == 500
    np.testing.assert_array_equal(a.point.values, b.point.values[:200])
    assert set(np.unique(b.patch.values)) == {b.attrs["chart"][0]}
    assert float(b.weight.mean()) == pytest.approx(1.0, abs=1e-14)
    c = mf.sample_chart(n=50, seed=4, chart=(2, 3))
    assert (c.patch.values == 2).all() and (c.elim.values == 3).all()
    with pytest.raises(ValueError, match="n must"):
        mf.sample_chart(n=0)


def test_a_kernel_that_overflows_is_a_failed_evaluation_not_a_crash():
    from mfarray.kernels import NonFiniteKernelError

    def f(params, seed):
        if params["width"] > 1:
            raise NonFiniteKernelError("kernel overflow")
        return bowl(params, seed)

    ds = T.tune(f, SPACE, init=6, iterations=0, seed=5)
    assert ds.failed.any() and (ds.width.values[ds.failed.values] > 1).all()


def test_describe_tells_bound_kernel_options_apart(tmp_path):
    """A state is refused when its objective describes otherwise: a kernel bound with other options
    (squared=True, dtype="float32") scores otherwise, so it must describe otherwise."""
    import functools

    from mfarray.kernels import gaussian_fs

    kw = dict(n_train=40, n_test=20, flow={"steps": 2})
    plain = T.GainObjective("gaussian_fs", **kw)
    squared = T.GainObjective(functools.partial(gaussian_fs, squared=True), **kw)
    single = T.GainObjective(functools.partial(gaussian_fs, dtype="float32"), **kw)
    bound = T.GainObjective(gaussian_fs.bind(sigma=0.2), **kw)
    texts = [o.describe() for o in (plain, squared, single, bound)]
    assert len(set(texts)) == 4, texts
    assert "squared" in texts[1] and "float32" in texts[2] and "0.2" in texts[3]
    assert T.GainObjective(gaussian_fs, **kw).describe() == texts[0]  # the same kernel, unbound
    state = tmp_path / "tune.json"
    space = {"sigma": T.real(0.05, 1.0, log=True)}
    T.tune(squared, space, init=1, iterations=0, state=state, holdout=False)
    with pytest.raises(ValueError, match="another objective"):
        T.tune(plain, space, init=2, iterations=0, state=state, holdout=False)


def _diverges(params, seed):
    raise FlowError("diverged")


def _not_a_number(params, seed):
    return math.nan


@pytest.mark.parametrize("objective", [_diverges, _not_a_number])
def test_best_params_when_no_evaluation_succeeded_says_so(objective):
    ds = T.tune(objective, {"x": (0.0, 1.0)}, init=2, iterations=1)
    assert ds.failed.all()
    with pytest.raises(ValueError, match="no evaluation .*succeeded.*error"):
        T.best_params(ds)
    with pytest.raises(ValueError, match="mfarray.tune"):
        T.best_params(xr.Dataset({"x": ("evaluation", [0.5])}))  # not a tuning result at all


def test_numpy_numbers_make_dims():
    assert T.integer(np.int64(1), np.int32(5)) == T.integer(1, 5)
    assert T.real(np.float32(0.5), np.float64(2.0), log=True) == T.real(0.5, 2.0, log=True)
    s = T.as_space({"a": (np.int64(1), np.int64(3)), "b": (np.float64(0.1), 2)})
    assert s["a"] == T.integer(1, 3) and s["b"] == T.real(0.1, 2.0)  # not a choice of two values
    ds = T.tune(lambda p, seed: -abs(p["a"] - 2) - p["b"], s, init=2, iterations=0)
    assert json.loads(ds.attrs["space"])["a"] == {"low": 1, "high": 3, "integer": True}
    for bad in (True, "1", np.nan, 1j):
        with pytest.raises(ValueError, match="low must be a finite number"):
            T.integer(bad, 5)
